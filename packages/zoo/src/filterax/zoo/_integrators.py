"""One-step integrators and the time-stepping machinery shared by the zoo's systems.

**How ``dynamics(x, t0, t1)`` turns an interval into steps.** A stepped system advances by
``n = round((t1 - t0) / dt)`` steps of its static step ``dt`` (DAPPER's convention: the
model step is fixed, the observation interval is a whole number of model steps).

- *Concrete interval* — ``t0``/``t1`` are Python numbers or concrete arrays, which includes
  ``jax.jit(lambda x: model(x, 0.0, 0.25))`` and ``jax.vmap(model, in_axes=(0, None,
  None))`` with Python-float times. ``n`` is a Python ``int`` and the loop is a
  ``lax.scan`` of static length: forward- and reverse-mode autodiff, ``vmap`` and ``jit``
  all work. An interval that is not a whole number of steps raises ``ValueError``.
- *Traced interval* — ``t0``/``t1`` are tracers, e.g. ``model(x, t, t + dt_obs)`` inside a
  ``lax.scan`` over observation windows. ``n`` is a traced integer and the loop is
  equinox's checkpointed while loop (the loop behind diffrax's
  ``RecursiveCheckpointAdjoint``): exactly ``n`` steps run; reverse-mode autodiff
  (``jax.grad``, ``jax.vjp``, ``jax.jacrev``) works with ``_CHECKPOINTS`` stored states
  and online-treeverse recomputation; ``vmap`` works. Forward-mode autodiff (``jax.jvp``,
  ``jax.jacfwd``) is not supported through a traced-interval call: use ``jax.jacrev``, or
  ``step``/``integrate`` whose step count is static (tangent-linear models, Lyapunov
  exponents).

Systems with a closed-form flow (`OrnsteinUhlenbeck`, `BrownianMotion`, `Sinusoid`,
`LinearAdvection`) evaluate it directly and have no step count at all.
"""

import abc
import math
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, ScalarLike

from filterax.primitives import AbstractDynamics

__all__ = [
    "AbstractMapDynamics",
    "AbstractODEDynamics",
    "euler_step",
    "rk4_step",
]

# States stored by the checkpointed loop on the traced-interval path. Online treeverse with c
# checkpoints replays each step at most once for up to (c + 1)(c + 2)/2 = 561 steps, which
# covers every standard observation window (1 to 50 model steps) with memory of 32 states.
_CHECKPOINTS = 32

# How far (in steps) a concrete interval may be from a whole number of steps. Python-float
# times are off by ~1e-12 steps; 1% of a step is certainly a user error, not round-off.
_STEP_TOLERANCE = 1e-2

VectorField = Callable[[Array, Any], Array]


def rk4_step(
    f: VectorField, x: Float[Array, " N_x"], t: ScalarLike, dt: ScalarLike
) -> Float[Array, " N_x"]:
    r"""One classical fourth-order Runge–Kutta step of ``dx/dt = f(x, t)``.

    $$k_1 = f(x, t),\ k_2 = f(x + \tfrac{h}{2}k_1, t + \tfrac{h}{2}),\
      k_3 = f(x + \tfrac{h}{2}k_2, t + \tfrac{h}{2}),\ k_4 = f(x + h k_3, t + h),$$

    $$x \leftarrow x + \tfrac{h}{6}(k_1 + 2k_2 + 2k_3 + k_4).$$

    **Arguments:**

    - `f`: the vector field ``f(x, t)`` (e.g. a system's ``rhs``).
    - `x`: the state at time ``t``.
    - `t`: the current time.
    - `dt`: the step ``h``.

    **Returns:** the state at ``t + dt``; global error O(h^4).

    DAPPER equivalent: ``dapper.mods.integration.rk4(f, x, t, dt)``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.zoo import rk4_step

        rk4_step(lambda x, t: -x, jnp.ones(3), 0.0, 0.1)  # ~ exp(-0.1)
        ```
    """
    half = 0.5 * dt
    k1 = f(x, t)
    k2 = f(x + half * k1, t + half)
    k3 = f(x + half * k2, t + half)
    k4 = f(x + dt * k3, t + dt)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def euler_step(
    f: VectorField, x: Float[Array, " N_x"], t: ScalarLike, dt: ScalarLike
) -> Float[Array, " N_x"]:
    r"""One forward-Euler step ``x <- x + h f(x, t)`` (first order; for tests and teaching).

    **Arguments:** as `rk4_step`.

    **Returns:** the state at ``t + dt``; global error O(h).

    DAPPER equivalent: ``rk4(f, x, t, dt, stages=1)``.
    """
    return x + dt * f(x, t)


