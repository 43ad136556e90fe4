"""Dense linear-algebra helpers shared by every package (explicit matmul precision)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike

__all__ = ["matmul"]

_HIGHEST = lax.Precision.HIGHEST


def matmul(a: ArrayLike, b: ArrayLike) -> Array:
    r"""``a @ b`` at the highest matmul precision.

    $$C = A B, \qquad \texttt{precision} = \texttt{HIGHEST}.$$

    On GPUs the default matmul precision may be TF32 (a 10-bit mantissa), far too coarse for
    covariances, Gram matrices and ensemble transforms; every ensemble algebra in filterax goes
    through this one function so the choice is made once. Same semantics as `jnp.matmul`
    (batching, vector-matrix products).

    **Arguments:**

    - `a`, `b`: arrays with matching inner dimensions.

    **Returns:** the product.

    **Reference:** JAX's ``jax.default_matmul_precision``; DAPPER works in NumPy float64, which
    this reproduces on accelerators.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import matmul

        matmul(jnp.ones((2, 3)), jnp.ones((3, 4)))  # 3 everywhere, at full precision
        ```
    """
    return jnp.matmul(a, b, precision=_HIGHEST)
