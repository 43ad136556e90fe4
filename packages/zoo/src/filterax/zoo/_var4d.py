r"""Strong-constraint incremental 4D-Var, cycled as DAPPER's ``Var4D`` (and the shared engine
of `Var3D`, which is the window of length zero).

Window ``k`` (the cycle ending at observation ``k``) covers the ``L`` (= `lag`) observation
intervals ``t_{k-L} \to t_k``; the control is the state at its start, ``x_0 = x(t_{k-L})``
(``t0`` while ``k - L < 0``), the background ``x_b`` is the previous window's analysis at its
start propagated one observation interval by the model, and only the newest observation
``y_k`` is assimilated (the older ones are in ``x_b`` already: DAPPER's shift of one cycle,
as in the iEnKS). With ``B = x_B\,U U^\top`` static:

$$J(v) = \tfrac12\lVert v\rVert^2 + \tfrac12\lVert y_k - H\big(\mathcal M_{t_{k-L}\to t_k}
(x_b + \sqrt{x_B}\,U v)\big)\rVert^2_{R^{-1}},$$

minimised by `variational_analysis` (Gauss–Newton, tangent-linear and adjoint models by
`jax.linearize` / `jax.vjp` of the model over the window, lineax CG inside).
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Real

import filterax.primitives as fxp

from ._variational import (
    _check_jacobian,
    _check_n_iter,
    background_sqrt,
    variational_analysis,
)

__all__ = ["Var4D", "VarDiagnostics", "VarState"]

_LOG_2PI = math.log(2.0 * math.pi)


class VarState(eqx.Module):
    """The state of `Var3D` / `Var4D` between cycles.

    Before cycle ``k`` (the window ending at observation ``k``, starting at ``k - L``):

    **Fields:**

    - `mean`: ``(N_x,)`` the previous window's analysis at its start (observation time
      ``k - L - 1``, or ``t0`` before the first window); the cycle first propagates it one
      observation interval, to this window's start, as the background.
    - `times`: ``(L + 1,)`` the observation times ``t_{k-L-1}, ..., t_{k-1}`` bounding the
      window's intervals (entries before ``t0`` unused).
    - `cycle`: the index ``k`` of the next cycle.
    """

    mean: Float[Array, " N_x"]
    times: Real[Array, " n_times"]
    cycle: Int[Array, ""]


class VarDiagnostics(eqx.Module):
    """What `Var3D` / `Var4D` cycle ``k`` reports besides the `CycleInfo` rows.

    **Fields:**

    - `smoothed_mean`: ``(N_x,)`` the analysis at the window start (cycle ``k - L``,
      conditioned on the observations up to ``k``; for `Var3D` the analysis itself).
    - `iterations`: Gauss–Newton iterations done.
    - `cg_steps`: conjugate-gradient steps, summed over the iterations.
    - `converged`: every CG solve met its tolerance.
    """

    smoothed_mean: Float[Array, " N_x"]
    iterations: Int[Array, ""]
    cg_steps: Int[Array, ""]
    converged: Bool[Array, ""]


def _check_xb(xB: Any, where: str) -> Any:
    return fxp.check_parameter(
        xB,
        f"{where}(xB=...)",
        low=0.0,
        low_open=True,
        allow_inf=False,
        hint="xB scales the background covariance B (DAPPER's xB), e.g. 0.1.",
    )


def _check_common(method: Any, where: str) -> None:
    _check_n_iter(method.n_iter, method.wtol)
    _check_jacobian(method.jacobian)
    if not isinstance(method.spread, bool):
        raise ValueError(f"{where}: spread must be a Python bool; got {method.spread!r}.")
    _check_xb(method.xB, where)


def _check_model(model: fxp.AbstractModel, where: str) -> None:
    if isinstance(model.dynamics, fxp.AbstractStochasticDynamics):
        raise TypeError(
            f"{where}: the model's dynamics draw their own noise (an AbstractStochasticDynamics); "
            "a variational method propagates one state deterministically. Pass the "
            "deterministic part (e.g. StochasticDynamics.dynamics): B stands for the error."
        )


def _dynamics_fn(dynamics: Any) -> Any:
    if isinstance(dynamics, lx.AbstractLinearOperator):
        return lambda x, t0, t1: dynamics.mv(x)
    if isinstance(dynamics, np.ndarray | jax.Array):
        matrix = jnp.asarray(dynamics)
        return lambda x, t0, t1: fxp.matmul(matrix.astype(x.dtype), x)
    return dynamics


def _init(method: Any, initial: Any, model: fxp.AbstractModel, lag: int, where: str) -> VarState:
    _check_model(model, where)
    if not isinstance(initial, np.ndarray | jax.Array | list | tuple) and hasattr(initial, "mean"):
        initial = initial.mean  # a Gaussian state: its mean is the background
    mean = jnp.asarray(initial)
    if mean.ndim != 1:
        raise ValueError(
            f"{where}: the initial condition is the background mean at t0, a state vector "
            f"(N_x,) (e.g. the model's x0_mean); got shape {mean.shape}. A variational method "
            "carries one state, not an ensemble."
        )
    if not jnp.issubdtype(mean.dtype, jnp.floating):
        mean = mean.astype(jnp.result_type(float))
    n_x = method.B_sqrt.out_size()
    if mean.shape[0] != n_x:
        raise ValueError(
            f"{where}: the initial mean has N_x = {mean.shape[0]} but B is {n_x} x {n_x}."
        )
    times = jnp.zeros((lag + 1,), jnp.result_type(float))
    return VarState(mean, times, jnp.asarray(0, jnp.int32))


def _column_whiten(whiten: Any, columns: Array) -> Array:
    # W applied to every column of an (N_y, m) matrix (the whitening acts on rows of (T, N_y)).
    return jax.vmap(lambda c: whiten(c[None])[0], in_axes=1, out_axes=1)(columns)


def _posterior_chol(x_cols: Array, h_jac: Array, whiten: Any, dtype: Any) -> Array:
    """Cholesky factor of the control-space Hessian ``I + (W H X)^T (W H X)``."""
    a = _column_whiten(whiten, fxp.matmul(h_jac, x_cols))
    n_v = x_cols.shape[1]
    return jnp.linalg.cholesky(jnp.eye(n_v, dtype=dtype) + fxp.matmul(a.T, a))


def _rms(variance: Array) -> Array:
    return jnp.sqrt(jnp.maximum(jnp.mean(variance), 0.0))


def _step(
    method: Any,
    lag: int,
    state: VarState,
    model: fxp.AbstractModel,
    t_prev: Real[Array, ""],
    t: Real[Array, ""],
    obs: Float[Array, " N_y"],
    where: str,
) -> tuple[VarState, fxp.CycleInfo]:
    dtype = state.mean.dtype
    obs = jnp.asarray(obs).astype(dtype)
    if obs.ndim != 1:
        raise ValueError(f"{where}: obs must be one observation vector (N_y,); got {obs.shape}.")
    k = state.cycle
    xb_scale = _check_xb(method.xB, where)
    u = method.B_sqrt * jnp.sqrt(jnp.asarray(xb_scale, dtype))
    dyn = _dynamics_fn(model.dynamics)
    times = jnp.concatenate(
        [state.times[:-1].astype(t.dtype), jnp.stack([t_prev, t]).astype(t.dtype)]
    )

    def flow(x, a, b):
        return jnp.asarray(dyn(x, a, b)).astype(dtype)

    def propagate(x, cycle, a, b):
        if lag == 0:
            return flow(x, a, b)
        # Cycles before the first observation do not exist; their (unused) interval is this
        # cycle's, so a vmapped (both-branches) cond only integrates over a real interval.
        a = jnp.where(cycle >= 0, a, t_prev)
        b = jnp.where(cycle >= 0, b, t)
        return lax.cond(cycle >= 0, lambda z: flow(z, a, b), lambda z: z, x)

    def window_forecast(x):
        if lag == 0:
            return x
        cycles = k - lag + 1 + jnp.arange(lag, dtype=k.dtype)
        out, _ = lax.scan(
            lambda z, xs: (propagate(z, *xs), None),
            x,
            (cycles, times[1 : lag + 1], times[2 : lag + 2]),
        )
        return out

    def observe(x):
        return jnp.asarray(fxp.apply_obs(model.obs_op, x)).astype(dtype)

    def forward(x0):
        return observe(window_forecast(x0))[None]

    background = propagate(state.mean, k - lag, times[0], times[1])
    result = variational_analysis(
        forward,
        background,
        u,
        obs[None],
        model.obs_noise,
        n_iter=method.n_iter,
        wtol=method.wtol,
        jacobian=method.jacobian,
        rtol=method.rtol,
        max_steps=method.max_steps,
    )
    x0_a = result.analysis
    x_f = window_forecast(background)
    x_a = window_forecast(x0_a)
    predicted = observe(x_f)
    mask = fxp.observation_mask(obs)
    innovation = jnp.where(mask, obs - predicted, 0.0)
    n_y = obs.shape[0]
    noise = fxp.mask_noise(fxp.as_noise_operator(model.obs_noise, n_y, dtype=dtype), mask)
    wh = fxp.noise_whitening(noise, dtype)

    def whiten(rows):
        return jnp.where(mask[None], jax.vmap(wh.vector)(jnp.where(mask[None], rows, 0.0)), 0.0)

    n_obs = result.n_observed.astype(dtype)
    quadratic = n_obs * _LOG_2PI + wh.logdet() + result.innovation_statistic
    if method.spread:
        # Dense Gaussian summaries in control space, O(N_v^3): DAPPER's X X^T (forecast) and
        # X Cow1 X^T (analysis) with X = M U the propagated background square root.
        u_dense = jax.vmap(u.mv, in_axes=1, out_axes=1)(jnp.eye(u.in_size(), dtype=dtype))

        def propagated(x0):
            if lag == 0:
                return u_dense
            return fxp.matmul(jax.jacrev(window_forecast)(x0), u_dense)

        x_b_cols = propagated(background)
        chol_b = _posterior_chol(x_b_cols, jax.jacrev(observe)(x_f), whiten, dtype)
        logdet_b = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol_b)))
        loglik = -0.5 * (quadratic + logdet_b)
        x_a_cols = propagated(x0_a)
        chol_a = _posterior_chol(x_a_cols, jax.jacrev(observe)(x_a), whiten, dtype)
        root = jsl.solve_triangular(chol_a, x_a_cols.T, lower=True)  # L^{-1} X^T
        forecast_spread = _rms(jnp.sum(x_b_cols**2, axis=1))
        analysis_spread = _rms(jnp.sum(root**2, axis=0))
    else:
        # Without the dense Hessian the log-determinant term log|I + (WHX)^T(WHX)| >= 0 is
        # left out: an upper bound of the Gaussian log-likelihood (documented).
        loglik = -0.5 * quadratic
        forecast_spread = jnp.asarray(jnp.nan, dtype)
        analysis_spread = jnp.asarray(jnp.nan, dtype)
    loglik = jnp.asarray(loglik, dtype)
    finite = fxp.is_finite(background, x_f, x0_a, x_a, loglik)
    info = fxp.CycleInfo(
        forecast_mean=x_f,
        forecast_spread=forecast_spread,
        analysis_mean=x_a,
        analysis_spread=analysis_spread,
        log_likelihood=loglik,
        innovation=innovation,
        finite=finite,
        forecast=None,
        analysis=None,
        diagnostics=VarDiagnostics(x0_a, result.iterations, result.cg_steps, result.converged),
    )
    new_times = times[1:].astype(state.times.dtype)
    return VarState(x0_a, new_times, k + 1), info


class Var4D(fxp.AbstractCycledMethod):
    r"""Strong-constraint incremental 4D-Var, cycled with a static background (DAPPER's Var4D).

    Window ``k`` spans the `lag` observation intervals ending at observation ``k``; the
    control is the state at the window start. With the static ``B = x_B\,U U^\top`` and the
    background ``x_b`` (the previous window's analysis at its start, propagated one interval):

    $$J(v) = \tfrac12\lVert v\rVert^2 + \tfrac12\big\lVert y_k - H\big(\mathcal M_{t_{k-L}\to
    t_k}(x_b + \sqrt{x_B}\,U v)\big)\big\rVert^2_{R^{-1}},$$

    $$\big(I + \tilde U^\top G_i^\top R^{-1} G_i \tilde U\big)\,\delta v_i = \tilde U^\top
    G_i^\top R^{-1} d_i - v_i,\qquad \tilde U = \sqrt{x_B}\,U,\quad G_i = H'\mathcal M'
    \text{ at } x_b + \tilde U v_i,$$

    `n_iter` Gauss–Newton iterations (`variational_analysis`: `jax.linearize` / `jax.vjp`
    of the model over the window, lineax CG inside; the zoo's stepped models over traced
    intervals only have reverse mode, so by default the tangent-linear map is assembled row by row
    from `jax.vjp`). Only the newest observation is assimilated in each window (the older
    ones are in ``x_b``: DAPPER's shift of one cycle, as in the iEnKS).

    Each cycle reports (`filterax.primitives.CycleInfo`) the forecast ``\mathcal M(x_b)`` and
    the analysis ``\mathcal M(x_b + \tilde U v)`` at ``t_k`` (the analysis trajectory; DAPPER
    reports the linearised ``x^f + X\,\delta w`` of the last iteration, equal for a linear
    model or a converged minimisation), the innovation ``y_k - H(x^f)``, and with
    ``spread=True`` the spreads of DAPPER's Gaussians ``X X^\top`` (forecast) and
    ``X (I + \tilde Y^\top\tilde Y)^{-1} X^\top`` (analysis, ``X = \mathcal M'\tilde U``, at the
    analysis) and the Gaussian log-likelihood
    ``\log\mathcal N(y_k; H(x^f), \tilde Y \tilde Y^\top + R)`` at the background: dense
    control-space algebra, ``O(N_x^3)`` per cycle. With ``spread=False`` nothing dense is
    formed, the spreads are NaN (not computed) and the log-likelihood leaves out
    ``-\tfrac12\log|I + \tilde Y^\top\tilde Y|`` (an upper bound). `VarDiagnostics` has the
    smoothed state at the window start and the iteration counts.

    **Arguments:**

    - `B`: the background covariance: ``(N_x, N_x)`` matrix, ``(N_x,)`` variances or a lineax
      operator (e.g. the climatology, `StateSpaceModel.climatology`); or
    - `B_sqrt`: its square root ``U`` (``B = U U^\top``), a matrix or a lineax operator
      (matrix-free, rank-deficient allowed) — give one of the two (`background_sqrt`).
    - `xB`: the scaling ``x_B > 0`` of ``B`` (DAPPER's ``xB``; dynamic: vmap/grad-able).
    - `lag`: window length ``L \ge 1`` in observation cycles (``Lag``; static).
    - `n_iter`: Gauss–Newton iterations per window (``nIter``; static).
    - `wtol`: stop once ``\lVert\delta v\rVert^2 < wtol\,N_v`` (``wtol``; static).
    - `spread`: compute the Gaussian spreads and log-likelihood densely (static).
    - `jacobian`: ``"rev"`` (default: the Jacobian rows from `jax.vjp`, as the zoo's
      stepped models need inside `filterax.filters.run`) or ``"fwd"`` (`jax.linearize`,
      matrix-free: for models with forward-mode autodiff, e.g. closed-form flows)
      (`variational_analysis`).
    - `rtol`, `max_steps`: the CG stopping rule (`variational_increment`).

    **Initial condition** (the ``initial`` of `filterax.filters.run`): the background mean at
    ``t0``, ``(N_x,)``.

    **Reference:** F.-X. Le Dimet & O. Talagrand (1986), "Variational algorithms for analysis
    and assimilation of meteorological observations", Tellus A 38, 97–110; Courtier, Thépaut
    & Hollingsworth (1994), QJRMS 120 (incremental form); M. Bocquet & P. Sakov (2013),
    "Joint state and parameter estimation with an iterative ensemble Kalman smoother", NPG
    20, 803–818 (the cycled 4D-Var of the iEnKS papers). DAPPER equivalent:
    ``dapper.da_methods.variational.Var4D(B, xB, Lag, nIter, wtol)``.

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    from filterax.zoo import Var4D, presets

    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(0), 500)
    _, B = ssm.climatology(jax.random.key(1))
    out = ff.run(Var4D(B, xB=0.1, lag=2, n_iter=3), ssm, ssm.x0_mean, xp.observations,
                 xp.times, key=jax.random.key(2))
    out.analysis_mean  # (500, 3)
    ```
    """

    B_sqrt: lx.AbstractLinearOperator
    xB: Any
    lag: int = eqx.field(static=True)
    n_iter: int = eqx.field(static=True)
    wtol: float = eqx.field(static=True)
    spread: bool = eqx.field(static=True)
    jacobian: str = eqx.field(static=True)
    rtol: float | None = eqx.field(static=True)
    max_steps: int | None = eqx.field(static=True)

    def __init__(
        self,
        B: Any = None,
        xB: Any = 1.0,
        *,
        B_sqrt: Any = None,
        lag: int = 1,
        n_iter: int = 10,
        wtol: float = 0.0,
        spread: bool = True,
        jacobian: str = "rev",
        rtol: float | None = None,
        max_steps: int | None = None,
    ):
        self.B_sqrt = background_sqrt(B, B_sqrt=B_sqrt, where="Var4D")
        self.xB = xB
        self.lag = lag
        self.n_iter = n_iter
        self.wtol = wtol
        self.spread = spread
        self.jacobian = jacobian
        self.rtol = rtol
        self.max_steps = max_steps

    def __check_init__(self) -> None:
        if isinstance(self.lag, bool) or not isinstance(self.lag, int | np.integer) or self.lag < 1:
            raise ValueError(
                f"Var4D: lag must be a Python int >= 1 (the window length in observation "
                f"cycles; lag 0 is 3D-Var: use Var3D); got {self.lag!r}."
            )
        _check_common(self, "Var4D")

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> VarState:
        """The background mean at ``t0`` as the first window's reference state."""
        del key
        return _init(self, initial, model, self.lag, "Var4D")

    def step(
        self,
        key: PRNGKeyArray,
        state: VarState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[VarState, fxp.CycleInfo]:
        """The window ending at observation ``k`` (see the class docstring)."""
        del key
        return _step(self, self.lag, state, model, t_prev, t, obs, "Var4D")
