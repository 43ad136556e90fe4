"""Leaderboard figures (matplotlib, Agg canvas, no pyplot global state).

Per benchmark, each figure made only when the results hold data for it:

- ``rmse-vs-time``: the seed-averaged ``series.rmse_a`` of every method against ``series.times``
  (log y), smoothed by a centred moving average over ~2 % of the points; the published reference
  of a method as a dashed line in its colour; the burn-in (not scored) shaded. Methods whose
  curves are identical (a smoother's filter estimate equal to its filter's) are drawn once, with
  both names in the legend entry;
- ``rank-histograms``: one panel per method, the pooled ``series.rank_histogram`` as frequency ×
  number of bins (1 = flat, dashed; the same scale on every benchmark), titled with rank δ and ρ;
- ``rmse-vs-ensemble-size``: only when the benchmark has at least two ensemble sizes: mean
  rmse.a ± standard error over seeds against ``config.n_ensemble``, one marker per method, grey
  lines joining the methods of one family;
- ``speed-vs-accuracy``: milliseconds per cycle (log x) against mean rmse.a ± s.e., one marker
  per method labelled with its rank.

Every figure of a benchmark draws a method in the same colour (:func:`method_colors`, keyed by
method name), legends sit outside the axes, log axes carry at least four labelled ticks where the
range allows (:func:`log_ticks`), and each :class:`Plot` has a caption saying what is averaged.
Diverged cells are drawn with an ``x`` marker (and left out where their values are not finite).
Rendering is deterministic: the same results give the same PNG bytes.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from ._leaderboard import (
    LeaderboardRow,
    benchmark_slugs,
    benchmark_tables,
    rank_delta,
    rank_rho,
    score,
)

__all__ = ["PLOT_KINDS", "Plot", "log_ticks", "make_plots", "method_colors", "png_size"]

PLOT_KINDS: dict[str, str] = {
    "rmse-vs-time": "rmse.a vs time",
    "rank-histograms": "Rank histograms",
    "rmse-vs-ensemble-size": "rmse.a vs ensemble size",
    "speed-vs-accuracy": "Speed vs accuracy (milliseconds per cycle vs rmse.a)",
}
DPI = 100
SAME_CURVE_RTOL = 1e-12


@dataclass(frozen=True)
class Plot:
    """A rendered figure: PNG bytes plus what it shows.

    ``labels`` are the legend entries (or panel titles) in drawing order and ``colors`` the
    colour (``#rrggbb``) each method was drawn in — the tests check both.
    """

    kind: str
    benchmark: str
    title: str
    alt: str
    filename: str
    png: bytes
    width: int
    height: int
    caption: str = ""
    labels: tuple[str, ...] = ()
    colors: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Drawn:
    """What a maker drew (for the Plot's labels/colors) besides the figure."""

    fig: Figure
    caption: str
    labels: list[str] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's IHDR chunk; ValueError if it is not a PNG."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", png[16:24])
    return int(w), int(h)


def _finite(x: float | int | None) -> bool:
    return x is not None and bool(math.isfinite(x))


def _pos(y: float | int | None) -> bool:
    return _finite(y) and bool(y > 0)


def _floats(xs: Any) -> list[float]:
    if not isinstance(xs, Sequence) or isinstance(xs, str):
        return []
    out = []
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int | float):
            out.append(math.nan)
        else:
            out.append(float(x))
    return out


def _series(cell: Mapping[str, Any], name: str) -> list[float]:
    s = cell.get("series")
    return _floats(s.get(name)) if isinstance(s, Mapping) else []


def method_colors(rows: Sequence[LeaderboardRow]) -> dict[str, str]:
    """Method name → colour (``#rrggbb``) for one benchmark: tab10 (tab20 beyond 10 methods) in
    the order of the sorted method names, so a method keeps its colour in every figure of the
    benchmark and across re-renderings."""
    from matplotlib import colormaps

    names = sorted({r.method for r in rows})
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: to_hex(cmap(i % cmap.N)) for i, name in enumerate(names)}


