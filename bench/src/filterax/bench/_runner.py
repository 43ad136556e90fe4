"""Score (benchmark, method) cells: one compiled, seed-vmapped call per cell, JSON results.

Per seed ``s`` the keys are ``k = jax.random.key(s)``; the truth is simulated with
``fold_in(k, 0)`` (so every method on a benchmark sees the same truth for the same seed, as in
DAPPER), the initial ensemble is drawn with ``fold_in(k, 1)`` and the filter runs with
``fold_in(k, 2)``. Simulation, assimilation and scoring are one jitted function of the key,
`jax.vmap`-ed over the seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._compile_cache import CacheHits
from ._files import check_output_dir, read_schema_json, write_json_atomic
from ._registry import (
    Benchmark,
    MethodConfig,
    _as_seeds,
    finite_or_none,
    get_suite,
    resolve_cells,
)

__all__ = [
    "RESULTS_SCHEMA",
    "Trajectory",
    "cell_function",
    "load_results",
    "run",
    "score_cell",
    "seed_keys",
    "vi_cost_series",
]

RESULTS_SCHEMA = 1
DIVERGENCE_FRACTION = 0.5  # default: rmse.a > 0.5 x climatology (REFERENCES.md) = diverged
MAX_SERIES_POINTS = 500
PIT_BINS = 21  # PIT-histogram bins for Gaussian filters and weighted particles


class Trajectory(eqx.Module):
    """What a method's run hands to the scorer (one seed; row ``k`` = observation time ``k``).

    - `analysis_mean`, `forecast_mean`: ``(T, N_x)``.
    - `ensembles`: ``(T, N_e, N_x)`` analysis ensembles (for CRPS and the rank histogram), or
      ``None`` when `variances` describe a Gaussian.
    - `log_weights`: ``(T, N_e)`` log-weights of weighted `ensembles` (a particle filter's
      saved `ParticleState`), or ``None`` for equally weighted members.
    - `variances`: ``(T, N_x)`` analysis variances of a Gaussian filter, or ``None``.
    - `analysis_spread`: ``(T,)`` DAPPER's ``rmv.a``; computed from `ensembles`/`variances`
      when ``None``.
    - `log_likelihood`: ``(T,)`` per-cycle ``log p(y_k | y_{1:k-1})`` (NaN if unavailable).
    - `nonfinite`: scalar bool, the run produced NaN/inf.
    - `smoothed_mean`: ``(T, N_x)`` smoothed means of a smoother (DAPPER's ``.s`` estimate,
      scored as ``rmse.s``), or ``None`` for filters.
    - `vi_cost`: ``(T,)`` per-cycle variational cost (`vi_cost_series`; Bach et al. 2025, eq.
      2.5a), NaN on failed cycles, or ``None`` when the run saved no forecast/analysis pair
      the cost can be computed from.
    """

    analysis_mean: Float[Array, "T N_x"]
    forecast_mean: Float[Array, "T N_x"]
    ensembles: Float[Array, "T N_e N_x"] | None = None
    log_weights: Float[Array, "T N_e"] | None = None
    variances: Float[Array, "T N_x"] | None = None
    analysis_spread: Float[Array, " T"] | None = None
    log_likelihood: Float[Array, " T"] | None = None
    nonfinite: Any = None
    smoothed_mean: Float[Array, "T N_x"] | None = None
    vi_cost: Float[Array, " T"] | None = None


class CellOutput(eqx.Module):
    """Per-seed series computed inside the compiled cell call."""

    rmse_a: Float[Array, " T"]
    rmse_f: Float[Array, " T"]
    spread_a: Float[Array, " T"]
    log_likelihood: Float[Array, " T"]
    crps: Float[Array, " T"] | None
    rank_histogram: Int[Array, " B"] | None
    climatology: Float[Array, ""]
    nonfinite: Any
    rmse_s: Float[Array, " T"] | None = None
    vi_cost: Float[Array, " T"] | None = None


def seed_keys(seed: int) -> tuple[Any, Any, Any]:
    """The (truth, initial ensemble, filter) keys of scoring seed `seed`."""
    key = jax.random.key(seed)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)


def _is_ensemble_series(x: Any) -> bool:
    return isinstance(x, jax.Array) and x.ndim == 3


def _gaussian_series(belief: Any) -> tuple[Array, Array] | None:
    """``(means (T, N_x), covariances (T, N_x, N_x))`` of stacked Gaussian beliefs (a
    `GaussianState`'s ``mean``/``cov``, a `SqrtGaussianState`'s ``mean``/``chol``), else None."""
    mean = getattr(belief, "mean", None)
    if not (isinstance(mean, jax.Array) and mean.ndim == 2):
        return None
    cov = getattr(belief, "cov", None)
    if isinstance(cov, jax.Array) and cov.ndim == 3:
        return mean, cov
    chol = getattr(belief, "chol", None)
    if isinstance(chol, jax.Array) and chol.ndim == 3:
        return mean, chol @ jnp.swapaxes(chol, -1, -2)
    return None


def vi_cost_series(result: Any, model: Any, observations: Array) -> Array | None:
    """The per-cycle variational cost of a run saved with ``save="forecast_and_analysis"``.

    Ensemble filters (``(T, N_e, N_x)`` forecasts and analyses):
    `filterax.primitives.ensemble_vi_cost` (Gaussian projections with Ledoit-Wolf shrinkage
    ``gamma = 0.1`` to ``(tr C/d) I``, the member form of the expected log-likelihood). The
    forecast members drawn by `filterax.filters.run` already carry the model's process noise
    ``Sigma``, so ``Sigma`` is not added to their covariance a second time (the authors' code
    adds it because its forecast members are propagated without noise). Gaussian filters
    (means and covariances): `filterax.primitives.gaussian_vi_cost` (exact, no shrinkage; their
    forecast covariance holds ``Sigma``). Anything else (or a run without saved beliefs):
    ``None``. Rows of failed cycles are NaN.
    """
    import filterax.primitives as fxp

    forecasts, analyses = result.forecasts, result.analyses
    obs = jnp.asarray(observations)
    if _is_ensemble_series(forecasts) and _is_ensemble_series(analyses):
        dtype = analyses.dtype

        def one(xf, xa, y):
            return fxp.ensemble_vi_cost(
                xf, xa, y.astype(dtype), model.obs_op, model.obs_noise, shrinkage=0.1
            )

        cost = jax.vmap(one)(forecasts, analyses, obs)
    else:
        f, a = _gaussian_series(forecasts), _gaussian_series(analyses)
        if f is None or a is None:
            return None
        dtype = a[0].dtype

        def one_gaussian(mf, cf, ma, ca, y):
            return fxp.gaussian_vi_cost(
                mf, cf, ma, ca, y.astype(dtype), model.obs_op, model.obs_noise
            )

        cost = jax.vmap(one_gaussian)(*f, *a, obs)
    failed = result.cycle_status == result.NONFINITE
    return jnp.where(failed | ~jnp.isfinite(cost), jnp.nan, cost)


def _trajectory(result: Any, full: bool, vi_cost: Array | None = None) -> Trajectory:
    """A `Trajectory` from a `filterax.filters.RunResult` (ensembles when they were saved)."""
    ensembles = result.analyses if full else None
    log_weights = None
    particles = getattr(ensembles, "particles", None)
    if _is_ensemble_series(particles) and isinstance(
        getattr(ensembles, "log_weights", None), jax.Array
    ):
        # weighted particles (filterax.learn.ParticleState): scored with their weights
        ensembles, log_weights = particles, ensembles.log_weights
    elif ensembles is not None and not _is_ensemble_series(ensembles):
        ensembles = None  # a non-ensemble belief (a Gaussian state): no ensemble scores
    return Trajectory(
        analysis_mean=result.analysis_mean,
        forecast_mean=result.forecast_mean,
        ensembles=ensembles,
        log_weights=log_weights,
        analysis_spread=result.analysis_spread,
        log_likelihood=result.log_likelihood,
        nonfinite=result.status == result.NONFINITE,
        vi_cost=vi_cost,
    )


def _run_ensemble(
    method: MethodConfig, benchmark: Benchmark, params: Mapping[str, Any], keys, twin, full: bool
) -> Trajectory:
    from filterax.filters import EnsembleFilter

    _, k_ens, _ = keys
    ensemble_filter = EnsembleFilter(
        method.build_filter(params, benchmark),
        inflator=method.build_inflator(params, benchmark),
        rotate=method.rotate,
        context=benchmark.context() if method.context else None,
    )
    initial = benchmark.ssm.initial_ensemble(k_ens, method.n_ensemble)
    return _run_method(ensemble_filter, initial, benchmark, keys, twin, full)


def _run_cycled(
    method: MethodConfig, benchmark: Benchmark, params: Mapping[str, Any], keys, twin, full: bool
) -> Trajectory:
    _, k_init, _ = keys
    initial = method.build_initial(k_init, params, benchmark)
    return _run_method(method.build_filter(params, benchmark), initial, benchmark, keys, twin, full)


def _run_method(cycled: Any, initial: Any, benchmark: Benchmark, keys, twin, full: bool):
    # Every leaderboard row runs through the one driver of cycled methods; the benchmark's
    # StateSpaceModel is the model (its process noise is drawn per member by the driver).
    from filterax.filters import run

    result = run(
        cycled,
        benchmark.ssm,
        initial,
        twin.observations,
        twin.times,
        key=keys[2],
        # the forecasts too in full mode, for the VI cost (twice the ensemble memory:
        # `_memory_per_seed`)
        save="forecast_and_analysis" if full else "stats",
        throw=False,
    )
    vi_cost = vi_cost_series(result, benchmark.ssm, twin.observations) if full else None
    return _trajectory(result, full, vi_cost)


def _run_parametric(
    method: MethodConfig, benchmark: Benchmark, params: Mapping[str, Any], keys, twin, full: bool
) -> Trajectory:
    from filterax.filters import run

    model = benchmark.ssm
    _, _, k_da = keys
    # The Kalman filter is run by the one driver, as every cycled method is (the initial
    # condition is the pair (mean, cov), i.e. filt.init(mean, cov)); the per-cycle variances
    # (for the Gaussian CRPS) are its diagnostics; in full mode the forecast and analysis
    # Gaussians are saved too, for the VI cost.
    filt = method.build_filter(params, benchmark)
    initial = (model.x0_mean, model.x0_cov)
    save = "forecast_and_analysis" if full else "stats"
    result = run(
        filt, model, initial, twin.observations, twin.times, key=k_da, save=save, throw=False
    )
    return Trajectory(
        analysis_mean=result.analysis_mean,
        forecast_mean=result.forecast_mean,
        variances=result.diagnostics.analysis_variance,
        log_likelihood=result.log_likelihood,
        nonfinite=result.status == result.NONFINITE,
        vi_cost=vi_cost_series(result, model, twin.observations) if full else None,
    )


def _gaussian_crps(mean: Array, std: Array, truth: Array) -> Array:
    # Gneiting & Raftery (2007) eq. 5: CRPS of N(mu, s^2) at y.
    z = (truth - mean) / std
    cdf = jax.scipy.stats.norm.cdf(z)
    pdf = jax.scipy.stats.norm.pdf(z)
    return std * (z * (2 * cdf - 1) + 2 * pdf - 1 / jnp.sqrt(jnp.pi))


def _pit_histogram(pit: Array) -> Array:
    """Counts of probability-integral-transform values in `PIT_BINS` equal bins."""
    bins = jnp.clip(jnp.floor(pit * PIT_BINS).astype(jnp.int32), 0, PIT_BINS - 1)
    return jnp.sum(bins.reshape(-1)[:, None] == jnp.arange(PIT_BINS)[None, :], axis=0)


def _score(traj: Trajectory, truth: Array, burn: int, full: bool, climatology: Array) -> CellOutput:
    from filterax.primitives import crps_ensemble, rank_histogram, rms_spread, rmse, weighted_crps

    truth = truth.astype(traj.analysis_mean.dtype)

    def error(estimate):
        # A non-finite row (a failed cycle) must score NaN, not a silently finite number.
        finite = jnp.all(jnp.isfinite(estimate), axis=-1)
        return jnp.where(finite, rmse(jnp.where(finite[:, None], estimate, truth), truth), jnp.nan)

    rmse_a = error(traj.analysis_mean)
    rmse_f = error(traj.forecast_mean)
    spread = traj.analysis_spread
    if spread is None:
        if traj.ensembles is not None:
            spread = rms_spread(traj.ensembles)
        elif traj.variances is not None:
            spread = jnp.sqrt(jnp.mean(traj.variances, axis=-1))
        else:
            spread = jnp.full_like(rmse_a, jnp.nan)
    loglik = traj.log_likelihood
    if loglik is None:
        loglik = jnp.full_like(rmse_a, jnp.nan)
    nonfinite = traj.nonfinite
    if nonfinite is None:
        nonfinite = ~jnp.all(jnp.isfinite(traj.analysis_mean))
    crps = hist = None
    if full and traj.ensembles is not None and traj.log_weights is not None:
        # Weighted particles (a particle filter's analysis: reweighted and not yet resampled,
        # or carrying weight-root compensation weights): the CRPS of the weighted empirical
        # distribution, with the unbiased 1/(1 - sum W^2) spread term (= the fair CRPS for
        # equal weights); the histogram of the weighted PIT sum_i W_i 1{x_i <= y}.
        fair_crps = jax.vmap(functools.partial(weighted_crps, fair=True))
        crps = jnp.mean(fair_crps(traj.ensembles, traj.log_weights, truth), axis=-1)
        w = jax.nn.softmax(traj.log_weights[burn:], axis=-1)
        below = traj.ensembles[burn:] <= truth[burn:, None, :]
        hist = _pit_histogram(jnp.sum(w[:, :, None] * below, axis=1))
    elif full and traj.ensembles is not None:
        # The fair CRPS (Ferro 2014): unbiased for the distribution the members are drawn
        # from, so ensembles of different sizes (and Gaussian filters) compare.
        fair_crps = jax.vmap(functools.partial(crps_ensemble, fair=True))
        crps = jnp.mean(fair_crps(traj.ensembles, truth), axis=-1)
        hist = rank_histogram(traj.ensembles[burn:], truth[burn:])
    elif full and traj.variances is not None:
        std = jnp.sqrt(jnp.maximum(traj.variances, 0.0))
        crps = jnp.mean(_gaussian_crps(traj.analysis_mean, std, truth), axis=-1)
        # Probability-integral transform: the limit of the rank histogram of an infinite
        # ensemble drawn from the Gaussian, in PIT_BINS equal bins.
        hist = _pit_histogram(jax.scipy.stats.norm.cdf((truth - traj.analysis_mean) / std)[burn:])
    rmse_s = None if traj.smoothed_mean is None else error(traj.smoothed_mean)
    vi_cost = None
    if full and traj.vi_cost is not None:
        # a failed run scores NaN on every cycle (never a plausible partial mean)
        vi_cost = jnp.where(nonfinite, jnp.nan, traj.vi_cost)
    return CellOutput(
        rmse_a=rmse_a,
        rmse_f=rmse_f,
        rmse_s=rmse_s,
        vi_cost=vi_cost,
        spread_a=spread,
        log_likelihood=loglik,
        crps=crps,
        rank_histogram=hist,
        climatology=climatology,
        nonfinite=nonfinite,
    )


def cell_function(
    method: MethodConfig,
    benchmark: Benchmark,
    n_cycles: int,
    *,
    full: bool = True,
    static_params: Mapping[str, Any] | None = None,
) -> Callable[[Any, Mapping[str, Any]], CellOutput]:
    """``f(seed_key, dynamic_params) -> CellOutput`` for one seed: simulate, assimilate, score.

    `dynamic_params` are the hyper-parameters passed as arrays (vmappable, e.g. a tuning
    grid); they are merged over the method's parameters on `benchmark` and `static_params`.
    ``full=False`` skips the ensemble-based scores (CRPS, rank histogram) and keeps only
    statistics in the scan, as tuning needs.
    """
    base = {**method.params(benchmark), **(static_params or {})}
    burn = benchmark.burn_in(n_cycles)
    model = benchmark.ssm

    def fn(key, dynamic_params):
        params = {**base, **dynamic_params}
        keys = (jax.random.fold_in(key, 0), jax.random.fold_in(key, 1), jax.random.fold_in(key, 2))
        twin = model.simulate(keys[0], n_cycles)
        if method.runner is not None:
            traj = method.runner(keys, benchmark, twin, params)
        elif method.kind == "parametric":
            traj = _run_parametric(method, benchmark, params, keys, twin, full)
        elif method.kind == "cycled":
            traj = _run_cycled(method, benchmark, params, keys, twin, full)
        else:
            traj = _run_ensemble(method, benchmark, params, keys, twin, full)
        climatology = model.climatology_rmse(twin.truth)
        return _score(traj, twin.truth, burn, full, climatology)

    return fn


# --- host-side statistics ---------------------------------------------------------------


def _stats(per_seed: Sequence[float | None]) -> dict[str, Any]:
    vals = [v for v in per_seed if v is not None]
    mean = float(np.mean(vals)) if vals else None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
    return {"mean": mean, "std": std, "per_seed": list(per_seed)}


def _strict_stats(per_seed: Sequence[float | None]) -> dict[str, Any]:
    """`_stats` whose mean and std are None unless EVERY seed has a value: a seed that failed
    (NaN) must not be dropped silently, leaving a plausible mean of the others."""
    if any(v is None for v in per_seed):
        return {"mean": None, "std": None, "per_seed": list(per_seed)}
    return _stats(per_seed)


FINAL_FRACTION = 0.1  # the closing window checked for a filter that lost track for good


def diverged(
    rmse_a: Any,
    climatology: Any,
    nonfinite: Any,
    fraction: float | int | None = DIVERGENCE_FRACTION,
) -> np.ndarray:
    """Per run: non-finite, or rmse.a above ``fraction`` x climatology, either as the time
    mean over the scored cycles or over their final 10 % (``fraction=None``: only the
    non-finite test, for a method whose estimate is the climatology).

    The second test catches a filter that tracked for most of the run and then lost the truth
    for good (catastrophic divergence late in a long run), whose time mean can still sit below
    the threshold. `rmse_a` is ``(..., T_scored)``; the others broadcast against ``(...)``.
    """
    rmse_a = np.asarray(rmse_a, dtype=np.float64)
    n_final = max(1, int(round(FINAL_FRACTION * rmse_a.shape[-1])))
    with np.errstate(invalid="ignore"):
        whole = rmse_a.mean(axis=-1)
        final = rmse_a[..., -n_final:].mean(axis=-1)
        bad = ~np.isfinite(whole)
        if fraction is not None:
            threshold = fraction * np.asarray(climatology, dtype=np.float64)
            bad = bad | (whole > threshold) | (final > threshold)
    return np.asarray(nonfinite, dtype=bool) | bad


def _time_means(series: np.ndarray, burn: int) -> list[float | None]:
    return [finite_or_none(np.mean(row[burn:])) for row in np.asarray(series, dtype=np.float64)]


def _downsample(values: np.ndarray, times: np.ndarray) -> tuple[list, list]:
    n = len(values)
    stride = max(1, math.ceil(n / MAX_SERIES_POINTS))
    n_blocks = math.ceil(n / stride)
    vals, ts = [], []
    for i in range(n_blocks):
        block = values[i * stride : (i + 1) * stride]
        finite = block[np.isfinite(block)]
        vals.append(float(finite.mean()) if finite.size else None)
        ts.append(float(np.mean(times[i * stride : (i + 1) * stride])))
    return vals, ts


def _rank_chi2(counts: np.ndarray) -> float | None:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    expected = total / counts.size
    return float(np.sum((counts - expected) ** 2) / expected)


def summarise(
    out: CellOutput,
    *,
    seeds: Sequence[int],
    burn: int,
    times: np.ndarray,
    divergence_fraction: float | int | None = DIVERGENCE_FRACTION,
) -> dict[str, Any]:
    """The JSON score fields of a cell from the stacked per-seed `CellOutput` (host side)."""
    rmse_a = np.asarray(out.rmse_a, dtype=np.float64)
    per_seed_rmse = _time_means(rmse_a, burn)
    clim = np.asarray(out.climatology, dtype=np.float64)
    nonfinite = np.asarray(out.nonfinite, dtype=bool)
    flags = diverged(rmse_a[:, burn:], clim, nonfinite, divergence_fraction)
    diverged_seeds = [int(s) for s, flag in zip(seeds, flags, strict=True) if flag]
    fields: dict[str, Any] = {
        "rmse_a": _stats(per_seed_rmse),
        "rmse_f": _stats(_time_means(out.rmse_f, burn)),
        "rmse_s": _stats(
            _time_means(out.rmse_s, burn) if out.rmse_s is not None else [None] * len(seeds)
        ),
        "spread_a": _stats(_time_means(out.spread_a, burn)),
        "crps": _stats(
            _time_means(out.crps, burn) if out.crps is not None else [None] * len(seeds)
        ),
        "rank_chi2": _stats(
            [_rank_chi2(h) for h in np.asarray(out.rank_histogram)]
            if out.rank_histogram is not None
            else [None] * len(seeds)
        ),
        "log_likelihood": _stats(_time_means(out.log_likelihood, burn)),
        "vi_cost": _strict_stats(
            _time_means(out.vi_cost, burn) if out.vi_cost is not None else [None] * len(seeds)
        ),
        "diverged": bool(diverged_seeds),
        "diverged_seeds": diverged_seeds,
        "climatology": _stats([finite_or_none(c) for c in clim]),
    }
    finite = np.isfinite(rmse_a)
    counts = finite.sum(axis=0)
    sums = np.where(finite, rmse_a, 0.0).sum(axis=0)
    mean_series = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    series_vals, series_times = _downsample(mean_series, np.asarray(times, dtype=np.float64))
    hist = (
        [int(c) for c in np.asarray(out.rank_histogram).sum(axis=0)]
        if out.rank_histogram is not None
        else []
    )
    fields["series"] = {"rmse_a": series_vals, "times": series_times, "rank_histogram": hist}
    return fields


# --- environment ------------------------------------------------------------------------


def device_description() -> str:
    devices = jax.devices()
    dev = devices[0]
    kind = getattr(dev, "device_kind", dev.platform)
    if dev.platform == "cpu":
        name = _cpu_model() or platform.processor() or "cpu"
        return f"cpu: {name}, {os.cpu_count()} cores"
    return f"{dev.platform}: {kind} x{len(devices)}"


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


_VERSION_DISTS = (
    "filterax-primitives",
    "filterax-zoo",
    "filterax-filters",
    "filterax-smoothers",
    "filterax-processes",
    "filterax-learn",
    "filterax-bench",
    "jax",
    "jaxlib",
    "equinox",
    "lineax",
    "numpy",
)


def package_versions() -> dict[str, str]:
    out = {}
    for dist in _VERSION_DISTS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


@functools.cache
def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the checkout this package runs from (``None`` if not one)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = proc.stdout.strip()
    return rev if proc.returncode == 0 and rev else None


# --- running cells ------------------------------------------------------------------------


@dataclasses.dataclass
class CellPlan:
    benchmark: Benchmark
    method: MethodConfig
    seeds: tuple[int, ...]
    n_cycles: int

    @property
    def key(self) -> str:
        return f"{self.benchmark.name}/{self.method.name}"

    def identity(self) -> dict[str, Any]:
        """What a finished cell must match to be skipped on resume."""
        return {
            "method": self.method.name,
            "benchmark": self.benchmark.name,
            "family": self.method.family,
            "config": _jsonable(self.method.config(self.benchmark) | {"dtype": _dtype_name()}),
            "seeds": list(self.seeds),
            "n_cycles": self.n_cycles,
            "burn_in_cycles": self.benchmark.burn_in(self.n_cycles),
        }


def _dtype_name() -> str:
    return str(jnp.dtype(jnp.result_type(float)))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _memory_per_seed(plan: CellPlan) -> int:
    """Bytes per seed of the stacked beliefs of a full-mode cell: the saved analysis AND
    forecast ensembles (the VI cost needs both) and the cost's per-cycle temporaries (6
    ensemble-sized arrays; 3 before the forecasts were saved); a Gaussian filter's saved
    forecast and analysis covariances with their temporaries (8 ``(T, N_x, N_x)`` arrays)."""
    model = plan.benchmark.ssm
    n_e = plan.method.n_ensemble or 1
    itemsize = jnp.dtype(jnp.result_type(float)).itemsize
    n = model.n_state
    per_seed = plan.n_cycles * n_e * n * itemsize * 6
    if plan.method.kind == "parametric":
        per_seed += plan.n_cycles * n * n * itemsize * 8
    return per_seed


def score_cell(plan: CellPlan, *, memory_budget: int = 2 * 2**30) -> dict[str, Any]:
    """Run one cell (all its seeds) and return its results-JSON entry."""
    burn = plan.benchmark.burn_in(plan.n_cycles)
    fn = cell_function(plan.method, plan.benchmark, plan.n_cycles)
    batched = jax.jit(jax.vmap(fn, in_axes=(0, None)))
    seeds = list(plan.seeds)
    # Full ensembles are stacked for CRPS and rank histograms; seeds run in chunks when all of
    # them at once would not fit (each chunk is the same compiled call).
    chunk = max(1, min(len(seeds), memory_budget // max(1, _memory_per_seed(plan))))
    chunks = [seeds[i : i + chunk] for i in range(0, len(seeds), chunk)]

    def keys_of(ss):
        padded = ss + [ss[-1]] * (chunk - len(ss))
        return jnp.stack([jax.random.key(s) for s in padded])

    t0 = time.perf_counter()
    with CacheHits() as hits:
        compiled = batched.lower(keys_of(chunks[0]), {}).compile()
    compile_seconds = time.perf_counter() - t0
    outputs = []
    elapsed = 0.0
    for ss in chunks:
        keys = keys_of(ss)
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(keys, {}))
        elapsed += time.perf_counter() - t0
        n_real = len(ss)
        outputs.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:n_real], out))  # noqa: B023
    out = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *outputs)
    times = np.asarray(plan.benchmark.ssm.observation_times(plan.n_cycles))
    cell = plan.identity()
    cell.update(
        summarise(
            out,
            seeds=seeds,
            burn=burn,
            times=times,
            divergence_fraction=(
                None if plan.method.climatological else plan.benchmark.divergence_fraction
            ),
        )
    )
    label = plan.method.reference_label(plan.benchmark.name)
    cell["reference"] = {
        "rmse_a": plan.benchmark.reference(label),
        "label": label,
        "citation": plan.benchmark.citation,
    }
    if label in plan.benchmark.reference_rounding:
        cell["reference"]["rounding"] = float(plan.benchmark.reference_rounding[label])
    cell["seconds_per_cycle"] = elapsed / (plan.n_cycles * len(seeds))
    cell["compile_seconds"] = compile_seconds
    # With the persistent compilation cache, compile_seconds is then load time.
    cell["compile_cache_hit"] = hits.count > 0
    cell["device"] = device_description()
    cell["versions"] = package_versions()
    cell["git_revision"] = git_revision()
    cell["timestamp"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return cell


def results_path(out: str | os.PathLike[str]) -> Path:
    """``<out>/results.json`` for a directory `out`, `out` itself for a ``.json`` file."""
    path = Path(out)
    if path.is_dir() or path.suffix != ".json":
        path = path / "results.json"
    return path


def load_results(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<out>/results.json`` (or the file itself); an empty result set if absent.

    A file that cannot be read, is not JSON or is not a results file (schema, a ``cells``
    object of cells that name their method and benchmark) raises a one-line `ValueError`
    naming it and the fix.
    """
    path = results_path(out)
    if not path.exists():
        return {"schema": RESULTS_SCHEMA, "cells": {}}
    fix = "delete it (or move it away) and rerun `filterax-bench run`"
    cells = read_schema_json(
        path,
        what="results",
        schema=RESULTS_SCHEMA,
        body="cells",
        body_shape='{"<benchmark>/<method>": cell}',
        fix=fix,
    )
    for key, cell in cells.items():
        if not (
            isinstance(cell, dict)
            and isinstance(cell.get("method"), str)
            and isinstance(cell.get("benchmark"), str)
        ):
            raise ValueError(
                f"{path}: cell {key!r} is not a results cell (an object with its method and "
                f"benchmark); {fix}."
            )
    return {"schema": RESULTS_SCHEMA, "cells": cells}


