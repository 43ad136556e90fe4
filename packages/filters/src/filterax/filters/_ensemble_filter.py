r"""`EnsembleFilter`: an analysis kernel plus its post-processing, as a cycled method.

One cycle (DAPPER's ``assimilate`` of the EnKF family):

1. forecast: every member through the model from ``t_prev`` to ``t``
   (`filterax.primitives.forecast_ensemble`; member ``i`` of a stochastic model gets key ``i``
   of ``jax.random.split(k_forecast, N_e)``);
2. analysis: ``kernel.analysis(k_analysis, forecast, obs, model.obs_op, model.obs_noise,
   **context)``; a localising kernel (`filterax.primitives.AbstractLocalFilter`, e.g. `LETKF`)
   also gets the model's ``state_coords``, ``obs_coords`` and ``distance``, which entries of
   `context` override (`filterax.primitives.geometry_context`);
3. post-processing, in order: the inflator (key ``k_inflation``), the random rotation (key
   ``k_rotation``), then the extra steps of `post` (key ``fold_in(k_rotation, i)`` for the
   ``i``-th); each is an `AbstractPostProcessor` whose state (an adaptive inflation estimate)
   travels in `EnsembleState`.

The four keys are `cycle_keys` of the run key and the cycle index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real

import filterax.primitives as fxp

__all__ = ["CallableInflator", "EnsembleFilter", "EnsembleState"]


class CallableInflator(fxp.AbstractInflator):
    """Wrap a plain function ``f(analysis, forecast, *, key) -> analysis`` as an inflator."""

    fn: Callable[..., Any]

    def __call__(
        self,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "N_e N_x"]:
        return self.fn(analysis, forecast, key=key)


def _as_post_processor(step: Any, name: str) -> fxp.AbstractPostProcessor:
    if step is None:
        return fxp.NoPostProcessing()
    if isinstance(step, fxp.AbstractPostProcessor):
        return step
    if callable(step):
        return CallableInflator(step)
    raise TypeError(
        f"{name} must be an inflator / post-processor (e.g. MultiplicativeInflator(1.02), "
        "AdaptiveInflator(), RTPS(0.5)) or a callable inflator(analysis, forecast, *, key); "
        f"got {type(step).__name__}."
    )


def _as_post_chain(steps: Any) -> tuple[fxp.AbstractPostProcessor, ...]:
    if isinstance(steps, fxp.AbstractPostProcessor) or callable(steps):
        steps = (steps,)
    return tuple(_as_post_processor(s, "post") for s in steps)


class EnsembleState(eqx.Module):
    """The state of an `EnsembleFilter` between cycles.

    **Fields:**

    - `particles`: the ``(N_e, N_x)`` analysis ensemble.
    - `post_states`: the states of the post-processing chain (inflator, rotation, then the
      extra steps), e.g. an `AdaptiveInflator` holding its current estimate; ``None`` for
      stateless steps.
    """

    particles: Float[Array, "N_e N_x"]
    post_states: tuple[PyTree, ...]


class EnsembleFilter(fxp.AbstractPresampledMethod):
    r"""An ensemble analysis kernel with its post-processing, as a cycled method.

    Cycle ``k`` (see the module docstring): forecast ``X^f = \mathcal M(X^a_{k-1})``,
    analysis ``X^a = \text{kernel.analysis}(X^f, y_k)``, then the post-processing chain
    ``X^a \leftarrow p_j(X^a)`` (inflation, DAPPER's random rotation, any user steps), each
    step carrying its own state. Statistics are assessed after the whole chain, as DAPPER
    does.

    **Arguments:**

    - `kernel`: an analysis kernel, `AbstractSequentialFilter` (`ETKF()`, `LETKF(...)`, ...).
    - `inflator`: ``None``, an inflator (`MultiplicativeInflator`, `AdditiveInflator`, `RTPS`,
      `RTPP`, the stateful `AdaptiveInflator`), any `AbstractPostProcessor`, or a plain
      function ``f(analysis, forecast, *, key)``.
    - `rotate`: apply DAPPER's random mean-preserving rotation each cycle (static).
    - `post`: further post-processing steps applied after inflation and rotation (a
      post-processor or a sequence of them).
    - `context`: extra keyword arguments for ``kernel.analysis``. A localising kernel
      (`AbstractLocalFilter`, e.g. `LETKF`) takes ``state_coords``, ``obs_coords`` and
      ``distance`` from the model; entries given here override the model's (for a model
      without geometry, e.g. the one `assimilate` builds).

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    import filterax.primitives as fxp
    from filterax.zoo import presets

    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(0), 500)
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.02),
                               rotate=True)
    out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(1), 10),
                 xp.observations, xp.times, key=jax.random.key(2))
    ```

    DAPPER equivalent: ``EnKF("Sqrt", N, infl=1.02, rot=True)`` (the filter's
    ``post_process``).
    """

    kernel: fxp.AbstractSequentialFilter
    inflator: fxp.AbstractPostProcessor
    rotate: bool = eqx.field(static=True)
    post: tuple[fxp.AbstractPostProcessor, ...]
    context: dict[str, Any]

    def __init__(
        self,
        kernel: fxp.AbstractSequentialFilter,
        inflator: Any = None,
        rotate: bool = False,
        post: fxp.AbstractPostProcessor | Sequence[Any] = (),
        context: Mapping[str, Any] | None = None,
    ):
        if not callable(getattr(kernel, "analysis", None)):
            raise TypeError(
                "kernel must be a sequential filter with an analysis(key, forecast, obs, "
                "obs_op, obs_noise, **context) method (an AbstractSequentialFilter); got "
                f"{type(kernel).__name__}."
            )
        if context is not None and not isinstance(context, Mapping):
            raise TypeError(
                "context must be a dict of extra keyword arguments for kernel.analysis (e.g. "
                f"{{'state_coords': ..., 'obs_coords': ...}}); got {type(context).__name__}."
            )
        self.kernel = kernel
        self.inflator = _as_post_processor(inflator, "inflator")
        self.rotate = bool(rotate)
        self.post = _as_post_chain(post)
        self.context = dict(context or {})

    @property
    def chain(self) -> tuple[fxp.AbstractPostProcessor, ...]:
        """The whole post-processing chain: inflator, rotation slot, then `post`."""
        rotation = fxp.RandomRotation() if self.rotate else fxp.NoPostProcessing()
        return (self.inflator, rotation, *self.post)

    def init(
        self, key: PRNGKeyArray, initial: Real[ArrayLike, "..."], model: fxp.AbstractModel
    ) -> EnsembleState:
        """Check the initial ensemble and start every post-processor."""
        del key, model
        ensemble = jnp.asarray(initial)
        if ensemble.ndim != 2:
            raise ValueError(
                f"the initial ensemble (ensemble0) must be a 2-D array (N_e, N_x) with members "
                f"on the first axis; got shape {ensemble.shape}. Stack the members with "
                "jnp.stack."
            )
        if ensemble.shape[0] < 2:
            raise ValueError(
                f"the initial ensemble has N_e={ensemble.shape[0]} member(s); ensemble "
                "statistics need N_e >= 2. Draw more members (e.g. ssm.initial_ensemble(key, "
                "20))."
            )
        if not jnp.issubdtype(ensemble.dtype, jnp.floating):
            raise TypeError(
                f"the initial ensemble must be floating point; got dtype {ensemble.dtype}. "
                "Cast it with .astype(jnp.float64) or .astype(jnp.float32)."
            )
        return EnsembleState(ensemble, tuple(p.init(ensemble) for p in self.chain))

    def forecast(
        self,
        key: PRNGKeyArray,
        ensemble: Float[Array, "N_e N_x"],
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
    ) -> Float[Array, "N_e N_x"]:
        """Step 1 of the cycle, with the shape check of the model's dynamics."""
        try:
            forecast = fxp.forecast_ensemble(model, key, ensemble, t_prev, t)
        except TypeError as err:
            raise TypeError(
                f"calling dynamics(x, t0, t1) on one (N_x,) member failed: {err}. Dynamics act "
                "on ONE state; the filter vmaps them over the ensemble. Dynamics that need a "
                "PRNG key must be an AbstractStochasticDynamics (e.g. filterax.zoo."
                "StochasticDynamics)."
            ) from err
        if forecast.shape != ensemble.shape:
            raise ValueError(
                f"dynamics(x, t0, t1) must return a state of shape {ensemble.shape[1:]} (like "
                f"one member of the ensemble); it returned shape {forecast.shape[1:]}."
            )
        return forecast.astype(ensemble.dtype)

    def presample(self, key: PRNGKeyArray, state: EnsembleState) -> Float[Array, "n n"] | None:
        """The Haar draw of the cycle's random rotation (``jax.random.orthogonal`` of size
        ``N_e - 1`` with the rotation key of `cycle_keys`, as `fxp.random_rotation` draws it),
        or ``None`` without rotation: the one draw that does not depend on the state, so `run`
        draws it for blocks of cycles at once."""
        if not self.rotate:
            return None
        k_rot = jax.random.split(key, 4)[3]
        n_e = state.particles.shape[0]
        return jax.random.orthogonal(k_rot, n_e - 1, dtype=state.particles.dtype)

    def step_presampled(
        self,
        key: PRNGKeyArray,
        draws: Float[Array, "n n"] | None,
        state: EnsembleState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, "..."],
    ) -> tuple[EnsembleState, fxp.CycleInfo]:
        """Forecast, analysis, post-processing (see the class docstring), with the cycle's
        rotation draw `draws` (from `presample`)."""
        k_fc, k_an, k_infl, k_rot = jax.random.split(key, 4)
        forecast = self.forecast(k_fc, state.particles, model, t_prev, t)
        dtype = forecast.dtype
        obs = jnp.asarray(obs).astype(dtype)
        observed = fxp.observe_ensemble(model, forecast)
        if observed.shape[1:] != obs.shape:
            raise ValueError(
                f"obs_op maps one member to shape {observed.shape[1:]}, but the observations "
                f"have N_y={obs.shape[0]} entries per time. Pass observations with one column "
                "per entry of obs_op(x), or the matching observation operator."
            )
        context = self.context
        if isinstance(self.kernel, fxp.AbstractLocalFilter):
            # A localising kernel takes the model's geometry; explicit context overrides it.
            context = fxp.geometry_context(
                model, context, owner=f"EnsembleFilter({type(self.kernel).__name__}(...))"
            )
        result = self.kernel.analysis(k_an, forecast, obs, model.obs_op, model.obs_noise, **context)
        analysis = jnp.asarray(result.particles)
        if analysis.shape != forecast.shape:
            raise ValueError(
                f"{type(self.kernel).__name__}.analysis returned particles of shape "
                f"{analysis.shape}; the forecast ensemble has shape {forecast.shape}."
            )
        analysis = analysis.astype(dtype)
        innovation = obs - jnp.mean(observed, axis=0)
        cycle = fxp.CycleObservation(obs, observed, innovation, model.obs_noise)
        chain = self.chain
        keys = (k_infl, k_rot, *(jax.random.fold_in(k_rot, i) for i in range(2, len(chain))))
        post_states = []
        for slot, (processor, post_state, k) in enumerate(
            zip(chain, state.post_states, keys, strict=True)
        ):
            if slot == 1 and self.rotate:
                # RandomRotation with its Haar draw made ahead: the same matrix (same key)
                analysis = fxp.rotate_with(fxp.mean_preserving_rotation(draws), analysis)
            else:
                analysis, post_state = processor.apply(k, post_state, analysis, forecast, cycle)
            post_states.append(post_state)
        post_states = tuple(post_states)
        finite = jnp.all(jnp.isfinite(forecast)) & jnp.all(jnp.isfinite(analysis))
        info = fxp.CycleInfo(
            forecast_mean=jnp.mean(forecast, axis=0),
            forecast_spread=fxp.rms_spread(forecast),
            analysis_mean=jnp.mean(analysis, axis=0),
            analysis_spread=fxp.rms_spread(analysis),
            log_likelihood=jnp.asarray(result.log_likelihood).astype(dtype),
            innovation=innovation,
            finite=finite,
            forecast=forecast,
            analysis=analysis,
            diagnostics=post_states,
        )
        return EnsembleState(analysis, post_states), info
