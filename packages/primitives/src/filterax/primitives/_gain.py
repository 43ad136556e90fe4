"""Innovation covariance and the ensemble Kalman gain, structure-aware."""

from __future__ import annotations

import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from ._covariance_checks import concrete_noise_matrix
from ._lowrank import LowRankUpdate, Woodbury
from ._missing import mask_anomalies, mask_noise, observation_mask
from ._noise import _DENSE_TAGS, NoiseLike, _noise_diagonal, as_noise_operator, noise_structure
from ._statistics import ensemble_anomalies
from ._validation import check_ensemble, check_same_members, check_vector, concrete_value
from ._whitening import noise_whitening

_HIGHEST = lax.Precision.HIGHEST


def _require_positive_diagonal(noise: LowRankUpdate) -> Array:
    if noise.diagonal is None:
        raise ValueError(
            "low-rank observation noise needs a positive diagonal: U U^T alone is singular. "
            "Pass low_rank_noise(factor, diagonal) with positive variances, or a dense matrix."
        )
    return noise.diagonal


def _require_positive_definite(noise: lx.AbstractLinearOperator) -> None:
    """Raise if a concrete ``R`` is singular (the Woodbury path divides by ``sqrt(R)``).

    Traced values cannot be inspected at trace time and pass through.
    """
    structure = noise_structure(noise)
    if structure == "diagonal":
        values = concrete_value(_noise_diagonal(noise))
    elif structure == "low_rank":
        assert isinstance(noise, LowRankUpdate)
        values = concrete_value(_require_positive_diagonal(noise))
    else:
        values = concrete_noise_matrix(noise)
        values = None if values is None else np.linalg.eigvalsh(values)
    if values is None:
        return
    if np.any(values <= 0):
        raise ValueError(
            "the observation-noise covariance R must be positive definite for the gain and the "
            f"likelihood; its smallest {'eigenvalue' if structure == 'dense' else 'variance'} is "
            f"{values.min():.3g}. Give every observation a positive variance (a tiny one such as "
            "1e-8 for a near-perfect observation), or mark observations you want ignored as NaN."
        )


def _observed_setup(
    Y: ArrayLike, obs_noise: NoiseLike, obs: ArrayLike | None, *, nonsingular: bool = True
) -> tuple[Array, lx.AbstractLinearOperator, Array | None]:
    """Normalised observed anomalies ``A = Y'/sqrt(N_e-1)`` and ``R``, masked if `obs` is given."""
    check_ensemble(Y, "Y (the observed ensemble H(X))")
    Y = jnp.asarray(Y)
    n_y = Y.shape[1]
    anomalies = ensemble_anomalies(Y, normalized=True)
    noise = as_noise_operator(obs_noise, n_y, dtype=anomalies.dtype)
    if nonsingular:
        # Checked before masking, which would give the missing rows a unit diagonal.
        _require_positive_definite(noise)
    mask = None
    if obs is not None:
        check_vector(obs, "obs (the observation vector)", n_y)
        mask = observation_mask(obs)
        anomalies = mask_anomalies(anomalies, mask)
        noise = mask_noise(noise, mask)
    return anomalies, noise, mask


def _innovation_woodbury(
    anomalies: Float[Array, "N_e N_y"], noise: lx.AbstractLinearOperator
) -> Woodbury:
    """Factorise ``S = A^T A + R`` as ``L (I + W W^T) L^T`` with ``A`` leading the factor.

    ``R = L (I + U~ U~^T) L^T`` is the noise's `Whitening` (chosen by operator type through the
    `noise_whitening` registry: diagonal, low-rank plus diagonal, dense, or any registered
    structure), and ``W = [L^{-1} A^T, U~]``. The first ``N_e`` columns of ``W`` are always the
    ensemble's, which `Woodbury.gain_rows` relies on.
    """
    return Woodbury.from_whitening(noise_whitening(noise, anomalies.dtype), anomalies.T)


def _innovation_operator(
    anomalies: Float[Array, "N_e N_y"], noise: lx.AbstractLinearOperator
) -> lx.AbstractLinearOperator:
    dtype = anomalies.dtype
    structure = noise_structure(noise)
    if structure == "diagonal":
        return LowRankUpdate(anomalies.T, _noise_diagonal(noise).astype(dtype))
    if structure == "low_rank":
        assert isinstance(noise, LowRankUpdate)
        factor = jnp.concatenate([anomalies.T, noise.factor.astype(dtype)], axis=1)
        diagonal = None if noise.diagonal is None else noise.diagonal.astype(dtype)
        return LowRankUpdate(factor, diagonal)
    matrix = jnp.matmul(anomalies.T, anomalies, precision=_HIGHEST) + noise.as_matrix()
    return lx.MatrixLinearOperator(matrix.astype(dtype), _DENSE_TAGS)


