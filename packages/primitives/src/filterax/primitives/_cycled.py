r"""The cycled-method contract: ``init``/``step`` kernels that one driver loops over.

Anything carried from one observation time to the next is a *cycled method* (docs/conventions.md):
an ensemble filter with its post-processing, a Kalman filter's Gaussian, a particle filter's
weighted particles, a fixed-lag smoother's rolling buffer, the iEnKS window, a learned filter's
warm-started parameters. As in blackjax (``init``/``step`` kernels with State and Info, the
driver owns the loop) and diffrax (``AbstractSolver.step`` + one ``diffeqsolve``), a method only
says how ONE cycle goes; the driver (`filterax.filters.run`) owns the `lax.scan`, the per-cycle
keys, what is saved, the statistics rows, the freeze-on-non-finite policy, the status codes,
divergence detection and ``eqx.error_if``.

Cycle ``k`` (``k = 0 .. T-1``) goes from ``t_prev = obs_times[k-1]`` (``t0`` for ``k = 0``)
to ``t = obs_times[k]``: forecast, then assimilate ``obs = observations[k]``:

```python
state = method.init(key, initial, model)
for k in range(T):
    state, info = method.step(jax.random.fold_in(key, k), state, model, t_prev, t, obs)
```

``info`` is a `CycleInfo`: the summaries every method reports (means, spreads, the
log-likelihood, the innovation, whether the cycle stayed finite), the full forecast and
analysis (saved on request) and method-specific ``diagnostics`` (always saved: keep them small).

Post-processing of an analysis ensemble (inflation, rotation, any user step) is a chain of
`AbstractPostProcessor`\ s, each with its own state (an adaptive inflation estimate), composed
like optax's ``chain``.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree, Real

from ._model import AbstractModel
from ._rotation import rotate_ensemble

__all__ = [
    "AbstractCycledMethod",
    "AbstractPostProcessor",
    "AbstractPresampledMethod",
    "CycleInfo",
    "CycleObservation",
    "NoPostProcessing",
    "RandomRotation",
    "is_finite",
]


class CycleInfo(eqx.Module):
    r"""What one `AbstractCycledMethod.step` reports to the driver.

    **Fields:**

    - `forecast_mean`, `analysis_mean`: ``(N_x,)`` the estimate before and after the cycle's
      analysis (and post-processing): the ensemble mean, the Gaussian mean, the weighted
      particle mean.
    - `forecast_spread`, `analysis_spread`: scalar spreads, DAPPER's ``rmv``
      ``sqrt(mean_i var_i)``.
    - `log_likelihood`: ``log p(y_k | y_{<k})`` as the method estimates it.
    - `innovation`: ``(N_y,)`` ``y_k - mean H(x^f)`` (entries at missing observations are
      ignored): the driver's divergence test uses its RMS over the observed entries.
    - `finite`: ``True`` when the cycle produced a usable (finite) forecast and analysis;
      ``False`` makes the driver freeze the state and report the cycle as non-finite.
    - `forecast`, `analysis`: the full forecast / analysis belief (an ``(N_e, N_x)`` ensemble,
      a Gaussian state, weighted particles, ...), stacked by the driver only when asked to
      save them; ``None`` if the method has nothing beyond the summaries.
    - `diagnostics`: method-specific per-cycle rows, always stacked (e.g. an adaptive
      inflation estimate); keep them small (``O(N_x)`` at most).
    """

    forecast_mean: Float[Array, " N_x"]
    forecast_spread: Real[Array, ""]
    analysis_mean: Float[Array, " N_x"]
    analysis_spread: Real[Array, ""]
    log_likelihood: Real[Array, ""]
    innovation: Float[Array, " N_y"]
    finite: Bool[Array, ""]
    forecast: PyTree = None
    analysis: PyTree = None
    diagnostics: PyTree = None


class AbstractCycledMethod(eqx.Module):
    """A method that assimilates observations one observation time after another.

    Implement `init` and `step`; run it with `filterax.filters.run` (which owns the loop).

    - ``init(key, initial, model) -> State``: the state before the first cycle, from the
      method's initial condition (an ``(N_e, N_x)`` ensemble for ensemble methods, a Gaussian
      state for Kalman filters, ...).
    - ``step(key, state, model, t_prev, t, obs) -> (State, CycleInfo)``: forecast from
      ``t_prev`` to ``t`` through ``model`` and assimilate ``obs`` (``(N_y,)``, NaN where
      missing). `key` is the cycle's key, ``jax.random.fold_in(run_key, k)``; split it as the
      method needs (ensemble filters: `filterax.filters.cycle_keys`).

    State must be a pytree of arrays of fixed shapes (it is the `lax.scan` carry): no
    callables, strings or other non-array leaves. A method with a learned module keeps the
    module's static part on itself and carries only its arrays (``eqx.filter(module,
    eqx.is_array)``), rebuilding it with ``eqx.combine`` as `ConditionalFlowFilter.flow_of`
    does. The driver keeps the previous state when `CycleInfo.finite` is ``False``.
    """

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray, initial: PyTree, model: AbstractModel) -> PyTree:
        """The state before the first cycle."""

    @abc.abstractmethod
    def step(
        self,
        key: PRNGKeyArray,
        state: PyTree,
        model: AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[PyTree, CycleInfo]:
        """One forecast-analysis cycle from ``t_prev`` to ``t`` with observation ``obs``."""


class AbstractPresampledMethod(AbstractCycledMethod):
    """A cycled method whose per-cycle random numbers do not depend on its state.

    Drawing a few hundred random numbers inside a compiled loop costs far more per number than
    drawing them for many cycles at once (on a CPU, the normals of one 20-member random rotation
    cost about as much as the rest of an ETKF cycle). A method that can say what it draws from
    the cycle key alone implements

    - ``presample(key, state) -> draws``: the cycle's random draws from its key (`state` only
      supplies shapes and dtypes: the draws must not depend on its values);
    - ``step_presampled(key, draws, state, model, t_prev, t, obs) -> (State, CycleInfo)``: the
      cycle given those draws;

    and `step` is ``step_presampled(key, presample(key, state), ...)``. `filterax.filters.run`
    draws ``presample`` for blocks of cycles at once (vmapped over the cycle keys) before it
    scans them: the same keys, so the same numbers as cycle-by-cycle stepping.
    """

    @abc.abstractmethod
    def presample(self, key: PRNGKeyArray, state: PyTree) -> PyTree:
        """The cycle's random draws from its key alone."""

    @abc.abstractmethod
    def step_presampled(
        self,
        key: PRNGKeyArray,
        draws: PyTree,
        state: PyTree,
        model: AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[PyTree, CycleInfo]:
        """One cycle given its pre-drawn random numbers."""

    def step(
        self,
        key: PRNGKeyArray,
        state: PyTree,
        model: AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[PyTree, CycleInfo]:
        """``step_presampled(key, presample(key, state), state, ...)``."""
        return self.step_presampled(key, self.presample(key, state), state, model, t_prev, t, obs)


class CycleObservation(eqx.Module):
    """What a post-processor may use of the cycle's observation (built by the ensemble step).

    **Fields:**

    - `obs`: ``(N_y,)`` the observation (NaN where missing).
    - `observed_forecast`: ``(N_e, N_y)`` ``H(x^f_i)`` of the un-post-processed forecast.
    - `innovation`: ``(N_y,)`` ``y - mean_i H(x^f_i)``.
    - `obs_noise`: the observation-error covariance ``R`` as the model holds it.
    """

    obs: Float[Array, " N_y"]
    observed_forecast: Float[Array, "N_e N_y"]
    innovation: Float[Array, " N_y"]
    obs_noise: Any


class AbstractPostProcessor(eqx.Module):
    """A step applied to the analysis ensemble after the analysis, with its own state.

    - ``init(ensemble) -> state``: the post-processor's state before the first cycle
      (``None`` for stateless steps).
    - ``apply(key, state, analysis, forecast, cycle) -> (analysis, state)``: post-process the
      cycle's analysis ensemble; `cycle` is a `CycleObservation`.

    Inflators (`MultiplicativeInflator`, `RTPS`, ..., the stateful `AdaptiveInflator`) and
    `RandomRotation` are post-processors; an ensemble method applies a tuple of them in order
    (optax's ``chain``), carrying their states in its own State.
    """

    @abc.abstractmethod
    def init(self, ensemble: Float[Array, "N_e N_x"]) -> PyTree:
        """The state before the first cycle."""

    @abc.abstractmethod
    def apply(
        self,
        key: PRNGKeyArray,
        state: PyTree,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"],
        cycle: CycleObservation,
    ) -> tuple[Float[Array, "N_e N_x"], PyTree]:
        """Return the post-processed analysis and the new state."""


class NoPostProcessing(AbstractPostProcessor):
    """The identity post-processor (keeps a slot in a chain without doing anything)."""

    def init(self, ensemble: Float[Array, "N_e N_x"]) -> None:
        del ensemble
        return None

    def apply(
        self,
        key: PRNGKeyArray,
        state: None,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"],
        cycle: CycleObservation,
    ) -> tuple[Float[Array, "N_e N_x"], None]:
        del key, forecast, cycle
        return analysis, state


class RandomRotation(AbstractPostProcessor):
    r"""DAPPER's ``rot``: a random mean-preserving rotation of the anomalies each cycle.

    $$X \leftarrow \bar x + \Theta (X - \bar x),\qquad \Theta^\top\Theta = I,\ \Theta\mathbf 1
    = \mathbf 1$$

    (`rotate_ensemble`): same sample mean and covariance, new members.

    **Reference:** Sakov & Oke (2008), *MWR* 136; DAPPER's ``post_process(E, infl, rot)``.
    """

    def init(self, ensemble: Float[Array, "N_e N_x"]) -> None:
        del ensemble
        return None

    def apply(
        self,
        key: PRNGKeyArray,
        state: None,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"],
        cycle: CycleObservation,
    ) -> tuple[Float[Array, "N_e N_x"], None]:
        del forecast, cycle
        return rotate_ensemble(key, analysis), state


def is_finite(*trees: PyTree) -> Bool[Array, ""]:
    """``True`` when every inexact array leaf of the given pytrees is finite."""
    out = jnp.asarray(True)
    for leaf in jax.tree_util.tree_leaves(trees):
        if eqx.is_inexact_array(leaf):
            out = out & jnp.all(jnp.isfinite(leaf))
    return out
