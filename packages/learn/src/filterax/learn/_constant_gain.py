r"""`ConstantGainFilter`: a Gaussian filter whose analysis uses a fixed (learnable) gain.

The parameterised analysis map of Bach, Baptista, Luk & Stuart (2025), §3.3-§3.4: the
forecast covariance is propagated as in a Kalman / extended Kalman filter, but the gain is a
parameter ``K`` instead of ``Ĉ Hᵀ (H Ĉ Hᵀ + Γ)⁻¹``; the analysis covariance is the Joseph
form, which is the exact covariance of the analysis error for ANY gain.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

import filterax.primitives as fxp
from filterax.filters import GaussianDiagnostics, GaussianState

from ._expected_loglik import linearize_obs

__all__ = ["LINEARIZATIONS", "ConstantGainFilter"]

LINEARIZATIONS = ("linear", "jacobian")

_HIGHEST = jax.lax.Precision.HIGHEST
_LOG_2PI = math.log(2.0 * math.pi)


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _sym(p: Array) -> Array:
    return 0.5 * (p + p.T)


def _rms_spread(cov: Array) -> Array:
    return jnp.sqrt(jnp.maximum(jnp.mean(jnp.diagonal(cov)), 0.0))


def _process_noise_matrix(noise: Any, n: int, dtype: Any) -> Array:
    if noise is None:
        return jnp.zeros((n, n), dtype)
    try:
        return fxp.as_noise_operator(noise, n, dtype=dtype).as_matrix().astype(dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"ConstantGainFilter: model.process_noise: {err}") from None


def _flow_and_jacobian(
    dynamics: Any, mean: Array, t_prev: Any, t: Any, linearization: str
) -> tuple[Array, Array]:
    """``(Psi(m), F)``: the forecast mean and the tangent-linear matrix.

    ``"linear"``: ``F`` is the Jacobian of the (affine) map, evaluated at a stop-gradient
    mean, so nothing differentiates through it. ``"jacobian"``: ``F = DPsi(m)`` at the
    previous analysis mean, with gradients flowing through ``F`` (paper eq. 3.4). Reverse
    mode (pulled-back unit vectors), as `filterax.filters.ExtendedKF` does, because the zoo's
    stepped models only support reverse mode over traced time intervals.
    """
    if isinstance(dynamics, fxp.AbstractStochasticDynamics):
        raise TypeError(
            "ConstantGainFilter: this model's dynamics draws its own noise (an "
            "AbstractStochasticDynamics), which a Gaussian filter cannot propagate. Use the "
            "deterministic part as dynamics and give its covariance as process_noise."
        )
    n, dtype = mean.shape[0], mean.dtype

    def flow(x):
        return jnp.asarray(dynamics(x, t_prev, t)).astype(dtype)

    at = jax.lax.stop_gradient(mean) if linearization == "linear" else mean
    mean_f, pullback = jax.vjp(flow, at)
    if mean_f.shape != (n,):
        raise ValueError(
            f"ConstantGainFilter: dynamics(x, t0, t1) must return a state of shape ({n},); got "
            f"{mean_f.shape}."
        )
    (rows,) = jax.vmap(pullback)(jnp.eye(n, dtype=dtype))
    if linearization == "linear":
        # Psi(m) = Psi(m0) + F (m - m0) exactly for an affine map; keeps the mean's gradient.
        mean_f = mean_f + _mm(rows, mean - at)
    return mean_f, rows


class ConstantGainFilter(fxp.AbstractCycledMethod):
    r"""A Gaussian filter with a constant (learnable) gain ``K``: a cycled method for `run`.

    Cycle ``j`` (observation ``y_j``, NaN entries missing):

    $$\hat m_j = \Psi(m_{j-1}),\qquad \hat C_j = F_j C_{j-1} F_j^\top + \Sigma,$$

    $$m_j = \hat m_j + K(y_j - H\hat m_j),\qquad
    C_j = (I - KH)\hat C_j(I - KH)^\top + K\Gamma K^\top\ \text{(Joseph form, symmetrised)},$$

    with ``F_j`` the matrix of a linear model (``linearization="linear"``) or the Jacobian
    ``DPsi(m_{j-1})`` at the previous analysis mean (``"jacobian"``, the ExKF-style filter of
    paper eq. 3.4; the gradient then flows through ``F_j``, i.e. second derivatives of
    ``Psi``). ``Sigma`` is ``model.process_noise`` (``None``: zero), ``H`` and ``Gamma`` are
    ``model.obs_op`` (a matrix / linear operator, or a callable linearised at ``\hat m_j``)
    and ``model.obs_noise``. The Joseph form is the exact analysis-error covariance for any
    ``K``; with ``K`` the Kalman gain of ``\hat C_j`` it equals the Kalman posterior
    covariance. Columns of ``K`` at missing observations are ignored.

    Each cycle reports (`filterax.primitives.CycleInfo`) the means, spreads, the innovation
    log-likelihood ``log N(y_j; H\hat m_j, H\hat C_j H^\top + \Gamma)`` (the Gaussian
    predictive likelihood of this filter's forecast), the innovation, finiteness, the
    forecast and analysis `GaussianState`\ s (``save="forecast_and_analysis"`` stacks
    ``(\hat m_j, \hat C_j)`` and ``(m_j, C_j)``) and the variances as
    `filterax.filters.GaussianDiagnostics`. The key is unused (deterministic).

    ``K`` is an ordinary (dynamic) field: ``jax.grad`` of any function of a `run` of this
    filter with respect to ``K`` is exact (`offline_vi_loss`).

    **Arguments:**

    - `gain`: ``K``, shape ``(N_x, N_y)``.
    - `linearization`: ``"linear"`` (default) or ``"jacobian"`` (static).

    **Initial condition** (the ``initial`` of `run`): a `filterax.filters.GaussianState` or a
    ``(mean, cov)`` pair with a dense ``(N_x, N_x)`` covariance.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), *Learning optimal filters using
    variational inference*, §3.3 (linear) and eq. (3.4) (ExKF-style). Departures: the authors'
    code computes ``F_j`` with ``jacrev`` of the one-step map inside their own scan, and their
    linear filter assimilates ``y_0`` after one forecast from ``(m_0, C_0)``; here the driver's
    convention applies (cycle ``k`` forecasts from ``t_{k-1}`` to ``t_k`` then assimilates
    ``y_k``), which is the same alignment when the observations start one step after ``t0``.
    DAPPER has no equivalent.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import filterax.filters as ff, filterax.primitives as fxp
    from filterax.learn import ConstantGainFilter

    A = 0.9 * jnp.eye(2)
    model = fxp.Model(lambda x, t0, t1: A @ x, jnp.eye(2), 1.0, process_noise=0.1)
    out = ff.run(ConstantGainFilter(0.4 * jnp.eye(2)), model,
                 ff.GaussianState(jnp.zeros(2), jnp.eye(2)), jnp.ones((10, 2)),
                 jnp.arange(1.0, 11.0), key=jax.random.key(0), save="forecast_and_analysis")
    out.analyses.cov.shape  # (10, 2, 2)
    ```
    """

    gain: Float[Array, "N_x N_y"]
    linearization: str = eqx.field(static=True, default="linear")

    def __check_init__(self) -> None:
        if self.linearization not in LINEARIZATIONS:
            raise ValueError(
                f"ConstantGainFilter: linearization must be one of {LINEARIZATIONS} ('linear' "
                "for a linear model, 'jacobian' for the ExKF-style filter of eq. 3.4); got "
                f"{self.linearization!r}."
            )
        if jnp.ndim(self.gain) != 2:
            raise ValueError(
                "ConstantGainFilter: gain must be an (N_x, N_y) matrix (state rows, observation "
                f"columns); got shape {jnp.shape(self.gain)}."
            )
        if not jnp.issubdtype(jnp.result_type(self.gain), jnp.floating):
            raise TypeError(
                "ConstantGainFilter: gain must be a floating-point array (e.g. 0.4 * "
                f"jnp.eye(N_x)); got dtype {jnp.result_type(self.gain)}."
            )
        value = fxp.concrete_value(self.gain)
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError("ConstantGainFilter: gain must be finite; it contains NaN or inf.")

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> GaussianState:
        """The initial `GaussianState` (checked: a dense ``(N_x, N_x)`` covariance)."""
        del key, model
        if isinstance(initial, GaussianState):
            mean, cov = initial.mean, initial.cov
        elif isinstance(initial, tuple | list) and len(initial) == 2:
            mean, cov = initial
        else:
            raise TypeError(
                "ConstantGainFilter: the initial condition is a Gaussian: pass "
                "filterax.filters.GaussianState(mean, cov) or a (mean, cov) pair; got "
                f"{type(initial).__name__}."
            )
        mean = jnp.asarray(mean)
        cov = jnp.asarray(cov)
        n = self.gain.shape[0]
        if mean.shape != (n,) or cov.shape != (n, n):
            raise ValueError(
                f"ConstantGainFilter: the gain has N_x = {n} rows, so the initial mean must be "
                f"({n},) and the covariance ({n}, {n}); got {mean.shape} and {cov.shape}."
            )
        dtype = jnp.result_type(mean, cov, self.gain)
        return GaussianState(mean.astype(dtype), cov.astype(dtype))

    def forecast(
        self, state: GaussianState, model: fxp.AbstractModel, t_prev: Any, t: Any
    ) -> GaussianState:
        """``(\\hat m, \\hat C) = (Psi(m), F C F^T + Sigma)`` (see the class docstring)."""
        mean, cov = state.mean, state.cov
        mean_f, F = _flow_and_jacobian(model.dynamics, mean, t_prev, t, self.linearization)
        Q = _process_noise_matrix(model.process_noise, mean.shape[0], mean.dtype)
        return GaussianState(mean_f, _sym(_mm(_mm(F, cov), F.T) + Q))

    def analysis(
        self, forecast: GaussianState, model: fxp.AbstractModel, obs: Any
    ) -> tuple[GaussianState, Array, Array]:
        """``(N(m, C), log-likelihood, innovation)``: the constant-gain Joseph analysis of
        `forecast` on `obs` (NaN = missing)."""
        mean_f, cov_f = forecast.mean, forecast.cov
        dtype = mean_f.dtype
        n_x = mean_f.shape[0]
        predicted, H = linearize_obs(model.obs_op, mean_f)
        n_y = predicted.shape[0]
        if self.gain.shape != (n_x, n_y):
            raise ValueError(
                f"ConstantGainFilter: the gain must have shape (N_x, N_y) = ({n_x}, {n_y}) for "
                f"this model; got {self.gain.shape}."
            )
        obs = jnp.asarray(obs)
        if obs.shape != (n_y,):
            raise ValueError(
                f"ConstantGainFilter: obs must have shape ({n_y},); got {obs.shape}. Use NaN "
                "for missing entries."
            )
        obs = obs.astype(dtype)
        mask = fxp.observation_mask(obs)
        innovation = jnp.where(mask, jnp.where(mask, obs, 0.0) - predicted, 0.0)
        H = jnp.where(mask[:, None], H, 0.0)
        K = jnp.where(mask[None, :], self.gain.astype(dtype), 0.0)
        try:
            noise = fxp.as_noise_operator(model.obs_noise, n_y, dtype=dtype)
        except (TypeError, ValueError) as err:
            raise type(err)(f"ConstantGainFilter: obs_noise: {err}") from None
        # Missing rows and columns are the identity's (they drop out of the update).
        R = fxp.mask_noise(noise, mask).as_matrix().astype(dtype)
        mean_a = mean_f + _mm(K, innovation)
        IKH = jnp.eye(n_x, dtype=dtype) - _mm(K, H)
        cov_a = _sym(_mm(_mm(IKH, cov_f), IKH.T) + _mm(_mm(K, R), K.T))
        # log N(innovation; 0, S), S = H C^ H^T + R (identity rows at missing entries).
        S = _sym(_mm(_mm(H, cov_f), H.T) + R)
        chol_s = jnp.linalg.cholesky(S)
        white = jsl.solve_triangular(chol_s, innovation, lower=True)
        n_obs = jnp.sum(mask).astype(dtype)
        # The masked rows of S are exactly the identity's, contributing log 1 = 0.
        loglik = -0.5 * (
            n_obs * _LOG_2PI + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol_s))) + jnp.sum(white**2)
        )
        return GaussianState(mean_a, cov_a), loglik, innovation

    def step(
        self,
        key: PRNGKeyArray,
        state: GaussianState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[ArrayLike, " N_y"],
    ) -> tuple[GaussianState, fxp.CycleInfo]:
        """Forecast from ``t_prev`` to ``t``, then the constant-gain analysis of `obs`."""
        del key
        forecast = self.forecast(state, model, t_prev, t)
        analysis, loglik, innovation = self.analysis(forecast, model, obs)
        var_f = jnp.diagonal(forecast.cov)
        var_a = jnp.diagonal(analysis.cov)
        info = fxp.CycleInfo(
            forecast_mean=forecast.mean,
            forecast_spread=_rms_spread(forecast.cov),
            analysis_mean=analysis.mean,
            analysis_spread=_rms_spread(analysis.cov),
            log_likelihood=loglik,
            innovation=innovation,
            finite=fxp.is_finite(forecast, analysis, loglik),
            forecast=forecast,
            analysis=analysis,
            diagnostics=GaussianDiagnostics(var_f, var_a),
        )
        return analysis, info
