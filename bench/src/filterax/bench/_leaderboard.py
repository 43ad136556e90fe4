"""The leaderboard: per-benchmark tables ranked by rmse.a, for a terminal, Markdown and HTML.

Input is the runner's ``results.json`` (``{"schema": 1, "cells": {"<benchmark>/<method>": cell}}``,
numbers as JSON numbers). Everything here is a pure function of that dict, so a leaderboard can be
re-rendered from a results file at any time (``render_all(load_results(path), out_dir)``); the
verdicts (divergence, reference deviation) are recomputed from each cell on every rendering.

Conventions shared by every rendering:

- **Scores.** Each score of a seed is its time mean over the scored cycles (after the burn-in);
  a cell shows the mean over its seeds. rmse.a is printed as ``mean ± standard error`` (s.e. =
  seed-to-seed standard deviation / √n over the n seeds with a finite score); a single seed has
  no noise estimate and prints no ``±``.
- **Rounding to the seed noise** (:func:`noise_decimals`): the s.e. is printed with one
  significant digit (two when that digit is a 1, where one digit would misstate it by up to
  50 %) and the mean to the same decimal place (0.2143 ± 0.0031 → ``0.214 ± 0.003``). The other
  scores of a row are rounded the same way with their own s.e. (without the ``±``); without a
  noise estimate numbers get 3 significant digits. Timings get 3 significant digits. The full
  precision stays in ``results.json`` and in the per-seed details (HTML detail rows, the
  Markdown details block).
- **Ranking.** Within a benchmark, cells are sorted by mean rmse.a, ascending. Diverged cells
  (:func:`divergence`) go below every non-diverged one, whatever their mean (a mean over partly
  diverged seeds is not comparable); cells whose mean is not finite go last. Ties are broken by
  method name. Ranks are 1, 2, ... in that order.
- **Verdict** (one column, next to the score): ``DIVERGED (seeds …)`` (:data:`DIVERGENCE_RULE`),
  else ``≠ ref (worse|better)`` / ``≈ ref`` against the published rmse.a
  (:data:`DEVIATION_RULE`), else ``1 seed`` for a single-seed cell (no noise estimate, so no
  reference verdict), else ``—``.
- **rank δ** = χ²/(B − 1) of the rank histogram (:data:`RANK_DELTA_RULE`).
- **VI cost** = the per-cycle variational cost of Bach et al. (2025), eq. 2.5, time-averaged
  (:data:`VI_COST_RULE`); ``—`` when the method has none or a seed failed (:func:`vi_cost_text`).
- **Reference.** ``ref.`` is the published rmse.a of the method's setup with its source as a
  footnote ``[k]`` (the citations are listed under each table); ``Δ ref`` = ours − published.
- **Columns** that no row of a benchmark fills (rmse.s without a smoother, no published values,
  no rank histograms, ...) are left out of that benchmark's table. Configurations, family,
  published setup label and every per-seed value are in the details.

The terminal table (:func:`print_leaderboard`, :func:`render_terminal`) is the compact view: rank,
method, rmse.a, verdict, published value, Δ ref, spread.a, rmse.s and milliseconds per cycle;
when the console is too narrow for all of them, the least important columns are left out (never
a method name or a header cut or wrapped inside a word).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._files import read_json, write_bytes_atomic, write_text_atomic

__all__ = [
    "SCHEMA_VERSION",
    "Deviation",
    "Divergence",
    "LeaderboardRow",
    "Score",
    "benchmark_sources",
    "benchmark_tables",
    "config_summary",
    "divergence",
    "format_mean_se",
    "format_number",
    "format_score",
    "load_results",
    "noise_decimals",
    "print_leaderboard",
    "rank_delta",
    "rank_histogram_delta",
    "rank_histogram_rho",
    "reference_deviation",
    "render_all",
    "render_markdown",
    "render_terminal",
    "score",
    "vi_cost_text",
]

SCHEMA_VERSION = 1
MISSING = "—"
DEVIATION_NOISE_FACTOR = 2.0
DEVIATION_REL_TOLERANCE = 0.03
DIVERGENCE_SPREAD_FACTOR = 2.0
DIVERGENCE_REFERENCE_FACTOR = 2.0
UNKNOWN_NOISE_DIGITS = 3  # significant digits of a score without a seed-noise estimate
MAX_DIGITS = 6  # never more significant digits than this, however small the noise

RANKING_RULE = (
    "Ranked by mean rmse.a over seeds (ascending); diverged cells last. Every score is the time "
    "mean over the scored cycles (after the burn-in) of one seed, then the mean over seeds; "
    "rmse.a is shown as mean ± standard error over seeds (s.e. = std/√n). Numbers are rounded "
    "to the seed noise: the s.e. to 1 significant digit (2 when it starts with a 1) and the "
    "mean to the same decimal place; without a noise estimate (1 seed) 3 significant digits "
    "and no ±. Full precision: results.json and the per-seed details."
)
DIVERGENCE_RULE = (
    "DIVERGED: a seed diverged when (a) its run went non-finite or lost the truth for good "
    "(the runner's flag: rmse.a above the benchmark's fraction of the climatological rmse, "
    "½ by default, over the scored run or its last 10 %; not applied to the Climatology "
    "baseline, whose rmse.a is the climatological one by construction), or (b) rmse.a > 2 × "
    "spread.a — the filter's own error estimate no longer covers its error, the classical "
    "filter divergence (a consistent ensemble has rmse.a ≈ spread.a·√(1 + 1/N) ≤ "
    "1.22·spread.a), or (c) rmse.a > 2 × the published rmse.a of the same setup. Diverged "
    "cells list their seeds and are ranked below every other."
)
DEVIATION_RULE = (
    "≠ ref: |ours − ref| > 2·std·√(1 + 1/n) + 0.03·|ref|, with std the seed-to-seed standard "
    "deviation of our rmse.a over n ≥ 2 seeds (≈ ref otherwise). The published number is itself "
    "one run with seed noise of about std, so ours − ref has a standard deviation of about "
    "std·√(1 + 1/n); the 3 % term absorbs the rounding of published values (two significant "
    "digits) and differing run lengths, or the stated rounding of a value published with fewer "
    "digits when that is more (KS baselines: 0.5 stands for 0.45–0.55). A single seed has no "
    "noise estimate: its verdict is '1 seed', never ≠ ref."
)
RANK_DELTA_RULE = (
    "rank δ = χ²/(B − 1) (Candille & Talagrand 2005): Pearson's χ² of the rank histogram of the "
    "truth among the members (B = N_e + 1 bins; 21 PIT bins for Gaussian filters), pooled over "
    "components and scored cycles, divided by its expectation for a flat histogram; mean over "
    "seeds. δ ≈ 1: consistent with a flat histogram, whatever N_e and the run length; δ ≫ 1: "
    "not flat beyond sampling noise. Ranks correlated in time and space also raise δ, and a "
    "given non-flat shape gets a δ that grows with the number M of ranks counted; the size of "
    "the departure, comparable across benchmarks, is ρ = √(χ²/M), the RMS relative deviation "
    "of the bin frequencies from flat (details, rank-histogram plots)."
)
VI_COST_RULE = (
    "VI cost (Bach et al. 2025, eq. 2.5 per cycle; lower is better): KL(analysis ‖ forecast) "
    "− E_analysis log N(y; h(x), R) per cycle, time mean after the burn-in, mean ± s.e. over "
    "seeds. Ensemble filters: Gaussian projections of the ensembles with Ledoit–Wolf shrinkage "
    "(γ = 0.1, target (tr C/d)·I), the likelihood averaged over the analysis members; "
    "Gaussian filters: their own means and covariances, exact. — when the method saves no "
    "forecast/analysis pair (smoothers, baselines), a seed failed (non-finite) or the cost is "
    "undefined (a singular Gaussian-filter covariance: a Kalman filter without model noise "
    "on a chaotic model)."
)
TERMINAL_LEGEND = (
    "Ranked by mean rmse.a over seeds (diverged cells last); rmse.a: mean ± standard error "
    "over seeds, rounded to that noise. DIVERGED: a seed went non-finite or lost the truth "
    "(runner), or rmse.a > 2 × spread.a, or rmse.a > 2 × the published value. ≠ ref: beyond "
    "seed noise of the published value (≈ ref: within); 1 seed: no noise estimate, no verdict. "
    "rmse.s: smoothed estimate. Configs, CRPS, rank δ, log-lik, VI cost and per-seed values: "
    "leaderboard.md / leaderboard.html."
)


# ---------------------------------------------------------------------------------------------
# Loading and the table model
# ---------------------------------------------------------------------------------------------


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a results JSON file (or ``<dir>/results.json``) and check its schema."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    results = read_json(p, what="results", fix="rerun `filterax-bench run` to write it")
    try:
        _check_schema(results)
    except ValueError as err:
        raise ValueError(f"{p}: {err}; rerun `filterax-bench run` to write it.") from err
    return results


def _check_schema(results: Mapping[str, Any]) -> None:
    if not isinstance(results, Mapping) or results.get("schema") != SCHEMA_VERSION:
        got = results.get("schema") if isinstance(results, Mapping) else type(results).__name__
        raise ValueError(f"results schema {got!r} is not supported (expected {SCHEMA_VERSION})")
    if not isinstance(results.get("cells"), Mapping):
        raise ValueError("results has no 'cells' mapping")


def _num(x: Any) -> float | None:
    """A JSON number as float; None for missing or non-numeric values."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    return None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def metric(cell: Mapping[str, Any], name: str, stat: str = "mean") -> float | None:
    """``cell[name][stat]`` as a float, or None when absent."""
    block = cell.get(name)
    if not isinstance(block, Mapping):
        return None
    return _num(block.get(stat))


