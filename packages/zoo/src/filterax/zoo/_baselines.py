r"""The baselines every DAPPER table starts with: `Climatology` and `OptInterp`.

Both are cycled methods (`filterax.primitives.AbstractCycledMethod`), run by the one driver
``filterax.filters.run`` like every other method, and both are built from the climatological
statistics of the model, the mean and covariance of its invariant measure:

```python
mean_c, cov_c = ssm.climatology(jax.random.key(1))    # a long free run
out = filterax.filters.run(OptInterp(mean_c, cov_c), ssm, None, xp.observations,
                           xp.times, key=jax.random.key(0))
```

They show how much a method buys over the cheapest estimates: a filter scoring above
`Climatology` has lost the truth; one scoring above `OptInterp` does worse than a static
Kalman gain.
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
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

import filterax.primitives as fxp

__all__ = ["BaselineDiagnostics", "Climatology", "OptInterp"]

_HIGHEST = jax.lax.Precision.HIGHEST
_LOG_2PI = math.log(2.0 * math.pi)


def _mm(a: Array, b: Array) -> Array:
    # HIGHEST so that float32 on a GPU does not fall back to TF32 in the covariance algebra.
    return jnp.matmul(a, b, precision=_HIGHEST)


class BaselineDiagnostics(eqx.Module):
    """Per-cycle diagnostics of `Climatology` and `OptInterp` (stacked by ``run``).

    **Fields:**

    - `forecast_variance`, `analysis_variance`: ``(N_x,)`` the diagonals of the background
      covariance ``B`` and of the analysis covariance ``(I - K H) B`` (``B`` again for
      `Climatology`), e.g. for the Gaussian CRPS.
    """

    forecast_variance: Float[Array, " N_x"]
    analysis_variance: Float[Array, " N_x"]


def _climatology_fields(owner: str, mean: Any, cov: Any) -> tuple[Array, lx.AbstractLinearOperator]:
    mean = jnp.asarray(mean)
    if mean.ndim != 1 or mean.shape[0] < 1:
        raise ValueError(
            f"{owner}: the climatological mean must be a 1-D state vector (N_x,); got shape "
            f"{mean.shape}. Pass the mean of StateSpaceModel.climatology(key)."
        )
    if not jnp.issubdtype(mean.dtype, jnp.floating):
        mean = mean.astype(jnp.result_type(float))
    values = fxp.concrete_value(mean)
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError(
            f"{owner}: the climatological mean has non-finite entries (NaN/inf); pass a finite "
            "mean, e.g. from StateSpaceModel.climatology(key) on a run that did not blow up."
        )
    # B is only applied and added to R (never inverted), so semidefinite is enough; an
    # indefinite or non-finite concrete B is refused here, a traced one gives a non-finite
    # cycle (the Cholesky factor of H B H^T + R is NaN).
    op = fxp.positive_definite_noise(
        cov,
        mean.shape[0],
        dtype=mean.dtype,
        name=f"{owner}: the climatological covariance",
        hint=(
            " Pass the covariance of StateSpaceModel.climatology(key): an (N_x, N_x) matrix, "
            "N_x variances, a scalar or a lineax operator."
        ),
        semidefinite=True,
    )
    return mean, op


def _obs_jacobian(obs_op: Any, x: Array) -> tuple[Array, Array]:
    """``(H(x), dH/dx (x))``: exact matrices for linear operators, `jax.jacrev` otherwise."""
    n, dtype = x.shape[0], x.dtype
    if isinstance(obs_op, lx.AbstractLinearOperator | jax.Array | np.ndarray):
        matrix = obs_op.as_matrix() if isinstance(obs_op, lx.AbstractLinearOperator) else obs_op
        matrix = jnp.asarray(matrix).astype(dtype)
        return _mm(matrix, x), matrix
    matrix_method = getattr(obs_op, "matrix", None)
    if callable(matrix_method):
        # LinearObs / IndexObs / IdentityObs: their exact matrix.
        matrix = jnp.asarray(matrix_method(n, dtype)).astype(dtype)
        return _mm(matrix, x), matrix

    def observe(z):
        return jnp.asarray(fxp.apply_obs(obs_op, z)).astype(dtype)

    return observe(x), jax.jacrev(observe)(x)


def _variances(op: lx.AbstractLinearOperator) -> Array:
    return lx.diagonal(op)


class _Analysis(eqx.Module):
    mean: Array
    variance: Array
    log_likelihood: Array
    innovation: Array


def _static_gain_analysis(
    background: Array, cov: lx.AbstractLinearOperator, obs: Array, obs_op: Any, obs_noise: Any
) -> _Analysis:
    r"""The Kalman analysis of ``N(background, B)`` with the (static) background covariance:
    ``K = B H^T (H B H^T + R)^{-1}``, ``x^a = x^b + K (y - H(x^b))``, the diagonal of
    ``(I - K H) B`` and ``log N(y; H(x^b), H B H^T + R)``; missing (NaN) entries of `obs`
    get zero weight (zero rows of ``H``, identity rows of ``R``)."""
    dtype = background.dtype
    predicted, H = _obs_jacobian(obs_op, background)
    n_y = H.shape[0]
    obs = jnp.asarray(obs)
    if obs.shape != (n_y,):
        raise ValueError(
            f"obs must be a 1-D vector of length N_y={n_y} (what obs_op returns); got shape "
            f"{obs.shape}. Use NaN for missing entries."
        )
    obs = obs.astype(dtype)
    mask = fxp.observation_mask(obs)
    innovation = jnp.where(mask, jnp.where(mask, obs, 0.0) - predicted, 0.0)
    H = jnp.where(mask[:, None], H, 0.0)
    R = fxp.mask_noise(fxp.as_noise_operator(obs_noise, n_y, dtype=dtype), mask)
    # B H^T through B's own structure (rows of H B = B h_i since B is symmetric): a diagonal
    # B costs O(N_x N_y), never an N_x x N_x product.
    HB = jax.vmap(cov.mv)(H)
    S = _mm(H, HB.T) + R.as_matrix().astype(dtype)
    chol = jnp.linalg.cholesky(0.5 * (S + S.T))
    gain = jsl.cho_solve((chol, True), HB).T  # K = B H^T S^{-1}, (N_x, N_y)
    mean = background + _mm(gain, innovation)
    variance = _variances(cov).astype(dtype) - jnp.sum(gain * HB.T, axis=1)
    whitened = jsl.solve_triangular(chol, innovation, lower=True)
    n_obs = jnp.sum(mask).astype(dtype)
    loglik = -0.5 * (
        n_obs * _LOG_2PI + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol))) + jnp.sum(whitened**2)
    )
    return _Analysis(mean, variance, loglik, innovation)


def _rms_spread(variance: Array) -> Array:
    # DAPPER's rmv of a Gaussian: sqrt(mean_i P_ii) (clipped against round-off).
    return jnp.sqrt(jnp.maximum(jnp.mean(variance, axis=-1), 0.0))


def _initial_mean(owner: str, initial: Any, mean: Array) -> Array:
    if initial is None:
        return mean
    x = jnp.asarray(initial)
    if x.shape != mean.shape:
        raise ValueError(
            f"{owner}: the initial condition is None (start from the climatological mean) or "
            f"an initial mean of shape {mean.shape}; got shape {x.shape}."
        )
    return x.astype(mean.dtype)


class Climatology(fxp.AbstractCycledMethod):
    r"""The climatological estimate: the mean of the invariant measure, every cycle.

    $$\bar x^f_k = \bar x^a_k = \mu_c,\qquad P^f_k = P^a_k = B_c,$$

    whatever the observations. The reported spread is ``sqrt(tr(B_c) / N_x)`` (DAPPER's
    ``rmv`` of ``N(\mu_c, B_c)``) and the log-likelihood that of the observation under the
    climatological prior,

    $$\log p(y_k) = \log \mathcal N\big(y_k;\ \mathcal H(\mu_c),\ H B_c H^\top + R\big),$$

    with ``H`` the Jacobian of the observation operator at ``\mu_c`` (exact for linear
    operators). No model integration happens. A filter whose rmse.a exceeds this method's
    has lost the truth.

    **Arguments:**

    - `mean`: ``(N_x,)`` the climatological mean ``\mu_c``.
    - `cov`: the climatological covariance ``B_c`` (an ``(N_x, N_x)`` matrix, ``N_x``
      variances, a scalar or a lineax operator; positive semidefinite).

    Both are dynamic (``jax.vmap``/``jax.grad`` reach them). ``StateSpaceModel.climatology``
    gives both from a long free run with a key of its own.

    **Initial condition** (the ``initial`` of ``run``): ignored (pass ``None``).

    **State:** the climatological mean (constant).

    **Reference:** DAPPER ``dapper.da_methods.baseline.Climatology`` (which estimates
    ``\mu_c``, ``B_c`` from the truth being scored; here they come from an independent run).

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    from filterax.zoo import Climatology, presets

    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(0), 500)
    mean_c, cov_c = ssm.climatology(jax.random.key(1), 5_000)
    out = ff.run(Climatology(mean_c, cov_c), ssm, None, xp.observations, xp.times,
                 key=jax.random.key(2))
    out.scores(xp.truth, ssm.burn_in_cycles)["rmse_a"]  # about 7.6
    ```
    """

    mean: Float[Array, " N_x"]
    cov: lx.AbstractLinearOperator

    def __init__(self, mean: ArrayLike, cov: Any):
        self.mean, self.cov = _climatology_fields("Climatology", mean, cov)

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> Array:
        """The climatological mean (`initial` must be ``None`` or of its shape: unused)."""
        del key, model
        _initial_mean("Climatology", initial, self.mean)
        return self.mean

    def step(
        self,
        key: PRNGKeyArray,
        state: Array,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[Array, fxp.CycleInfo]:
        """Report ``N(\\mu_c, B_c)`` as forecast and analysis (see the class docstring)."""
        del key, state, t_prev, t
        mean = self.mean
        an = _static_gain_analysis(mean, self.cov, obs, model.obs_op, model.obs_noise)
        variance = _variances(self.cov).astype(mean.dtype)
        spread = _rms_spread(variance)
        info = fxp.CycleInfo(
            forecast_mean=mean,
            forecast_spread=spread,
            analysis_mean=mean,
            analysis_spread=spread,
            log_likelihood=an.log_likelihood,
            innovation=an.innovation,
            finite=fxp.is_finite(mean, variance, an.log_likelihood),
            diagnostics=BaselineDiagnostics(variance, variance),
        )
        return mean, info


class OptInterp(fxp.AbstractCycledMethod):
    r"""Optimal interpolation: the Kalman analysis with the climatological prior.

    With the climatological statistics ``(\mu_c, B)`` and ``H`` the Jacobian of the
    observation operator at the background ``x^b`` (exact for linear operators), each cycle

    $$K = B H^\top (H B H^\top + R)^{-1},\qquad \bar x^a_k = x^b + K\big(y_k -
    \mathcal H(x^b)\big),\qquad P^a = (I - K H) B .$$

    With ``background="climatology"`` (the default, DAPPER's ``OptInterp``) the background
    is the climatological mean, ``x^b = \mu_c``, every cycle: the model is not used (DAPPER
    integrates the mean between observations but overwrites it at every analysis, so at the
    observation times the two agree), the gain is the static "climatological" gain, and the
    forecast reported is ``N(\mu_c, B)``. With ``background="forecast"`` the background is
    the forecast of the previous analysis, ``x^b = \mathcal M(\bar x^a_{k-1})``, with the
    same static ``B`` (DAPPER's ``Var3D(B="clim", xB=1)`` solved in closed form; the
    variational 3D-Var of filterax has the ``xB`` scaling and the control-variable solve).

    The reported analysis spread is ``sqrt(tr((I - K H) B) / N_x)``, the expected analysis
    error if ``B`` is the background-error covariance (true for the climatological
    background). DAPPER reports ``sqrt(2 tr((I - K H) B) / N_x)`` for its analysis spread (a
    heuristic for the error growth between observations): the factor ``sqrt 2`` is dropped
    here. The log-likelihood is ``\log \mathcal N(y_k; \mathcal H(x^b), H B H^\top + R)``.
    Missing (NaN) observation entries get zero weight.

    **Arguments:**

    - `mean`: ``(N_x,)`` the climatological mean ``\mu_c``.
    - `cov`: the climatological (background) covariance ``B`` (matrix, variances, scalar or
      lineax operator; positive semidefinite). ``B H^T`` is formed through the operator,
      so a diagonal ``B`` is never densified.
    - `background`: ``"climatology"`` (default) or ``"forecast"`` (static).

    **Initial condition** (the ``initial`` of ``run``): ``None`` (start from ``\mu_c``) or an
    ``(N_x,)`` initial mean; only ``background="forecast"`` uses it.

    **State:** the last analysis mean.

    **Reference:** L. S. Gandin (1963), *Objective Analysis of Meteorological Fields*;
    A. C. Lorenc (1986), *QJRMS* 112, 1177-1194. DAPPER equivalent:
    ``dapper.da_methods.baseline.OptInterp`` (which estimates ``\mu_c``, ``B`` from the truth
    being scored; here they come from an independent run).

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    from filterax.zoo import OptInterp, presets

    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(0), 500)
    mean_c, cov_c = ssm.climatology(jax.random.key(1), 5_000)
    out = ff.run(OptInterp(mean_c, cov_c), ssm, None, xp.observations, xp.times,
                 key=jax.random.key(2))
    out.scores(xp.truth, ssm.burn_in_cycles)["rmse_a"]  # about 1.25
    ```
    """

    mean: Float[Array, " N_x"]
    cov: lx.AbstractLinearOperator
    background: str = eqx.field(static=True)

    def __init__(self, mean: ArrayLike, cov: Any, background: str = "climatology"):
        if background not in ("climatology", "forecast"):
            raise ValueError(
                'OptInterp.background must be "climatology" (DAPPER\'s OptInterp: the '
                'climatological mean is the background every cycle) or "forecast" (the '
                f"forecast of the last analysis); got {background!r}."
            )
        self.mean, self.cov = _climatology_fields("OptInterp", mean, cov)
        self.background = background

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> Array:
        """The initial mean: `initial`, or the climatological mean when it is ``None``."""
        del key, model
        return _initial_mean("OptInterp", initial, self.mean)

    def step(
        self,
        key: PRNGKeyArray,
        state: Array,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[Array, fxp.CycleInfo]:
        """One static-gain analysis (see the class docstring)."""
        del key
        dtype = self.mean.dtype
        if self.background == "climatology":
            background = self.mean
        else:
            if isinstance(model.dynamics, fxp.AbstractStochasticDynamics):
                raise TypeError(
                    "OptInterp(background='forecast') forecasts the mean with deterministic "
                    "dynamics; this model's dynamics draw their own noise. Give the model the "
                    "deterministic part (StochasticDynamics.dynamics)."
                )
            background = jnp.asarray(model.dynamics(state, t_prev, t)).astype(dtype)
        an = _static_gain_analysis(background, self.cov, obs, model.obs_op, model.obs_noise)
        var_b = _variances(self.cov).astype(dtype)
        info = fxp.CycleInfo(
            forecast_mean=background,
            forecast_spread=_rms_spread(var_b),
            analysis_mean=an.mean,
            analysis_spread=_rms_spread(an.variance),
            log_likelihood=an.log_likelihood,
            innovation=an.innovation,
            finite=fxp.is_finite(background, an.mean, an.variance, an.log_likelihood),
            diagnostics=BaselineDiagnostics(var_b, an.variance),
        )
        return an.mean, info
