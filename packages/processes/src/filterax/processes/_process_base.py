"""The process base classes: the shared methods, and the ensemble processes' ``update`` loop.

`AbstractProcessBase` is what every filterax process (`EKI` ... `UKI`, `ESMDA`, `IES`) offers on
top of ``init``/``update``: `particles` (where to evaluate the forward model) and `misfits`.
`AbstractEnsembleProcess` owns the update of the EKI family: check the evaluations, mask failed
members, ask the scheduler for ``dt``, apply the method's analysis, handle failures, inflate.
"""

# No `from __future__ import annotations`: equinox needs evaluated `AbstractVar` annotations.
import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._checks import check_initial_ensemble, check_key, check_obs, checked_obs_noise
from ._failures import handle_failures
from ._inflation import InflationLike, apply_inflation
from ._kalman_update import UpdateData, prepare_update
from ._state import AbstractProcessState, ProcessState
from ._status import (
    STATUS_DIVERGED,
    STATUS_OK,
    data_ok,
    hyperparameters_ok,
    initial_status,
    next_status,
    whitening_ok,
)

__all__ = [
    "AbstractEnsembleProcess",
    "AbstractProcessBase",
    "check_data_dimension",
    "check_prior",
    "check_prior_size",
    "checked_step",
    "initial_key",
    "new_state",
    "prior_cov_ok",
    "prior_operator",
    "resolve_obs",
    "schedule",
]


def resolve_obs(
    state: AbstractProcessState, obs: Any, obs_noise: Any, dtype: jnp.dtype
) -> tuple[Array, lx.AbstractLinearOperator]:
    """The observation and noise of this update (state's, or a mini-batch override)."""
    if obs is None:
        if obs_noise is not None:
            noise = checked_obs_noise(
                obs_noise, state.obs.shape[0], dtype=dtype, name="update(obs_noise=...)"
            )
            return state.obs, noise
        return state.obs, state.obs_noise
    y = jnp.asarray(obs).astype(dtype)
    check_obs(y, "update(obs=...)")
    if obs_noise is None:
        if state.obs_noise.in_size() != y.shape[0]:
            raise ValueError(
                f"the obs override has {y.shape[0]} entries but the state's obs_noise is "
                f"{state.obs_noise.in_size()}-dimensional; pass obs_noise for the new batch too."
            )
        return y, state.obs_noise
    return y, checked_obs_noise(obs_noise, y.shape[0], dtype=dtype, name="update(obs_noise=...)")


def check_data_dimension(y: Any, g: Array) -> None:
    """`obs` is 1-D and `forward_evals` has one column per observation (clear message)."""
    fxp.check_vector(y, "obs")
    if jnp.shape(y)[0] != g.shape[1]:
        raise ValueError(
            f"forward_evals has N_y={g.shape[1]} columns but obs has {jnp.shape(y)[0]} entries: "
            "the forward model must return one value per observation, G(theta) of shape "
            f"({jnp.shape(y)[0]},) for each member."
        )


def schedule(
    scheduler: fxp.AbstractScheduler,
    state: ProcessState,
    data: UpdateData,
    n_obs: int,
    dtype: jnp.dtype,
) -> tuple[Array, Any, Array]:
    """Ask the scheduler for ``dt``; returns ``(dt, scheduler_state, converged)``."""
    dt, sched_state = scheduler.step(
        state.scheduler_state,
        data.misfits,
        time=state.time,
        n_obs=n_obs,
        d_norm=data.d_norm,
        iteration=state.iteration,
    )
    dt = jnp.asarray(dt).astype(dtype)
    if jnp.shape(dt) != ():
        raise ValueError(f"the scheduler must return a scalar dt; got shape {jnp.shape(dt)}.")
    terminated = getattr(sched_state, "terminated", None)
    converged = jnp.asarray(False) if terminated is None else jnp.asarray(terminated, bool)
    return dt, sched_state, converged


