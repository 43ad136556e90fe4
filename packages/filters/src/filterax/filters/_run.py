r"""`run`: the one driver of every cycled method (docs/conventions.md).

A cycled method (`filterax.primitives.AbstractCycledMethod`) says how ONE cycle goes:
``init(key, initial, model) -> State`` and ``step(key, state, model, t_prev, t, obs) ->
(State, CycleInfo)``. `run` owns everything else, once for every method in the workspace:

- the loop: ONE `lax.scan` over the observation times, so a run is one compiled program, a
  seed x hyper-parameter grid is one `jax.vmap` of it and deterministic methods are
  differentiable end to end;
- the keys: cycle ``k`` gets ``jax.random.fold_in(key, k)`` (ensemble filters split it into
  four, `cycle_keys`), ``init`` gets ``jax.random.fold_in(key, 2**32 - 1)``;
- what is saved (`save`): the statistic rows (means, spreads, log-likelihoods, per-cycle
  status and the method's small diagnostics) always, the full forecast / analysis beliefs
  (ensembles, Gaussian states, ...) on request, so long runs stay ``O(T N_x)`` in memory;
- failure handling: a cycle whose `CycleInfo.finite` is ``False`` is not assimilated — the
  state stays frozen at the last finite one, that row and every later row are NaN and the
  status says so; with `divergence_threshold` a cycle whose RMS innovation over the observed
  entries exceeds it is flagged as diverged (the run continues); ``throw=True`` raises either
  failure through `eqx.error_if`, also under `jit`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree, Real

import filterax.primitives as fxp
from filterax.primitives import rmse

from ._adjoint import AbstractAdjoint, check_adjoint

__all__ = [
    "SAVE_OPTIONS",
    "STATUS_DIVERGED",
    "STATUS_INVALID_NOISE",
    "STATUS_INVALID_TIMES",
    "STATUS_NONFINITE",
    "STATUS_OK",
    "RunResult",
    "cycle_keys",
    "run",
    "time_mean_scores",
]

SAVE_OPTIONS = ("stats", "ensembles", "forecast_and_analysis")

STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_DIVERGED = 2
STATUS_INVALID_TIMES = 3
STATUS_INVALID_NOISE = 4

# The key `init` receives: a fold-in index no cycle uses (cycles are numbered from 0).
_INIT_FOLD = 2**32 - 1
# Cycles per block of pre-drawn random numbers (`fxp.AbstractPresampledMethod`): large enough
# to amortise the per-draw cost, small enough that a block's draws stay small in memory.
_PRESAMPLE_BLOCK = 64


def _nonfinite_message(owner: str) -> str:
    return (
        f"{owner}: the ensemble became non-finite (NaN/inf) during the run. Re-run with "
        "throw=False: result.first_failure is the first failing cycle, the final state the "
        "last finite analysis, and the rows from that cycle on are NaN. Usual causes: unstable "
        "dynamics or time step, too much inflation, a badly scaled obs_noise, or float32 "
        "overflow."
    )


def _diverged_message(owner: str) -> str:
    return (
        f"{owner}: the filter diverged: the RMS innovation |y - mean H(X_f)| exceeded "
        "divergence_threshold. Re-run with throw=False to get result.first_failure and "
        "result.cycle_status; more inflation (or localisation) usually cures filter divergence."
    )


def _invalid_times_message(owner: str) -> str:
    return (
        f"{owner}: the observation times are invalid: they must be finite, strictly increasing "
        "and not earlier than t0 (and t0 finite). Nothing was assimilated (every row is NaN, "
        "cycle_status 3). Pass increasing times, e.g. the times of a TwinExperiment; re-run "
        "with throw=False to get the status instead of this error."
    )


def _invalid_noise_message(owner: str) -> str:
    return (
        f"{owner}: the model's noise covariances are invalid: obs_noise must be finite and "
        "positive definite, process_noise finite and positive semidefinite (a traced noise "
        "scale under jit/vmap/grad was NaN, inf, zero or negative). Nothing was assimilated "
        "(every row is NaN, cycle_status 4); re-run with throw=False to get the status instead "
        "of this error."
    )


def check_times(obs_times: Any, t0: Any, owner: str) -> None:
    """Raise a `ValueError` naming the first bad entry if concrete observation times are not
    finite, not strictly increasing, or earlier than a concrete `t0` (or `t0` is not finite).

    Traced times (under `jit`/`vmap`/`grad`) cannot be checked here; `run` checks them inside
    the compiled program (status `RunResult.INVALID_TIMES` and, with ``throw=True``,
    `eqx.error_if`) and never integrates over an invalid window.
    """
    t0v = fxp.concrete_value(t0)
    if t0v is not None and not np.all(np.isfinite(t0v)):
        raise ValueError(f"{owner}: t0 must be a finite time; got {t0v}.")
    times = fxp.concrete_value(obs_times)
    if times is None:
        return
    times = np.asarray(times, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(times))
    if bad.size:
        raise ValueError(
            f"{owner}: obs_times must be finite; obs_times[{bad[0]}] = {times[bad[0]]}. A "
            "missing observation is a NaN in `observations`, not in `obs_times`."
        )
    steps = np.diff(times)
    bad = np.flatnonzero(~(steps > 0))
    if bad.size:
        k = bad[0] + 1
        raise ValueError(
            f"{owner}: obs_times must be strictly increasing; obs_times[{k}] = {times[k]} "
            f"follows obs_times[{k - 1}] = {times[k - 1]}. Sort the observations by time (and "
            "merge observations made at the same time into one row)."
        )
    if t0v is not None and times.size and times[0] < float(t0v):
        raise ValueError(
            f"{owner}: the first observation time {times[0]} is earlier than t0 = {float(t0v)}, "
            "the time of the initial condition. Pass t0 <= obs_times[0]."
        )


def cycle_keys(key: PRNGKeyArray, cycle: Int[ArrayLike, ""]) -> tuple[PRNGKeyArray, ...]:
    """The four keys an ensemble filter uses in cycle ``cycle``: forecast, analysis, and the
    two post-processing keys (inflation, rotation).

    ``jax.random.split(jax.random.fold_in(key, cycle), 4)``: `run` hands cycle ``k`` the key
    ``fold_in(key, k)`` and `EnsembleFilter.step` splits it into these four. Public so that
    code which replays part of a run (e.g. the ensemble smoothers of `filterax.smoothers`,
    which recompute each cycle's analysis transform from a saved history) draws exactly the
    same random numbers.

    **Arguments:**

    - `key`: the run's key (the ``key=`` given to `run` / `assimilate`).
    - `cycle`: the cycle index ``k`` (row ``k`` of the observations), possibly traced.

    **Returns:**

    ``(k_forecast, k_analysis, k_inflation, k_rotation)``.
    """
    k_fc, k_an, k_infl, k_rot = jax.random.split(jax.random.fold_in(key, cycle), 4)
    return k_fc, k_an, k_infl, k_rot


def time_mean_scores(
    analysis_mean: Float[Array, "*batch T N_x"],
    forecast_mean: Float[Array, "*batch T N_x"],
    analysis_spread: Float[Array, "*batch T"],
    forecast_spread: Float[Array, "*batch T"],
    truth: Float[ArrayLike, "..."],
    burn_in_cycles: int = 0,
) -> dict[str, Array]:
    """DAPPER's time-mean scores of a run over the cycles ``burn_in_cycles:``.

    - ``rmse_a`` / ``rmse_f``: time mean of ``sqrt(mean_i (mean_i - truth_i)^2)`` of the
      analysis / forecast estimate (DAPPER's ``rmse.a`` / ``rmse.f``);
    - ``spread_a`` / ``spread_f``: time mean of the analysis / forecast spread (DAPPER's
      ``rmv.a`` / ``rmv.f``).

    Leading batch axes (a vmapped run) are kept; a run with non-finite cycles scores NaN.
    """
    truth = jnp.asarray(truth)
    n_times, n_x = analysis_mean.shape[-2:]
    if truth.shape != (n_times, n_x):
        raise ValueError(
            f"truth must have shape (T, N_x) = ({n_times}, {n_x}), one true state per "
            f"observation time; got {truth.shape}."
        )
    if (
        isinstance(burn_in_cycles, bool)
        or not isinstance(burn_in_cycles, int | np.integer)
        or not 0 <= burn_in_cycles < n_times
    ):
        raise ValueError(
            f"burn_in_cycles must be a Python int in [0, T) = [0, {n_times}); got "
            f"{burn_in_cycles!r}."
        )
    b = int(burn_in_cycles)
    analysis_mean = analysis_mean[..., b:, :]
    truth = jnp.broadcast_to(truth[b:].astype(analysis_mean.dtype), analysis_mean.shape)
    return {
        "rmse_a": jnp.mean(rmse(analysis_mean, truth), axis=-1),
        "rmse_f": jnp.mean(rmse(forecast_mean[..., b:, :], truth), axis=-1),
        "spread_a": jnp.mean(analysis_spread[..., b:], axis=-1),
        "spread_f": jnp.mean(forecast_spread[..., b:], axis=-1),
    }


class RunResult(eqx.Module):
    """What `run` returns. Row ``k`` of every ``(T, ...)`` field is observation time
    ``times[k]``.

    **Fields:**

    - `forecast_mean`, `analysis_mean`: ``(T, N_x)`` the estimate before the analysis and
      after the whole cycle (analysis and post-processing), as DAPPER assesses them.
    - `forecast_spread`, `analysis_spread`: ``(T,)`` DAPPER's ``rmv``.
    - `log_likelihood`: ``(T,)`` the method's ``log p(y_k | y_{<k})``.
    - `state`: the method's State after the last cycle (the last finite one if the run
      failed): continue a run from it.
    - `forecasts`, `analyses`: the stacked `CycleInfo.forecast` / `.analysis` beliefs when
      ``save`` asks for them (``"forecast_and_analysis"`` / ``"ensembles"`` or
      ``"forecast_and_analysis"``), else ``None``.
    - `diagnostics`: the stacked `CycleInfo.diagnostics` (``None`` if the method has none).
    - `times`: ``(T,)`` the observation times.
    - `cycle_status`: ``(T,)`` per cycle ``0`` ok, ``1`` non-finite (the failing cycle and
      every later one, which are not assimilated), ``2`` diverged, ``3`` invalid observation
      times (traced times that are not finite, not increasing or before ``t0``: every cycle,
      nothing assimilated; concrete ones are refused before the run).
      ``4`` invalid noise (a traced ``obs_noise`` that is not finite positive definite or
      ``process_noise`` not finite positive semidefinite: every cycle, nothing assimilated;
      concrete ones are refused before the run). A cycle whose log-likelihood is not finite
      counts as non-finite.
    - `status`: ``3`` for invalid times, else ``4`` for invalid noise, else ``1`` if any cycle
      was non-finite, else ``2`` if any diverged, else ``0`` (`RunResult.OK`, `.NONFINITE`,
      `.DIVERGED`, `.INVALID_TIMES`, `.INVALID_NOISE`).
    - `first_failure`: the first cycle with a non-zero status, ``-1`` if none.
    - `n_nonfinite`, `n_diverged`: how many cycles have status 1 and 2.

    Rows of non-finite cycles are NaN (there is no estimate for them); nothing else is.
    """

    forecast_mean: Float[Array, "T N_x"]
    analysis_mean: Float[Array, "T N_x"]
    forecast_spread: Float[Array, " T"]
    analysis_spread: Float[Array, " T"]
    log_likelihood: Float[Array, " T"]
    state: PyTree
    forecasts: PyTree
    analyses: PyTree
    diagnostics: PyTree
    times: Real[Array, " T"]
    cycle_status: Int[Array, " T"]
    status: Int[Array, ""]
    first_failure: Int[Array, ""]
    n_nonfinite: Int[Array, ""]
    n_diverged: Int[Array, ""]

    OK: ClassVar[int] = STATUS_OK
    NONFINITE: ClassVar[int] = STATUS_NONFINITE
    DIVERGED: ClassVar[int] = STATUS_DIVERGED
    INVALID_TIMES: ClassVar[int] = STATUS_INVALID_TIMES
    INVALID_NOISE: ClassVar[int] = STATUS_INVALID_NOISE

    def scores(self, truth: Float[ArrayLike, "T N_x"], burn_in_cycles: int = 0) -> dict[str, Array]:
        """DAPPER's time-mean scores after the burn-in (see `time_mean_scores`)."""
        return time_mean_scores(
            self.analysis_mean,
            self.forecast_mean,
            self.analysis_spread,
            self.forecast_spread,
            truth,
            burn_in_cycles,
        )


def as_cycled_method(method: Any) -> fxp.AbstractCycledMethod:
    """`method` as an `AbstractCycledMethod`: cycled methods pass through; an analysis
    kernel (`AbstractSequentialFilter`, e.g. `ETKF()`) becomes `EnsembleFilter(method)`; a
    parametric Kalman filter (`KalmanFilter()`, ...) becomes its Gaussian cycled method."""
    if isinstance(method, fxp.AbstractCycledMethod):
        return method
    as_cycled = getattr(method, "as_cycled_method", None)
    if callable(as_cycled):
        return as_cycled()
    if isinstance(method, fxp.AbstractSequentialFilter):
        from ._ensemble_filter import EnsembleFilter

        return EnsembleFilter(method)
    raise TypeError(
        "method must be a cycled method (an AbstractCycledMethod with init/step, e.g. "
        "EnsembleFilter(ETKF(), inflator=...)) or an analysis kernel such as ETKF(); got "
        f"{type(method).__name__}."
    )


def check_run_arguments(
    model: Any,
    observations: Any,
    obs_times: Any,
    key: Any,
    save: Any,
    divergence_threshold: Any,
    t0: Any,
    owner: str,
) -> tuple[Array, Array]:
    """The checks `run` makes before compiling (shapes and Python values only: no tracing,
    so a repeated call with unchanged shapes costs no more than the dispatch)."""
    if not isinstance(model, fxp.AbstractModel):
        raise TypeError(
            f"{owner}: model must be an AbstractModel bundling dynamics, obs_op and obs_noise "
            "(e.g. filterax.primitives.Model(dynamics, obs_op, obs_noise) or a "
            f"filterax.zoo.StateSpaceModel); got {type(model).__name__}."
        )
    if key is None:
        raise TypeError(
            f"{owner} needs key=... (a JAX PRNG key, e.g. jax.random.key(0)); per-cycle keys "
            "are derived from it with jax.random.fold_in, so the same key gives the same run."
        )
    if save not in SAVE_OPTIONS:
        raise ValueError(f"save must be one of {SAVE_OPTIONS}; got {save!r}.")
    if divergence_threshold is not None:
        if jnp.ndim(divergence_threshold) != 0:
            raise ValueError(
                f"divergence_threshold must be a scalar (an RMS innovation in observation "
                f"units); got shape {jnp.shape(divergence_threshold)}."
            )
        value = fxp.concrete_value(divergence_threshold)
        if value is not None and not value > 0:
            raise ValueError(f"divergence_threshold must be > 0; got {divergence_threshold}.")
    if jnp.ndim(t0) != 0:
        raise ValueError(f"t0 must be a scalar time; got shape {jnp.shape(t0)}.")
    observations = jnp.asarray(observations)
    obs_times = jnp.asarray(obs_times)
    if observations.ndim != 2:
        raise ValueError(
            f"observations must be a 2-D array (T, N_y), one row per observation time; got "
            f"shape {observations.shape}. For a single time use observations[None]."
        )
    if obs_times.ndim != 1 or obs_times.shape[0] != observations.shape[0]:
        raise ValueError(
            f"obs_times must have shape (T,) = ({observations.shape[0]},), one time per row "
            f"of observations {observations.shape}; got {obs_times.shape}."
        )
    if observations.shape[0] < 1:
        raise ValueError("observations must contain at least one observation time (T >= 1).")
    check_times(obs_times, t0, owner)
    check_model_noise(model, observations.shape[1], owner)
    check_model_coordinates(model, owner)
    return observations, obs_times


def noise_ok(model: fxp.AbstractModel, n_obs: int) -> Array:
    """Whether the model's noise covariances are valid, as a traced boolean
    (`filterax.primitives.valid_noise`: ``obs_noise`` finite positive definite,
    ``process_noise`` finite positive semidefinite): the run-time counterpart of
    `check_model_noise` for noise that is traced (a noise scale under `vmap` or `grad`)."""
    ok = jnp.asarray(True)
    if fxp.noise_dimension(model.obs_noise) in (None, n_obs):
        ok &= fxp.valid_noise(model.obs_noise, n_obs)
    if model.process_noise is not None:
        n = fxp.noise_dimension(model.process_noise) or 1
        ok &= fxp.valid_noise(model.process_noise, n, semidefinite=True)
    return ok


def check_model_coordinates(model: fxp.AbstractModel, owner: str) -> None:
    """Refuse concrete non-finite ``state_coords`` / ``obs_coords`` (a NaN coordinate silently
    changes which observations a localising filter treats as local). Traced ones are checked
    by the localising method when the program runs."""
    for name in ("state_coords", "obs_coords"):
        value = getattr(model, name, None)
        if value is not None and not isinstance(value, jax.core.Tracer):
            fxp.check_parameter(value, f"{owner}: model.{name}", allow_inf=False)


def check_model_noise(model: fxp.AbstractModel, n_obs: int, owner: str) -> None:
    """Refuse concrete noise covariances that would turn the run into NaN: ``obs_noise`` must
    be positive definite (it is whitened), ``process_noise`` positive semidefinite, both
    finite (`filterax.primitives.positive_definite_noise`). Traced ones pass through."""
    # A size mismatch is left to the analysis, whose message names the observation operator.
    if fxp.noise_dimension(model.obs_noise) in (None, n_obs):
        fxp.positive_definite_noise(model.obs_noise, n_obs, name=f"{owner}: obs_noise")
    if model.process_noise is not None:
        fxp.positive_definite_noise(
            model.process_noise,
            fxp.noise_dimension(model.process_noise) or 1,
            name=f"{owner}: process_noise",
            semidefinite=True,
        )


def run(
    method: fxp.AbstractCycledMethod | fxp.AbstractSequentialFilter,
    model: fxp.AbstractModel,
    initial: PyTree,
    observations: Float[ArrayLike, "..."],
    obs_times: Real[ArrayLike, "..."],
    *,
    key: PRNGKeyArray,
    t0: Real[ArrayLike, ""] | None = None,
    save: str = "stats",
    throw: bool = True,
    divergence_threshold: Real[ArrayLike, ""] | None = None,
    adjoint: Any = None,
) -> RunResult:
    r"""Run a cycled method over all observation times as ONE compiled `lax.scan`.

    For ``k = 0, ..., T-1`` (with ``t_{-1} = t0``: no observation at ``t0``, DAPPER's
    convention):

    $$(\text{State}_{k+1}, \text{info}_k) = \text{method.step}(\text{fold\_in}(key, k),\
    \text{State}_k,\ \text{model},\ t_{k-1},\ t_k,\ y_k),\qquad
    \text{State}_0 = \text{method.init}(\cdot, \text{initial}, \text{model}).$$

    The driver owns the loop, the keys, what is saved, the statistic rows, the freeze on a
    non-finite cycle, the status codes, divergence detection and ``eqx.error_if`` (see the
    module docstring). The call is wrapped in `eqx.filter_jit`: a repeated call with unchanged
    shapes re-uses the compiled program; `jax.vmap` it over keys or dynamic hyper-parameters
    to run a grid as one program; differentiate it (deterministic methods) with `jax.grad`.
    Under `vmap`, ``throw=True`` raises if *any* batch member fails: sweep with
    ``throw=False`` and read `status`.

    **Arguments:**

    - `method`: an `AbstractCycledMethod` (`EnsembleFilter`, a Kalman filter's cycled form,
      a smoother's online form, a learned filter, your own); an analysis kernel such as
      ``ETKF()`` or a ``KalmanFilter()`` is accepted and wrapped (`as_cycled_method`).
    - `model`: an `AbstractModel` (`filterax.primitives.Model`, `filterax.zoo.StateSpaceModel`).
    - `initial`: the method's initial condition (an ``(N_e, N_x)`` ensemble for ensemble
      methods; a `GaussianState` for Kalman filters).
    - `observations`: ``(T, N_y)``; NaN entries are missing observations.
    - `obs_times`: ``(T,)`` increasing observation times.
    - `key`: a JAX PRNG key (required, also for deterministic methods).
    - `t0`: the time of `initial` (default: ``model.t0``).
    - `save`: ``"stats"`` (rows only), ``"ensembles"`` (also the analyses) or
      ``"forecast_and_analysis"`` (both beliefs every cycle).
    - `throw`: raise on a non-finite (or, with a threshold, diverged) run.
    - `divergence_threshold`: RMS innovation (observation units) above which a cycle counts
      as diverged; ``None`` disables the check.
    - `adjoint`: how a gradient of the run is computed (`FullAdjoint` by default: the whole
      tape; `CheckpointAdjoint`, `TwoLevelCheckpointAdjoint` trade recomputation for
      memory and give the same gradient; `TruncatedAdjoint` cuts the gradient through the
      state every ``window`` cycles, for long chaotic runs). The forward results are the
      same with every adjoint.

    **Returns:** a `RunResult`.

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    import filterax.primitives as fxp
    from filterax.zoo import presets

    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 1000)
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.04),
                               rotate=True)
    out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(1), 20),
                 xp.observations, xp.times, key=jax.random.key(2))
    out.scores(xp.truth, ssm.burn_in_cycles)["rmse_a"]  # ~0.2
    ```
    """
    method = as_cycled_method(method)
    if t0 is None:
        t0 = model.t0 if isinstance(model, fxp.AbstractModel) else 0.0
    observations, obs_times = check_run_arguments(
        model, observations, obs_times, key, save, divergence_threshold, t0, "run"
    )
    adjoint = check_adjoint(adjoint, "run")
    return _run_jit(
        method,
        model,
        initial,
        observations,
        obs_times,
        key,
        t0,
        save,
        bool(throw),
        divergence_threshold,
        "run",
        adjoint,
    )


def _float_dtype(tree: PyTree) -> Any:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(leaf)]
    return jnp.result_type(*leaves) if leaves else jnp.result_type(float)


