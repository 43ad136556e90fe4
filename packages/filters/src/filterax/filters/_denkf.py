"""The deterministic EnKF of Sakov & Oke (2008): anomalies updated with half the gain."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, PRNGKeyArray

from ._common import AnalysisInputs
from ._transform_filter import AbstractTransformFilter
from ._transforms import matmul


def denkf_weights_and_transform(
    S: Float[Array, "N_e m"], delta: Float[Array, " m"]
) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"]]:
    r"""DEnKF mean weights and anomaly transform in ensemble space.

    $$w = (I + S S^\top)^{-1} S\delta, \qquad
    T = I - \tfrac12 (I + S S^\top)^{-1} S S^\top = I - \tfrac12 S (I + S^\top S)^{-1} S^\top.$$

    The ``(I + .)`` matrix is factorised by Cholesky on the smaller side (``N_y x N_y`` when
    ``N_y < N_e``); its eigenvalues are ``>= 1`` so this is well conditioned and its gradients
    are finite.
    """
    n_e, m = S.shape
    dtype = S.dtype
    if m < n_e:
        chol = jnp.linalg.cholesky(jnp.eye(m, dtype=dtype) + matmul(S.T, S))
        weights = matmul(S, jsl.cho_solve((chol, True), delta))
        half_gain = matmul(S, jsl.cho_solve((chol, True), S.T))
    else:
        chol = jnp.linalg.cholesky(jnp.eye(n_e, dtype=dtype) + matmul(S, S.T))
        weights = jsl.cho_solve((chol, True), matmul(S, delta))
        half_gain = jsl.cho_solve((chol, True), matmul(S, S.T))
    transform = jnp.eye(n_e, dtype=dtype) - 0.5 * half_gain
    return weights, transform


class DEnKF(AbstractTransformFilter):
    r"""Deterministic EnKF (Sakov & Oke 2008): full gain for the mean, half gain for anomalies.

    $$\bar x^a = \bar x + K d, \qquad X'^a = X' - \tfrac12\, Y' K^\top,
    \qquad K = C^{xH}(C^{HH} + R)^{-1}.$$

    For linear ``H`` the analysis covariance is
    ``(I - KH) P_f + K H P_f H^T K^T / 4`` — the exact Kalman covariance plus a small positive
    term, which acts as built-in inflation and makes the DEnKF robust without a square root
    (Sakov & Oke 2008, eq. (6)). Computed in ensemble space,
    ``X'^a = [I - (I + S S^T)^{-1} S S^T / 2] X'``, with Cholesky factorisations of the smaller
    of ``I + S^T S`` / ``I + S S^T``: no eigendecomposition, gradients finite everywhere.

    Any ``R`` structure (whitened, see `prepare_analysis`); NaN observations are skipped
    exactly.

    **Arguments:** none. `analysis(key, forecast, obs, obs_op, obs_noise, **context)`; `key`
    unused, `context` ignored.

    **Returns** (of `analysis`): `fxp.Analysis` with ``info`` a `TransformInfo`.

    **Reference:** Sakov & Oke (2008), *Tellus A* 60, "A deterministic formulation of the
    ensemble Kalman filter: an alternative to ensemble square root filters". DAPPER:
    ``EnKF("DEnKF", N)``: ``E = E + KG @ dy - 0.5 * (KG @ Y.T).T``.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import DEnKF

        X = jax.random.normal(jax.random.key(0), (40, 40))
        out = DEnKF().analysis(None, X, jnp.zeros(40), fxp.IdentityObs(), 1.0)
        ```
    """

    def weights_and_transform(
        self, inputs: AnalysisInputs, key: PRNGKeyArray | None
    ) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"], dict[str, Any]]:
        """`denkf_weights_and_transform` of the whitened anomalies and innovation."""
        del key
        weights, transform = denkf_weights_and_transform(
            inputs.whitened_anomalies, inputs.whitened_innovation
        )
        return weights, transform, {}
