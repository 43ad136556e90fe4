"""Trace-time input checks shared by every public function.

All checks look only at static information (shapes, dtypes, Python numbers), so they run at
trace time under `jax.jit` and raise before any computation. Messages say what to pass instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_ensemble(x: Any, name: str = "ensemble", *, min_members: int = 2) -> None:
    """Raise unless ``x`` is a floating ``(N_e, N_x)`` array with ``N_e >= min_members``."""
    shape = jnp.shape(x)
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (N_e, N_x) with the ensemble axis first; "
            f"got shape {shape}. Stack members along axis 0 (e.g. jnp.stack(members))."
        )
    if shape[0] < min_members:
        raise ValueError(
            f"{name} has N_e={shape[0]} members; at least {min_members} are needed for "
            "ensemble statistics (the Bessel-corrected covariance divides by N_e - 1). "
            "Pass an ensemble with more members."
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {jnp.result_type(x)}. "
            "Cast it with .astype(jnp.float32) or .astype(jnp.float64)."
        )


def check_vector(x: Any, name: str, size: int | None = None) -> None:
    """Raise unless ``x`` is a 1-D array (of length ``size`` when given)."""
    shape = jnp.shape(x)
    if len(shape) != 1:
        raise ValueError(f"{name} must be a 1-D array; got shape {shape}.")
    if size is not None and shape[0] != size:
        raise ValueError(f"{name} must have length {size}; got length {shape[0]}.")


def check_same_members(a: Any, b: Any, name_a: str, name_b: str) -> None:
    """Raise unless two ensembles have the same number of members (leading axis)."""
    na, nb = jnp.shape(a)[0], jnp.shape(b)[0]
    if na != nb:
        raise ValueError(
            f"{name_a} has {na} members but {name_b} has {nb}; both must share the leading "
            "ensemble axis (N_e). Apply the observation operator to every member with jax.vmap."
        )


def concrete_value(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array when it is known at trace time, else ``None``.

    The one place that decides whether a value can be checked eagerly: Python numbers, numpy
    and concrete JAX arrays give an array; a tracer (a value under `jit`, `vmap` or `grad`)
    gives ``None``, and such values must be checked at run time (a status or `eqx.error_if`).

    **Example:**

    ```python
    concrete_value(1.5)                          # array(1.5)
    jax.jit(lambda x: concrete_value(x) is None)(1.0)  # True
    ```
    """
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return None


def check_nonnegative(value: Any, name: str) -> None:
    """Raise if a concrete (non-traced) value is negative; traced values pass through."""
    arr = concrete_value(value)
    if arr is None:
        return
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative; got {value}.")


def check_positive(value: Any, name: str) -> None:
    """Raise if a concrete (non-traced) value is not strictly positive."""
    arr = concrete_value(value)
    if arr is None:
        return
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be strictly positive; got {value}.")