def _to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def log_ticks(lo: float | int, hi: float | int) -> list[float]:
    """At least four tick values in ``[lo, hi]`` (0 < lo < hi) for a log axis when the range
    allows: powers of ten, else 1-2-5, 1-2-3-5 or 1-1.5-2-3-4-5-7 × powers of ten (evenly
    spread on the log scale), else (a range of less than about half a decade) evenly spaced
    round values."""
    if not (_pos(lo) and _pos(hi)) or hi <= lo:
        return []
    k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    for subs in (
        (1.0,),
        (1.0, 2.0, 5.0),
        (1.0, 2.0, 3.0, 5.0),
        (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0),
    ):
        ticks = [
            float(f"{m * 10.0**k:.12g}")
            for k in range(k0, k1 + 1)
            for m in subs
            if lo <= m * 10.0**k <= hi
        ]
        if len(ticks) >= 4:
            return ticks
    ticks: list[float] = []
    for nbins in (5, 8, 12):
        values = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        ticks = [float(f"{t:.12g}") for t in values if lo <= t <= hi and t > 0]
        if len(ticks) >= 4:
            break
    return ticks


def _log_axis(ax: Any, which: str) -> None:
    """Plain-number labels (0.18, 0.2, 0.22 or 0.1, 1, 10) on a log axis, from
    :func:`log_ticks` over its current limits; unlabelled minor ticks at 1..9 × 10^k."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = (float(v) for v in (ax.get_ylim() if which == "y" else ax.get_xlim()))
    ticks = log_ticks(lo, hi)
    fmt = FuncFormatter(lambda v, _: f"{v:.6g}")
    if ticks:
        axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(fmt)
    axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(1, 10))))
    axis.set_minor_formatter(NullFormatter())
    (ax.set_ylim if which == "y" else ax.set_xlim)(lo, hi)


def _moving_average(ys: Sequence[float], w: int) -> list[float]:
    """Centred moving average over ``w`` points (shorter at the ends)."""
    if w <= 1:
        return list(ys)
    h = w // 2
    out = []
    for i in range(len(ys)):
        block = ys[max(0, i - h) : i + h + 1]
        out.append(sum(block) / len(block))
    return out


def _burn_in_time(rows: Sequence[LeaderboardRow]) -> float | None:
    """Model time at which the burn-in ends, from the first cell with cycles, burn-in and times.

    Observation times are ``k·dt`` for k = 1..n_cycles, so the burn-in ends at
    ``burn_in_cycles / n_cycles`` of the run; the run's end is estimated from the (possibly
    block-averaged) series times.
    """
    for row in rows:
        n, burn = row.cell.get("n_cycles"), row.cell.get("burn_in_cycles")
        ts = [t for t in _series(row.cell, "times") if math.isfinite(t)]
        if not (isinstance(n, int) and isinstance(burn, int) and n > 0 and burn > 0 and ts):
            continue
        step = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else ts[0]
        end = ts[-1] + step / 2 if len(ts) < n else ts[-1]
        return burn / n * end
    return None


def _family(row: LeaderboardRow) -> str:
    return str(row.cell.get("family") or row.method)


def _label(row: LeaderboardRow) -> str:
    return f"{row.rank}. {row.method}" + (" (diverged)" if row.diverged else "")


def _legend(ax: Any) -> None:
    """The legend outside the axes, on the right (constrained layout makes room for it)."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _seeds_text(rows: Sequence[LeaderboardRow]) -> str:
    counts = sorted({len(r.cell.get("seeds") or ()) for r in rows})
    return "/".join(str(c) for c in counts) if counts else "?"


