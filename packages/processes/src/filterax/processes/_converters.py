"""Field converters shared by the processes' hyper-parameters."""

from __future__ import annotations

from typing import Any

__all__ = ["as_float"]


def as_float(x: Any) -> Any:
    # Python ints would become integer arrays that jax.grad cannot reach; Python floats stay
    # weakly typed and follow the dtype of the ensemble they meet.
    if isinstance(x, int) and not isinstance(x, bool):
        return float(x)
    return x
