r"""Hybrid ensemble-variational assimilation (3D- and 4D-EnVar) in control-variable form.

The background-error covariance is the hybrid of a static (climatological) ``B_c`` and the
localised ensemble covariance,

$$B = \beta_c B_c + \beta_e\,(L \circ P_e),\qquad P_e = \frac{1}{N_e - 1}\sum_i x'_i x'^\top_i,$$

never formed: the increment is written in control variables ``v = (v_c, v_1, ..., v_{N_e})``
(Lorenc 2003; Buehner 2005; the "alpha control variable" of Wang et al. 2007),

$$\delta x = U v = \sqrt{\beta_c}\,B_c^{1/2} v_c + \sqrt{\frac{\beta_e}{N_e - 1}}\,
\sum_{i=1}^{N_e} x'_i \circ \alpha_i,\qquad \alpha_i = L^{1/2} v_i,$$

so that ``U U^T = B`` (the Schur product theorem gives ``\mathrm{Cov}(\sum_i x'_i \circ
\alpha_i) = (N_e - 1)\,L \circ P_e``). The analysis minimises the preconditioned cost

$$J(v) = \tfrac12\lVert v\rVert^2 + \tfrac12\sum_{j}\lVert d_j - H_j U_j v
\rVert^2_{R^{-1}},$$

whose normal equations ``(I + U^T H^T R^{-1} H U) v = U^T H^T R^{-1} d`` are symmetric positive
definite with all eigenvalues ``>= 1`` (at most ``N_y`` of them ``> 1``): conjugate gradients
(`lineax.CG`) converge in at most ``N_y + 1`` iterations, without ``B^{-1}``.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

import filterax.primitives as fxp

from ._variational import _solve

__all__ = ["EnVar", "EnVarDiagnostics", "EnVarState"]

_HIGHEST = jax.lax.Precision.HIGHEST
_LOG_2PI = math.log(2.0 * math.pi)


class EnVarState(eqx.Module):
    """The state of an `EnVar` between cycles.

    **Fields:**

    - `ensemble`: ``(N_e, N_x)`` the latest ensemble: the re-centred analysis ensemble after
      a window's last cycle, else the forecast ensemble of the cycle just done.
    - `trajectory`: ``(lag, N_e, N_x)`` the forecast ensembles of the current window's cycles
      so far (the 4D ensemble perturbations).
    - `observations`: ``(lag, N_y)`` the window's observations so far.
    - `position`: how many cycles of the current window are done.
    - `static_root`: ``B_c^{1/2}`` as a lineax operator (from `filterax.primitives.noise_sqrt`:
      square roots of a diagonal, the Cholesky factor of a dense matrix).
    - `localization_root`: ``(N_x, r)`` ``L^{1/2}`` (``r = 1``, a column of ones, without
      localisation).
    """

    ensemble: Any
    trajectory: Any
    observations: Any
    position: Any
    static_root: Any
    localization_root: Any


class EnVarDiagnostics(eqx.Module):
    """Per-cycle diagnostics of `EnVar` (stacked by `filterax.filters.run`).

    **Fields:**

    - `analysed`: whether this cycle closed a window (and so ran the variational analysis).
    - `cg_converged`: whether the conjugate-gradient solve of that analysis converged
      (``True`` for cycles inside a window).
    """

    analysed: Any
    cg_converged: Any


def _concrete(value: Any) -> np.ndarray | None:
    if isinstance(value, lx.AbstractLinearOperator):
        try:
            return fxp.concrete_value(value.as_matrix())
        except Exception:  # an operator without a concrete matrix: checked at run time
            return None
    return fxp.concrete_value(value)


def _check_beta(value: Any, name: str) -> float | None:
    arr = fxp.concrete_value(value)
    if arr is None:
        return None
    if arr.ndim != 0:
        raise ValueError(f"EnVar: {name} must be a scalar weight; got shape {arr.shape}.")
    if not np.isfinite(arr) or arr < 0:
        raise ValueError(
            f"EnVar: {name} must be a finite number >= 0 (the weight of its part of the hybrid "
            f"B = beta_c B_c + beta_e (L o P_e)); got {arr.item()}."
        )
    return float(arr)


def _check_static_cov(cov: Any) -> None:
    """Refuse a concrete ``B_c`` that is not finite, symmetric and positive definite."""
    arr = _concrete(cov)
    if arr is None:
        return
    arr = np.asarray(arr, dtype=np.float64)
    hint = (
        "Pass the climatological covariance (e.g. StateSpaceModel.climatology(key)[1]) as an "
        "(N_x, N_x) positive-definite matrix, a vector of positive variances, a positive "
        "scalar or a lineax operator."
    )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"EnVar: static_cov has a non-finite entry. {hint}")
    if arr.ndim > 2:
        raise ValueError(
            f"EnVar: static_cov must have at most 2 dimensions; got {arr.shape}. {hint}"
        )
    if arr.ndim <= 1:
        if np.any(arr <= 0):
            raise ValueError(
                f"EnVar: static_cov has a variance <= 0 (min {arr.min()}): B_c would be "
                f"singular. {hint}"
            )
        return
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"EnVar: static_cov must be square; got shape {arr.shape}. {hint}")
    if not np.allclose(arr, arr.T, rtol=1e-6, atol=1e-12 * np.abs(arr).max()):
        raise ValueError(f"EnVar: static_cov must be symmetric. {hint}")
    eig = np.linalg.eigvalsh(0.5 * (arr + arr.T))
    # A Cholesky factor exists in working precision only if lambda_min is clearly above the
    # round-off of lambda_max (float32 is the coarser of the two dtypes used).
    if not eig[0] > 10 * arr.shape[0] * np.finfo(np.float32).eps * max(eig[-1], 0.0):
        raise ValueError(
            f"EnVar: static_cov is singular or indefinite (eigenvalues from {eig[0]:.3g} to "
            f"{eig[-1]:.3g}). A climatological B_c estimated from fewer than N_x + 1 states is "
            f"singular: use a longer free run, or add a small diagonal. {hint}"
        )


class _WindowObs(eqx.Module):
    """The observation operator of a window's stacked trajectory ``(lag N_x,) -> (lag N_y,)``."""

    obs_op: Any
    lag: int = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        states = jnp.reshape(x, (self.lag, -1))
        return jnp.reshape(jax.vmap(lambda s: fxp.apply_obs(self.obs_op, s))(states), (-1,))