def seed_values(cell: Mapping[str, Any], name: str) -> list[float | None]:
    """``cell[name]["per_seed"]`` as floats (None where missing); [] when there is no list."""
    block = cell.get(name)
    per = block.get("per_seed") if isinstance(block, Mapping) else None
    if not isinstance(per, Sequence) or isinstance(per, str):
        return []
    return [_num(v) for v in per]


def _seeds(cell: Mapping[str, Any]) -> list[Any]:
    seeds = cell.get("seeds")
    return list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else []


@dataclass(frozen=True)
class Score:
    """A score over the seeds of a cell: mean, sample std and the n finite per-seed values."""

    mean: float | None
    std: float | None
    n: int
    per_seed: tuple[float | None, ...] = ()

    @property
    def se(self) -> float | None:
        """Standard error of the mean, std/√n; None without a noise estimate (n < 2)."""
        if self.n < 2 or not _finite(self.std):
            return None
        return abs(self.std) / math.sqrt(self.n)


def _score_of(mean: float | None, std: float | None, per: list[float | None], n_seeds: int):
    n = sum(_finite(v) for v in per) if per else (n_seeds if _finite(mean) else 0)
    if std is None and n >= 2:
        vals = [v for v in per if _finite(v)]
        m = sum(vals) / n
        std = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
    return Score(mean=mean, std=std, n=n, per_seed=tuple(per))


def score(cell: Mapping[str, Any], name: str) -> Score:
    """The :class:`Score` of ``cell[name]`` (a ``{"mean", "std", "per_seed"}`` block), or of the
    derived ``"rank_delta"`` (:func:`rank_delta`)."""
    if name == "rank_delta":
        return rank_delta(cell)
    return _score_of(
        metric(cell, name, "mean"),
        metric(cell, name, "std"),
        seed_values(cell, name),
        len(_seeds(cell)),
    )


# --- rank histograms ---------------------------------------------------------------------


def rank_histogram_delta(counts: Any) -> float | None:
    """δ = χ²/(B − 1) of a rank histogram with B bins: Pearson's χ² against the flat histogram
    divided by its expectation under a flat histogram (Candille & Talagrand 2005, QJRMS 131).

    1 on average for ranks drawn uniformly, whatever B (the ensemble size) and the number of
    ranks counted; ≫ 1 for a U-shaped (under-dispersed), dome-shaped (over-dispersed) or
    sloped (biased) histogram. None for fewer than 2 bins or no counts.
    """
    chi2, b, _ = _chi2(counts)
    return None if chi2 is None else chi2 / (b - 1)


def rank_histogram_rho(counts: Any) -> float | None:
    """ρ = √(χ²/M): the RMS relative deviation of the bin frequencies from flat,
    ``sqrt(mean_k (B·p_k − 1)²)`` with M ranks counted; 0 for a flat histogram. Unlike δ it does
    not grow with M for a given shape, so it compares across benchmarks and run lengths (its
    sampling floor for a flat histogram is √((B − 1)/M))."""
    chi2, _, total = _chi2(counts)
    return None if chi2 is None else math.sqrt(chi2 / total)


def _chi2(counts: Any) -> tuple[float | None, int, float]:
    vals = [float(c) for c in counts]
    b, total = len(vals), sum(vals)
    if b < 2 or not math.isfinite(total) or total <= 0:
        return None, b, total
    expected = total / b
    return sum((c - expected) ** 2 for c in vals) / expected, b, total


