"""Leaderboard figures (matplotlib, Agg canvas, no pyplot global state).

Per benchmark, each figure made only when the results hold data for it:

- ``rmse-vs-time``: the ``series.rmse_a`` of every method against ``series.times`` (log y), as a
  centred moving average over ~2 % of the points so that many methods stay readable; the
  published reference of a method as a dashed line in its colour; the burn-in (not scored) shaded;
- ``rank-histograms``: one bar chart per method of ``series.rank_histogram`` with the flat
  histogram dashed;
- ``rmse-vs-ensemble-size``: mean rmse.a ± std over seeds against ``config.n_ensemble``, one line
  per method family;
- ``speed-vs-accuracy``: seconds per cycle (log x) against mean rmse.a ± std, coloured by family.

Diverged cells are drawn with an ``x`` marker (and left out where their values are not finite).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ._leaderboard import LeaderboardRow, benchmark_slugs, benchmark_tables, metric

__all__ = ["PLOT_KINDS", "Plot", "make_plots", "png_size"]

PLOT_KINDS: dict[str, str] = {
    "rmse-vs-time": "rmse.a vs time",
    "rank-histograms": "Rank histograms",
    "rmse-vs-ensemble-size": "rmse.a vs ensemble size",
    "speed-vs-accuracy": "Speed vs accuracy (seconds per cycle vs rmse.a)",
}
DPI = 100


@dataclass(frozen=True)
class Plot:
    """A rendered figure: PNG bytes plus what it shows."""

    kind: str
    benchmark: str
    title: str
    alt: str
    filename: str
    png: bytes
    width: int
    height: int


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's IHDR chunk; ValueError if it is not a PNG."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", png[16:24])
    return int(w), int(h)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


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


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _plain_log(axis: Any, lo: float, hi: float) -> None:
    """Plain-number labels (0.2, 0.5, 1, 2) on a log axis spanning [lo, hi]: majors at powers of
    ten, and minors at 2 and 5 × powers of ten labelled when the axis spans less than ~2 decades."""
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    if lo > 0 and hi > 0 and math.log10(hi / lo) < 2.3:
        axis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
        axis.set_minor_formatter(fmt)
    else:
        axis.set_minor_formatter(NullFormatter())


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


def _family_colors(rows: Sequence[LeaderboardRow]) -> dict[str, Any]:
    fams = sorted({_family(r) for r in rows})
    return dict(zip(fams, _colors(len(fams)), strict=True))


def _family(row: LeaderboardRow) -> str:
    return str(row.cell.get("family") or row.method)


def _legend(ax: Any, n: int) -> None:
    if n:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _rmse_vs_time(bench: str, rows: Sequence[LeaderboardRow]) -> Figure | None:
    lines = []
    for i, row in enumerate(rows):
        ys = _series(row.cell, "rmse_a")
        ts = _series(row.cell, "times")
        if len(ts) != len(ys):
            ts = [float(k) for k in range(len(ys))]
        pts = [(t, y) for t, y in zip(ts, ys, strict=True) if math.isfinite(t) and _pos(y)]
        if pts:
            lines.append((i, row, pts))
    if not lines:
        return None
    colors = _colors(len(rows))
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    n_max = max(len(p) for _, _, p in lines)
    window = max(1, round(0.02 * n_max)) | 1  # odd
    t_burn = _burn_in_time(rows)
    if t_burn is not None:
        t0 = min(p[0][0] for _, _, p in lines)
        ax.axvspan(min(t0, 0.0), t_burn, color="0.92", zorder=0, label="burn-in (not scored)")
    all_y: list[float] = []
    for i, row, pts in lines:
        smooth = _moving_average([p[1] for p in pts], window)
        all_y += smooth
        pts = [(p[0], y) for p, y in zip(pts, smooth, strict=True)]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=colors[i],
            lw=1.0,
            label=f"{row.rank}. {row.method}" + (" (diverged)" if row.diverged else ""),
        )
        ref = row.cell.get("reference")
        ref_v = ref.get("rmse_a") if isinstance(ref, Mapping) else None
        if isinstance(ref_v, int | float) and _pos(float(ref_v)):
            ax.axhline(float(ref_v), color=colors[i], ls="--", lw=0.8, alpha=0.8)
            all_y.append(float(ref_v))
    ax.set_yscale("log")
    _plain_log(ax.yaxis, min(all_y), max(all_y))
    ax.set_xlabel("model time")
    ax.set_ylabel("rmse.a" + (f" (moving average, {window} points)" if window > 1 else ""))
    ax.set_title(f"{bench}: rmse.a vs time (dashed: published reference)")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(lines))
    return fig


def _pos(y: float) -> bool:
    return math.isfinite(y) and y > 0


def _rank_histograms(bench: str, rows: Sequence[LeaderboardRow]) -> Figure | None:
    hists = []
    for i, row in enumerate(rows):
        h = _series(row.cell, "rank_histogram")
        if h and all(math.isfinite(v) for v in h) and sum(h) > 0:
            hists.append((i, row, h))
    if not hists:
        return None
    colors = _colors(len(rows))
    ncols = min(4, len(hists))
    nrows = math.ceil(len(hists) / ncols)
    fig = Figure(figsize=(3.2 * ncols + 0.5, 2.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(hists) :]:
        ax.set_axis_off()
    for ax, (i, row, h) in zip(axes.flat, hists, strict=False):
        # one Stairs artist (not a bar per rank): particle filters have hundreds of ranks
        edges = [k - 0.5 for k in range(len(h) + 1)]
        ax.stairs(h, edges, fill=True, color=colors[i], alpha=0.85)
        ax.axhline(sum(h) / len(h), color="black", ls="--", lw=0.8)
        chi2 = metric(row.cell, "rank_chi2")
        title = f"{row.rank}. {row.method}"
        if _finite(chi2):
            title += f"\nχ² = {chi2:.4g}"
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("rank of truth", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize="x-small")
    fig.suptitle(f"{bench}: rank histograms (dashed: flat)")
    return fig


def _n_ensemble(cell: Mapping[str, Any]) -> float | None:
    cfg = cell.get("config")
    n = cfg.get("n_ensemble") if isinstance(cfg, Mapping) else None
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n):
        return None
    return float(n)


def _rmse_vs_ensemble_size(bench: str, rows: Sequence[LeaderboardRow]) -> Figure | None:
    fams: dict[str, list[tuple[float, float, float, bool]]] = {}
    for row in rows:
        n = _n_ensemble(row.cell)
        m = metric(row.cell, "rmse_a")
        if n is None or not _finite(m):
            continue
        s = metric(row.cell, "rmse_a", "std")
        fams.setdefault(_family(row), []).append((n, m, s if _finite(s) else 0.0, row.diverged))
    if not fams:
        return None
    color = _family_colors(rows)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for fam, pts in sorted(fams.items()):
        c = color[fam]
        pts.sort()
        ok = [p for p in pts if not p[3]]
        if ok:
            ax.errorbar(
                [p[0] for p in ok],
                [p[1] for p in ok],
                yerr=[p[2] for p in ok],
                color=c,
                marker="o",
                capsize=3,
                label=fam,
            )
        bad = [p for p in pts if p[3]]
        if bad:
            ax.plot(
                [p[0] for p in bad],
                [p[1] for p in bad],
                "x",
                color=c,
                ms=9,
                mew=2,
                label=f"{fam} (diverged)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({p[0] for pts in fams.values() for p in pts})
    ax.set_xticks(sizes, [f"{v:g}" for v in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ys = [p[1] for pts in fams.values() for p in pts]
    _plain_log(ax.yaxis, min(ys), max(ys))
    ax.set_xlabel("ensemble size N (config n_ensemble)")
    ax.set_ylabel("rmse.a (mean ± std over seeds)")
    ax.set_title(f"{bench}: rmse.a vs ensemble size, by method family")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(fams))
    return fig


def _speed_vs_accuracy(bench: str, rows: Sequence[LeaderboardRow]) -> Figure | None:
    pts = []
    for row in rows:
        sec = row.cell.get("seconds_per_cycle")
        m = metric(row.cell, "rmse_a")
        if isinstance(sec, bool) or not isinstance(sec, int | float) or not _pos(float(sec)):
            continue
        if not _finite(m):
            continue
        s = metric(row.cell, "rmse_a", "std")
        pts.append((float(sec), m, s if _finite(s) else 0.0, row))
    if not pts:
        return None
    families = sorted({_family(p[3]) for p in pts})
    color = _family_colors(rows)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for sec, m, s, row in pts:
        fam = _family(row)
        ax.errorbar(
            [sec],
            [m],
            yerr=[s],
            color=color[fam],
            marker="x" if row.diverged else "o",
            ms=8 if row.diverged else 6,
            capsize=3,
            label=None if fam in labelled else fam,
        )
        labelled.add(fam)
        ax.annotate(
            row.method, (sec, m), textcoords="offset points", xytext=(4, 4), fontsize="x-small"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    secs = [p[0] for p in pts]
    _plain_log(ax.xaxis, min(secs), max(secs))
    _plain_log(ax.yaxis, min(p[1] for p in pts), max(p[1] for p in pts))
    ax.set_xlabel("seconds per cycle (log)")
    ax.set_ylabel("rmse.a (mean ± std over seeds)")
    ax.set_title(f"{bench}: speed vs accuracy (lower left is better; x = diverged)")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(families))
    return fig


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
            fig = maker(bench, rows)
            if fig is None:
                continue
            png = _to_png(fig)
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
                )
            )
    return plots