def _window_noise(noise: lx.AbstractLinearOperator, lag: int) -> lx.AbstractLinearOperator:
    # Observation errors at different times are independent: R_window = blockdiag(R, ..., R).
    if lx.is_diagonal(noise):
        return lx.DiagonalLinearOperator(jnp.tile(lx.diagonal(noise), lag))
    return lx.MatrixLinearOperator(jsl.block_diag(*([noise.as_matrix()] * lag)))


class EnVar(fxp.AbstractCycledMethod):
    r"""Hybrid 3D/4D ensemble-variational assimilation (EnVar) with a cycled ensemble.

    **The variational analysis.** At the end of every window of `lag` observation cycles,
    with ``\bar x_j`` and ``x'_{i,j}`` the mean and anomalies of the forecast ensemble at the
    window's observation time ``t_j`` (the ensemble trajectories through the window),
    ``d_j = y_j - \mathcal H(\bar x_j)`` and ``H_j`` the Jacobian of the observation operator
    at ``\bar x_j`` (`jax.linearize`), the increment ``\delta x_j = U_j v`` with

    $$U_j v = \sqrt{\beta_c}\,B_c^{1/2} v_c + \sqrt{\tfrac{\beta_e}{N_e - 1}}
    \sum_{i=1}^{N_e} x'_{i,j}\circ (L^{1/2} v_i)$$

    minimises ``J(v) = \tfrac12\lVert v\rVert^2 + \tfrac12\sum_j\lVert d_j - H_j U_j v
    \rVert^2_{R^{-1}}`` (normal equations solved by `lineax.CG`; see the module docstring),
    and the analysis at the window's end is

    $$x^a = \bar x_{\text{end}} + U_{\text{end}}\,v^\star .$$

    ``lag=1`` is 3D-EnVar (``B = \beta_c B_c + \beta_e L\circ P_e`` at the observation time);
    ``lag >= 2`` is 4D-EnVar (Liu et al. 2008; Buehner et al. 2010): the flow-dependent part
    is carried through the window by the ensemble trajectories themselves, with no tangent
    linear or adjoint model; the static part is not propagated (as in operational hybrid
    4DEnVar, Lorenc et al. 2015). With ``\beta_c = 0``, no localisation and a linear
    observation operator the analysis is the (4D) ensemble Kalman mean update; with
    ``\beta_e = 0`` it is 3D-Var with ``B = \beta_c B_c``.

    **The cycled ensemble.** Each cycle forecasts the ensemble; at a window's end the
    ensemble is analysed by `kernel` (any `filterax.primitives.AbstractSequentialFilter`,
    called as ``kernel.analysis(key, forecast, obs, obs_op, obs_noise)``; for ``lag >= 2``
    on the window's stacked trajectory ``(N_e, lag N_x)`` with the stacked observations and
    a block-diagonal ``R``, i.e. the 4D-EnKF of Hunt et al. 2004), inflated by `inflator`,
    optionally rotated, and re-centred on the hybrid analysis,
    ``x_i \leftarrow x_i - \bar x + x^a`` (operational practice: Wang et al. 2013; Clayton
    et al. 2013). The background of the variational analysis is the forecast ensemble's
    mean, i.e. the forecast of the last hybrid analysis through the ensemble (equal to a
    separate control forecast for a linear model).

    **Reported rows.** A cycle inside a window reports the forecast as its analysis and a
    log-likelihood of 0; the window's last cycle reports the hybrid analysis and the
    log-likelihood of the whole window, ``\log\mathcal N(d; 0, H B H^\top + R)`` (so the
    sum over a run is its log evidence). A trailing incomplete window is not analysed.
    The forecast spread is the ensemble's; the analysis spread is the re-centred
    ensemble's.

    **Arguments:**

    - `kernel`: the ensemble analysis (e.g. ``filterax.filters.ETKF()``).
    - `static_cov`: ``B_c`` (an ``(N_x, N_x)`` positive-definite matrix, positive variances,
      a positive scalar or a lineax operator), e.g. from
      `filterax.zoo.StateSpaceModel.climatology`.
    - `beta_c`, `beta_e`: the hybrid weights, ``>= 0`` and not both zero (dynamic: sweep
      them with `vmap`, differentiate them).
    - `localization_radius`: the half-width of `taper` (for `gaspari_cohn` ``c = 1.82``
      DAPPER's ``loc_rad``), or ``None`` for no localisation. Needs the model's
      ``state_coords`` (and ``distance``, Euclidean by default).
    - `taper`: ``taper(d, radius)`` (default `filterax.primitives.gaspari_cohn`, static).
    - `lag`: window length in observation cycles, ``>= 1`` (static; 1 = 3D-EnVar).
    - `inflator`: ``None`` or a stateless `filterax.primitives.AbstractInflator` (e.g.
      ``MultiplicativeInflator(1.04)``) applied to the kernel's analysis ensemble.
    - `rotate`: DAPPER's random mean-preserving rotation of that ensemble (static).
    - `rtol`, `atol`, `max_steps`: the CG tolerances and iteration cap (static; the CG is the
      shared control-variable solver of `variational_increment`, whose default cap is
      ``N_v + 10`` with ``N_v`` the control size). An unconverged solve makes the cycle
      non-finite (status 1 of the driver).

    **References:** A. C. Lorenc (2003), "The potential of the ensemble Kalman filter for NWP —
    a comparison with 4D-Var", QJRMS 129, 3183-3203; M. Buehner (2005), "Ensemble-derived
    stationary and flow-dependent background-error covariances: evaluation in a
    quasi-operational NWP setting", QJRMS 131, 1013-1043; X. Wang, C. Snyder & T. M. Hamill
    (2007), "On the theoretical equivalence of differently proposed ensemble-3DVAR hybrid
    analysis schemes", MWR 135, 222-227; C. Liu, Q. Xiao & B. Wang (2008), "An
    ensemble-based four-dimensional variational data assimilation scheme. Part I", MWR 136,
    3363-3373; M. Buehner, P. L. Houtekamer, C. Charette, H. L. Mitchell & B. He (2010),
    "Intercomparison of variational data assimilation and the ensemble Kalman filter for
    global deterministic NWP. Part I", MWR 138, 1550-1566; A. C. Lorenc, N. E. Bowler, A. M.
    Clayton, S. R. Pring & D. Fairbairn (2015), "Comparison of hybrid-4DEnVar and
    hybrid-4DVar data assimilation methods for global NWP", MWR 143, 212-229; B. R. Hunt et
    al. (2004), "Four-dimensional ensemble Kalman filtering", Tellus A 56, 273-277;
    X. Wang, D. Parrish, D. Kleist & J. Whitaker (2013), "GSI 3DVar-based ensemble-variational
    hybrid data assimilation for NCEP Global Forecast System", MWR 141, 4098-4117;
    A. M. Clayton, A. C. Lorenc & D. M. Barker (2013), "Operational implementation of a hybrid
    ensemble/4D-Var global data assimilation system at the Met Office", QJRMS 139, 1445-1461;
    M. Asch, M. Bocquet & M. Nodet (2016), *Data Assimilation: Methods, Algorithms, and
    Applications*, SIAM, ch. 7 (hybrid methods). DAPPER has no EnVar.

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    import filterax.primitives as fxp
    from filterax.zoo import EnVar, presets

    ssm = presets.lorenz96_sakov2008()
    _, B_c = ssm.climatology(jax.random.key(99))
    xp = ssm.simulate(jax.random.key(0), 1000)
    method = EnVar(ff.ETKF(), B_c, beta_c=0.1, beta_e=1.0,
                   inflator=fxp.MultiplicativeInflator(1.04))
    out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(1), 20),
                 xp.observations, xp.times, key=jax.random.key(2))
    out.scores(xp.truth, ssm.burn_in_cycles)["rmse_a"]
    ```
    """

    kernel: fxp.AbstractSequentialFilter
    static_cov: Any
    beta_c: Any = 1.0
    beta_e: Any = 1.0
    localization_radius: Any = None
    taper: Any = eqx.field(default=fxp.gaspari_cohn, static=True)
    lag: int = eqx.field(default=1, static=True)
    inflator: Any = None
    rotate: bool = eqx.field(default=False, static=True)
    rtol: float = eqx.field(default=1e-6, static=True)
    atol: float = eqx.field(default=1e-6, static=True)
    max_steps: int | None = eqx.field(default=None, static=True)

    def __check_init__(self) -> None:
        if not callable(getattr(self.kernel, "analysis", None)):
            raise TypeError(
                "EnVar: kernel must be an ensemble analysis kernel with analysis(key, forecast, "
                "obs, obs_op, obs_noise) (an AbstractSequentialFilter, e.g. "
                f"filterax.filters.ETKF()); got {type(self.kernel).__name__}."
            )
        if isinstance(self.lag, bool) or not isinstance(self.lag, int) or self.lag < 1:
            raise ValueError(
                f"EnVar: lag must be a Python int >= 1 (1 = 3D-EnVar, >= 2 = 4D-EnVar over "
                f"that many observation cycles); got {self.lag!r}."
            )
        beta_c = _check_beta(self.beta_c, "beta_c")
        beta_e = _check_beta(self.beta_e, "beta_e")
        if beta_c == 0.0 and beta_e == 0.0:
            raise ValueError(
                "EnVar: beta_c = beta_e = 0 gives B = 0 (no analysis at all). Give the static "
                "part (beta_c > 0: beta_e = 0 is 3D-Var) or the ensemble part (beta_e > 0) "
                "a positive weight."
            )
        if self.static_cov is None:
            raise TypeError(
                "EnVar: static_cov (B_c) is required; for a pure ensemble B pass any positive "
                "definite B_c (e.g. 1.0) with beta_c=0."
            )
        _check_static_cov(self.static_cov)
        if self.localization_radius is not None:
            radius = fxp.concrete_value(self.localization_radius)
            if radius is not None and not (radius.ndim == 0 and radius > 0):
                raise ValueError(
                    "EnVar: localization_radius must be a scalar > 0 (the taper half-width; "
                    "inf or None = no localisation); got "
                    f"{self.localization_radius!r}."
                )
        if self.inflator is not None and (
            not isinstance(self.inflator, fxp.AbstractInflator)
            or isinstance(self.inflator, fxp.AdaptiveInflator)
        ):
            raise TypeError(
                "EnVar: inflator must be None or a stateless AbstractInflator "
                "(MultiplicativeInflator, RTPS, RTPP, AdditiveInflator); got "
                f"{type(self.inflator).__name__}."
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"EnVar: {name} must be a Python float >= 0; got {value!r}.")
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool)
            or not isinstance(self.max_steps, int)
            or self.max_steps < 1
        ):
            raise ValueError(
                f"EnVar: max_steps must be None or a Python int >= 1; got {self.max_steps!r}."
            )

    # --- cycled-method protocol ----------------------------------------------------------

    def init(
        self, key: PRNGKeyArray, initial: Real[ArrayLike, "..."], model: fxp.AbstractModel
    ) -> EnVarState:
        """Check the initial ensemble; build ``B_c^{1/2}`` and ``L^{1/2}``; empty window."""
        del key
        ensemble = jnp.asarray(initial)
        if ensemble.ndim != 2 or ensemble.shape[0] < 2:
            raise ValueError(
                "EnVar: the initial ensemble must be a 2-D array (N_e, N_x) with N_e >= 2 "
                f"members on the first axis; got shape {ensemble.shape}. Draw one with "
                "ssm.initial_ensemble(key, N_e)."
            )
        if not jnp.issubdtype(ensemble.dtype, jnp.floating):
            raise TypeError(
                f"EnVar: the initial ensemble must be floating point; got {ensemble.dtype}."
            )
        n_e, n_x = ensemble.shape
        dtype = ensemble.dtype
        try:
            cov = fxp.as_noise_operator(self.static_cov, n_x, dtype=dtype)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"EnVar: static_cov must be an (N_x, N_x) = ({n_x}, {n_x}) covariance (matrix, "
                f"variances, scalar or lineax operator): {err}"
            ) from None
        static_root = fxp.noise_sqrt(cov)
        predicted = jax.eval_shape(lambda x: fxp.apply_obs(model.obs_op, x), ensemble[0])
        if len(predicted.shape) != 1:
            raise ValueError(
                f"EnVar: obs_op(x) must return a 1-D observation vector; got {predicted.shape}."
            )
        n_y = predicted.shape[0]
        return EnVarState(
            ensemble=ensemble,
            trajectory=jnp.zeros((self.lag, n_e, n_x), dtype),
            observations=jnp.zeros((self.lag, n_y), dtype),
            position=jnp.asarray(0, jnp.int32),
            static_root=static_root,
            localization_root=self._localization_root(model, n_x, dtype),
        )

    def _localization_root(self, model: fxp.AbstractModel, n_x: int, dtype: Any) -> Array:
        if self.localization_radius is None:
            return jnp.ones((n_x, 1), dtype)
        coords = model.state_coords
        if coords is None:
            raise ValueError(
                "EnVar localises the ensemble covariance (localization_radius is set), so the "
                "model needs state_coords (N_x, D) (and a distance; the zoo presets carry "
                "them). Give the model its geometry or pass localization_radius=None."
            )
        coords = jnp.asarray(coords)
        if coords.shape[0] != n_x:
            raise ValueError(
                f"EnVar: model.state_coords has {coords.shape[0]} rows for N_x = {n_x} state "
                "components."
            )
        distance = model.distance if model.distance is not None else fxp.euclidean
        radius = jnp.asarray(self.localization_radius, dtype)
        taper = fxp.localization_matrix(coords, coords, radius, self.taper, distance).astype(dtype)
        taper = 0.5 * (taper + taper.T)
        # L^{1/2} = V diag(sqrt(lambda))  (L L^T-factor, r = N_x columns); a taper that is not
        # exactly positive definite on the grid (periodic distances) has its tiny negative
        # eigenvalues clipped.
        lam, vecs = jnp.linalg.eigh(taper)
        return vecs * jnp.sqrt(jnp.maximum(lam, 0.0))[None, :]

    def step(
        self,
        key: PRNGKeyArray,
        state: EnVarState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[EnVarState, fxp.CycleInfo]:
        """Forecast the ensemble; at a window's end, the hybrid analysis, the kernel's
        ensemble analysis and the re-centring (see the class docstring)."""
        k_fc, k_an, k_infl, k_rot = jax.random.split(key, 4)
        ensemble = state.ensemble
        dtype = ensemble.dtype
        forecast = fxp.forecast_ensemble(model, k_fc, ensemble, t_prev, t)
        if forecast.shape != ensemble.shape:
            raise ValueError(
                f"EnVar: dynamics(x, t0, t1) must return a state of shape {ensemble.shape[1:]}; "
                f"it returned {forecast.shape[1:]}."
            )
        forecast = forecast.astype(dtype)
        obs = jnp.asarray(obs).astype(dtype)
        if obs.shape != state.observations.shape[1:]:
            raise ValueError(
                f"EnVar: obs_op maps one state to {state.observations.shape[1:]}, but the "
                f"observations have shape {obs.shape} per time."
            )
        position = state.position
        trajectory = state.trajectory.at[position].set(forecast)
        observations = state.observations.at[position].set(obs)
        observed = fxp.observe_ensemble(model, forecast).astype(dtype)
        innovation = obs - jnp.mean(observed, axis=0)

        def analyse(_: Any) -> tuple[Array, Array, Array, Array]:
            return self._analysis(
                (k_an, k_infl, k_rot), state, trajectory, observations, model, forecast
            )

        def wait(_: Any) -> tuple[Array, Array, Array, Array]:
            return (
                forecast,
                jnp.mean(forecast, axis=0),
                jnp.zeros((), dtype),
                jnp.asarray(True),
            )

        is_end = position == self.lag - 1
        if self.lag == 1:
            analysis, mean_a, loglik, converged = analyse(None)
        else:
            analysis, mean_a, loglik, converged = jax.lax.cond(is_end, analyse, wait, None)
        beta_ok = self._beta_ok()
        finite = fxp.is_finite(forecast, analysis, mean_a, loglik) & converged & beta_ok
        info = fxp.CycleInfo(
            forecast_mean=jnp.mean(forecast, axis=0),
            forecast_spread=fxp.rms_spread(forecast),
            analysis_mean=mean_a,
            analysis_spread=fxp.rms_spread(analysis),
            log_likelihood=loglik,
            innovation=innovation,
            finite=finite,
            forecast=forecast,
            analysis=analysis,
            diagnostics=EnVarDiagnostics(analysed=is_end, cg_converged=converged),
        )
        new_state = EnVarState(
            ensemble=analysis,
            trajectory=trajectory,
            observations=observations,
            position=jnp.where(is_end, 0, position + 1).astype(jnp.int32),
            static_root=state.static_root,
            localization_root=state.localization_root,
        )
        return new_state, info

    # --- pieces --------------------------------------------------------------------------

    def _beta_ok(self) -> Array:
        # Traced weights (a sweep under vmap, a gradient) are checked here: a negative, NaN or
        # all-zero weight makes the cycle non-finite (driver status 1), never a plausible
        # number.
        b_c = jnp.asarray(self.beta_c)
        b_e = jnp.asarray(self.beta_e)
        return (b_c >= 0) & (b_e >= 0) & (b_c + b_e > 0) & jnp.isfinite(b_c + b_e)

    def _analysis(
        self,
        keys: tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray],
        state: EnVarState,
        trajectory: Array,
        observations: Array,
        model: fxp.AbstractModel,
        forecast: Array,
    ) -> tuple[Array, Array, Array, Array]:
        k_an, k_infl, k_rot = keys
        dtype = forecast.dtype
        mean_a, loglik, converged = _hybrid_analysis(
            trajectory,
            observations,
            model.obs_op,
            model.obs_noise,
            state.static_root,
            state.localization_root,
            self.beta_c,
            self.beta_e,
            self.rtol,
            self.atol,
            self.max_steps,
        )
        ens_a = self._ensemble_analysis(k_an, trajectory, observations, model)
        if self.inflator is not None:
            ens_a = self.inflator(ens_a, forecast, key=k_infl)
        if self.rotate:
            ens_a = fxp.rotate_ensemble(k_rot, ens_a)
        ens_a = ens_a.astype(dtype)
        recentred = ens_a - jnp.mean(ens_a, axis=0, keepdims=True) + mean_a[None, :]
        return recentred, mean_a, loglik.astype(dtype), converged

    def _ensemble_analysis(
        self,
        key: PRNGKeyArray,
        trajectory: Array,
        observations: Array,
        model: fxp.AbstractModel,
    ) -> Array:
        lag, n_e, n_x = trajectory.shape
        n_y = observations.shape[1]
        noise = fxp.as_noise_operator(model.obs_noise, n_y, dtype=trajectory.dtype)
        context: dict[str, Any] = {}
        local = isinstance(self.kernel, fxp.AbstractLocalFilter)
        if local:
            context = fxp.geometry_context(model, owner=f"EnVar({type(self.kernel).__name__})")
        if lag == 1:
            forecast, obs, obs_op = trajectory[0], observations[0], model.obs_op
        else:
            # The 4D-EnKF (Hunt et al. 2004): the window's trajectory as one state.
            forecast = jnp.reshape(jnp.swapaxes(trajectory, 0, 1), (n_e, lag * n_x))
            obs = jnp.reshape(observations, (-1,))
            obs_op = _WindowObs(model.obs_op, lag)
            noise = _window_noise(noise, lag)
            if local:
                for name in ("state_coords", "obs_coords"):
                    coords = jnp.asarray(context[name])
                    context[name] = jnp.concatenate([coords] * lag, axis=0)
        result = self.kernel.analysis(key, forecast, obs, obs_op, noise, **context)
        particles = jnp.asarray(result.particles)
        if particles.shape != forecast.shape:
            raise ValueError(
                f"EnVar: {type(self.kernel).__name__}.analysis returned particles of shape "
                f"{particles.shape}; the forecast has shape {forecast.shape}."
            )
        return particles.reshape(n_e, lag, n_x)[:, -1] if lag > 1 else particles


