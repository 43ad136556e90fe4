"""The error-subspace transform Kalman filter (Nerger et al. 2012)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._common import AnalysisInputs
from ._transform_filter import AbstractTransformFilter
from ._transforms import matmul, mean_preserving_basis, sqrt_transform


def estkf_weights_and_transform(
    S: Float[Array, "N_e m"], delta: Float[Array, " m"]
) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"]]:
    r"""ESTKF weights and transform, computed in the ``(N_e - 1)``-dimensional error subspace.

    $$\hat S = \Omega^\top S, \quad C = (I_{N_e-1} + \hat S \hat S^\top)^{-1/2}, \quad
    \hat w = C^2 \hat S \delta,$$

    $$w = \Omega \hat w, \qquad T = \Omega C \Omega^\top + \tfrac1{N_e}\mathbf 1\mathbf 1^\top.$$
    """
    n_e = S.shape[0]
    omega = mean_preserving_basis(n_e, S.dtype)
    s_hat = matmul(omega.T, S)
    core = sqrt_transform(s_hat)
    w_hat = matmul(core, matmul(core, matmul(s_hat, delta)))
    weights = matmul(omega, w_hat)
    transform = matmul(omega, matmul(core, omega.T)) + jnp.full((n_e, n_e), 1.0 / n_e, S.dtype)
    return weights, transform


class ESTKF(AbstractTransformFilter):
    r"""Error-subspace transform Kalman filter (Nerger, Janjić, Schröter & Hiller 2012).

    Works in the ``(N_e - 1)``-dimensional error subspace spanned by ``L = X^T Omega`` with
    Nerger's projection ``Omega`` (``N_e x (N_e - 1)``, orthonormal columns orthogonal to
    ``1``, a Householder matrix, see `mean_preserving_basis`):

    $$A^{-1} = I_{N_e-1} + \hat S \hat S^\top, \quad \hat S = \Omega^\top S,\quad
    \hat w = A \hat S \delta, \quad C = A^{1/2}\ \text{(symmetric)},$$

    $$X^a = \mathbf 1\big(\bar x + X'^\top \Omega \hat w / \sqrt{N_e - 1}\big)^\top
    + \Omega C \Omega^\top X'.$$

    Since ``Omega Omega^T = I - 1 1^T / N_e`` and the anomalies sum to zero, this equals the
    symmetric `ETKF` exactly, with the eigenproblem one dimension smaller
    (``min(N_y, N_e - 1)``), and needs no explicit re-centring. The symmetric root uses the
    same gradient-safe spectral function as `ETKF`. Any ``R`` structure; NaN observations
    are skipped exactly. Nerger's forgetting factor ``rho`` is not part of the analysis here:
    compose an inflator instead.

    **Arguments:** none. `analysis(key, forecast, obs, obs_op, obs_noise, **context)`; `key`
    unused, `context` ignored.

    **Returns** (of `analysis`): `fxp.Analysis` with ``info`` a `TransformInfo`.

    **Reference:** Nerger, Janjić, Schröter & Hiller (2012), *MWR* 140, "A unification of
    ensemble square root Kalman filters", eqs. (10)–(15). PDAF: ``PDAF_estkf_analysis``.
    DAPPER: no direct equivalent (equals ``EnKF("Sqrt", N)``).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import ESTKF

        X = jax.random.normal(jax.random.key(0), (10, 3))
        out = ESTKF().analysis(None, X, jnp.zeros(3), fxp.IdentityObs(), 2.0)
        ```
    """

    def weights_and_transform(
        self, inputs: AnalysisInputs, key: PRNGKeyArray | None
    ) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"], dict[str, Any]]:
        """`estkf_weights_and_transform` of the whitened anomalies and innovation."""
        del key
        weights, transform = estkf_weights_and_transform(
            inputs.whitened_anomalies, inputs.whitened_innovation
        )
        return weights, transform, {}
