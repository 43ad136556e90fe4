"""Random mean-preserving orthogonal rotations of ensemble anomalies (DAPPER's ``rot``).

A deterministic square-root filter maps the forecast anomalies to analysis anomalies by a
fixed rule, so over many cycles the members can line up along preferred directions (outliers,
"ensemble collapse onto a few members"). Rotating the anomalies by a random orthogonal matrix
$\\Theta$ with $\\Theta\\mathbf 1 = \\mathbf 1$ each cycle changes the realisation without
changing the sample mean or covariance (Sakov & Oke 2008; Livings, Dance & Nichols 2008).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = ["mean_preserving_rotation", "random_rotation", "rotate_ensemble", "rotate_with"]

_HIGHEST = jax.lax.Precision.HIGHEST


def random_rotation(
    key: PRNGKeyArray, n_ensemble: int, dtype: Any = None
) -> Float[Array, "N_e N_e"]:
    """A random orthogonal ``(N_e, N_e)`` matrix that maps the vector of ones to itself.

    $$\\Theta = e e^\\top + V Q V^\\top,\\qquad e = \\mathbf 1/\\sqrt{N_e},$$

    where the columns of $V \\in \\mathbb R^{N_e \\times (N_e - 1)}$ are an orthonormal basis of
    the complement of $e$ (the last $N_e - 1$ columns of the Householder reflection that swaps
    $e$ and the first unit vector) and $Q$ is Haar-distributed on $O(N_e - 1)$. Hence
    $\\Theta^\\top \\Theta = I$ and $\\Theta \\mathbf 1 = \\Theta^\\top \\mathbf 1 = \\mathbf 1$:
    applied to the member axis of an ensemble's anomalies it keeps the ensemble mean and the
    sample covariance exactly.

    **Arguments:**

    - `key`: a JAX PRNG key (same key, same matrix).
    - `n_ensemble`: the ensemble size $N_e \\ge 2$ (a Python int).
    - `dtype`: floating dtype of the result (default: JAX's default float).

    **Returns:**

    The ``(N_e, N_e)`` matrix $\\Theta$.

    Reference: DAPPER's `genOG_1(N, True)` (from Sakov & Bocquet's iEnKS code); P. Sakov and
    P. R. Oke (2008), "Implications of the form of the ensemble transformation in the ensemble
    square root filters", MWR 136, 1042-1053.

    **Example:**

    ```python
    theta = random_rotation(jax.random.key(0), 10)
    theta @ jnp.ones(10)  # == ones(10)
    ```
    """
    if isinstance(n_ensemble, bool) or not isinstance(n_ensemble, int) or n_ensemble < 2:
        raise ValueError(
            f"random_rotation needs the ensemble size as a Python int >= 2; got {n_ensemble!r}."
        )
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"random_rotation needs a floating dtype; got {dtype}.")
    # Haar on O(n - 1): QR of a Gaussian matrix with the signs of diag(R) moved into Q
    # (Mezzadri 2007); jax.random.orthogonal does exactly that.
    return mean_preserving_rotation(jax.random.orthogonal(key, n_ensemble - 1, dtype=dtype))


def mean_preserving_rotation(q: Float[Array, "n n"]) -> Float[Array, "n+1 n+1"]:
    """Embed an orthogonal ``(N_e - 1, N_e - 1)`` matrix as a mean-preserving rotation.

    $$\\Theta = e e^\\top + V Q V^\\top,\\qquad e = \\mathbf 1/\\sqrt{N_e},$$

    with $V$ the basis of `random_rotation` (``random_rotation(key, N_e, dtype) ==
    mean_preserving_rotation(jax.random.orthogonal(key, N_e - 1, dtype=dtype))``). Drawing $Q$
    ahead for many cycles and embedding it in the cycle gives the same matrix, bit for bit.

    **Arguments:** `q`: an orthogonal ``(N_e - 1, N_e - 1)`` matrix.

    **Returns:** the ``(N_e, N_e)`` matrix $\\Theta$ ($\\Theta \\mathbf 1 = \\mathbf 1$).
    """
    q = jnp.asarray(q)
    dtype = q.dtype
    n = q.shape[0] + 1
    e = jnp.full((n,), 1.0 / jnp.sqrt(jnp.asarray(n, dtype)), dtype)
    # Householder reflection H = I - 2 w w^T / (w^T w) with w = e - e_1 swaps e and e_1, so
    # H[:, 1:] spans the orthogonal complement of e. w != 0 because n >= 2.
    w = e.at[0].add(-1.0)
    householder = jnp.eye(n, dtype=dtype) - 2.0 * jnp.outer(w, w) / jnp.dot(w, w)
    basis = householder[:, 1:]
    rotated = jnp.matmul(jnp.matmul(basis, q, precision=_HIGHEST), basis.T, precision=_HIGHEST)
    return rotated + jnp.outer(e, e)


def rotate_ensemble(
    key: PRNGKeyArray, ensemble: Float[ArrayLike, "N_e N_x"]
) -> Float[Array, "N_e N_x"]:
    """Randomly rotate the anomalies of an ensemble, keeping its mean and covariance.

    $$X \\leftarrow \\bar x + \\Theta (X - \\bar x)$$

    with $\\Theta$ from `random_rotation` acting on the member axis. The sample mean and the
    sample covariance are unchanged (up to round-off); the members are new. This is DAPPER's
    `post_process(E, infl=1, rot=True)`, applied once per cycle after the analysis and the
    inflation by `assimilate(..., rotate=True)`.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `ensemble`: ``(N_e, N_x)`` ensemble, members on the first axis (``N_e >= 2``).

    **Returns:**

    The rotated ``(N_e, N_x)`` ensemble.

    Reference: as `random_rotation`; DAPPER's `rot` option of the EnKF family.

    **Example:**

    ```python
    X = jax.random.normal(jax.random.key(0), (10, 3))
    Xr = rotate_ensemble(jax.random.key(1), X)  # same mean and covariance as X
    ```
    """
    ensemble = jnp.asarray(ensemble)
    if ensemble.ndim != 2 or ensemble.shape[0] < 2:
        raise ValueError(
            f"rotate_ensemble needs an (N_e, N_x) ensemble with N_e >= 2 members on the first "
            f"axis; got shape {ensemble.shape}."
        )
    if not jnp.issubdtype(ensemble.dtype, jnp.floating):
        raise TypeError(f"rotate_ensemble needs a floating ensemble; got dtype {ensemble.dtype}.")
    return rotate_with(random_rotation(key, ensemble.shape[0], ensemble.dtype), ensemble)


def rotate_with(
    theta: Float[Array, "N_e N_e"], ensemble: Float[ArrayLike, "N_e N_x"]
) -> Float[Array, "N_e N_x"]:
    """Rotate the anomalies of an ensemble by a given mean-preserving orthogonal matrix.

    $$X \\leftarrow \\bar x + \\Theta (X - \\bar x)$$

    `rotate_ensemble(key, X)` is ``rotate_with(random_rotation(key, N_e, dtype), X)``; use this
    form when the matrices are drawn ahead (`filterax.primitives.AbstractPresampledMethod`).

    **Arguments:** `theta` ``(N_e, N_e)`` (from `random_rotation` or
    `mean_preserving_rotation`), `ensemble` ``(N_e, N_x)``.

    **Returns:** the rotated ensemble.
    """
    ensemble = jnp.asarray(ensemble)
    mean = jnp.mean(ensemble, axis=0)
    anomalies = ensemble - mean[None, :]
    return mean[None, :] + jnp.matmul(theta, anomalies, precision=_HIGHEST)
