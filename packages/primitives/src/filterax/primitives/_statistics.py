"""Ensemble mean, anomalies, covariance and cross-covariance."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from ._lowrank import LowRankUpdate
from ._validation import check_ensemble, check_same_members


def _as_ensemble(x: ArrayLike, name: str) -> Array:
    check_ensemble(x, name)
    return jnp.asarray(x)


def ensemble_mean(X: Float[ArrayLike, "N_e N_x"]) -> Float[Array, " N_x"]:
    r"""The ensemble (sample) mean.

    $$\bar x = N_e^{-1} \sum_{j=1}^{N_e} x^{(j)}.$$

    **Arguments:**

    - `X`: the ensemble, shape ``(N_e, N_x)`` with the ensemble axis first, ``N_e >= 2``.

    **Returns:** the mean state, shape ``(N_x,)``.

    **Reference:** Evensen (2009), *Data Assimilation: The Ensemble Kalman Filter*, §9.1.
    DAPPER: ``E.mean(axis=0)``; EnsembleKalmanProcesses.jl: ``mean(u, dims=2)`` (members are
    columns there).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import ensemble_mean

        ensemble_mean(jnp.array([[0.0, 1.0], [2.0, 3.0]]))  # Array([1., 2.])
        ```
    """
    X = _as_ensemble(X, "X (the ensemble)")
    return jnp.mean(X, axis=0)


def ensemble_anomalies(
    X: Float[ArrayLike, "N_e N_x"], *, normalized: bool = False
) -> Float[Array, "N_e N_x"]:
    r"""The ensemble anomalies (deviations from the ensemble mean).

    $$X' = X - \mathbf{1}\bar x^\top, \qquad \textstyle\sum_j X'_{j\cdot} = 0,$$

    optionally normalised, ``X' / sqrt(N_e - 1)``, so that ``X'^T X'`` is the Bessel-corrected
    sample covariance.

    **Arguments:**

    - `X`: the ensemble, shape ``(N_e, N_x)``, ``N_e >= 2``.
    - `normalized`: divide by ``sqrt(N_e - 1)`` (static Python bool).

    **Returns:** the anomalies, shape ``(N_e, N_x)``; their rows sum to zero.

    **Reference:** Evensen (2009), §9.1. DAPPER: ``center(E)`` / ``mean0(E)`` (unnormalised)
    and the ``A / sqrt(N - 1)`` it forms in ``EnKF_analysis``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import ensemble_anomalies

        X = jnp.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
        A = ensemble_anomalies(X, normalized=True)
        A.T @ A  # == jnp.cov(X.T)
        ```
    """
    X = _as_ensemble(X, "X (the ensemble)")
    anomalies = X - jnp.mean(X, axis=0, keepdims=True)
    if normalized:
        anomalies = anomalies / math.sqrt(X.shape[0] - 1)
    return anomalies


def ensemble_covariance(
    X: Float[ArrayLike, "N_e N_x"], *, dense: bool = False
) -> LowRankUpdate | Float[Array, "N_x N_x"]:
    r"""The Bessel-corrected ensemble covariance, as a low-rank operator.

    $$P_e = (N_e - 1)^{-1} X'^\top X' = U U^\top, \qquad U = X'^\top / \sqrt{N_e - 1},$$

    returned as `LowRankUpdate(U)` (no diagonal; rank ``<= N_e - 1``) so that nothing
    ``N_x x N_x`` is formed unless asked for.

    **Arguments:**

    - `X`: the ensemble, shape ``(N_e, N_x)``, ``N_e >= 2``.
    - `dense`: return the ``(N_x, N_x)`` array instead of the operator (static Python bool).

    **Returns:** a `LowRankUpdate` with factor ``(N_x, N_e)``, or the dense ``(N_x, N_x)``
    matrix, equal to ``numpy.cov(X.T, ddof=1)``.

    **Reference:** Evensen (2009), §9.1 (Bessel correction: the mean is estimated from the same
    members). DAPPER: ``(A.T @ A) / (N - 1)``; EnsembleKalmanProcesses.jl: ``cov(u, dims=2)``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import ensemble_covariance

        X = jnp.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
        P = ensemble_covariance(X)          # LowRankUpdate, rank 3 factor
        P.as_matrix()                       # == jnp.cov(X.T)
        ensemble_covariance(X, dense=True)  # the same matrix directly
        ```
    """
    anomalies = ensemble_anomalies(X, normalized=True)
    if dense:
        return jnp.matmul(anomalies.T, anomalies, precision=lax.Precision.HIGHEST)
    return LowRankUpdate(anomalies.T)


def cross_covariance(
    X: Float[ArrayLike, "N_e N_x"], Y: Float[ArrayLike, "N_e N_y"]
) -> Float[Array, "N_x N_y"]:
    r"""The Bessel-corrected ensemble cross-covariance between states and predicted observations.

    $$C^{xH} = (N_e - 1)^{-1} X'^\top (HX)'.$$

    For a linear ``H`` this equals ``P_e H^T``; for a nonlinear ``H`` it is the derivative-free
    statistical linearisation the ensemble Kalman gain uses.

    **Arguments:**

    - `X`: the state ensemble, shape ``(N_e, N_x)``.
    - `Y`: the observed ensemble ``Y_j = H(X_j)``, shape ``(N_e, N_y)``, same members as `X`
        (build it with ``jax.vmap(obs_op)(X)``).

    **Returns:** the ``(N_x, N_y)`` cross-covariance.

    **Reference:** Evensen (2009), §9.2; Houtekamer & Mitchell (2001), *MWR* 129, eq. 2.
    DAPPER: ``A.T @ Y / (N - 1)`` in ``EnKF_analysis``; EnsembleKalmanProcesses.jl:
    ``cov(u, g, dims=2)`` in its EKI update.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import cross_covariance

        X = jax.random.normal(jax.random.key(0), (10, 3))
        Y = jax.vmap(lambda x: x[:2] ** 2)(X)
        cross_covariance(X, Y).shape  # (3, 2)
        ```
    """
    X = _as_ensemble(X, "X (the state ensemble)")
    Y = _as_ensemble(Y, "Y (the observed ensemble H(X))")
    check_same_members(X, Y, "X (the state ensemble)", "Y (the observed ensemble)")
    x_anomalies = ensemble_anomalies(X)
    y_anomalies = ensemble_anomalies(Y)
    cov = jnp.matmul(x_anomalies.T, y_anomalies, precision=lax.Precision.HIGHEST)
    return cov / (X.shape[0] - 1)
