"""The compiled forecast -> analysis -> inflate -> rotate cycle (tutorial Parts 0.C and 3).

`assimilate` runs a whole twin experiment as ONE `lax.scan` over observation times, so a run
is one compiled program, a seed x hyper-parameter grid is one `jax.vmap` of it, and
deterministic filters can be differentiated end to end.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from filterax.primitives import AdaptiveInflator, rms_spread, rmse, rotate_ensemble

__all__ = ["AssimilationResult", "assimilate", "cycle_keys"]

_SAVE_OPTIONS = ("stats", "ensembles", "forecast_and_analysis")

STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_DIVERGED = 2

_NONFINITE_MESSAGE = (
    "assimilate: the ensemble became non-finite (NaN/inf) during the run. Re-run with "
    "throw=False: result.first_failure is the first failing cycle, result.particles the last "
    "finite analysis ensemble, and the rows from that cycle on are NaN. Usual causes: unstable "
    "dynamics or time step, too much inflation, a badly scaled obs_noise, or float32 overflow."
)
_DIVERGED_MESSAGE = (
    "assimilate: the filter diverged: the RMS innovation |y - mean H(X_f)| exceeded "
    "divergence_threshold. Re-run with throw=False to get result.first_failure and "
    "result.cycle_status; more inflation (or localisation) usually cures filter divergence."
)


def cycle_keys(key: PRNGKeyArray, cycle: Int[ArrayLike, ""]) -> tuple[PRNGKeyArray, ...]:
    """The four keys `assimilate` uses in cycle ``cycle``: forecast, analysis, inflation, rotation.

    ``jax.random.split(jax.random.fold_in(key, cycle), 4)``. Public so that code which replays
    part of a run (e.g. the ensemble smoothers of `filterax.smoothers`, which recompute each
    cycle's analysis transform from a saved history) draws exactly the same random numbers.

    **Arguments:**

    - `key`: the run's key (the ``key=`` given to `assimilate`).
    - `cycle`: the cycle index ``k`` (row ``k`` of the observations), possibly traced.

    **Returns:**

    ``(k_forecast, k_analysis, k_inflation, k_rotation)``.
    """
    k_fc, k_an, k_infl, k_rot = jax.random.split(jax.random.fold_in(key, cycle), 4)
    return k_fc, k_an, k_infl, k_rot


def _needs_key(fn: Any) -> bool:
    """True if ``fn(x, t0, t1, ...)`` requires a ``key`` argument (stochastic dynamics).

    The protocol is the keyword: `filterax.zoo.StochasticDynamics` (and anything shaped like
    it) declares ``__call__(x, t0, t1, *, key)``. Detected from the signature so that
    filterax.filters needs no runtime dependency on the zoo.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    param = signature.parameters.get("key")
    return (
        param is not None
        and param.default is inspect.Parameter.empty
        and param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def _analysis_parameters(filt: Any) -> Mapping[str, inspect.Parameter] | None:
    # None when the signature cannot be read (then the localizer is passed on unchecked).
    analysis = getattr(filt, "analysis", None)
    if not callable(analysis):
        return None
    try:
        return inspect.signature(analysis).parameters
    except (TypeError, ValueError):
        return None


def _apply_obs(obs_op: Any, x: Array) -> Array:
    if isinstance(obs_op, lx.AbstractLinearOperator):
        return obs_op.mv(x)
    if isinstance(obs_op, jax.Array | np.ndarray):
        return jnp.matmul(obs_op, x, precision=jax.lax.Precision.HIGHEST)
    return obs_op(x)


def _forecast(
    dynamics: Any, stochastic: bool, ensemble: Array, t0: Any, t1: Any, key: PRNGKeyArray
) -> Array:
    if stochastic:
        member_keys = jax.random.split(key, ensemble.shape[0])
        return jax.vmap(lambda x, k: dynamics(x, t0, t1, key=k))(ensemble, member_keys)
    return jax.vmap(dynamics, in_axes=(0, None, None))(ensemble, t0, t1)


def _nan_like(x: Array) -> Array:
    return jnp.full_like(x, jnp.nan)


class AssimilationResult(eqx.Module):
    """What `assimilate` returns. Row ``k`` of every ``(T, ...)`` array is observation time
    ``obs_times[k]``.

    **Fields:**

    - `forecast_mean`, `analysis_mean`: ``(T, N_x)`` ensemble means before the analysis and
      after the whole cycle (analysis, inflation, rotation), as DAPPER assesses them.
    - `forecast_spread`, `analysis_spread`: ``(T,)`` DAPPER's ``rmv``:
      ``sqrt(mean_i var_i)`` with the ``N_e - 1`` variance.
    - `log_likelihood`: ``(T,)`` the filter's ``log N(y; mean H(X_f), C^HH + R)`` per cycle.
    - `particles`: the final ``(N_e, N_x)`` analysis ensemble (the last finite one if the run
      failed).
    - `ensembles`: ``(T, N_e, N_x)`` analysis ensembles when ``save`` is ``"ensembles"`` or
      ``"forecast_and_analysis"``, else ``None``.
    - `forecast_ensembles`: ``(T, N_e, N_x)`` forecast ensembles when
      ``save="forecast_and_analysis"``, else ``None``.
    - `inflation`: ``(T,)`` the adaptive covariance-inflation estimate used in each cycle when
      the inflator is an `AdaptiveInflator`, else ``None``.
    - `inflator`: the `AdaptiveInflator` after the last cycle (to continue a run), else ``None``.
    - `times`: ``(T,)`` the observation times.
    - `cycle_status`: ``(T,)`` per cycle: ``0`` ok, ``1`` non-finite (the failing cycle and
      every cycle after it, which are not assimilated), ``2`` diverged (finite, but the RMS
      innovation exceeded ``divergence_threshold``).
    - `status`: overall: ``1`` if any cycle was non-finite, else ``2`` if any diverged, else
      ``0`` (`AssimilationResult.OK`, `.NONFINITE`, `.DIVERGED`).
    - `first_failure`: index of the first cycle with a non-zero status, ``-1`` if none.
    - `n_nonfinite`, `n_diverged`: the number of cycles with status 1 and 2.

    Rows of non-finite cycles are NaN (there is no estimate for them); nothing else is.
    """

    forecast_mean: Float[Array, "T N_x"]
    analysis_mean: Float[Array, "T N_x"]
    forecast_spread: Float[Array, " T"]
    analysis_spread: Float[Array, " T"]
    log_likelihood: Float[Array, " T"]
    particles: Float[Array, "N_e N_x"]
    ensembles: Float[Array, "T N_e N_x"] | None
    forecast_ensembles: Float[Array, "T N_e N_x"] | None
    inflation: Float[Array, " T"] | None
    inflator: Any
    times: Real[Array, " T"]
    cycle_status: Int[Array, " T"]
    status: Int[Array, ""]
    first_failure: Int[Array, ""]
    n_nonfinite: Int[Array, ""]
    n_diverged: Int[Array, ""]

    OK: ClassVar[int] = STATUS_OK
    NONFINITE: ClassVar[int] = STATUS_NONFINITE
    DIVERGED: ClassVar[int] = STATUS_DIVERGED

    @property
    def mean(self) -> Float[Array, "T N_x"]:
        """Alias of `analysis_mean`."""
        return self.analysis_mean

    @property
    def spread(self) -> Float[Array, " T"]:
        """Alias of `analysis_spread`."""
        return self.analysis_spread

    def scores(self, truth: Float[ArrayLike, "T N_x"], burn_in_cycles: int = 0) -> dict[str, Array]:
        """DAPPER's time-mean scores over the cycles ``burn_in_cycles:`` (after the burn-in).

        - ``rmse_a`` / ``rmse_f``: time mean of ``sqrt(mean_i (mean_i - truth_i)^2)`` of the
          analysis / forecast ensemble mean (DAPPER's ``rmse.a`` / ``rmse.f``);
        - ``spread_a`` / ``spread_f``: time mean of `analysis_spread` / `forecast_spread`
          (DAPPER's ``rmv.a`` / ``rmv.f``, printed as ``spread``).

        A run with non-finite cycles scores NaN (check `status`). Leading batch axes of a
        vmapped result are kept: a seed x inflation grid gives ``(S, I)`` scores.

        **Arguments:**

        - `truth`: ``(T, N_x)`` true states at the observation times (a `TwinExperiment`'s
          ``truth``).
        - `burn_in_cycles`: number of leading cycles to drop (a static int; e.g. the
          `StateSpaceModel`'s ``burn_in_cycles``).

        **Returns:**

        A dict of scalars (or batch-shaped arrays) ``rmse_a``, ``rmse_f``, ``spread_a``,
        ``spread_f``.
        """
        truth = jnp.asarray(truth)
        n_times, n_x = self.analysis_mean.shape[-2:]
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
        analysis_mean = self.analysis_mean[..., b:, :]
        truth = jnp.broadcast_to(truth[b:].astype(analysis_mean.dtype), analysis_mean.shape)
        return {
            "rmse_a": jnp.mean(rmse(analysis_mean, truth), axis=-1),
            "rmse_f": jnp.mean(rmse(self.forecast_mean[..., b:, :], truth), axis=-1),
            "spread_a": jnp.mean(self.analysis_spread[..., b:], axis=-1),
            "spread_f": jnp.mean(self.forecast_spread[..., b:], axis=-1),
        }


def _validate(
    filt: Any,
    dynamics: Any,
    obs_op: Any,
    ensemble0: Any,
    observations: Any,
    obs_times: Any,
    key: Any,
    inflator: Any,
    save: Any,
    divergence_threshold: Any,
    t0: Any,
) -> tuple[Array, Array, Array]:
    analysis = getattr(filt, "analysis", None)
    if not callable(analysis):
        raise TypeError(
            "filt must be a sequential filter with an analysis(key, forecast, obs, obs_op, "
            "obs_noise, **context) method (an AbstractSequentialFilter); got "
            f"{type(filt).__name__}."
        )
    if not callable(dynamics):
        raise TypeError(
            f"dynamics must be callable as dynamics(x, t0, t1) -> x; got {type(dynamics).__name__}."
        )
    if key is None:
        raise TypeError(
            "assimilate needs key=... (a JAX PRNG key, e.g. jax.random.key(0)); per-cycle keys "
            "are derived from it with jax.random.fold_in, so the same key gives the same run."
        )
    if save not in _SAVE_OPTIONS:
        raise ValueError(f"save must be one of {_SAVE_OPTIONS}; got {save!r}.")
    if inflator is not None and not callable(inflator):
        raise TypeError(
            "inflator must be an AbstractInflator (e.g. MultiplicativeInflator(1.02)) or a "
            f"callable inflator(analysis, forecast, *, key); got {type(inflator).__name__}."
        )
    if divergence_threshold is not None:
        if jnp.ndim(divergence_threshold) != 0:
            raise ValueError(
                f"divergence_threshold must be a scalar (an RMS innovation in observation "
                f"units); got shape {jnp.shape(divergence_threshold)}."
            )
        if isinstance(divergence_threshold, int | float) and not divergence_threshold > 0:
            raise ValueError(f"divergence_threshold must be > 0; got {divergence_threshold}.")
    return check_run_inputs(dynamics, obs_op, ensemble0, observations, obs_times, t0)


def check_run_inputs(
    dynamics: Any, obs_op: Any, ensemble0: Any, observations: Any, obs_times: Any, t0: Any
) -> tuple[Array, Array, Array]:
    """Shapes and dtypes of a cycled run's inputs (shared with the smoothers' own drivers).

    Returns ``(ensemble0, observations, obs_times)`` as arrays, observations in the ensemble's
    dtype; raises a `ValueError` / `TypeError` saying what to pass otherwise.
    """
    ensemble0 = jnp.asarray(ensemble0)
    if ensemble0.ndim != 2:
        raise ValueError(
            f"ensemble0 must be a 2-D array (N_e, N_x) with members on the first axis; got "
            f"shape {ensemble0.shape}. Stack the members with jnp.stack."
        )
    if ensemble0.shape[0] < 2:
        raise ValueError(
            f"ensemble0 has N_e={ensemble0.shape[0]} member(s); ensemble statistics need "
            "N_e >= 2. Draw more members (e.g. ssm.initial_ensemble(key, 20))."
        )
    if not jnp.issubdtype(ensemble0.dtype, jnp.floating):
        raise TypeError(
            f"ensemble0 must be floating point; got dtype {ensemble0.dtype}. Cast it with "
            ".astype(jnp.float64) or .astype(jnp.float32)."
        )
    dtype = ensemble0.dtype
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
    observations = observations.astype(dtype)
    if not jnp.issubdtype(obs_times.dtype, jnp.floating):
        obs_times = obs_times.astype(dtype)

    member = ensemble0[0]
    # The first real window, so that stepped models see an interval they can integrate.
    t_first = jnp.asarray(t0, dtype=obs_times.dtype)
    try:
        x_shape = jax.eval_shape(
            lambda x, k: _forecast(
                dynamics, _needs_key(dynamics), x[None], t_first, obs_times[0], k
            )[0],
            member,
            jax.random.key(0),
        ).shape
    except TypeError as err:
        raise TypeError(
            f"calling dynamics(x, t0, t1) on one (N_x,) member failed: {err}. Dynamics act on "
            "ONE state; assimilate vmaps them over the ensemble."
        ) from err
    if x_shape != member.shape:
        raise ValueError(
            f"dynamics(x, t0, t1) must return a state of shape {member.shape} (like one member "
            f"of ensemble0); it returned shape {x_shape}."
        )
    y_shape = jax.eval_shape(lambda x: _apply_obs(obs_op, x), member).shape
    if y_shape != (observations.shape[1],):
        raise ValueError(
            f"obs_op maps one member to shape {y_shape}, but observations have shape "
            f"{observations.shape}, i.e. N_y={observations.shape[1]}. Pass observations with "
            "one column per entry of obs_op(x), or the matching observation operator."
        )
    return ensemble0, observations, obs_times


def assimilate(
    filt: Any,
    dynamics: Any,
    obs_op: Any,
    obs_noise: Any,
    ensemble0: Real[ArrayLike, "..."],
    observations: Float[ArrayLike, "..."],
    obs_times: Real[ArrayLike, "..."],
    *,
    key: PRNGKeyArray,
    inflator: Any = None,
    localizer: Any = None,
    rotate: bool = False,
    t0: Real[ArrayLike, ""] = 0.0,
    save: str = "stats",
    throw: bool = True,
    divergence_threshold: float | None = None,
    context: Mapping[str, Any] | None = None,
) -> AssimilationResult:
    """Cycle forecast -> analysis -> inflation -> rotation over all observations (one scan).

    For cycle ``k = 0..T-1`` with ``t_{-1} = t0`` (DAPPER's convention: no observation at
    ``t0``, the run starts with a forecast):

    1. keys: ``k_fc, k_an, k_infl, k_rot = cycle_keys(key, k)``
       (``jax.random.split(jax.random.fold_in(key, k), 4)``);
    2. forecast: ``X^f = vmap(dynamics, in_axes=(0, None, None))(X^a, t_{k-1}, t_k)``; a
       dynamics whose call *requires* ``key=`` (e.g. `filterax.zoo.StochasticDynamics`) gets
       one key per member, ``jax.random.split(k_fc, N_e)``;
    3. analysis: ``filt.analysis(k_an, X^f, observations[k], obs_op, obs_noise, **context)``;
    4. inflation, after the update (DAPPER's ``infl`` convention):
       ``inflator(X^a, X^f, key=k_infl)``, so `RTPS`/`RTPP` relax towards this cycle's
       forecast. An `AdaptiveInflator` is part of the scan carry: each cycle it is first
       updated from the innovation statistics of the (un-inflated) forecast,
       ``d = y - mean H(X^f)`` against ``lambda H P^f H^T + R``, and the new estimate then
       multiplies the analysis anomalies by ``sqrt(lambda)``;
    5. rotation (``rotate=True``, DAPPER's ``rot``): a random mean-preserving orthogonal
       rotation of the anomalies (`rotate_ensemble` with ``k_rot``).

    Statistics are assessed after step 5. The same key gives bit-identical results.

    Failure handling: a cycle whose forecast or analysis ensemble is non-finite is not
    assimilated; the ensemble stays frozen at the last finite analysis, the rows from that
    cycle on are NaN and `status`/`cycle_status` say so. With `divergence_threshold`, a cycle
    whose RMS innovation over the observed entries exceeds it is flagged as diverged (the run
    continues). With ``throw=True`` either failure raises (`eqx.error_if`, also under `jit`).

    The call is one compiled program (it is wrapped in `eqx.filter_jit`); `jax.vmap` it over
    keys and over dynamic hyper-parameters (inflation factors, noise scales) to run a grid as
    one program, and differentiate it (deterministic filters) with `jax.grad`. Under `vmap`,
    ``throw=True`` raises if *any* batch member fails: sweep with ``throw=False`` and read
    `status` when some settings are expected to diverge.

    **Arguments:**

    - `filt`: an `AbstractSequentialFilter` (`ETKF`, `StochasticEnKF`, `LETKF`, ...).
    - `dynamics`: ``dynamics(x, t0, t1) -> x`` on ONE state (an `AbstractDynamics` or any
      JAX-traceable callable; ``t0``/``t1`` are traced inside the scan).
    - `obs_op`: ``obs_op(x) -> y`` on ONE state (passed on to the filter).
    - `obs_noise`: the observation-error covariance ``R`` (a lineax operator, or whatever the
      filter accepts: a scalar variance ``c`` means ``c I``).
    - `ensemble0`: ``(N_e, N_x)`` initial ensemble at ``t0``, ``N_e >= 2``.
    - `observations`: ``(T, N_y)``; NaN entries are missing observations.
    - `obs_times`: ``(T,)`` observation times (increasing).
    - `key`: a JAX PRNG key (required, also for deterministic filters).
    - `inflator`: ``None`` or an `AbstractInflator` (`MultiplicativeInflator`, `RTPS`, `RTPP`,
      `AdditiveInflator`, `AdaptiveInflator`) or any ``f(analysis, forecast, *, key)``.
    - `localizer`: passed to ``filt.analysis`` as the keyword ``localizer=`` (DESIGN.md §3);
      refused with a `TypeError` if the filter's `analysis` has no such parameter, so a
      localizer is never silently ignored.
    - `rotate`: apply DAPPER's random rotation each cycle.
    - `t0`: time of `ensemble0`.
    - `save`: ``"stats"`` (means, spreads, log-likelihoods: O(T N_x) memory),
      ``"ensembles"`` (also the ``(T, N_e, N_x)`` analysis ensembles) or
      ``"forecast_and_analysis"`` (both ensembles).
    - `throw`: raise on a non-finite (or diverged) run instead of only reporting it.
    - `divergence_threshold`: RMS innovation (observation units) above which a cycle counts as
      diverged; ``None`` disables the check.
    - `context`: extra keyword arguments for ``filt.analysis`` (e.g. LETKF coordinates).

    **Returns:**

    An `AssimilationResult`.

    Reference: DAPPER's ``xp.assimilate(HMM, xx, yy)`` with ``infl`` and ``rot`` (the EnKF
    family's ``post_process``); tutorial 0.5 and Part 3.

    **Example:**

    ```python
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 1000)
    result = assimilate(ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise,
                        ssm.initial_ensemble(jax.random.key(1), 20), xp.observations,
                        xp.times, key=jax.random.key(2),
                        inflator=MultiplicativeInflator(1.04), rotate=True)
    result.scores(xp.truth, ssm.burn_in_cycles)["rmse_a"]  # ~0.2
    ```
    """
    if jnp.ndim(t0) != 0:
        raise ValueError(f"t0 must be a scalar time; got shape {jnp.shape(t0)}.")
    if context is not None and not isinstance(context, Mapping):
        raise TypeError(
            "context must be a dict of extra keyword arguments for filt.analysis (e.g. "
            f"{{'state_coords': ..., 'obs_coords': ...}}); got {type(context).__name__}."
        )
    context = dict(context or {})
    if localizer is not None:
        if "localizer" in context:
            raise ValueError("pass the localizer either as localizer=... or in context, not both.")
        parameters = _analysis_parameters(filt)
        if parameters is not None and "localizer" not in parameters:
            raise TypeError(
                f"{type(filt).__name__}.analysis takes no localizer argument, so localizer=... "
                "would be ignored. Use a filter that localises (e.g. LETKF, or one configured "
                "with a localizer field), or drop the argument."
            )
        context["localizer"] = localizer
    ensemble0, observations, obs_times = _validate(
        filt,
        dynamics,
        obs_op,
        ensemble0,
        observations,
        obs_times,
        key,
        inflator,
        save,
        divergence_threshold,
        t0,
    )
    return _assimilate_jit(
        filt,
        dynamics,
        obs_op,
        obs_noise,
        ensemble0,
        observations,
        obs_times,
        key,
        inflator,
        bool(rotate),
        t0,
        save,
        bool(throw),
        divergence_threshold,
        context,
    )


def _run(
    filt: Any,
    dynamics: Any,
    obs_op: Any,
    obs_noise: Any,
    ensemble0: Array,
    observations: Array,
    obs_times: Array,
    key: PRNGKeyArray,
    inflator: Any,
    rotate: bool,
    t0: Any,
    save: str,
    throw: bool,
    divergence_threshold: Any,
    context: dict[str, Any],
) -> AssimilationResult:
    n_times = observations.shape[0]
    stochastic = _needs_key(dynamics)
    adaptive = isinstance(inflator, AdaptiveInflator)
    watch_innovation = adaptive or divergence_threshold is not None
    t_start = jnp.asarray(t0, dtype=obs_times.dtype)[None]
    t_prev = jnp.concatenate([t_start, obs_times[:-1]])
    steps = jnp.arange(n_times, dtype=jnp.int32)

    def cycle(carry, inputs):
        ensemble, infl_state, alive = carry
        infl = infl_state if adaptive else inflator
        step, obs, t_a, t_b = inputs
        k_fc, k_an, k_infl, k_rot = cycle_keys(key, step)

        forecast = _forecast(dynamics, stochastic, ensemble, t_a, t_b, k_fc)
        diverged = jnp.asarray(False)
        if watch_innovation:
            observed_f = jax.vmap(lambda x: _apply_obs(obs_op, x))(forecast)
            innovation = obs - jnp.mean(observed_f, axis=0)
            if adaptive:
                infl = infl.update(innovation, observed_f, obs_noise)
            if divergence_threshold is not None:
                mask = ~jnp.isnan(obs)
                sq = jnp.where(mask, jnp.where(mask, innovation, 0.0) ** 2, 0.0)
                n_obs = jnp.maximum(jnp.sum(mask), 1).astype(sq.dtype)
                diverged = jnp.sqrt(jnp.sum(sq) / n_obs) > divergence_threshold

        result = filt.analysis(k_an, forecast, obs, obs_op, obs_noise, **context)
        analysis = jnp.asarray(result.particles)
        if analysis.shape != forecast.shape:
            raise ValueError(
                f"{type(filt).__name__}.analysis returned particles of shape {analysis.shape}; "
                f"the forecast ensemble has shape {forecast.shape}."
            )
        analysis = analysis.astype(forecast.dtype)
        if infl is not None:
            analysis = infl(analysis, forecast, key=k_infl)
        if rotate:
            analysis = rotate_ensemble(k_rot, analysis)

        finite = jnp.all(jnp.isfinite(forecast)) & jnp.all(jnp.isfinite(analysis))
        valid = alive & finite
        status = jnp.where(
            valid, jnp.where(diverged, STATUS_DIVERGED, STATUS_OK), STATUS_NONFINITE
        ).astype(jnp.int32)

        def row(x):
            return jnp.where(valid, x, _nan_like(x))

        loglik = jnp.asarray(result.log_likelihood).astype(forecast.dtype)
        rows = {
            "forecast_mean": row(jnp.mean(forecast, axis=0)),
            "analysis_mean": row(jnp.mean(analysis, axis=0)),
            "forecast_spread": row(rms_spread(forecast)),
            "analysis_spread": row(rms_spread(analysis)),
            "log_likelihood": row(loglik),
            "status": status,
        }
        if save != "stats":
            rows["ensembles"] = row(analysis)
        if save == "forecast_and_analysis":
            rows["forecast_ensembles"] = row(forecast)
        if adaptive:
            rows["inflation"] = row(jnp.asarray(infl.inflation).astype(forecast.dtype))

        # Freeze on failure: keep the last finite ensemble (and inflation estimate) so that
        # NaN never propagates into later cycles or into the returned particles.
        new_ensemble = jnp.where(valid, analysis, ensemble)
        if adaptive:
            infl_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(valid, new, old) if eqx.is_array(new) else new,
                infl,
                infl_state,
            )
        return (new_ensemble, infl_state, valid), rows

    # Only an adaptive inflator changes from cycle to cycle; any other inflator (possibly a
    # plain function, which cannot live in a scan carry) is closed over.
    init = (ensemble0, inflator if adaptive else None, jnp.asarray(True))
    (final, final_infl, _), rows = jax.lax.scan(
        cycle, init, (steps, observations, t_prev, obs_times)
    )

    cycle_status = rows["status"]
    failed = cycle_status != STATUS_OK
    any_nonfinite = jnp.any(cycle_status == STATUS_NONFINITE)
    any_diverged = jnp.any(cycle_status == STATUS_DIVERGED)
    status = jnp.where(
        any_nonfinite, STATUS_NONFINITE, jnp.where(any_diverged, STATUS_DIVERGED, STATUS_OK)
    ).astype(jnp.int32)
    first_failure = jnp.where(jnp.any(failed), jnp.argmax(failed), -1).astype(jnp.int32)
    result = AssimilationResult(
        forecast_mean=rows["forecast_mean"],
        analysis_mean=rows["analysis_mean"],
        forecast_spread=rows["forecast_spread"],
        analysis_spread=rows["analysis_spread"],
        log_likelihood=rows["log_likelihood"],
        particles=final,
        ensembles=rows.get("ensembles"),
        forecast_ensembles=rows.get("forecast_ensembles"),
        inflation=rows.get("inflation"),
        inflator=final_infl if adaptive else None,
        times=obs_times,
        cycle_status=cycle_status,
        status=status,
        first_failure=first_failure,
        n_nonfinite=jnp.sum(cycle_status == STATUS_NONFINITE).astype(jnp.int32),
        n_diverged=jnp.sum(cycle_status == STATUS_DIVERGED).astype(jnp.int32),
    )
    if throw:
        result = eqx.error_if(result, status == STATUS_NONFINITE, _NONFINITE_MESSAGE)
        if divergence_threshold is not None:
            result = eqx.error_if(result, status == STATUS_DIVERGED, _DIVERGED_MESSAGE)
    return result


_assimilate_jit = eqx.filter_jit(_run)
