r"""Continuous observations and the ensemble Kalman–Bucy filter (EnKBF).

A system observed *continuously in time* (the continuous-time limit of ever more frequent,
ever noisier observations):

$$dX_t = f(X_t, t)\,dt + Q^{1/2}\,dW_t,\qquad dY_t = h(X_t)\,dt + R^{1/2}\,dV_t,$$

with ``Q`` and ``R`` *intensities* (covariance per unit time). The data are the increments
``dY`` of the observation path, never point values. `ContinuousStateSpaceModel` is such a
system with a fine time grid ``dt``; `ContinuousStateSpaceModel.simulate` draws a truth and
the observation increments ``Delta Y_j = Y_{t_{j+1}} - Y_{t_j}`` on that grid
(Euler–Maruyama). To fit the cycled-method contract (one driver, `filterax.filters.run`),
the increments are grouped by *cycle*: the observation of cycle ``k`` (the interval
``(t_{k-1}, t_k]`` of length ``dt_obs``) is the vector of its ``n_sub = dt_obs / dt``
increments, stacked step-major,

$$y_k = (\Delta Y_{k,0}, \Delta Y_{k,1}, \dots, \Delta Y_{k,n_{sub}-1}) \in
\mathbb R^{n_{sub} N_y},$$

and `EnKBF` integrates its ensemble through the cycle driven by those increments.

The EnKBF couples the ensemble through the empirical cross covariance
``P^{xh} = (N_e - 1)^{-1} \sum_i (x_i - \bar x)(h(x_i) - \bar h)^T``, ``K = P^{xh} R^{-1}``:

- stochastic (perturbed increments), the continuous limit of the perturbed-observation EnKF:

$$dx_i = f(x_i)\,dt + Q^{1/2} dW_i + K\,\big(dY - h(x_i)\,dt - R^{1/2} dV_i\big);$$

- deterministic (Bergemann & Reich 2012), the continuous limit of the square-root filters:

$$dx_i = f(x_i)\,dt + \tfrac12 Q P^{-1}(x_i - \bar x)\,dt
+ K\,\big(dY - \tfrac12 (h(x_i) + \bar h)\,dt\big).$$

For a linear model (``f = A x``, ``h = H x``) the deterministic ensemble's mean and
covariance satisfy the Kalman–Bucy equations exactly,

$$d\bar x = A\bar x\,dt + P H^T R^{-1}(dY - H\bar x\,dt),\qquad
\dot P = AP + PA^T + Q - PH^TR^{-1}HP,$$

and the stochastic one's in expectation (sampling error ``O(N_e^{-1/2})``).
"""

# No `from __future__ import annotations`: equinox needs evaluated `AbstractVar` annotations.
import math
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real, ScalarLike

from filterax.primitives import (
    AbstractCycledMethod,
    AbstractModel,
    CycleInfo,
    LinearObs,
    apply_obs,
    is_finite,
    mask_noise,
    noise_sqrt,
    positive_definite_noise,
)

from ._integrators import AbstractMapDynamics, check_dt, check_state
from ._ssm import _as_covariance, _as_python_float, _sample, _sqrt_factor

