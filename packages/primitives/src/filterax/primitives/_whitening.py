r"""Whitening of observation noise, dispatched on the lineax operator type through a registry.

Every noise covariance filterax handles is written as a *base* part with a cheap square root
``L`` and an optional low-rank residual:

$$R = L\,(I + \tilde U \tilde U^\top)\,L^\top = L N L^\top, \qquad
\tilde U = L^{-1} U,\quad N = I + \tilde U\tilde U^\top .$$

- diagonal ``R = diag(d)``: ``L = diag(sqrt(d))``, no residual (`DiagonalRoot`);
- dense ``R``: ``L`` its lower Cholesky factor, no residual (`CholeskyRoot`);
- low-rank plus diagonal ``R = diag(d) + U U^T`` (`LowRankUpdate`): ``L = diag(sqrt(d))`` and
  ``U~ = L^{-1} U``.

A `Whitening` holds ``L`` (an `AbstractNoiseRoot`) and ``U~`` and offers what the ensemble
methods need, all without forming an ``N_y x N_y`` matrix unless ``R`` is dense:

- `Whitening.white`: ``L^{-1}`` along the last axis (inversion methods work in these
  coordinates, where the noise is ``N``);
- `Whitening.whiten` (`rows` / `vector`): the symmetric full whitening
  ``G = N^{-1/2} L^{-1}`` with ``G^T G = R^{-1}``, ``N^{-1/2} = I + B C B^T`` precomputed
  from one gradient-safe ``min(k, N_y)``-sized eigenproblem (`symmetric_matrix_function`);
- `Whitening.noise_solve` (rows times ``N^{-1}``, Woodbury on the smaller system),
  `Whitening.noise_sample` (draws from ``N(0, N)``), `Whitening.misfits`,
  `Whitening.solve` (``R^{-1} b``) and `Whitening.logdet` (``log|R|``).

**Adding a structure.** `noise_whitening` is a `functools.singledispatch` function of the
operator type: register one builder for a new operator type (block-diagonal, Kronecker, ...)
and every filter, gain and likelihood whitens it without densifying. A builder returns
``Whitening.build(root, factor)`` with any `AbstractNoiseRoot` (write a new root class if the
base has its own cheap square root, e.g. one Cholesky per block)::

    @noise_whitening.register(BlockDiagonalNoise)
    def _(op, dtype=None):
        return Whitening.build(BlockCholeskyRoot(...))

To keep the structure when observations are missing, register a masking rule for the same type
with `filterax.primitives.mask_noise` (``mask_noise.register``); without one, masking falls
back to the dense form (correct, only slower).

**Reference:** DAPPER's ``CovMat`` (``sym_sqrt_inv``, ``kind``); Woodbury (1950); the
whitening of EnsembleKalmanProcesses.jl's ``Γ^{-1/2}``.
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar

from ._linalg import matmul
from ._spectral import symmetric_matrix_function

__all__ = [
    "AbstractNoiseRoot",
    "CholeskyRoot",
    "DiagonalRoot",
    "Whitening",
    "noise_whitening",
    "whitened_noise_sample",
    "whitened_noise_solve",
]


class AbstractNoiseRoot(eqx.Module):
    r"""A square root ``L`` (``L L^T = B``) of the base part ``B`` of a noise covariance.

    Subclasses implement the five operations below for their structure; `Whitening` builds
    everything else from them. ``L`` must be square and invertible.

    Methods: `size` (property), `solve` (``L^{-1} x``), `solve_transpose` (``L^{-T} x``),
    `white` (``L^{-1}`` along the last axis), `mv` (``L x``) and `logdet` (``log|L L^T|``).
    """

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """The dimension ``n`` of ``L``."""

    @abc.abstractmethod
    def solve(self, x: Float[Array, " n *m"]) -> Float[Array, " n *m"]:
        """``L^{-1} x`` for ``x`` of shape ``(n,)`` or ``(n, m)`` (columns)."""

    @abc.abstractmethod
    def solve_transpose(self, x: Float[Array, " n *m"]) -> Float[Array, " n *m"]:
        """``L^{-T} x`` for ``x`` of shape ``(n,)`` or ``(n, m)`` (columns)."""

    @abc.abstractmethod
    def white(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch n"]:
        """``L^{-1}`` applied along the last axis: every row ``r`` of ``x`` becomes ``L^{-1} r``."""

    @abc.abstractmethod
    def mv(self, x: Float[Array, " n *m"]) -> Float[Array, " n *m"]:
        """``L x`` for ``x`` of shape ``(n,)`` or ``(n, m)`` (columns)."""

    @abc.abstractmethod
    def logdet(self) -> Scalar:
        """``log|L L^T|``."""


class DiagonalRoot(AbstractNoiseRoot):
    r"""``L = diag(sqrt(d))`` for a positive diagonal ``B = diag(d)``.

    `white` multiplies by the stored ``1/sqrt(d)`` (applied to many rows: ensembles);
    `solve` divides (one correctly rounded operation per entry).

    **Arguments:**

    - `sqrt_diag`: ``sqrt(d)``, shape ``(n,)``, positive.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import DiagonalRoot

        DiagonalRoot(jnp.sqrt(jnp.array([4.0, 9.0]))).white(jnp.ones(2))  # [0.5, 1/3]
        ```
    """

    sqrt_diag: Float[Array, " n"]
    inv_sqrt_diag: Float[Array, " n"]

    def __init__(self, sqrt_diag: Float[ArrayLike, " n"]):
        sqrt_diag = jnp.asarray(sqrt_diag)
        if sqrt_diag.ndim != 1:
            raise ValueError(
                f"DiagonalRoot(sqrt_diag=...) must be a 1-D array of standard deviations; got "
                f"shape {sqrt_diag.shape}."
            )
        self.sqrt_diag = sqrt_diag
        self.inv_sqrt_diag = 1.0 / sqrt_diag

    @property
    def size(self) -> int:
        return self.sqrt_diag.shape[0]

    def solve(self, x: Array) -> Array:
        return x / (self.sqrt_diag if x.ndim == 1 else self.sqrt_diag[:, None])

    def solve_transpose(self, x: Array) -> Array:
        return self.solve(x)

    def white(self, x: Array) -> Array:
        return x * jnp.reshape(self.inv_sqrt_diag, (1,) * (x.ndim - 1) + (-1,))

    def mv(self, x: Array) -> Array:
        return x * (self.sqrt_diag if x.ndim == 1 else self.sqrt_diag[:, None])

    def logdet(self) -> Scalar:
        return 2.0 * jnp.sum(jnp.log(self.sqrt_diag))


class CholeskyRoot(AbstractNoiseRoot):
    r"""``L`` the lower Cholesky factor of a dense positive-definite ``B = L L^T``.

    **Arguments:**

    - `chol`: the lower-triangular ``(n, n)`` factor.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import CholeskyRoot

        R = jnp.array([[2.0, 0.5], [0.5, 1.0]])
        CholeskyRoot(jnp.linalg.cholesky(R)).logdet()  # log det R
        ```
    """

    chol: Float[Array, "n n"]

    @property
    def size(self) -> int:
        return self.chol.shape[0]

    def solve(self, x: Array) -> Array:
        return jsl.solve_triangular(self.chol, x, lower=True)

    def solve_transpose(self, x: Array) -> Array:
        return jsl.solve_triangular(self.chol, x, lower=True, trans=1)

    def white(self, x: Array) -> Array:
        if x.ndim == 1:
            return jsl.solve_triangular(self.chol, x, lower=True)
        if x.ndim == 2:
            return jsl.solve_triangular(self.chol, x.T, lower=True).T
        flat = x.reshape(-1, x.shape[-1])
        return jsl.solve_triangular(self.chol, flat.T, lower=True).T.reshape(x.shape)

    def mv(self, x: Array) -> Array:
        return matmul(self.chol, x)

    def logdet(self) -> Scalar:
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.chol)))


def whitened_noise_solve(
    b: Float[Array, "m n"], factor: Float[Array, "n k"] | None
) -> Float[Array, "m n"]:
    r"""Rows of ``b`` times ``N^{-1} = (I + F F^T)^{-1}``, through the smaller of two systems.

    $$(I + F F^\top)^{-1} = I - F (I_k + F^\top F)^{-1} F^\top$$

    ``F`` is ``(n, k)``: the ``n x n`` system when ``n <= k``, the ``k x k`` capacitance
    matrix otherwise, ``O(n k min(n, k))``. ``factor=None`` (or ``k = 0``) means ``N = I``.

    **Arguments:**

    - `b`: ``(m, n)`` rows to solve against.
    - `factor`: ``F`` (the whitened low-rank residual ``U~`` of `Whitening`), or ``None``.

    **Returns:** ``b N^{-1}``, ``(m, n)``.

    **Reference:** Woodbury (1950); Hager (1989), *SIAM Review* 31.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import whitened_noise_solve

        whitened_noise_solve(jnp.ones((1, 3)), jnp.ones((3, 1)))  # 1 (I + 1 1^T)^{-1} = 1/4
        ```
    """
    if factor is None or factor.shape[1] == 0:
        return b
    n, r = factor.shape
    if n <= r:
        # Fewer data than residual directions: the n x n system itself is the cheaper one.
        system = jnp.eye(n, dtype=factor.dtype) + matmul(factor, factor.T)
        return jsl.cho_solve(jsl.cho_factor(system, lower=True), b.T).T
    capacitance = jnp.eye(r, dtype=factor.dtype) + matmul(factor.T, factor)
    cap = jsl.cho_factor(capacitance, lower=True)
    return b - matmul(jsl.cho_solve(cap, matmul(factor.T, b.T)).T, factor.T)


def whitened_noise_sample(
    key: PRNGKeyArray, m: int, n: int, factor: Float[Array, "n k"] | None, dtype: Any
) -> Float[Array, "m n"]:
    r"""``m`` draws from ``N(0, I + F F^T)``, shape ``(m, n)``.

    $$\eta = z_1 + F z_2, \qquad z_1 \sim \mathcal N(0, I_n),\ z_2 \sim \mathcal N(0, I_k).$$

    With ``factor=None`` the draws are ``jax.random.normal(key, (m, n))``; otherwise the key is
    split in two (``z_1``, ``z_2``).

    **Arguments:**

    - `key`: a PRNG key; `m`, `n`: static ints; `factor`: ``F`` or ``None``; `dtype`.

    **Returns:** the ``(m, n)`` draws.

    **Reference:** the rectangular square root ``[I, F]`` of ``I + F F^T``.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.primitives import whitened_noise_sample

        whitened_noise_sample(jax.random.key(0), 5, 3, jnp.ones((3, 1)), jnp.float32)
        ```
    """
    if factor is None:
        return jax.random.normal(key, (m, n), dtype)
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (m, n), dtype) + matmul(
        jax.random.normal(k2, (m, factor.shape[1]), dtype), factor.T
    )


class Whitening(eqx.Module):
    r"""A factorised noise covariance ``R = L (I + U~ U~^T) L^T`` and its whitening operations.

    Built by `noise_whitening` (the registry, one builder per operator type) or directly with
    `Whitening.build`. See the module docstring for the structures.

    $$G = (I + \tilde U\tilde U^\top)^{-1/2} L^{-1},\qquad G^\top G = R^{-1},$$

    with the symmetric ``N^{-1/2} = I + B C B^T``: ``B = U~``, ``C = g(U~^T U~)`` (push-through
    form) when ``k < n``, else ``B = I``, ``C = (I + U~ U~^T)^{-1/2} - I``.

    **Fields:**

    - `root`: ``L``, an `AbstractNoiseRoot`.
    - `factor`: ``U~ = L^{-1} U``, ``(n, k)``, or ``None`` when ``R = L L^T``.
    - `inv_sqrt_basis`, `inv_sqrt_core`: ``B`` and ``C`` above (``None`` without a factor).

    **Reference:** Woodbury (1950); Daleckii & Krein (1965) for the gradient-safe
    ``N^{-1/2}``; DAPPER ``CovMat.sym_sqrt_inv``.

    !!! Example

        ```python
        import jax.numpy as jnp
        import filterax.primitives as fxp

        wh = fxp.noise_whitening(fxp.low_rank_noise(jnp.ones((4, 1)), jnp.full(4, 0.5)))
        wh.whiten(jnp.ones((3, 4)))  # rows times G^T, G^T G = R^{-1}
        wh.logdet(), wh.solve(jnp.ones(4))
        ```
    """

    root: AbstractNoiseRoot
    factor: Float[Array, "n k"] | None
    inv_sqrt_basis: Float[Array, "n p"] | None
    inv_sqrt_core: Float[Array, "p p"] | None

    @classmethod
    def build(cls, root: AbstractNoiseRoot, factor: Float[Array, "n k"] | None = None) -> Whitening:
        """The whitening of ``L (I + F F^T) L^T`` for ``L = root``, ``F = factor`` (or none)."""
        if not isinstance(root, AbstractNoiseRoot):
            raise TypeError(
                f"Whitening.build(root=...) must be an AbstractNoiseRoot (e.g. DiagonalRoot, "
                f"CholeskyRoot); got {type(root).__name__}."
            )
        if factor is None or factor.shape[1] == 0:
            return cls(root, None, None, None)
        n, k = factor.shape
        if n != root.size:
            raise ValueError(
                f"Whitening.build: factor has {n} rows but the root has size {root.size}."
            )
        if k < n:
            core = symmetric_matrix_function(matmul(factor.T, factor), "inv_sqrt_one_plus_push")
            return cls(root, factor, factor, core)
        # k >= n: the n x n form (I + F F^T)^{-1/2} is the smaller eigenproblem.
        eye = jnp.eye(n, dtype=factor.dtype)
        core = symmetric_matrix_function(matmul(factor, factor.T), "inv_sqrt_one_plus") - eye
        return cls(root, factor, eye, core)

    @property
    def size(self) -> int:
        """The dimension ``n`` of ``R``."""
        return self.root.size

    def white(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch n"]:
        """``L^{-1}`` along the last axis (the base whitening; the noise is then ``N``)."""
        return self.root.white(x)

    def whiten(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch n"]:
        """``G`` along the last axis, ``G^T G = R^{-1}``: rows ``r`` of ``x`` become ``G r``."""
        z = self.root.white(x)
        if self.inv_sqrt_basis is None:
            return z
        basis, core = self.inv_sqrt_basis, self.inv_sqrt_core
        if z.ndim == 1:
            # G v = (I + B C B^T) L^{-1} v
            return z + matmul(basis, matmul(core, matmul(basis.T, z)))
        # rows: Z G^T = Z L^{-T} (I + B C B^T) (the middle factor is symmetric)
        return z + matmul(matmul(z, basis), matmul(core, basis.T))

    def rows(self, z: Float[Array, "m n"]) -> Float[Array, "m n"]:
        """``Z G^T``: `whiten` every row of a 2-D array."""
        if jnp.ndim(z) != 2:
            raise ValueError(f"Whitening.rows needs a 2-D (m, n) array; got shape {jnp.shape(z)}.")
        return self.whiten(z)

    def vector(self, v: Float[Array, " n"]) -> Float[Array, " n"]:
        """``G v``: `whiten` one vector."""
        if jnp.ndim(v) != 1:
            raise ValueError(f"Whitening.vector needs a 1-D (n,) array; got shape {jnp.shape(v)}.")
        return self.whiten(v)

    def noise_solve(self, b: Float[Array, "m n"]) -> Float[Array, "m n"]:
        """Rows of ``b`` times ``N^{-1}`` (`whitened_noise_solve`)."""
        return whitened_noise_solve(b, self.factor)

    def noise_sample(self, key: PRNGKeyArray, m: int, dtype: Any) -> Float[Array, "m n"]:
        """``m`` draws from ``N(0, N)`` in whitened coordinates (`whitened_noise_sample`)."""
        return whitened_noise_sample(key, m, self.size, self.factor, dtype)

    def misfits(
        self, forward_evals: Float[Array, "N_e n"], obs: Float[Array, " n"]
    ) -> Float[Array, " N_e"]:
        """Per member ``1/2 (g_j - y)^T R^{-1} (g_j - y)``."""
        residuals = self.white(forward_evals - obs[None, :])
        return 0.5 * jnp.sum(residuals * self.noise_solve(residuals), axis=1)

    def solve(self, b: Float[Array, " n *m"]) -> Float[Array, " n *m"]:
        """``R^{-1} b`` for ``b`` of shape ``(n,)`` or ``(n, m)``: ``L^{-T} N^{-1} L^{-1} b``."""
        z = self.root.solve(b)
        if z.ndim == 1:
            r = self.noise_solve(z[None, :])[0]
        else:
            r = self.noise_solve(z.T).T
        return self.root.solve_transpose(r)

    def logdet(self) -> Scalar:
        """``log|R| = log|L L^T| + log|I + U~^T U~|`` (matrix determinant lemma)."""
        base = self.root.logdet()
        if self.factor is None:
            return base
        n, k = self.factor.shape
        if k < n:
            small = jnp.eye(k, dtype=self.factor.dtype) + matmul(self.factor.T, self.factor)
        else:
            small = jnp.eye(n, dtype=self.factor.dtype) + matmul(self.factor, self.factor.T)
        chol = jnp.linalg.cholesky(small)
        return base + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def _operator_dtype(op: lx.AbstractLinearOperator, dtype: Any) -> Any:
    return jnp.dtype(op.in_structure().dtype) if dtype is None else jnp.dtype(dtype)


@functools.singledispatch
def noise_whitening(op: lx.AbstractLinearOperator, dtype: Any = None) -> Whitening:
    r"""The `Whitening` of a noise covariance, chosen by the operator's type (a registry).

    $$R = L (I + \tilde U \tilde U^\top) L^\top .$$

    Built-in builders: `LowRankUpdate` (``L = diag(sqrt(d))``, ``U~ = L^{-1} U``); any
    operator `lx.is_diagonal` recognises (``L = diag(sqrt(diag R))``); any other lineax
    operator (``L`` = Cholesky of the symmetrised ``as_matrix()``). Register a builder for a
    new type with ``@noise_whitening.register(MyOperator)`` (see the module docstring); it
    takes ``(op, dtype=None)`` and returns ``Whitening.build(root, factor)``.

    **Arguments:**

    - `op`: the square, positive-definite noise covariance (a lineax operator; coerce arrays
        and scalars with `as_noise_operator` first).
    - `dtype`: the dtype to compute in (default: the operator's).

    **Returns:** a `Whitening`.

    **Raises:** `TypeError` for a non-operator; `ValueError` for a `LowRankUpdate` without a
    diagonal (``U U^T`` alone is singular).

    **Reference:** DAPPER ``CovMat.sym_sqrt_inv``; Woodbury (1950).

    !!! Example

        ```python
        import jax.numpy as jnp
        import filterax.primitives as fxp

        wh = fxp.noise_whitening(fxp.dense_noise(jnp.array([[2.0, 0.5], [0.5, 1.0]])))
        G = wh.whiten(jnp.eye(2))  # G^T G = R^{-1}
        ```
    """
    if not isinstance(op, lx.AbstractLinearOperator):
        raise TypeError(
            "noise_whitening needs a lineax operator; got "
            f"{type(op).__name__}. Convert variances or matrices with "
            "filterax.primitives.as_noise_operator(noise, n) first."
        )
    dtype = _operator_dtype(op, dtype)
    if lx.is_diagonal(op):
        return Whitening.build(DiagonalRoot(jnp.sqrt(jnp.asarray(lx.diagonal(op), dtype=dtype))))
    matrix = jnp.asarray(op.as_matrix(), dtype=dtype)
    # Symmetrising is exact for a symmetric matrix and removes round-off asymmetry otherwise.
    return Whitening.build(CholeskyRoot(jnp.linalg.cholesky(0.5 * (matrix + matrix.T))))
