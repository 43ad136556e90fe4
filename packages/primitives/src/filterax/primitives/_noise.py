"""Observation- and process-noise covariances as lineax operators, and their square roots.

Three structures are recognised, cheapest first: diagonal (any operator `lx.is_diagonal`
answers True for, e.g. `lx.DiagonalLinearOperator`), low-rank plus diagonal (`LowRankUpdate`)
and dense (anything else, used through `as_matrix()`). Gains, likelihoods and perturbations
dispatch on that structure so they never densify what need not be dense.
"""

from __future__ import annotations

import functools
from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._lowrank import LowRankUpdate, _float_dtype
from ._validation import check_parameter, check_vector, concrete_value

# An infinite variance is not a way to switch an observation off: say what is.
_INF_HINT = "To switch an observation off, put NaN in its entry of the observations instead."

NoiseLike: TypeAlias = lx.AbstractLinearOperator | Real[ArrayLike, "..."]
"""What every ``obs_noise`` argument accepts: a lineax operator, a scalar variance (isotropic,
DAPPER's ``noise=c`` convention), a 1-D array of variances, or a 2-D covariance matrix."""

_DENSE_TAGS = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


def diagonal_noise(variances: Real[ArrayLike, " n"]) -> lx.DiagonalLinearOperator:
    r"""A diagonal (independent-component) noise covariance.

    $$R = \operatorname{diag}(\sigma_1^2, \dots, \sigma_n^2).$$

    **Arguments:**

    - `variances`: the variances ``sigma_i^2``, shape ``(n,)``, non-negative (checked when
        concrete).

    **Returns:** an `lx.DiagonalLinearOperator`.

    **Reference:** DAPPER: ``GaussRV(C=variances)`` with a 1-D ``C``;
    EnsembleKalmanProcesses.jl: ``Diagonal(variances)``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import diagonal_noise

        R = diagonal_noise(jnp.array([0.5, 1.0, 2.0]))
        R.as_matrix()  # diag([0.5, 1, 2])
        ```
    """
    check_vector(variances, "diagonal_noise(variances=...) (pass a 1-D array of variances)")
    variances = jnp.asarray(
        check_parameter(
            variances,
            "diagonal_noise(variances=...) (variances, not log-variances)",
            low=0.0,
            traced=False,
            allow_inf=False,
            hint=_INF_HINT,
        )
    )
    return lx.DiagonalLinearOperator(variances.astype(_float_dtype(variances)))


def isotropic_noise(variance: ScalarLike, n: int) -> lx.DiagonalLinearOperator:
    r"""An isotropic noise covariance ``R = sigma^2 I_n``.

    $$R = \sigma^2 I_n.$$

    **Arguments:**

    - `variance`: the scalar variance ``sigma^2 >= 0`` (may be traced, e.g. to differentiate
        with respect to it).
    - `n`: the dimension (static Python int).

    **Returns:** an `lx.DiagonalLinearOperator` with constant diagonal.

    **Reference:** DAPPER: ``GaussRV(C=variance, M=n)`` / ``noise=variance``;
    EnsembleKalmanProcesses.jl: ``variance * I``.

    !!! Example

        ```python
        from filterax.primitives import isotropic_noise

        R = isotropic_noise(1.0, 40)  # the Lorenz-96 benchmark's R = I_40
        ```
    """
    if jnp.ndim(variance) != 0:
        raise ValueError(
            f"isotropic_noise(variance=...) must be a scalar; got shape {jnp.shape(variance)}. "
            "For per-component variances use diagonal_noise(variances)."
        )
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"isotropic_noise(n=...) must be a positive Python int; got {n!r}.")
    variance = jnp.asarray(
        check_parameter(
            variance,
            "isotropic_noise(variance=...)",
            low=0.0,
            allow_inf=False,
            hint=_INF_HINT,
            traced=False,
        )
    )
    variance = variance.astype(_float_dtype(variance))
    return lx.DiagonalLinearOperator(jnp.full((int(n),), variance, dtype=variance.dtype))


