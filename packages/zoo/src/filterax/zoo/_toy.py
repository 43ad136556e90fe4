"""Toy systems for teaching and unit tests: an oscillator, a double well, and
the Ornstein–Uhlenbeck and Brownian-motion SDEs.

The SDEs' ``__call__`` is their deterministic mean flow (exact); the noise comes from
`StochasticDynamics`, which uses ``exact_noise_variance`` so that the transition
``x(t1) | x(t0)`` is sampled exactly for any interval.
"""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, ScalarLike

from filterax.primitives import AbstractDynamics

from ._integrators import AbstractODEDynamics, _concrete_time, check_dt, check_state

__all__ = ["BrownianMotion", "DoubleWell", "OrnsteinUhlenbeck", "Sinusoid"]


def _param(p, x: Array) -> Array:
    return jnp.asarray(p).astype(x.dtype)


def _elapsed(t0, t1, dtype) -> Array:
    # Subtract before casting so that float32 states do not lose the interval to large t.
    return (jnp.asarray(t1) - jnp.asarray(t0)).astype(dtype)


def _check_forward(t0, t1, owner: str) -> None:
    a, b = _concrete_time(t0, "t0"), _concrete_time(t1, "t1")
    if a is not None and b is not None and b < a:
        raise ValueError(
            f"{owner}: the transition variance needs t1 >= t0; got t0={a}, t1={b}. "
            "A diffusion cannot be run backwards in time."
        )


class Sinusoid(AbstractDynamics):
    r"""A harmonic oscillator whose components trace sinusoids; the flow is an exact rotation.

    $$\dot q = \omega p,\quad \dot p = -\omega q\quad\Longrightarrow\quad
      \begin{pmatrix} q \\ p\end{pmatrix}(t_1) =
      \begin{pmatrix}\cos\omega\tau & \sin\omega\tau\\ -\sin\omega\tau & \cos\omega\tau
      \end{pmatrix}\begin{pmatrix} q \\ p\end{pmatrix}(t_0),\ \tau = t_1 - t_0.$$

    Neutrally stable (norm-preserving), so filter errors neither grow nor decay: the
    simplest test of whether a filter tracks a moving, periodic signal.

    **Arguments:**

    - `frequency`: the angular frequency ``omega`` (dynamic).
    - `dt`: the time step of `step` (static).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.zoo import Sinusoid

        Sinusoid(frequency=2.0)(jnp.array([1.0, 0.0]), 0.0, 0.5)  # [cos 1, -sin 1]
        ```
    """

    frequency: ScalarLike = 1.0
    dt: float = eqx.field(default=0.1, static=True, converter=float)
    state_size: ClassVar[int] = 2

    def __check_init__(self):
        check_dt(self.dt, "Sinusoid")

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """Rotate ``(q, p)`` by the angle ``omega (t1 - t0)`` (exact)."""
        check_state(x, 2, "Sinusoid")
        angle = _param(self.frequency, x) * _elapsed(t0, t1, x.dtype)
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        return jnp.stack([cos * x[0] + sin * x[1], -sin * x[0] + cos * x[1]])

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The exact flow over one step ``dt`` from time ``t``."""
        return self(x, t, t + self.dt)

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The vector field ``(omega p, -omega q)``."""
        check_state(x, 2, "Sinusoid")
        omega = _param(self.frequency, x)
        return jnp.stack([omega * x[1], -omega * x[0]])


