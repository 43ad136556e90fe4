"""Parametric (Gaussian, non-ensemble) filters: Kalman, square-root Kalman and extended Kalman.

These carry a mean and a covariance (or its Cholesky factor) instead of an ensemble, so on a
linear-Gaussian problem they are the exact filtering distribution: the ground truth every
ensemble filter is tested against. The kernels are
``init`` / ``predict`` / ``update``; `GaussianFilter` makes a cycled method of them
(`filterax.primitives.AbstractCycledMethod`), run by the one driver `filterax.filters.run`
like every other cycled method (model first, one argument order for all):

```python
kf = KalmanFilter()
state = kf.init(mean0, cov0)
state = kf.predict(state, dynamics, process_noise, t0, t1)
state, loglik = kf.update(state, obs, obs_op, obs_noise)
out = run(kf, model, GaussianState(mean0, cov0), observations, obs_times, key=key)
# the legacy convenience form (the same numbers, repackaged as a KalmanResult):
result = kf.filter(mean0, cov0, observations, obs_times, dynamics, obs_op, obs_noise)
```

Operators may be given as matrices, lineax operators, filterax observation operators with a
``matrix(n_state)`` method (`LinearObs`, `IndexObs`, `IdentityObs`) or plain callables
``dynamics(x, t0, t1)`` / ``obs_op(x)``; callables are linearised at the current mean with
`jax.jacrev` (reverse mode, because the zoo's stepped models only support it for traced
intervals), which is exact for affine maps. NaN entries of an observation vector are
skipped exactly (zero rows of ``H``, identity rows/columns of ``R``), without changing shapes.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from jaxtyping import (
    Array,
    ArrayLike,
    Float,
    Int,
    PRNGKeyArray,
    PyTree,
    Real,
    Scalar,
    ScalarLike,
)

import filterax.primitives as fxp
from filterax.primitives import (
    AbstractSequentialFilter,
    Analysis,
    as_noise_operator,
    mask_noise,
    noise_sqrt,
    rmse,
)

from ._common import require_no_context
from ._run import (
    STATUS_DIVERGED,
    STATUS_INVALID_NOISE,
    STATUS_INVALID_TIMES,
    STATUS_NONFINITE,
    STATUS_OK,
    check_model_noise,
    check_times,
    run_cycles,
)

__all__ = [
    "AbstractKalmanFilter",
    "ExtendedKF",
    "GaussianDiagnostics",
    "GaussianFilter",
    "GaussianState",
    "KalmanFilter",
    "KalmanResult",
    "SquareRootKF",
    "SqrtGaussianState",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_LOG_2PI = math.log(2.0 * math.pi)


def _mm(a: Array, b: Array) -> Array:
    # HIGHEST so float32 on GPU does not silently fall back to TF32 in the covariance algebra.
    return jnp.matmul(a, b, precision=_HIGHEST)


def _sym(p: Array) -> Array:
    return 0.5 * (p + p.T)


def _float_dtype(*values: Any) -> Any:
    dtype = jnp.result_type(*values)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _check_mean(mean: Any) -> Array:
    mean = jnp.asarray(mean)
    if mean.ndim != 1 or mean.shape[0] < 1:
        raise ValueError(
            f"the mean must be a 1-D state vector of shape (N_x,); got shape {mean.shape}."
        )
    return mean.astype(_float_dtype(mean))


def _noise_operator(noise: Any, n: int, dtype: Any, name: str) -> lx.AbstractLinearOperator:
    try:
        return as_noise_operator(noise, n, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from None


def _linear_dynamics_matrix(dynamics: Any, n: int, dtype: Any) -> Array | None:
    """The ``(N_x, N_x)`` matrix of linear dynamics (a matrix or a lineax operator), checked
    square; ``None`` for a callable."""
    if not isinstance(dynamics, lx.AbstractLinearOperator | jax.Array | np.ndarray):
        return None
    matrix = dynamics.as_matrix() if isinstance(dynamics, lx.AbstractLinearOperator) else dynamics
    matrix = jnp.asarray(matrix).astype(dtype)
    if matrix.shape != (n, n):
        raise ValueError(
            f"a dynamics matrix must be square (N_x, N_x) = ({n}, {n}); got shape {matrix.shape}."
        )
    return matrix


def _linearize_dynamics(
    dynamics: Any, mean: Array, t0: Any, t1: Any, jacobian: str
) -> tuple[Array, Array]:
    """``(dynamics(mean), M)`` with ``M`` the (exact, for affine maps) Jacobian at the mean."""
    n, dtype = mean.shape[0], mean.dtype
    matrix = _linear_dynamics_matrix(dynamics, n, dtype)
    if matrix is not None:
        return _mm(matrix, mean), matrix
    if not callable(dynamics):
        raise TypeError(
            "dynamics must be an (N_x, N_x) matrix, a lineax operator or a callable "
            f"dynamics(x, t0, t1) -> x; got {type(dynamics).__name__}."
        )
    if isinstance(dynamics, fxp.AbstractStochasticDynamics):
        raise TypeError(
            "this dynamics draws its own noise (an AbstractStochasticDynamics), which a "
            "parametric filter cannot propagate. Pass the deterministic part (e.g. "
            "StochasticDynamics.dynamics) and give its covariance as process_noise."
        )

    def flow(x):
        return jnp.asarray(dynamics(x, t0, t1)).astype(dtype)

    if jacobian == "fwd":
        return flow(mean), jax.jacfwd(flow)(mean)
    mean_f, pullback = jax.vjp(flow, mean)
    if mean_f.shape != (n,):
        raise ValueError(
            f"dynamics(x, t0, t1) must return a state of shape ({n},); got {mean_f.shape}."
        )
    # Pulling back the unit vectors gives the rows of the Jacobian.
    (rows,) = jax.vmap(pullback)(jnp.eye(n, dtype=dtype))
    return mean_f, rows


def _linearize_obs(obs_op: Any, mean: Array, jacobian: str) -> tuple[Array, Array]:
    """``(obs_op(mean), H)``: the predicted observation and the (exact, if linear) Jacobian."""
    n, dtype = mean.shape[0], mean.dtype
    if isinstance(obs_op, lx.AbstractLinearOperator) or isinstance(obs_op, jax.Array | np.ndarray):
        matrix = obs_op.as_matrix() if isinstance(obs_op, lx.AbstractLinearOperator) else obs_op
        matrix = jnp.asarray(matrix).astype(dtype)
        if matrix.ndim != 2 or matrix.shape[1] != n:
            raise ValueError(
                f"an observation matrix must have shape (N_y, N_x) with N_x={n}; got shape "
                f"{matrix.shape}."
            )
        return _mm(matrix, mean), matrix
    matrix_method = getattr(obs_op, "matrix", None)
    if callable(matrix_method):
        # LinearObs / IndexObs / IdentityObs expose their exact matrix.
        matrix = jnp.asarray(matrix_method(n, dtype)).astype(dtype)
        return _mm(matrix, mean), matrix
    if not callable(obs_op):
        raise TypeError(
            "obs_op must be an (N_y, N_x) matrix, a lineax operator or a callable obs_op(x) -> y; "
            f"got {type(obs_op).__name__}."
        )

    def observe(x):
        return jnp.asarray(obs_op(x)).astype(dtype)

    predicted = observe(mean)
    if predicted.ndim != 1:
        raise ValueError(
            f"obs_op(x) must return a 1-D observation vector (N_y,); got shape {predicted.shape}."
        )
    if jacobian == "fwd":
        return predicted, jax.jacfwd(observe)(mean)
    return predicted, jax.jacrev(observe)(mean)


def _masked_observation(
    obs: Any, predicted: Array, H: Array, obs_noise: Any, dtype: Any
) -> tuple[Array, Array, lx.AbstractLinearOperator, Array]:
    """Innovation, H and R with the missing (NaN) entries neutralised; and the mask."""
    obs = jnp.asarray(obs)
    n_y = H.shape[0]
    if obs.shape != (n_y,):
        raise ValueError(
            f"obs must be a 1-D vector of length N_y={n_y} (what obs_op returns); got shape "
            f"{obs.shape}. Use NaN for missing entries."
        )
    obs = obs.astype(dtype)
    mask = fxp.observation_mask(obs)
    # Replace NaN before subtracting so neither values nor gradients can pick it up.
    innovation = jnp.where(mask, jnp.where(mask, obs, 0.0) - predicted, 0.0)
    H = jnp.where(mask[:, None], H, 0.0)
    noise = mask_noise(_noise_operator(obs_noise, n_y, dtype, "obs_noise"), mask)
    return innovation, H, noise, mask


def _gaussian_loglik(n_obs: Array, half_logdet: Array, whitened: Array) -> Array:
    dtype = whitened.dtype
    return -0.5 * (n_obs.astype(dtype) * _LOG_2PI + 2.0 * half_logdet + jnp.sum(whitened**2))


def _tria(factor: Array) -> Array:
    """A square lower-triangular ``L`` with ``L L^T = F F^T`` and ``diag(L) >= 0`` (QR of F^T)."""
    n, width = factor.shape
    r = jnp.linalg.qr(factor.T, mode="r")
    lower = r.T[:, :n]
    if lower.shape[1] < n:
        # A factor narrower than N_x (e.g. ensemble anomalies): pad with zero columns.
        lower = jnp.pad(lower, ((0, 0), (0, n - lower.shape[1])))
    signs = jnp.where(jnp.diagonal(lower) < 0, -1.0, 1.0).astype(lower.dtype)
    return lower * signs[None, :]


class GaussianState(eqx.Module):
    """A Gaussian belief ``N(mean, cov)`` (the state of `KalmanFilter` and `ExtendedKF`)."""

    mean: Float[Array, " N_x"]
    cov: Float[Array, "N_x N_x"]


class SqrtGaussianState(eqx.Module):
    """A Gaussian belief ``N(mean, chol chol^T)``, ``chol`` lower triangular (`SquareRootKF`)."""

    mean: Float[Array, " N_x"]
    chol: Float[Array, "N_x N_x"]

    @property
    def cov(self) -> Float[Array, "*T N_x N_x"]:
        """The covariance ``chol @ chol.T`` (positive semidefinite by construction); also
        for a stack of states (the saved beliefs of a `run`)."""
        return _mm(self.chol, jnp.swapaxes(self.chol, -1, -2))


class KalmanResult(eqx.Module):
    """What `AbstractKalmanFilter.filter` returns: one row per observation time.

    **Fields:**

    - `mean`: ``(T, N_x)`` analysis (filtering) means.
    - `cov`: ``(T, N_x, N_x)`` analysis covariances, or ``(T, N_x)`` variances when the filter
      was run with ``save_cov="diagonal"``.
    - `forecast_mean`, `forecast_cov`: the same for the forecasts (predictions).
    - `log_likelihood`: ``(T,)`` log marginal likelihoods ``log p(y_t | y_{1:t-1})``; their sum
      is the log evidence of the whole sequence.
    - `final_state`: the last analysis state (to continue filtering); the last finite one if
      the run failed.
    - `cycle_status`, `status`, `first_failure`: the driver's status (see
      `filterax.filters.RunResult`): per cycle ``0`` ok / ``1`` non-finite (that cycle and
      every later one are not assimilated, their rows are NaN); overall status; the first
      failing cycle (``-1`` if none). ``None`` for a result built by hand.
    """

    mean: Float[Array, "T N_x"]
    cov: Float[Array, "T N_x N_x"] | Float[Array, "T N_x"]
    forecast_mean: Float[Array, "T N_x"]
    forecast_cov: Float[Array, "T N_x N_x"] | Float[Array, "T N_x"]
    log_likelihood: Float[Array, " T"]
    final_state: PyTree
    cycle_status: Int[Array, " T"] | None = None
    status: Int[Array, ""] | None = None
    first_failure: Int[Array, ""] | None = None

    OK: ClassVar[int] = STATUS_OK
    NONFINITE: ClassVar[int] = STATUS_NONFINITE
    DIVERGED: ClassVar[int] = STATUS_DIVERGED
    INVALID_TIMES: ClassVar[int] = STATUS_INVALID_TIMES
    INVALID_NOISE: ClassVar[int] = STATUS_INVALID_NOISE

    def scores(self, truth: Float[ArrayLike, "T N_x"], burn_in_cycles: int = 0) -> dict[str, Array]:
        """Time-mean DAPPER scores after `burn_in_cycles`: ``rmse_a``, ``rmse_f``, ``spread_a``,
        ``spread_f``, with ``spread = sqrt(trace(P) / N_x)`` (DAPPER's ``rmv`` for a Gaussian).
        """
        truth = jnp.asarray(truth)
        _check_truth(truth, self.mean.shape, burn_in_cycles)
        sl = slice(burn_in_cycles, None)

        def spread(cov):
            var = jnp.diagonal(cov, axis1=-2, axis2=-1) if cov.ndim == 3 else cov
            return jnp.sqrt(jnp.maximum(jnp.mean(var, axis=-1), 0.0))

        return {
            "rmse_a": jnp.mean(rmse(self.mean[sl], truth[sl])),
            "rmse_f": jnp.mean(rmse(self.forecast_mean[sl], truth[sl])),
            "spread_a": jnp.mean(spread(self.cov[sl])),
            "spread_f": jnp.mean(spread(self.forecast_cov[sl])),
        }


def _check_truth(truth: Array, shape: tuple[int, ...], burn_in_cycles: Any) -> None:
    if truth.shape != tuple(shape):
        raise ValueError(
            f"truth must have shape (T, N_x) = {tuple(shape)}, one true state per observation "
            f"time; got {truth.shape}."
        )
    if (
        isinstance(burn_in_cycles, bool)
        or not isinstance(burn_in_cycles, int | np.integer)
        or not 0 <= burn_in_cycles < shape[0]
    ):
        raise ValueError(
            f"burn_in_cycles must be a Python int in [0, T) = [0, {shape[0]}); got "
            f"{burn_in_cycles!r}."
        )


def _check_save_cov(save_cov: Any) -> None:
    if save_cov not in ("full", "diagonal"):
        raise ValueError(f'save_cov must be "full" or "diagonal"; got {save_cov!r}.')


class AbstractKalmanFilter(AbstractSequentialFilter):
    """A parametric Gaussian filter: the ``init`` / ``predict`` / ``update`` kernels.

    Subclasses implement the four abstract methods. Shared: `as_cycled_method` (the
    `GaussianFilter` that `filterax.filters.run` cycles), `filter` (the legacy convenience
    form of that run, returning a `KalmanResult`) and `analysis` (the ensemble contract of
    `AbstractSequentialFilter`).
    """

    def as_cycled_method(self) -> GaussianFilter:
        """``GaussianFilter(self)``: this filter as a cycled method, so that
        ``run(KalmanFilter(), model, GaussianState(mean0, cov0), ...)`` works."""
        return GaussianFilter(self)

    @abc.abstractmethod
    def init(self, mean: Float[ArrayLike, " N_x"], cov: Any) -> PyTree:
        """The state for ``N(mean, cov)``; `cov` as a matrix, scalar, variances or operator."""

    @abc.abstractmethod
    def init_sqrt(
        self, mean: Float[ArrayLike, " N_x"], factor: Float[ArrayLike, "N_x r"]
    ) -> PyTree:
        """The state for ``N(mean, factor factor^T)`` (any number of columns ``r``)."""

    @abc.abstractmethod
    def predict(
        self,
        state: PyTree,
        dynamics: Any,
        process_noise: Any = None,
        t0: ScalarLike = 0.0,
        t1: ScalarLike = 1.0,
    ) -> PyTree:
        """Propagate the belief from ``t0`` to ``t1`` through `dynamics`, adding `process_noise`."""

    @abc.abstractmethod
    def update(
        self, state: PyTree, obs: Float[ArrayLike, " N_y"], obs_op: Any, obs_noise: Any
    ) -> tuple[PyTree, Scalar]:
        """Condition on `obs`; return the new state and ``log p(obs | past observations)``."""

    def filter(
        self,
        mean0: Float[ArrayLike, " N_x"],
        cov0: Any,
        observations: Float[ArrayLike, "..."],
        obs_times: Real[ArrayLike, "..."],
        dynamics: Any,
        obs_op: Any,
        obs_noise: Any,
        process_noise: Any = None,
        t0: ScalarLike = 0.0,
        *,
        save_cov: str = "full",
        throw: bool = False,
    ) -> KalmanResult:
        """Run predict/update over all observation times as one `lax.scan` (legacy form).

        The legacy convenience form of ``run(GaussianFilter(self), model, self.init(mean0,
        cov0), observations, obs_times, key=..., save="forecast_and_analysis")`` with the
        model given as separate arguments (and matrices accepted as dynamics), repackaged as
        a `KalmanResult`: the same numbers, bit for bit. New code should call
        `filterax.filters.run`, whose argument order (model first) is the one every cycled
        method shares.

        Window ``k`` predicts from ``t_{k-1}`` to ``t_k`` (with ``t_{-1} = t0``; DAPPER's
        convention: no observation at ``t0``) and then updates on ``observations[k]``.

        **Arguments:**

        - `mean0`, `cov0`: the prior ``N(mean0, cov0)`` at ``t0``.
        - `observations`: ``(T, N_y)``, NaN where missing.
        - `obs_times`: ``(T,)`` observation times.
        - `dynamics`, `obs_op`, `obs_noise`, `process_noise`: as in `predict` / `update`
          (process noise is added once per window).
        - `t0`: the time of the prior.
        - `save_cov`: ``"full"`` stacks ``(T, N_x, N_x)`` covariances, ``"diagonal"`` only
          the variances ``(T, N_x)``.
        - `throw`: raise (`eqx.error_if`) when a cycle becomes non-finite. Default ``False``:
          as before, a failing run returns, its rows from the failing cycle on are NaN and
          `KalmanResult.status` / `.first_failure` say so.

        **Returns:**

        A `KalmanResult`.
        """
        _check_save_cov(save_cov)
        observations = jnp.asarray(observations)
        obs_times = jnp.asarray(obs_times)
        if observations.ndim != 2:
            raise ValueError(
                f"observations must be a 2-D array (T, N_y); got shape {observations.shape}. "
                "For a single observation time use observations[None]."
            )
        if obs_times.shape != (observations.shape[0],):
            raise ValueError(
                f"obs_times must have shape (T,) = ({observations.shape[0]},) to match "
                f"observations {observations.shape}; got {obs_times.shape}."
            )
        if jnp.ndim(t0) != 0:
            raise ValueError(f"t0 must be a scalar time; got shape {jnp.shape(t0)}.")
        owner = f"{type(self).__name__}.filter"
        check_times(obs_times, t0, owner)
        check_model_noise(
            _KalmanModel(dynamics, obs_op, obs_noise, None, t0), observations.shape[1], owner
        )
        n_x = jnp.shape(mean0)[-1] if jnp.ndim(mean0) else 1
        for name, cov in (("process_noise", process_noise), ("cov0", cov0)):
            if cov is not None:
                fxp.positive_definite_noise(cov, n_x, name=f"{owner}: {name}", semidefinite=True)
        state0 = self.init(mean0, cov0)
        model = _KalmanModel(dynamics, obs_op, obs_noise, process_noise, t0)
        return _filter_jit(
            _CovarianceBeliefs(GaussianFilter(self), save_cov),
            model,
            state0,
            observations,
            obs_times,
            bool(throw),
            f"{type(self).__name__}.filter",
        )

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[ArrayLike, "N_e N_x"],
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> Analysis:
        """Exact Kalman analysis of the forecast ensemble's Gaussian fit, as an ensemble.

        The forecast is summarised by its sample mean and covariance
        ``P = A A^T`` (``A = X'^T / sqrt(N_e - 1)``); this filter's own `update` gives the
        posterior mean and the log-likelihood, and the members are rebuilt as
        ``mean_a + sqrt(N_e - 1) (A T)^T`` with ``T`` the symmetric square root of
        ``I - Y^T S^{-1} Y`` (``Y = H A``), so the sample covariance equals the exact
        posterior covariance. Deterministic (`key` is ignored). The symmetric square root is
        `filterax.primitives.sqrt_psd` (gradient-safe at repeated eigenvalues). No
        prediction happens here, so `ExtendedKF.infl` has no effect: inflate with
        `assimilate`'s ``inflator``.
        """
        del key
        require_no_context(context, f"{type(self).__name__}.analysis")
        forecast = jnp.asarray(forecast)
        if forecast.ndim != 2 or forecast.shape[0] < 2:
            raise ValueError(
                f"forecast must be an (N_e, N_x) ensemble with N_e >= 2; got {forecast.shape}."
            )
        n_e = forecast.shape[0]
        dtype = _float_dtype(forecast)
        forecast = forecast.astype(dtype)
        mean = jnp.mean(forecast, axis=0)
        factor = (forecast - mean[None, :]).T / jnp.sqrt(jnp.asarray(n_e - 1, dtype))
        posterior, loglik = self.update(self.init_sqrt(mean, factor), obs, obs_op, obs_noise)
        predicted, H = _linearize_obs(obs_op, mean, "rev")
        _, H, noise, _ = _masked_observation(obs, predicted, H, obs_noise, dtype)
        Y = _mm(H, factor)
        S = _sym(_mm(Y, Y.T) + noise.as_matrix())
        gain_like = jsl.cho_solve(jsl.cho_factor(S, lower=True), Y)
        reduction = _sym(jnp.eye(n_e, dtype=dtype) - _mm(Y.T, gain_like))
        transform = fxp.sqrt_psd(reduction)
        anomalies = _mm(factor, transform).T * jnp.sqrt(jnp.asarray(n_e - 1, dtype))
        return Analysis(particles=posterior.mean[None, :] + anomalies, log_likelihood=loglik)


def _dense_init(mean: Any, cov: Any) -> GaussianState:
    mean = _check_mean(mean)
    n = mean.shape[0]
    cov = _noise_operator(cov, n, mean.dtype, "cov").as_matrix().astype(mean.dtype)
    return GaussianState(mean=mean, cov=cov)


def _dense_init_sqrt(mean: Any, factor: Any) -> GaussianState:
    mean = _check_mean(mean)
    factor = _check_factor(factor, mean)
    return GaussianState(mean=mean, cov=_mm(factor, factor.T))


def _check_factor(factor: Any, mean: Array) -> Array:
    factor = jnp.asarray(factor)
    if factor.ndim != 2 or factor.shape[0] != mean.shape[0]:
        raise ValueError(
            f"factor must be an (N_x, r) matrix with N_x={mean.shape[0]} rows (cov = F F^T); "
            f"got shape {factor.shape}."
        )
    return factor.astype(mean.dtype)


def _check_state(state: Any, kind: type) -> None:
    if not isinstance(state, kind):
        raise TypeError(
            f"expected a {kind.__name__} (from this filter's init); got {type(state).__name__}."
        )


def _dense_predict(
    state: GaussianState,
    dynamics: Any,
    process_noise: Any,
    t0: Any,
    t1: Any,
    jacobian: str,
    scale: Any = None,
) -> GaussianState:
    mean_f, M = _linearize_dynamics(dynamics, state.mean, t0, t1, jacobian)
    cov = _mm(_mm(M, state.cov), M.T)
    if scale is not None:
        cov = scale * cov
    if process_noise is not None:
        n = state.mean.shape[0]
        cov = cov + _noise_operator(process_noise, n, state.mean.dtype, "process_noise").as_matrix()
    return GaussianState(mean=mean_f, cov=_sym(cov))


def _dense_update(
    state: GaussianState, obs: Any, obs_op: Any, obs_noise: Any, form: str, jacobian: str
) -> tuple[GaussianState, Array]:
    mean, cov = state.mean, state.cov
    dtype = mean.dtype
    predicted, H = _linearize_obs(obs_op, mean, jacobian)
    innovation, H, noise, mask = _masked_observation(obs, predicted, H, obs_noise, dtype)
    R = noise.as_matrix().astype(dtype)
    PHt = _mm(cov, H.T)
    S = _sym(_mm(H, PHt) + R)
    chol = jnp.linalg.cholesky(S)
    gain = jsl.cho_solve((chol, True), PHt.T).T
    mean_a = mean + _mm(gain, innovation)
    if form == "joseph":
        # (I - KH) P (I - KH)^T + K R K^T: PSD for any gain, so round-off cannot make it
        # indefinite (Bucy & Joseph 1968).
        reduce = jnp.eye(mean.shape[0], dtype=dtype) - _mm(gain, H)
        cov_a = _mm(_mm(reduce, cov), reduce.T) + _mm(_mm(gain, R), gain.T)
    else:
        cov_a = cov - _mm(gain, PHt.T)
    whitened = jsl.solve_triangular(chol, innovation, lower=True)
    half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol)))
    loglik = _gaussian_loglik(jnp.sum(mask), half_logdet, whitened)
    return GaussianState(mean=mean_a, cov=_sym(cov_a)), loglik


class KalmanFilter(AbstractKalmanFilter):
    """The Kalman filter (covariance form), exact on linear-Gaussian problems.

    Predict and update:

    $$\\bar x^f = M \\bar x^a,\\qquad P^f = M P^a M^\\top + Q,$$

    $$S = H P^f H^\\top + R,\\quad K = P^f H^\\top S^{-1},\\quad
      \\bar x^a = \\bar x^f + K (y - H \\bar x^f),$$

    $$P^a = (I - KH) P^f \\ \\text{(standard)} \\quad\\text{or}\\quad
      P^a = (I - KH) P^f (I - KH)^\\top + K R K^\\top \\ \\text{(Joseph)},$$

    $$\\log p(y \\mid y_{1:t-1}) = -\\tfrac12\\left[N_y \\log 2\\pi + \\log|S|
      + v^\\top S^{-1} v\\right],\\quad v = y - H\\bar x^f.$$

    Dense ``N_x x N_x`` algebra (a reference, not a large-scale method). Operators are
    matrices, lineax operators, observation operators with ``matrix(n)``, or callables
    linearised at the mean by `jax.jacrev` (exact for affine maps; for nonlinear ones use
    `ExtendedKF`). Missing (NaN) observation entries are skipped exactly.

    **Arguments:**

    - `form`: ``"joseph"`` (default; PSD under round-off) or ``"standard"``.

    Reference: R. E. Kalman (1960), J. Basic Eng. 82, 35-45; Joseph form: R. S. Bucy and
    P. D. Joseph (1968). DAPPER equivalent: ``dapper.da_methods.extended.ExtKF`` on a linear
    model (DAPPER has no separate linear KF).

    **Example:**

    ```python
    kf = KalmanFilter()
    result = kf.filter(jnp.zeros(2), jnp.eye(2), ys, times, A, jnp.eye(2), 0.5, 0.1)
    result.log_likelihood.sum()  # log evidence
    ```
    """

    form: str = eqx.field(default="joseph", static=True)

    def __check_init__(self) -> None:
        if self.form not in ("joseph", "standard"):
            raise ValueError(
                f'KalmanFilter.form must be "joseph" or "standard"; got {self.form!r}.'
            )

    def init(self, mean: Float[ArrayLike, " N_x"], cov: Any) -> GaussianState:
        """``GaussianState(mean, cov)``; `cov` a matrix, scalar, variances or an operator."""
        return _dense_init(mean, cov)

    def init_sqrt(
        self, mean: Float[ArrayLike, " N_x"], factor: Float[ArrayLike, "N_x r"]
    ) -> GaussianState:
        """``GaussianState(mean, factor @ factor.T)``."""
        return _dense_init_sqrt(mean, factor)

    def predict(
        self,
        state: GaussianState,
        dynamics: Any,
        process_noise: Any = None,
        t0: ScalarLike = 0.0,
        t1: ScalarLike = 1.0,
    ) -> GaussianState:
        """``N(M mean, M P M^T + Q)``; `dynamics` a matrix, operator or ``f(x, t0, t1)``."""
        _check_state(state, GaussianState)
        return _dense_predict(state, dynamics, process_noise, t0, t1, "rev")

    def update(
        self, state: GaussianState, obs: Float[ArrayLike, " N_y"], obs_op: Any, obs_noise: Any
    ) -> tuple[GaussianState, Scalar]:
        """Condition on `obs` (NaN = missing); returns ``(state, log p(obs))``."""
        _check_state(state, GaussianState)
        return _dense_update(state, obs, obs_op, obs_noise, self.form, "rev")


class ExtendedKF(AbstractKalmanFilter):
    """The extended Kalman filter: the Kalman filter on Jacobians at the current mean.

    $$\\bar x^f = \\mathcal M(\\bar x^a),\\quad F = \\partial\\mathcal M/\\partial x\\,(\\bar x^a),
      \\quad P^f = \\text{infl}^{\\,t_1 - t_0}\\, F P^a F^\\top + Q,$$

    $$H = \\partial\\mathcal H/\\partial x\\,(\\bar x^f),\\quad v = y - \\mathcal H(\\bar x^f),$$

    then the Kalman update of `KalmanFilter` with ``H`` and ``v``. Jacobians come from
    `jax.jacrev` (default; works through the zoo's traced-interval integrators) or
    `jax.jacfwd`. The covariance inflation ``infl`` is per unit of model time, as in DAPPER
    (``P <- infl**dt F P F^T`` each model step ``dt``), so DAPPER's ``ExtKF(infl=...)``
    settings carry over; ``Q`` is the process noise of the whole window.

    **Arguments:**

    - `infl`: covariance inflation per unit model time (dynamic: differentiable, vmappable).
    - `form`: ``"standard"`` (DAPPER's) or ``"joseph"``.
    - `jacobian`: ``"rev"`` (default) or ``"fwd"`` autodiff for the Jacobians. The zoo's
      stepped models support only reverse mode when the interval is traced (as it is inside
      `filter`), so use ``"fwd"`` only for dynamics written without custom derivatives.

    Reference: A. H. Jazwinski (1970), *Stochastic Processes and Filtering Theory*. DAPPER
    equivalent: ``dapper.da_methods.extended.ExtKF(infl=...)`` (DAPPER evaluates ``F`` after
    the mean step; here it is the Jacobian of the whole window at its start).

    **Example:**

    ```python
    ekf = ExtendedKF(infl=6.0)
    result = ekf.filter(x0, 0.001 * jnp.eye(40), ys, times, Lorenz96(), IdentityObs(), 1.0)
    ```
    """

    infl: Float[ArrayLike, ""] = eqx.field(
        default=1.0,
        converter=fxp.parameter_converter(
            "ExtendedKF.infl", low=0.0, low_open=True, allow_inf=False, hint="1 means none."
        ),
    )
    form: str = eqx.field(default="standard", static=True)
    jacobian: str = eqx.field(default="rev", static=True)

    def __check_init__(self) -> None:
        if jnp.ndim(self.infl) != 0:
            raise ValueError(
                f"ExtendedKF.infl must be a scalar; got shape {jnp.shape(self.infl)}. To try "
                "several values, jax.vmap over them."
            )
        if self.form not in ("joseph", "standard"):
            raise ValueError(f'ExtendedKF.form must be "joseph" or "standard"; got {self.form!r}.')
        if self.jacobian not in ("rev", "fwd"):
            raise ValueError(f'ExtendedKF.jacobian must be "rev" or "fwd"; got {self.jacobian!r}.')

    def init(self, mean: Float[ArrayLike, " N_x"], cov: Any) -> GaussianState:
        """``GaussianState(mean, cov)`` with `cov` densified."""
        return _dense_init(mean, cov)

    def init_sqrt(
        self, mean: Float[ArrayLike, " N_x"], factor: Float[ArrayLike, "N_x r"]
    ) -> GaussianState:
        """``GaussianState(mean, factor @ factor.T)``."""
        return _dense_init_sqrt(mean, factor)

    def predict(
        self,
        state: GaussianState,
        dynamics: Any,
        process_noise: Any = None,
        t0: ScalarLike = 0.0,
        t1: ScalarLike = 1.0,
    ) -> GaussianState:
        """``N(f(mean), infl**(t1 - t0) F P F^T + Q)`` with ``F`` the Jacobian at the mean."""
        _check_state(state, GaussianState)
        dtype = state.mean.dtype
        elapsed = (jnp.asarray(t1) - jnp.asarray(t0)).astype(dtype)
        scale = jnp.asarray(self.infl).astype(dtype) ** elapsed
        return _dense_predict(state, dynamics, process_noise, t0, t1, self.jacobian, scale)

    def update(
        self, state: GaussianState, obs: Float[ArrayLike, " N_y"], obs_op: Any, obs_noise: Any
    ) -> tuple[GaussianState, Scalar]:
        """Kalman update with ``H`` the Jacobian of `obs_op` at the forecast mean."""
        _check_state(state, GaussianState)
        return _dense_update(state, obs, obs_op, obs_noise, self.form, self.jacobian)


class SquareRootKF(AbstractKalmanFilter):
    """The square-root (Cholesky/QR "array") Kalman filter; covariances PSD by construction.

    The state holds a lower-triangular ``L`` with ``P = L L^T`` and only orthogonal
    transformations act on it:

    - predict: ``L^f = tria([M L^a, Q^{1/2}])``, where ``tria(F)`` is ``R^T`` from the QR
      decomposition ``F^T = Q R`` (so ``L^f L^{fT} = M P^a M^T + Q``);
    - update: the pre-array is triangularised by QR,

    $$\\begin{bmatrix} R^{1/2} & H L^f \\\\ 0 & L^f \\end{bmatrix} \\Theta =
      \\begin{bmatrix} S^{1/2} & 0 \\\\ \\bar K & L^a \\end{bmatrix},$$

    giving ``S = S^{1/2} S^{T/2}``, the gain ``K = \\bar K S^{-1/2}``, the mean
    ``x^a = x^f + \\bar K S^{-1/2} v`` and ``log|S| = 2 sum log diag S^{1/2}``.

    ``L L^T`` can never be indefinite, and the factor carries the conditioning of ``sqrt(P)``
    rather than ``P``, which is why this form stays accurate in float32 over long runs.
    Operators as in `KalmanFilter`. ``R^{1/2}`` and ``Q^{1/2}`` come from
    `filterax.primitives.noise_sqrt` (square root of a diagonal, Cholesky of a dense matrix).

    Reference: M. Morf and T. Kailath (1975), "Square-root algorithms for least-squares
    estimation", IEEE TAC 20, 487-497; G. J. Bierman (1977). DAPPER has no equivalent.

    **Example:**

    ```python
    srkf = SquareRootKF()
    state = srkf.init(jnp.zeros(3), jnp.eye(3))
    state = srkf.predict(state, A, 0.1)
    state, loglik = srkf.update(state, y, H, 0.5)
    state.cov  # == state.chol @ state.chol.T
    ```
    """

    def init(self, mean: Float[ArrayLike, " N_x"], cov: Any) -> SqrtGaussianState:
        """The state of ``N(mean, cov)``: ``chol`` from the square root of `cov` (diagonal:
        elementwise; dense: Cholesky, so `cov` must be positive definite; use `init_sqrt` for
        a singular covariance)."""
        mean = _check_mean(mean)
        op = _noise_operator(cov, mean.shape[0], mean.dtype, "cov")
        return SqrtGaussianState(
            mean=mean, chol=_tria(noise_sqrt(op).as_matrix().astype(mean.dtype))
        )

    def init_sqrt(
        self, mean: Float[ArrayLike, " N_x"], factor: Float[ArrayLike, "N_x r"]
    ) -> SqrtGaussianState:
        """The state of ``N(mean, F F^T)`` for any ``(N_x, r)`` factor ``F`` (triangularised)."""
        mean = _check_mean(mean)
        return SqrtGaussianState(mean=mean, chol=_tria(_check_factor(factor, mean)))

    def predict(
        self,
        state: SqrtGaussianState,
        dynamics: Any,
        process_noise: Any = None,
        t0: ScalarLike = 0.0,
        t1: ScalarLike = 1.0,
    ) -> SqrtGaussianState:
        """``mean <- M mean``, ``chol <- tria([M chol, Q^{1/2}])``."""
        _check_state(state, SqrtGaussianState)
        mean_f, M = _linearize_dynamics(dynamics, state.mean, t0, t1, "rev")
        factor = _mm(M, state.chol)
        if process_noise is not None:
            n, dtype = state.mean.shape[0], state.mean.dtype
            op = _noise_operator(process_noise, n, dtype, "process_noise")
            factor = jnp.concatenate([factor, noise_sqrt(op).as_matrix().astype(dtype)], axis=1)
        return SqrtGaussianState(mean=mean_f, chol=_tria(factor))

    def update(
        self, state: SqrtGaussianState, obs: Float[ArrayLike, " N_y"], obs_op: Any, obs_noise: Any
    ) -> tuple[SqrtGaussianState, Scalar]:
        """QR-array update on `obs` (NaN = missing); returns ``(state, log p(obs))``."""
        _check_state(state, SqrtGaussianState)
        mean, chol = state.mean, state.chol
        dtype = mean.dtype
        n_x = mean.shape[0]
        predicted, H = _linearize_obs(obs_op, mean, "rev")
        innovation, H, noise, mask = _masked_observation(obs, predicted, H, obs_noise, dtype)
        n_y = H.shape[0]
        noise_root = noise_sqrt(noise).as_matrix().astype(dtype)
        pre = jnp.block(
            [
                [noise_root, _mm(H, chol)],
                [jnp.zeros((n_x, noise_root.shape[1]), dtype), chol],
            ]
        )
        post = _tria(pre)
        s_half = post[:n_y, :n_y]
        gain_bar = post[n_y:, :n_y]
        chol_a = post[n_y:, n_y:]
        whitened = jsl.solve_triangular(s_half, innovation, lower=True)
        mean_a = mean + _mm(gain_bar, whitened)
        half_logdet = jnp.sum(jnp.log(jnp.diagonal(s_half)))
        loglik = _gaussian_loglik(jnp.sum(mask), half_logdet, whitened)
        return SqrtGaussianState(mean=mean_a, chol=chol_a), loglik


# --- the cycled form: a Kalman filter run by `filterax.filters.run` ---------------------------


class GaussianDiagnostics(eqx.Module):
    """The per-cycle diagnostics of a `GaussianFilter` (stacked by `run` in
    `RunResult.diagnostics` whatever `save` is: ``O(N_x)`` per cycle).

    **Fields:**

    - `forecast_variance`, `analysis_variance`: ``(N_x,)`` the diagonals of ``P^f`` and
      ``P^a`` (e.g. for the Gaussian CRPS of each state component).
    """

    forecast_variance: Float[Array, " N_x"]
    analysis_variance: Float[Array, " N_x"]


def _predicted_obs(obs_op: Any, mean: Array) -> Array:
    """``H(mean)`` in the mean's dtype, computed as the update computes it."""
    dtype = mean.dtype
    if isinstance(obs_op, lx.AbstractLinearOperator | jax.Array | np.ndarray):
        matrix = obs_op.as_matrix() if isinstance(obs_op, lx.AbstractLinearOperator) else obs_op
        return _mm(jnp.asarray(matrix).astype(dtype), mean)
    matrix_method = getattr(obs_op, "matrix", None)
    if callable(matrix_method):
        return _mm(jnp.asarray(matrix_method(mean.shape[0], dtype)).astype(dtype), mean)
    return jnp.asarray(obs_op(mean)).astype(dtype)


def _rms_spread(variance: Array) -> Array:
    # DAPPER's rmv of a Gaussian: sqrt(mean_i P_ii) (clipped: round-off may make a variance
    # of a nearly-degenerate covariance slightly negative).
    return jnp.sqrt(jnp.maximum(jnp.mean(variance, axis=-1), 0.0))


def _checked_state(initial: Any, mean: Array) -> GaussianState | SqrtGaussianState:
    n = mean.shape[0]
    name = "cov" if isinstance(initial, GaussianState) else "chol"
    matrix = jnp.asarray(getattr(initial, name))
    if matrix.shape != (n, n):
        raise ValueError(
            f"the initial {type(initial).__name__}.{name} must be an (N_x, N_x) = ({n}, {n}) "
            f"matrix like its mean; got shape {matrix.shape}."
        )
    return type(initial)(mean, matrix.astype(mean.dtype))


def _initial_state(kernel: AbstractKalmanFilter, initial: Any) -> PyTree:
    """The kernel's state for `initial` (a Gaussian state of either form or ``(mean, cov)``)."""
    if isinstance(initial, GaussianState | SqrtGaussianState):
        mean = _check_mean(initial.mean)
        # The state type the kernel works with, found without computing anything.
        kind = type(jax.eval_shape(lambda m: kernel.init(m, 1.0), mean))
        if isinstance(initial, kind):
            return _checked_state(initial, mean)
        if isinstance(initial, SqrtGaussianState):
            return kernel.init_sqrt(mean, initial.chol)
        return kernel.init(mean, initial.cov)
    if isinstance(initial, tuple | list) and len(initial) == 2:
        return kernel.init(*initial)
    # A belief in natural parameters (InformationState: eta, precision) for a kernel that
    # carries them (InformationFilter), e.g. a GMRF prior with a tridiagonal precision that
    # has no (mean, cov) form without densifying; re-built so the kernel checks it.
    init_information = getattr(kernel, "init_information", None)
    if init_information is not None and hasattr(initial, "eta") and hasattr(initial, "precision"):
        return init_information(initial.eta, initial.precision)
    raise TypeError(
        "the initial condition of a Kalman filter is a Gaussian: pass GaussianState(mean, cov), "
        "SqrtGaussianState(mean, chol) or a (mean, cov) pair (cov as a matrix, variances, a "
        "scalar or a lineax operator; InformationFilter also takes an InformationState); got "
        f"{type(initial).__name__}. An ensemble filter takes an (N_e, N_x) ensemble instead."
    )


class GaussianFilter(fxp.AbstractCycledMethod):
    r"""A parametric Kalman filter as a cycled method: the Gaussian belief carried by `run`.

    Cycle ``k`` (``t_{k-1} \to t_k``, observation ``y_k``) is the kernel's predict then
    update, with the model's dynamics, process noise, observation operator and noise:

    $$\mathcal N(\bar x^f, P^f) = \text{kernel.predict}(\mathcal N(\bar x^a_{k-1},
    P^a_{k-1}),\ \mathcal M,\ Q,\ t_{k-1}, t_k),$$

    $$(\mathcal N(\bar x^a_k, P^a_k),\ \log p(y_k\mid y_{<k})) = \text{kernel.update}(
    \mathcal N(\bar x^f, P^f),\ y_k,\ H,\ R).$$

    The State is the kernel's state (`GaussianState`, or `SqrtGaussianState` for
    `SquareRootKF`). Each cycle reports (`filterax.primitives.CycleInfo`) the forecast and
    analysis means, their spreads ``sqrt(mean_i P_ii)`` (DAPPER's ``rmv``), the
    log-likelihood, the innovation ``y_k - H(\bar x^f)``, whether everything stayed finite,
    the full forecast and analysis states as the beliefs (``save="forecast_and_analysis"``
    stacks them, so ``out.forecasts.cov`` is ``(T, N_x, N_x)``) and, always, the diagonal
    variances as `GaussianDiagnostics`. The key is not used (the filter is deterministic).

    `run` accepts a Kalman filter directly (``run(KalmanFilter(), ...)`` wraps it in this
    class through `AbstractKalmanFilter.as_cycled_method`). The model's dynamics must be
    deterministic (give the covariance of additive noise as ``process_noise``); a callable
    is linearised at the mean as `predict` does.

    **Arguments:**

    - `kernel`: an `AbstractKalmanFilter` (`KalmanFilter()`, `SquareRootKF()`,
      `ExtendedKF(infl=...)`).

    **Initial condition** (the ``initial`` of `run`): a `GaussianState`, a
    `SqrtGaussianState` (converted to the kernel's form when it uses the other one), a
    ``(mean, cov)`` pair (``kernel.init(mean, cov)``) or, for `InformationFilter`, an
    `InformationState` (``kernel.init_information(eta, precision)``: a tridiagonal prior
    precision stays tridiagonal).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import filterax.filters as ff
    import filterax.primitives as fxp

    A = jnp.array([[0.9, 0.2], [0.0, 0.8]])
    model = fxp.Model(dynamics=lambda x, t0, t1: A @ x, obs_op=jnp.eye(2),
                      obs_noise=0.5, process_noise=0.1)
    ys, times = jnp.ones((50, 2)), jnp.arange(1.0, 51.0)
    out = ff.run(ff.GaussianFilter(ff.KalmanFilter()), model,
                 ff.GaussianState(jnp.zeros(2), jnp.eye(2)), ys, times,
                 key=jax.random.key(0))
    out.log_likelihood.sum()           # the log evidence
    out.diagnostics.analysis_variance  # (T, N_x)
    ```

    DAPPER equivalent: ``dapper.da_methods.extended.ExtKF`` run by ``xp.assimilate``.
    """

    kernel: AbstractKalmanFilter

    def __check_init__(self) -> None:
        if not isinstance(self.kernel, AbstractKalmanFilter):
            raise TypeError(
                "GaussianFilter wraps a parametric Kalman filter, an AbstractKalmanFilter "
                "(KalmanFilter(), SquareRootKF(), ExtendedKF(...)); got "
                f"{type(self.kernel).__name__}. Ensemble analysis kernels go in EnsembleFilter."
            )

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> PyTree:
        """The kernel's state for `initial` (see the class docstring)."""
        del key, model
        return _initial_state(self.kernel, initial)

    def step(
        self,
        key: PRNGKeyArray,
        state: PyTree,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[PyTree, fxp.CycleInfo]:
        """Predict from ``t_prev`` to ``t``, update on `obs` (see the class docstring)."""
        del key
        forecast = self.kernel.predict(state, model.dynamics, model.process_noise, t_prev, t)
        analysis, loglik = self.kernel.update(forecast, obs, model.obs_op, model.obs_noise)
        dtype = forecast.mean.dtype
        innovation = jnp.asarray(obs).astype(dtype) - _predicted_obs(model.obs_op, forecast.mean)
        loglik = jnp.asarray(loglik).astype(dtype)
        var_f = jnp.diagonal(forecast.cov)
        var_a = jnp.diagonal(analysis.cov)
        info = fxp.CycleInfo(
            forecast_mean=forecast.mean,
            forecast_spread=_rms_spread(var_f),
            analysis_mean=analysis.mean,
            analysis_spread=_rms_spread(var_a),
            log_likelihood=loglik,
            innovation=innovation,
            finite=fxp.is_finite(forecast, analysis, loglik),
            forecast=forecast,
            analysis=analysis,
            diagnostics=GaussianDiagnostics(var_f, var_a),
        )
        return analysis, info


class _CovarianceBeliefs(fxp.AbstractCycledMethod):
    """`GaussianFilter` with its beliefs replaced by their covariances (``save_cov="full"``)
    or variances (``"diagonal"``), computed inside the cycle as `filter` always did."""

    method: GaussianFilter
    save_cov: str = eqx.field(static=True)

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> PyTree:
        return self.method.init(key, initial, model)

    def step(
        self,
        key: PRNGKeyArray,
        state: PyTree,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[PyTree, fxp.CycleInfo]:
        state, info = self.method.step(key, state, model, t_prev, t, obs)

        def keep(belief):
            cov = belief.cov
            return cov if self.save_cov == "full" else jnp.diagonal(cov)

        beliefs = (keep(info.forecast), keep(info.analysis))
        return state, eqx.tree_at(lambda i: (i.forecast, i.analysis), info, beliefs)


class _KalmanModel(fxp.AbstractModel):
    """The model `filter` builds from its arguments: like `filterax.primitives.Model`, but
    the dynamics may also be a matrix or a lineax operator (as `predict` accepts)."""

    dynamics: Any
    obs_op: Any
    obs_noise: Any
    process_noise: Any
    t0: Any
    state_coords: None = None
    obs_coords: None = None
    distance: None = None


def _filter(
    method: _CovarianceBeliefs,
    model: _KalmanModel,
    state0: PyTree,
    observations: Array,
    obs_times: Array,
    throw: bool,
    owner: str,
) -> KalmanResult:
    # The filter is deterministic: the driver's keys are never used.
    out = run_cycles(
        method,
        model,
        state0,
        observations,
        obs_times,
        jax.random.key(0),
        model.t0,
        "forecast_and_analysis",
        throw,
        None,
        owner,
    )
    return KalmanResult(
        mean=out.analysis_mean,
        cov=out.analyses,
        forecast_mean=out.forecast_mean,
        forecast_cov=out.forecasts,
        log_likelihood=out.log_likelihood,
        final_state=out.state,
        cycle_status=out.cycle_status,
        status=out.status,
        first_failure=out.first_failure,
    )


_filter_jit = eqx.filter_jit(_filter)