def _rank_bins(cell: Mapping[str, Any]) -> list[float]:
    series = cell.get("series")
    hist = series.get("rank_histogram") if isinstance(series, Mapping) else None
    if not isinstance(hist, Sequence) or isinstance(hist, str):
        return []
    vals = [_num(v) for v in hist]
    return [v for v in vals if v is not None] if all(_finite(v) for v in vals) else []


def rank_delta(cell: Mapping[str, Any]) -> Score:
    """rank δ of a cell: each seed's ``rank_chi2`` / (B − 1), B = the number of bins of the
    cell's pooled ``series.rank_histogram``; mean/std over seeds. Empty without a histogram."""
    bins = len(_rank_bins(cell))
    if bins < 2:
        return Score(mean=None, std=None, n=0)
    chi2 = score(cell, "rank_chi2")
    per = [None if v is None else v / (bins - 1) for v in chi2.per_seed]
    return Score(
        mean=None if chi2.mean is None else chi2.mean / (bins - 1),
        std=None if chi2.std is None else chi2.std / (bins - 1),
        n=chi2.n,
        per_seed=tuple(per),
    )


def rank_rho(cell: Mapping[str, Any]) -> list[float | None]:
    """ρ per seed: √(rank_chi2 / M) with M = the ranks of one seed (pooled histogram / seeds)."""
    bins = _rank_bins(cell)
    chi2 = seed_values(cell, "rank_chi2")
    if len(bins) < 2 or not chi2:
        return []
    m = sum(bins) / len(chi2)
    return [None if not _finite(c) or m <= 0 else math.sqrt(max(c, 0.0) / m) for c in chi2]


# --- verdicts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    """Our rmse.a against the published reference: ``delta = ours − ref``."""

    delta: float
    threshold: float
    n_seeds: int = 2
    testable: bool = True  # a seed-noise estimate exists (n >= 2 finite seeds)

    @property
    def significant(self) -> bool:
        """True when there is a noise estimate and ``|delta|`` exceeds the threshold."""
        return self.testable and abs(self.delta) > self.threshold

    @property
    def direction(self) -> str:
        """``"worse"`` when our error is larger than the reference's, else ``"better"``."""
        return "worse" if self.delta > 0 else "better"


def published_rmse(cell: Mapping[str, Any]) -> float | None:
    """The published rmse.a of the cell's setup (``reference.rmse_a``), when finite."""
    ref = cell.get("reference")
    v = _num(ref.get("rmse_a")) if isinstance(ref, Mapping) else None
    return v if _finite(v) else None


def reference_deviation(cell: Mapping[str, Any]) -> Deviation | None:
    """Compare a cell's mean rmse.a with its published reference.

    Rule: ours differs from the reference by more than seed noise when

        |mean − ref| > 2 · std · sqrt(1 + 1/n) + 0.03 · |ref|

    with ``mean``/``std`` our rmse.a over the ``n`` seeds with a finite rmse.a. The published
    value is one run (one truth trajectory), which carries seed noise of about ``std`` itself,
    so the difference of our n-seed mean and that run has standard deviation
    ``std·sqrt(1 + 1/n)``; twice that is a ~95 % band. The ``0.03·|ref|`` term covers published
    values rounded to two significant digits (0.18 stands for 0.175–0.185, ±2.8 %) and different
    run lengths; a value published with fewer digits carries its own rounding
    (``reference.rounding``, half a unit in its last digit: DAPPER's KS OptInterp "0.5" stands
    for 0.45–0.55), used instead when larger. With fewer than 2 seeds (or a non-finite std)
    there is no noise estimate: the deviation is returned with ``testable=False`` and is
    never ``significant``.

    Returns None when there is no finite reference or no finite mean.
    """
    ref = published_rmse(cell)
    s = score(cell, "rmse_a")
    if ref is None or not _finite(s.mean):
        return None
    testable = s.n >= 2 and _finite(s.std)
    std = abs(s.std) if testable else 0.0
    threshold = DEVIATION_NOISE_FACTOR * std * math.sqrt(1.0 + 1.0 / max(s.n, 1))
    reference = cell.get("reference")
    rounding = _num(reference.get("rounding")) if isinstance(reference, Mapping) else None
    rounding = rounding if _finite(rounding) and rounding > 0 else 0.0
    threshold += max(DEVIATION_REL_TOLERANCE * abs(ref), rounding)
    return Deviation(delta=s.mean - ref, threshold=threshold, n_seeds=s.n, testable=testable)


@dataclass(frozen=True)
class Divergence:
    """Which seeds of a cell diverged and why (:func:`divergence`).

    ``reasons`` holds ``(seed, why)`` pairs, ``seed`` None when the cell has no per-seed values
    (the verdict is then on the cell's means).
    """

    reasons: tuple[tuple[Any, str], ...] = ()

    @property
    def diverged(self) -> bool:
        return bool(self.reasons)

    @property
    def seeds(self) -> tuple[Any, ...]:
        """The diverged seeds, in the cell's order, without repeats (None: the whole cell)."""
        out: list[Any] = []
        for seed, _ in self.reasons:
            if seed not in out:
                out.append(seed)
        return tuple(out)

    def label(self) -> str:
        """``DIVERGED (seeds 0, 2)``, or ``DIVERGED`` for a cell-level verdict; ``""`` if none."""
        if not self.reasons:
            return ""
        seeds = [s for s in self.seeds if s is not None]
        return "DIVERGED" + (f" (seeds {', '.join(str(s) for s in seeds)})" if seeds else "")

    def explanation(self) -> str:
        """Every reason, by seed: ``seed 2: rmse.a 3.10 > 2 × spread.a 0.900; seed 3: ...``."""
        parts = []
        for seed in self.seeds:
            whys = " and ".join(why for s, why in self.reasons if s == seed)
            parts.append((f"seed {seed}: " if seed is not None else "") + whys)
        return "; ".join(parts)