def _is_finished(cell: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> bool:
    return cell is not None and all(cell.get(k) == v for k, v in identity.items())


def plan_cells(
    methods: Sequence[Any] | None = None,
    benchmarks: Sequence[Any] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    suite: str | None = None,
    n_cycles: int | None = None,
) -> list[CellPlan]:
    """Resolve a selection into `CellPlan`s with their seeds and run lengths."""
    cells = resolve_cells(suite, methods, benchmarks)
    suite_obj = get_suite(suite) if suite is not None else None
    plans = []
    for bench, method in cells:
        n = n_cycles
        if n is None and suite_obj is not None:
            n = suite_obj.n_cycles.get(bench.name)
        if n is None:
            n = bench.n_cycles
        s = seeds
        if s is None and suite_obj is not None:
            s = suite_obj.seeds
        if s is None:
            s = bench.seeds
        plans.append(CellPlan(bench, method, _as_seeds(s, "seeds"), int(n)))
    return plans


def _describe(cell: Mapping[str, Any], versions: bool) -> str:
    text = (
        f"seeds {list(cell.get('seeds', []))}, {cell.get('n_cycles')} cycles, "
        f"{(cell.get('config') or {}).get('dtype', '?')}"
    )
    if versions:
        pinned = sorted((cell.get("versions") or {}).items())
        text += "".join(f", {k} {v}" for k, v in pinned if "filterax" in k)
    return text


def stale_cells(results: Mapping[str, Any], plans: Sequence[CellPlan]) -> list[str]:
    """One line per planned cell that `results` already holds with other seeds, run length,
    burn-in or dtype, or from other filterax versions: running would silently replace it, or
    mix incomparable results in one leaderboard."""
    current = {k: v for k, v in package_versions().items() if "filterax" in k}
    lines = []
    for plan in plans:
        cell = results["cells"].get(plan.key)
        if cell is None:
            continue
        identity = plan.identity()
        # a changed hyper-parameter (e.g. after `tune`) re-runs the cell, as a new cell would;
        # other seeds, run lengths, dtypes or versions would mix incomparable results
        differs = [k for k in ("seeds", "n_cycles", "burn_in_cycles") if cell.get(k) != identity[k]]
        if (cell.get("config") or {}).get("dtype") != identity["config"]["dtype"]:
            differs.append("dtype")
        old = {k: v for k, v in (cell.get("versions") or {}).items() if "filterax" in k}
        if old and old != current:
            differs.append("versions")
        if differs:
            this = {**identity, "versions": current}
            show = "versions" in differs
            lines.append(
                f"{plan.key}: stored with {_describe(cell, show)}; this run: "
                f"{_describe(this, show)} "
                f"(differs in {', '.join(differs)})"
            )
    return lines


def run(
    methods: Sequence[str | MethodConfig] | None = None,
    benchmarks: Sequence[str | Benchmark] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] = "bench-results",
    *,
    suite: str | None = None,
    n_cycles: int | None = None,
    force: bool = False,
    progress: bool = True,
    memory_budget: int = 2 * 2**30,
) -> dict[str, Any]:
    """Score methods x benchmarks x seeds and write ``<out>/results.json``.

    Each cell is one compiled call vmapped over the seeds (simulate the truth, draw the
    initial ensemble, assimilate, score). The JSON is rewritten atomically after every cell;
    a cell already in it with the same method, benchmark, config, seeds, run length and
    burn-in is skipped (``force=True`` re-runs it), so an interrupted run resumes where it
    stopped and a changed hyper-parameter re-runs. A cell stored with other seeds, run
    length, burn-in, dtype or filterax versions is a `ValueError` naming the difference
    (``force=True`` replaces it): one results file never mixes incomparable cells.

    **Arguments:**

    - `methods`, `benchmarks`: names, glob patterns or objects (see `resolve_cells`).
    - `seeds`: scoring seeds (default: the suite's, else each benchmark's).
    - `out`: output directory (created if missing). A file in its place, a directory that
      cannot be written, or a corrupt ``results.json`` in it is a one-line `ValueError`
      before any cell runs.
    - `suite`: ``"quick"``, ``"standard"``, ``"full"`` or a registered suite name; with neither
      a suite nor both `methods` and `benchmarks`, ``"quick"`` is used.
    - `n_cycles`: run length for every cell (default: the suite's, else the benchmark's).
    - `force`: re-run finished cells.
    - `progress`: show a rich progress bar.
    - `memory_budget`: bytes of stacked ensembles per compiled call (seeds run in chunks
      above it).

    **Returns:** the results dict (as written), plus ``last_run``: how many of the selected
    cells this call reused and computed (not stored).
    """
    if suite is None and methods is None and benchmarks is None:
        suite = "quick"
    out = check_output_dir(out, create_parents=True)
    results = load_results(out)
    plans = plan_cells(methods, benchmarks, seeds, suite=suite, n_cycles=n_cycles)
    path = out / "results.json"
    stale = [] if force else stale_cells(results, plans)
    if stale:
        raise ValueError(
            f"{path} already holds {len(stale)} of these cells from another configuration: "
            + "; ".join(stale)
            + ". Pass force=True (--force) to recompute and replace them, or another out "
            "directory (--out)."
        )
    todo = [
        p for p in plans if force or not _is_finished(results["cells"].get(p.key), p.identity())
    ]
    results["last_run"] = {"cells": len(plans), "reused": len(plans) - len(todo), "computed": 0}
    with _progress(progress, len(plans), len(plans) - len(todo)) as advance:
        for plan in todo:
            advance(plan.key, started=True)
            results["cells"][plan.key] = _execute_cell(plan, memory_budget)
            results["last_run"]["computed"] += 1
            write_json_atomic(path, _without_last_run(results))
            advance(plan.key, started=False)
    if not path.exists():
        write_json_atomic(path, _without_last_run(results))
    return results


