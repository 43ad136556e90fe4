"""State-space models and twin experiments.

A `StateSpaceModel` bundles everything a twin experiment needs: the dynamics, the
observation operator and noise, the assimilation interval, the prior on the initial state,
optional process noise and the burn-in. `StateSpaceModel.simulate` draws one truth trajectory
and its observations in a single `lax.scan`; `StateSpaceModel.initial_ensemble` draws the
filter's initial ensemble. The time conventions are DAPPER's (``dapper.mods.HiddenMarkovModel``
with a ``Chronology``), so scores computed on these experiments are comparable with published
DAPPER numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from filterax.primitives import (
    AbstractModel,
    AbstractStochasticDynamics,
    LinearObs,
    apply_obs,
    as_noise_operator,
    concrete_value,
)

__all__ = ["StateSpaceModel", "TwinExperiment"]


class TwinExperiment(eqx.Module):
    """One synthetic truth trajectory and the observations drawn from it.

    Row ``k`` of every array belongs to the ``k``-th observation (analysis) time
    ``times[k] = t0 + (k + 1) * dt_obs``; there is no observation at ``t0``.

    **Fields:**

    - `truth`: ``(T, N_x)`` true state at the observation times.
    - `observations`: ``(T, N_y)`` noisy observations ``y_k = H(x_k) + eta_k``.
    - `times`: ``(T,)`` observation times.
    - `initial_truth`: ``(N_x,)`` true state at ``t0`` (drawn from ``N(x0_mean, x0_cov)``).
    """

    truth: Float[Array, "T N_x"]
    observations: Float[Array, "T N_y"]
    times: Float[Array, " T"]
    initial_truth: Float[Array, " N_x"]

    @property
    def n_cycles(self) -> int:
        """Number of observation times ``T``."""
        return self.times.shape[-1]


def _as_covariance(value: Any, size: int, name: str, dtype: Any) -> lx.AbstractLinearOperator:
    """Turn a scalar, a 1-D variance vector, a 2-D matrix or a lineax operator into a
    ``size x size`` covariance operator (via `as_noise_operator`, so the structure is the
    one filters expect), checking sizes and, when concrete, values first so that errors
    name the argument."""
    if isinstance(value, lx.AbstractLinearOperator):
        if value.in_size() != size or value.out_size() != size:
            raise ValueError(
                f"{name} must be a {size} x {size} covariance operator; got a lineax operator "
                f"of shape ({value.out_size()}, {value.in_size()}). Pass an operator whose "
                f"size matches the vector it describes ({size})."
            )
        _check_covariance_values(value, name)
        return value
    arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(dtype)
    if arr.ndim == 1 and arr.shape[0] != size:
        raise ValueError(
            f"{name} given as a 1-D vector of variances must have length {size}; got "
            f"length {arr.shape[0]}. Pass {size} variances, a scalar c (meaning c*I) "
            f"or a ({size}, {size}) matrix."
        )
    if arr.ndim == 2 and arr.shape != (size, size):
        raise ValueError(
            f"{name} given as a matrix must have shape ({size}, {size}); got "
            f"{arr.shape}. Pass a scalar c (meaning c*I), {size} variances or a "
            f"({size}, {size}) covariance matrix."
        )
    if arr.ndim > 2:
        raise ValueError(
            f"{name} must be a scalar, a 1-D vector of variances, a 2-D matrix or a lineax "
            f"operator; got an array of shape {arr.shape}."
        )
    _check_array_values(arr, name)
    return as_noise_operator(arr, size, dtype=dtype)


def _check_covariance_values(op: lx.AbstractLinearOperator, name: str) -> None:
    # Only concrete values can be checked at trace time; traced covariances pass through.
    if lx.is_diagonal(op):
        _check_array_values(lx.diagonal(op), name)
        return
    try:
        mat = op.as_matrix()
    except Exception:  # an operator that cannot be materialised: trust it
        return
    _check_array_values(mat, name)


def _check_array_values(arr: Any, name: str) -> None:
    """Variances (0-D/1-D) must be finite and >= 0; a matrix also symmetric."""
    arr = concrete_value(arr)
    if arr is None:
        return
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got non-finite entries.")
    diag = np.diag(arr) if arr.ndim == 2 else arr
    if np.any(diag < 0):
        raise ValueError(
            f"{name} must have non-negative variances; got {diag}. Pass variances (squared "
            "standard deviations) >= 0, or a symmetric positive semi-definite matrix."
        )
    if arr.ndim == 2:
        # float32 round-off on entries of size `scale` is ~1e-7 * scale; asymmetry beyond
        # 1e-5 relative is a user error (e.g. a transposed factor), as in dense_noise.
        scale = float(np.max(np.abs(arr))) if arr.size else 0.0
        if not np.allclose(arr, arr.T, rtol=0.0, atol=1e-5 * scale):
            raise ValueError(
                f"{name} must be a symmetric covariance matrix; got an asymmetric one. "
                "Pass (C + C.T) / 2 if it is symmetric up to round-off."
            )


def _sqrt_factor(op: lx.AbstractLinearOperator, dtype: Any) -> tuple[bool, Array]:
    """Return ``(is_diagonal, S)`` with ``S S^T = op``: standard deviations for a diagonal
    operator, a dense square root otherwise."""
    if lx.is_diagonal(op):
        return True, jnp.sqrt(lx.diagonal(op)).astype(dtype)
    mat = op.as_matrix()
    # eigh (not Cholesky) so that semi-definite covariances (e.g. rank-deficient process
    # noise) still give a real square root.
    evals, evecs = jnp.linalg.eigh(0.5 * (mat + mat.T))
    return False, (evecs * jnp.sqrt(jnp.clip(evals, 0.0))[None, :]).astype(dtype)


def _sample(key: PRNGKeyArray, factor: tuple[bool, Array], shape: tuple[int, ...]) -> Array:
    is_diag, s = factor
    z = jax.random.normal(key, shape + (s.shape[0],), dtype=s.dtype)
    if is_diag:
        return z * jnp.reshape(s, (1,) * len(shape) + s.shape)
    return z @ s.T


def _propagate(dynamics: Any, x: Array, t0: Any, t1: Any, key: PRNGKeyArray) -> Array:
    # Stochastic dynamics draw their own noise and need a key; everything else is key-free.
    if isinstance(dynamics, AbstractStochasticDynamics):
        return dynamics(x, t0, t1, key=key)
    return dynamics(x, t0, t1)


class StateSpaceModel(AbstractModel):
    """A hidden Markov model for twin experiments, with DAPPER's time conventions.

    The model is

    $$x_0 \\sim \\mathcal N(\\mu_0, P_0),\\qquad
      x_k = \\mathcal M(x_{k-1}; t_{k-1}, t_k) + \\xi_k,\\ \\xi_k \\sim \\mathcal N(0, \\Sigma),
      \\qquad y_k = H(x_k) + \\eta_k,\\ \\eta_k \\sim \\mathcal N(0, R),$$

    with observation times $t_k = t_0 + k\\,\\Delta t_{obs}$ for $k = 1, \\dots, T$: there is
    no observation at $t_0$, and cycling starts with a forecast (DAPPER's ``Chronology``).
    The process noise $\\Sigma$ (if any) is added once per observation window, as in Bach et
    al. (2025); noise at every model step belongs in the dynamics. Scores should average over
    the analysis times after the burn-in ($t_k > t_0 +$ `burn_in`), i.e. over rows
    ``burn_in_cycles:`` of a `TwinExperiment`.

    **Arguments:**

    - `dynamics`: ``dynamics(x, t0, t1) -> x`` acting on ONE state (an `AbstractDynamics` or
      any JAX-traceable callable). ``t0``, ``t1`` are traced scalars inside the scan. A
      `StochasticDynamics` gets a fresh ``key`` per window (its noise adds to `process_noise`).
    - `obs_op`: ``obs_op(x) -> y`` acting on ONE state (an `AbstractObsOperator`, a callable,
      a lineax operator, used as ``H.mv(x)``, or an ``(N_y, N_x)`` matrix, stored as
      ``LinearObs(H)``).
    - `obs_noise`: observation-error covariance $R$: a lineax operator, a scalar ``c``
      (meaning ``c * I``, DAPPER's ``noise=c``), a 1-D vector of variances or a matrix.
    - `dt_obs`: time between observations ($\\Delta t_{obs}$, DAPPER's ``dto``).
    - `x0_mean`: ``(N_x,)`` mean $\\mu_0$ of the initial state.
    - `x0_cov`: covariance $P_0$ of the initial state (same forms as `obs_noise`).
    - `process_noise`: covariance $\\Sigma$ added per observation window, or ``None``.
    - `burn_in`: spin-up duration in model time units (DAPPER's ``BurnIn``).
    - `t0`: initial time.
    - `name`, `reference`: identifier and citation of the setup.
    - `state_coords`: ``(N_x, D)`` coordinates of the state components (or ``None``).
    - `obs_coords`: ``(N_y, D)`` coordinates of the observations (or ``None``).
    - `distance`: ``distance(a, b) -> d`` between two points (rows of the coordinate
      arrays), e.g. ``filterax.primitives.PeriodicDistance(40.0)`` on the Lorenz-96 ring
      (``None``: Euclidean). Localising methods take the geometry from the model.
    - `n_cycles`: length (number of observation times) of the published experiment.
    - `recommended_n_cycles`: a shorter length that still gives stable scores on a laptop;
      the default of `simulate`.
    - `published_rmse`: published analysis RMSEs as ``((method label, rmse.a), ...)``.

    DAPPER equivalent: ``dapper.mods.HiddenMarkovModel(Dyn, Obs, tseq, X0)`` with
    ``HMM.simulate()``.

    **Example:**

    ```python
    ssm = StateSpaceModel(dynamics, obs_op, obs_noise=2.0, dt_obs=0.25,
                          x0_mean=jnp.array([1.509, -1.531, 25.46]), x0_cov=2.0, burn_in=16.0)
    xp = ssm.simulate(jax.random.key(0), 1000)      # xp.truth, xp.observations, xp.times
    ens0 = ssm.initial_ensemble(jax.random.key(1), 10)
    ```
    """

    dynamics: Callable[..., Any]
    obs_op: Any
    obs_noise: lx.AbstractLinearOperator
    x0_mean: Float[Array, " N_x"]
    x0_cov: lx.AbstractLinearOperator
    process_noise: lx.AbstractLinearOperator | None
    dt_obs: float = eqx.field(static=True)
    burn_in: float = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    name: str | None = eqx.field(static=True)
    reference: str | None = eqx.field(static=True)
    n_cycles: int | None = eqx.field(static=True)
    recommended_n_cycles: int | None = eqx.field(static=True)
    published_rmse: tuple[tuple[str, float], ...] = eqx.field(static=True)
    state_coords: Float[Array, "N_x D"] | None
    obs_coords: Float[Array, "N_y D"] | None
    distance: Callable[..., Any] | None = eqx.field(static=True)

    def __init__(
        self,
        dynamics: Callable[..., Any],
        obs_op: Any,
        obs_noise: Any,
        dt_obs: float,
        x0_mean: Float[ArrayLike, "..."],
        x0_cov: Any,
        process_noise: Any = None,
        burn_in: float = 0.0,
        t0: float = 0.0,
        name: str | None = None,
        reference: str | None = None,
        n_cycles: int | None = None,
        recommended_n_cycles: int | None = None,
        published_rmse: Any = (),
        state_coords: Any = None,
        obs_coords: Any = None,
        distance: Callable[..., Any] | None = None,
    ):
        x0_mean = jnp.asarray(x0_mean)
        if x0_mean.ndim != 1:
            raise ValueError(
                f"x0_mean must be a 1-D state vector of shape (N_x,); got shape "
                f"{x0_mean.shape}. Pass the mean of ONE initial state, e.g. jnp.zeros(40)."
            )
        if not jnp.issubdtype(x0_mean.dtype, jnp.inexact):
            x0_mean = x0_mean.astype(jnp.result_type(float))
        dtype = x0_mean.dtype
        n_x = x0_mean.shape[0]

        dt_obs = _as_python_float(dt_obs, "dt_obs")
        burn_in = _as_python_float(burn_in, "burn_in")
        t0 = _as_python_float(t0, "t0")
        if not dt_obs > 0:
            raise ValueError(f"dt_obs must be a positive time step; got {dt_obs}.")
        if not burn_in >= 0:
            raise ValueError(
                f"burn_in must be a non-negative duration in model time units; got {burn_in}."
            )

        if isinstance(obs_op, jax.Array | np.ndarray):
            if obs_op.ndim != 2 or obs_op.shape[1] != n_x:
                raise ValueError(
                    f"obs_op given as a matrix must have shape (N_y, {n_x}); got "
                    f"{obs_op.shape}. Pass a callable obs_op(x) -> y for nonlinear operators."
                )
            obs_op = LinearObs(jnp.asarray(obs_op, dtype=dtype))
        if isinstance(obs_op, lx.AbstractLinearOperator) and obs_op.in_size() != n_x:
            raise ValueError(
                f"obs_op is a lineax operator with input size {obs_op.in_size()}, but the "
                f"state has N_x={n_x} entries. Pass an operator acting on (N_x,) states."
            )
        y_shape = jax.eval_shape(lambda x: apply_obs(obs_op, x), x0_mean).shape
        if len(y_shape) != 1:
            raise ValueError(
                f"obs_op must map one (N_x,) state to one 1-D observation vector (N_y,); it "
                f"returned shape {y_shape}."
            )
        n_y = y_shape[0]
        x_shape = jax.eval_shape(
            lambda x: _propagate(dynamics, x, t0, t0 + dt_obs, jax.random.key(0)), x0_mean
        ).shape
        if x_shape != (n_x,):
            raise ValueError(
                f"dynamics(x, t0, t1) must return a state of shape ({n_x},) like x0_mean; it "
                f"returned shape {x_shape}. Dynamics act on ONE state; vmap for ensembles."
            )

        if isinstance(obs_noise, lx.AbstractLinearOperator) and obs_noise.in_size() != n_y:
            raise ValueError(
                f"obs_op returns N_y={n_y} values but obs_noise is "
                f"{obs_noise.out_size()} x {obs_noise.in_size()}. Pass an ({n_y}, {n_y}) "
                f"observation-error covariance (or a scalar c meaning c*I)."
            )
        noise_arr_shape = (
            None if isinstance(obs_noise, lx.AbstractLinearOperator) else jnp.shape(obs_noise)
        )
        if noise_arr_shape and noise_arr_shape[0] != n_y:
            raise ValueError(
                f"obs_op returns N_y={n_y} values but obs_noise has shape {noise_arr_shape}. "
                f"Pass {n_y} variances, an ({n_y}, {n_y}) matrix or a scalar c meaning c*I."
            )

        if n_cycles is not None and int(n_cycles) < 1:
            raise ValueError(f"n_cycles must be >= 1; got {n_cycles}.")
        if recommended_n_cycles is not None and int(recommended_n_cycles) < 1:
            raise ValueError(f"recommended_n_cycles must be >= 1; got {recommended_n_cycles}.")

        self.dynamics = dynamics
        self.obs_op = obs_op
        self.obs_noise = _as_covariance(obs_noise, n_y, "obs_noise", dtype)
        self.x0_mean = x0_mean
        self.x0_cov = _as_covariance(x0_cov, n_x, "x0_cov", dtype)
        self.process_noise = (
            None
            if process_noise is None
            else _as_covariance(process_noise, n_x, "process_noise", dtype)
        )
        self.dt_obs = dt_obs
        self.burn_in = burn_in
        self.t0 = t0
        self.name = name
        self.reference = reference
        self.n_cycles = None if n_cycles is None else int(n_cycles)
        self.recommended_n_cycles = (
            None if recommended_n_cycles is None else int(recommended_n_cycles)
        )
        items = published_rmse.items() if isinstance(published_rmse, dict) else published_rmse
        self.published_rmse = tuple((str(k), float(v)) for k, v in items)
        self.state_coords = _coordinates(state_coords, n_x, "state_coords", "state components")
        self.obs_coords = _coordinates(obs_coords, n_y, "obs_coords", "observations")
        if distance is not None and not callable(distance):
            raise TypeError(
                "distance must be a function distance(a, b) -> d of two points (e.g. "
                f"filterax.primitives.PeriodicDistance(40.0)); got {type(distance).__name__}."
            )
        self.distance = distance

    @property
    def n_state(self) -> int:
        """State dimension ``N_x``."""
        return self.x0_mean.shape[0]

    @property
    def n_obs(self) -> int:
        """Observation dimension ``N_y``."""
        return self.obs_noise.in_size()

    @property
    def burn_in_cycles(self) -> int:
        """Number of observation times inside the burn-in (``t_k <= t0 + burn_in``).

        Scores average over rows ``burn_in_cycles:`` of a `TwinExperiment`, i.e. over the
        analysis times strictly after the burn-in, as DAPPER's ``maskObs_BI`` does.
        """
        # The relative slack keeps e.g. 0.3 / 0.1 = 2.9999999999999996 from dropping a cycle.
        return math.floor(self.burn_in / self.dt_obs * (1.0 + 1e-12) + 1e-9)

    def observe(self, x: Float[Array, " N_x"]) -> Float[Array, " N_y"]:
        """Noise-free observation ``H(x)`` of ONE state."""
        return apply_obs(self.obs_op, x)

    def observation_times(self, n_cycles: int) -> Float[Array, " T"]:
        """The observation times ``t0 + k * dt_obs`` for ``k = 1..n_cycles``."""
        n_cycles = self._check_n_cycles(n_cycles)
        k = jnp.arange(1, n_cycles + 1, dtype=self.x0_mean.dtype)
        return self.t0 + k * jnp.asarray(self.dt_obs, dtype=self.x0_mean.dtype)

    def simulate(self, key: PRNGKeyArray, n_cycles: int | None = None) -> TwinExperiment:
        """Draw a truth trajectory and its observations (one `lax.scan` over cycles).

        The truth starts from $x_0 \\sim \\mathcal N(\\mu_0, P_0)$; window ``k`` integrates
        the dynamics from $t_{k-1}$ to $t_k$, adds process noise (if any), then observes.
        The same key gives bit-identical output; ``key`` is split into an initial-condition
        key and a cycle key, and window ``k`` uses ``jax.random.fold_in(cycle_key, k)``.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `n_cycles`: number of observation times ``T`` (a Python int >= 1). Defaults to
          `recommended_n_cycles`, then `n_cycles` of the model.

        **Returns:**

        A `TwinExperiment` with ``truth (T, N_x)``, ``observations (T, N_y)``, ``times (T,)``
        and ``initial_truth (N_x,)``.
        """
        if n_cycles is None:
            n_cycles = self.recommended_n_cycles or self.n_cycles
            if n_cycles is None:
                raise ValueError(
                    "simulate needs n_cycles (the number of observation times); this model "
                    "has no default. Call ssm.simulate(key, n_cycles=1000)."
                )
        n_cycles = self._check_n_cycles(n_cycles)
        return _simulate(self, key, n_cycles)

    def initial_ensemble(self, key: PRNGKeyArray, n_ensemble: int) -> Float[Array, "N_e N_x"]:
        """Draw the filter's initial ensemble from $\\mathcal N(\\mu_0, P_0)$.

        As in DAPPER, the ensemble is drawn independently of the truth's initial condition
        (both come from the same prior), so the initial error is a draw from the prior, not
        zero. Use a key different from the one passed to `simulate`.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `n_ensemble`: number of members ``N_e`` (a Python int >= 2).

        **Returns:**

        An ``(N_e, N_x)`` ensemble.
        """
        if isinstance(n_ensemble, bool) or not isinstance(n_ensemble, int | np.integer):
            raise TypeError(f"n_ensemble must be a Python int >= 2; got {n_ensemble!r}.")
        if n_ensemble < 2:
            raise ValueError(
                f"n_ensemble must be a Python int >= 2 (ensemble statistics divide by "
                f"N_e - 1); got {n_ensemble!r}."
            )
        factor = _sqrt_factor(self.x0_cov, self.x0_mean.dtype)
        return self.x0_mean[None, :] + _sample(key, factor, (int(n_ensemble),))

    def climatology_rmse(self, truth: Float[Array, "T N_x"]) -> Float[Array, ""]:
        """RMSE of the climatological mean as an estimator (DAPPER's ``Climatology``).

        $\\overline{\\mathrm{rmse}} = \\frac{1}{|K|}\\sum_{k \\in K}
        \\sqrt{\\tfrac{1}{N_x}\\lVert \\bar x - x_k \\rVert^2}$ over the analysis times $K$
        after the burn-in, with $\\bar x$ the time mean of the truth over $K$. Useful as the
        baseline and to flag filter divergence (e.g. rmse.a > 0.5 x climatology).
        """
        truth = jnp.asarray(truth)
        if truth.ndim != 2 or truth.shape[1] != self.n_state:
            raise ValueError(
                f"truth must have shape (T, {self.n_state}); got {truth.shape}. Pass "
                "TwinExperiment.truth."
            )
        start = self.burn_in_cycles
        if truth.shape[0] <= start:
            raise ValueError(
                f"truth has {truth.shape[0]} rows, all inside the burn-in ({start} cycles). "
                f"Simulate more than {start} cycles."
            )
        after = truth[start:]
        mean = jnp.mean(after, axis=0)
        return jnp.mean(jnp.sqrt(jnp.mean((after - mean[None, :]) ** 2, axis=-1)))

    def climatology(
        self, key: PRNGKeyArray, n_cycles: int | None = None
    ) -> tuple[Float[Array, " N_x"], Float[Array, "N_x N_x"]]:
        r"""Mean and covariance of the invariant measure, from one long free run.

        The truth of a twin experiment (`simulate`, with the model's process noise) is drawn
        for `n_cycles` observation times; the rows inside the burn-in are dropped and the
        remaining states ``x_k`` (``k \in K``) give

        $$\mu_c = \frac1{|K|}\sum_{k\in K} x_k,\qquad
        B_c = \frac1{|K| - 1}\sum_{k\in K} (x_k - \mu_c)(x_k - \mu_c)^\top .$$

        These are the climatological prior of the reference methods (``Climatology``,
        ``OptInterp``, ``Var3D``, the static part of EnVar). DAPPER estimates them from the
        truth of the experiment being scored, which flatters a short experiment; pass a key
        independent of the experiment's (the default length is ten published experiments).

        **Arguments:**

        - `key`: a JAX PRNG key (use one not used for the scored experiment).
        - `n_cycles`: observation times simulated, burn-in included (a Python int); default
          ``10 * (n_cycles or recommended_n_cycles)`` of the model, at least 10 000.

        **Returns:** ``(mean (N_x,), cov (N_x, N_x))`` in the model's dtype.
        """
        if n_cycles is None:
            n_cycles = max(10 * (self.n_cycles or self.recommended_n_cycles or 0), 10_000)
            n_cycles += self.burn_in_cycles
        n_cycles = self._check_n_cycles(n_cycles)
        start = self.burn_in_cycles
        if n_cycles - start < 2:
            raise ValueError(
                f"climatology needs at least 2 states after the burn-in ({start} cycles); "
                f"got n_cycles={n_cycles}. Pass a longer run, e.g. n_cycles={start + 10_000}."
            )
        states = _simulate(self, key, n_cycles).truth[start:]
        mean = jnp.mean(states, axis=0)
        anomalies = states - mean[None, :]
        cov = anomalies.T @ anomalies / (states.shape[0] - 1)
        return mean, 0.5 * (cov + cov.T)

    def _check_n_cycles(self, n_cycles: Any) -> int:
        if isinstance(n_cycles, bool) or not isinstance(n_cycles, int | np.integer):
            raise TypeError(
                f"n_cycles must be a Python int (it fixes the scan length); got "
                f"{n_cycles!r}. Mark it static under jit: jax.jit(f, static_argnums=...)."
            )
        if n_cycles < 1:
            raise ValueError(
                f"n_cycles must be >= 1 (observations start at t0 + dt_obs); got {n_cycles}."
            )
        return int(n_cycles)


# Compiled once per model structure and n_cycles, so repeated eager calls (new keys, new
# seeds) reuse the executable instead of re-tracing the scan.
@eqx.filter_jit
def _simulate(model: StateSpaceModel, key: PRNGKeyArray, n_cycles: int) -> TwinExperiment:
    dtype = model.x0_mean.dtype
    key_init, key_cycles = jax.random.split(key)
    initial_truth = model.x0_mean + _sample(key_init, _sqrt_factor(model.x0_cov, dtype), ())
    obs_factor = _sqrt_factor(model.obs_noise, dtype)
    proc_factor = None if model.process_noise is None else _sqrt_factor(model.process_noise, dtype)
    dt_obs = jnp.asarray(model.dt_obs, dtype=dtype)

    def cycle(x, k):
        t_prev = model.t0 + k.astype(dtype) * dt_obs
        t_next = model.t0 + (k + 1).astype(dtype) * dt_obs
        key_proc, key_obs, key_dyn = jax.random.split(jax.random.fold_in(key_cycles, k), 3)
        x = _propagate(model.dynamics, x, t_prev, t_next, key_dyn)
        if proc_factor is not None:
            x = x + _sample(key_proc, proc_factor, ())
        y = apply_obs(model.obs_op, x) + _sample(key_obs, obs_factor, ())
        return x, (x, y, t_next)

    _, (truth, observations, times) = jax.lax.scan(cycle, initial_truth, jnp.arange(n_cycles))
    return TwinExperiment(
        truth=truth, observations=observations, times=times, initial_truth=initial_truth
    )


def _coordinates(value: Any, size: int, name: str, what: str) -> Array | None:
    if value is None:
        return None
    arr = jnp.asarray(value)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != size:
        raise ValueError(
            f"{name} must have shape ({size}, D) (or ({size},) for 1-D coordinates), one row "
            f"per {what}; got shape {jnp.shape(value)}."
        )
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(jnp.result_type(float))
    return arr


def _as_python_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except Exception as exc:  # a tracer or a non-scalar
        raise TypeError(
            f"{name} must be a concrete Python number (it fixes the time grid and the burn-in "
            f"length); got {value!r}. Build the StateSpaceModel outside jit."
        ) from exc