def _masked_rms(innovation: Array, obs: Array) -> Array:
    mask = fxp.observation_mask(obs)
    sq = jnp.where(mask, jnp.where(mask, innovation, 0.0) ** 2, 0.0)
    n_obs = jnp.maximum(jnp.sum(mask), 1).astype(sq.dtype)
    return jnp.sqrt(jnp.sum(sq) / n_obs)


def _nan_where_invalid(valid: Array, tree: PyTree) -> PyTree:
    def row(x):
        if eqx.is_inexact_array(x):
            return jnp.where(valid, x, jnp.full_like(x, jnp.nan))
        return x

    return jax.tree_util.tree_map(row, tree)


def run_cycles(
    method: fxp.AbstractCycledMethod,
    model: fxp.AbstractModel,
    initial: PyTree,
    observations: Array,
    obs_times: Array,
    key: PRNGKeyArray,
    t0: Any,
    save: str,
    throw: bool,
    divergence_threshold: Any,
    owner: str,
    adjoint: AbstractAdjoint | None = None,
) -> RunResult:
    """The traced body of `run` (call `run`; this is public for wrappers that post-process a
    `RunResult` inside their own `eqx.filter_jit`, such as `assimilate`)."""
    adjoint = check_adjoint(adjoint, owner)
    state0 = method.init(jax.random.fold_in(key, _INIT_FOLD), initial, model)
    dtype = _float_dtype(state0)
    observations = observations.astype(dtype)
    if not jnp.issubdtype(obs_times.dtype, jnp.floating):
        obs_times = obs_times.astype(dtype)
    n_times = observations.shape[0]
    t_first = jnp.asarray(t0, dtype=obs_times.dtype)
    # Checked again here for times that are traced (the eager check in `check_times` sees
    # only concrete ones): invalid times assimilate nothing and never reach the dynamics (an
    # infinite window would be an unbounded number of integrator steps).
    times_ok = (
        jnp.all(jnp.isfinite(obs_times))
        & jnp.isfinite(t_first)
        & jnp.all(obs_times[1:] > obs_times[:-1])
        & (obs_times[0] >= t_first)
    )
    t_first = jnp.where(jnp.isfinite(t_first), t_first, jnp.zeros_like(t_first))
    obs_times = jnp.where(times_ok, obs_times, t_first)
    t_prev = jnp.concatenate([t_first[None], obs_times[:-1]])
    steps = jnp.arange(n_times, dtype=jnp.int32)
    # Traced noise covariances (a noise scale under vmap/grad) are checked here too: a run
    # with an invalid one assimilates nothing (status 4) instead of reporting NaN as
    # "non-finite" or, worse, a plausible number.
    noise_valid = noise_ok(model, observations.shape[1])
    inputs_ok = times_ok & noise_valid
    input_status = jnp.where(times_ok, STATUS_INVALID_NOISE, STATUS_INVALID_TIMES)

    presampled = isinstance(method, fxp.AbstractPresampledMethod)

    def cycle(carry, inputs):
        state, alive = carry
        step, obs, t_a, t_b, draws = inputs
        cycle_key = jax.random.fold_in(key, step)
        if presampled:
            new_state, info = method.step_presampled(cycle_key, draws, state, model, t_a, t_b, obs)
        else:
            new_state, info = method.step(cycle_key, state, model, t_a, t_b, obs)
        # Cycles past the end (padding of the last block) change nothing and are dropped.
        active = step < n_times
        # A non-finite log-likelihood is a failed cycle too (float32 overflow, a singular
        # innovation covariance): status must cover every row it returns.
        valid = alive & info.finite & jnp.isfinite(info.log_likelihood)
        diverged = jnp.asarray(False)
        if divergence_threshold is not None:
            diverged = _masked_rms(info.innovation, obs) > divergence_threshold
        status = jnp.where(
            valid,
            jnp.where(diverged, STATUS_DIVERGED, STATUS_OK),
            jnp.where(inputs_ok, STATUS_NONFINITE, input_status),
        ).astype(jnp.int32)
        rows = {
            "forecast_mean": info.forecast_mean,
            "analysis_mean": info.analysis_mean,
            "forecast_spread": info.forecast_spread,
            "analysis_spread": info.analysis_spread,
            "log_likelihood": info.log_likelihood,
            "diagnostics": info.diagnostics,
        }
        if save != "stats":
            rows["analyses"] = info.analysis
        if save == "forecast_and_analysis":
            rows["forecasts"] = info.forecast
        rows = _nan_where_invalid(valid, rows)
        rows["status"] = status
        # Freeze on failure: keep the last finite state so that NaN never propagates into
        # later cycles or into the returned state.
        keep = valid & active
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(keep, new, old), new_state, state
        )
        return (new_state, jnp.where(active, valid, alive)), rows

    carry0 = (state0, inputs_ok)
    xs = (steps, observations, t_prev, obs_times)
    scan_cycle = adjoint.wrap_cycle(cycle, lambda inputs: inputs[0])
    segment = adjoint.segment_size(n_times)
    if not presampled and segment is None:
        # The non-presampled cycle ignores its fifth input (the draws): pass the steps.
        (final, _), rows = jax.lax.scan(scan_cycle, carry0, (*xs, steps))
    else:
        # Blocks of cycles: a presampled method draws a block's random numbers at once (one
        # vmapped draw per block instead of one per cycle); a segmenting adjoint checkpoints
        # each block as a whole. The last block is padded with inactive cycles (no
        # observation, a zero-length window) whose rows are dropped.
        if segment is not None:
            block = segment
            n_blocks = -(-n_times // block)
        else:
            n_blocks = -(-n_times // _PRESAMPLE_BLOCK)
            block = -(-n_times // n_blocks)
        pad = n_blocks * block - n_times

        def padded(x, fill):
            tail = jnp.broadcast_to(fill, (pad, *x.shape[1:])).astype(x.dtype)
            return jnp.concatenate([x, tail]).reshape(n_blocks, block, *x.shape[1:])

        xs = (
            jnp.arange(n_times + pad, dtype=jnp.int32).reshape(n_blocks, block),
            padded(observations, jnp.nan),
            padded(t_prev, obs_times[-1]),
            padded(obs_times, obs_times[-1]),
        )

        def run_block(carry, block_xs):
            block_steps = block_xs[0]
            if presampled:
                cycle_keys_ = jax.vmap(lambda k: jax.random.fold_in(key, k))(block_steps)
                draws = jax.vmap(method.presample, in_axes=(0, None))(cycle_keys_, carry[0])
            else:
                draws = block_steps
            return jax.lax.scan(scan_cycle, carry, (*block_xs, draws))

        if adjoint.checkpoint_segments:
            run_block = jax.checkpoint(run_block, prevent_cse=False)
        (final, _), rows = jax.lax.scan(run_block, carry0, xs)
        rows = jax.tree_util.tree_map(lambda r: r.reshape(-1, *r.shape[2:])[:n_times], rows)

    cycle_status = rows["status"]
    failed = cycle_status != STATUS_OK
    any_nonfinite = jnp.any(cycle_status == STATUS_NONFINITE)
    any_diverged = jnp.any(cycle_status == STATUS_DIVERGED)
    status = jnp.where(
        ~inputs_ok,
        input_status,
        jnp.where(
            any_nonfinite, STATUS_NONFINITE, jnp.where(any_diverged, STATUS_DIVERGED, STATUS_OK)
        ),
    ).astype(jnp.int32)
    first_failure = jnp.where(jnp.any(failed), jnp.argmax(failed), -1).astype(jnp.int32)
    result = RunResult(
        forecast_mean=rows["forecast_mean"],
        analysis_mean=rows["analysis_mean"],
        forecast_spread=rows["forecast_spread"],
        analysis_spread=rows["analysis_spread"],
        log_likelihood=rows["log_likelihood"],
        state=final,
        forecasts=rows.get("forecasts"),
        analyses=rows.get("analyses"),
        diagnostics=rows["diagnostics"],
        times=obs_times,
        cycle_status=cycle_status,
        status=status,
        first_failure=first_failure,
        n_nonfinite=jnp.sum(cycle_status == STATUS_NONFINITE).astype(jnp.int32),
        n_diverged=jnp.sum(cycle_status == STATUS_DIVERGED).astype(jnp.int32),
    )
    if throw:
        result = eqx.error_if(result, ~times_ok, _invalid_times_message(owner))
        result = eqx.error_if(result, ~noise_valid, _invalid_noise_message(owner))
        result = eqx.error_if(result, status == STATUS_NONFINITE, _nonfinite_message(owner))
        if divergence_threshold is not None:
            result = eqx.error_if(result, status == STATUS_DIVERGED, _diverged_message(owner))
    return result


_run_jit = eqx.filter_jit(run_cycles)
