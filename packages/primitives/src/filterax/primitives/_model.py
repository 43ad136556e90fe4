r"""The state-space model a cycled method assimilates into (docs/conventions.md).

A cycled method needs four things from its model: how a state moves from one observation time
to the next (`dynamics`, plus optional additive `process_noise`), how a state is observed
(`obs_op`) and how noisy the observations are (`obs_noise`). The geometry of the domain
(`state_coords`, `obs_coords`, `distance`) is part of the model too, so localising methods
find it there instead of each user re-deriving it (a Lorenz-96 ring needs a periodic distance).

$$x_k = \mathcal M(x_{k-1};\, t_{k-1}, t_k) + \xi_k,\ \ \xi_k \sim \mathcal N(0, Q),\qquad
y_k = H(x_k) + \eta_k,\ \ \eta_k \sim \mathcal N(0, R).$$

`AbstractModel` is the protocol (`filterax.zoo.StateSpaceModel` implements it, with the twin
experiment machinery on top); `Model` is the minimal concrete bundle for users who bring their
own dynamics. Stochastic dynamics — a model that draws its own noise and therefore needs a PRNG
key — are recognised by type: subclass `AbstractStochasticDynamics`.

DAPPER equivalent: ``HiddenMarkovModel(Dyn, Obs, tseq, X0)`` (``Dyn.model``/``Dyn.noise``,
``Obs.model``/``Obs.noise``, ``Obs.localizer``).
"""

# No `from __future__ import annotations`: equinox needs evaluated `AbstractVar` annotations.
import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, ScalarLike

from ._obs_operators import apply_obs

