"""The run-time status of a process: what a traced bad input gets instead of a NaN ensemble.

Concrete inputs are checked when they are given (`_checks.py`). Under `jit`, `vmap` or `grad`
their values are unknown until run time, so every update also checks what it uses:

- the data: the whitened observation ``Gamma^{-1/2} y`` and the noise's whitening (its
  square root) must be finite, which fails for a NaN/inf observation, a NaN/inf noise entry,
  a variance ``<= 0`` and (through the Cholesky factor) a dense covariance that is not
  positive definite;
- the hyper-parameters: every floating-point field of the process (scheduler, inflation,
  localiser, prior, ...) must be finite and within the range its constructor checks for a
  concrete value (``_hyperparameters_ok``), and the time step ``dt`` finite and ``>= 0``.

A failed check sets the state's `status` (`AbstractProcessState.INVALID_DATA` or
`.INVALID_HYPERPARAMETERS`); from then on every update is the identity (``dt = 0``: the
ensemble, the algorithm time and the scheduler state stay where they were), so the state never
turns into NaN, and the status stays (the first cause is kept). `calibrate` raises on it;
`ESMDA` and `IES` raise inside `jit` (``eqx.error_if``) when ``throw=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Int

import filterax.primitives as fxp

from ._checks import any_traced

__all__ = [
    "STATUS_DIVERGED",
    "STATUS_INVALID_DATA",
    "STATUS_INVALID_HYPERPARAMETERS",
    "STATUS_OK",
    "data_ok",
    "hyperparameters_ok",
    "initial_status",
    "next_status",
    "status_messages",
    "whitening_ok",
]

STATUS_OK = 0
STATUS_INVALID_DATA = 1
STATUS_INVALID_HYPERPARAMETERS = 2
STATUS_DIVERGED = 3


def status_messages(owner: str) -> tuple[str, str, str]:
    """What statuses 1, 2 and 3 mean, for `eqx.branched_error_if` and `calibrate`'s errors."""
    return (
        f"{owner}: invalid data (status 1): obs or obs_noise has a NaN/inf entry, a variance "
        "<= 0 or is not positive definite (or the initial ensemble has a NaN/inf entry). "
        "Processes do not support missing data: remove the bad entries from obs, the forward "
        "model's output and obs_noise.",
        f"{owner}: invalid hyper-parameters (status 2): a floating-point parameter of the "
        "process (scheduler, inflation, localiser, prior, ...) is NaN/inf or out of its range "
        "(e.g. a negative inflation scaling, a prior variance <= 0), or the time step is NaN, "
        "infinite or negative. Pass finite values in range (e.g. FixedScheduler(dt) with "
        "dt >= 0), as the constructors require of concrete values.",
        f"{owner}: the update diverged (status 3): valid inputs gave a non-finite ensemble "
        "(numerical overflow, typically an explicit step too large for the problem's "
        "scaling). The state before that update is kept. Use a smaller time step (e.g. "
        "FixedScheduler(0.5) or DataMisfitController), more members, or a narrower prior.",
    )


def whitening_ok(whitening: fxp.Whitening) -> Bool[Array, ""]:
    """Every array of a noise whitening is finite: the covariance was finite and positive
    definite (a NaN/inf entry, a variance ``<= 0`` or a failed Cholesky shows up here)."""
    ok = jnp.asarray(True)
    for leaf in jax.tree.leaves(eqx.filter(whitening, eqx.is_inexact_array)):
        ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def data_ok(white_obs: Array, whitening: fxp.Whitening) -> Bool[Array, ""]:
    """The whitened observation and every array of the noise's whitening are finite.

    The whitening itself is checked, not only ``Gamma^{-1/2} y``: an infinite variance whitens
    its observation to a finite 0 (``y / sqrt(inf)``), which would pass as valid data and
    silently drop that observation (or, in ES-MDA/IES, draw infinite perturbations).
    """
    return jnp.all(jnp.isfinite(white_obs)) & whitening_ok(whitening)


def _modules(tree: Any) -> Iterator[eqx.Module]:
    """Every `eqx.Module` in ``tree`` (the process, its scheduler, inflation, localiser, ...)."""
    if isinstance(tree, eqx.Module):
        yield tree
        for field in dataclasses.fields(tree):
            yield from _modules(getattr(tree, field.name, None))
    elif isinstance(tree, list | tuple):
        for item in tree:
            yield from _modules(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _modules(item)


def hyperparameters_ok(process: Any, dt: Array | None = None) -> Bool[Array, ""]:
    """Every floating-point array of ``process`` is finite, every part of it is within its
    range, and ``dt`` finite and ``>= 0``.

    The ranges are the ones the constructors check for concrete values: a module of the
    process (scheduler, inflation, localiser, the process itself) that has a
    ``_hyperparameters_ok()`` method returns whether its (possibly traced) fields are valid,
    so that e.g. a traced negative inflation scaling or prior variance sets the status instead
    of giving a finite, silently different ensemble (or NaN).
    """
    ok = jnp.asarray(True)
    if dt is not None:
        ok = ok & jnp.isfinite(dt) & (dt >= 0)
        # A process whose update is only stable for small steps (GNKI: dt < 2).
        step_ok = getattr(process, "_step_ok", None)
        if step_ok is not None:
            ok = ok & jnp.asarray(step_ok(dt), bool)
    for leaf in jax.tree.leaves(eqx.filter(process, eqx.is_inexact_array)):
        ok = ok & jnp.all(jnp.isfinite(leaf))
    for module in _modules(process):
        check = getattr(module, "_hyperparameters_ok", None)
        if check is not None:
            ok = ok & jnp.asarray(check(), bool)
    return ok


def next_status(
    status: Int[Array, ""], data_valid: Bool[Array, ""], params_valid: Bool[Array, ""]
) -> Int[Array, ""]:
    """The first failed check, kept once set (data before hyper-parameters)."""
    new = jnp.where(
        data_valid,
        jnp.where(params_valid, STATUS_OK, STATUS_INVALID_HYPERPARAMETERS),
        STATUS_INVALID_DATA,
    )
    return jnp.where(status != STATUS_OK, status, new).astype(jnp.int32)


def initial_status(
    process: Any,
    obs: Array,
    noise: lx.AbstractLinearOperator,
    dtype: Any,
    initial: Any = None,
) -> Int[Array, ""]:
    """The status of a new state: OK for concrete inputs (they were checked eagerly).

    ``initial`` (the initial ensemble, or UKI's mean and covariance) must be finite too: a
    traced NaN member is invalid data, not a failed forward evaluation.
    """
    if not any_traced(obs, noise, process, initial):
        return jnp.asarray(STATUS_OK, jnp.int32)
    whitening = fxp.noise_whitening(noise, dtype)
    valid = data_ok(whitening.white(obs), whitening)
    for leaf in jax.tree.leaves(initial):
        valid = valid & jnp.all(jnp.isfinite(leaf))
    return next_status(jnp.asarray(STATUS_OK, jnp.int32), valid, hyperparameters_ok(process))