def dense_noise(cov: Float[ArrayLike, "n n"]) -> lx.MatrixLinearOperator:
    r"""A full (correlated) noise covariance matrix, tagged symmetric positive semidefinite.

    $$R \in \mathbb{R}^{n \times n}, \quad R = R^\top \succeq 0.$$

    Symmetry and non-negative variances are checked when `cov` is concrete.

    **Arguments:**

    - `cov`: the covariance matrix, shape ``(n, n)``.

    **Returns:** ``lx.MatrixLinearOperator(cov, (symmetric_tag, positive_semidefinite_tag))``,
    which `lx.linear_solve` solves by Cholesky.

    **Reference:** DAPPER: ``GaussRV(C=cov)`` with a 2-D ``C``; EnsembleKalmanProcesses.jl:
    a plain matrix ``Γ``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import dense_noise

        R = dense_noise(jnp.array([[1.0, 0.3], [0.3, 2.0]]))
        ```
    """
    shape = jnp.shape(cov)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(
            f"dense_noise(cov=...) must be a square (n, n) covariance matrix; got shape {shape}. "
            "For variances use diagonal_noise(variances); for low-rank-plus-diagonal noise use "
            "low_rank_noise(factor, diagonal)."
        )
    try:
        concrete = np.asarray(cov)
    except Exception:  # a tracer: cannot be checked at trace time
        concrete = None
    if concrete is not None:
        if not np.all(np.isfinite(concrete)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(concrete))[0])
            raise ValueError(
                f"dense_noise(cov=...) has a non-finite entry (NaN or inf) at index {bad}; pass "
                "a finite covariance. To switch an observation off, put NaN in its entry of the "
                "observations instead."
            )
        scale = float(np.max(np.abs(concrete))) if concrete.size else 0.0
        # Tolerance: float32 round-off on entries of size `scale` is ~1e-7 * scale; asymmetry
        # beyond 1e-5 relative is a user error (e.g. a transposed factor), not round-off.
        if not np.allclose(concrete, concrete.T, rtol=0.0, atol=1e-5 * scale):
            raise ValueError(
                "dense_noise(cov=...) must be symmetric; got a matrix with max |C - C^T| = "
                f"{float(np.max(np.abs(concrete - concrete.T)))}. Symmetrise it with "
                "(C + C.T) / 2."
            )
        if np.any(np.diagonal(concrete) < 0):
            raise ValueError(
                "dense_noise(cov=...) has negative variances on its diagonal; a covariance "
                "matrix must be positive semidefinite."
            )
    cov = jnp.asarray(cov)
    return lx.MatrixLinearOperator(cov.astype(_float_dtype(cov)), _DENSE_TAGS)


def low_rank_noise(
    factor: Float[ArrayLike, "n k"], diagonal: Float[ArrayLike, " n"] | None = None
) -> LowRankUpdate:
    r"""A low-rank-plus-diagonal noise covariance ``R = diag(d) + U U^T``.

    $$R = \operatorname{diag}(d) + U U^\top.$$

    Typical for correlated observation errors modelled by a few error modes on top of
    independent errors. Gains and likelihoods then cost ``O((N_e + k)^2 N_y)``.

    **Arguments:**

    - `factor`: ``U``, shape ``(n, k)``.
    - `diagonal`: ``d``, shape ``(n,)``, non-negative; must be positive to be used as
        observation noise in a gain or likelihood.

    **Returns:** a `LowRankUpdate`.

    **Reference:** Woodbury (1950). No direct DAPPER / EnsembleKalmanProcesses.jl equivalent
    (both densify).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import low_rank_noise

        R = low_rank_noise(jnp.ones((10, 1)) * 0.3, jnp.full(10, 0.5))
        ```
    """
    return LowRankUpdate(factor, diagonal)


def as_noise_operator(
    noise: NoiseLike, n: int, *, dtype: jnp.dtype | type | None = None
) -> lx.AbstractLinearOperator:
    """Coerce any accepted noise specification to an ``(n, n)`` lineax operator.

    - a lineax operator: returned unchanged (its size is checked);
    - a scalar ``c``: ``isotropic_noise(c, n)`` (DAPPER's ``noise=c``);
    - a 1-D array: ``diagonal_noise(noise)``;
    - a 2-D array: ``dense_noise(noise)``.

    **Arguments:**

    - `noise`: the noise covariance in any of the forms above.
    - `n`: the expected dimension (static Python int).
    - `dtype`: if given, arrays (not operators) are cast to it, so that e.g. a Python-float
        variance does not promote a float32 computation to float64.

    **Returns:** an `lx.AbstractLinearOperator` of size ``(n, n)``.

    **Reference:** DAPPER's ``GaussRV(C=...)`` accepts the same forms.

    !!! Example

        ```python
        from filterax.primitives import as_noise_operator

        as_noise_operator(1.0, 3).as_matrix()  # the 3 x 3 identity
        ```
    """
    if isinstance(noise, lx.AbstractLinearOperator):
        in_size, out_size = noise.in_size(), noise.out_size()
        if in_size != n or out_size != n:
            raise ValueError(
                f"the noise operator must be square of size {n} x {n} to match the "
                f"observations; got {out_size} x {in_size}. Pass an operator with one row per "
                "observation component."
            )
        return noise
    if not (isinstance(noise, int | float | np.ndarray | np.number | jax.Array)):
        raise TypeError(
            "noise must be a lineax operator, a scalar variance, a 1-D array of variances or a "
            f"2-D covariance matrix; got {type(noise).__name__}."
        )
    ndim = jnp.ndim(noise)
    if dtype is not None:
        noise = jnp.asarray(noise, dtype=dtype)
    if ndim == 0:
        return isotropic_noise(noise, n)
    if ndim == 1:
        check_vector(noise, "the noise variances (one per observation component)", n)
        return diagonal_noise(noise)
    if ndim == 2:
        if jnp.shape(noise) != (n, n):
            raise ValueError(
                f"the noise covariance matrix must have shape ({n}, {n}) to match the "
                f"observations; got {jnp.shape(noise)}."
            )
        return dense_noise(noise)
    raise ValueError(
        f"noise arrays must be 0-D (variance), 1-D (variances) or 2-D (covariance); got shape "
        f"{jnp.shape(noise)}. Pass a lineax operator for anything else."
    )


