"""The low-rank-plus-diagonal covariance operator ``diag(d) + U U^T`` and its Woodbury algebra.

Ensemble covariances are low rank (``rank <= N_e - 1``) and observation noise is usually
diagonal, so every innovation covariance ``S = C^HH + R`` has this form. Solves and
log-determinants then cost ``O(n k^2 + k^3)`` through the Woodbury identity and the matrix
determinant lemma instead of ``O(n^3)``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar

from ._linalg import matmul as _matmul
from ._spectral import symmetric_matrix_function
from ._validation import check_nonnegative
from ._whitening import (
    AbstractNoiseRoot,
    CholeskyRoot,
    DiagonalRoot,
    Whitening,
    noise_whitening,
)


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
    queries), and adds structure-aware `logdet` (matrix determinant lemma) and `solve`
    (Woodbury identity), both ``O(n k^2 + k^3)`` and never forming an ``n x n`` matrix.
    `lx.linear_solve(op, b, solver=WoodburySolver())` uses the same Woodbury solve (and is
    differentiable through lineax); lineax's default `AutoLinearSolver` cannot be taught new
    structures and would densify it (Cholesky). The sample covariance of an
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
        from filterax.primitives import LowRankUpdate, WoodburySolver

        op = LowRankUpdate(jnp.ones((5, 2)), jnp.full(5, 0.5))
        op.mv(jnp.ones(5))                    # (diag(d) + U U^T) @ 1
        op.logdet(), op.solve(jnp.ones(5))    # O(n k^2) via Woodbury
        lx.linear_solve(op, jnp.ones(5), solver=WoodburySolver()).value  # same, via lineax
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
        diagonal = check_nonnegative(
            diagonal,
            "LowRankUpdate(diagonal=...) (variances, not standard deviations)",
            traced=False,
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


class Woodbury(eqx.Module):
    r"""A factorised ``S = L (I + W W^T) L^T``, ready for solves, log-determinants and whitening.

    $$S = L L^\top + F F^\top = L (I_n + W W^\top) L^\top, \qquad W = L^{-1} F,$$

    with ``L`` any `AbstractNoiseRoot` (diagonal ``sqrt_diag``, lower-triangular ``chol``, or a
    registered structure's root) and ``cap_chol`` the lower Cholesky factor of the ``k x k``
    capacitance matrix ``I_k + W^T W``. Its eigenvalues are ``>= 1``, so the factorisation is
    always well conditioned and differentiable, and every operation below costs
    ``O(n k^2 + k^3)`` on top of applying ``L^{-1}``. The gain and the likelihood build one per
    analysis; filters (ETKF-style transforms, iterative smoothers) can reuse it. Usually
    obtained from `LowRankUpdate.woodbury()`, `Woodbury.build` or `Woodbury.from_whitening`.

    **Arguments:** (of `Woodbury.build`)

    - `factor`: ``F``, shape ``(n, k)``.
    - exactly one of `sqrt_diag` (``(n,)`` square roots of a positive diagonal ``L L^T``),
        `chol` (``(n, n)`` lower Cholesky factor ``L``) or `root` (an `AbstractNoiseRoot`).

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
    root: AbstractNoiseRoot

    @classmethod
    def build(
        cls,
        factor: Array,
        *,
        sqrt_diag: Array | None = None,
        chol: Array | None = None,
        root: AbstractNoiseRoot | None = None,
    ) -> Woodbury:
        """Factorise ``L L^T + F F^T`` (``F = factor``; ``L``: `sqrt_diag`, `chol` or `root`)."""
        given = [x is not None for x in (sqrt_diag, chol, root)]
        if sum(given) != 1:
            raise ValueError("Woodbury.build needs exactly one of `sqrt_diag`, `chol` or `root`.")
        if sqrt_diag is not None:
            root = DiagonalRoot(sqrt_diag)
        elif chol is not None:
            root = CholeskyRoot(chol)
        assert root is not None
        return cls.from_root(root, root.solve(factor))

    @classmethod
    def from_root(cls, root: AbstractNoiseRoot, w: Array) -> Woodbury:
        """Factorise ``L (I + W W^T) L^T`` from ``L = root`` and the whitened factor ``W``."""
        k = w.shape[1]
        capacitance = jnp.eye(k, dtype=w.dtype) + _matmul(w.T, w)
        return cls(w, jnp.linalg.cholesky(capacitance), root)

    @classmethod
    def from_whitening(cls, whitening: Whitening, leading: Array) -> Woodbury:
        r"""Factorise ``F F^T + R`` for ``R`` given by its `Whitening`.

        $$F F^\top + R = L\big(I + [L^{-1}F,\ \tilde U][L^{-1}F,\ \tilde U]^\top\big)L^\top,$$

        so the columns of ``W`` are the whitened `leading` ``(n, m)`` columns first, then the
        noise's own residual ``U~`` (the gain relies on that order, see `gain_rows`).
        """
        w = whitening.root.solve(leading)
        if whitening.factor is not None:
            w = jnp.concatenate([w, whitening.factor.astype(w.dtype)], axis=1)
        return cls.from_root(whitening.root, w)

    def whiten(self, x: Array) -> Array:
        """``L^{-1} x`` for ``x`` of shape ``(n,)`` or ``(n, m)``."""
        return self.root.solve(x)

    def whiten_transpose(self, x: Array) -> Array:
        """``L^{-T} x`` for ``x`` of shape ``(n,)`` or ``(n, m)``."""
        return self.root.solve_transpose(x)

    def logdet_base(self) -> Scalar:
        """``log|L L^T|``."""
        return self.root.logdet()

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
        """``diag(S^{-1})`` in ``O(n k^2)`` (only for a diagonal ``L``, a `DiagonalRoot`)."""
        if not isinstance(self.root, DiagonalRoot):
            raise ValueError(
                "Woodbury.inverse_diagonal needs a diagonal base (built with sqrt_diag=...); "
                f"this one has a {type(self.root).__name__}. Use solve(jnp.eye(n)) instead."
            )
        sqrt_diag = self.root.sqrt_diag
        # diag(W (I + W^T W)^{-1} W^T) = row sums of squares of W cap_chol^{-T}.
        m = jsl.solve_triangular(self.cap_chol, self.w.T, lower=True)
        return (1.0 - jnp.sum(m * m, axis=0)) / (sqrt_diag * sqrt_diag)

    def gain_rows(self, n_rows: int) -> Array:
        """The first `n_rows` rows of ``F^T S^{-1} = (I + W^T W)^{-1} W^T L^{-1}``, ``(n_rows, n)``.

        Push-through identity: ``F^T S^{-1} = W^T (I + W W^T)^{-1} L^{-1}
        = (I + W^T W)^{-1} W^T L^{-1}``, so only the ``k x k`` capacitance is factorised.
        """
        m = self._cap_solve(self.w.T)[:n_rows]
        return self.whiten_transpose(m.T).T

    def inv_sqrt(self, v: Array) -> Array:
        r"""A whitening ``(I + W W^T)^{-1/2} L^{-1} v`` (``= S^{-1/2} v`` when ``L = c I``).

        Uses ``(I + W W^T)^{-1/2} = I + W g(W^T W) W^T`` with the push-through function
        ``g(s) = -1 / (sqrt(1 + s) (1 + sqrt(1 + s)))`` of `symmetric_matrix_function`
        (``kind="inv_sqrt_one_plus_push"``). Computed under `lax.stop_gradient`: a diagnostic,
        not a training signal.
        """
        w = lax.stop_gradient(self.w)
        z = lax.stop_gradient(self.whiten(v))
        core = symmetric_matrix_function(_matmul(w.T, w), "inv_sqrt_one_plus_push")
        return z + _matmul(w, _matmul(core, _matmul(w.T, z)))


class WoodburySolver(lx.AbstractLinearSolver):
    r"""A lineax solver for `LowRankUpdate` by the Woodbury identity (no ``n x n`` matrix).

    $$(D + UU^\top)^{-1} b = D^{-1}b - D^{-1}U(I_k + U^\top D^{-1}U)^{-1}U^\top D^{-1} b.$$

    Use it as ``lx.linear_solve(op, b, solver=WoodburySolver())``: ``init`` factorises the
    ``k x k`` capacitance once (`LowRankUpdate.woodbury`), ``compute`` costs ``O(n k)``, and
    lineax differentiates the solve (JVP/VJP with respect to ``b`` and the operator) through
    its own rules, reusing the state (the operator is symmetric, so ``transpose`` is free).
    lineax's default `AutoLinearSolver` picks its solver from a fixed list of structural
    predicates (diagonal, triangular, PSD -> Cholesky, ...) and cannot be extended, so without
    this argument a `LowRankUpdate` is densified.

    **Arguments:** none.

    **Reference:** Woodbury (1950); lineax's ``AbstractLinearSolver`` protocol (``init``,
    ``compute``, ``transpose``, ``conj``, ``assume_full_rank``).

    !!! Example

        ```python
        import jax.numpy as jnp
        import lineax as lx
        from filterax.primitives import LowRankUpdate, WoodburySolver

        op = LowRankUpdate(jnp.ones((1000, 3)), jnp.full(1000, 0.5))
        x = lx.linear_solve(op, jnp.ones(1000), solver=WoodburySolver()).value
        ```
    """

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]) -> Woodbury:
        del options
        if not isinstance(operator, LowRankUpdate):
            raise TypeError(
                "WoodburySolver solves LowRankUpdate operators (diag(d) + U U^T) only; got "
                f"{type(operator).__name__}. Use lx.AutoLinearSolver(well_posed=True) for "
                "other operators."
            )
        return operator.woodbury()

    def compute(
        self, state: Woodbury, vector: PyTree[Array], options: dict[str, Any]
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        del options
        return state.solve(vector), lx.RESULTS.successful, {}

    def transpose(self, state: Woodbury, options: dict[str, Any]) -> tuple[Woodbury, dict]:
        # diag(d) + U U^T is symmetric.
        return state, options

    def conj(self, state: Woodbury, options: dict[str, Any]) -> tuple[Woodbury, dict]:
        # Real operator.
        return state, options

    def assume_full_rank(self) -> bool:
        # A positive diagonal makes the operator positive definite (woodbury() checks it).
        return True


@noise_whitening.register(LowRankUpdate)
def _(op: LowRankUpdate, dtype: Any = None) -> Whitening:
    # R = diag(d) + U U^T = L (I + U~ U~^T) L^T with L = diag(sqrt(d)), U~ = L^{-1} U.
    if op.diagonal is None:
        raise ValueError(
            "low-rank noise needs a positive diagonal to be whitened (U U^T alone is "
            "singular). Pass filterax.primitives.low_rank_noise(factor, diagonal)."
        )
    dtype = op.factor.dtype if dtype is None else dtype
    root = DiagonalRoot(jnp.sqrt(jnp.asarray(op.diagonal, dtype=dtype)))
    factor = jnp.asarray(op.factor, dtype=dtype) * root.inv_sqrt_diag[:, None]
    return Whitening.build(root, factor)


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