__all__ = [
    "ContinuousExperiment",
    "ContinuousStateSpaceModel",
    "EnKBF",
    "EulerFlow",
    "coarsen_increments",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_VARIANTS = ("stochastic", "deterministic")


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


class EulerFlow(AbstractMapDynamics):
    r"""The noise-free flow of a drift ``f(x, t)`` by forward Euler on a grid of step ``dt``.

    $$x \leftarrow x + f(x, t)\,dt$$

    repeated ``round((t1 - t0)/dt)`` times: the deterministic part of the Euler–Maruyama
    scheme `ContinuousStateSpaceModel` simulates with (its `dynamics`).

    **Arguments:**

    - `drift`: ``drift(x, t) -> dx/dt`` on ONE state.
    - `dt`: the grid step (static, > 0).
    - `state_size`: the state length, or ``None`` for any.
    """

    drift: Callable[..., Any]
    dt: float = eqx.field(static=True, converter=float)
    state_size: int | None = eqx.field(default=None, static=True)

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """One Euler step of size ``dt`` from time ``t``."""
        check_state(x, self.state_size, "EulerFlow")
        return x + self.dt * jnp.asarray(self.drift(x, t)).astype(x.dtype)


class ContinuousExperiment(eqx.Module):
    """A truth and its continuous observations, grouped by cycle.

    **Fields:**

    - `truth`: ``(T, N_x)`` true state at the cycle ends ``times``.
    - `increments`: ``(T, n_sub * N_y)`` the observation increments of each cycle, step-major
      (row ``k`` is ``(Delta Y_{k,0}, ..., Delta Y_{k,n_sub-1})``): the ``observations`` to
      give `filterax.filters.run` with an `EnKBF`.
    - `times`: ``(T,)`` the cycle ends ``t0 + (k + 1) dt_obs``.
    - `initial_truth`: ``(N_x,)`` the true state at ``t0``.
    """

    truth: Float[Array, "T N_x"]
    increments: Float[Array, "T M"]
    times: Float[Array, " T"]
    initial_truth: Float[Array, " N_x"]

    @property
    def observations(self) -> Float[Array, "T M"]:
        """`increments` (the name every twin experiment uses for what is assimilated)."""
        return self.increments


def coarsen_increments(
    increments: Float[ArrayLike, "T M"], n_obs: int, factor: int
) -> Float[Array, "T M2"]:
    r"""Sum every `factor` consecutive observation increments of each cycle.

    $$\Delta Y^{(\text{coarse})}_{k,j} = \sum_{l=0}^{\text{factor}-1}
    \Delta Y_{k,\,j\,\text{factor}+l}$$

    — the increments of the same observation path on a grid `factor` times coarser, which is
    how a convergence study in ``dt`` feeds one simulated path to filters of several steps.

    **Arguments:**

    - `increments`: ``(T, n_sub * N_y)`` as in `ContinuousExperiment`.
    - `n_obs`: ``N_y``.
    - `factor`: a Python int dividing ``n_sub``.

    **Returns:** ``(T, (n_sub / factor) * N_y)``.
    """
    increments = jnp.asarray(increments)
    if increments.ndim != 2 or increments.shape[1] % n_obs:
        raise ValueError(
            f"increments must be (T, n_sub * N_y) with N_y={n_obs}; got {increments.shape}."
        )
    n_sub = increments.shape[1] // n_obs
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or n_sub % factor:
        raise ValueError(
            f"factor must be a Python int >= 1 dividing n_sub={n_sub}; got {factor!r}."
        )
    t = increments.shape[0]
    return increments.reshape(t, n_sub // factor, factor, n_obs).sum(axis=2).reshape(t, -1)


class ContinuousStateSpaceModel(AbstractModel):
    r"""A system observed continuously in time, with a fine grid for simulation and filtering.

    $$x_0\sim\mathcal N(\mu_0, P_0),\qquad dX_t = f(X_t, t)\,dt + Q^{1/2} dW_t,\qquad
    dY_t = h(X_t)\,dt + R^{1/2} dV_t .$$

    The grid has step `dt`; a *cycle* (what `filterax.filters.run` steps over) is
    ``n_sub = dt_obs / dt`` grid steps and its observation is the ``(n_sub * N_y,)`` vector of
    the increments ``Delta Y_j`` over its steps (see the module docstring). `simulate`
    integrates the truth by Euler–Maruyama on the grid,

    $$X_{j+1} = X_j + f(X_j, t_j)\,dt + \sqrt{dt}\,Q^{1/2}\xi_j,\qquad
    \Delta Y_j = h(X_j)\,dt + \sqrt{dt}\,R^{1/2}\eta_j,$$

    (left-point, Itô). To study convergence in ``dt``, simulate on a fine grid and sum the
    increments with `coarsen_increments`.

    **Arguments:**

    - `drift`: ``drift(x, t) -> dx/dt`` on ONE state (e.g. ``lambda x, t: A @ x`` or a
      zoo system's ``rhs``).
    - `obs_op`: ``h``: a callable on ONE state, a lineax operator or an ``(N_y, N_x)`` matrix.
    - `obs_noise`: the observation-noise *intensity* ``R`` (covariance per unit time; the
      increment over ``dt`` has covariance ``R dt``): lineax operator, scalar, variances or
      matrix; positive definite.
    - `dt`: the grid step (static, > 0).
    - `dt_obs`: the cycle length (static; a whole number of steps `dt`).
    - `x0_mean`, `x0_cov`: the prior of the initial state.
    - `process_noise`: the diffusion intensity ``Q`` (covariance per unit time), or ``None``.
    - `t0`: the initial time.
    - `name`: an identifier.

    ``dynamics`` is the noise-free flow `EulerFlow` of the drift (the `AbstractModel`
    contract); ``process_noise`` is a *rate* here, unlike the per-window covariance of
    `StateSpaceModel`.

    **Reference:** A. H. Jazwinski, *Stochastic Processes and Filtering Theory* (1970), ch. 7;
    K. Law, A. Stuart & K. Zygalakis, *Data Assimilation: A Mathematical Introduction*
    (2015), ch. 6–8 (continuous time).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    from filterax.zoo import ContinuousStateSpaceModel

    A = jnp.array([[-0.5, 1.0], [-1.0, -0.5]])
    ssm = ContinuousStateSpaceModel(lambda x, t: A @ x, jnp.array([[1.0, 0.0]]), 0.1,
                                    dt=0.01, dt_obs=0.1, x0_mean=jnp.zeros(2), x0_cov=1.0,
                                    process_noise=0.05)
    xp = ssm.simulate(jax.random.key(0), 50)   # xp.increments: (50, 10)
    ```
    """

    drift: Callable[..., Any]
    dynamics: EulerFlow
    obs_op: Any
    obs_noise: lx.AbstractLinearOperator
    process_noise: lx.AbstractLinearOperator | None
    x0_mean: Float[Array, " N_x"]
    x0_cov: lx.AbstractLinearOperator
    dt: float = eqx.field(static=True)
    dt_obs: float = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    name: str | None = eqx.field(static=True)
    state_coords: Float[Array, "N_x D"] | None
    obs_coords: Float[Array, "N_y D"] | None
    distance: Callable[..., Any] | None = eqx.field(static=True)

    def __init__(
        self,
        drift: Any,
        obs_op: Any,
        obs_noise: Any,
        *,
        dt: float,
        dt_obs: float,
        x0_mean: Float[ArrayLike, " N_x"],
        x0_cov: Any,
        process_noise: Any = None,
        t0: float = 0.0,
        name: str | None = None,
    ):
        if not callable(drift):
            raise TypeError(
                "drift must be callable as drift(x, t) -> dx/dt on ONE state; got "
                f"{type(drift).__name__}."
            )
        dt = _as_python_float(dt, "dt")
        check_dt(dt, "ContinuousStateSpaceModel")
        dt_obs = _as_python_float(dt_obs, "dt_obs")
        n_sub = dt_obs / dt
        if not (math.isfinite(n_sub) and round(n_sub) >= 1 and abs(n_sub - round(n_sub)) < 1e-6):
            raise ValueError(
                f"dt_obs must be a positive whole number of grid steps dt; got dt_obs={dt_obs}, "
                f"dt={dt} ({n_sub:.6g} steps). Choose dt dividing dt_obs."
            )
        x0_mean = jnp.asarray(x0_mean)
        if not jnp.issubdtype(x0_mean.dtype, jnp.inexact):
            x0_mean = x0_mean.astype(jnp.result_type(float))
        if x0_mean.ndim != 1:
            raise ValueError(f"x0_mean must be a 1-D state (N_x,); got shape {x0_mean.shape}.")
        n, dtype = x0_mean.shape[0], x0_mean.dtype
        if isinstance(obs_op, jax.Array | np.ndarray):
            obs_op = LinearObs(jnp.asarray(obs_op))
        n_obs = jax.eval_shape(lambda x: apply_obs(obs_op, x), x0_mean).shape
        if len(n_obs) != 1:
            raise ValueError(f"obs_op(x) must return a 1-D vector (N_y,); got shape {n_obs}.")
        obs_noise = _as_covariance(obs_noise, n_obs[0], "obs_noise (the intensity R)", dtype)
        # R is inverted at every step: it must be positive definite, not only semidefinite.
        positive_definite_noise(obs_noise, n_obs[0], name="obs_noise (the intensity R)")
        if process_noise is not None:
            process_noise = _as_covariance(process_noise, n, "process_noise (intensity Q)", dtype)
        self.drift = drift
        self.dynamics = EulerFlow(drift, dt, n)
        self.obs_op = obs_op
        self.obs_noise = obs_noise
        self.process_noise = process_noise
        self.x0_mean = x0_mean
        self.x0_cov = _as_covariance(x0_cov, n, "x0_cov", dtype)
        self.dt = dt
        self.dt_obs = dt_obs
        self.t0 = _as_python_float(t0, "t0")
        self.name = name
        self.state_coords = None
        self.obs_coords = None
        self.distance = None

    @property
    def n_sub(self) -> int:
        """Grid steps per cycle, ``dt_obs / dt``."""
        return round(self.dt_obs / self.dt)

    @property
    def n_state(self) -> int:
        """``N_x``."""
        return self.x0_mean.shape[0]

    @property
    def n_obs(self) -> int:
        """``N_y`` (of one increment; a cycle's observation has ``n_sub * N_y`` entries)."""
        return self.obs_noise.in_size()

    def initial_ensemble(self, key: PRNGKeyArray, n_ensemble: int) -> Float[Array, "N_e N_x"]:
        """Draw ``N_e`` members from the prior ``N(x0_mean, x0_cov)``."""
        if isinstance(n_ensemble, bool) or not isinstance(n_ensemble, int) or n_ensemble < 2:
            raise ValueError(f"n_ensemble must be a Python int >= 2; got {n_ensemble!r}.")
        factor = _sqrt_factor(self.x0_cov, self.x0_mean.dtype)
        return self.x0_mean[None, :] + _sample(key, factor, (n_ensemble,))

    def simulate(self, key: PRNGKeyArray, n_cycles: int) -> ContinuousExperiment:
        """Draw a truth and its observation increments for `n_cycles` cycles (see above).

        **Returns:** a `ContinuousExperiment`.
        """
        if isinstance(n_cycles, bool) or not isinstance(n_cycles, int) or n_cycles < 1:
            raise ValueError(f"n_cycles must be a Python int >= 1; got {n_cycles!r}.")
        return _simulate_continuous(self, key, n_cycles)


@eqx.filter_jit
def _simulate_continuous(
    model: ContinuousStateSpaceModel, key: PRNGKeyArray, n_cycles: int
) -> ContinuousExperiment:
    dtype = model.x0_mean.dtype
    dt = jnp.asarray(model.dt, dtype)
    sqrt_dt = jnp.sqrt(dt)
    key_init, key_path = jax.random.split(key)
    x0 = model.x0_mean + _sample(key_init, _sqrt_factor(model.x0_cov, dtype), ())
    obs_factor = _sqrt_factor(model.obs_noise, dtype)
    proc_factor = None if model.process_noise is None else _sqrt_factor(model.process_noise, dtype)
    n_sub = model.n_sub

    def fine_step(x, j):
        t = model.t0 + j.astype(dtype) * dt
        k_obs, k_proc = jax.random.split(jax.random.fold_in(key_path, j))
        dy = apply_obs(model.obs_op, x) * dt + sqrt_dt * _sample(k_obs, obs_factor, ())
        x_new = x + jnp.asarray(model.drift(x, t)).astype(dtype) * dt
        if proc_factor is not None:
            x_new = x_new + sqrt_dt * _sample(k_proc, proc_factor, ())
        return x_new, dy

    def cycle(x, k):
        steps = k * n_sub + jnp.arange(n_sub)
        x, dys = jax.lax.scan(fine_step, x, steps)
        return x, (x, dys.reshape(-1))

    _, (truth, increments) = jax.lax.scan(cycle, x0, jnp.arange(n_cycles))
    times = model.t0 + model.dt_obs * jnp.arange(1, n_cycles + 1, dtype=dtype)
    return ContinuousExperiment(truth, increments, times, x0)


class _Control(eqx.Module):
    # Numbers only: diffrax multiplies a control by the integration direction.
    dt: Array
    increment: Array
    index: Array


class _EnKBFTerm(diffrax.AbstractTerm):
    """The EnKBF as one diffrax term: ``vf`` is the state itself (the ensemble coupling is
    nonlinear in it), the control is the grid step's ``(dt, Delta Y_j, noise key)``, and
    ``prod`` is the EnKBF increment of the step (see `EnKBF`)."""

    method: Any
    model: ContinuousStateSpaceModel
    increments: Float[Array, "n_sub N_y"]
    t_start: Array
    step_size: Array
    key: PRNGKeyArray

    def vf(self, t, y, args):
        del args
        return (t, y)

    def contr(self, t0, t1, **kwargs):
        del kwargs
        n_sub = self.increments.shape[0]
        index = jnp.clip(jnp.round((t0 - self.t_start) / self.step_size), 0, n_sub - 1)
        index = index.astype(jnp.int32)
        return _Control(jnp.asarray(t1 - t0), self.increments[index], index)

    def prod(self, vf, control):
        t, (analysis, forecast, _, innovations) = vf
        key = jax.random.fold_in(self.key, control.index)
        d_analysis, d_loglik, d_innovations = self.method._increment(
            self.model, t, analysis, control, key, True, innovations
        )
        d_forecast, _, _ = self.method._increment(
            self.model, t, forecast, control, key, False, innovations
        )
        return d_analysis, d_forecast, d_loglik, d_innovations


class EnKBF(AbstractCycledMethod):
    r"""The ensemble Kalman–Bucy filter for continuous observations ``dY = h(X) dt + R^{1/2} dV``.

    Each cycle integrates the ensemble over the ``n_sub`` grid steps of ``(t_prev, t]``
    driven by the cycle's observation increments (the ``(n_sub * N_y,)`` observation, see
    `ContinuousStateSpaceModel`), by the Euler–Maruyama scheme (`diffrax.Euler` with the grid
    as `diffrax.StepTo`): with ``K_j = P^{xh}_j R^{-1}`` from the ensemble at ``t_j``,

    - ``variant="stochastic"`` (perturbed increments; Evensen's perturbed-observation EnKF in
      the limit of continuous observations, Law, Stuart & Zygalakis 2015):

    $$x_i \leftarrow x_i + f(x_i)\,\delta + \sqrt{\delta}\,Q^{1/2}\xi_i
    + K_j\big(\Delta Y_j - h(x_i)\,\delta - \sqrt{\delta}\,R^{1/2}\eta_i\big);$$

    - ``variant="deterministic"`` (Bergemann & Reich 2012), no perturbations; model noise
      enters through the mean-preserving drift ``½ Q P^{-1}(x_i - \bar x)`` (Reich & Cotter
      2015), ``P^{-1} a`` by conjugate gradients on the matrix-free ensemble covariance (the
      pseudo-inverse when ``N_e \le N_x``: only the ensemble subspace receives model noise):

    $$x_i \leftarrow x_i + f(x_i)\,\delta + \tfrac12 Q P^{-1}(x_i - \bar x)\,\delta
    + K_j\big(\Delta Y_j - \tfrac12(h(x_i) + \bar h)\,\delta\big).$$

    Here ``delta = (t - t_prev) / n_sub`` (the model's ``dt`` on its own cycle grid).
    **Why Euler–Maruyama:** the data are increments on the grid and nothing finer, so a
    higher-order SDE solver (which needs sub-grid Lévy areas) has nothing to use; the
    stochastic EnKBF is an Itô SDE (the gain depends on the ensemble) and Euler is Itô; the
    scheme converges with strong order 1 on the linear-Gaussian problem (additive noise) —
    measured in the tests. For a linear model the deterministic ensemble's mean and
    covariance follow the Kalman–Bucy filter up to ``O(delta)`` (exactly the Euler scheme of
    the Riccati equation when the initial ensemble has the exact covariance).

    Missing entries (NaN) of an increment are not assimilated (their rows of ``K`` vanish).
    Each cycle reports: the forecast = the ensemble integrated over the cycle without the
    observation term (same noise draws); the innovation = the ``(n_sub * N_y,)`` increments
    ``Delta Y_j - \bar h_j \delta``; the log-likelihood = the cycle's log
    Radon–Nikodym derivative of the observation path against pure noise ``R^{1/2} V``
    (Kallianpur–Striebel with the filter's ``\bar h``):

    $$\log L_k = \sum_j \Big(\bar h_j^T R^{-1}\Delta Y_j - \tfrac12\,\delta\,\bar h_j^T
    R^{-1}\bar h_j\Big).$$

    **Arguments:**

    - `variant`: ``"stochastic"`` or ``"deterministic"`` (static).

    **Initial condition** (the ``initial`` of `run`): an ``(N_e, N_x)`` ensemble, ``N_e >= 2``.
    The model must be a `ContinuousStateSpaceModel`.

    **Reference:** K. Bergemann & S. Reich (2012), *An ensemble Kalman–Bucy filter for
    continuous data assimilation*, Meteorol. Z. 21(3), 213–219; S. Reich & C. Cotter (2015),
    *Probabilistic Forecasting and Bayesian Data Assimilation*, CUP; K. Law, A. Stuart & K.
    Zygalakis (2015), *Data Assimilation: A Mathematical Introduction*, Springer. DAPPER has
    no continuous-time filter.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import filterax.filters as ff
    from filterax.zoo import ContinuousStateSpaceModel, EnKBF

    A = jnp.array([[-0.5, 1.0], [-1.0, -0.5]])
    ssm = ContinuousStateSpaceModel(lambda x, t: A @ x, jnp.array([[1.0, 0.0]]), 0.1,
                                    dt=0.01, dt_obs=0.1, x0_mean=jnp.zeros(2), x0_cov=1.0,
                                    process_noise=0.05)
    xp = ssm.simulate(jax.random.key(0), 50)
    out = ff.run(EnKBF("deterministic"), ssm, ssm.initial_ensemble(jax.random.key(1), 20),
                 xp.increments, xp.times, key=jax.random.key(2))
    out.analysis_mean                        # (50, 2), close to xp.truth
    ```
    """

    variant: str = eqx.field(default="stochastic", static=True)

    def __check_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ValueError(
                f'EnKBF variant must be "stochastic" or "deterministic"; got {self.variant!r}.'
            )

    def init(self, key: PRNGKeyArray, initial: Any, model: AbstractModel) -> Array:
        """The initial ensemble (checked)."""
        del key
        _check_model(model)
        ensemble = jnp.asarray(initial)
        if ensemble.ndim != 2 or ensemble.shape[1] != model.n_state or ensemble.shape[0] < 2:
            raise ValueError(
                f"EnKBF needs an initial ensemble of shape (N_e, N_x) = (N_e, {model.n_state}) "
                f"with N_e >= 2; got {ensemble.shape}. Use model.initial_ensemble(key, N_e)."
            )
        if not jnp.issubdtype(ensemble.dtype, jnp.inexact):
            raise TypeError(f"the initial ensemble must be floating point; got {ensemble.dtype}.")
        return ensemble

    def step(
        self,
        key: PRNGKeyArray,
        state: Array,
        model: AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " M"],
    ) -> tuple[Array, CycleInfo]:
        """Integrate the ensemble over ``(t_prev, t]`` driven by the cycle's increments."""
        _check_model(model)
        n_sub, n_obs = model.n_sub, model.n_obs
        obs = jnp.asarray(obs)
        if obs.shape != (n_sub * n_obs,):
            raise ValueError(
                f"EnKBF: a cycle's observation is its n_sub * N_y = {n_sub} * {n_obs} = "
                f"{n_sub * n_obs} observation increments (step-major); got shape {obs.shape}. "
                "Pass ContinuousStateSpaceModel.simulate(...).increments (rows per cycle)."
            )
        ensemble = state
        dtype = ensemble.dtype
        increments = obs.astype(dtype).reshape(n_sub, n_obs)
        t_prev = jnp.asarray(t_prev, dtype)
        t = jnp.asarray(t, dtype)
        step_size = (t - t_prev) / n_sub
        grid = t_prev + step_size * jnp.arange(n_sub + 1, dtype=dtype)
        grid = grid.at[-1].set(t)
        # The forecast (the ensemble without this cycle's observations, same noise draws)
        # rides along in the same solve: one loop instead of two.
        y0 = (ensemble, ensemble, jnp.zeros((), dtype), jnp.zeros((n_sub, n_obs), dtype))
        term = _EnKBFTerm(self, model, increments, t_prev, step_size, key)
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Euler(),
            t_prev,
            t,
            None,
            y0,
            stepsize_controller=diffrax.StepTo(ts=grid),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=n_sub,
        )
        analysis, forecast, loglik, innovations = (leaf[0] for leaf in sol.ys)
        info = CycleInfo(
            forecast_mean=jnp.mean(forecast, axis=0),
            forecast_spread=_spread(forecast),
            analysis_mean=jnp.mean(analysis, axis=0),
            analysis_spread=_spread(analysis),
            log_likelihood=loglik,
            innovation=innovations.reshape(-1),
            finite=is_finite(forecast, analysis, loglik),
            forecast=forecast,
            analysis=analysis,
        )
        return analysis, info

    def _increment(
        self,
        model: ContinuousStateSpaceModel,
        t: Array,
        ensemble: Array,
        control: _Control,
        key: PRNGKeyArray,
        assimilate: bool,
        innovations: Array,
    ) -> PyTree:
        """The Euler–Maruyama increment of one grid step (see the class docstring)."""
        n_e, n_x = ensemble.shape
        dtype = ensemble.dtype
        dt = control.dt.astype(dtype)
        sqrt_dt = jnp.sqrt(jnp.maximum(dt, 0.0))
        key_q, key_r = jax.random.split(key)
        mean = jnp.mean(ensemble, axis=0)
        anomalies = ensemble - mean[None, :]
        drift = jax.vmap(lambda x: jnp.asarray(model.drift(x, t)).astype(dtype))(ensemble)
        dx = drift * dt
        q = model.process_noise
        if q is not None:
            if self.variant == "stochastic":
                q_sqrt = noise_sqrt(q)
                z = jax.random.normal(key_q, (n_e, q_sqrt.in_size()), dtype)
                dx = dx + sqrt_dt * jax.vmap(q_sqrt.mv)(z).astype(dtype)
            else:
                dx = dx + 0.5 * dt * _q_pinv_p(q, anomalies)
        zero_loglik = jnp.zeros((), dtype)
        if not assimilate:
            return dx, zero_loglik, jnp.zeros_like(innovations)
        dy = control.increment
        mask = jnp.isfinite(dy)
        dy0 = jnp.where(mask, dy, 0.0)
        observed = jax.vmap(lambda x: apply_obs(model.obs_op, x).astype(dtype))(ensemble)
        h_mean = jnp.mean(observed, axis=0)
        h_anom = jnp.where(mask[None, :], observed - h_mean[None, :], 0.0)
        r = mask_noise(model.obs_noise, mask)
        if self.variant == "stochastic":
            r_sqrt = noise_sqrt(model.obs_noise)
            eta = jax.random.normal(key_r, (n_e, r_sqrt.in_size()), dtype)
            perturbation = sqrt_dt * jax.vmap(r_sqrt.mv)(eta).astype(dtype)
            innov = dy0[None, :] - observed * dt - perturbation
        else:
            innov = dy0[None, :] - 0.5 * (observed + h_mean[None, :]) * dt
        innov = jnp.where(mask[None, :], innov, 0.0)
        weights = jax.vmap(lambda v: _solve(r, v))(innov)  # R^{-1} innov_i, (N_e, N_y)
        # K innov_i = X^T (H_anom R^{-1} innov_i) / (N_e - 1), never forming P.
        dx = dx + _mm(_mm(weights, h_anom.T), anomalies) / (n_e - 1)
        h_obs = jnp.where(mask, h_mean, 0.0)
        w_mean = _solve(r, h_obs)
        dloglik = jnp.dot(w_mean, dy0) - 0.5 * dt * jnp.dot(w_mean, h_obs)
        onehot = (jnp.arange(innovations.shape[0]) == control.index).astype(dtype)
        innovation = jnp.where(mask, dy0 - h_mean * dt, 0.0)
        return dx, dloglik, onehot[:, None] * innovation[None, :]