__all__ = [
    "AbstractModel",
    "AbstractStochasticDynamics",
    "Model",
    "forecast_ensemble",
    "observe_ensemble",
    "propagate",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class AbstractStochasticDynamics(eqx.Module):
    """Dynamics that draw their own noise: ``dynamics(x, t0, t1, *, key) -> x``.

    Cycled methods give each member its own key (``jax.random.split(k_forecast, N_e)``).
    Deterministic dynamics are any ``dynamics(x, t0, t1)`` callable (an `AbstractDynamics`);
    a callable is treated as stochastic exactly when it is an instance of this class
    (`filterax.zoo.StochasticDynamics` is one).
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike, *, key: PRNGKeyArray
    ) -> Float[Array, " N_x"]:
        """Propagate ONE state from ``t0`` to ``t1`` with the noise drawn from ``key``."""


class AbstractModel(eqx.Module):
    """The protocol of a state-space model for cycled data assimilation.

    **Fields every model has:**

    - `dynamics`: ``dynamics(x, t0, t1) -> x`` on ONE state (an `AbstractDynamics` or any
      JAX-traceable callable), or an `AbstractStochasticDynamics`.
    - `obs_op`: the observation operator on ONE state: a callable, a lineax operator or an
      ``(N_y, N_x)`` matrix (`apply_obs` applies any of them).
    - `obs_noise`: the observation-error covariance ``R`` (a lineax operator, or a scalar
      variance / vector of variances / matrix, as `as_noise_operator` accepts).
    - `process_noise`: the covariance ``Q`` of additive noise per observation window, or
      ``None`` (noise at every model step belongs in the dynamics).
    - `state_coords`: ``(N_x, D)`` coordinates of the state components, or ``None``.
    - `obs_coords`: ``(N_y, D)`` coordinates of the observations, or ``None``.
    - `distance`: ``distance(a, b) -> d``, the distance between two points (rows of the
      coordinate arrays), e.g. ``PeriodicDistance(40.0)`` on the Lorenz-96 ring, or ``None``
      for the Euclidean distance.
    - `t0`: the time of the initial condition.
    """

    dynamics: AbstractVar[Callable[..., Any]]
    obs_op: AbstractVar[Any]
    obs_noise: AbstractVar[Any]
    process_noise: AbstractVar[Any]
    state_coords: AbstractVar[Array | None]
    obs_coords: AbstractVar[Array | None]
    distance: AbstractVar[Callable[..., Any] | None]
    t0: AbstractVar[Any]


class Model(AbstractModel):
    r"""The minimal concrete `AbstractModel`: a bundle of dynamics, observation and noise.

    $$x_k = \mathcal M(x_{k-1}; t_{k-1}, t_k) + \xi_k,\quad \xi_k\sim\mathcal N(0, Q);\qquad
    y_k = H(x_k) + \eta_k,\quad \eta_k \sim \mathcal N(0, R).$$

    **Arguments:** (see `AbstractModel`)

    - `dynamics`, `obs_op`, `obs_noise`: required.
    - `process_noise`: ``Q`` per observation window, default ``None``.
    - `state_coords`, `obs_coords`, `distance`: the geometry localising methods use, default
      ``None``.
    - `t0`: the initial time, default ``0.0``.

    **Example:**

    ```python
    import jax.numpy as jnp
    import filterax.primitives as fxp

    model = fxp.Model(dynamics=lambda x, t0, t1: 0.9 * x, obs_op=fxp.IdentityObs(),
                      obs_noise=0.5)
    ```
    """

    dynamics: Callable[..., Any]
    obs_op: Any
    obs_noise: Any
    process_noise: Any = None
    state_coords: Array | None = None
    obs_coords: Array | None = None
    distance: Callable[..., Any] | None = None
    t0: Any = 0.0

    def __check_init__(self) -> None:
        if not callable(self.dynamics):
            raise TypeError(
                "Model.dynamics must be callable as dynamics(x, t0, t1) -> x on ONE state; got "
                f"{type(self.dynamics).__name__}."
            )
        if self.distance is not None and not callable(self.distance):
            raise TypeError(
                "Model.distance must be a function distance(a, b) -> d of two points (e.g. "
                "filterax.primitives.PeriodicDistance(40.0) or euclidean); got "
                f"{type(self.distance).__name__}."
            )


def _sample_gaussian(key: PRNGKeyArray, cov: Any, x: Array) -> Array:
    # One draw from N(0, Q) shaped like x: a diagonal Q needs no factorisation; a dense one is
    # sampled through its Cholesky factor (as filterax.zoo.StochasticDynamics does, draw for
    # draw, so a model with process noise reproduces a StochasticDynamics-wrapped run).
    z = jax.random.normal(key, x.shape, x.dtype)
    if isinstance(cov, lx.AbstractLinearOperator):
        if lx.is_diagonal(cov):
            return jnp.sqrt(lx.diagonal(cov).astype(x.dtype)) * z
        factor = jnp.linalg.cholesky(cov.as_matrix().astype(x.dtype))
        return jnp.matmul(factor, z, precision=_HIGHEST)
    cov = jnp.asarray(cov, dtype=x.dtype)
    if cov.ndim < 2:
        return jnp.sqrt(cov) * z
    return jnp.matmul(jnp.linalg.cholesky(cov), z, precision=_HIGHEST)


def propagate(
    model: AbstractModel,
    key: PRNGKeyArray,
    x: Float[Array, " N_x"],
    t0: ScalarLike,
    t1: ScalarLike,
) -> Float[Array, " N_x"]:
    r"""Propagate ONE state through the model from ``t0`` to ``t1``.

    $$x(t_1) = \mathcal M(x; t_0, t_1) + \xi,\qquad \xi \sim \mathcal N(0, Q)$$

    (``xi = 0`` without process noise). Stochastic dynamics (`AbstractStochasticDynamics`)
    get `key`; with both stochastic dynamics and process noise, `key` is split in two.

    **Arguments:**

    - `model`: an `AbstractModel`.
    - `key`: a PRNG key (unused by a deterministic model without process noise).
    - `x`: ONE state ``(N_x,)``.
    - `t0`, `t1`: the window.

    **Returns:** the state at ``t1``.
    """
    dynamics = model.dynamics
    stochastic = isinstance(dynamics, AbstractStochasticDynamics)
    noisy = model.process_noise is not None
    k_dyn, k_noise = jax.random.split(key) if (stochastic and noisy) else (key, key)
    x1 = dynamics(x, t0, t1, key=k_dyn) if stochastic else dynamics(x, t0, t1)
    if noisy:
        x1 = x1 + _sample_gaussian(k_noise, model.process_noise, x1)
    return x1


def forecast_ensemble(
    model: AbstractModel,
    key: PRNGKeyArray,
    ensemble: Float[Array, "N_e N_x"],
    t0: ScalarLike,
    t1: ScalarLike,
) -> Float[Array, "N_e N_x"]:
    """Propagate every member of an ensemble with `propagate` (member ``i`` gets key ``i`` of
    ``jax.random.split(key, N_e)``; a deterministic model draws nothing).

    **Arguments:**

    - `model`: an `AbstractModel`.
    - `key`: the forecast key of the cycle.
    - `ensemble`: ``(N_e, N_x)``.
    - `t0`, `t1`: the window.

    **Returns:** the ``(N_e, N_x)`` forecast ensemble.
    """
    stochastic = (
        isinstance(model.dynamics, AbstractStochasticDynamics) or model.process_noise is not None
    )
    if not stochastic:
        return jax.vmap(model.dynamics, in_axes=(0, None, None))(ensemble, t0, t1)
    member_keys = jax.random.split(key, ensemble.shape[0])
    return jax.vmap(lambda x, k: propagate(model, k, x, t0, t1))(ensemble, member_keys)


def observe_ensemble(
    model: AbstractModel, ensemble: Float[ArrayLike, "N_e N_y"]
) -> Float[Array, "N_e N_y"]:
    """``H(x_i)`` for every member (`apply_obs` vmapped over the ensemble axis)."""
    return jax.vmap(lambda x: apply_obs(model.obs_op, x))(jnp.asarray(ensemble))
