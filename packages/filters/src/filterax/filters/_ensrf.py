"""Ensemble square-root filters: batch (left-multiplying) and serial (scalar observations)."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ._common import AnalysisInputs, require_diagonal_noise
from ._transform_filter import AbstractTransformFilter
from ._transforms import matmul


def _noise_cholesky(inputs: AnalysisInputs) -> Array:
    """A lower-triangular square root of the (masked) ``R``, as a dense matrix.

    The whitening's root ``L`` when ``R = L L^T`` (diagonal: ``diag(sqrt(r))``; dense: its
    Cholesky factor; a registered structure: its root, densified); with a low-rank residual
    (``R = L (I + U~ U~^T) L^T``) the Cholesky factor of the dense ``R``.
    """
    whitening = inputs.whitener
    dtype = inputs.dtype
    if whitening.factor is None:
        return whitening.root.mv(jnp.eye(inputs.n_obs_total, dtype=dtype))
    return jnp.linalg.cholesky(jnp.asarray(inputs.noise.as_matrix(), dtype=dtype))


def ensrf_batch_weights_and_transform(
    inputs: AnalysisInputs,
) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"]]:
    r"""Whitaker–Hamill batch EnSRF in ensemble form (Cholesky square roots).

    With ``A = Y' / sqrt(N_e - 1)`` (masked), ``C = A^T A + R = L_C L_C^T`` and
    ``R = L_R L_R^T`` (lower triangular):

    $$w = A C^{-1} d, \qquad T = I - A\,(L_C + L_R)^{-\top} L_C^{-1} A^\top.$$

    This is ``X'^a = X' - Y' \tilde K^\top`` with the reduced gain
    ``K~ = C^{xH} L_C^{-T} (L_C + L_R)^{-1}``, which satisfies
    ``(I - K~H) P (I - K~H)^T = (I - KH) P`` for any square roots (Andrews 1968).
    """
    dtype = inputs.dtype
    n_e = inputs.n_ensemble
    a = inputs.obs_anomalies / math.sqrt(n_e - 1)
    noise_matrix = jnp.asarray(inputs.noise.as_matrix(), dtype=dtype)
    chol_c = jnp.linalg.cholesky(matmul(a.T, a) + noise_matrix)
    chol_r = _noise_cholesky(inputs)
    weights = matmul(a, jsl.cho_solve((chol_c, True), inputs.innovation))
    z = jsl.solve_triangular(chol_c, a.T, lower=True)
    q = jsl.solve_triangular(chol_c + chol_r, z, lower=True, trans=1)
    transform = jnp.eye(n_e, dtype=dtype) - matmul(a, q)
    return weights, transform


class EnSRF(AbstractTransformFilter):
    r"""Batch ensemble square-root filter, left-multiplying form (Whitaker & Hamill 2002).

    Mean by the Kalman gain, anomalies by the reduced gain ``K~``:

    $$\bar x^a = \bar x + K d, \quad K = C^{xH}(C^{HH} + R)^{-1},$$

    $$x'^a_j = x'_j - \tilde K\, y'_j, \quad
    \tilde K = C^{xH} L_C^{-\top}(L_C + L_R)^{-1},$$

    with ``L_C``, ``L_R`` the lower Cholesky factors of ``C^{HH} + R`` and ``R``. For linear
    ``H`` the analysis covariance is ``(I - KH) P_f`` exactly (the identity holds for any
    square roots, Andrews 1968). The update is a left-multiplication in state space
    (Tippett et al. 2003, "EnSRF"), equivalently ``X'^a = T X'`` with
    ``T = I - A (L_C + L_R)^{-T} L_C^{-1} A^T``, ``A = Y'/sqrt(N_e - 1)``: ``T T^T`` equals the
    ETKF's ``(I + S S^T)^{-1}`` on the anomaly span, so the ensemble equals the ETKF's up to an
    orthogonal rotation; ``T 1 = 1`` preserves the mean.

    Works in observation space: ``O(N_y^3 + N_e N_y^2)``; prefer `ETKF` when ``N_y >> N_e``.
    Uses Cholesky factorisations only (no eigendecomposition), so gradients are finite for any
    ``N_y`` vs ``N_e``. Any ``R`` structure (a low-rank-plus-diagonal ``R`` is densified
    here: the batch EnSRF needs ``N_y x N_y`` square roots). NaN observations are skipped
    exactly.

    **Arguments:** none. `analysis(key, forecast, obs, obs_op, obs_noise, **context)`; `key`
    unused, `context` ignored.

    **Returns** (of `analysis`): `fxp.Analysis` with ``info`` a `TransformInfo`.

    **Reference:** Whitaker & Hamill (2002), *MWR* 130, eqs. (9)–(13); Tippett, Anderson,
    Bishop, Hamill & Whitaker (2003), *MWR* 131, §3; Andrews (1968), *AIAA J.* 6. DAPPER has
    no batch left-multiplying EnSRF (its ``"Serial"`` is `EnSRF_Serial`).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import EnSRF

        X = jax.random.normal(jax.random.key(0), (20, 10))
        out = EnSRF().analysis(None, X, jnp.zeros(5), lambda x: x[:5], 0.5)
        ```
    """

    def weights_and_transform(
        self, inputs: AnalysisInputs, key: PRNGKeyArray | None
    ) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"], dict[str, Any]]:
        """`ensrf_batch_weights_and_transform` of the prepared inputs."""
        del key
        weights, transform = ensrf_batch_weights_and_transform(inputs)
        return weights, transform, {}


def ensrf_serial_weights_and_transform(
    S: Float[Array, "N_e N_y"], delta: Float[Array, " N_y"]
) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"]]:
    r"""Serial (Potter) square-root update of scalar whitened observations, by `lax.scan`.

    For ``j = 1..N_y`` with ``s = T S_{:,j}`` and ``c = s^T s + 1``:

    $$w \leftarrow w + T^\top s\,(\delta_j - S_{:,j}^\top w)/c, \qquad
    T \leftarrow \Big(I - \frac{s s^\top}{c + \sqrt c}\Big) T.$$

    Missing observations have ``S_{:,j} = 0`` and ``delta_j = 0``, which makes the step an exact
    no-op. Cost ``O(N_y N_e^2)``.
    """
    n_e = S.shape[0]
    dtype = S.dtype

    def step(carry, column):
        transform, weights = carry
        s0, delta_j = column
        s = matmul(transform, s0)
        c = jnp.dot(s, s, precision=lax.Precision.HIGHEST) + 1.0
        innovation = delta_j - jnp.dot(s0, weights, precision=lax.Precision.HIGHEST)
        weights = weights + matmul(transform.T, s) * (innovation / c)
        transform = transform - jnp.outer(s, matmul(s, transform)) / (c + jnp.sqrt(c))
        return (transform, weights), None

    init = (jnp.eye(n_e, dtype=dtype), jnp.zeros((n_e,), dtype=dtype))
    (transform, weights), _ = lax.scan(step, init, (S.T, delta))
    return weights, transform


class EnSRF_Serial(AbstractTransformFilter):
    r"""Serial ensemble square-root filter: scalar observations one at a time (Potter scheme).

    Each observation ``j`` (in index order) updates the mean and anomalies with its scalar
    gain; the reduced gain for the anomalies uses the factor
    ``alpha = (1 + sqrt(R_jj / (H P H^T + R)_jj))^{-1}``:

    $$\bar x \leftarrow \bar x + k_j\, d_j, \quad X' \leftarrow X' - \alpha_j\,
    y'_j k_j^\top, \quad k_j = \frac{C^{xH}_{:,j}}{C^{HH}_{jj} + R_{jj}},$$

    with the observed anomalies updated alongside the state ("update-regress"). Implemented in
    ensemble space (a `lax.scan` over observations carrying an ``N_e x N_e`` transform and
    the mean weights; see `ensrf_serial_weights_and_transform`), ``O(N_y N_e^2 + N_e^2 N_x)``,
    square roots of scalars only. For linear ``H`` and diagonal ``R`` the analysis mean and
    covariance equal the batch Kalman (and `ETKF`) analysis; the ensemble itself differs by a
    rotation.

    Requires a **diagonal** ``R`` (independent observation errors): a dense or low-rank ``R``
    raises a `ValueError` pointing to `ETKF`/`EnSRF`, which support correlated errors. NaN
    observations are skipped.

    **Arguments:** none. `analysis(key, forecast, obs, obs_op, obs_noise, **context)`; `key`
    unused, `context` ignored.

    **Returns** (of `analysis`): `fxp.Analysis` with ``info`` a `TransformInfo`.

    **Reference:** Whitaker & Hamill (2002), *MWR* 130, eqs. (4)–(5); Potter (1964);
    Tippett et al. (2003), *MWR* 131. DAPPER: ``EnKF("Serial mono", N)`` (the ``"Potter
    scheme"`` branch of ``EnKF_analysis``; DAPPER defaults to a random order, here the order
    is the observation index order so that the result is deterministic).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import EnSRF_Serial

        X = jax.random.normal(jax.random.key(0), (20, 10))
        out = EnSRF_Serial().analysis(None, X, jnp.zeros(10), fxp.IdentityObs(), 0.5)
        ```
    """

    def weights_and_transform(
        self, inputs: AnalysisInputs, key: PRNGKeyArray | None
    ) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"], dict[str, Any]]:
        """`ensrf_serial_weights_and_transform` of the whitened anomalies and innovation."""
        del key
        require_diagonal_noise(
            inputs,
            "EnSRF_Serial",
            "ETKF or EnSRF (or DEnKF, ESTKF, ETKF_Livings)",
        )
        weights, transform = ensrf_serial_weights_and_transform(
            inputs.whitened_anomalies, inputs.whitened_innovation
        )
        return weights, transform, {}
