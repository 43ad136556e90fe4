r"""Gradient-safe functions of a symmetric positive-semidefinite matrix (one implementation).

Ensemble methods keep needing ``F(M) = U f(\Lambda) U^\top`` of a PSD Gram matrix
``M = U \Lambda U^\top``: the symmetric square-root transform ``(I + M)^{-1/2}`` of the ETKF
family, its push-through form, square roots and pseudo-inverses in the smoothers. These Gram
matrices almost always have repeated eigenvalues (``0`` with multiplicity ``N_e - rank``
whenever the data dimension is below ``N_e - 1``; ``M = 0`` when a time step is zero), where
differentiating ``jnp.linalg.eigh`` gives NaN: its derivative contains ``1 / (lambda_i -
lambda_j)``. The Fréchet derivative of a matrix function is regular anyway (Daleckii & Krein
1965):

$$dF = U\big(D \circ (U^\top dM\, U)\big)U^\top,\qquad
D_{ij} = \frac{f(\lambda_i) - f(\lambda_j)}{\lambda_i - \lambda_j}\ (\lambda_i \ne \lambda_j),
\quad D_{ii} = f'(\lambda_i).$$

`symmetric_matrix_function` is ONE `jax.custom_jvp` that returns exactly this derivative, with
the divided differences in closed, cancellation-free form for every supported ``f`` (write
``a = sqrt(1 + lambda)``):

- ``"inv_sqrt_one_plus"``: ``f(l) = (1 + l)^{-1/2}``, ``D_ij = -1 / (a_i a_j (a_i + a_j))``;
- ``"inv_sqrt_one_plus_push"``: ``f(l) = ((1 + l)^{-1/2} - 1) / l = -1 / (a (1 + a))``,
  ``D_ij = (1 + a_i + a_j) / ((a_i + a_j) a_i (1 + a_i) a_j (1 + a_j))``;
- ``"sqrt"``: ``f(l) = sqrt(max(l, 0))``, ``D_ij = 1 / (sqrt(l_i) + sqrt(l_j))`` (eigenvalues
  floored at ``1e-12 l_max`` in the derivative);
- ``"pinv"``: ``f(l) = 1/l`` above ``rcond l_max``, else 0; fixed-rank ``D_ij``:
  ``-1/(l_i l_j)`` (both kept), ``1/l_i^2`` (one kept), 0 (none kept).

The first two are smooth and bounded for ``l >= 0``, so the JVP (and by transposition the VJP)
is finite and exact for any PSD input. The square root's derivative is unbounded at ``l = 0``
and is floored there; the pseudo-inverse's is that of a pseudo-inverse of fixed rank (Golub &
Pereyra 1973). First derivatives are exact; second derivatives differentiate `eigh` inside the
rule and are not guaranteed at repeated eigenvalues.

**Rank-N_y spectrum trick.** For ``S`` of shape ``(N_e, m)`` with ``m < N_e``,
``(I_{N_e} + S S^\top)^{-1/2} = I + S\, g(S^\top S)\, S^\top`` with ``g`` the push-through
function: an ``m x m`` eigenproblem instead of ``N_e x N_e`` (with the thin SVD
``S = U s V^T`` both sides equal ``I + U [(1 + s^2)^{-1/2} - 1] U^T``).

**References:** Daleckii & Krein (1965), *Integration and differentiation of functions of
Hermitian operators*; Higham (2008), *Functions of Matrices*, Thm 3.11 and eq. (6.35);
Golub & Pereyra (1973), *SIAM J. Numer. Anal.* 10; Hunt, Kostelich & Szunyogh (2007),
*Physica D* 230.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from ._linalg import matmul

__all__ = [
    "SpectralKind",
    "default_pinv_rcond",
    "inverse_sqrt_one_plus",
    "pinv_psd",
    "sqrt_psd",
    "symmetric_matrix_function",
]

SpectralKind: TypeAlias = Literal["inv_sqrt_one_plus", "inv_sqrt_one_plus_push", "sqrt", "pinv"]
SpectralMethod: TypeAlias = Literal["eigh", "newton"]
_KINDS = ("inv_sqrt_one_plus", "inv_sqrt_one_plus_push", "sqrt", "pinv")
_METHODS = ("eigh", "newton")


def _symmetrise(m: Array) -> Array:
    return 0.5 * (m + m.T)


def _one_plus_root(lam: Array) -> Array:
    # f and g are analytic on lambda > -1; the clamp only keeps round-off in a near-singular
    # Gram matrix from ever reaching the branch point (inputs are PSD, so it is inactive).
    return jnp.sqrt(1.0 + jnp.maximum(lam, -0.5))


# One frozen (hashable) description per function: the custom_jvp takes it as a static argument.


@dataclasses.dataclass(frozen=True)
class _InvSqrtOnePlus:
    def values(self, lam: Array) -> Array:
        return 1.0 / _one_plus_root(lam)

    def divided_differences(self, lam: Array) -> Array:
        a = _one_plus_root(lam)
        ai, aj = a[:, None], a[None, :]
        return -1.0 / (ai * aj * (ai + aj))


@dataclasses.dataclass(frozen=True)
class _InvSqrtOnePlusPush:
    def values(self, lam: Array) -> Array:
        a = _one_plus_root(lam)
        return -1.0 / (a * (1.0 + a))

    def divided_differences(self, lam: Array) -> Array:
        a = _one_plus_root(lam)
        ai, aj = a[:, None], a[None, :]
        return (1.0 + ai + aj) / ((ai + aj) * ai * (1.0 + ai) * aj * (1.0 + aj))


@dataclasses.dataclass(frozen=True)
class _Sqrt:
    def values(self, lam: Array) -> Array:
        return jnp.sqrt(jnp.maximum(lam, 0.0))

    def divided_differences(self, lam: Array) -> Array:
        # (sqrt(l_i) - sqrt(l_j)) / (l_i - l_j) = 1 / (sqrt(l_i) + sqrt(l_j)): no cancellation.
        # d sqrt(l) = 1/(2 sqrt(l)) is unbounded at l = 0: floor (in the derivative only).
        floor = 1e-12 * jnp.maximum(jnp.max(lam), jnp.finfo(lam.dtype).tiny)
        safe = jnp.sqrt(jnp.maximum(lam, floor))
        return 1.0 / (safe[:, None] + safe[None, :])


@dataclasses.dataclass(frozen=True)
class _PseudoInverse:
    rcond: float

    def _kept(self, lam: Array) -> tuple[Array, Array]:
        keep = lam > self.rcond * jnp.max(lam)
        return keep, jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)

    def values(self, lam: Array) -> Array:
        return self._kept(lam)[1]

    def divided_differences(self, lam: Array) -> Array:
        # Fixed-rank divided differences of 1/l on the kept eigenvalues, 0 on the rest:
        # kept-kept -1/(l_i l_j); kept-null 1/l_i^2 (null eigenvalues count as exactly 0);
        # null-null 0 -- the eigenbasis entries of Golub & Pereyra's
        # dA^+ = -A^+ dA A^+ + (A^+)^2 dA P_N + P_N dA (A^+)^2.
        keep, inv = self._kept(lam)
        ki, kj = keep[:, None], keep[None, :]
        fi, fj = inv[:, None], inv[None, :]
        return jnp.where(ki & kj, -fi * fj, jnp.where(ki, fi * fi, jnp.where(kj, fj * fj, 0.0)))


_Function: TypeAlias = _InvSqrtOnePlus | _InvSqrtOnePlusPush | _Sqrt | _PseudoInverse


def _newton_schulz_inv_sqrt(m: Array) -> Array:
    # Coupled Newton-Schulz iteration (Higham 2008, eq. (6.35), stable unlike the uncoupled
    # one for condition numbers > ~2.4) for A^{1/2}, A^{-1/2} with A = alpha^2 (I + M):
    #   P = (3I - Z Y)/2,  Y <- Y P,  Z <- P Z,  Y_0 = A, Z_0 = I.
    # With b = ||M||_F >= lambda_max(M) (M is PSD) and alpha^2 = 2 / (2 + b) the spectrum of A
    # lies in [2/(2+b), 2(1+b)/(2+b)], inside (0, 2), where the iteration converges (any b;
    # quadratically once ||I - Z Y|| < 1; about log_{2.25}(b) + 4 steps). Stop once
    # max|I - Z Y| <= sqrt(eps) and take one last Z-step: error ~ 0.75 (sqrt(eps))^2 < eps.
    # Three batched matmuls a step: for small matrices far cheaper on CPU than LAPACK syevd,
    # whose per-matrix cost dominates batched `eigh` (LETKF: one N_e x N_e matrix per point).
    n = m.shape[-1]
    dtype = m.dtype
    eye = jnp.eye(n, dtype=dtype)
    m = _symmetrise(m)
    b = jnp.sqrt(jnp.sum(m * m))
    alpha2 = 2.0 / (2.0 + b)
    a = alpha2 * (eye + m)
    stop = math.sqrt(float(jnp.finfo(dtype).eps))

    def error(w: Array) -> Array:
        return jnp.max(jnp.abs(w - eye))

    def cond(state):
        _, _, w, k = state
        # NaN input: the comparison is False and the loop ends (NaN propagates to the output).
        return (error(w) > stop) & (k < _NEWTON_MAX_STEPS)

    def body(state):
        y, z, w, k = state
        p = 1.5 * eye - 0.5 * w
        y, z = matmul(y, p), matmul(p, z)
        return y, z, matmul(z, y), k + 1

    _, z, w, _ = lax.while_loop(cond, body, (a, eye, a, jnp.zeros((), jnp.int32)))
    z = matmul(1.5 * eye - 0.5 * w, z)
    return jnp.sqrt(alpha2) * _symmetrise(z)


# Enough for b up to ~1e20 (the smallest eigenvalue of A grows by ~2.25 a step).
_NEWTON_MAX_STEPS = 80


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _spectral(fn: _Function, method: str, m: Array) -> Array:
    if method == "newton":
        return _newton_schulz_inv_sqrt(m)
    lam, u = jnp.linalg.eigh(_symmetrise(m), symmetrize_input=False)
    return matmul(u * fn.values(lam)[None, :], u.T)


@_spectral.defjvp
def _spectral_jvp(fn: _Function, method: str, primals: tuple[Array], tangents: tuple[Array]):
    # Whatever computed the primal, the derivative is Daleckii-Krein's from one eigh: the
    # Newton-Schulz loop (a while_loop) is never differentiated, so it is gradient-safe.
    del method
    (m,), (dm,) = primals, tangents
    lam, u = jnp.linalg.eigh(_symmetrise(m), symmetrize_input=False)
    out = matmul(u * fn.values(lam)[None, :], u.T)
    inner = matmul(u.T, matmul(_symmetrise(dm), u))
    dout = matmul(u, matmul(fn.divided_differences(lam) * inner, u.T))
    return out, dout


def default_pinv_rcond(n: int, dtype: Any) -> float:
    """The default relative eigenvalue threshold of `pinv_psd`: ``10 n eps(dtype)``.

    The eigenvalues of a Gram matrix ``F F^T`` computed in floating point carry an absolute
    error of about ``n eps lambda_max``, so eigenvalues below this are indistinguishable from
    zero (in singular values of ``F``: below ``sqrt(10 n eps) sigma_max``, ~1e-7 relative in
    float64 for ``n = 10``).

    **Arguments:** `n`, the matrix size; `dtype`, its floating dtype.

    **Returns:** the Python float ``10 n eps``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import default_pinv_rcond

        default_pinv_rcond(10, jnp.float64)  # 2.2e-14
        ```
    """
    return 10.0 * n * float(np.finfo(jnp.dtype(dtype)).eps)


def _check_square(m: ArrayLike, name: str) -> Array:
    m = jnp.asarray(m)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(
            f"{name} needs a square (n, n) matrix; got shape {m.shape}. For a batch of "
            "matrices, jax.vmap it."
        )
    if not jnp.issubdtype(m.dtype, jnp.floating):
        raise TypeError(
            f"{name} needs a floating matrix; got dtype {m.dtype}. Cast it with "
            ".astype(jnp.float64) or .astype(jnp.float32)."
        )
    return m


def symmetric_matrix_function(
    m: ArrayLike,
    kind: SpectralKind,
    method: SpectralMethod = "eigh",
    *,
    rcond: float | None = None,
) -> Float[Array, "n n"]:
    r"""A function of a symmetric PSD matrix whose derivative is finite at repeated eigenvalues.

    $$F(M) = U f(\Lambda) U^\top, \qquad M = U \Lambda U^\top,$$

    with ``f`` chosen by `kind` (see the table in the module docstring):
    ``"inv_sqrt_one_plus"`` ``(1 + l)^{-1/2}``; ``"inv_sqrt_one_plus_push"``
    ``((1 + l)^{-1/2} - 1)/l`` (continuous at ``l = 0`` where it is ``-1/2``; the core of the
    rank-N_y trick ``(I + S S^T)^{-1/2} = I + S g(S^T S) S^T``); ``"sqrt"`` ``sqrt(l)``
    (negative round-off clipped); ``"pinv"`` ``1/l`` above ``rcond * l_max``, else 0. The
    derivative is the Daleckii–Krein formula with closed-form divided differences, so
    `jax.grad` / `jax.jvp` through it are finite (a plain `eigh` gives NaN at repeated
    eigenvalues). Works under `jit` and `vmap`.

    **Arguments:**

    - `m`: a symmetric PSD ``(n, n)`` matrix (symmetrised here).
    - `kind`: which function (static string, above).
    - `method`: how the value is computed (static): ``"eigh"`` (default), or ``"newton"``
        (``kind="inv_sqrt_one_plus"`` only): a coupled Newton–Schulz iteration run to round-off
        (``lax.while_loop``, three matmuls a step, about ``log(||M||) + 4`` steps), much faster
        than a batched `eigh` of many small matrices on CPU. Derivatives are the same
        eigh-based rule for both methods (the loop is never differentiated).
    - `rcond`: ``kind="pinv"`` only: the relative eigenvalue threshold (static float;
        ``None``: `default_pinv_rcond` ``(n, dtype)``).

    **Returns:** ``F(M)``, symmetric ``(n, n)``.

    **Raises:** `ValueError` for a non-square matrix, an unknown `kind`/`method`, or
    ``method="newton"`` with another kind; `TypeError` for a non-floating matrix.

    **Reference:** Daleckii & Krein (1965); Higham (2008), *Functions of Matrices*, Thm 3.11.
    DAPPER computes the same values by SVD (``EnKF_analysis``, ``'svd'`` branch) without a
    derivative.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.primitives import symmetric_matrix_function

        m = jnp.zeros((3, 3))  # triple eigenvalue 0: eigh's own gradient is NaN here
        jax.grad(lambda t: symmetric_matrix_function(t * m + t * jnp.eye(3),
                                                     "inv_sqrt_one_plus").sum())(1.0)
        ```
    """
    m = _check_square(m, "symmetric_matrix_function")
    if kind not in _KINDS:
        raise ValueError(
            f"symmetric_matrix_function(kind=...) must be one of {_KINDS}; got {kind!r}."
        )
    if method not in _METHODS:
        raise ValueError(
            f"symmetric_matrix_function(method=...) must be one of {_METHODS}; got {method!r}."
        )
    if method == "newton" and kind != "inv_sqrt_one_plus":
        raise ValueError(
            f"method='newton' supports kind='inv_sqrt_one_plus' only; got {kind!r}. Use "
            "method='eigh'."
        )
    if rcond is not None and kind != "pinv":
        raise ValueError(f"`rcond` applies to kind='pinv' only; got kind={kind!r}.")
    fn: _Function
    if kind == "inv_sqrt_one_plus":
        fn = _InvSqrtOnePlus()
    elif kind == "inv_sqrt_one_plus_push":
        fn = _InvSqrtOnePlusPush()
    elif kind == "sqrt":
        fn = _Sqrt()
    else:
        if rcond is None:
            rcond = default_pinv_rcond(m.shape[-1], m.dtype)
        fn = _PseudoInverse(float(rcond))
    return _spectral(fn, method, m)


def inverse_sqrt_one_plus(m: ArrayLike, method: SpectralMethod = "eigh") -> Float[Array, "n n"]:
    r"""``(I + M)^{-1/2}`` for a symmetric PSD ``M``, with a derivative that is finite and exact
    at repeated eigenvalues.

    $$F(M) = U \operatorname{diag}\big((1 + \lambda_i)^{-1/2}\big) U^\top,\qquad
    M = U \Lambda U^\top,$$

    the symmetric inverse square root of ETKF-type transforms (Hunt et al. 2007 eq. 24; the
    ETKI / deterministic EKI update): `symmetric_matrix_function` with
    ``kind="inv_sqrt_one_plus"``. The JVP is the Daleckii–Krein formula with divided
    differences ``-1 / (a_i a_j (a_i + a_j))``, ``a = sqrt(1 + lambda)``, so `jax.grad`
    through it is finite for any PSD input, including ``M = 0`` and rank-deficient Gram
    matrices.

    **Arguments:**

    - `m`: a symmetric positive-semidefinite ``(n, n)`` matrix.
    - `method`: ``"eigh"`` (default) or ``"newton"`` (see `symmetric_matrix_function`).

    **Returns:** the symmetric ``(n, n)`` matrix ``(I + M)^{-1/2}``. If ``M 1 = 0`` (a Gram
    matrix of centred anomalies) then ``F 1 = 1``.

    **Reference:** Hunt, Kostelich & Szunyogh (2007), *Physica D* 230, eq. (24); DAPPER
    ``EnKF_analysis`` (``upd_a="Sqrt"``): ``T = (V * d**(-0.5)) @ V.T``.

    !!! Example

        ```python
        import jax
        from filterax.primitives import inverse_sqrt_one_plus

        Y = jax.random.normal(jax.random.key(0), (20, 3))
        Y = Y - Y.mean(axis=0)
        T = inverse_sqrt_one_plus(Y @ Y.T)  # rank-3 Gram: 17 repeated zero eigenvalues
        jax.grad(lambda s: inverse_sqrt_one_plus(s * Y @ Y.T).sum())(1.0)  # finite
        ```
    """
    m = _check_square(m, "inverse_sqrt_one_plus")
    return symmetric_matrix_function(m, "inv_sqrt_one_plus", method)


def sqrt_psd(m: ArrayLike) -> Float[Array, "n n"]:
    r"""The symmetric square root ``M^{1/2} = U \Lambda^{1/2} U^T`` of a PSD matrix.

    $$M^{1/2} = U \operatorname{diag}\big(\sqrt{\max(\lambda_i, 0)}\big) U^\top.$$

    Negative round-off eigenvalues are clipped to zero. The derivative uses the divided
    differences ``1 / (sqrt(l_i) + sqrt(l_j))`` with the eigenvalues floored at
    ``1e-12 lambda_max`` (only in the derivative), so it is finite at repeated and at zero
    eigenvalues (`symmetric_matrix_function` with ``kind="sqrt"``).

    **Arguments:**

    - `m`: symmetric PSD ``(n, n)`` (symmetrised here).

    **Returns:** ``M^{1/2}``, symmetric ``(n, n)``; if ``M 1 = 1`` then ``M^{1/2} 1 = 1``.

    **Reference:** Higham (2008), *Functions of Matrices*, §6.1; DAPPER ``mrdiv``/``sqrtm_psd``
    (``tools.linalg``) computes the value by ``eigh`` the same way.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import sqrt_psd

        sqrt_psd(jnp.diag(jnp.array([4.0, 0.0])))  # diag([2, 0]); its gradient is finite
        ```
    """
    m = _check_square(m, "sqrt_psd")
    return symmetric_matrix_function(m, "sqrt")


def pinv_psd(m: ArrayLike, rcond: float | None = None) -> Float[Array, "n n"]:
    r"""Pseudo-inverse of a symmetric PSD matrix with a relative eigenvalue threshold.

    $$M^+ = U\,\mathrm{diag}\big(\lambda_i^{-1}\,[\lambda_i > \text{rcond}\,\lambda_{\max}]\big)\,
    U^\top.$$

    The derivative is that of a pseudo-inverse of fixed rank (Golub & Pereyra 1973), finite
    at repeated eigenvalues (`symmetric_matrix_function` with ``kind="pinv"``).

    **Arguments:**

    - `m`: symmetric PSD ``(n, n)`` (symmetrised here).
    - `rcond`: relative threshold on the eigenvalues (static); ``None`` means
        `default_pinv_rcond` ``(n, dtype)``.

    **Returns:** ``M^+``, ``(n, n)``. A zero matrix gives zero.

    **Reference:** Golub & Pereyra (1973), *SIAM J. Numer. Anal.* 10; DAPPER ``tinv`` (SVD
    with a relative threshold).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import pinv_psd

        pinv_psd(jnp.diag(jnp.array([4.0, 0.0])))  # diag([0.25, 0])
        ```
    """
    m = _check_square(m, "pinv_psd")
    return symmetric_matrix_function(m, "pinv", rcond=rcond)
