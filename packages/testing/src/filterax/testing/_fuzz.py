"""Fuzz helpers for the "no silent wrong answers" rule.

A bad input must give a clear error that names the fix, or a status a user cannot miss; never
a silent NaN and never a plausible number with status OK. `assert_loud` classifies one call
against that rule; the tables below are the bad values every package's fuzz module feeds its
public functions (concrete, under `jit`, and as one member of a `vmap` batch).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["BAD_SCALARS", "CLEAR_ERRORS", "assert_loud", "first_line"]

#: Scalars that are wrong for a variance, a radius, an inflation factor or a time step.
BAD_SCALARS: dict[str, float] = {
    "nan": float("nan"),
    "+inf": float("inf"),
    "-inf": float("-inf"),
    "negative": -1.0,
    "zero": 0.0,
}

#: Error types that count as a clear refusal when their message matches. Runtime errors are
#: what `eqx.error_if` raises for traced values (`EquinoxRuntimeError`, or JAX's runtime
#: error wrapping it under plain `jax.jit`).
CLEAR_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, RuntimeError)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (what a user reads first)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def _statuses(result: Any) -> np.ndarray | None:
    status = getattr(result, "status", None)
    if status is None:
        return None
    return np.asarray(status)


def _nonfinite_leaves(result: Any) -> list[str]:
    bad = []
    leaves = jax.tree_util.tree_leaves_with_path(result)
    for path, leaf in leaves:
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue  # a PRNG key (e.g. in a process state) has no finiteness
        arr = np.asarray(leaf) if hasattr(leaf, "dtype") else None
        if (
            arr is not None
            and np.issubdtype(arr.dtype, np.inexact)
            and not np.all(np.isfinite(arr))
        ):
            bad.append(jax.tree_util.keystr(path))
    return bad


def assert_loud(
    fn: Callable[[], Any],
    *,
    match: str,
    member: int | None = None,
    allow_finite: bool = False,
) -> str:
    """Call ``fn()`` and assert that a bad input was reported, not silently used.

    Passes, returning ``"error"``, when ``fn`` raises one of `CLEAR_ERRORS` whose message
    matches the regex `match` (e.g. the parameter's name); a crash of another type, or a
    message that does not say what was wrong, fails. Passes, returning ``"status"``, when the
    result has a non-zero ``status`` (for a `vmap` batch: at index `member`, the bad member).
    Otherwise the call returned a value with status OK: with ``allow_finite=True`` (a bad input
    the library documents as handled, e.g. a NaN observation = missing) that passes when every
    floating leaf is finite (``"value"``); in every other case it fails, naming the non-finite
    leaves (a silent NaN) or saying that a plausible number came back.
    """
    try:
        result = jax.block_until_ready(fn())
    except CLEAR_ERRORS as err:
        message = str(err)
        if not re.search(match, message):
            raise AssertionError(
                f"unclear error: expected a message matching {match!r}; got "
                f"{type(err).__name__}: {first_line(err)}"
            ) from err
        return "error"
    status = _statuses(result)
    if status is not None:
        flagged = status if member is None else status[member]
        if np.any(flagged != 0):
            return "status"
    bad = _nonfinite_leaves(result)
    if bad:
        raise AssertionError(f"silent NaN/inf with status OK in {', '.join(bad[:5])}")
    if not allow_finite:
        raise AssertionError("a bad input came back as a finite result with status OK")
    return "value"
