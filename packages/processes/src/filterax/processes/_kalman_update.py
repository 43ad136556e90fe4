"""The Kalman algebra every ensemble process shares, in whitened ensemble coordinates.

`prepare_update` masks failed members (non-finite forward evaluations) out of every statistic,
whitens the data once and computes the per-member misfits; `kalman_increments` (perturbed
observations) and `transform_update` (square root) are the two EKI-type updates, written
through the Woodbury identity so an update costs ``O(N_e^2 N_y)``; the algorithm time step
``dt`` enters every update so that ``dt = 0`` is exactly the identity (``Gamma / dt`` is never
formed: ``C^{ug} (C^{gg} + Gamma/dt)^{-1} = dt C^{ug} (dt C^{gg} + Gamma)^{-1}``).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, PRNGKeyArray

import filterax.primitives as fxp

from ._failures import masked_stats
from ._linalg import mm, stack_factors

__all__ = [
    "UpdateData",
    "augment_with_prior",
    "kalman_increments",
    "normalised",
    "prepare_update",
    "transform_update",
]


def kalman_increments(
    key: PRNGKeyArray | None,
    x_anomalies: Array,
    y_anomalies: Array,
    residuals: Array,
    dt: Array,
    factor: Array | None,
    *,
    stochastic: bool,
    cross_cov: Array | None = None,
) -> Array:
    r"""Per-member EKI increments in whitened data coordinates.

    $$\delta\theta_j = C^{ug} (C^{gg} + N/\Delta t)^{-1} (\tilde y + \eta_j/\sqrt{\Delta t}
    - \tilde g_j) = C^{ug} S^{-1} \epsilon_j,$$

    with ``S = dt C^{gg} + N = I + F F^T``, ``F = [sqrt(dt) Y_a^T, U~]``,
    ``eps_j = dt (y~ - g~_j) + sqrt(dt) eta_j`` and ``eta_j ~ N(0, N)`` (EKP's perturbed
    observations with covariance ``Gamma / dt``). ``x_anomalies``, ``y_anomalies`` are the
    ``(N_e, .)`` anomalies divided by ``sqrt(n - 1)`` (zero rows for failed members).
    """
    dtype = residuals.dtype
    eps = dt * residuals
    if stochastic:
        assert key is not None
        eta = fxp.whitened_noise_sample(key, residuals.shape[0], residuals.shape[1], factor, dtype)
        eps = eps + jnp.sqrt(dt) * eta
    f = jnp.sqrt(dt) * y_anomalies.T
    if factor is not None:
        f = jnp.concatenate([f, factor], axis=1)
    z = fxp.whitened_noise_solve(eps, f)
    if cross_cov is None:
        return mm(z, mm(y_anomalies.T, x_anomalies))
    return mm(z, cross_cov.T)


def transform_update(
    x_mean: Array,
    x_anomalies: Array,
    count: Array,
    y_anomalies: Array,
    mean_residual: Array,
    dt: Array,
    factor: Array | None,
) -> Array:
    r"""The ensemble-transform (square-root) update, exact Kalman for a linear model.

    $$\Omega = (I + \Delta t\, Y_a N^{-1} Y_a^\top)^{-1}, \quad
    w = \Delta t\,\Omega Y_a N^{-1} (\tilde y - \bar{\tilde g}), \quad
    \theta_j = \bar\theta + X_a^\top w + (\Omega^{1/2} X')_j,$$

    with ``X' = x_anomalies`` (raw), ``X_a = X' / sqrt(n - 1)`` and ``Y_a`` the normalised
    whitened data anomalies (EKP's ``etki_update``; symmetric square root, so the mean is
    preserved exactly).
    """
    y_noise = fxp.whitened_noise_solve(y_anomalies, factor)
    k = dt * mm(y_noise, y_anomalies.T)
    # Gradient-safe (I + K)^{-1/2}: K has repeated eigenvalues whenever N_y < N_e - 1 and is
    # exactly 0 once the time step is 0 (after algorithm time 1), where eigh's derivative is
    # NaN; Omega = (I + K)^{-1} is its square.
    omega_half = fxp.inverse_sqrt_one_plus(0.5 * (k + k.T))
    omega = mm(omega_half, omega_half)
    w = dt * mm(omega, mm(y_noise, mean_residual[:, None]))[:, 0]
    x_norm = x_anomalies / jnp.sqrt(jnp.maximum(count - 1.0, 1.0))
    mean = x_mean + mm(x_norm.T, w[:, None])[:, 0]
    return mean[None, :] + mm(omega_half, x_anomalies)


class UpdateData(eqx.Module):
    """Everything an update derives from the forward evaluations, computed once."""

    failed: Bool[Array, " N_e"]
    count: Array
    whitening: fxp.Whitening
    gw: Array
    gw_anomalies: Array
    g_anomalies: Array
    yw: Array
    residuals: Array
    misfits: Array
    d_norm: Array

    @property
    def ok(self) -> Array:
        return ~self.failed


def prepare_update(
    forward_evals: Array, obs: Array, noise: lx.AbstractLinearOperator
) -> UpdateData:
    """Mask failures, whiten, and compute misfits and ``||D||_F`` (EKS/EKSStableScheduler)."""
    dtype = forward_evals.dtype
    failed = ~jnp.all(jnp.isfinite(forward_evals), axis=1)
    ok = ~failed
    g_mean, g_anomalies, count = masked_stats(forward_evals, ok)
    g_clean = jnp.where(ok[:, None], forward_evals, g_mean[None, :])
    whitening = fxp.noise_whitening(noise, dtype)
    gw = whitening.white(g_clean)
    yw = whitening.white(obs)
    residuals = yw[None, :] - gw
    gw_anomalies = whitening.white(g_anomalies)
    res_noise = whitening.noise_solve(residuals)
    misfits = jnp.where(ok, 0.5 * jnp.sum(residuals * res_noise, axis=1), jnp.nan)
    # D_ij = <G_i - mean G, Gamma^{-1}(G_j - y)> / J over the successful members (EKP's EKS).
    masked_res = jnp.where(ok[:, None], res_noise, 0.0)
    # ||E R^T||_F^2 = sum((E^T E) o (R^T R)) in the smaller of the two Gram spaces.
    if gw.shape[1] < gw.shape[0]:
        gram = mm(gw_anomalies.T, gw_anomalies) * mm(masked_res.T, masked_res)
    else:
        gram = mm(gw_anomalies, masked_res.T) ** 2
    d_norm = jnp.sqrt(jnp.maximum(jnp.sum(gram), 0.0)) / jnp.maximum(count, 1.0)
    return UpdateData(
        failed=failed,
        count=count,
        whitening=whitening,
        gw=gw,
        gw_anomalies=gw_anomalies,
        g_anomalies=g_anomalies,
        yw=yw,
        residuals=residuals,
        misfits=misfits,
        d_norm=d_norm,
    )


def augment_with_prior(
    data: UpdateData,
    ensemble: Array,
    x_anomalies: Array,
    prior_mean: Array,
    prior_op: lx.AbstractLinearOperator,
) -> tuple[Array, Array, Array | None, fxp.Whitening]:
    r"""Tikhonov augmentation ``G~ = [G; theta]``, ``y~ = [y; m_0]``, ``Gamma~ = diag(Gamma, C_0)``.

    Returns the whitened augmented ``(anomalies, residuals, factor, prior_whitening)``.
    """
    dtype = ensemble.dtype
    w0 = fxp.noise_whitening(prior_op, dtype)
    anomalies = jnp.concatenate([data.gw_anomalies, w0.white(x_anomalies)], axis=1)
    prior_res = w0.white(prior_mean.astype(dtype))[None, :] - w0.white(ensemble)
    residuals = jnp.concatenate([data.residuals, prior_res], axis=1)
    factor = stack_factors(
        data.whitening.factor, data.gw.shape[1], w0.factor, ensemble.shape[1], dtype
    )
    return anomalies, residuals, factor, w0


def normalised(anomalies: Array, count: Array) -> Array:
    return anomalies / jnp.sqrt(jnp.maximum(count - 1.0, 1.0))