def checked_step(
    process: Any, state: AbstractProcessState, data: UpdateData, dt: Array
) -> tuple[Array, Array]:
    """``(dt, status)``: the update's status, and ``dt = 0`` (the identity) unless it is OK."""
    status = next_status(
        state.status,
        data_ok(data.yw, data.whitening),
        hyperparameters_ok(process, dt),
    )
    return jnp.where(status == STATUS_OK, dt, jnp.zeros_like(dt)), status


def prior_operator(
    prior_cov: fxp.NoiseLike, n_params: int, dtype: jnp.dtype, owner: str
) -> lx.AbstractLinearOperator:
    return fxp.positive_definite_noise(
        prior_cov, n_params, dtype=dtype, name=f"{owner}(prior_cov=...)"
    )


def check_prior(prior_mean: Array, prior_cov: Any, owner: str) -> None:
    if jnp.ndim(prior_mean) != 1:
        raise ValueError(
            f"{owner}(prior_mean=...) must be a 1-D array of length N_p; got shape "
            f"{jnp.shape(prior_mean)}."
        )
    values = fxp.concrete_value(prior_mean)
    if values is not None and not np.all(np.isfinite(values)):
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(
            f"{owner}(prior_mean=...) has a non-finite entry at index {i} ({values[i]}); "
            "pass a finite prior mean."
        )
    n = jnp.shape(prior_mean)[0]
    dtype = jnp.result_type(prior_mean)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    fxp.positive_definite_noise(prior_cov, n, dtype=dtype, name=f"{owner}(prior_cov=...)")


def prior_cov_ok(prior_mean: Array, prior_cov: Any) -> Array:
    """Traceable: the prior covariance is finite and positive definite.

    For the processes' ``_hyperparameters_ok`` (a traced prior variance ``<= 0`` sets the
    state's status; concrete ones are refused by `check_prior`).
    """
    dtype = jnp.result_type(prior_mean)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    op = prior_operator(prior_cov, jnp.shape(prior_mean)[0], dtype, "prior")
    return whitening_ok(fxp.noise_whitening(op, dtype))


def check_prior_size(prior_mean: Array, n_params: int, owner: str) -> None:
    if prior_mean.shape[0] != n_params:
        raise ValueError(
            f"{owner}'s prior has {prior_mean.shape[0]} parameters but the ensemble has "
            f"N_p={n_params}; the prior mean and covariance must match the parameter dimension."
        )