def innovation_covariance(
    Y: Float[ArrayLike, "N_e N_y"],
    obs_noise: NoiseLike,
    *,
    obs: Float[ArrayLike, " N_y"] | None = None,
) -> lx.AbstractLinearOperator:
    r"""The innovation covariance ``S = C^HH + R`` as a structured lineax operator.

    $$S = (N_e - 1)^{-1} Y'^\top Y' + R.$$

    - diagonal ``R``: ``LowRankUpdate(Y'^T / sqrt(N_e - 1), diag(R))``;
    - ``R = diag(d) + U U^T``: ``LowRankUpdate([Y'^T / sqrt(N_e - 1), U], d)``;
    - dense ``R``: ``lx.MatrixLinearOperator(C^HH + R)`` tagged symmetric positive
      semidefinite.

    **Arguments:**

    - `Y`: the observed ensemble ``H(X_j)``, shape ``(N_e, N_y)``.
    - `obs_noise`: ``R`` in any form `as_noise_operator` accepts (operator, scalar, variances,
        matrix).
    - `obs`: optional observation vector; its NaN entries are treated as missing (rows and
        columns of ``S`` replaced by the identity's, see `mask_noise`).

    **Returns:** the ``(N_y, N_y)`` operator ``S``.

    **Reference:** Evensen (2009), §9.2; Houtekamer & Mitchell (2001), eq. 3. DAPPER:
    ``C = Y.T @ Y + R.full * (N - 1)`` in ``EnKF_analysis`` (dense, scaled).

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import innovation_covariance

        Y = jax.random.normal(jax.random.key(0), (10, 4))
        S = innovation_covariance(Y, 0.5)   # LowRankUpdate(Y'^T/3, 0.5 * ones(4))
        S.logdet()
        ```
    """
    anomalies, noise, _ = _observed_setup(Y, obs_noise, obs, nonsingular=False)
    return _innovation_operator(anomalies, noise)


def kalman_gain(
    X: Float[ArrayLike, "N_e N_x"],
    Y: Float[ArrayLike, "N_e N_y"],
    obs_noise: NoiseLike,
    *,
    obs: Float[ArrayLike, " N_y"] | None = None,
) -> Float[Array, "N_x N_y"]:
    r"""The ensemble Kalman gain, via Woodbury (never forming an ``N_y x N_y`` inverse).

    $$K = C^{xH}(C^{HH} + R)^{-1} = B^\top (I + W^\top W)^{-1} W^\top L^{-1},$$

    with ``B = X'/sqrt(N_e-1)``, ``A = Y'/sqrt(N_e-1)``, ``R = L L^T`` and ``W = L^{-1} A^T``
    (push-through identity ``A S^{-1} = (I + W^T W)^{-1} W^T L^{-1}``). Cost: diagonal or
    low-rank-plus-diagonal ``R``: ``O(N_e^2 N_y + N_e^3 + N_x N_e N_y)`` (with ``N_e + k`` for a
    rank-``k`` ``R``); dense ``R``: one ``O(N_y^3)`` Cholesky of ``R`` for the whitening, then
    the same. Valid for ``N_y`` smaller than, equal to or larger than ``N_e``.

    **Arguments:**

    - `X`: the forecast state ensemble, shape ``(N_e, N_x)``.
    - `Y`: the observed ensemble ``H(X_j)``, shape ``(N_e, N_y)``.
    - `obs_noise`: ``R`` in any form `as_noise_operator` accepts.
    - `obs`: optional observation vector, used only for its NaN mask: the gain's columns at
        missing entries are exactly zero, the others equal the gain of the observed subset.

    **Returns:** the gain, shape ``(N_x, N_y)``.

    **Reference:** Evensen (1994), *JGR* 99(C5); Burgers, van Leeuwen & Evensen (1998),
    *MWR* 126. DAPPER: ``KG = A.T @ Y @ tinv(C)`` in ``EnKF_analysis``;
    EnsembleKalmanProcesses.jl: ``cov_ug * inv(cov_gg + Γ)`` in ``eki_update``.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import kalman_gain

        X = jax.random.normal(jax.random.key(0), (20, 5))
        Y = X[:, ::2]                     # observe every other component
        K = kalman_gain(X, Y, 0.1)        # (5, 3)
        ```
    """
    check_ensemble(X, "X (the state ensemble)")
    check_ensemble(Y, "Y (the observed ensemble H(X))")
    check_same_members(X, Y, "X (the state ensemble)", "Y (the observed ensemble)")
    X = jnp.asarray(X)
    Y = jnp.asarray(Y)
    dtype = jnp.result_type(X, Y)
    x_anomalies = ensemble_anomalies(X.astype(dtype), normalized=True)
    y_anomalies, noise, _ = _observed_setup(Y.astype(dtype), obs_noise, obs)
    woodbury = _innovation_woodbury(y_anomalies, noise)
    ensemble_gain = woodbury.gain_rows(Y.shape[0])  # A S^{-1}, (N_e, N_y)
    return jnp.matmul(x_anomalies.T, ensemble_gain, precision=_HIGHEST)