def _same_curve(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> bool:
    if len(a) != len(b):
        return False
    return all(
        math.isclose(p[0], q[0], rel_tol=SAME_CURVE_RTOL, abs_tol=0.0)
        and math.isclose(p[1], q[1], rel_tol=SAME_CURVE_RTOL, abs_tol=0.0)
        for p, q in zip(a, b, strict=True)
    )


def _rmse_vs_time(bench: str, rows: Sequence[LeaderboardRow]) -> _Drawn | None:
    colors = method_colors(rows)
    curves: list[tuple[list[LeaderboardRow], list[tuple[float, float]]]] = []
    for row in rows:
        ys = _series(row.cell, "rmse_a")
        ts = _series(row.cell, "times")
        if len(ts) != len(ys):
            ts = [float(k) for k in range(len(ys))]
        pts = [(t, y) for t, y in zip(ts, ys, strict=True) if math.isfinite(t) and _pos(y)]
        if not pts:
            continue
        for group, other in curves:
            if _same_curve(pts, other):
                group.append(row)  # identical curve: drawn once, named in the same entry
                break
        else:
            curves.append(([row], pts))
    if not curves:
        return None
    fig = Figure(figsize=(9.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    n_max = max(len(p) for _, p in curves)
    window = max(1, round(0.02 * n_max)) | 1  # odd
    t_burn = _burn_in_time(rows)
    drawn = _Drawn(fig=fig, caption="")
    if t_burn is not None:
        t0 = min(p[0][0] for _, p in curves)
        ax.axvspan(min(t0, 0.0), t_burn, color="0.92", zorder=0, label="burn-in (not scored)")
        drawn.labels.append("burn-in (not scored)")
    all_y: list[float] = []
    for group, pts in curves:
        first = group[0]
        smooth = _moving_average([p[1] for p in pts], window)
        all_y += smooth
        label = _label(first)
        if len(group) > 1:
            label += " = " + " = ".join(_label(r) for r in group[1:]) + " (identical)"
        ax.plot([p[0] for p in pts], smooth, color=colors[first.method], lw=1.0, label=label)
        drawn.labels.append(label)
        drawn.colors[first.method] = colors[first.method]
        for row in group:
            ref = row.cell.get("reference")
            ref_v = ref.get("rmse_a") if isinstance(ref, Mapping) else None
            if isinstance(ref_v, int | float) and _pos(float(ref_v)):
                ax.axhline(float(ref_v), color=colors[row.method], ls="--", lw=0.9, alpha=0.8)
                drawn.colors[row.method] = colors[row.method]
                all_y.append(float(ref_v))
    ax.set_yscale("log")
    ax.set_ylim(min(all_y) / 1.05, max(all_y) * 1.05)
    _log_axis(ax, "y")
    ax.set_xlabel("model time")
    smoothing = f", {window}-point moving avg." if window > 1 else ""
    ax.set_ylabel(f"rmse.a (seed mean{smoothing})")
    ax.set_title(f"{bench}: rmse.a vs time (dashed: published time mean)")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    _legend(ax)
    drawn.caption = (
        f"rmse.a of the analysis mean at each observation time, averaged over the seeds "
        f"({_seeds_text(rows)} per method; the stored series are block means of at most 500 "
        f"points) and smoothed by a centred moving average over {window} point(s), ~2 % of "
        "the run. Dashed: the published time-mean rmse.a of the same setup, in the method's "
        "colour. Grey: burn-in, not scored. Identical curves (a smoother's filter estimate "
        "equal to its filter's) are drawn once and named together."
    )
    return drawn


def _rank_histograms(bench: str, rows: Sequence[LeaderboardRow]) -> _Drawn | None:
    colors = method_colors(rows)
    hists = []
    for row in rows:
        h = _series(row.cell, "rank_histogram")
        if len(h) >= 2 and all(math.isfinite(v) for v in h) and sum(h) > 0:
            total = sum(h)
            hists.append((row, [len(h) * v / total for v in h]))
    if not hists:
        return None
    ncols = min(4, len(hists))
    nrows = math.ceil(len(hists) / ncols)
    fig = Figure(figsize=(3.3 * ncols + 0.5, 2.7 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in axes.flat[len(hists) :]:
        ax.set_axis_off()
    drawn = _Drawn(fig=fig, caption="")
    top = max(max(f) for _, f in hists)
    for ax, (row, freq) in zip(axes.flat, hists, strict=False):
        # one Stairs artist (not a bar per rank): particle filters have hundreds of ranks
        edges = [k - 0.5 for k in range(len(freq) + 1)]
        color = colors[row.method]
        ax.stairs(freq, edges, fill=True, color=color, alpha=0.85)
        ax.axhline(1.0, color="black", ls="--", lw=0.8)
        delta = rank_delta(row.cell).mean
        rho = [v for v in rank_rho(row.cell) if _finite(v)]
        title = _label(row)
        stats = []
        if _finite(delta):
            stats.append(f"δ = {delta:.3g}")
        if rho:
            stats.append(f"ρ = {sum(rho) / len(rho):#.2g}")
        if stats:
            title += "\n" + ", ".join(stats)
        ax.set_title(title, fontsize="small")
        ax.set_xlabel(f"rank of truth (B = {len(freq)} bins)", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.set_ylim(0, max(1.2, 1.08 * top))
        ax.tick_params(labelsize="x-small")
        drawn.labels.append(title.split("\n", 1)[0])
        drawn.colors[row.method] = color
    for ax in axes[:, 0]:
        ax.set_ylabel("frequency × B", fontsize="small")
    fig.suptitle(f"{bench}: rank histograms (dashed: flat = 1)")
    drawn.caption = (
        "Rank of the truth among the ensemble members (PIT bins for Gaussian filters), counted "
        "over every component and scored cycle of every seed, shown as frequency × number of "
        "bins B, so that a flat histogram is 1 (dashed) on every benchmark. U-shape: "
        "under-dispersed; dome: over-dispersed; slope: biased. δ = χ²/(B − 1), mean over seeds "
        "(≈ 1: consistent with flat); ρ = RMS relative deviation of the frequencies from flat, "
        "mean over seeds (comparable across benchmarks and run lengths)."
    )
    return drawn


def _n_ensemble(cell: Mapping[str, Any]) -> float | None:
    cfg = cell.get("config")
    n = cfg.get("n_ensemble") if isinstance(cfg, Mapping) else None
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n):
        return None
    return float(n)


def _mean_se(row: LeaderboardRow) -> tuple[float | None, float]:
    s = score(row.cell, "rmse_a")
    se = s.se
    return s.mean, se if _finite(se) else 0.0


def _markers(ax: Any, pts, colors: Mapping[str, str], drawn: _Drawn) -> None:
    """One marker (± s.e.) per method; a point on top of an earlier one is drawn as a ring."""
    seen: list[tuple[float, float]] = []
    for x, m, se, row in pts:
        c = colors[row.method]
        on_top = any(
            math.isclose(x, a, rel_tol=1e-9) and math.isclose(m, b, rel_tol=1e-9) for a, b in seen
        )
        seen.append((x, m))
        ax.errorbar(
            [x],
            [m],
            yerr=[se],
            color=c,
            marker="x" if row.diverged else "o",
            ms=(13 if on_top else 7) if not row.diverged else 9,
            mfc="none" if on_top else c,
            mew=2 if on_top or row.diverged else 1,
            capsize=3,
            ls="none",
            label=_label(row) + (" (same point)" if on_top else ""),
            zorder=3 if on_top else 2,
        )
        drawn.labels.append(_label(row) + (" (same point)" if on_top else ""))
        drawn.colors[row.method] = c


def _rmse_vs_ensemble_size(bench: str, rows: Sequence[LeaderboardRow]) -> _Drawn | None:
    pts = []
    for row in rows:
        n = _n_ensemble(row.cell)
        m, se = _mean_se(row)
        if n is None or not _pos(m) or n <= 0:
            continue
        pts.append((n, m, se, row))
    sizes = sorted({p[0] for p in pts})
    if len(sizes) < 2:
        return None  # one ensemble size: nothing to show against N
    colors = method_colors(rows)
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    drawn = _Drawn(fig=fig, caption="")
    fams: dict[str, list[tuple[float, float]]] = {}
    for n, m, _, row in pts:
        if not row.diverged:
            fams.setdefault(_family(row), []).append((n, m))
    for fam, line in sorted(fams.items()):
        line.sort()
        if len({p[0] for p in line}) >= 2:
            ax.plot([p[0] for p in line], [p[1] for p in line], color="0.6", lw=1.0, zorder=1)
            ax.annotate(
                fam,
                line[-1],
                textcoords="offset points",
                xytext=(6, 0),
                fontsize="x-small",
                color="0.35",
                va="center",
                annotation_clip=True,
            )
    _markers(ax, pts, colors, drawn)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.6)
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _log_axis(ax, "y")
    ax.set_xlabel("ensemble size N (config n_ensemble)")
    ax.set_ylabel("rmse.a (mean ± s.e. over seeds)")
    ax.set_title(f"{bench}: rmse.a vs ensemble size")
    ax.grid(True, which="major", alpha=0.35)
    _legend(ax)
    drawn.caption = (
        "Time-mean rmse.a per seed, then mean ± standard error over the seeds, against the "
        "ensemble size of the method's configuration. Grey lines join the non-diverged methods "
        "of one family (named at the right end). x: diverged. A ring marks a method whose point "
        "lies on top of another's (e.g. a smoother's filter estimate)."
    )
    return drawn


def _speed_vs_accuracy(bench: str, rows: Sequence[LeaderboardRow]) -> _Drawn | None:
    pts = []
    for row in rows:
        sec = row.cell.get("seconds_per_cycle")
        if isinstance(sec, bool) or not isinstance(sec, int | float) or not _pos(float(sec)):
            continue
        m, se = _mean_se(row)
        if not _pos(m):
            continue
        pts.append((1e3 * float(sec), m, se, row))
    if not pts:
        return None
    colors = method_colors(rows)
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    drawn = _Drawn(fig=fig, caption="")
    _markers(ax, pts, colors, drawn)
    for ms, m, _, row in pts:
        ax.annotate(
            str(row.rank),
            (ms, m),
            textcoords="offset points",
            xytext=(5, 3),
            fontsize="x-small",
            annotation_clip=True,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    xs = [p[0] for p in pts]
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    lows = [m - se if m - se > 0 else m / 1.5 for _, m, se, _ in pts]
    ax.set_ylim(min(lows) / 1.08, max(m + se for _, m, se, _ in pts) * 1.08)
    _log_axis(ax, "x")
    _log_axis(ax, "y")
    ax.set_xlabel("milliseconds per cycle (log)")
    ax.set_ylabel("rmse.a (mean ± s.e. over seeds)")
    ax.set_title(f"{bench}: speed vs accuracy (lower left is better)")
    ax.grid(True, which="major", alpha=0.35)
    _legend(ax)
    drawn.caption = (
        "x: wall time per assimilation cycle (truth simulation, assimilation and scoring of all "
        "seeds in one compiled call, divided by cycles × seeds; compilation excluded); y: "
        "time-mean rmse.a, mean ± standard error over the seeds. Numbers: rank in the table. "
        "x: diverged; a ring marks a point on top of another's."
    )
    return drawn


_MAKERS = {
    "rmse-vs-time": _rmse_vs_time,
    "rank-histograms": _rank_histograms,
    "rmse-vs-ensemble-size": _rmse_vs_ensemble_size,
    "speed-vs-accuracy": _speed_vs_accuracy,
}


def make_plots(results: Mapping[str, Any]) -> list[Plot]:
    """Every figure the results have data for, per benchmark in table order (see module doc)."""
    tables = benchmark_tables(results)
    slugs = benchmark_slugs(list(tables))
    plots = []
    for bench, rows in tables.items():
        for kind, maker in _MAKERS.items():
            drawn = maker(bench, rows)
            if drawn is None:
                continue
            png = _to_png(drawn.fig)
            w, h = png_size(png)
            title = f"{PLOT_KINDS[kind]} — {bench}"
            plots.append(
                Plot(
                    kind=kind,
                    benchmark=bench,
                    title=title,
                    alt=f"{PLOT_KINDS[kind]} plot for benchmark {bench}",
                    filename=f"{slugs[bench]}--{kind}.png",
                    png=png,
                    width=w,
                    height=h,
                    caption=drawn.caption,
                    labels=tuple(drawn.labels),
                    colors=dict(drawn.colors),
                )
            )
    return plots