NoiseStructure: TypeAlias = Literal["diagonal", "low_rank", "dense"]


def noise_structure(op: lx.AbstractLinearOperator) -> NoiseStructure:
    """Classify a noise operator as ``"diagonal"``, ``"low_rank"`` or ``"dense"`` (static).

    ``"low_rank"`` means a `LowRankUpdate` (diagonal plus ``U U^T``); ``"diagonal"`` anything
    `lx.is_diagonal` recognises; ``"dense"`` everything else.

    **Arguments:**

    - `op`: a square lineax operator.

    **Returns:** one of the three strings, decided at trace time.

    **Reference:** the cost of the gain per ``R`` structure (Conventions page of the docs);
    DAPPER's ``CovMat`` makes the same distinction through its ``kind`` attribute.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import diagonal_noise, noise_structure

        noise_structure(diagonal_noise(jnp.ones(3)))  # "diagonal"
        ```
    """
    if isinstance(op, LowRankUpdate):
        return "low_rank"
    if lx.is_diagonal(op):
        return "diagonal"
    return "dense"


def _operator_dtype(op: lx.AbstractLinearOperator) -> jnp.dtype:
    return jnp.dtype(op.in_structure().dtype)


def _noise_diagonal(op: lx.AbstractLinearOperator) -> Array:
    # The diagonal of an operator `noise_structure` calls "diagonal", in the operator's dtype
    # (lx.diagonal of an IdentityLinearOperator would otherwise be the default float dtype).
    return jnp.asarray(lx.diagonal(op), dtype=_operator_dtype(op))


@functools.singledispatch
def noise_sqrt(op: lx.AbstractLinearOperator) -> lx.AbstractLinearOperator:
    r"""A square root ``L`` of a noise covariance: ``L L^T = R``, chosen by structure.

    - diagonal ``R = diag(d)``: ``L = diag(sqrt(d))`` (``n x n``);
    - ``R = diag(d) + U U^T``: the rectangular ``L = [diag(sqrt(d)), U]`` (``n x (n + k)``),
      applied matrix-free; without a diagonal, ``L = U`` (``n x k``);
    - dense ``R``: the lower Cholesky factor (``R`` must be positive definite).

    The rule is chosen by the operator's type (a `functools.singledispatch` registry, like
    `noise_whitening`): ``@noise_sqrt.register(MyOperator)`` adds one for a new structure;
    unregistered types use the diagonal rule when `lx.is_diagonal`, else the dense one.

    Draw ``epsilon ~ N(0, R)`` as ``L.mv(z)`` with ``z ~ N(0, I_m)``, ``m = L.in_size()``.

    **Arguments:**

    - `op`: the noise covariance operator (anything `as_noise_operator` returns).

    **Returns:** a lineax operator ``L`` of shape ``(n, m)``.

    **Reference:** DAPPER: ``CovMat.sym_sqrt`` / ``.chol``; the rectangular root is the
    standard way to sample a low-rank-plus-diagonal Gaussian without densifying.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import dense_noise, noise_sqrt

        L = noise_sqrt(dense_noise(jnp.array([[1.0, 0.3], [0.3, 2.0]])))
        eps = L.mv(jax.random.normal(jax.random.key(0), (L.in_size(),)))
        ```
    """
    if not isinstance(op, lx.AbstractLinearOperator):
        raise TypeError(
            f"noise_sqrt needs a lineax operator; got {type(op).__name__}. Convert arrays with "
            "as_noise_operator(noise, n) first."
        )
    if lx.is_diagonal(op):
        return lx.DiagonalLinearOperator(jnp.sqrt(_noise_diagonal(op)))
    matrix = op.as_matrix()
    concrete = concrete_value(matrix)
    if concrete is not None:
        eigenvalues = np.linalg.eigvalsh(concrete)
        if eigenvalues.min() <= 0:
            raise ValueError(
                "noise_sqrt needs a positive-definite dense covariance (it takes a Cholesky "
                f"factor); the smallest eigenvalue is {eigenvalues.min():.3g}. For a singular "
                "covariance pass low_rank_noise(factor, diagonal) or add a small positive "
                "jitter to the diagonal."
            )
    chol = jnp.linalg.cholesky(matrix)
    return lx.MatrixLinearOperator(chol, lx.lower_triangular_tag)


@noise_sqrt.register(LowRankUpdate)
def _(op: LowRankUpdate) -> lx.AbstractLinearOperator:
    if op.diagonal is None:
        return lx.MatrixLinearOperator(op.factor)
    n, k = op.factor.shape
    sqrt_diag = jnp.sqrt(op.diagonal)
    factor = op.factor

    def root(z):
        return sqrt_diag * z[:n] + jnp.matmul(factor, z[n:], precision=jax.lax.Precision.HIGHEST)

    in_structure = jax.ShapeDtypeStruct((n + k,), op.factor.dtype)
    return lx.FunctionLinearOperator(root, in_structure)
