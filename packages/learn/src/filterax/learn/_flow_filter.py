r"""`ConditionalFlowFilter`: the analysis as a learned conditional normalising flow.

The EnKF update is a *linear* conditional normaliser (`EnKFNormaliser`); replacing it by a
learned conditional flow ``T_θ`` gives non-Gaussian posteriors (the conditional-normalisation
slides; Spantini, Baptista & Marzouk 2022; the "conditional normalising flow" filters of
Kovachki et al. and Siahkoohi et al.). One cycle:

1. forecast every member, ``x̂_i = M(x_{i})`` (`filterax.primitives.forecast_ensemble`);
2. simulate joint pairs ``(x̂_i, ŷ_{ij} = h(x̂_i) + ε_{ij})``, ``j = 1..M`` noise copies;
3. fit ``p_θ(x | y)`` by maximum likelihood on the ``N_e M`` pairs (`fit_conditional_flow`,
   a fixed number of optax steps inside the compiled loop, warm-started from the previous
   cycle's flow and optimiser state); the first layer is the closed-form `EnKFNormaliser`;
4. ``z_i = T_θ^{-1}(x̂_i; ŷ_{i1})`` and ``x^a_i = T_θ(z_i; y^*)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree, Real

import filterax.primitives as fxp

from ._enkf_normaliser import EnKFNormaliser, enkf_normaliser
from ._fit_flow import fit_conditional_flow, trainable_spec
from ._flows import ConditionalFlow

__all__ = ["ConditionalFlowFilter", "FlowFilterDiagnostics", "FlowFilterState"]


class FlowFilterState(eqx.Module):
    """The state of a `ConditionalFlowFilter` between cycles.

    **Fields:** `particles` (the ``(N_e, N_x)`` analysis ensemble), `flow_params` (the array
    leaves of the flow fitted at the last cycle: the next fit starts from it; rebuild the flow
    with `ConditionalFlowFilter.flow_of`) and `opt_state` (the optimiser's state, also carried
    over). Only arrays: the State is the driver's `lax.scan` carry.
    """

    particles: Float[Array, "N_e N_x"]
    flow_params: PyTree
    opt_state: PyTree


class FlowFilterDiagnostics(eqx.Module):
    """Per-cycle diagnostics of a `ConditionalFlowFilter`.

    **Fields:** `initial_loss`, `final_loss` (the mean NLL of the pairs before the first and
    the last optimiser step of the cycle; NaN with ``n_steps = 0``) and `n_fallback` (members
    whose flow analysis was not finite and that took the EnKF analysis instead).
    """

    initial_loss: Real[Array, ""]
    final_loss: Real[Array, ""]
    n_fallback: Int[Array, ""]


def forecast_and_observe(
    key: PRNGKeyArray,
    particles: Float[Array, "N_e N_x"],
    model: fxp.AbstractModel,
    t_prev: Real[Array, ""],
    t: Real[Array, ""],
) -> tuple[Float[Array, "N_e N_x"], Float[Array, "N_e N_y"]]:
    """The forecast ensemble (in the particles' dtype) and its observed values ``h(x̂_i)``;
    a dynamics that changes the state's shape is a `ValueError`. Shared by the global and
    the local flow filter."""
    forecast = fxp.forecast_ensemble(model, key, particles, t_prev, t)
    if forecast.shape != particles.shape:
        raise ValueError(
            f"dynamics(x, t0, t1) must return a state of shape {particles.shape[1:]}; "
            f"it returned shape {forecast.shape[1:]}."
        )
    forecast = forecast.astype(particles.dtype)
    return forecast, fxp.observe_ensemble(model, forecast).astype(particles.dtype)


def transport_with_fallback(
    flow: ConditionalFlow,
    x: Float[Array, "N_e D"],
    y_own: Float[Array, "N_e M"],
    y_star: Float[Array, " M"],
    gain: Float[Array, "D M"],
    columns: Bool[Array, " D"] | None = None,
) -> tuple[Float[Array, "N_e D"], Bool[Array, " N_e"]]:
    r"""``x^a_i = T(T^{-1}(x_i; y_i); y^*)`` for every member, and for a member whose result is
    not finite (in the `columns` that count; all by default) the EnKF analysis
    ``x_i + K(y^* - y_i)`` instead. Returns the analyses and which members kept the flow's."""
    z = jax.vmap(lambda xi, yi: flow.inverse(xi, yi)[0])(x, y_own)
    flow_analysis = jax.vmap(lambda zi: flow.forward(zi, y_star)[0])(z)
    enkf_analysis = x + jnp.matmul(y_star[None, :] - y_own, gain.T, precision="highest")
    finite = jnp.isfinite(flow_analysis)
    if columns is not None:
        finite = finite | ~columns[None, :]
    member_ok = jnp.all(finite, axis=1)
    return jnp.where(member_ok[:, None], flow_analysis, enkf_analysis), member_ok


def flow_cycle_info(
    model: fxp.AbstractModel,
    forecast: Float[Array, "N_e N_x"],
    observed: Float[Array, "N_e N_y"],
    obs: Float[Array, " N_y"],
    analysis: Float[Array, "N_e N_x"],
    diagnostics: PyTree,
) -> fxp.CycleInfo:
    """The `CycleInfo` of an equally weighted flow-filter cycle."""
    return fxp.CycleInfo(
        forecast_mean=jnp.mean(forecast, axis=0),
        forecast_spread=fxp.rms_spread(forecast),
        analysis_mean=jnp.mean(analysis, axis=0),
        analysis_spread=fxp.rms_spread(analysis),
        log_likelihood=fxp.log_likelihood(observed, obs, model.obs_noise).astype(forecast.dtype),
        innovation=obs - jnp.mean(observed, axis=0),
        finite=jnp.all(jnp.isfinite(forecast)) & jnp.all(jnp.isfinite(analysis)),
        forecast=forecast,
        analysis=analysis,
        diagnostics=diagnostics,
    )


class ConditionalFlowFilter(fxp.AbstractCycledMethod):
    r"""The conditional-flow filter: the EnKF's linear conditional normaliser, made nonlinear.

    Each cycle (module docstring) fits a conditional flow ``T_θ(z; y)``, whose first layer is
    the closed-form EnKF normaliser

    $$z_0 = C^{-1}\big((x - μ_x) - K (y - μ_y)\big),\qquad K = C^{xh}(C^{hh} + R)^{-1},$$

    (`enkf_normaliser` with the forecast's sample moments and the exact ``R``) and whose other
    layers are learned couplings, to the simulated pairs ``(x̂_i, ŷ_{ij} = h(x̂_i) +
    ε_{ij})``, then moves every member to the observed ``y^*``:

    $$x^a_i = T_θ\big(T_θ^{-1}(x̂_i;\ ŷ_{i1});\ y^*\big).$$

    With the learned layers at the identity (untrained, or ``n_steps = 0``) this is
    ``x̂_i + K(y^* - ŷ_{i1})``: exactly the perturbed-observation EnKF (`StochasticEnKF`, the
    sign of ``ε`` immaterial). A member whose flow analysis is not finite takes that EnKF
    analysis instead (counted in `FlowFilterDiagnostics.n_fallback`). Missing (NaN)
    observation entries are set to 0 in ``ŷ`` and ``y^*`` alike (a constant carries no
    information, so ``p(x | y)`` ignores them) and get exactly zero EnKF gain.

    The global flow acts on the whole state: it needs ``N_e M`` comfortably above ``N_x``
    (a rank-deficient ensemble leaves ``C`` near-singular; the ridge `jitter` keeps it
    invertible).

    **Arguments:**

    - `flow`: a `ConditionalFlow` whose ``layers[0]`` is an `EnKFNormaliser` (replaced each
      cycle), e.g. ``conditional_flow(key, N_x, N_y, normaliser=True)``.
    - `optimiser`: an optax `GradientTransformation` (static; default ``optax.adam(3e-3)``).
    - `n_steps`: optimiser steps per cycle (static int ``>= 0``).
    - `n_noise_copies`: ``M``, observation-noise draws per member (static int ``>= 1``).
    - `batch_size`: minibatch size of the fit (``None``: full batch).
    - `center_perturbations`: centre the ``N_e M`` perturbations to mean zero (DAPPER's
      ``mean0``, as `StochasticEnKF`).
    - `jitter`: the relative ridge of `enkf_normaliser`.

    Keys: the cycle key splits into ``k_forecast, k_perturb, k_fit = jax.random.split(key,
    3)``; the perturbations are ``perturbed_observations(k_perturb, 0, R, N_e M,
    center=...)`` row ``c N_e + i`` for copy ``c`` of member ``i``.

    **Reference:** Spantini, Baptista & Marzouk (2022), *SIAM Review* 64(4); Durkan et al.
    (2019) for the spline layers; the EnKF it reduces to: Burgers, van Leeuwen & Evensen
    (1998). DAPPER has no equivalent.

    !!! Example

        ```python
        import jax, optax
        import filterax.filters as ff
        from filterax.learn import ConditionalFlowFilter, conditional_flow
        from filterax.zoo import presets

        ssm = presets.lorenz63_sakov2012()
        xp = ssm.simulate(jax.random.key(0), 20)
        flow = conditional_flow(jax.random.key(1), 3, 3, n_layers=2, normaliser=True)
        method = ConditionalFlowFilter(flow, optax.adam(3e-3), n_steps=20)
        out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(2), 50),
                     xp.observations, xp.times, key=jax.random.key(3))
        ```
    """

    flow: ConditionalFlow
    optimiser: optax.GradientTransformation = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)
    n_noise_copies: int = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True)
    center_perturbations: bool = eqx.field(static=True)
    jitter: Real[Array, ""]

    def __init__(
        self,
        flow: ConditionalFlow,
        optimiser: optax.GradientTransformation | None = None,
        n_steps: int = 50,
        *,
        n_noise_copies: int = 1,
        batch_size: int | None = None,
        center_perturbations: bool = True,
        jitter: Real[ArrayLike, ""] = 1e-10,
    ):
        if not isinstance(flow, ConditionalFlow) or not isinstance(flow.layers[0], EnKFNormaliser):
            raise TypeError(
                "flow must be a ConditionalFlow whose first layer is an EnKFNormaliser: build "
                "it with conditional_flow(key, N_x, N_y, normaliser=True)."
            )
        if optimiser is None:
            optimiser = optax.adam(3e-3)
        if not (hasattr(optimiser, "init") and hasattr(optimiser, "update")):
            raise TypeError(
                "optimiser must be an optax GradientTransformation (e.g. optax.adam(3e-3)); "
                f"got {type(optimiser).__name__}."
            )
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be None (full batch) or a Python int >= 1; got {batch_size!r}."
            )
        for name, value, low in (("n_steps", n_steps, 0), ("n_noise_copies", n_noise_copies, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be a Python int >= {low}; got {value!r}.")
        self.flow = flow
        self.optimiser = optimiser
        self.n_steps = n_steps
        self.n_noise_copies = n_noise_copies
        self.batch_size = batch_size
        self.center_perturbations = bool(center_perturbations)
        self.jitter = jnp.asarray(jitter)

    def init(
        self, key: PRNGKeyArray, initial: Real[ArrayLike, "N_e N_x"], model: fxp.AbstractModel
    ) -> FlowFilterState:
        """Check the initial ensemble; start from `flow` and a fresh optimiser state."""
        del key, model
        fxp.check_ensemble(initial, "the initial ensemble (ensemble0)")
        ensemble = jnp.asarray(initial)
        normaliser = self.flow.layers[0]
        n_x = normaliser.mean_x.shape[0]
        if ensemble.shape[1] != n_x:
            raise ValueError(
                f"the flow acts on N_x={n_x} components but the ensemble has "
                f"N_x={ensemble.shape[1]}: build the flow with conditional_flow(key, "
                f"{ensemble.shape[1]}, N_y, normaliser=True)."
            )
        flow = jax.tree_util.tree_map(
            lambda a: a.astype(ensemble.dtype) if eqx.is_inexact_array(a) else a, self.flow
        )
        params = eqx.filter(flow, trainable_spec(flow))
        return FlowFilterState(
            ensemble, eqx.filter(flow, eqx.is_array), self.optimiser.init(params)
        )

    def flow_of(self, state: FlowFilterState) -> ConditionalFlow:
        """The `ConditionalFlow` a state holds (its arrays with this filter's architecture)."""
        return eqx.combine(state.flow_params, eqx.filter(self.flow, eqx.is_array, inverse=True))

    def step(
        self,
        key: PRNGKeyArray,
        state: FlowFilterState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[FlowFilterState, fxp.CycleInfo]:
        """Forecast, simulate pairs, fit, transport (see the class docstring)."""
        k_fc, k_pert, k_fit = jax.random.split(key, 3)
        forecast, observed = forecast_and_observe(k_fc, state.particles, model, t_prev, t)
        dtype = state.particles.dtype
        obs = jnp.asarray(obs).astype(dtype)
        n_e, n_y = observed.shape
        normaliser0 = self.flow.layers[0]
        if obs.shape != (n_y,) or normaliser0.mean_y.shape[0] != n_y:
            raise ValueError(
                f"obs_op maps a member to {n_y} entries, the observation has shape {obs.shape} "
                f"and the flow conditions on N_y={normaliser0.mean_y.shape[0]}; they must agree "
                "(build the flow with conditional_flow(key, N_x, N_y, normaliser=True))."
            )
        mask = fxp.observation_mask(obs)
        zero = jnp.zeros((), dtype)
        y_star = jnp.where(mask, obs, zero)
        h0 = jnp.where(mask[None, :], observed, zero)
        noise = fxp.as_noise_operator(model.obs_noise, n_y, dtype=dtype)
        r_masked = fxp.mask_noise(noise, mask)
        m = self.n_noise_copies
        eps = fxp.perturbed_observations(
            k_pert, jnp.zeros((n_y,), dtype), noise, n_e * m, center=self.center_perturbations
        )
        y_pairs = jnp.tile(h0, (m, 1)) + jnp.where(mask[None, :], eps, zero)
        x_pairs = jnp.tile(forecast, (m, 1))

        normaliser = enkf_normaliser(forecast, h0, r_masked, jitter=self.jitter)
        flow = eqx.tree_at(lambda f: f.layers[0], self.flow_of(state), normaliser)
        fit = fit_conditional_flow(
            flow,
            x_pairs,
            y_pairs,
            self.optimiser,
            self.n_steps,
            key=k_fit,
            batch_size=self.batch_size,
            opt_state=state.opt_state,
        )
        flow = fit.flow
        analysis, member_ok = transport_with_fallback(
            flow, forecast, y_pairs[:n_e], y_star, normaliser.gain
        )

        nan = jnp.full((), jnp.nan, dtype)
        losses = fit.losses
        diagnostics = FlowFilterDiagnostics(
            initial_loss=losses[0] if self.n_steps > 0 else nan,
            final_loss=losses[-1] if self.n_steps > 0 else nan,
            n_fallback=jnp.sum(~member_ok),
        )
        info = flow_cycle_info(model, forecast, observed, obs, analysis, diagnostics)
        state = FlowFilterState(analysis, eqx.filter(flow, eqx.is_array), fit.opt_state)
        return state, info