def check_dt(dt: float, owner: str) -> None:
    """Raise unless the model step ``dt`` is a finite, strictly positive number."""
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(
            f"{owner}: the model time step dt must be a finite number > 0; got dt={dt}. "
            "Pass e.g. dt=0.01 (Lorenz-63) or dt=0.05 (Lorenz-96)."
        )


def check_state(x: Any, size: int | None, owner: str) -> None:
    """Raise unless ``x`` is ONE floating state vector (of length ``size`` when given)."""
    shape = jnp.shape(x)
    if len(shape) != 1 or (size is not None and shape[0] != size):
        want = "(N_x,)" if size is None else f"({size},)"
        raise ValueError(
            f"{owner} acts on one state vector of shape {want}; got shape {shape}. "
            "Propagate an ensemble with jax.vmap(model, in_axes=(0, None, None))."
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(
            f"{owner} needs a floating-point state; got dtype {jnp.result_type(x)}. "
            "Cast it with .astype(jnp.float32) or .astype(jnp.float64)."
        )


def _concrete_time(t: Any, name: str) -> float | None:
    """``t`` as a Python float, or ``None`` when it is a tracer."""
    if isinstance(t, jax.core.Tracer):
        return None
    arr = np.asarray(t)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar time; got an array of shape {arr.shape}.")
    return float(arr)


def static_step_count(t0: Any, t1: Any, dt: float) -> int | None:
    """``round((t1 - t0) / dt)`` as a Python int when both times are concrete, else ``None``.

    Raises ``ValueError`` for a concrete interval that is negative or not a whole number of
    steps (a traced interval cannot be checked and is rounded).
    """
    a, b = _concrete_time(t0, "t0"), _concrete_time(t1, "t1")
    if a is None or b is None:
        return None
    steps = (b - a) / dt
    n = round(steps)
    if n < 0 or abs(steps - n) > _STEP_TOLERANCE:
        raise ValueError(
            f"The interval t1 - t0 = {b - a} must be a non-negative whole number of model "
            f"steps dt = {dt} (got {steps:.6g} steps). Choose observation times on the model "
            "time grid, or build the model with a dt that divides the interval."
        )
    return n


def iterate_steps(
    step: Callable[[Array, Any], Array], x: Array, n_steps: int, t0: Any, dt: float
) -> Array:
    """Apply ``x <- step(x, t0 + i dt)`` for ``i = 0, ..., n_steps - 1`` (static count)."""
    if n_steps == 0:
        return x

    def body(y, i):
        return step(y, t0 + i * dt), None

    y, _ = jax.lax.scan(body, x, jnp.arange(n_steps))
    return y


def fixed_step_flow(
    step: Callable[[Array, Any], Array], x: Array, t0: Any, t1: Any, dt: float
) -> Array:
    """Advance ``x`` from ``t0`` to ``t1`` by ``round((t1 - t0) / dt)`` calls of ``step``.

    A static-length ``lax.scan`` when the interval is concrete; a reverse-differentiable
    checkpointed while loop over a traced count otherwise (see the module docstring).
    """
    n = static_step_count(t0, t1, dt)
    if n is not None:
        return iterate_steps(step, x, n, t0, dt)
    t0 = jnp.asarray(t0)
    n_traced = jnp.maximum(jnp.round((t1 - t0) / dt), 0).astype(jnp.int32)

    def cond(carry):
        i, _ = carry
        return i < n_traced

    def body(carry):
        i, y = carry
        return i + 1, step(y, t0 + i * dt)

    _, y = eqxi.while_loop(
        cond, body, (jnp.array(0, jnp.int32), x), kind="checkpointed", checkpoints=_CHECKPOINTS
    )
    return y


def diffrax_flow(
    rhs: VectorField, solver: diffrax.AbstractSolver, x: Array, t0: Any, t1: Any, dt: float
) -> Array:
    """Solve ``dx/dt = rhs(x, t)`` from ``t0`` to ``t1`` with ``diffrax.diffeqsolve``.

    Constant steps of ``dt`` (the last one clipped to ``t1``). A concrete interval bounds
    ``max_steps`` by the step count; a traced one uses ``max_steps=None`` with
    ``RecursiveCheckpointAdjoint(checkpoints=_CHECKPOINTS)`` so it stays reverse-differentiable.
    """
    n = static_step_count(t0, t1, dt)
    if n == 0:
        return x
    if n is None:
        options = dict(
            max_steps=None,
            adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=_CHECKPOINTS),
        )
    else:
        # Two spare steps absorb a final sliver step left by floating-point time arithmetic.
        options = dict(max_steps=n + 2)
    term = diffrax.ODETerm(lambda t, y, args: rhs(y, t).astype(y.dtype))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        dt,
        x,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.ConstantStepSize(),
        **options,
    )
    return sol.ys[0]


