"""Filter then smooth as one compiled program."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float, PRNGKeyArray, Real

import filterax.filters as ff

from ._base import AbstractEnsembleSmoother, check_context, check_filter
from ._enks import EnKS
from ._fixed_lag import FixedLagSmoother
from ._result import SmootherResult

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
      `EnKS` / `FixedLagSmoother` refuse localised filters, `EnsembleRTS` and
      `EnsembleSqrtSmoother` accept any filter) and `save_ensembles` as in `smooth`.

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
    if isinstance(smoother, EnKS | FixedLagSmoother):
        # Fail before the (long) filter run rather than after it.
        check_filter(filt)
    context = check_context(context)
    if localizer is not None:
        if "localizer" in context:
            raise ValueError("pass the localizer either as localizer=... or in context, not both.")
        context["localizer"] = localizer
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
    )