def _solve(op: lx.AbstractLinearOperator, v: Array) -> Array:
    if lx.is_diagonal(op):
        return v / lx.diagonal(op).astype(v.dtype)
    return lx.linear_solve(op, v, solver=lx.AutoLinearSolver(well_posed=True)).value


def _q_pinv_p(q: lx.AbstractLinearOperator, anomalies: Array) -> Array:
    """``Q P^+ a_i`` for every anomaly row, ``P = A^T A / (N_e - 1)`` matrix-free, by CG.

    Each ``a_i`` lies in the range of ``P``; CG from zero stays in that range and converges to
    ``P^+ a_i`` also when ``P`` is singular (``N_e <= N_x``)."""
    n_e, n_x = anomalies.shape
    dtype = anomalies.dtype
    cov = lx.FunctionLinearOperator(
        lambda v: _mm(anomalies.T, _mm(anomalies, v)) / (n_e - 1),
        jax.ShapeDtypeStruct((n_x,), dtype),
        tags=lx.positive_semidefinite_tag,
    )
    tol = 1e-10 if dtype == jnp.float64 else 1e-5
    solver = lx.CG(rtol=tol, atol=tol, max_steps=10 * n_x + 50)
    solve = jax.vmap(lambda a: lx.linear_solve(cov, a, solver=solver, throw=False).value)
    return jax.vmap(q.mv)(solve(anomalies)).astype(dtype)


def _spread(ensemble: Array) -> Array:
    return jnp.sqrt(jnp.mean(jnp.var(ensemble, axis=0, ddof=1)))


def _check_model(model: Any) -> None:
    if not isinstance(model, ContinuousStateSpaceModel):
        raise TypeError(
            "EnKBF assimilates continuous observations: the model must be a "
            f"filterax.zoo.ContinuousStateSpaceModel; got {type(model).__name__}. Discrete-time "
            "models are assimilated by the ensemble filters of filterax.filters."
        )
