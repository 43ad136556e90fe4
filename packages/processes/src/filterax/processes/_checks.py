"""Eager checks of what a user hands a process: observations, noise, hyper-parameters, timeouts.

Only concrete values are checked here (a traced value, under `jit`, `vmap` or `grad`, passes
through and is caught at run time by the state's `status`, see `_status.py`). A bad value is a
`ValueError` that names the argument, the first offending index and what to pass instead.

The processes have no missing-data rule: an inverse problem ``y = G(theta) + eta`` uses every
entry of ``y`` in every update, so a NaN or infinite observation is an error here, not "not
observed" as in the filters.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import filterax.primitives as fxp

__all__ = [
    "OBS_NOISE_HINT",
    "any_traced",
    "check_hyperparameter",
    "check_initial_ensemble",
    "check_key",
    "check_obs",
    "check_noise_entries",
    "check_timeout",
    "checked_obs_noise",
    "in_range",
]

_NO_MISSING_DATA = (
    "Ensemble Kalman processes do not support missing data (unlike the filters, a NaN "
    "observation is not 'unobserved' here: every entry of y enters every update)"
)


def _where(index: tuple[int, ...]) -> str:
    return "" if not index else "[" + ", ".join(str(i) for i in index) + "]"


def check_obs(obs: Any, name: str) -> None:
    """``obs`` is a non-empty 1-D vector; concrete entries must all be finite.

    The error names the first non-finite index and says how to leave that observation out.
    """
    shape = jnp.shape(obs)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"{name} must be a non-empty 1-D observation vector (N_y,); got shape {shape}."
        )
    values = fxp.concrete_value(obs)
    if values is None:
        return
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name} has a non-finite entry at index {i} (value {values[i]}; {bad.size} of "
            f"{values.size} entries are NaN or inf). {_NO_MISSING_DATA}. Remove entry {i} from "
            "obs, the matching entry of the forward model's output and the matching row and "
            "column of obs_noise."
        )


def check_initial_ensemble(x: Any, name: str) -> None:
    """Concrete entries of an initial ensemble (or UKI's initial mean) must all be finite.

    A NaN/inf member is not a failed forward evaluation: the update would re-sample it (the
    EKI family), keep it as NaN (`EKS`, ``throw=False`` smoothers) or blame the forward model.
    The error names the first non-finite index.
    """
    values = fxp.concrete_value(x)
    if values is None or not np.issubdtype(values.dtype, np.inexact):
        return
    bad = ~np.isfinite(values)
    if np.any(bad):
        index = tuple(int(k) for k in np.unravel_index(int(np.argmax(bad)), values.shape))
        where = index[0] if len(index) == 1 else index
        raise ValueError(
            f"{name} has a non-finite entry at index {where} (value {values[index]}; "
            f"{int(bad.sum())} of {values.size} entries are NaN or inf). The initial ensemble "
            "must be finite: a NaN member is not a failed forward evaluation (the update would "
            "re-sample it, keep it as NaN or blame the forward model). Draw that member again "
            "or leave it out."
        )


def _noise_entries(noise: Any) -> list[tuple[str, np.ndarray | None]]:
    """The concrete arrays of a noise covariance, labelled by what they hold."""
    if isinstance(noise, fxp.LowRankUpdate):
        diagonal = None if noise.diagonal is None else fxp.concrete_value(noise.diagonal)
        return [("low-rank factor", fxp.concrete_value(noise.factor)), ("variance", diagonal)]
    if isinstance(noise, lx.DiagonalLinearOperator):
        return [("variance", fxp.concrete_value(noise.diagonal))]
    if isinstance(noise, lx.MatrixLinearOperator):
        return [("covariance", fxp.concrete_value(noise.matrix))]
    if isinstance(noise, lx.AbstractLinearOperator):
        return []  # other operators: positive_definite_noise checks their dense form
    values = fxp.concrete_value(noise)
    if values is None or values.ndim > 2 or not np.issubdtype(values.dtype, np.number):
        return []  # shapes and kinds are positive_definite_noise's to refuse
    return [("variance" if values.ndim < 2 else "covariance", values)]


OBS_NOISE_HINT = (
    f" {_NO_MISSING_DATA}: to leave an observation out, remove it from obs, the forward "
    "model's output and obs_noise."
)


def check_noise_entries(
    noise: Any, name: str, *, semidefinite: bool = False, hint: str = OBS_NOISE_HINT
) -> None:
    """Concrete covariance entries: finite, and positive variances, naming the first bad index.

    A scalar or a vector holds variances, a matrix a covariance (its diagonal must be
    positive), a `LowRankUpdate` a factor and variances. Other operators are left to
    `filterax.primitives.positive_definite_noise`. ``semidefinite`` accepts zero variances;
    ``hint`` ends the non-finite message (by default: processes have no missing data).
    """
    for what, values in _noise_entries(noise):
        if values is None or values.size == 0:
            continue
        bad = ~np.isfinite(values)
        if np.any(bad):
            index = tuple(int(k) for k in np.unravel_index(int(np.argmax(bad)), values.shape))
            raise ValueError(
                f"{name}: {what}{_where(index)} is {values[index]}; a covariance must be finite "
                f"(pass variances, i.e. squared standard deviations).{hint}"
            )
        if what == "low-rank factor":
            continue
        variances = np.diagonal(values) if values.ndim == 2 else np.reshape(values, -1)
        low = variances < 0 if semidefinite else variances <= 0
        if np.any(low):
            i = int(np.flatnonzero(low)[0])
            index = (i, i) if values.ndim == 2 else ((i,) if values.ndim == 1 else ())
            kind = "semidefinite" if semidefinite else "definite"
            if variances[i] < 0 and values.ndim == 2:
                problem = (
                    f"a covariance with negative variances on its diagonal is not positive {kind}"
                )
            elif variances[i] < 0:
                problem = "a variance must be non-negative (it is a squared standard deviation)"
                if not semidefinite:
                    problem += ", and > 0 for a positive definite covariance"
            else:  # a zero variance where a positive definite covariance is needed
                problem = (
                    "a covariance must be positive definite (the noise is whitened by "
                    "Gamma^{-1/2}), so every variance must be > 0"
                )
            raise ValueError(
                f"{name}: {what}{_where(index)} is {variances[i]}; {problem}. Pass variances "
                "(squared standard deviations), not log-variances or signed values."
            )


def checked_obs_noise(
    noise: Any, n: int, *, dtype: Any, name: str, hint: str = ""
) -> lx.AbstractLinearOperator:
    """`check_noise_entries`, then `positive_definite_noise` (shape and definiteness)."""
    check_noise_entries(noise, name)
    return fxp.positive_definite_noise(noise, n, dtype=dtype, name=name, hint=hint)


def check_hyperparameter(
    value: Any,
    name: str,
    *,
    low: float = 0.0,
    strict: bool = False,
    high: float | None = None,
    hint: str = "",
) -> None:
    """A concrete hyper-parameter must be finite and lie in ``[low, high]`` (``(low, high]``).

    Traced values pass (the processes' run-time status reports a non-finite one).
    """
    values = fxp.concrete_value(value)
    if values is None:
        return
    values = np.asarray(values, dtype=float)
    bad = ~np.isfinite(values) | (values <= low if strict else values < low)
    if high is not None:
        bad = bad | (values > high)
    if np.any(bad):
        lower = f"> {low:g}" if strict else f">= {low:g}"
        bounds = lower if high is None else f"{lower} and <= {high:g}"
        shown = values.tolist() if values.ndim else float(values)
        raise ValueError(f"{name} must be finite and {bounds}; got {shown}.{hint}")


def in_range(
    value: Any, *, low: float = 0.0, strict: bool = False, high: float | None = None
) -> jax.Array:
    """Traceable `check_hyperparameter`: whether ``value`` is finite and in ``[low, high]``.

    For a process's ``_hyperparameters_ok`` (`_status.hyperparameters_ok`): traced values are
    only known at run time, where a bad one sets the state's status.
    """
    v = jnp.asarray(value)
    ok = jnp.isfinite(v) & ((v > low) if strict else (v >= low))
    if high is not None:
        ok = ok & (v <= high)
    return jnp.all(ok)


def check_timeout(timeout: Any, name: str) -> None:
    """``None`` (wait forever) or a positive, finite number of seconds."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float | np.integer | np.floating):
        raise TypeError(
            f"{name} must be a number of seconds, or None to wait forever; got "
            f"{type(timeout).__name__}."
        )
    if not (math.isfinite(float(timeout)) and timeout > 0):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds (or None to wait forever); "
            f"got {timeout!r}. A timeout <= 0 would fail every member before it starts."
        )


def check_key(key: Any, name: str) -> None:
    """A `TypeError` naming ``jax.random.key`` unless ``key`` is a JAX PRNG key.

    `filterax.primitives.check_prng_key`, also accepting raw ``uint32[4]`` keys (the ``rbg``
    implementations' ``jax.random.PRNGKey``).
    """
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape[-1:] == (4,):
        return
    fxp.check_prng_key(key, name)


def any_traced(*trees: Any) -> bool:
    """Whether any leaf of ``trees`` is a tracer (its value is unknown until run time)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))