def _hybrid_analysis(
    trajectory: Float[Array, "lag N_e N_x"],
    observations: Float[Array, "lag N_y"],
    obs_op: Any,
    obs_noise: Any,
    static_root: lx.AbstractLinearOperator,
    localization_root: Float[Array, "N_x r"],
    beta_c: Any,
    beta_e: Any,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int | None = None,
) -> tuple[Float[Array, " N_x"], Float[Array, ""], Any]:
    r"""The hybrid EnVar analysis at the end of a window (see `EnVar`).

    Returns ``(x^a, log N(d; 0, H B H^T + R), converged)``. NaN observations are missing.
    """
    lag, n_e, n_x = trajectory.shape
    n_y = observations.shape[1]
    dtype = trajectory.dtype
    mean = jnp.mean(trajectory, axis=1)
    anomalies = trajectory - mean[:, None, :]
    b_c = jnp.sqrt(jnp.maximum(jnp.asarray(beta_c, dtype), 0.0))
    b_e = jnp.sqrt(jnp.maximum(jnp.asarray(beta_e, dtype), 0.0) / (n_e - 1))

    def observe(states: Array) -> Array:
        return jax.vmap(lambda s: fxp.apply_obs(obs_op, s))(states).astype(dtype)

    predicted, h_lin = jax.linearize(observe, mean)
    mask = jnp.isfinite(observations)
    innovation = jnp.where(mask, jnp.where(mask, observations, 0.0) - predicted, 0.0)
    noise = fxp.as_noise_operator(obs_noise, n_y, dtype=dtype)
    whitenings = jax.vmap(lambda m: fxp.noise_whitening(fxp.mask_noise(noise, m)))(mask)

    def whiten(rows: Array) -> Array:
        white = jax.vmap(lambda wh, r: wh.whiten(r))(whitenings, rows)
        return jnp.where(mask, white, 0.0)

    def increment(v: tuple[Array, Array]) -> Array:
        v_c, v_e = v
        alpha = jnp.matmul(v_e, localization_root.T, precision=_HIGHEST)  # (N_e, N_x)
        ens = b_e * jnp.einsum("jin,in->jn", anomalies, alpha, precision=_HIGHEST)
        return ens + b_c * static_root.mv(v_c)[None, :]

    def forward(v: tuple[Array, Array]) -> Array:
        return whiten(h_lin(increment(v)))

    v0 = (
        jnp.zeros((static_root.in_size(),), dtype),
        jnp.zeros((n_e, localization_root.shape[1]), dtype),
    )
    adjoint = jax.linear_transpose(forward, v0)

    white_d = whiten(innovation)
    # The shared control-variable solver of 3D/4D-Var (`_variational._solve`: lineax CG on
    # (I + U^T H^T R^-1 H U) v = U^T H^T R^-1 d), with U the hybrid square root acting on the
    # PyTree control (v_c, v_e) and this whitening (missing rows zero). Not the public
    # `variational_increment`, which refuses a concrete all-NaN window: here such a window is
    # the filters' no-op update (docs/failure_modes.md).
    v, stats = _solve(h_lin, increment, whiten, innovation, v0, rtol, atol, max_steps)
    converged = stats.converged
    x_a = mean[-1] + increment(v)[-1]
    # log N(d; 0, HBH^T + R) in whitened form: S~ = I + G G^T (lag N_y square).
    n = lag * n_y
    eye = jnp.eye(n, dtype=dtype)

    def gram_column(e: Array) -> Array:
        (back,) = adjoint(jnp.reshape(e, (lag, n_y)))
        return jnp.reshape(forward(back), (-1,))

    s_tilde = eye + jax.vmap(gram_column)(eye)
    chol = jnp.linalg.cholesky(0.5 * (s_tilde + s_tilde.T))
    flat_d = jnp.reshape(white_d, (-1,))
    quad = jnp.sum(flat_d**2) - jnp.sum(flat_d * jnp.reshape(forward(v), (-1,)))
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol))) + jnp.sum(
        jax.vmap(lambda wh: wh.logdet())(whitenings)
    )
    n_obs = jnp.sum(mask).astype(dtype)
    loglik = -0.5 * (n_obs * _LOG_2PI + logdet + quad)
    return x_a, loglik, converged