def divergence(cell: Mapping[str, Any]) -> Divergence:
    """The leaderboard's divergence verdict of a cell, per seed; a pure function of the cell.

    A seed diverged when

    a. the runner flagged it (listed in ``diverged_seeds``): its run went non-finite, or its
       rmse.a exceeded the benchmark's fraction (½ by default) of the climatological rmse of
       its truth over the scored run or over its last 10 % — the filter lost the truth for
       good. Only the runner sees each seed's series, so this flag is taken as stored. It is
       a deliberately lenient bound: a uniform, tighter fraction of climatology would flag
       filters that do track the truth (static-gain optimal interpolation scores 0.16, 0.26 and
       0.38 of climatology on the DAPPER L63, L96 and KS setups). Hence the two relative
       tests:
    b. its rmse.a has no finite value, or rmse.a > 2 × spread.a (``DIVERGENCE_SPREAD_FACTOR``):
       the filter's own error estimate no longer covers its actual error. This is the
       classical definition of filter divergence (Jazwinski 1970, *Stochastic Processes and
       Filtering Theory*; Fitzgerald 1971, IEEE TAC 16(6)): the computed covariance is too
       small, the gain collapses and the observations are ignored while the error grows. A
       statistically consistent ensemble has E[rmse²] ≈ (1 + 1/N)·spread², so
       rmse ≤ 1.22·spread for N ≥ 2; a factor 2 (the variance under-estimated four-fold) is
       far beyond finite-ensemble effects and ordinary mis-tuning. Applied only when the
       method reports a spread (a finite, non-negative ``spread_a`` of that seed);
    c. rmse.a > 2 × the published rmse.a of the same setup (``DIVERGENCE_REFERENCE_FACTOR``,
       when the cell has one): twice the error of the same filter in a long published run is
       not seed noise (which the ``≠ ref`` test measures, at a few per cent) but a run that
       lost track for long stretches.

    Without per-seed values (lists missing or of the wrong length) the tests apply to the
    cell's means and ``cell["diverged"]``.
    """
    seeds = _seeds(cell)
    runner = cell.get("diverged_seeds")
    flagged = set(runner) if isinstance(runner, Sequence) and not isinstance(runner, str) else set()
    rmse = seed_values(cell, "rmse_a")
    spread = seed_values(cell, "spread_a")
    if seeds and len(rmse) == len(seeds):
        if len(spread) != len(seeds):
            spread = [None] * len(seeds)
        units = [
            (seed, rmse[i], spread[i], seed in flagged or (not flagged and _cell_flag(cell)))
            for i, seed in enumerate(seeds)
        ]
    else:
        by_runner = bool(flagged) or _cell_flag(cell)
        units = [(None, metric(cell, "rmse_a"), metric(cell, "spread_a"), by_runner)]
    ref = published_rmse(cell)
    reasons: list[tuple[Any, str]] = []
    for seed, r, sp, by_runner in units:
        if not _finite(r):
            reasons.append((seed, "no finite rmse.a (the run went non-finite)"))
            continue
        if by_runner:
            reasons.append(
                (seed, f"rmse.a {r:#.3g}: lost the truth or went non-finite (runner's flag)")
            )
        if _finite(sp) and sp >= 0 and r > DIVERGENCE_SPREAD_FACTOR * sp:
            reasons.append((seed, f"rmse.a {r:#.3g} > 2 × spread.a {sp:#.3g}"))
        if ref is not None and ref > 0 and r > DIVERGENCE_REFERENCE_FACTOR * ref:
            reasons.append((seed, f"rmse.a {r:#.3g} > 2 × published {ref:g}"))
    return Divergence(reasons=tuple(reasons))


def _cell_flag(cell: Mapping[str, Any]) -> bool:
    """The runner's cell-level flag when it lists no seeds (older or hand-written files)."""
    return bool(cell.get("diverged", False)) and not cell.get("diverged_seeds")


@dataclass(frozen=True)
class LeaderboardRow:
    """One ranked line of a benchmark's table (the cell is the JSON dict, unchanged)."""

    rank: int
    cell: Mapping[str, Any]
    deviation: Deviation | None
    source: int | None = None  # 1-based footnote number of the reference's citation
    divergence: Divergence = Divergence()

    @property
    def method(self) -> str:
        return str(self.cell["method"])

    @property
    def diverged(self) -> bool:
        """The leaderboard's verdict (:func:`divergence`), not only the runner's flag."""
        return self.divergence.diverged

    @property
    def deviates(self) -> bool:
        """A reference deviation beyond seed noise (and not diverged)."""
        return not self.diverged and self.deviation is not None and self.deviation.significant

    @property
    def n_seeds(self) -> int:
        return len(_seeds(self.cell))


def _rank_key(cell: Mapping[str, Any], diverged: bool) -> tuple[bool, bool, float, str]:
    mean = metric(cell, "rmse_a", "mean")
    finite = _finite(mean)
    return (diverged, not finite, mean if finite else math.inf, str(cell["method"]))


def benchmark_tables(results: Mapping[str, Any]) -> dict[str, list[LeaderboardRow]]:
    """Benchmark name → its rows, ranked (see the module docstring). Benchmarks sorted by name."""
    _check_schema(results)
    by_bench: dict[str, list[Mapping[str, Any]]] = {}
    for key, cell in results["cells"].items():
        bench = str(cell.get("benchmark") or key.split("/", 1)[0])
        by_bench.setdefault(bench, []).append(cell)
    tables: dict[str, list[LeaderboardRow]] = {}
    for bench in sorted(by_bench):
        verdicts = [(c, divergence(c)) for c in by_bench[bench]]
        verdicts.sort(key=lambda cv: _rank_key(cv[0], cv[1].diverged))
        sources = _sources_of([c for c, _ in verdicts])
        tables[bench] = [
            LeaderboardRow(
                rank=i + 1,
                cell=c,
                deviation=reference_deviation(c),
                source=sources.index(_citation(c)) + 1 if _citation(c) in sources else None,
                divergence=div,
            )
            for i, (c, div) in enumerate(verdicts)
        ]
    return tables


def _citation(cell: Mapping[str, Any]) -> str | None:
    """The citation of a cell's reference, if it has a published value or label to cite."""
    ref = cell.get("reference")
    if not isinstance(ref, Mapping) or not ref.get("citation"):
        return None
    if _num(ref.get("rmse_a")) is None and not ref.get("label"):
        return None
    return str(ref["citation"])


