"""The compiled forecast -> analysis -> inflate -> rotate cycle.

`assimilate` runs a whole twin experiment as ONE `lax.scan` over observation times, so a run
is one compiled program, a seed x hyper-parameter grid is one `jax.vmap` of it, and
deterministic filters can be differentiated end to end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

import filterax.primitives as fxp
from filterax.primitives import AdaptiveInflator

from ._ensemble_filter import EnsembleFilter
from ._run import (
    STATUS_DIVERGED,
    STATUS_INVALID_NOISE,
    STATUS_INVALID_TIMES,
    STATUS_NONFINITE,
    STATUS_OK,
    check_run_arguments,
    cycle_keys,
    run_cycles,
    time_mean_scores,
)

__all__ = ["AssimilationResult", "assimilate", "cycle_keys"]


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
      innovation exceeded ``divergence_threshold``), ``3`` invalid observation times (traced
      times not finite, not increasing or before ``t0``: nothing is assimilated; concrete
      ones raise a `ValueError` before the run).
    - `status`: overall: ``3`` for invalid times, else ``1`` if any cycle was non-finite, else
      ``2`` if any diverged, else ``0`` (`AssimilationResult.OK`, `.NONFINITE`, `.DIVERGED`,
      `.INVALID_TIMES`).
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
    INVALID_TIMES: ClassVar[int] = STATUS_INVALID_TIMES
    INVALID_NOISE: ClassVar[int] = STATUS_INVALID_NOISE

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
        return time_mean_scores(
            self.analysis_mean,
            self.forecast_mean,
            self.analysis_spread,
            self.forecast_spread,
            truth,
            burn_in_cycles,
        )


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
    rotate: bool = False,
    t0: Real[ArrayLike, ""] = 0.0,
    save: str = "stats",
    throw: bool = True,
    divergence_threshold: float | None = None,
    context: Mapping[str, Any] | None = None,
) -> AssimilationResult:
    """Cycle forecast -> analysis -> inflation -> rotation over all observations (one scan).

    The convenience entry point for ensemble filters: ``run(EnsembleFilter(filt, inflator,
    rotate, context=context), Model(dynamics, obs_op, obs_noise, t0=t0), ensemble0,
    observations, obs_times, key=key, ...)`` (`run`, the one driver of every cycled method),
    repackaged as an `AssimilationResult`.

    For cycle ``k = 0..T-1`` with ``t_{-1} = t0`` (DAPPER's convention: no observation at
    ``t0``, the run starts with a forecast):

    1. keys: ``k_fc, k_an, k_infl, k_rot = cycle_keys(key, k)``
       (``jax.random.split(jax.random.fold_in(key, k), 4)``);
    2. forecast: ``X^f = vmap(dynamics, in_axes=(0, None, None))(X^a, t_{k-1}, t_k)``; a
       stochastic dynamics (an `AbstractStochasticDynamics`, e.g.
       `filterax.zoo.StochasticDynamics`) get one key per member, ``jax.random.split(k_fc,
       N_e)``;
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
    - `rotate`: apply DAPPER's random rotation each cycle.
    - `t0`: time of `ensemble0`.
    - `save`: ``"stats"`` (means, spreads, log-likelihoods: O(T N_x) memory),
      ``"ensembles"`` (also the ``(T, N_e, N_x)`` analysis ensembles) or
      ``"forecast_and_analysis"`` (both ensembles).
    - `throw`: raise on a non-finite (or diverged) run instead of only reporting it.
    - `divergence_threshold`: RMS innovation (observation units) above which a cycle counts as
      diverged; ``None`` disables the check.
    - `context`: extra keyword arguments for ``filt.analysis`` (e.g. LETKF coordinates, or a
      ``localizer=`` for a filter whose analysis takes one).

    **Returns:**

    An `AssimilationResult`.

    Reference: DAPPER's ``xp.assimilate(HMM, xx, yy)`` with ``infl`` and ``rot`` (the EnKF
    family's ``post_process``).

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
    if not callable(getattr(filt, "analysis", None)):
        raise TypeError(
            "filt must be a sequential filter with an analysis(key, forecast, obs, obs_op, "
            "obs_noise, **context) method (an AbstractSequentialFilter); got "
            f"{type(filt).__name__}."
        )
    if not callable(dynamics):
        raise TypeError(
            f"dynamics must be callable as dynamics(x, t0, t1) -> x; got {type(dynamics).__name__}."
        )
    if inflator is not None and not callable(inflator):
        raise TypeError(
            "inflator must be an AbstractInflator (e.g. MultiplicativeInflator(1.02)) or a "
            f"callable inflator(analysis, forecast, *, key); got {type(inflator).__name__}."
        )
    method = EnsembleFilter(filt, inflator=inflator, rotate=rotate, context=context)
    model = fxp.Model(dynamics, obs_op, obs_noise, t0=t0)
    observations, obs_times = check_run_arguments(
        model, observations, obs_times, key, save, divergence_threshold, t0, "assimilate"
    )
    return _assimilate_jit(
        method,
        model,
        ensemble0,
        observations,
        obs_times,
        key,
        save,
        bool(throw),
        divergence_threshold,
        isinstance(inflator, AdaptiveInflator),
    )


def _assimilate(
    method: EnsembleFilter,
    model: fxp.Model,
    ensemble0: Array,
    observations: Array,
    obs_times: Array,
    key: PRNGKeyArray,
    save: str,
    throw: bool,
    divergence_threshold: Any,
    adaptive: bool,
) -> AssimilationResult:
    out = run_cycles(
        method,
        model,
        ensemble0,
        observations,
        obs_times,
        key,
        model.t0,
        save,
        throw,
        divergence_threshold,
        "assimilate",
    )
    return AssimilationResult(
        forecast_mean=out.forecast_mean,
        analysis_mean=out.analysis_mean,
        forecast_spread=out.forecast_spread,
        analysis_spread=out.analysis_spread,
        log_likelihood=out.log_likelihood,
        particles=out.state.particles,
        ensembles=out.analyses,
        forecast_ensembles=out.forecasts,
        inflation=out.diagnostics[0].inflation if adaptive else None,
        inflator=out.state.post_states[0] if adaptive else None,
        times=out.times,
        cycle_status=out.cycle_status,
        status=out.status,
        first_failure=out.first_failure,
        n_nonfinite=out.n_nonfinite,
        n_diverged=out.n_diverged,
    )


_assimilate_jit = eqx.filter_jit(_assimilate)
