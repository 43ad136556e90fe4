"""The state every ensemble Kalman process carries between updates."""

from __future__ import annotations

import equinox as eqx
import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree


class ProcessState(eqx.Module):
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
    extra: PyTree = None