class DoubleWell(AbstractODEDynamics):
    r"""The double-well gradient flow ``dx/dt = 4 x (1 - x^2)``, component-wise, RK4.

    The drift is ``-V'(x)`` for ``V(x) = x^4 - 2 x^2``: stable equilibria at ``x = +-1``,
    an unstable one at 0. With additive noise (`StochasticDynamics`) it becomes the bimodal
    SDE ``dx = 4x(1 - x^2) dt + kappa dW`` of Miller, Carter & Blue (1999), the standard test
    of filters on non-Gaussian (regime-switching) posteriors. Any state length.

    Closed form (used in the tests): ``x(t)^2 = 1 / (1 + (1/x0^2 - 1) e^{-8t})``.

    **Arguments:**

    - `dt`: the RK4 step (static; the linearisation at the wells is ``-8``, so RK4 is
      stable for ``dt < 0.35``).
    - `solver`: ``None`` for RK4, or a diffrax solver used with constant steps ``dt``.

    **Reference:** R. N. Miller, E. F. Carter & S. T. Blue, *Data assimilation into
    nonlinear stochastic models*, Tellus A 51 (1999).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.zoo import DoubleWell

        DoubleWell()(jnp.array([0.3, -0.2]), 0.0, 2.0)  # ~ [1, -1]
        ```
    """

    dt: float = eqx.field(default=0.01, static=True, converter=float)
    solver: diffrax.AbstractSolver | None = eqx.field(default=None, static=True)
    state_size: ClassVar[None] = None

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The drift ``4 x (1 - x^2)`` (autonomous: ``t`` is ignored)."""
        return 4.0 * x * (1.0 - x * x)


class OrnsteinUhlenbeck(AbstractDynamics):
    r"""The Ornstein–Uhlenbeck process ``dx = theta (mu - x) dt + sigma dW``, component-wise.

    ``__call__`` is the exact conditional mean

    $$\mathbb E[x(t_1) \mid x(t_0)] = \mu + (x(t_0) - \mu)\,e^{-\theta (t_1 - t_0)},$$

    and `exact_noise_variance` the exact conditional variance
    ``sigma^2 (1 - e^{-2 theta (t_1 - t_0)}) / (2 theta)``; wrap the model in
    ``StochasticDynamics(ou)`` to sample the exact transition. Any state length.

    **Arguments:**

    - `theta`: mean-reversion rate (> 0), `mu`: long-run mean, `sigma`: diffusion
      coefficient. Dynamic; scalars or per-component arrays.
    - `dt`: the time step of `step` (static).

    **Reference:** G. E. Uhlenbeck & L. S. Ornstein, *On the theory of the Brownian motion*,
    Phys. Rev. 36 (1930).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.zoo import OrnsteinUhlenbeck, StochasticDynamics

        ou = OrnsteinUhlenbeck(theta=0.5)
        ou(jnp.ones(3), 0.0, 1.0)                                  # exp(-0.5) * ones
        StochasticDynamics(ou)(jnp.ones(3), 0.0, 1.0, key=jax.random.key(0))
        ```
    """

    theta: ScalarLike | Float[ArrayLike, " N_x"] = 1.0
    mu: ScalarLike | Float[ArrayLike, " N_x"] = 0.0
    sigma: ScalarLike | Float[ArrayLike, " N_x"] = 1.0
    dt: float = eqx.field(default=0.01, static=True, converter=float)
    state_size: ClassVar[None] = None

    def __check_init__(self):
        check_dt(self.dt, "OrnsteinUhlenbeck")
        if isinstance(self.theta, jax.core.Tracer):
            return  # a traced rate cannot be checked at trace time
        if not np.all(np.asarray(self.theta) > 0):
            raise ValueError(
                f"OrnsteinUhlenbeck needs a mean-reversion rate theta > 0; got {self.theta}. "
                "Use BrownianMotion for theta = 0."
            )

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """The exact mean flow ``mu + (x - mu) exp(-theta (t1 - t0))``."""
        check_state(x, None, "OrnsteinUhlenbeck")
        theta, mu = _param(self.theta, x), _param(self.mu, x)
        return mu + (x - mu) * jnp.exp(-theta * _elapsed(t0, t1, x.dtype))

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The exact mean flow over one step ``dt`` from time ``t``."""
        return self(x, t, t + self.dt)

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The drift ``theta (mu - x)``."""
        check_state(x, None, "OrnsteinUhlenbeck")
        return _param(self.theta, x) * (_param(self.mu, x) - x)

    def exact_noise_variance(self, t0: ScalarLike, t1: ScalarLike) -> Float[Array, "*N_x"]:
        """``Var[x(t1) | x(t0)] = sigma^2 (1 - exp(-2 theta (t1 - t0))) / (2 theta)``."""
        _check_forward(t0, t1, "OrnsteinUhlenbeck")
        theta, sigma = jnp.asarray(self.theta), jnp.asarray(self.sigma)
        tau = jnp.asarray(t1) - jnp.asarray(t0)
        return sigma**2 * -jnp.expm1(-2.0 * theta * tau) / (2.0 * theta)


class BrownianMotion(AbstractDynamics):
    r"""Brownian motion ``dx = sigma dW``, component-wise (a random walk in discrete time).

    ``__call__`` is the exact conditional mean, the identity; `exact_noise_variance` is
    ``sigma^2 (t1 - t0)``. Wrap in ``StochasticDynamics(bm)`` to sample the transition.

    **Arguments:**

    - `sigma`: the diffusion coefficient (dynamic; scalar or per-component).
    - `dt`: the time step of `step` (static).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.zoo import BrownianMotion, StochasticDynamics

        walk = StochasticDynamics(BrownianMotion(sigma=0.1))
        walk(jnp.zeros(3), 0.0, 1.0, key=jax.random.key(0))  # ~ N(0, 0.01 I)
        ```
    """

    sigma: ScalarLike | Float[ArrayLike, " N_x"] = 1.0
    dt: float = eqx.field(default=0.01, static=True, converter=float)
    state_size: ClassVar[None] = None

    def __check_init__(self):
        check_dt(self.dt, "BrownianMotion")

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """The mean flow: the identity."""
        check_state(x, None, "BrownianMotion")
        return x

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The mean flow over one step: the identity."""
        return self(x, t, t + self.dt)

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The drift: zero."""
        check_state(x, None, "BrownianMotion")
        return jnp.zeros_like(x)

    def exact_noise_variance(self, t0: ScalarLike, t1: ScalarLike) -> Float[Array, "*N_x"]:
        """``Var[x(t1) | x(t0)] = sigma^2 (t1 - t0)``."""
        _check_forward(t0, t1, "BrownianMotion")
        return jnp.asarray(self.sigma) ** 2 * (jnp.asarray(t1) - jnp.asarray(t0))
