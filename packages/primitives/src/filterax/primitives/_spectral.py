r"""Gradient-safe spectral function of a symmetric positive-semidefinite matrix.

Square-root ensemble updates need ``(I + M)^{-1/2}`` for a PSD Gram matrix ``M`` that almost
always has repeated eigenvalues (``0`` with multiplicity ``N_e - rank`` whenever the data
dimension is below ``N_e - 1``, or ``M = 0`` when a time step is zero). Differentiating
``jnp.linalg.eigh`` there gives NaN (its derivative contains ``1 / (lambda_i - lambda_j)``).
The Fréchet derivative of a matrix function is regular anyway (Daleckii & Krein 1965):

$$dF = U\big(D \circ (U^\top dM\, U)\big)U^\top,\qquad
D_{ij} = \frac{f(\lambda_i) - f(\lambda_j)}{\lambda_i - \lambda_j},\ D_{ii} = f'(\lambda_i),$$

and for ``f(l) = (1 + l)^{-1/2}`` the divided differences have the cancellation-free closed
form ``D_ij = -1 / (a_i a_j (a_i + a_j))`` with ``a = sqrt(1 + l)``.

Reference: Daleckii & Krein (1965); Higham (2008), *Functions of Matrices*, Thm 3.11.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["inverse_sqrt_one_plus"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _sym(m: Array) -> Array:
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def _decompose(m: Array) -> tuple[Array, Array]:
    lam, u = jnp.linalg.eigh(_sym(m))
    # f is analytic for l > -1; negative round-off of a PSD input is clipped to 0.
    return jnp.sqrt(1.0 + jnp.maximum(lam, 0.0)), u


@jax.custom_jvp
def _inverse_sqrt_one_plus(m: Array) -> Array:
    a, u = _decompose(m)
    return _mm(u / a[None, :], u.T)


@_inverse_sqrt_one_plus.defjvp
def _inverse_sqrt_one_plus_jvp(primals, tangents):
    (m,), (dm,) = primals, tangents
    a, u = _decompose(m)
    value = _mm(u / a[None, :], u.T)
    divided = -1.0 / (a[:, None] * a[None, :] * (a[:, None] + a[None, :]))
    inner = _mm(u.T, _mm(_sym(dm), u))
    return value, _mm(u, _mm(divided * inner, u.T))


def inverse_sqrt_one_plus(m: ArrayLike) -> Float[Array, "n n"]:
    r"""``(I + M)^{-1/2}`` for a symmetric PSD ``M``, with a derivative that is finite and exact
    at repeated eigenvalues.

    $$F(M) = U \operatorname{diag}\big((1 + \lambda_i)^{-1/2}\big) U^\top,\qquad
    M = U \Lambda U^\top,$$

    the symmetric inverse square root of ETKF-type transforms (Hunt et al. 2007 eq. 24; the
    ETKI / deterministic EKI update). The value comes from `jnp.linalg.eigh` (``M`` is
    symmetrised; negative round-off eigenvalues are clipped to zero); the JVP is the
    Daleckii–Krein formula with divided differences ``-1 / (a_i a_j (a_i + a_j))``,
    ``a = sqrt(1 + lambda)``, so `jax.grad` through it is finite for any PSD input, including
    ``M = 0`` and rank-deficient Gram matrices (a plain `eigh` derivative is NaN there).
    Second derivatives differentiate `eigh` inside the rule and are not guaranteed at repeated
    eigenvalues. Works under `jit` and `vmap`.

    **Arguments:**

    - `m`: a symmetric positive-semidefinite ``(n, n)`` matrix.

    **Returns:** the symmetric ``(n, n)`` matrix ``(I + M)^{-1/2}``. If ``M 1 = 0`` (a Gram
    matrix of centred anomalies) then ``F 1 = 1``.

    **Example:**

    ```python
    Y = jax.random.normal(jax.random.key(0), (20, 3))
    Y = Y - Y.mean(axis=0)
    T = inverse_sqrt_one_plus(Y @ Y.T)  # rank-3 Gram: 17 repeated zero eigenvalues
    jax.grad(lambda s: inverse_sqrt_one_plus(s * Y @ Y.T).sum())(1.0)  # finite
    ```
    """
    m = jnp.asarray(m)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(
            f"inverse_sqrt_one_plus needs a square (n, n) matrix; got shape {m.shape}. For a "
            "batch of matrices, jax.vmap it."
        )
    if not jnp.issubdtype(m.dtype, jnp.floating):
        raise TypeError(
            f"inverse_sqrt_one_plus needs a floating matrix; got dtype {m.dtype}. Cast it with "
            ".astype(jnp.float64) or .astype(jnp.float32)."
        )
    return _inverse_sqrt_one_plus(m)
