"""The Lorenz systems: Lorenz-63, Lorenz-96 and the two-scale Lorenz-96."""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, ScalarLike

from ._integrators import AbstractODEDynamics

__all__ = ["Lorenz63", "Lorenz96", "Lorenz96TwoScale"]


def _param(p, x: Array) -> Array:
    # Parameters may be Python floats, float64 arrays or tracers; cast to the state's dtype
    # so that a float32 state stays float32 (and gradients still flow through the cast).
    return jnp.asarray(p).astype(x.dtype)


def _l96_tendency(x: Array) -> Array:
    """The advection-plus-damping part of Lorenz-96, ``(x_{i+1} - x_{i-2}) x_{i-1} - x_i``."""
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x


class Lorenz63(AbstractODEDynamics):
    r"""The Lorenz (1963) convection model.

    $$\dot x = \sigma (y - x),\quad \dot y = x(\rho - z) - y,\quad \dot z = x y - \beta z.$$

    Chaotic for the classical parameters (leading Lyapunov exponent ~0.906 per time unit).
    The state is ``(x, y, z)``; each call integrates with fixed-step RK4 of step ``dt``.

    **Arguments:**

    - `sigma`, `rho`, `beta`: the parameters (dynamic: differentiable, vmappable).
    - `dt`: the RK4 step (static), DAPPER's 0.01.
    - `solver`: ``None`` for RK4, or a diffrax solver (e.g. ``diffrax.Tsit5()``) used with
      constant steps ``dt``.

    **Reference:** E. N. Lorenz, *Deterministic nonperiodic flow*, J. Atmos. Sci. 20 (1963).
    DAPPER equivalent: ``dapper.mods.Lorenz63`` (``sakov2012`` setup: ``dt=0.01``, observe
    every 25 steps).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.zoo import Lorenz63

        model = Lorenz63()
        x1 = model(jnp.array([1.509, -1.531, 25.46]), 0.0, 0.25)  # 25 RK4 steps
        ```
    """

    sigma: ScalarLike = 10.0
    rho: ScalarLike = 28.0
    beta: ScalarLike = 8.0 / 3.0
    dt: float = eqx.field(default=0.01, static=True, converter=float)
    solver: diffrax.AbstractSolver | None = eqx.field(default=None, static=True)
    state_size: ClassVar[int] = 3

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The Lorenz-63 vector field (autonomous: ``t`` is ignored)."""
        sigma, rho, beta = (_param(p, x) for p in (self.sigma, self.rho, self.beta))
        return jnp.stack(
            [
                sigma * (x[1] - x[0]),
                x[0] * (rho - x[2]) - x[1],
                x[0] * x[1] - beta * x[2],
            ]
        )


class Lorenz96(AbstractODEDynamics):
    r"""The Lorenz (1996) model on a periodic ring of ``n`` sites.

    $$\frac{dx_i}{dt} = (x_{i+1} - x_{i-2})\,x_{i-1} - x_i + F,\qquad x_{i+n} = x_i.$$

    For ``n=40, F=8`` it is chaotic with leading Lyapunov exponent ~1.7 per time unit
    (doubling time ~0.4, "5 days" if 0.2 time units = 1 day). ``x_i = F`` for all ``i`` is a
    (unstable) fixed point.

    **Arguments:**

    - `n`: number of sites (static, ``>= 4``).
    - `forcing`: ``F`` (dynamic; a scalar or ``n`` per-site values).
    - `dt`: the RK4 step (static), 0.05 as in DAPPER and Bach et al. (2025).
    - `solver`: ``None`` for RK4, or a diffrax solver used with constant steps ``dt``.

    **Reference:** E. N. Lorenz, *Predictability: a problem partly solved*, ECMWF Seminar on
    Predictability (1996); Lorenz & Emanuel, J. Atmos. Sci. 55 (1998). DAPPER equivalent:
    ``dapper.mods.Lorenz96`` (``sakov2008`` setup: ``n=40, F=8, dt=0.05``).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.zoo import Lorenz96

        model = Lorenz96(n=40)
        ens = 8.0 + jax.random.normal(jax.random.key(0), (20, 40))
        ens = jax.vmap(model, in_axes=(0, None, None))(ens, 0.0, 0.05)  # one step each
        ```
    """

    n: int = eqx.field(default=40, static=True)
    forcing: ScalarLike | Float[ArrayLike, " n"] = 8.0
    dt: float = eqx.field(default=0.05, static=True, converter=float)
    solver: diffrax.AbstractSolver | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.n, int) or self.n < 4:
            raise ValueError(
                f"Lorenz96 needs n >= 4 sites (the stencil reaches x_(i-2) and x_(i+1)); got "
                f"n={self.n}. The standard configuration is n=40."
            )
        shape = jnp.shape(self.forcing)
        if shape not in ((), (self.n,)):
            raise ValueError(
                f"Lorenz96 forcing must be a scalar or have shape ({self.n},); got {shape}."
            )

    @property
    def state_size(self) -> int:
        """The state length ``n``."""
        return self.n

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The Lorenz-96 vector field (autonomous: ``t`` is ignored)."""
        return _l96_tendency(x) + _param(self.forcing, x)


class Lorenz96TwoScale(AbstractODEDynamics):
    r"""The two-scale Lorenz (1996) model: ``K`` slow variables, each coupled to ``J`` fast ones.

    $$\frac{dX_k}{dt} = (X_{k+1} - X_{k-2})X_{k-1} - X_k + F - \frac{hc}{b}\sum_{j=1}^{J}
      Y_{j,k},$$

    $$\frac{dY_{j,k}}{dt} = -cb\,Y_{j+1,k}(Y_{j+2,k} - Y_{j-1,k}) - c\,Y_{j,k}
      + \frac{hc}{b} X_k,$$

    with ``X`` periodic in ``k`` and the fast variables forming one periodic chain of length
    ``K J`` (``Y_{J+1,k} = Y_{1,k+1}``). The state is the concatenation ``[X, Y]`` of length
    ``K (J + 1)``, with ``Y`` ordered slow-index-major (``Y[k*J + j] = Y_{j,k}``).

    **Arguments:**

    - `n_slow`: ``K`` (static), `n_fast`: ``J`` fast variables per slow one (static).
    - `forcing`: ``F``; `coupling`: ``h``; `time_ratio`: ``c`` (fast variables evolve ``c``
      times faster); `amplitude_ratio`: ``b`` (fast variables are ``b`` times smaller).
      All dynamic.
    - `dt`: the RK4 step (static); 0.005 resolves the fast scale (DAPPER's ``LorenzUV``).
    - `solver`: ``None`` for RK4, or a diffrax solver used with constant steps ``dt``.

    **Reference:** E. N. Lorenz, *Predictability: a problem partly solved* (1996); D. S.
    Wilks, Q. J. R. Meteorol. Soc. 131 (2005). DAPPER equivalent:
    ``dapper.mods.LorenzUV.model_instance(nU=36, J=10, F=10, h=1, b=10, c=10)``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.zoo import Lorenz96TwoScale

        model = Lorenz96TwoScale()
        x = jnp.zeros(model.state_size).at[0].set(1.0)
        slow, fast = model.split(model(x, 0.0, 0.05))
        ```
    """

    n_slow: int = eqx.field(default=36, static=True)
    n_fast: int = eqx.field(default=10, static=True)
    forcing: ScalarLike = 10.0
    coupling: ScalarLike = 1.0
    time_ratio: ScalarLike = 10.0
    amplitude_ratio: ScalarLike = 10.0
    dt: float = eqx.field(default=0.005, static=True, converter=float)
    solver: diffrax.AbstractSolver | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.n_slow, int) or self.n_slow < 4:
            raise ValueError(
                f"Lorenz96TwoScale needs n_slow >= 4 slow sites; got n_slow={self.n_slow}."
            )
        if not isinstance(self.n_fast, int) or self.n_fast < 1:
            raise ValueError(
                f"Lorenz96TwoScale needs n_fast >= 1 fast variables per slow site; got "
                f"n_fast={self.n_fast}."
            )

    @property
    def state_size(self) -> int:
        """The state length ``K (J + 1)``."""
        return self.n_slow * (self.n_fast + 1)

    def split(self, x: Float[Array, " N_x"]) -> tuple[Float[Array, " K"], Float[Array, "K J"]]:
        """Split a state into the slow ``X`` (shape ``(K,)``) and fast ``Y`` (``(K, J)``)."""
        return x[: self.n_slow], x[self.n_slow :].reshape(self.n_slow, self.n_fast)

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The two-scale vector field (autonomous: ``t`` is ignored)."""
        forcing, h, c, b = (
            _param(p, x)
            for p in (self.forcing, self.coupling, self.time_ratio, self.amplitude_ratio)
        )
        slow = x[: self.n_slow]
        fast = x[self.n_slow :]
        hcb = h * c / b
        fast_sum = fast.reshape(self.n_slow, self.n_fast).sum(axis=1)
        d_slow = _l96_tendency(slow) + forcing - hcb * fast_sum
        d_fast = (
            -c * b * jnp.roll(fast, -1) * (jnp.roll(fast, -2) - jnp.roll(fast, 1))
            - c * fast
            + hcb * jnp.repeat(slow, self.n_fast)
        )
        return jnp.concatenate([d_slow, d_fast])
