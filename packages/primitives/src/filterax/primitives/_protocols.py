"""The protocol family every filterax package builds on (docs/conventions.md).

Dynamics and observation operators act on ONE state vector; callers ``jax.vmap`` them over the
ensemble axis. Plain callables are accepted wherever these classes are; subclass them to get an
``eqx.Module`` whose numeric fields ``jax.grad``/``jax.vmap`` can reach.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar, ScalarLike


class AbstractDynamics(eqx.Module):
    """A deterministic (or key-free) model propagating one state from ``t0`` to ``t1``.

    ``dynamics(x, t0, t1) -> x`` must be pure and differentiable; the ensemble is propagated
    with ``jax.vmap(dynamics, in_axes=(0, None, None))``.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """Integrate state ``x`` from time ``t0`` to ``t1``."""


class AbstractObsOperator(eqx.Module):
    """An observation operator ``H`` mapping one state to one observation vector."""

    @abc.abstractmethod
    def __call__(self, x: Float[Array, " N_x"]) -> Float[Array, " N_y"]:
        """Return ``H(x)``."""


class Analysis(eqx.Module):
    """What one analysis step returns.

    **Fields:**

    - `particles`: the ``(N_e, N_x)`` analysis ensemble.
    - `log_likelihood`: ``log N(y - mean H(X_f); 0, C^HH + R)`` evaluated on the forecast.
    - `info`: filter-specific diagnostics (a pytree, possibly ``None``).
    """

    particles: Float[Array, "N_e N_x"]
    log_likelihood: Scalar
    info: PyTree = None


class AbstractSequentialFilter(eqx.Module):
    """A sequential (one observation time at a time) analysis scheme.

    ``filt.analysis(key, forecast, obs, obs_op, obs_noise, **context) -> Analysis``. ``obs``
    may contain NaN for missing entries; ``obs_noise`` is a lineax operator; ``context``
    carries extras such as LETKF coordinates.
    """

    @abc.abstractmethod
    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[Array, "N_e N_x"],
        obs: Float[Array, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> Analysis:
        """Assimilate one observation vector into the forecast ensemble."""


class AbstractLocalFilter(AbstractSequentialFilter):
    """A sequential filter that localises, and so needs the geometry of the domain.

    Its ``analysis(key, forecast, obs, obs_op, obs_noise, **context)`` takes the geometry as
    three keyword (context) arguments:

    - `state_coords`: ``(N_x, D)`` coordinates of the state components (or ``(N_x,)``);
    - `obs_coords`: ``(N_y, D)`` coordinates of the observations (or ``(N_y,)``);
    - `distance`: the single-pair distance ``distance(a, b) -> scalar`` on those coordinates
      (e.g. `PeriodicDistance`, `haversine`), or ``None``/absent for the filter's default.

    Cycled drivers take them from the model (`AbstractModel.state_coords`, `obs_coords`,
    `distance`): `filterax.filters.EnsembleFilter` calls the kernel with `geometry_context`
    of the model and its own `context`, whose entries take precedence over the model's. A
    kernel that does not subclass this class never receives geometry it did not ask for.
    `filterax.filters.LETKF` is one.
    """


class AbstractProcess(eqx.Module):
    """An ensemble Kalman process (inversion or sampling), blackjax-style.

    ``state = process.init(...)`` then repeatedly ``state = process.update(state,
    forward_evals, ...)``, where ``forward_evals`` are the forward-model outputs of the
    current ensemble (so the forward model may live outside JAX).
    """

    @abc.abstractmethod
    def init(self, *args: Any, **kwargs: Any) -> PyTree:
        """Return the initial process state."""

    @abc.abstractmethod
    def update(self, state: PyTree, forward_evals: Array, *args: Any, **kwargs: Any) -> PyTree:
        """Return the state after one ensemble update given the forward evaluations."""


class AbstractScheduler(eqx.Module):
    """Chooses the algorithm time step of an ensemble Kalman process.

    ``sched_state = scheduler.init()``; ``dt, sched_state = scheduler.step(sched_state,
    misfits, **info)``, where ``misfits`` are the per-member data misfits of the current
    iteration (NaN for failed members) and ``info`` is keyword context a scheduler may need.
    The filterax processes pass ``time`` (algorithm time so far), ``n_obs`` (data dimension,
    a Python int), ``d_norm`` (the Frobenius norm of the EKS matrix ``D``) and ``iteration``;
    a scheduler takes the keywords it needs and ignores the rest.
    """

    @abc.abstractmethod
    def init(self) -> PyTree:
        """Return the scheduler's initial state."""

    @abc.abstractmethod
    def step(
        self, state: PyTree, misfits: Float[Array, " N_e"], **info: Any
    ) -> tuple[Scalar, PyTree]:
        """Return ``(dt, new_state)`` for the next update."""
