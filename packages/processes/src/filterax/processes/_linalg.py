"""Ensemble-space linear algebra of the processes: full-precision products, stacked factors."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

import filterax.primitives as fxp

__all__ = ["mm", "stack_factor", "stack_factors"]

# The one full-precision product (on GPUs the default may be TF32, far too coarse for
# covariances); a short local name for the ensemble algebra.
mm = fxp.matmul


def stack_factors(
    first: Array | None, n_first: int, second: Array | None, n_second: int, dtype: jnp.dtype
) -> Array | None:
    """The block-diagonal factor ``[[F1, 0], [0, F2]]`` of two stacked whitened blocks."""
    if first is None and second is None:
        return None
    f1 = jnp.zeros((n_first, 0), dtype) if first is None else first
    f2 = jnp.zeros((n_second, 0), dtype) if second is None else second
    top = jnp.concatenate([f1, jnp.zeros((n_first, f2.shape[1]), dtype)], axis=1)
    bottom = jnp.concatenate([jnp.zeros((n_second, f1.shape[1]), dtype), f2], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def stack_factor(first: Array, noise_factor: Array | None) -> Array:
    """``[first, U~]``: the factor of ``first first^T + N`` written as ``I + F F^T``."""
    if noise_factor is None:
        return first
    return jnp.concatenate([first, noise_factor], axis=1)