class AbstractODEDynamics(AbstractDynamics):
    r"""A system ``dx/dt = rhs(x, t)`` integrated with fixed-step RK4 (or a diffrax solver).

    Subclasses provide the vector field `rhs`, the static model step `dt`, the static
    `solver` (``None`` for the built-in RK4, or any ``diffrax.AbstractSolver``) and
    `state_size` (an int, or ``None`` for "any length"). They inherit:

    - ``model(x, t0, t1)``: ``round((t1 - t0)/dt)`` RK4 steps (see the module docstring for
      traced ``t0``/``t1``), or ``diffrax.diffeqsolve`` with constant steps ``dt`` when
      `solver` is given;
    - ``model.step(x, t=0.0)``: one step of size ``dt``;
    - ``model.integrate(x, n_steps, t0=0.0)``: ``n_steps`` steps (static count, any autodiff).
    """

    dt: eqx.AbstractVar[float]
    solver: eqx.AbstractVar[diffrax.AbstractSolver | None]
    state_size: eqx.AbstractVar[int | None]

    def __check_init__(self):
        check_dt(self.dt, type(self).__name__)

    @abc.abstractmethod
    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The vector field ``dx/dt`` at state ``x`` and time ``t``."""

    def _rk4(self, x: Array, t: Any) -> Array:
        return rk4_step(self.rhs, x, t, self.dt)

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """One model step of size ``dt`` from time ``t`` (RK4, or the diffrax `solver`)."""
        check_state(x, self.state_size, type(self).__name__)
        if self.solver is None:
            return self._rk4(x, t)
        return diffrax_flow(self.rhs, self.solver, x, t, t + self.dt, self.dt)

    def integrate(
        self, x: Float[Array, " N_x"], n_steps: int, t0: ScalarLike = 0.0
    ) -> Float[Array, " N_x"]:
        """``n_steps`` model steps from time ``t0`` (a static count: jvp and vjp both work)."""
        check_state(x, self.state_size, type(self).__name__)
        if self.solver is None:
            return iterate_steps(self._rk4, x, int(n_steps), t0, self.dt)
        return diffrax_flow(self.rhs, self.solver, x, t0, t0 + n_steps * self.dt, self.dt)

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """Integrate ``x`` from ``t0`` to ``t1`` (a whole number of steps ``dt``)."""
        check_state(x, self.state_size, type(self).__name__)
        if self.solver is None:
            return fixed_step_flow(self._rk4, x, t0, t1, self.dt)
        return diffrax_flow(self.rhs, self.solver, x, t0, t1, self.dt)


class AbstractMapDynamics(AbstractDynamics):
    """A system defined by a one-step map ``x <- step(x, t)`` of static time step ``dt``.

    Used for discrete-time models (`LinearModel`) and for PDEs with a dedicated stepper
    (`KuramotoSivashinsky`'s ETD-RK4). Subclasses provide `step`, `dt` and `state_size`;
    ``model(x, t0, t1)`` applies ``step`` ``round((t1 - t0)/dt)`` times (traced intervals as
    described in the module docstring) and ``model.integrate(x, n_steps)`` a static count.
    """

    dt: eqx.AbstractVar[float]
    state_size: eqx.AbstractVar[int | None]

    def __check_init__(self):
        check_dt(self.dt, type(self).__name__)

    @abc.abstractmethod
    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """One model step of size ``dt`` from time ``t``."""

    def integrate(
        self, x: Float[Array, " N_x"], n_steps: int, t0: ScalarLike = 0.0
    ) -> Float[Array, " N_x"]:
        """``n_steps`` model steps from time ``t0`` (a static count: jvp and vjp both work)."""
        check_state(x, self.state_size, type(self).__name__)
        return iterate_steps(self.step, x, int(n_steps), t0, self.dt)

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """Advance ``x`` from ``t0`` to ``t1`` (a whole number of steps ``dt``)."""
        check_state(x, self.state_size, type(self).__name__)
        return fixed_step_flow(self.step, x, t0, t1, self.dt)