class AbstractProcessBase(fxp.AbstractProcess):
    """What every filterax process provides on top of ``init``/``update``.

    `particles` (where to evaluate the forward model) and `misfits` are concrete; `init`,
    `update`, `mean` and `covariance` are implemented by each process. The state is any
    `AbstractProcessState` (`ProcessState` for the EKI family, EKS and UKI; `InversionState`
    for ESMDA and IES), so `calibrate` drives every process the same way.
    """

    @abc.abstractmethod
    def init(
        self,
        ensemble_or_prior: Any,
        obs: Float[ArrayLike, " N_y"],
        obs_noise: fxp.NoiseLike,
        *,
        key: PRNGKeyArray | None = None,
    ) -> AbstractProcessState:
        """Return the initial state."""

    @abc.abstractmethod
    def update(
        self,
        state: AbstractProcessState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> AbstractProcessState:
        """Return the state after one update given the forward evaluations of `particles`."""

    @abc.abstractmethod
    def mean(self, state: AbstractProcessState) -> Float[Array, " N_p"]:
        """The current parameter mean."""

    @abc.abstractmethod
    def covariance(self, state: AbstractProcessState) -> Float[Array, "N_p N_p"]:
        """The current parameter covariance."""

    def particles(self, state: AbstractProcessState) -> Float[Array, "N_e N_p"]:
        """The ``(N_e, N_p)`` points at which to evaluate the forward model next."""
        return state.ensemble

    def misfits(
        self,
        state: AbstractProcessState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> Float[Array, " N_e"]:
        r"""Per-member data misfits ``Phi_j = 1/2 ||Gamma^{-1/2} (G_j - y)||^2`` (NaN if failed).

        ``obs``/``obs_noise`` override the state's observation (mini-batching).
        """
        dtype = state.ensemble.dtype
        g = fxp.check_forward_evals(forward_evals, state.ensemble.shape[0], dtype=dtype)
        y, noise = resolve_obs(state, obs, obs_noise, dtype)
        check_data_dimension(y, g)
        return prepare_update(g, y, noise).misfits


def initial_key(key: Any, needs_key: bool, owner: str) -> PRNGKeyArray:
    if key is None:
        if needs_key:
            raise ValueError(
                f"{owner} draws random numbers (perturbed observations or sampler noise); pass "
                "init(..., key=jax.random.key(seed))."
            )
        # Only used to re-sample failed members; fixed so deterministic runs are reproducible.
        return jax.random.key(0)
    check_key(key, f"{owner}.init(key=...)")
    return key


def new_state(
    state: ProcessState,
    ensemble: Array,
    dt: Array,
    sched_state: Any,
    converged: Array,
    data: UpdateData,
    status: Array,
    extra: Any = None,
) -> ProcessState:
    """The state after an update; ``dt = 0`` (e.g. a bad `status`) keeps the ensemble.

    An update that turns valid inputs into a non-finite ensemble (or `extra`, e.g. UKI's
    mean and covariance) is kept out: the previous state stays and the status becomes
    `STATUS_DIVERGED`, so a step-by-step loop never carries NaN with status OK.
    """
    finite = jnp.all(jnp.isfinite(ensemble))
    for leaf in jax.tree.leaves(eqx.filter(extra, eqx.is_inexact_array)):
        finite = finite & jnp.all(jnp.isfinite(leaf))
    diverged = (dt > 0) & ~finite & (status == STATUS_OK)
    status = jnp.where(diverged, STATUS_DIVERGED, status).astype(jnp.int32)
    dt = jnp.where(diverged, jnp.zeros_like(dt), dt)
    moved = dt > 0
    ensemble = jnp.where(moved, ensemble, state.ensemble)
    if extra is not None:
        extra = jax.tree.map(lambda new, old: jnp.where(moved, new, old), extra, state.extra)
    valid = status == STATUS_OK
    sched_state = jax.tree.map(
        lambda new, old: jnp.where(valid, new, old).astype(jnp.result_type(new)),
        sched_state,
        state.scheduler_state,
    )
    return ProcessState(
        ensemble=ensemble,
        obs=state.obs,
        obs_noise=state.obs_noise,
        key=state.key,
        iteration=state.iteration + 1,
        time=state.time + dt,
        dt=dt,
        scheduler_state=sched_state,
        n_failed=jnp.sum(data.failed).astype(jnp.int32),
        converged=jnp.logical_or(jnp.asarray(state.converged, bool), converged & valid),
        status=status,
        extra=extra,
    )


class AbstractEnsembleProcess(AbstractProcessBase):
    """An ensemble process: ``init`` takes an ``(N_e, N_p)`` ensemble; shared ``update`` loop.

    Subclasses implement `_analysis` (the method's update of the successful members),
    `_validate` (trace-time checks of the dimensions) and `_needs_key`.
    """

    scheduler: AbstractVar[fxp.AbstractScheduler]
    failure_handler: AbstractVar[str]
    inflation: AbstractVar[InflationLike]

    @abc.abstractmethod
    def _needs_key(self) -> bool:
        """Whether the update draws random numbers."""

    @abc.abstractmethod
    def _validate(self, n_ensemble: int, n_params: int, n_obs: int) -> None:
        """Raise ValueError for unsupported dimensions (trace time)."""

    @abc.abstractmethod
    def _analysis(self, key: PRNGKeyArray, ensemble: Array, data: UpdateData, dt: Array) -> Array:
        """The updated ensemble (rows of failed members are replaced afterwards)."""

    def init(
        self,
        ensemble_or_prior: Float[ArrayLike, "N_e N_p"],
        obs: Float[ArrayLike, " N_y"],
        obs_noise: fxp.NoiseLike,
        *,
        key: PRNGKeyArray | None = None,
    ) -> ProcessState:
        """Start the process from an initial ``(N_e, N_p)`` ensemble (e.g. prior draws).

        **Arguments:**

        - `ensemble_or_prior`: the initial ensemble, members along axis 0, ``N_e >= 2``.
        - `obs`: the observation vector ``y``, shape ``(N_y,)``.
        - `obs_noise`: ``Gamma``: a lineax operator, scalar variance, vector of variances or
            ``(N_y, N_y)`` matrix; must be positive definite.
        - `key`: PRNG key (required by stochastic methods).

        **Returns:** the initial `ProcessState`.
        """
        owner = type(self).__name__
        fxp.check_ensemble(ensemble_or_prior, f"{owner}.init(ensemble_or_prior=...)")
        x = jnp.asarray(ensemble_or_prior)
        dtype = fxp.floating_dtype(x, f"{owner}.init(ensemble_or_prior=...)")
        check_initial_ensemble(x, f"{owner}.init(ensemble_or_prior=...)")
        y = jnp.asarray(obs).astype(dtype)
        check_obs(y, f"{owner}.init(obs=...)")
        noise = checked_obs_noise(
            obs_noise, y.shape[0], dtype=dtype, name=f"{owner}.init(obs_noise=...)"
        )
        self._validate(x.shape[0], x.shape[1], y.shape[0])
        return ProcessState(
            ensemble=x,
            obs=y,
            obs_noise=noise,
            key=initial_key(key, self._needs_key(), owner),
            iteration=jnp.asarray(0, jnp.int32),
            time=jnp.zeros((), dtype),
            dt=jnp.zeros((), dtype),
            scheduler_state=self.scheduler.init(),
            n_failed=jnp.asarray(0, jnp.int32),
            converged=jnp.asarray(False),
            status=initial_status(self, y, noise, dtype, x),
            extra=None,
        )

    def update(
        self,
        state: ProcessState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> ProcessState:
        """One update from the forward evaluations of `particles(state)`.

        **Arguments:**

        - `state`: the current state.
        - `forward_evals`: ``G(theta_j)`` for every member, shape ``(N_e, N_y)``; rows with a
            non-finite entry are failed members.
        - `obs`, `obs_noise`: optional observation (and noise) for this update only
            (mini-batching); the state keeps its own.

        **Returns:** the next `ProcessState` (``dt = 0``, e.g. after a stopping scheduler
        terminated, returns the same ensemble).
        """
        x = state.ensemble
        n_e, n_p = x.shape
        dtype = x.dtype
        g = fxp.check_forward_evals(forward_evals, n_e, dtype=dtype)
        y, noise = resolve_obs(state, obs, obs_noise, dtype)
        check_data_dimension(y, g)
        self._validate(n_e, n_p, g.shape[1])
        data = prepare_update(g, y, noise)
        dt, sched_state, converged = schedule(self.scheduler, state, data, g.shape[1], dtype)
        dt, status = checked_step(self, state, data, dt)
        step_key = jax.random.fold_in(state.key, state.iteration)
        k_update, k_fail, k_inflate = jax.random.split(step_key, 3)
        updated = self._analysis(k_update, x, data, dt)
        updated = handle_failures(self.failure_handler, k_fail, x, updated, data.failed)
        updated = apply_inflation(self.inflation, k_inflate, updated, dt, previous=x)
        return new_state(state, updated, dt, sched_state, converged, data, status)

    def mean(self, state: ProcessState) -> Float[Array, " N_p"]:
        """The ensemble mean."""
        return jnp.mean(state.ensemble, axis=0)

    def covariance(self, state: ProcessState) -> Float[Array, "N_p N_p"]:
        """The Bessel-corrected ensemble covariance (dense ``(N_p, N_p)``)."""
        return fxp.ensemble_covariance(state.ensemble, dense=True)
