"""The run-time status of a process: what a traced bad input gets instead of a NaN ensemble.

Concrete inputs are checked when they are given (`_checks.py`). Under `jit`, `vmap` or `grad`
their values are unknown until run time, so every update also checks what it uses:

- the data: the whitened observation ``Gamma^{-1/2} y`` must be finite, which fails for a
  NaN/inf observation, a NaN/inf noise entry, a variance ``<= 0`` and (through the Cholesky
  factor) a dense covariance that is not positive definite;
- the hyper-parameters: every floating-point field of the process (scheduler, inflation,
  localiser, prior, ...) must be finite, and the time step ``dt`` finite and ``>= 0``.

A failed check sets the state's `status` (`AbstractProcessState.INVALID_DATA` or
`.INVALID_HYPERPARAMETERS`); from then on every update is the identity (``dt = 0``: the
ensemble, the algorithm time and the scheduler state stay where they were), so the state never
turns into NaN, and the status stays (the first cause is kept). `calibrate` raises on it;
`ESMDA` and `IES` raise inside `jit` (``eqx.error_if``) when ``throw=True``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Int

import filterax.primitives as fxp

from ._checks import any_traced

__all__ = [
    "STATUS_INVALID_DATA",
    "STATUS_INVALID_HYPERPARAMETERS",
    "STATUS_OK",
    "data_ok",
    "hyperparameters_ok",
    "initial_status",
    "next_status",
    "status_messages",
]

STATUS_OK = 0
STATUS_INVALID_DATA = 1
STATUS_INVALID_HYPERPARAMETERS = 2


def status_messages(owner: str) -> tuple[str, str]:
    """What statuses 1 and 2 mean, for `eqx.branched_error_if` and `calibrate`'s errors."""
    return (
        f"{owner}: invalid data (status 1): obs or obs_noise has a NaN/inf entry, a variance "
        "<= 0 or is not positive definite. Processes do not support missing data: remove the "
        "bad entries from obs, the forward model's output and obs_noise.",
        f"{owner}: invalid hyper-parameters (status 2): a floating-point parameter of the "
        "process (scheduler, inflation, localiser, prior, ...) is NaN/inf, or the time step is "
        "NaN, infinite or negative. Pass finite values (e.g. FixedScheduler(dt) with dt >= 0).",
    )


def data_ok(white_obs: Array, factor: Array | None) -> Bool[Array, ""]:
    """The whitened observation (and the whitened low-rank noise factor) are finite."""
    ok = jnp.all(jnp.isfinite(white_obs))
    if factor is not None:
        ok = ok & jnp.all(jnp.isfinite(factor))
    return ok


def hyperparameters_ok(process: Any, dt: Array | None = None) -> Bool[Array, ""]:
    """Every floating-point array of ``process`` is finite, and ``dt`` finite and ``>= 0``."""
    ok = jnp.asarray(True)
    if dt is not None:
        ok = ok & jnp.isfinite(dt) & (dt >= 0)
    for leaf in jax.tree.leaves(eqx.filter(process, eqx.is_inexact_array)):
        ok = ok & jnp.all(jnp.isfinite(leaf))
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
    process: Any, obs: Array, noise: lx.AbstractLinearOperator, dtype: Any
) -> Int[Array, ""]:
    """The status of a new state: OK for concrete inputs (they were checked eagerly)."""
    if not any_traced(obs, noise, process):
        return jnp.asarray(STATUS_OK, jnp.int32)
    whitening = fxp.noise_whitening(noise, dtype)
    valid = data_ok(whitening.white(obs), whitening.factor)
    return next_status(jnp.asarray(STATUS_OK, jnp.int32), valid, hyperparameters_ok(process))
