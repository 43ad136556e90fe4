"""The low-rank-plus-diagonal covariance operator ``diag(d) + U U^T`` and its Woodbury algebra.

Ensemble covariances are low rank (``rank <= N_e - 1``) and observation noise is usually
diagonal, so every innovation covariance ``S = C^HH + R`` has this form. Solves and
log-determinants then cost ``O(n k^2 + k^3)`` through the Woodbury identity and the matrix
determinant lemma instead of ``O(n^3)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Scalar

from ._validation import check_nonnegative

_HIGHEST = lax.Precision.HIGHEST


def _matmul(a: Array, b: Array) -> Array:
    # Explicit precision: on GPUs the default may be TF32, far too coarse for covariances.
    return jnp.matmul(a, b, precision=_HIGHEST)


def _float_dtype(*arrays: ArrayLike) -> jnp.dtype:
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                "filterax covariance operators are real; got a complex array. Pass real "
                "floating-point arrays (float32 or float64)."
            )
        dtype = jnp.result_type(float)
    return jnp.dtype(dtype)


class LowRankUpdate(lx.AbstractLinearOperator):
    r"""The symmetric positive-semidefinite operator ``diag(d) + U U^T``.

    $$A = \operatorname{diag}(d) + U U^\top, \qquad U \in \mathbb{R}^{n \times k},\;
    d \in \mathbb{R}^n_{\ge 0}.$$

    It is a genuine `lineax` operator (`mv`, `as_matrix`, `transpose`, all structural
    queries; `lx.linear_solve` works on it through a dense Cholesky), and adds structure-aware
    `logdet` (matrix determinant lemma) and `solve` (Woodbury identity), both
    ``O(n k^2 + k^3)`` and never forming an ``n x n`` matrix. The sample covariance of an
    ensemble is ``LowRankUpdate(X'^T / sqrt(N_e - 1))``; the innovation covariance with diagonal
    noise is ``LowRankUpdate(Y'^T / sqrt(N_e - 1), r)``.

    Symmetry and positive-semidefiniteness hold by construction for a non-negative `diagonal`
    (which is the caller's responsibility under `jit`; concrete values are checked).

    **Arguments:**

    - `factor`: ``U``, shape ``(n, k)``.
    - `diagonal`: ``d``, shape ``(n,)``, or ``None`` for a zero diagonal (a pure low-rank
        operator, singular whenever ``k < n``).

    **Returns:** the operator (an `equinox.Module`, so it passes through `jit`/`vmap`/`grad`).

    **Reference:** Woodbury (1950), *Inverting modified matrices*; the determinant lemma is in
    Harville (1997), *Matrix Algebra from a Statistician's Perspective*, Thm 18.1.1. DAPPER
    stores the same object as the pair (anomalies, ``R``) inside `EnKF_analysis`;
    EnsembleKalmanProcesses.jl forms the dense matrix instead.

    !!! Example

        ```python
        import jax.numpy as jnp
        import lineax as lx
        from filterax.primitives import LowRankUpdate

        op = LowRankUpdate(jnp.ones((5, 2)), jnp.full(5, 0.5))
        op.mv(jnp.ones(5))                    # (diag(d) + U U^T) @ 1
        op.logdet(), op.solve(jnp.ones(5))    # O(n k^2) via Woodbury
        lx.linear_solve(op, jnp.ones(5)).value  # same solve through lineax (dense Cholesky)
        ```
    """

    factor: Float[Array, "n k"]
    diagonal: Float[Array, " n"] | None

    def __init__(
        self,
        factor: Float[ArrayLike, "n k"],
        diagonal: Float[ArrayLike, " n"] | None = None,
    ):
        factor_shape = jnp.shape(factor)
        if len(factor_shape) != 2:
            raise ValueError(
                f"LowRankUpdate(factor=...) must be a 2-D (n, k) array U, so that the operator "
                f"is diag(d) + U U^T; got shape {factor_shape}. For a single direction pass "
                "u[:, None]."
            )
        n = factor_shape[0]
        if diagonal is None:
            dtype = _float_dtype(factor)
            self.factor = jnp.asarray(factor, dtype=dtype)
            self.diagonal = None
            return
        diagonal_shape = jnp.shape(diagonal)
        if diagonal_shape != (n,):
            raise ValueError(
                f"LowRankUpdate(diagonal=...) must be a 1-D array of length n={n} (the number "
                f"of rows of factor); got shape {diagonal_shape}. Pass the diagonal as a vector "
                "(jnp.full(n, value) for a constant), or None for no diagonal."
            )
        check_nonnegative(
            diagonal,
            "LowRankUpdate(diagonal=...) (variances, not standard deviations)",
        )
        dtype = _float_dtype(factor, diagonal)
        self.factor = jnp.asarray(factor, dtype=dtype)
        self.diagonal = jnp.asarray(diagonal, dtype=dtype)

    @property
    def rank(self) -> int:
        """The number of columns ``k`` of the factor (an upper bound on the rank of ``U U^T``)."""
        return self.factor.shape[1]

    @property
    def size(self) -> int:
        """The dimension ``n`` of the (square) operator."""
        return self.factor.shape[0]

    def mv(self, vector):
        out = _matmul(self.factor, _matmul(self.factor.T, vector))
        if self.diagonal is not None:
            out = out + self.diagonal * vector
        return out

    def as_matrix(self):
        matrix = _matmul(self.factor, self.factor.T)
        if self.diagonal is not None:
            matrix = matrix + jnp.diag(self.diagonal)
        return matrix

    def transpose(self):
        return self

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.size,), self.factor.dtype)

    def out_structure(self):
        return self.in_structure()

    def full_diagonal(self) -> Float[Array, " n"]:
        """The diagonal of the whole operator, ``d + rowsum(U * U)``, in ``O(n k)``."""
        out = jnp.sum(self.factor * self.factor, axis=1)
        if self.diagonal is not None:
            out = out + self.diagonal
        return out

    def trace(self) -> Scalar:
        """``tr(diag(d) + U U^T) = sum(d) + ||U||_F^2`` in ``O(n k)``."""
        return jnp.sum(self.full_diagonal())

    def _require_diagonal(self, what: str) -> Array:
        if self.diagonal is None:
            raise ValueError(
                f"LowRankUpdate.{what}() needs a positive `diagonal`: U U^T alone is singular "
                f"whenever k={self.rank} < n={self.size}. Build LowRankUpdate(factor, diagonal) "
                "with positive variances (e.g. the observation-noise variances or a small "
                "nugget), or use lx.linear_solve(op, b) / the dense .as_matrix()."
            )
        return self.diagonal

    def woodbury(self) -> Woodbury:
        """Factorise once for repeated solves: ``Woodbury`` with ``L = diag(sqrt(d))``."""
        diagonal = self._require_diagonal("woodbury")
        return Woodbury.build(self.factor, sqrt_diag=jnp.sqrt(diagonal))

    def logdet(self) -> Scalar:
        r"""``log|diag(d) + U U^T|`` by the matrix determinant lemma.

        $$\log|D + UU^\top| = \sum_i \log d_i + \log|I_k + U^\top D^{-1} U|.$$

        ``O(n k^2 + k^3)``. Requires a positive `diagonal`.
        """
        return self.woodbury().logdet()

    def solve(self, b: Float[ArrayLike, " n *m"]) -> Float[Array, " n *m"]:
        r"""``(diag(d) + U U^T)^{-1} b`` by the Woodbury identity.

        $$(D + UU^\top)^{-1} = D^{-1} - D^{-1}U(I_k + U^\top D^{-1}U)^{-1}U^\top D^{-1}.$$

        `b` may be a vector ``(n,)`` or a matrix ``(n, m)`` of right-hand sides.
        ``O(n k^2 + k^3 + n k m)``. Requires a positive `diagonal`.
        """
        b = jnp.asarray(b)
        if b.ndim not in (1, 2) or b.shape[0] != self.size:
            raise ValueError(
                f"LowRankUpdate.solve(b) needs b of shape ({self.size},) or ({self.size}, m); "
                f"got shape {b.shape}."
            )
        return self.woodbury().solve(b)


def _whiten(x: Array, sqrt_diag: Array | None, chol: Array | None) -> Array:
    if sqrt_diag is not None:
        scale = sqrt_diag if x.ndim == 1 else sqrt_diag[:, None]
        return x / scale
    return jsl.solve_triangular(chol, x, lower=True)


class Woodbury(eqx.Module):
    r"""A factorised ``S = L (I + W W^T) L^T``, ready for solves, log-determinants and whitening.

    $$S = L L^\top + F F^\top = L (I_n + W W^\top) L^\top, \qquad W = L^{-1} F,$$

    with ``L`` diagonal (``sqrt_diag``) or lower-triangular (``chol``) and ``cap_chol`` the
    lower Cholesky factor of the ``k x k`` capacitance matrix ``I_k + W^T W``. Its eigenvalues
    are ``>= 1``, so the factorisation is always well conditioned and differentiable, and every
    operation below costs ``O(n k^2 + k^3)`` on top of applying ``L^{-1}``. The gain and the
    likelihood build one per analysis; filters (ETKF-style transforms, iterative smoothers) can
    reuse it. Usually obtained from `LowRankUpdate.woodbury()` or `Woodbury.build`.

    **Arguments:** (of `Woodbury.build`)

    - `factor`: ``F``, shape ``(n, k)``.
    - `sqrt_diag`: ``(n,)`` square roots of a positive diagonal ``L L^T``; or
    - `chol`: ``(n, n)`` lower Cholesky factor ``L`` of a dense positive-definite ``L L^T``.

    **Returns:** the factorisation, with methods `solve`, `logdet`, `inv_quad`, `whiten`,
    `gain_rows`, `inverse_diagonal` and `inv_sqrt`.

    **Reference:** Woodbury (1950); Hager (1989), *Updating the inverse of a matrix*, SIAM
    Review 31. DAPPER's ``EnKF_analysis`` uses the same push-through identity implicitly.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import Woodbury

        wb = Woodbury.build(jnp.ones((6, 2)), sqrt_diag=jnp.ones(6))  # S = I + F F^T
        wb.logdet(), wb.solve(jnp.ones(6)), wb.inv_quad(jnp.ones(6))
        ```
    """

    w: Array
    cap_chol: Array
    sqrt_diag: Array | None = None
    chol: Array | None = None

    @classmethod
    def build(
        cls, factor: Array, *, sqrt_diag: Array | None = None, chol: Array | None = None
    ) -> Woodbury:
        """Factorise ``L L^T + F F^T``, ``F = factor``, ``L = diag(sqrt_diag)`` or ``chol``."""
        if (sqrt_diag is None) == (chol is None):
            raise ValueError("Woodbury.build needs exactly one of `sqrt_diag` or `chol`.")
        w = _whiten(factor, sqrt_diag, chol)
        k = w.shape[1]
        capacitance = jnp.eye(k, dtype=w.dtype) + _matmul(w.T, w)
        cap_chol = jnp.linalg.cholesky(capacitance)
        return cls(w, cap_chol, sqrt_diag, chol)

    def whiten(self, x: Array) -> Array:
        """``L^{-1} x`` for ``x`` of shape ``(n,)`` or ``(n, m)``."""
        return _whiten(x, self.sqrt_diag, self.chol)

    def whiten_transpose(self, x: Array) -> Array:
        """``L^{-T} x`` for ``x`` of shape ``(n,)`` or ``(n, m)``."""
        if self.sqrt_diag is not None:
            return self.whiten(x)
        return jsl.solve_triangular(self.chol, x, lower=True, trans=1)

    def logdet_base(self) -> Scalar:
        """``log|L L^T|``."""
        diag = self.sqrt_diag if self.sqrt_diag is not None else jnp.diagonal(self.chol)
        return 2.0 * jnp.sum(jnp.log(diag))

    def logdet(self) -> Scalar:
        """``log|S| = log|L L^T| + log|I_k + W^T W|`` (matrix determinant lemma)."""
        return self.logdet_base() + 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.cap_chol)))

    def _cap_solve(self, x: Array) -> Array:
        return jsl.cho_solve((self.cap_chol, True), x)

    def _whitened_solve(self, z: Array) -> tuple[Array, Array]:
        # r = (I + W W^T)^{-1} z and a = (I + W^T W)^{-1} W^T z, with W^T r = a.
        a = self._cap_solve(_matmul(self.w.T, z))
        r = z - _matmul(self.w, a)
        return r, a

    def solve(self, b: Array) -> Array:
        """``S^{-1} b`` for ``b`` of shape ``(n,)`` or ``(n, m)``."""
        r, _ = self._whitened_solve(self.whiten(b))
        return self.whiten_transpose(r)

    def inv_quad(self, v: Array) -> Scalar:
        """``v^T S^{-1} v`` (or ``tr(V^T S^{-1} V)`` for ``V`` of shape ``(n, m)``).

        Computed as ``||r||^2 + ||a||^2`` with ``z = L^{-1} v``, ``r = (I + W W^T)^{-1} z`` and
        ``a = W^T r``, because ``z^T r = r^T (I + W W^T) r``: a sum of squares, never negative
        and free of the cancellation in ``||z||^2 - ||cap_chol^{-1} W^T z||^2``.
        """
        r, a = self._whitened_solve(self.whiten(v))
        return jnp.sum(r * r) + jnp.sum(a * a)

    def inverse_diagonal(self) -> Array:
        """``diag(S^{-1})`` in ``O(n k^2)`` (only for diagonal ``L``)."""
        if self.sqrt_diag is None:
            raise ValueError("inverse_diagonal needs a diagonal base (sqrt_diag).")
        # diag(W (I + W^T W)^{-1} W^T) = row sums of squares of W cap_chol^{-T}.
        m = jsl.solve_triangular(self.cap_chol, self.w.T, lower=True)
        return (1.0 - jnp.sum(m * m, axis=0)) / (self.sqrt_diag * self.sqrt_diag)

    def gain_rows(self, n_rows: int) -> Array:
        """The first `n_rows` rows of ``F^T S^{-1} = (I + W^T W)^{-1} W^T L^{-1}``, ``(n_rows, n)``.

        Push-through identity: ``F^T S^{-1} = W^T (I + W W^T)^{-1} L^{-1}
        = (I + W^T W)^{-1} W^T L^{-1}``, so only the ``k x k`` capacitance is factorised.
        """
        m = self._cap_solve(self.w.T)[:n_rows]
        return self.whiten_transpose(m.T).T

    def inv_sqrt(self, v: Array) -> Array:
        r"""A whitening ``(I + W W^T)^{-1/2} L^{-1} v`` (``= S^{-1/2} v`` when ``L = c I``).

        Uses ``(I + W W^T)^{-1/2} = I + W P f(\Lambda) P^T W^T`` with ``W^T W = P \Lambda P^T``
        and ``f(s) = -1 / (sqrt(1 + s) (1 + sqrt(1 + s)))``, smooth at ``s = 0``. The symmetric
        eigendecomposition has no useful derivative at repeated eigenvalues (always present
        when ``k > n`` or the ensemble is rank deficient), so this is computed under
        `lax.stop_gradient`: a diagnostic, not a training signal.
        """
        w = lax.stop_gradient(self.w)
        z = lax.stop_gradient(self.whiten(v))
        eigvals, eigvecs = jnp.linalg.eigh(_matmul(w.T, w))
        root = jnp.sqrt(1.0 + jnp.maximum(eigvals, 0.0))
        f = -1.0 / (root * (1.0 + root))
        coeff = _matmul(eigvecs.T, _matmul(w.T, z))
        return z + _matmul(w, _matmul(eigvecs, f * coeff))


# --- lineax registrations -------------------------------------------------------------------


@lx.linearise.register(LowRankUpdate)
@lx.materialise.register(LowRankUpdate)
@lx.conj.register(LowRankUpdate)
def _(operator):
    # Real, already held in memory in its cheapest form: materialising would only densify it.
    return operator


@lx.diagonal.register(LowRankUpdate)
def _(operator):
    return operator.full_diagonal()


@lx.tridiagonal.register(LowRankUpdate)
def _(operator):
    u = operator.factor
    off = jnp.sum(u[1:] * u[:-1], axis=1)
    return operator.full_diagonal(), off, off


@lx.is_symmetric.register(LowRankUpdate)
@lx.is_positive_semidefinite.register(LowRankUpdate)
def _(operator):
    return True


@lx.is_negative_semidefinite.register(LowRankUpdate)
@lx.has_unit_diagonal.register(LowRankUpdate)
def _(operator):
    return False


@lx.is_diagonal.register(LowRankUpdate)
@lx.is_tridiagonal.register(LowRankUpdate)
@lx.is_lower_triangular.register(LowRankUpdate)
@lx.is_upper_triangular.register(LowRankUpdate)
def _(operator):
    # Only a rank-0 update is structurally diagonal (hence also tri-/triangular).
    return operator.rank == 0
