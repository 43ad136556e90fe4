r"""Square-root transform algebra shared by the deterministic ensemble filters.

Every deterministic square-root filter ends in the same place: an ``N_e x N_e`` transform
``T`` with ``T T^T = (I + S S^T)^{-1}`` applied to the forecast anomalies, where
``S = Y' R^{-1/2 T} / sqrt(N_e - 1)`` are the whitened, normalised observed anomalies. The
symmetric choice ``T = (I + S S^T)^{-1/2}`` (Hunt et al. 2007) is a matrix function of a
symmetric positive-semidefinite Gram matrix, and computing it by `jnp.linalg.eigh` breaks
reverse-mode autodiff: the eigenvector derivative contains ``1 / (lambda_i - lambda_j)``, and
``S S^T`` *always* has repeated eigenvalues (``0`` with multiplicity ``N_e - rank(S)`` as soon as
``N_y < N_e - 1``, the ensemble is rank deficient, or observations are missing).

**The gradient-safe design used here.** A matrix function ``F(M) = U f(Lambda) U^T`` has a
perfectly regular Fréchet derivative even at repeated eigenvalues (Daleckii & Krein 1965):

$$dF = U\,\big(D \circ (U^\top dM\, U)\big)\,U^\top, \qquad
D_{ij} = \frac{f(\lambda_i) - f(\lambda_j)}{\lambda_i - \lambda_j}\ (\lambda_i \ne \lambda_j),
\quad D_{ii} = f'(\lambda_i).$$

Only the *eigenvalue divided differences* appear, never ``1 / (lambda_i - lambda_j)`` on its
own. `filterax.primitives.symmetric_matrix_function` is the one `jax.custom_jvp` that returns
exactly this derivative, and for the two functions the filters need (kinds
``"inv_sqrt_one_plus"`` and ``"inv_sqrt_one_plus_push"``) the divided differences have closed
forms with no cancellation (write ``a = sqrt(1 + lambda)``):

- ``f(l) = (1 + l)^{-1/2}``: ``D_ij = -1 / (a_i a_j (a_i + a_j))``;
- ``g(l) = ((1 + l)^{-1/2} - 1) / l = -1 / (a (1 + a))`` (the "push-through" function):
  ``D_ij = (1 + a_i + a_j) / ((a_i + a_j) a_i (1 + a_i) a_j (1 + a_j))``.

Both are smooth and bounded for ``l >= 0``, so the JVP (and by transposition the VJP) is finite
and exact for any PSD input, degenerate or not. The **rank-N_y spectrum trick** then chooses the
smaller Gram matrix: for ``N_y < N_e``,

$$(I_{N_e} + S S^\top)^{-1/2} = I_{N_e} + S\, g(S^\top S)\, S^\top,$$

an ``N_y x N_y`` eigenproblem (identity valid for any ``S``: with the thin SVD ``S = U s V^T``
both sides equal ``I + U [(1 + s^2)^{-1/2} - 1] U^T``), and for ``N_y >= N_e`` the
``N_e x N_e`` matrix ``f(S S^T)`` directly. First derivatives are exact; second derivatives
differentiate through `eigh` inside the JVP rule and are not guaranteed at repeated eigenvalues.

Alternatives considered: Newton–Schulz / Denman–Beavers iterations for the *derivative*
(iteration count depends on the conditioning, and need an unrolled loop to differentiate; the
value of ``f`` may still be computed by a coupled Newton–Schulz loop, ``method="newton"``,
with the derivative from the rule above), and a
Cholesky-based root (gradient-safe but not symmetric, so it is not Hunt's ETKF and it rotates
the ensemble).

**References:** Daleckii & Krein (1965), *Integration and differentiation of functions of
Hermitian operators*; Higham (2008), *Functions of Matrices*, Thm 3.11; Hunt, Kostelich &
Szunyogh (2007), *Physica D* 230; Nerger et al. (2012), *MWR* 140; Livings, Dance & Nichols
(2008), *Physica D* 237.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from filterax.primitives import matmul, symmetric_matrix_function

__all__ = [
    "TransformInfo",
    "apply_transform",
    "full_transform",
    "matmul",
    "mean_preserving_basis",
    "sqrt_transform",
]


def sqrt_transform(S: Float[Array, "N_e m"], method: str = "eigh") -> Float[Array, "N_e N_e"]:
    r"""The symmetric square-root transform ``T = (I + S S^T)^{-1/2}`` by the rank-N_y trick.

    $$T = \begin{cases} I + S\, g(S^\top S)\, S^\top & m < N_e \\
    f(S S^\top) & m \ge N_e \end{cases}$$

    with ``f(l) = (1 + l)^{-1/2}`` and ``g(l) = (f(l) - 1)/l`` the kinds
    ``"inv_sqrt_one_plus"`` / ``"inv_sqrt_one_plus_push"`` of
    `filterax.primitives.symmetric_matrix_function`. Eigen-work is on the smaller of the two
    Gram matrices, ``min(m, N_e)^3``, and gradients are finite at repeated singular values.

    **Arguments:**

    - `S`: whitened normalised observed anomalies, shape ``(N_e, m)``.
    - `method`: how ``f(S S^T)`` is computed when ``m >= N_e`` (static): ``"eigh"`` or
      ``"newton"`` (the coupled Newton–Schulz iteration of `symmetric_matrix_function`, run to
      round-off; batched matmuls, about twice as fast as a small LAPACK ``eigh`` on CPU). The
      ``m < N_e`` path always uses ``eigh`` of the ``m x m`` Gram matrix. Same derivatives.

    **Returns:** the symmetric ``(N_e, N_e)`` transform. If the rows of ``S`` sum to zero
    (anomalies) then ``T 1 = 1``, so ``T`` preserves the ensemble mean.

    **Reference:** Hunt, Kostelich & Szunyogh (2007), eq. (24); DAPPER ``EnKF_analysis``
    (``upd_a="Sqrt"``, ``'svd'`` branch): ``T = (V * d**(-0.5)) @ V.T * sqrt(N1)``.

    !!! Example

        ```python
        import jax
        from filterax.filters import sqrt_transform

        S = jax.random.normal(jax.random.key(0), (10, 3))
        T = sqrt_transform(S - S.mean(axis=0))  # (10, 10), T @ 1 = 1
        ```
    """
    n_e, m = S.shape
    if m < n_e:
        core = symmetric_matrix_function(matmul(S.T, S), "inv_sqrt_one_plus_push")
        return jnp.eye(n_e, dtype=S.dtype) + matmul(S, matmul(core, S.T))
    return symmetric_matrix_function(matmul(S, S.T), "inv_sqrt_one_plus", method)


def apply_transform(
    mean: Float[Array, " N_x"],
    anomalies: Float[Array, "N_e N_x"],
    weights: Float[Array, " N_e"],
    transform: Float[Array, "N_e N_e"],
) -> Float[Array, "N_e N_x"]:
    r"""Assemble an analysis ensemble from mean weights and an anomaly transform.

    $$X^a = \mathbf 1 (\bar x + X'^\top w / \sqrt{N_e - 1})^\top + T X'.$$

    **Arguments:**

    - `mean`: forecast mean ``(N_x,)``; `anomalies`: unnormalised forecast anomalies ``X'``.
    - `weights`: mean-update weights ``w`` in normalised ensemble space.
    - `transform`: the anomaly transform ``T``.

    **Returns:** the ``(N_e, N_x)`` analysis ensemble.

    **Reference:** DAPPER ``EnKF_analysis``: ``E = mu + w @ A + T @ A``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.filters import apply_transform

        X = jnp.arange(6.0).reshape(3, 2)
        mean = X.mean(axis=0)
        apply_transform(mean, X - mean, jnp.zeros(3), jnp.eye(3))  # == X
        ```
    """
    n_e = anomalies.shape[0]
    mean_a = mean + matmul(weights, anomalies) / math.sqrt(n_e - 1)
    return mean_a[None, :] + matmul(transform, anomalies)


def full_transform(
    weights: Float[Array, " N_e"], transform: Float[Array, "N_e N_e"]
) -> Float[Array, "N_e N_e"]:
    r"""The right-acting ensemble transform ``E`` with ``X^a = E X^f`` (rows are members).

    $$E = \tfrac1{N_e}\mathbf 1\mathbf 1^\top
    + \big(T + \mathbf 1 w^\top/\sqrt{N_e-1}\big)\,\Pi, \qquad \Pi = I - \tfrac1{N_e}\mathbf 1
    \mathbf 1^\top.$$

    Smoothers apply the same ``E`` to lagged ensembles (the EnKS / "ensemble transform" view).

    **Arguments:** `weights` ``w`` and `transform` ``T`` as in `apply_transform`.

    **Returns:** ``E``, ``(N_e, N_e)``.

    **Reference:** Evensen & van Leeuwen (2000), *MWR* 128 (the EnKS as a right-multiplication);
    DAPPER ``EnKS`` applies the same ``T`` to the lagged ensembles.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.filters import full_transform

        full_transform(jnp.zeros(3), jnp.eye(3))  # identity: no update
        ```
    """
    n_e = transform.shape[0]
    dtype = transform.dtype
    ones = jnp.full((n_e, n_e), 1.0 / n_e, dtype=dtype)
    centring = jnp.eye(n_e, dtype=dtype) - ones
    per_member = transform + jnp.ones((n_e, 1), dtype) * weights[None, :] / math.sqrt(n_e - 1)
    return ones + matmul(per_member, centring)


def mean_preserving_basis(n: int, dtype) -> Float[Array, "n n_minus_1"]:
    r"""Nerger's projection ``Omega``: ``n - 1`` orthonormal columns orthogonal to ``1``.

    $$\Omega_{ij} = \delta_{ij} - \frac{1}{n}\frac{1}{1/\sqrt n + 1}\ (i < n), \qquad
    \Omega_{nj} = -\frac1{\sqrt n}.$$

    It is the Householder reflection that maps ``e_n`` to ``-1/sqrt(n)`` with its last column
    dropped, so ``Omega^T Omega = I_{n-1}``, ``Omega^T 1 = 0`` and
    ``Omega Omega^T = I - 1 1^T / n``.

    **Reference:** Nerger, Janjić, Schröter & Hiller (2012), *MWR* 140, eq. (10).
    """
    c = 1.0 / (n * (1.0 / math.sqrt(n) + 1.0))
    top = jnp.eye(n - 1, dtype=dtype) - c
    bottom = jnp.full((1, n - 1), -1.0 / math.sqrt(n), dtype=dtype)
    return jnp.concatenate([top, bottom], axis=0)


class TransformInfo(eqx.Module):
    r"""Diagnostics returned (as ``Analysis.info``) by every deterministic square-root filter.

    **Fields:**

    - `weights`: the mean-update weights ``w`` (``x^a = x^f + X'^T w / sqrt(N_e - 1)``).
    - `transform`: the anomaly transform ``T`` (``X'^a = T X'``), ``(N_e, N_e)``.
    - `ensemble_transform`: ``E`` with ``X^a = E X^f`` (see `full_transform`); smoothers apply
        it to lagged ensembles.
    - `innovation`: ``d = y - mean H(X^f)`` (0 at missing entries).
    - `n_obs`: the number of observed (non-NaN) entries.
    """

    weights: Float[Array, " N_e"]
    transform: Float[Array, "N_e N_e"]
    ensemble_transform: Float[Array, "N_e N_e"]
    innovation: Float[Array, " N_y"]
    n_obs: Array