def _without_last_run(results: Mapping[str, Any]) -> dict[str, Any]:
    # `last_run` (cells reused / computed by this call) is returned, not stored
    return {k: v for k, v in results.items() if k != "last_run"}


def _execute_cell(plan: CellPlan, memory_budget: int) -> dict[str, Any]:
    return score_cell(plan, memory_budget=memory_budget)


class _progress:
    """A rich progress bar over cells (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self._progress = None
        self._plain = False

    def __enter__(self):
        import sys

        if self.enabled and not sys.stdout.isatty():
            # CI logs and redirected output: one plain line per cell, no redrawn bar
            self._plain, self._count = True, self.done
            if self.done:
                print(f"{self.done} of {self.total} cells already done", flush=True)
            return self._advance
        self._plain = False
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.__enter__()
            skipped = f" ({self.done} already done)" if self.done else ""
            self._task = self._progress.add_task(
                f"cells{skipped}", total=self.total, completed=self.done
            )
        return self._advance

    def _advance(self, key: str, *, started: bool) -> None:
        if self._plain:
            if started:
                self._count += 1
                self._t0 = time.perf_counter()
                print(f"[{self._count}/{self.total}] {key} ...", flush=True)
            else:
                print(f"[{self._count}/{self.total}] {key} done in "
                      f"{time.perf_counter() - self._t0:.1f} s", flush=True)  # fmt: skip
            return
        if self._progress is None:
            return
        if started:
            self._progress.update(self._task, description=f"{key}")
        else:
            self._progress.advance(self._task)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.update(self._task, description="cells")
            self._progress.__exit__(*exc)
        return False
