r"""`LocalConditionalFlowFilter`: the conditional-flow filter, one small flow per patch.

The global `ConditionalFlowFilter` fits one flow ``p_θ(x | y)`` on the whole state: with
``N_x = 40`` and ``N_e = 100`` members that is hopeless, as the global EnKF is without
localisation. Domain localisation (Hunt, Kostelich & Szunyogh 2007; the local transport maps
of Spantini, Baptista & Marzouk 2022, §5) cuts the state into patches ``x_p`` (a few grid
points each, `filterax.primitives.create_patches`), gives each patch the observations
within a halo (`filterax.primitives.assign_obs_to_patches`) and does the analysis of each
patch on its own. Here each patch gets its own conditional flow ``T_p(z; y_p)``: ONE
architecture (a template flow) with SEPARATE parameters per patch, stacked along a leading
patch axis and fitted for all patches at once (`eqx.filter_vmap` of `fit_conditional_flow`)
inside the compiled cycle; the per-patch analyses are blended back into one state
(`filterax.primitives.blend_patches`).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree, Real

import filterax.primitives as fxp

from ._enkf_normaliser import EnKFNormaliser, enkf_normaliser
from ._fit_flow import fit_conditional_flow, trainable_spec
from ._flow_filter import flow_cycle_info, forecast_and_observe, transport_with_fallback
from ._flows import ConditionalFlow

__all__ = ["LocalConditionalFlowFilter", "LocalFlowFilterDiagnostics", "LocalFlowFilterState"]

_BLENDS = ("cosine", "linear", "uniform")


class LocalFlowFilterState(eqx.Module):
    """The state of a `LocalConditionalFlowFilter` between cycles.

    **Fields:** `particles` (the ``(N_e, N_x)`` analysis ensemble), `flow_params` (the array
    leaves of the per-patch flows, each with a leading ``n_patches`` axis: the next cycle's
    fit starts from them; `LocalConditionalFlowFilter.flow_of` rebuilds patch ``p``'s flow)
    and `opt_state` (the per-patch optimiser states, stacked the same way). Only arrays: the
    State is the driver's `lax.scan` carry.
    """

    particles: Float[Array, "N_e N_x"]
    flow_params: PyTree
    opt_state: PyTree


class LocalFlowFilterDiagnostics(eqx.Module):
    """Per-cycle diagnostics of a `LocalConditionalFlowFilter`.

    **Fields:** `initial_loss`, `final_loss` (the per-patch mean NLL of the pairs before the
    first and the last optimiser step, averaged over patches; NaN with ``n_steps = 0``),
    `n_fallback` (the (patch, member) pairs whose flow analysis was not finite and that took
    the local EnKF analysis instead) and `n_local_obs` (``(n_patches,)`` the observations
    each patch used this cycle).
    """

    initial_loss: Real[Array, ""]
    final_loss: Real[Array, ""]
    n_fallback: Int[Array, ""]
    n_local_obs: Int[Array, " n_patches"]


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be a Python int >= {low}; got {value!r}.")


class LocalConditionalFlowFilter(fxp.AbstractCycledMethod):
    r"""Domain-localised conditional-flow filter: one warm-started flow per patch.

    Each cycle forecasts the ensemble, draws ``ŷ_{ij} = h(x̂_i) + ε_{ij}`` once for the whole
    observation vector (as `ConditionalFlowFilter`), then for every patch ``p`` (its ``L``
    state indices, its ``n_p ≤`` `max_obs` observations within `halo` of the patch, padded
    entries and NaN observations treated as missing) independently:

    1. the local closed-form EnKF normaliser (first layer of ``T_p``, `enkf_normaliser`)

       $$z_0 = C_p^{-1}\big((x_p - μ_{x_p}) - K_p (y_p - μ_{h_p})\big),\qquad
       K_p = C^{x_p h_p}\big(C^{h_p h_p} + R_p\big)^{-1};$$

    2. ``n_steps`` optax steps of maximum likelihood on the local pairs ``(x̂_{i,p},
       ŷ_{ij,p})`` for the learned layers of ``T_p``, warm-started from the previous cycle's
       parameters and optimiser state of that patch (all patches in one
       `eqx.filter_vmap`-ed `fit_conditional_flow`);
    3. the local analysis ``x^a_{i,p} = T_p\big(T_p^{-1}(x̂_{i,p};\ ŷ_{i1,p});\ y^*_p\big)``;

    and the patches are blended, ``x^a_i = Σ_{p ∋ k} W_p(k) x^a_{i,p}(k)``
    (`filterax.primitives.blend_patches`, partition-of-unity weights `blend`), then the
    analysis anomalies are multiplied by `inflation` (DAPPER's ``infl``).

    With the learned layers at the identity (``n_steps = 0``) step 3 is ``x̂_{i,p} +
    K_p(y^*_p - ŷ_{i1,p})``: the domain-localised perturbed-observation EnKF (each patch sees
    only its own observations, the same perturbation of an observation in every patch). With
    a halo covering every observation and one grid point per patch it is the global
    stochastic EnKF, i.e. the untrained `ConditionalFlowFilter`, to round-off. A (patch,
    member) whose flow analysis is not finite takes that local EnKF analysis instead
    (`LocalFlowFilterDiagnostics.n_fallback`).

    With `taper_radius` ``c`` the local observation errors are inflated by distance
    (R-localisation, as `filterax.filters.LETKF`): ``R_p ← D_p^{-1/2} R_p D_p^{-1/2}``,
    ``D_p = diag(ρ(d_{pj}/c))`` with the Gaspari–Cohn ``ρ`` and ``d_{pj}`` the distance
    (``model.distance`` on ``model.state_coords`` / ``obs_coords``) from observation ``j`` to
    the nearest grid point of the patch; the perturbations of patch ``p`` are scaled alike,
    ``ε_{ij,p} = ε_{ij} / \sqrt{ρ}``. Without it (``None``, the default) every observation in
    the halo has its full weight.

    Geometry: patches and observation coordinates are in grid-index units
    (`assign_obs_to_patches`); the observation coordinates come from the model
    (``model.obs_coords``, as the `filterax.zoo` presets carry them) and the domain is
    periodic with period `period`, or ``model.distance.period`` when the model's distance is
    a `filterax.primitives.PeriodicDistance` and `period` is ``None``.

    **Arguments:**

    - `flow`: the template `ConditionalFlow` of ONE patch, ``layers[0]`` an `EnKFNormaliser`:
      ``conditional_flow(key, L, max_obs, normaliser=True)`` with ``L =
      patches.indices.shape[1]`` and ``max_obs`` the padded number of local observations
      (``assign_obs_to_patches(obs_coords, patches, halo=..., period=...)[0].shape[1]``, or
      more). Every patch starts from a copy of it.
    - `patches`: a `filterax.primitives.Patches` of the state grid (`create_patches`; patch
      size 1 = one flow per grid point).
    - `halo`: observations within this distance (grid points) of a patch are local.
    - `optimiser`: an optax `GradientTransformation` (static; default ``optax.adam(3e-3)``).
    - `n_steps`: optimiser steps per cycle and patch (static int ``>= 0``).
    - `n_noise_copies`: ``M``, noise draws per member (static int ``>= 1``).
    - `batch_size`: minibatch size of the fit (``None``: full batch).
    - `center_perturbations`: centre the ``N_e M`` perturbations (DAPPER's ``mean0``).
    - `jitter`: the relative ridge of `enkf_normaliser`.
    - `inflation`: multiplicative inflation of the analysis anomalies (``> 0``; default 1:
      none).
    - `taper_radius`: Gaspari–Cohn half-width ``c`` of the R-localisation, or ``None``.
    - `period`: the grid's period (grid points) or ``None`` (see above).
    - `blend`: ``"cosine"``, ``"linear"`` or ``"uniform"`` blending of overlapping patches.

    Keys: the cycle key splits into ``k_forecast, k_perturb, k_fit = jax.random.split(key,
    3)`` exactly as `ConditionalFlowFilter`; patch ``p``'s fit uses
    ``jax.random.split(k_fit, n_patches)[p]``.

    **Reference:** Spantini, Baptista & Marzouk (2022), "Coupling techniques for nonlinear
    ensemble filtering", *SIAM Review* 64(4) (local nonlinear transport maps on Lorenz-96);
    Hunt, Kostelich & Szunyogh (2007), *Physica D* 230 (domain localisation, R-localisation);
    the local stochastic EnKF it reduces to: Burgers, van Leeuwen & Evensen (1998) with
    domain localisation. DAPPER has no equivalent.

    !!! Example

        ```python
        import jax, optax
        import filterax.filters as ff
        import filterax.primitives as fxp
        from filterax.learn import LocalConditionalFlowFilter, conditional_flow
        from filterax.zoo import presets

        ssm = presets.lorenz96_spantini2019()
        patches = fxp.create_patches(40, patch_size=2)
        obs_idx, _ = fxp.assign_obs_to_patches(ssm.obs_coords, patches, halo=4.0,
                                               period=40.0)
        flow = conditional_flow(jax.random.key(1), 2, obs_idx.shape[1], n_layers=2,
                                width=16, depth=1, normaliser=True)
        method = LocalConditionalFlowFilter(flow, patches, halo=4.0, n_steps=10)
        xp = ssm.simulate(jax.random.key(0), 20)
        out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(2), 100),
                     xp.observations, xp.times, key=jax.random.key(3))
        ```
    """

    flow: ConditionalFlow
    patches: fxp.Patches
    halo: float = eqx.field(static=True)
    optimiser: optax.GradientTransformation = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)
    n_noise_copies: int = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True)
    center_perturbations: bool = eqx.field(static=True)
    taper_radius: float | None = eqx.field(static=True)
    period: float | None = eqx.field(static=True)
    blend: str = eqx.field(static=True)
    jitter: Real[Array, ""]
    inflation: Real[Array, ""]

    def __init__(
        self,
        flow: ConditionalFlow,
        patches: fxp.Patches,
        halo: float,
        optimiser: optax.GradientTransformation | None = None,
        n_steps: int = 20,
        *,
        n_noise_copies: int = 1,
        batch_size: int | None = None,
        center_perturbations: bool = True,
        jitter: Real[ArrayLike, ""] = 1e-10,
        inflation: Real[ArrayLike, ""] = 1.0,
        taper_radius: float | None = None,
        period: float | None = None,
        blend: str = "cosine",
    ):
        if not isinstance(flow, ConditionalFlow) or not isinstance(flow.layers[0], EnKFNormaliser):
            raise TypeError(
                "flow must be a ConditionalFlow whose first layer is an EnKFNormaliser: build "
                "the template of one patch with conditional_flow(key, L, max_obs, "
                "normaliser=True)."
            )
        if not isinstance(patches, fxp.Patches):
            raise TypeError(
                "patches must be a filterax.primitives.Patches: build them with "
                f"filterax.primitives.create_patches(N_x, patch_size); got "
                f"{type(patches).__name__}."
            )
        length = patches.indices.shape[1]
        n_x_flow = flow.layers[0].mean_x.shape[0]
        if n_x_flow != length:
            raise ValueError(
                f"the template flow acts on {n_x_flow} components but a patch has L={length} "
                f"(patch_size {patches.patch_size}): build it with conditional_flow(key, "
                f"{length}, max_obs, normaliser=True)."
            )
        if flow.layers[0].mean_y.shape[0] < 1:
            raise ValueError("the template flow must condition on max_obs >= 1 observations.")
        if optimiser is None:
            optimiser = optax.adam(3e-3)
        if not (hasattr(optimiser, "init") and hasattr(optimiser, "update")):
            raise TypeError(
                "optimiser must be an optax GradientTransformation (e.g. optax.adam(3e-3)); "
                f"got {type(optimiser).__name__}."
            )
        if batch_size is not None:
            _check_int("batch_size", batch_size, 1)
        _check_int("n_steps", n_steps, 0)
        _check_int("n_noise_copies", n_noise_copies, 1)
        if not (isinstance(halo, int | float) and halo >= 0):
            raise ValueError(f"halo must be a non-negative Python number; got {halo!r}.")
        if taper_radius is not None and not (
            isinstance(taper_radius, int | float) and taper_radius > 0
        ):
            raise ValueError(
                f"taper_radius must be None (no R-localisation) or a positive number; got "
                f"{taper_radius!r}."
            )
        if period is not None and not (isinstance(period, int | float) and period > 0):
            raise ValueError(f"period must be None or a positive number; got {period!r}.")
        if isinstance(inflation, int | float) and not inflation > 0:
            raise ValueError(
                f"inflation multiplies the analysis anomalies and must be > 0 (1 = none); got "
                f"{inflation!r}."
            )
        if blend not in _BLENDS:
            raise ValueError(f"blend must be one of {_BLENDS}; got {blend!r}.")
        self.flow = flow
        self.patches = patches
        self.halo = float(halo)
        self.optimiser = optimiser
        self.n_steps = n_steps
        self.n_noise_copies = n_noise_copies
        self.batch_size = batch_size
        self.center_perturbations = bool(center_perturbations)
        self.taper_radius = None if taper_radius is None else float(taper_radius)
        self.period = None if period is None else float(period)
        self.blend = blend
        self.jitter = jnp.asarray(jitter)
        self.inflation = jnp.asarray(inflation)

    @property
    def max_obs(self) -> int:
        """The padded number of local observations the template flow conditions on."""
        return int(self.flow.layers[0].mean_y.shape[0])

    def _check_grid(self, n_x: int) -> None:
        if self.patches.n_state != n_x:
            raise ValueError(
                f"the patches cover a grid of {self.patches.n_state} points "
                f"{self.patches.grid_shape} but the state has N_x={n_x}: build them with "
                f"create_patches({n_x}, patch_size)."
            )

    def init(
        self, key: PRNGKeyArray, initial: Real[ArrayLike, "N_e N_x"], model: fxp.AbstractModel
    ) -> LocalFlowFilterState:
        """Check the initial ensemble; every patch starts from `flow`, fresh optimiser."""
        del key, model
        fxp.check_ensemble(initial, "the initial ensemble (ensemble0)")
        ensemble = jnp.asarray(initial)
        self._check_grid(ensemble.shape[1])
        flow = jax.tree_util.tree_map(
            lambda a: a.astype(ensemble.dtype) if eqx.is_inexact_array(a) else a, self.flow
        )
        n_patches = self.patches.n_patches
        params = eqx.filter(flow, eqx.is_array)
        opt_state = self.optimiser.init(eqx.filter(flow, trainable_spec(flow)))
        stack = lambda a: jnp.broadcast_to(a, (n_patches, *jnp.shape(a)))  # noqa: E731
        return LocalFlowFilterState(
            ensemble,
            jax.tree_util.tree_map(stack, params),
            jax.tree_util.tree_map(lambda a: stack(a) if eqx.is_array(a) else a, opt_state),
        )

    def flow_of(self, state: LocalFlowFilterState, patch: int) -> ConditionalFlow:
        """The `ConditionalFlow` of patch `patch` in a state (its normaliser is the last
        cycle's)."""
        params = jax.tree_util.tree_map(lambda a: a[patch], state.flow_params)
        return eqx.combine(params, eqx.filter(self.flow, eqx.is_array, inverse=True))

    def _period(self, model: fxp.AbstractModel) -> float | None:
        if self.period is not None:
            return self.period
        distance = getattr(model, "distance", None)
        if isinstance(distance, fxp.PeriodicDistance):
            return distance.period
        return None

    def _local_obs(
        self, model: fxp.AbstractModel, n_y: int, dtype: Any
    ) -> tuple[Array, Array, Array]:
        """Per-patch observation indices, membership mask and R-localisation weights ``ρ``."""
        obs_coords = getattr(model, "obs_coords", None)
        if obs_coords is None:
            raise ValueError(
                "LocalConditionalFlowFilter needs the observation coordinates: give the model "
                "obs_coords (N_y, D) in grid-index units (filterax.zoo presets carry them; "
                "StateSpaceModel(..., **presets.grid_geometry(N_x, obs_op)))."
            )
        coords = jnp.asarray(obs_coords)
        coords2 = coords[:, None] if coords.ndim == 1 else coords
        if coords2.shape[0] != n_y:
            raise ValueError(
                f"model.obs_coords has {coords2.shape[0]} rows but obs_op gives N_y={n_y} "
                "entries: one coordinate row per observation."
            )
        obs_idx, in_halo = fxp.assign_obs_to_patches(
            coords2,
            self.patches,
            halo=self.halo,
            max_obs=self.max_obs,
            period=self._period(model),
        )
        if self.taper_radius is None:
            return obs_idx, in_halo, jnp.ones(obs_idx.shape, dtype)
        state_coords = getattr(model, "state_coords", None)
        if state_coords is None:
            raise ValueError(
                "taper_radius needs the state coordinates too: give the model state_coords "
                "(N_x, D) (or pass taper_radius=None)."
            )
        distance = getattr(model, "distance", None)
        distance = fxp.euclidean if distance is None else distance
        sc = jnp.asarray(state_coords)
        sc = sc[:, None] if sc.ndim == 1 else sc
        dist = fxp.pairwise_distances(sc, coords2, distance).astype(dtype)  # (N_x, N_y)
        # distance from observation j to the nearest real grid point of patch p
        far = jnp.asarray(jnp.inf, dtype)
        per_patch = jnp.where(
            self.patches.mask[:, :, None], dist[self.patches.indices], far
        )  # (P, L, N_y)
        nearest = jnp.min(per_patch, axis=1)  # (P, N_y)
        rho = fxp.gaspari_cohn(jnp.take_along_axis(nearest, obs_idx, axis=1), self.taper_radius)
        return obs_idx, in_halo & (rho > 0), jnp.where(rho > 0, rho, 1.0).astype(dtype)

    def step(
        self,
        key: PRNGKeyArray,
        state: LocalFlowFilterState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[LocalFlowFilterState, fxp.CycleInfo]:
        """Forecast, simulate pairs, fit every patch's flow, transport, blend."""
        k_fc, k_pert, k_fit = jax.random.split(key, 3)
        forecast, observed = forecast_and_observe(k_fc, state.particles, model, t_prev, t)
        dtype = state.particles.dtype
        n_e, n_x = forecast.shape
        self._check_grid(n_x)
        obs = jnp.asarray(obs).astype(dtype)
        n_y = observed.shape[1]
        if obs.shape != (n_y,):
            raise ValueError(
                f"obs_op maps a member to {n_y} entries but the observation has shape "
                f"{obs.shape}; they must agree."
            )
        obs_idx, in_halo, rho = self._local_obs(model, n_y, dtype)
        mask = fxp.observation_mask(obs)
        zero = jnp.zeros((), dtype)
        noise = fxp.as_noise_operator(model.obs_noise, n_y, dtype=dtype)
        r_full = noise.as_matrix().astype(dtype)
        m = self.n_noise_copies
        eps = fxp.perturbed_observations(
            k_pert, jnp.zeros((n_y,), dtype), noise, n_e * m, center=self.center_perturbations
        )
        y_star_all = jnp.where(mask, obs, zero)
        static = eqx.filter(self.flow, eqx.is_array, inverse=True)
        fit_keys = jax.random.split(k_fit, self.patches.n_patches)

        def patch_analysis(params, opt_state, idx, smask, oidx, ohalo, orho, fit_key):
            valid = ohalo & mask[oidx]
            x_p = jnp.where(smask[None, :], forecast[:, idx], zero)  # padding: constant 0
            h_p = jnp.where(valid[None, :], observed[:, oidx], zero)
            scale = jnp.sqrt(orho)
            eps_p = jnp.where(valid[None, :], eps[:, oidx] / scale[None, :], zero)
            y_pairs = jnp.tile(h_p, (m, 1)) + eps_p
            x_pairs = jnp.tile(x_p, (m, 1))
            y_star = jnp.where(valid, y_star_all[oidx], zero)
            r_p = r_full[oidx][:, oidx] / (scale[:, None] * scale[None, :])
            r_p = fxp.mask_noise(fxp.as_noise_operator(r_p, oidx.shape[0]), valid)
            normaliser = enkf_normaliser(x_p, h_p, r_p, jitter=self.jitter)
            flow = eqx.tree_at(lambda f: f.layers[0], eqx.combine(params, static), normaliser)
            if self.n_steps > 0:
                fit = fit_conditional_flow(
                    flow,
                    x_pairs,
                    y_pairs,
                    self.optimiser,
                    self.n_steps,
                    key=fit_key,
                    batch_size=self.batch_size,
                    opt_state=opt_state,
                )
                flow, opt_state = fit.flow, fit.opt_state
                losses = jnp.stack([fit.losses[0], fit.losses[-1]])
            else:  # nothing to fit (and nothing to compile): the flow as it is
                losses = jnp.full((2,), jnp.nan, dtype)
            xa, ok = transport_with_fallback(
                flow, x_p, y_pairs[:n_e], y_star, normaliser.gain, columns=smask
            )
            return (
                xa,
                eqx.filter(flow, eqx.is_array),
                opt_state,
                losses,
                jnp.sum(~ok),
                jnp.sum(valid),
            )

        local, params, opt_state, losses, n_bad, n_local = eqx.filter_vmap(patch_analysis)(
            state.flow_params,
            state.opt_state,
            self.patches.indices,
            self.patches.mask,
            obs_idx,
            in_halo,
            rho,
            fit_keys,
        )
        analysis = fxp.blend_patches(local, self.patches, n_x, weights=self.blend)
        mean_a = jnp.mean(analysis, axis=0)
        infl = self.inflation.astype(dtype)
        analysis = mean_a[None, :] + infl * (analysis - mean_a[None, :])

        diagnostics = LocalFlowFilterDiagnostics(
            initial_loss=jnp.mean(losses[:, 0]),
            final_loss=jnp.mean(losses[:, 1]),
            n_fallback=jnp.sum(n_bad),
            n_local_obs=n_local,
        )
        info = flow_cycle_info(model, forecast, observed, obs, analysis, diagnostics)
        return LocalFlowFilterState(analysis, params, opt_state), info
