"""The state every ensemble Kalman process carries between updates."""

# No `from __future__ import annotations`: equinox needs evaluated `AbstractVar` annotations.
from typing import ClassVar

import equinox as eqx
import lineax as lx
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from ._status import (
    STATUS_DIVERGED,
    STATUS_INVALID_DATA,
    STATUS_INVALID_HYPERPARAMETERS,
    STATUS_OK,
)

__all__ = ["AbstractProcessState", "ProcessState"]


class AbstractProcessState(eqx.Module):
    """What `calibrate` and the shared process methods read from any process's state.

    `ProcessState` (the EKI family, EKS, UKI) and `InversionState` (`ESMDA`, `IES`) implement
    it. `particles` and `misfits` read `ensemble`, `obs` and `obs_noise`; the driver records
    `dt` and `time`, stops at `converged` and reports `status`.

    **Fields:** `ensemble`, `obs`, `obs_noise`, `key`, `iteration`, `time`, `dt`, `n_failed`,
    `converged`, `status`, as documented on `ProcessState`.

    **Status codes** (`status`, an int32 scalar; class attributes):

    - ``0`` `OK`: every update so far used valid data and hyper-parameters.
    - ``1`` `INVALID_DATA`: ``obs``/``obs_noise`` (traced, or a mini-batch) had a NaN/inf
        entry, a variance ``<= 0`` or a covariance that is not positive definite, or the
        initial ensemble (`UKI`: the initial mean and covariance) had a NaN/inf entry.
    - ``2`` `INVALID_HYPERPARAMETERS`: a floating-point field of the process was NaN/inf or
        outside the range its constructor checks for a concrete value (e.g. a negative
        inflation scaling, a prior variance ``<= 0``), or the time step was NaN, infinite,
        negative or (`GNKI`) ``>= 2``.
    - ``3`` `DIVERGED` (`ProcessState` only): valid inputs gave a non-finite ensemble (or UKI
        mean / covariance), e.g. an explicit step far too large; the state before that update
        is kept.

    Concrete bad inputs raise a `ValueError` when they are given; the status is for values
    only known at run time (under `jit`, `vmap`, `grad`). Once it is not `OK` every update is
    the identity (the ensemble, time and scheduler state are kept, never NaN) and the code
    stays. `calibrate` raises on it (``throw=True``) or returns it in
    `CalibrationResult.status`.
    """

    OK: ClassVar[int] = STATUS_OK
    INVALID_DATA: ClassVar[int] = STATUS_INVALID_DATA
    INVALID_HYPERPARAMETERS: ClassVar[int] = STATUS_INVALID_HYPERPARAMETERS
    DIVERGED: ClassVar[int] = STATUS_DIVERGED

    ensemble: AbstractVar[Float[Array, "N_e N_p"]]
    obs: AbstractVar[Float[Array, " N_y"]]
    obs_noise: AbstractVar[lx.AbstractLinearOperator]
    key: AbstractVar[PRNGKeyArray]
    iteration: AbstractVar[Int[Array, ""]]
    time: AbstractVar[Float[Array, ""]]
    dt: AbstractVar[Float[Array, ""]]
    n_failed: AbstractVar[Int[Array, ""]]
    converged: AbstractVar[Bool[ArrayLike, ""]]
    status: AbstractVar[Int[Array, ""]]


class ProcessState(AbstractProcessState):
    """What an ensemble Kalman process needs to take its next step.

    `init` builds it, `update` returns the next one; drivers carry it through `lax.scan`, so
    its structure (shapes, dtypes) never changes between iterations.

    **Fields:**

    - `ensemble`: the current ``(N_e, N_p)`` parameter ensemble. For `UKI` these are the
        sigma points of the predicted distribution; the analysis mean and covariance live in
        `extra`.
    - `obs`: the default observation vector ``y``, shape ``(N_y,)``.
    - `obs_noise`: the observation-noise covariance ``Gamma`` as a lineax operator.
    - `key`: the process key; update ``n`` draws from ``jax.random.fold_in(key, n)``.
    - `iteration`: number of updates taken (int array).
    - `time`: algorithm time, the sum of the ``dt`` taken so far.
    - `dt`: the last ``dt``.
    - `scheduler_state`: the scheduler's state.
    - `n_failed`: number of members whose forward evaluation was non-finite in the last
        update.
    - `converged`: the scheduler has terminated (e.g. `DataMisfitController` with
        ``on_terminate="stop"`` after landing on its final time); further updates are the
        identity.
    - `status`: `AbstractProcessState.OK` (0), `.INVALID_DATA` (1) or
        `.INVALID_HYPERPARAMETERS` (2): see `AbstractProcessState`.
    - `extra`: method-specific state (e.g. `UKI`'s mean and covariance), or ``None``.

    **Reference:** EnsembleKalmanProcesses.jl's ``EnsembleKalmanProcess`` struct holds the same
    information (as growing histories; here the driver stacks the history).
    """

    ensemble: Float[Array, "N_e N_p"]
    obs: Float[Array, " N_y"]
    obs_noise: lx.AbstractLinearOperator
    key: PRNGKeyArray
    iteration: Int[Array, ""]
    time: Float[Array, ""]
    dt: Float[Array, ""]
    scheduler_state: PyTree
    n_failed: Int[Array, ""]
    converged: Bool[ArrayLike, ""]
    status: Int[Array, ""]
    extra: PyTree = None