def _sources_of(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in cells:
        cit = _citation(c)
        if cit is not None and cit not in out:
            out.append(cit)
    return out


def benchmark_sources(rows: Sequence[LeaderboardRow]) -> list[str]:
    """The distinct citations of a benchmark's table, in footnote order (``[1]`` first)."""
    return _sources_of([r.cell for r in rows])


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def _nonfinite_text(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def format_number(x: Any, *, signed: bool = False, digits: int = 4) -> str:
    """``digits`` significant digits; ``—`` when missing; ``nan``/``inf`` when not finite."""
    if isinstance(x, bool):
        return str(x).lower()
    v = _num(x)
    if v is None:
        return MISSING
    if not math.isfinite(v):
        return _nonfinite_text(v)
    return format(v, f"{'+' if signed else ''}.{digits}g")


def noise_decimals(se: float) -> int:
    """Decimal places that show a standard error ``se > 0`` with one significant digit, or two
    when its first digit is a 1 (0.0031 → 3, 0.0014 → 4, 0.0096 → 2 as it rounds to 0.01,
    12 → 0, 35 → −1). Means are printed to the same decimal place."""
    lead = int(f"{se:.17e}"[0])  # the first digit of the value itself, not of a rounding
    sig = 2 if lead == 1 else 1
    rounded = float(f"{se:.{sig - 1}e}")
    return sig - 1 - math.floor(math.log10(rounded))


def _fixed(x: float, decimals: int, *, signed: bool = False) -> str:
    """``x`` rounded to ``decimals`` places (negative: to tens, hundreds, ...), no ``-0``."""
    if decimals >= 0:
        text = f"{x:.{decimals}f}"
    else:
        text = f"{round(x, decimals):.0f}"
    if float(text) == 0:
        return text.lstrip("-")
    return "+" + text if signed and not text.startswith("-") else text


def _capped(mean: float, decimals: int) -> int:
    """No more than MAX_DIGITS significant digits for ``mean``."""
    if mean == 0:
        return decimals
    return min(decimals, MAX_DIGITS - 1 - math.floor(math.log10(abs(mean))))


def _plain(x: float, digits: int, *, signed: bool = False) -> str:
    """``digits`` significant digits, positional (no exponent) between 1e-4 and 1e6."""
    if x == 0:
        return "0"
    if not 1e-4 <= abs(x) < 1e6:
        return format(x, f"{'+' if signed else ''}.{digits}g")
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return _fixed(float(f"{x:.{digits - 1}e}"), decimals, signed=signed)


def format_score(s: Score, *, se_of: Score | None = None, signed: bool = False) -> str:
    """The mean of ``s`` rounded to its seed noise (the s.e. of ``se_of`` when given), without
    the ``±``; 3 significant digits without a noise estimate; ``—`` / ``nan`` as usual."""
    if s.mean is None:
        return MISSING
    if not math.isfinite(s.mean):
        return _nonfinite_text(s.mean)
    se = (se_of or s).se
    if se is None or not math.isfinite(se) or se == 0:
        return _plain(s.mean, UNKNOWN_NOISE_DIGITS, signed=signed)
    return _fixed(s.mean, _capped(s.mean, noise_decimals(se)), signed=signed)


def format_mean_se(s: Score) -> str:
    """``mean ± s.e.`` rounded to the s.e. (:func:`noise_decimals`); the mean alone (3
    significant digits, no ``± 0``) without a noise estimate; ``—`` / ``nan`` as usual."""
    if s.mean is None or not math.isfinite(s.mean):
        return format_score(s)
    se = s.se
    if se is None or not math.isfinite(se):
        return _plain(s.mean, UNKNOWN_NOISE_DIGITS)
    if se == 0:  # n >= 2 identical seeds: exact
        return f"{s.mean:.{MAX_DIGITS}g} ± 0"
    decimals = _capped(s.mean, noise_decimals(se))
    se_text = _fixed(se, decimals) if float(_fixed(se, decimals)) > 0 else format(se, ".1g")
    return f"{_fixed(s.mean, decimals)} ± {se_text}"


def full_precision(x: Any) -> str:
    """A per-seed value as stored (shortest round-trip repr); ``—`` / ``nan`` as usual."""
    v = _num(x)
    if v is None:
        return MISSING
    if not math.isfinite(v):
        return _nonfinite_text(v)
    return repr(v)


def _config_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def config_summary(config: Mapping[str, Any] | None) -> str:
    """``key=value`` pairs sorted by key, comma separated (floats in ``%g`` form), less ``family``
    (shown on its own)."""
    keys = sorted(k for k in (config or {}) if k != "family")
    if not keys:
        return MISSING
    return ", ".join(f"{k}={_config_value(config[k])}" for k in keys)


def _reference(cell: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = cell.get("reference")
    return ref if isinstance(ref, Mapping) else {}


# ---------------------------------------------------------------------------------------------
# Cell texts (shared by Markdown, HTML and terminal)
# ---------------------------------------------------------------------------------------------


def verdict(row: LeaderboardRow) -> str:
    """The verdict column: ``DIVERGED (seeds …)``, ``≠ ref (worse|better)``, ``≈ ref``,
    ``1 seed`` or ``—`` (see the module docstring)."""
    if row.diverged:
        return row.divergence.label()
    dev = row.deviation
    if score(row.cell, "rmse_a").n < 2:
        return "1 seed" if row.n_seeds == 1 else MISSING
    if dev is None:
        return MISSING
    return f"≠ ref ({dev.direction})" if dev.significant else "≈ ref"


def _ref_text(row: LeaderboardRow, *, footnote: bool = True) -> str:
    ref = published_rmse(row.cell)
    value = MISSING if ref is None else format(ref, "g")
    if not footnote or row.source is None:
        return value
    return f"[{row.source}]" if ref is None else f"{value} [{row.source}]"


def _delta_text(row: LeaderboardRow) -> str:
    if row.deviation is None:
        return MISSING
    rm = score(row.cell, "rmse_a")
    delta = Score(mean=row.deviation.delta, std=rm.std, n=rm.n)
    return format_score(delta, signed=True)


def _ms_text(cell: Mapping[str, Any]) -> str:
    sec = _num(cell.get("seconds_per_cycle"))
    if sec is None or not math.isfinite(sec):
        return format_number(sec)
    return _plain(1e3 * sec, 3)


def _seconds_text(cell: Mapping[str, Any], key: str) -> str:
    sec = _num(cell.get(key))
    if sec is None or not math.isfinite(sec):
        return format_number(sec)
    return _plain(sec, 3)


def per_seed_compact(row: LeaderboardRow) -> str:
    """rmse.a of each seed, rounded like the row's mean (the Markdown's per-seed column)."""
    rm = score(row.cell, "rmse_a")
    out = []
    for v in rm.per_seed:
        out.append(format_score(Score(mean=v, std=None, n=0), se_of=rm) if v is not None else "—")
    return ", ".join(out) if out else MISSING


def seed_tooltip(row: LeaderboardRow, name: str = "rmse_a") -> str:
    """``seed 0: 0.5669393022950759; seed 1: ...; std ...`` (full precision, HTML hover)."""
    s = score(row.cell, name)
    seeds = _seeds(row.cell)
    if not s.per_seed:
        return ""
    parts = [
        f"seed {seeds[i] if i < len(seeds) else i}: {full_precision(v)}"
        for i, v in enumerate(s.per_seed)
    ]
    if s.se is not None:
        parts.append(f"std {full_precision(s.std)}, s.e. {full_precision(s.se)}")
    return "; ".join(parts)


def vi_cost_text(cell: Mapping[str, Any]) -> str:
    """The VI cost as ``mean ± s.e.``; ``—`` when the method has none or ANY seed failed (a
    failed run must not leave a plausible mean of the other seeds)."""
    s = score(cell, "vi_cost")
    if s.mean is None or not s.per_seed or any(not _finite(v) for v in s.per_seed):
        return MISSING
    return format_mean_se(s)


@dataclass(frozen=True)
class Column:
    """A table column: short key (HTML class / tests), header, the cell text of a row, whether
    it is numeric (right-aligned), whether it may be left out of a benchmark whose rows all
    miss it (``optional``), and its definition (HTML header tooltip)."""

    key: str
    header: str
    text: Callable[[LeaderboardRow], str]
    numeric: bool = True
    optional: bool = False
    doc: str = ""


def _score_column(key: str, header: str, doc: str) -> Column:
    return Column(key, header, lambda r: format_score(score(r.cell, key)), optional=True, doc=doc)


COLUMNS: tuple[Column, ...] = (
    Column("rank", "#", lambda r: str(r.rank), doc="rank by mean rmse.a; diverged cells last"),
    Column(
        "method",
        "method",
        lambda r: r.method,
        numeric=False,
        doc="click a method for its configuration and per-seed values",
    ),
    Column(
        "rmse_a",
        "rmse.a",
        lambda r: format_mean_se(score(r.cell, "rmse_a")),
        doc="analysis rmse: time mean per seed, mean ± standard error over seeds",
    ),
    Column("verdict", "verdict", verdict, numeric=False, doc="divergence / reference verdict"),
    Column(
        "ref_rmse_a",
        "ref.",
        _ref_text,
        optional=True,
        doc="published rmse.a of the same setup [source]",
    ),
    Column("delta_ref", "Δ ref", _delta_text, optional=True, doc="ours − published rmse.a"),
    _score_column("rmse_f", "rmse.f", "forecast rmse: time mean per seed, mean over seeds"),
    _score_column("rmse_s", "rmse.s", "smoothed-estimate rmse (smoothers)"),
    _score_column("spread_a", "spread.a", "analysis spread, √(mean ensemble variance)"),
    _score_column(
        "crps",
        "CRPS",
        "fair ensemble CRPS (weighted for particle filters, closed form for Gaussian filters)",
    ),
    _score_column("rank_delta", "rank δ", "χ²/(B−1) of the rank histogram: 1 = flat"),
    _score_column("log_likelihood", "log-lik", "mean log p(y_k | y_1:k-1) per cycle"),
    Column(
        "vi_cost",
        "VI cost",
        lambda r: vi_cost_text(r.cell),
        optional=True,
        doc="VI cost (Bach et al. 2025, eq. 2.5 per cycle; lower is better): mean ± s.e.",
    ),
    Column(
        "ms_per_cycle",
        "ms/cycle",
        lambda r: _ms_text(r.cell),
        doc="wall time per cycle (compiled, seeds batched), milliseconds",
    ),
    Column(
        "compile_seconds",
        "compile s",
        lambda r: _seconds_text(r.cell, "compile_seconds"),
        optional=True,
        doc="compile (or compile-cache load) time of the cell, seconds",
    ),
    Column("n_seeds", "seeds", lambda r: str(r.n_seeds), doc="number of seeds"),
)
# The Markdown (read on GitHub, ~900 px wide) leaves rmse.f, compile time and the seed count to
# its details block and adds the per-seed rmse.a (the HTML shows it on hover and in the detail
# rows).
MARKDOWN_COLUMNS: tuple[Column, ...] = (
    *(c for c in COLUMNS if c.key not in ("rmse_f", "compile_seconds", "n_seeds")),
    Column("rmse_a_seeds", "rmse.a per seed", per_seed_compact, numeric=False),
)


def table_columns(
    rows: Sequence[LeaderboardRow], columns: Sequence[Column] = COLUMNS
) -> list[Column]:
    """``columns`` less the optional ones that no row of ``rows`` fills (all ``—``)."""
    return [c for c in columns if not c.optional or any(c.text(r) != MISSING for r in rows)]


def row_texts(row: LeaderboardRow, columns: Sequence[Column] = COLUMNS) -> list[str]:
    """The texts of a row, one per column."""
    return [c.text(row) for c in columns]


def benchmark_caption(rows: Sequence[LeaderboardRow]) -> str:
    """A one-line description of a benchmark's runs (cycles, burn-in, seeds)."""
    if not rows:
        return ""
    cycles = sorted({r.cell.get("n_cycles") for r in rows if r.cell.get("n_cycles") is not None})
    burn = sorted(
        {r.cell.get("burn_in_cycles") for r in rows if r.cell.get("burn_in_cycles") is not None}
    )
    seeds = sorted({s for r in rows for s in _seeds(r.cell)})
    parts = []
    if cycles:
        parts.append("cycles " + "/".join(str(c) for c in cycles))
    if burn:
        parts.append("burn-in " + "/".join(str(b) for b in burn) + " cycles")
    if seeds:
        parts.append("seeds " + ", ".join(str(s) for s in seeds))
    return f"{len(rows)} method(s); " + "; ".join(parts) if parts else f"{len(rows)} method(s)"


def run_info(results: Mapping[str, Any]) -> dict[str, list[str]]:
    """Distinct devices, git revisions, timestamps range and package versions over all cells."""
    cells = list(results["cells"].values())
    devices = sorted({str(c["device"]) for c in cells if c.get("device")})
    revs = sorted({str(c["git_revision"]) for c in cells if c.get("git_revision")})
    stamps = sorted(str(c["timestamp"]) for c in cells if c.get("timestamp"))
    versions: dict[str, set[str]] = {}
    for c in cells:
        for dist, ver in (c.get("versions") or {}).items():
            versions.setdefault(str(dist), set()).add(str(ver))
    return {
        "devices": devices,
        "git revisions": revs or ["unknown"],
        "timestamps": [stamps[0], stamps[-1]] if len(stamps) > 1 else stamps,
        "versions": [f"{d} {'/'.join(sorted(v))}" for d, v in sorted(versions.items())],
    }


# The per-seed detail: (label, score name) rows, printed at full precision.
DETAIL_SCORES: tuple[tuple[str, str], ...] = (
    ("rmse.a", "rmse_a"),
    ("rmse.f", "rmse_f"),
    ("rmse.s", "rmse_s"),
    ("spread.a", "spread_a"),
    ("CRPS", "crps"),
    ("rank χ²", "rank_chi2"),
    ("rank δ", "rank_delta"),
    ("log-lik", "log_likelihood"),
    ("VI cost", "vi_cost"),
    ("climatology rmse", "climatology"),
)


def detail_scores(row: LeaderboardRow) -> list[tuple[str, list[str], str, str]]:
    """Per-seed rows of the details: ``(label, per-seed texts, mean, std)`` at full precision,
    for every score the cell has; plus ρ (rank histogram) per seed when available."""
    out = []
    n = row.n_seeds
    for label, name in DETAIL_SCORES:
        s = score(row.cell, name)
        if not s.per_seed and s.mean is None:
            continue
        if all(v is None for v in s.per_seed) and s.mean is None:
            continue
        per = [full_precision(v) for v in s.per_seed] if len(s.per_seed) == n else [MISSING] * n
        out.append((label, per, full_precision(s.mean), full_precision(s.std)))
    rho = rank_rho(row.cell)
    if rho and len(rho) == n:
        r = _score_of(None, None, rho, n)
        vals = [v for v in rho if _finite(v)]
        mean = sum(vals) / len(vals) if vals else None
        out.append(
            (
                "rank ρ",
                [full_precision(v) for v in rho],
                full_precision(mean),
                full_precision(r.std),
            )
        )
    return out


def detail_facts(row: LeaderboardRow, sources: Sequence[str]) -> list[tuple[str, str]]:
    """``(label, text)`` facts of the details: family, config, published setup, verdict reasons,
    timings."""
    cell = row.cell
    ref = _reference(cell)
    facts = [
        ("family", str(cell.get("family") or MISSING)),
        ("config", config_summary(cell.get("config"))),
    ]
    if ref.get("label") or published_rmse(cell) is not None:
        pub = _ref_text(row, footnote=False)
        label = str(ref.get("label") or MISSING)
        src = f" [{row.source}]" if row.source is not None else ""
        facts.append(("published", f"{pub} ({label}){src}"))
    if row.diverged:
        facts.append(("diverged", row.divergence.explanation()))
    elif row.deviation is not None:
        d = row.deviation
        test = (
            f"|Δ| {abs(d.delta):.3g} {'>' if d.significant else '≤'} threshold {d.threshold:.3g}"
            if d.testable
            else "1 seed: no noise estimate, no test"
        )
        facts.append(("reference test", test))
    facts.append(("seconds per cycle", full_precision(cell.get("seconds_per_cycle"))))
    facts.append(("compile seconds", full_precision(cell.get("compile_seconds"))))
    facts.append(("seeds", ", ".join(str(x) for x in _seeds(cell)) or MISSING))
    return facts


def slug(name: str) -> str:
    """A lower-case identifier made of ``[a-z0-9-]`` (for ids and file names)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "x"


def benchmark_slugs(names: Sequence[str]) -> dict[str, str]:
    """Unique slugs for benchmark names (a counter is appended on collision)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = slug(name)
        s, i = base, 2
        while s in used:
            s, i = f"{base}-{i}", i + 1
        used.add(s)
        out[name] = s
    return out


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    """Backslash-escape what GitHub would read as table pipes, HTML tags, code or emphasis."""
    text = text.replace("\\", "\\\\").replace("\n", " ")
    return re.sub(r"([|<`*])", r"\\\1", text)


def _md_details(rows: Sequence[LeaderboardRow], sources: Sequence[str]) -> list[str]:
    lines = [
        "<details><summary>Configurations, published setups, verdict reasons and per-seed "
        "values (full precision)</summary>",
        "",
    ]
    for row in rows:
        lines.append(f"- **{_md_escape(row.method)}**")
        for label, text in detail_facts(row, sources):
            lines.append(f"  - {_md_escape(label)}: {_md_escape(text)}")
        seeds = ", ".join(str(s) for s in _seeds(row.cell))
        per = detail_scores(row)
        if per:
            lines.append(f"  - per seed ({_md_escape(seeds)}):")
            for label, vals, mean, std in per:
                lines.append(
                    f"    - {_md_escape(label)}: {', '.join(vals)} (mean {mean}, std {std})"
                )
    lines += ["", "</details>", ""]
    return lines


def render_markdown(
    results: Mapping[str, Any],
    *,
    plots: Mapping[str, Sequence[tuple[str, str]] | Sequence[tuple[str, str, str]]] | None = None,
) -> str:
    """The leaderboard as GitHub-flavoured Markdown: one table per benchmark, then a collapsed
    details block (configs, per-seed values) and the plots.

    ``plots`` optionally maps a benchmark to ``(alt text, relative path[, caption])`` entries
    linked below its table (``render_all`` passes the PNG files it wrote).
    """
    tables = benchmark_tables(results)
    lines = ["# filterax leaderboard", "", _md_escape(RANKING_RULE), ""]
    lines += [f"- {_md_escape(rule)}" for rule in (DIVERGENCE_RULE, DEVIATION_RULE)]
    lines += [f"- {_md_escape(RANK_DELTA_RULE)}", f"- {_md_escape(VI_COST_RULE)}", ""]
    for bench, rows in tables.items():
        cols = table_columns(rows, MARKDOWN_COLUMNS)
        lines += [f"## {_md_escape(bench)}", "", _md_escape(benchmark_caption(rows)), ""]
        lines.append("| " + " | ".join(_md_escape(c.header) for c in cols) + " |")
        lines.append("|" + "|".join("---:" if c.numeric else ":---" for c in cols) + "|")
        for row in rows:
            lines.append("| " + " | ".join(_md_escape(t) for t in row_texts(row, cols)) + " |")
        lines.append("")
        sources = benchmark_sources(rows)
        if sources:
            lines += ["Sources:", ""]
            lines += [f"- [{i}] {_md_escape(cit)}" for i, cit in enumerate(sources, 1)]
            lines.append("")
        lines += _md_details(rows, sources)
        for entry in (plots or {}).get(bench, ()):
            alt, rel = entry[0], entry[1]
            lines += [f"![{_md_escape(alt)}]({rel})", ""]
            if len(entry) > 2 and entry[2]:
                lines += [f"*{_md_escape(entry[2])}*", ""]
    info = run_info(results)
    lines += ["## Runs", ""]
    for k, vals in info.items():
        lines.append(f"- {k}: {_md_escape(', '.join(vals)) if vals else MISSING}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Terminal (rich)
# ---------------------------------------------------------------------------------------------

# The compact view, in display order; TERMINAL_DROP_ORDER says which go first on a narrow
# console (rank, method, rmse.a and the verdict always stay).
_TERMINAL_COLUMNS: tuple[Column, ...] = (
    Column("rank", "#", lambda r: str(r.rank)),
    Column("method", "method", lambda r: r.method, numeric=False),
    Column("rmse_a", "rmse.a", lambda r: format_mean_se(score(r.cell, "rmse_a"))),
    Column("verdict", "verdict", verdict, numeric=False),
    Column("ref_rmse_a", "ref.", lambda r: _ref_text(r, footnote=False), optional=True),
    Column("delta_ref", "Δ ref", _delta_text, optional=True),
    Column(
        "spread_a",
        "spread.a",
        lambda r: format_score(score(r.cell, "spread_a")),
        optional=True,
    ),
    Column("rmse_s", "rmse.s", lambda r: format_score(score(r.cell, "rmse_s")), optional=True),
    Column("ms_per_cycle", "ms/cycle", lambda r: _ms_text(r.cell)),
)
TERMINAL_DROP_ORDER = ("delta_ref", "ms_per_cycle", "rmse_s", "spread_a", "ref_rmse_a")


VERDICT_LINE = 24  # the terminal keeps a verdict up to this long on one line when it can


def _terminal_table(
    bench: str, rows: Sequence[LeaderboardRow], cols: Sequence[Column], *, wrap_verdict: bool
) -> Table:
    notes = []
    for row in rows:
        ref = _reference(row.cell)
        if row.source is not None:
            label = ref.get("label") or MISSING
            notes.append(f"{row.method}: ref. {label} [{row.source}]")
    notes += [f"[{i}] {cit}" for i, cit in enumerate(benchmark_sources(rows), 1)]
    table = Table(
        title=f"{bench} — {benchmark_caption(rows)}",
        caption="\n".join(notes) or None,
        caption_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    texts = [[c.text(r) for c in cols] for r in rows]
    for j, c in enumerate(cols):
        values = [t[j] for t in texts]
        wraps = c.key == "verdict"  # wrapped between words only
        pieces = [w for v in values for w in v.split()] if wraps else values
        need = max([len(c.header), *(len(p) for p in pieces)])
        if wraps and not wrap_verdict:
            need = max(need, min(VERDICT_LINE, max(len(v) for v in values)))
        table.add_column(
            c.header,
            justify="right" if c.numeric else "left",
            no_wrap=not wraps,
            overflow="fold",
            min_width=need,
        )
    for row, t in zip(rows, texts, strict=True):
        style = "red" if row.diverged else ("yellow" if row.deviates else None)
        table.add_row(*(Text(x) for x in t), style=style)
    return table


def terminal_tables(results: Mapping[str, Any], *, width: int | None = None) -> list[Table]:
    """One rich Table per benchmark: the compact columns (configs, rmse.f, CRPS, rank δ, log-lik,
    compile times and per-seed values are in the Markdown/HTML), published labels and sources
    in the caption. With ``width``, columns are left out (``TERMINAL_DROP_ORDER``) until the
    table fits with each verdict on one line (up to ``VERDICT_LINE`` characters), so that no
    method name or number is cut or wrapped; failing that the verdict wraps between words."""
    out = []
    # measured on a wide console: a measurement is clamped to the console's width
    measure = Console(width=10_000, file=io.StringIO())
    for bench, rows in benchmark_tables(results).items():
        cols = table_columns(rows, _TERMINAL_COLUMNS)
        table = _terminal_table(bench, rows, cols, wrap_verdict=False)
        drop = [k for k in TERMINAL_DROP_ORDER if any(c.key == k for c in cols)]
        while width is not None and drop and measure.measure(table).minimum > width:
            key = drop.pop(0)
            cols = [c for c in cols if c.key != key]
            table = _terminal_table(bench, rows, cols, wrap_verdict=False)
        if width is not None and measure.measure(table).minimum > width:
            # still too wide: let the verdict wrap between its words
            table = _terminal_table(bench, rows, cols, wrap_verdict=True)
        out.append(table)
    return out


def print_leaderboard(results: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the leaderboard's rich tables (with colour when the console supports it), fitted to
    the console's width (80 columns when the output is not a terminal)."""
    console = console or Console()
    for table in terminal_tables(results, width=console.width):
        console.print(table)
    console.print(Text(TERMINAL_LEGEND, style="dim"))


def render_terminal(results: Mapping[str, Any], *, width: int = 160) -> str:
    """The terminal leaderboard as plain text (rich tables rendered ``width`` columns wide)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    print_leaderboard(results, console)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------


def render_all(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.html`` and ``plots/*.png`` under ``out_dir``.

    Returns ``{"markdown": path, "html": path, "plots/<file>.png": path, ...}``. Figures an
    earlier rendering wrote that this one does not make (``plots/<slug>--<kind>.png``, e.g. an
    rmse-vs-ensemble-size plot for a benchmark now with one size) are removed, so that the
    folder holds what the results give. When ``<out_dir>/experiments.json`` exists, the HTML
    gets an "Experiments" section and its figures go to ``plots/experiment-*.png``.
    """
    from ._html import render_html
    from ._plots import PLOT_KINDS, make_plots

    _check_schema(results)
    out = Path(out_dir)
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = make_plots(results)
    paths: dict[str, Path] = {}
    links: dict[str, list[tuple[str, str, str]]] = {}
    for plot in plots:
        p = plot_dir / plot.filename
        write_bytes_atomic(p, plot.png)
        paths[f"plots/{plot.filename}"] = p
        links.setdefault(plot.benchmark, []).append(
            (plot.alt, f"plots/{plot.filename}", plot.caption)
        )
    for stale in sorted(plot_dir.glob("*--*.png")):
        if stale.name.rsplit("--", 1)[1][: -len(".png")] in PLOT_KINDS and stale not in (
            paths.values()
        ):
            stale.unlink()
    from ._experiment_plots import make_experiment_plots
    from ._experiments import load_experiments

    experiments = load_experiments(out)
    experiment_plots = make_experiment_plots(experiments)
    for plot in experiment_plots:
        p = plot_dir / plot.filename
        write_bytes_atomic(p, plot.png)
        paths[f"plots/{plot.filename}"] = p
    md = out / "leaderboard.md"
    write_text_atomic(md, render_markdown(results, plots=links))
    html = out / "leaderboard.html"
    write_text_atomic(
        html,
        render_html(
            results,
            plots=plots,
            experiments=experiments,
            experiment_plots=experiment_plots,
        ),
    )
    return {"markdown": md, "html": html, **paths}
