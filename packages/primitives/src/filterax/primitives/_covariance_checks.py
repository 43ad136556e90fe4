"""Trace-time checks for inverse problems: noise covariances, observations, forward evaluations.

The ensemble Kalman processes and the inverse-problem smoothers (`filterax.processes`) take a
noise covariance in any `NoiseLike` form, an observation vector, an ``(N_e, N_y)`` block of
forward-model outputs and a PRNG key from the user. These checks coerce and validate them at
trace time, from static information and concrete values only (a traced value passes through,
see `concrete_value`), and say what to pass instead. The ensemble and vector shape checks they
build on are `check_ensemble` and `check_vector`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from ._lowrank import LowRankUpdate
from ._noise import NoiseLike, as_noise_operator, noise_structure
from ._validation import concrete_value

__all__ = [
    "check_forward_evals",
    "check_observation_vector",
    "check_prng_key",
    "floating_dtype",
    "positive_definite_noise",
]


def floating_dtype(x: Any, name: str = "the array") -> jnp.dtype:
    """The floating dtype of ``x``; a `TypeError` for integer, boolean or complex input.

    **Arguments:**

    - `x`: an array-like.
    - `name`: how the error message names ``x``.

    **Returns:** ``jnp.result_type(x)`` as a ``jnp.dtype`` (``float32`` or ``float64``).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import floating_dtype

        floating_dtype(jnp.zeros(3, jnp.float32))  # dtype('float32')
        ```
    """
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {dtype}. Cast it with "
            ".astype(jnp.float32) or .astype(jnp.float64)."
        )
    return jnp.dtype(dtype)


def noise_dimension(noise: Any) -> int | None:
    """The dimension ``n`` a noise covariance describes (an ``n x n`` operator or matrix, or a
    length-``n`` vector of variances), or ``None`` for a scalar ``c I`` that fits any size."""
    if isinstance(noise, lx.DiagonalLinearOperator):
        return jnp.shape(noise.diagonal)[0]
    if isinstance(noise, lx.AbstractLinearOperator):
        return noise.in_size()
    shape = jnp.shape(noise)
    return shape[0] if shape else None


def positive_definite_noise(
    noise: NoiseLike,
    n: int,
    *,
    dtype: Any = None,
    name: str = "noise",
    hint: str = "",
    semidefinite: bool = False,
) -> lx.AbstractLinearOperator:
    r"""Coerce a noise covariance to an ``(n, n)`` lineax operator and check ``Gamma > 0``.

    $$\Gamma = \Gamma^\top \succ 0 \quad\Longleftrightarrow\quad
    \lambda_{\min}\big(\tfrac12(\Gamma + \Gamma^\top)\big) > 0,$$

    checked by structure (`noise_structure`): a diagonal ``Gamma`` needs positive variances, a
    `LowRankUpdate` ``D + U U^T`` a positive diagonal ``D`` (``U U^T`` alone is singular), and a
    dense one a positive smallest eigenvalue of its symmetric part. A noise that will be
    whitened (``Gamma^{-1/2}``) or inverted must pass this; a merely semidefinite one cannot be.
    Only concrete values are checked: traced operators (under `jit`, `vmap`, `grad`) pass
    through unchanged.

    **Arguments:**

    - `noise`: any form `as_noise_operator` accepts (scalar, variances, matrix, operator).
    - `n`: the expected dimension (static Python int).
    - `dtype`: the floating dtype arrays are cast to (operators are returned as given).
    - `name`: how error messages name the argument, e.g. ``"EKI.init(obs_noise=...)"``.
    - `hint`: text appended to the coercion error (what forms to pass).
    - `semidefinite`: accept ``Gamma >= 0`` (zero variances), for a covariance that is only
      sampled or propagated (process noise, an initial covariance), never whitened.

    Non-finite entries (NaN passes every ``<= 0`` test) are always refused.

    **Returns:** the operator (`as_noise_operator(noise, n, dtype=dtype)`).

    **Reference:** the cost of the gain per ``R`` structure (Conventions page of the docs);
    EnsembleKalmanProcesses.jl requires a positive-definite ``obs_noise_cov`` for the same
    reason (it whitens by it).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import positive_definite_noise

        op = positive_definite_noise(jnp.array([0.1, 0.2]), 2, name="obs_noise")
        positive_definite_noise(jnp.array([0.1, 0.0]), 2)  # ValueError: not positive definite
        ```
    """
    if isinstance(noise, lx.DiagonalLinearOperator) and jnp.ndim(noise.diagonal) == 1:
        # The common case, checked without lineax's (eval_shape-based) size queries: this runs
        # before every `filterax.filters.run` call.
        if noise.diagonal.shape[0] != n:
            raise ValueError(
                f"{name}: the noise operator must be square of size {n} x {n} to match the "
                f"observations; got {noise.diagonal.shape[0]} x {noise.diagonal.shape[0]}.{hint}"
            )
        _check_variances(concrete_value(noise.diagonal), name, semidefinite, "it has the variance")
        return noise
    try:
        op = as_noise_operator(noise, n, dtype=dtype)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name}: {err}{hint}") from None
    structure = noise_structure(op)
    if structure == "low_rank":
        assert isinstance(op, LowRankUpdate)
        if op.diagonal is None and not semidefinite:
            raise ValueError(
                f"{name} is a low-rank covariance U U^T without a diagonal, which is singular. "
                "Pass low_rank_noise(factor, diagonal) with positive variances."
            )
        _check_finite(concrete_value(op.factor), name)
        values = None if op.diagonal is None else concrete_value(op.diagonal)
        _check_variances(values, name, semidefinite, "its diagonal has the value")
    elif structure == "diagonal":
        _check_variances(concrete_value(lx.diagonal(op)), name, semidefinite, "it has the variance")
    else:
        matrix = concrete_noise_matrix(op)
        _check_finite(matrix, name)
        if matrix is not None and matrix.size:
            eigenvalues = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
            # Round-off makes a semidefinite matrix's zero eigenvalues slightly negative.
            floor = -1e-10 * max(float(np.abs(eigenvalues).max()), 1.0) if semidefinite else 0.0
            if eigenvalues.min() < floor or (not semidefinite and eigenvalues.min() <= 0):
                kind = "positive-semidefinite" if semidefinite else "positive-definite"
                raise ValueError(
                    f"{name} must be a {kind} covariance; its smallest eigenvalue "
                    f"is {eigenvalues.min():.3g}. Symmetrise it, add a small jitter to the "
                    "diagonal, or pass the variances of a diagonal covariance."
                )
    return op


def valid_noise(noise: NoiseLike, n: int, *, semidefinite: bool = False) -> Array:
    r"""Whether a noise covariance is finite and positive (semi)definite, as a traced boolean.

    The run-time counterpart of `positive_definite_noise` for values that are traced (a noise
    scale under `jax.vmap` or `jax.grad`), which no eager check can see. Checked by structure,
    at the cost of one factorisation at most:

    - diagonal (and scalar ``c I``): every variance finite and $> 0$ ($\ge 0$ with
      `semidefinite`);
    - `LowRankUpdate` ``D + U U^T``: ``D`` as a diagonal, ``U`` finite;
    - dense (a stored matrix): finite, and the Cholesky factor of the symmetric part finite
      ($\Gamma \succ 0$), or with `semidefinite` the smallest eigenvalue
      $\ge -10^{-10}\,\max|\lambda|$. Matrix-free operators are not materialised (they are
      reported valid; their failures show as a non-finite status).

    **Arguments:**

    - `noise`: any form `as_noise_operator` accepts.
    - `n`: its dimension (static Python int).
    - `semidefinite`: accept zero variances (process noise, an initial covariance).

    **Returns:** a boolean scalar array (``True`` when valid). The driver
    (`filterax.filters.run`) turns ``False`` into the status ``INVALID_NOISE``.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.primitives import valid_noise

        jax.vmap(lambda s: valid_noise(s * jnp.ones(3), 3))(jnp.array([1.0, -1.0]))
        # Array([ True, False], dtype=bool)
        ```
    """
    op = as_noise_operator(noise, n)

    def positive(values: Array) -> Array:
        values = jnp.asarray(values)
        ok = (values >= 0) if semidefinite else (values > 0)
        return jnp.all(jnp.isfinite(values) & ok)

    structure = noise_structure(op)
    if structure == "low_rank":
        assert isinstance(op, LowRankUpdate)
        ok = jnp.all(jnp.isfinite(op.factor))
        if op.diagonal is not None:
            ok &= positive(op.diagonal)
        return ok if semidefinite or op.diagonal is not None else jnp.asarray(False)
    if structure == "diagonal":
        return positive(lx.diagonal(op))
    if not isinstance(op, lx.MatrixLinearOperator):
        # A matrix-free operator (a function, a composition) is not materialised here: that
        # could be far larger than the run. Its failures surface as a non-finite status.
        return jnp.asarray(True)
    matrix = op.matrix
    finite = jnp.all(jnp.isfinite(matrix))
    sym = 0.5 * (matrix + matrix.T)
    sym = jnp.where(finite, sym, jnp.eye(n, dtype=sym.dtype))
    if semidefinite:
        eigenvalues = jnp.linalg.eigvalsh(sym)
        floor = -1e-10 * jnp.maximum(jnp.max(jnp.abs(eigenvalues)), 1.0)
        return finite & (jnp.min(eigenvalues) >= floor)
    return finite & jnp.all(jnp.isfinite(jnp.linalg.cholesky(sym)))


MATRIX_FREE_CHECK_MAX = 1024
"""Largest matrix-free noise operator the eager checks materialise (to find its eigenvalues)."""


def concrete_noise_matrix(op: lx.AbstractLinearOperator) -> np.ndarray | None:
    """The concrete matrix of a dense-structured noise operator, for an eager check, or None.

    A stored matrix (`lineax.MatrixLinearOperator`) is read as it is. A matrix-free operator (a
    function, a composition, a user-registered Toeplitz or Kronecker ``R``) is materialised
    only up to `MATRIX_FREE_CHECK_MAX` rows: beyond that, building its ``(n, n)`` matrix and
    eigenvalues would cost far more than the run it guards (``O(n^3)`` for an operator whose
    point is ``O(n)`` products), so it is not checked eagerly; its failures surface as a
    non-finite status, as under `jit`. ``None`` also for traced values.
    """
    if isinstance(op, lx.MatrixLinearOperator):
        return concrete_value(op.matrix)
    if op.in_size() > MATRIX_FREE_CHECK_MAX:
        return None
    return concrete_value(op.as_matrix())


def _check_finite(values: np.ndarray | None, name: str) -> None:
    if values is not None and values.size and not np.all(np.isfinite(values)):
        raise ValueError(
            f"{name} has non-finite entries (NaN or inf); pass finite variances. To switch an "
            "observation off, put NaN in its entry of the observations instead."
        )


def _check_variances(values: np.ndarray | None, name: str, semidefinite: bool, what: str) -> None:
    _check_finite(values, name)
    if values is None or not values.size:
        return
    if semidefinite and values.min() < 0:
        raise ValueError(
            f"{name} must be positive semidefinite; {what} {values.min():.3g}. "
            "Pass non-negative variances (squared standard deviations)."
        )
    if not semidefinite and values.min() <= 0:
        raise ValueError(
            f"{name} must be positive definite; {what} {values.min():.3g}. "
            "Pass strictly positive variances (a zero variance cannot be whitened)."
        )


def check_observation_vector(obs: Any, name: str = "obs", *, finite: bool = True) -> None:
    """Raise unless ``obs`` is a non-empty 1-D vector (with finite entries when ``finite``).

    An inverse problem ``y = G(theta) + eta`` needs every entry of ``y``: NaN here is not a
    "missing observation" as in the filters but an error (finiteness is checked only when
    ``obs`` is concrete).

    **Arguments:**

    - `obs`: the observation vector ``y``.
    - `name`: how error messages name it.
    - `finite`: also reject NaN/inf entries.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import check_observation_vector

        check_observation_vector(jnp.ones(3))            # fine
        check_observation_vector(jnp.ones((3, 1)))       # ValueError: 1-D
        ```
    """
    shape = jnp.shape(obs)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"{name} must be a non-empty 1-D observation vector (N_y,); got shape {shape}."
        )
    if finite:
        values = concrete_value(obs)
        if values is not None and not np.all(np.isfinite(values)):
            raise ValueError(
                f"{name} has non-finite entries; an inverse problem needs every observation. "
                "Drop the missing entries (and the matching rows of G and Gamma)."
            )


def check_forward_evals(
    forward_evals: Any,
    n_ensemble: int,
    n_obs: int | None = None,
    *,
    dtype: Any = None,
) -> Float[Array, "N_e N_y"]:
    """Check that forward evaluations have one row per member and cast them to ``dtype``.

    **Arguments:**

    - `forward_evals`: ``G(theta_j)`` stacked over the members, shape ``(N_e, N_y)``.
    - `n_ensemble`: ``N_e``, the number of members evaluated.
    - `n_obs`: ``N_y`` when it must match too (None: any number of columns).
    - `dtype`: the dtype to cast to (None keeps it).

    **Returns:** the evaluations as a JAX array.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import check_forward_evals

        g = check_forward_evals(jnp.zeros((10, 3)), 10, 3, dtype=jnp.float32)
        ```
    """
    shape = jnp.shape(forward_evals)
    expected_cols = "N_y" if n_obs is None else str(n_obs)
    if len(shape) != 2 or shape[0] != n_ensemble or (n_obs is not None and shape[1] != n_obs):
        raise ValueError(
            f"forward_evals must have shape (N_e, N_y) = ({n_ensemble}, {expected_cols}): one "
            "row G(theta_j) per ensemble member (process.particles(state)); got shape "
            f"{shape}."
        )
    out = jnp.asarray(forward_evals)
    return out if dtype is None else out.astype(dtype)


def check_prng_key(key: Any, name: str = "key") -> None:
    """Raise a `TypeError` unless ``key`` is a JAX PRNG key (new-style or raw ``uint32[2]``).

    !!! Example

        ```python
        import jax
        from filterax.primitives import check_prng_key

        check_prng_key(jax.random.key(0))  # fine
        check_prng_key(0)                  # TypeError: pass jax.random.key(0)
        ```
    """
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = (
        isinstance(key, jax.Array)
        and key.dtype == jnp.uint32
        and key.ndim >= 1
        and key.shape[-1] == 2
    )
    if not (typed or raw):
        shown = key if not isinstance(key, jax.Array) else f"an array of {key.dtype}{key.shape}"
        raise TypeError(f"{name} must be a JAX PRNG key, e.g. jax.random.key(0); got {shown!r}.")
