"""Filter then smooth as one compiled program."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float, PRNGKeyArray, Real

import filterax.filters as ff
import filterax.primitives as fxp

from ._base import AbstractEnsembleSmoother, check_context, check_filter
from ._enks import EnKS
from ._fixed_lag import FixedLagSmoother
from ._result import SmootherResult
from ._rts import check_regression_filter

# Inflators after which the replay check of the EnKS / fixed-lag smoother holds (they keep
# the mean and act column by column on the analysis and forecast anomalies).
#: The filters whose replay the tests check against their histories (one ensemble transform
#: per cycle, or LETKF's per-grid-point transforms); exact types: a subclass may change the
#: analysis.
_REPLAYABLE_FILTERS = (ff.ETKF, ff.StochasticEnKF, ff.DEnKF, ff.EnKF_N, ff.LETKF)
_CHECKABLE_INFLATORS = (
    fxp.MultiplicativeInflator,
    fxp.RTPS,
    fxp.RTPP,
    fxp.AdaptiveInflator,
)

__all__ = ["assimilate_and_smooth"]


def assimilate_and_smooth(
    smoother: AbstractEnsembleSmoother,
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
    context: Mapping[str, Any] | None = None,
    throw: bool = True,
    save_ensembles: bool = False,
) -> SmootherResult:
    """Run `filterax.filters.assimilate` and then `smoother.smooth` as ONE compiled call.

    Equivalent to

    ```python
    if localizer is not None:
        context = {**(context or {}), "localizer": localizer}
    history = assimilate(filt, dynamics, obs_op, obs_noise, ensemble0, observations,
                         obs_times, key=key, inflator=inflator, rotate=rotate, t0=t0,
                         context=context, throw=throw, save="forecast_and_analysis")
    smoother.smooth(filt, history, observations, obs_op, obs_noise, key=key,
                    context=context, save_ensembles=save_ensembles, rotate=rotate)
    ```

    inside one `eqx.filter_jit`, so a run is one program, `jax.vmap` over keys or dynamic
    hyper-parameters (inflation factor, noise scale) runs a grid as one program, and
    deterministic filters can be differentiated end to end (`jax.grad` of a smoothed score).
    The ``(T, N_e, N_x)`` forecast and analysis ensembles live only inside the program.

    **Arguments:**

    - `smoother`: an `AbstractEnsembleSmoother` (`EnKS`, `FixedLagSmoother`, `EnsembleRTS`,
      `EnsembleSqrtSmoother`).
    - `localizer`: passed to ``filt.analysis`` as the keyword ``localizer=`` (in `context`:
      give it there or here, not both); the rest: as `filterax.filters.assimilate` (the
      `EnKS` / `FixedLagSmoother` smooth global and localised filters, e.g. `LETKF` with its
      geometry in `context`; `EnsembleRTS` and `EnsembleSqrtSmoother` refuse localised
      ones) and `save_ensembles` as in `smooth`. The replay of the `EnKS` /
      `FixedLagSmoother` is checked against the run (an `eqx.error_if` error if they
      differ, which only a filter they do not support can cause) unless the inflator is
      one the check cannot see through (`AdditiveInflator`, a custom callable).

    **Returns:** a `SmootherResult`.

    **Example:**

    ```python
    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(0), 300)
    out = assimilate_and_smooth(EnKS(), ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise,
                                ssm.initial_ensemble(jax.random.key(1), 10),
                                xp.observations, xp.times, key=jax.random.key(2),
                                inflator=MultiplicativeInflator(1.02), rotate=True)
    out.scores(xp.truth, 64)  # rmse_s < rmse_a
    ```
    """
    if not isinstance(smoother, AbstractEnsembleSmoother):
        raise TypeError(
            "smoother must be an AbstractEnsembleSmoother (EnKS(), FixedLagSmoother(lag), "
            f"EnsembleRTS(), EnsembleSqrtSmoother()); got {type(smoother).__name__}."
        )
    context = check_context(context)
    if localizer is not None:
        if "localizer" in context:
            raise ValueError("pass the localizer either as localizer=... or in context, not both.")
        context["localizer"] = localizer
    # Fail before the (long) filter run rather than after it.
    if isinstance(smoother, EnKS | FixedLagSmoother):
        check_filter(filt)
    else:
        check_regression_filter(filt, context, f"{type(smoother).__name__}.smooth")
    # Concrete observations, times, t0 and noise are checked now, with messages that name
    # the bad entry (inside the compiled call they were traced: an error without the index).
    observations, obs_times = ff.check_run_arguments(
        fxp.Model(dynamics, obs_op, obs_noise, t0=t0),
        observations,
        obs_times,
        key,
        "forecast_and_analysis",
        None,
        t0,
        "assimilate_and_smooth",
    )
    # The history is made here with the same arguments, so the replay can only differ from
    # it if the filter is not what the smoother supports (e.g. a custom localised filter):
    # checked where the inflator lets the check see through it. filterax's own filters
    # replay exactly by construction (tests/test_bad_history.py checks them): not checked,
    # which keeps the compiled program free of run-time error callbacks.
    check_replay = type(filt) not in _REPLAYABLE_FILTERS and (
        inflator is None or isinstance(inflator, _CHECKABLE_INFLATORS)
    )
    return _assimilate_and_smooth(
        smoother,
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
        context,
        bool(throw),
        bool(save_ensembles),
        check_replay,
    )


@eqx.filter_jit
def _assimilate_and_smooth(
    smoother: AbstractEnsembleSmoother,
    filt: Any,
    dynamics: Any,
    obs_op: Any,
    obs_noise: Any,
    ensemble0: Any,
    observations: Any,
    obs_times: Any,
    key: PRNGKeyArray,
    inflator: Any,
    rotate: bool,
    t0: Any,
    context: Any,
    throw: bool,
    save_ensembles: bool,
    check_replay: bool,
) -> SmootherResult:
    history = ff.assimilate(
        filt,
        dynamics,
        obs_op,
        obs_noise,
        ensemble0,
        observations,
        obs_times,
        key=key,
        inflator=inflator,
        rotate=rotate,
        t0=t0,
        save="forecast_and_analysis",
        throw=throw,
        context=context,
    )
    return smoother.smooth(
        filt,
        history,
        jnp.asarray(observations).astype(history.ensembles.dtype),
        obs_op,
        obs_noise,
        key=key,
        context=context,
        save_ensembles=save_ensembles,
        rotate=rotate,
        check_replay=check_replay,
    )
