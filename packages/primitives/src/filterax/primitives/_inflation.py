"""Covariance inflation: multiplicative, additive, relaxation (RTPS/RTPP) and adaptive.

Tutorial 1.F / 6.B / 6.C. Pure functions act on ``(N_e, N_x)`` ensembles; the inflator modules
wrap them behind one interface, ``inflator(analysis, forecast=None, *, key=None) -> analysis``,
so an assimilation loop can apply any of them after the analysis. Factors and relaxation
coefficients are ordinary (dynamic) fields, reachable by ``jax.grad`` and ``jax.vmap``.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real, ScalarLike

from ._cycled import AbstractPostProcessor, CycleObservation
from ._validation import (
    as_float_parameter,
    check_ensemble,
    check_parameter,
    check_same_members,
    check_vector,
    parameter_converter,
)

__all__ = [
    "RTPP",
    "RTPS",
    "AbstractInflator",
    "AdaptiveInflator",
    "AdditiveInflator",
    "MultiplicativeInflator",
    "inflate_adaptive",
    "inflate_additive",
    "inflate_multiplicative",
    "inflate_rtpp",
    "inflate_rtps",
]


def _as_noise_param(x: Any) -> Any:
    # Operators stay operators (pytrees whose arrays grad reaches); numbers become arrays,
    # checked (also when traced): variances are finite and non-negative.
    if isinstance(x, lx.AbstractLinearOperator):
        return x
    return check_parameter(
        as_float_parameter(x), "AdditiveInflator.noise", low=0.0, allow_inf=False
    )


def _safe_sqrt(x: Array) -> Array:
    # Zero variances are legitimate (collapsed or unobserved directions); keep d sqrt / dx
    # finite there instead of inf * 0 = NaN in the chain rule.
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _check_scalar(x: Any, name: str) -> None:
    if jnp.ndim(x) != 0:
        raise ValueError(
            f"{name} must be a scalar; got shape {jnp.shape(x)}. To evaluate several values, "
            "jax.vmap over them."
        )


def _check_pair(analysis: Any, forecast: Any) -> None:
    check_ensemble(analysis, "analysis")
    check_ensemble(forecast, "forecast")
    check_same_members(analysis, forecast, "analysis", "forecast")
    if jnp.shape(analysis) != jnp.shape(forecast):
        raise ValueError(
            f"analysis and forecast must have the same shape (N_e, N_x); got "
            f"{jnp.shape(analysis)} and {jnp.shape(forecast)}."
        )


def inflate_multiplicative(
    X: Float[Array, "N_e N_x"], factor: ScalarLike
) -> Float[Array, "N_e N_x"]:
    """Multiplicative inflation of the anomalies around the unchanged mean.

    $X \\leftarrow \\bar x + \\lambda (X - \\bar x)$, so the sample covariance becomes
    $\\lambda^2 P$. This is DAPPER's `infl` convention: `factor` multiplies the *anomalies*
    (DAPPER's `infl=1.02` is `factor=1.02`, a covariance inflation of $1.02^2$).

    **Arguments:**

    - `X`: `(N_e, N_x)` ensemble.
    - `factor`: the anomaly factor $\\lambda > 0$ ($< 1$ deflates).

    **Returns:**

    The inflated `(N_e, N_x)` ensemble, with the same mean.

    Reference: Anderson & Anderson (1999), MWR 127, 2741-2758. DAPPER equivalent:
    `post_process(E, infl, rot=False)`.

    **Example:**

    ```python
    Xa = inflate_multiplicative(Xa, 1.02)
    ```
    """
    check_ensemble(X, "X")
    _check_scalar(factor, "factor")
    factor = check_parameter(factor, "factor", low=0.0, low_open=True, allow_inf=False)
    return _scale_anomalies(X, factor)


def _scale_anomalies(X: Float[Array, "N_e N_x"], factor: Any) -> Float[Array, "N_e N_x"]:
    # `inflate_multiplicative` without the checks, for callers whose factor was checked where
    # it was made (an inflator's field, checked by its converter): a traced re-check would be
    # a run-time callback in every compiled cycle.
    mean = X.mean(axis=0)
    return mean[None, :] + factor * (X - mean[None, :])


def inflate_additive(
    key: PRNGKeyArray,
    X: Float[Array, "N_e N_x"],
    noise: Real[ArrayLike, ""] | Real[ArrayLike, " N_x"] | lx.AbstractLinearOperator,
) -> Float[Array, "N_e N_x"]:
    """Additive inflation with Gaussian noise.

    $x_n \\leftarrow x_n + \\xi_n$, $\\xi_n \\sim \\mathcal N(0, Q)$ independently per member,
    adding $Q$ to the expected covariance. The noise is not re-centred, so the sample mean moves
    by $\\bar\\xi$ (as in Mitchell & Houtekamer 2000 and DAPPER's model-noise sampling).
    Same key, same result.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `X`: `(N_e, N_x)` ensemble.
    - `noise`: $Q$ as a scalar variance ($qI$), a vector of `(N_x,)` variances (diagonal $Q$),
      or a lineax operator. Diagonal operators are sampled through their diagonal; any other
      operator is materialised and factorised by Cholesky, so it must be positive definite.

    **Returns:**

    The perturbed `(N_e, N_x)` ensemble.

    Reference: Mitchell & Houtekamer (2000), MWR 128, 416-433.

    **Example:**

    ```python
    Xf = inflate_additive(key, Xf, lx.DiagonalLinearOperator(0.1 * jnp.ones(40)))
    ```
    """
    check_ensemble(X, "X")
    n_x = X.shape[1]
    z = jax.random.normal(key, X.shape, dtype=X.dtype)
    if isinstance(noise, lx.AbstractLinearOperator):
        if noise.in_size() != n_x or noise.out_size() != n_x:
            raise ValueError(
                f"noise operator must be ({n_x}, {n_x}) to match N_x={n_x}; got "
                f"({noise.out_size()}, {noise.in_size()})."
            )
        if lx.is_diagonal(noise):
            diag = lx.diagonal(noise)
            diag = check_parameter(diag, "noise variances", low=0.0, allow_inf=False)
            return X + z * _safe_sqrt(diag.astype(X.dtype))[None, :]
        chol = jnp.linalg.cholesky(noise.as_matrix().astype(X.dtype))
        return X + z @ chol.T
    try:
        q = jnp.asarray(noise)
    except TypeError:
        raise TypeError(
            "noise must be a scalar variance, a vector of variances or a lineax operator; got "
            f"{type(noise).__name__}."
        ) from None
    if not (jnp.issubdtype(q.dtype, jnp.integer) or jnp.issubdtype(q.dtype, jnp.floating)):
        raise TypeError(f"noise variances must be real numbers; got dtype {q.dtype}.")
    q = check_parameter(q, "noise variance", low=0.0, allow_inf=False)
    if q.ndim == 0:
        return X + z * _safe_sqrt(q.astype(X.dtype))
    if q.ndim == 1 and q.shape[0] == n_x:
        return X + z * _safe_sqrt(q.astype(X.dtype))[None, :]
    raise ValueError(
        f"noise must be a scalar variance, a ({n_x},) vector of variances or a lineax "
        f"operator; got an array of shape {q.shape}. Wrap a full covariance matrix as "
        "lx.MatrixLinearOperator(Q, lx.positive_semidefinite_tag)."
    )


def inflate_rtps(
    analysis: Float[Array, "N_e N_x"],
    forecast: Float[Array, "N_e N_x"],
    alpha: ScalarLike,
) -> Float[Array, "N_e N_x"]:
    """Relaxation to prior spread (RTPS), Whitaker & Hamill (2012).

    Per state variable $i$, with ensemble standard deviations $\\sigma^f_i, \\sigma^a_i$:
    $X'^a_{:, i} \\leftarrow X'^a_{:, i}\\,[\\alpha\\,\\sigma^f_i / \\sigma^a_i + 1 - \\alpha]$,
    mean unchanged, so $\\sigma^a_i \\leftarrow \\alpha \\sigma^f_i + (1 - \\alpha) \\sigma^a_i$.
    $\\alpha = 0$ is the identity, $\\alpha = 1$ restores the forecast spread exactly. Variables
    with $\\sigma^a_i = 0$ are left unchanged (their anomalies are zero; there is no direction to
    scale), with finite gradients.

    **Arguments:**

    - `analysis`: `(N_e, N_x)` analysis ensemble.
    - `forecast`: `(N_e, N_x)` forecast (prior) ensemble of the same cycle.
    - `alpha`: relaxation coefficient $\\alpha \\in [0, 1]$ (checked, also when traced).

    **Returns:**

    The relaxed `(N_e, N_x)` analysis ensemble.

    Reference: J. S. Whitaker and T. M. Hamill (2012), "Evaluating methods to account for
    system errors in ensemble data assimilation", MWR 140, 3078-3089.

    **Example:**

    ```python
    Xa = inflate_rtps(Xa, Xf, alpha=0.9)
    ```
    """
    _check_pair(analysis, forecast)
    _check_scalar(alpha, "alpha")
    alpha = check_parameter(alpha, "alpha", low=0.0, high=1.0)
    return _relax_spread(analysis, forecast, alpha)


def _relax_spread(analysis: Array, forecast: Array, alpha: Any) -> Array:
    # `inflate_rtps` without the checks (for `RTPS`, whose alpha its converter checked).
    mean_a = analysis.mean(axis=0)
    anom_a = analysis - mean_a[None, :]
    anom_f = forecast - forecast.mean(axis=0)[None, :]
    # The ratio sigma_f / sigma_a does not depend on the N or N-1 normalisation.
    sigma_a = _safe_sqrt(jnp.sum(anom_a**2, axis=0))
    sigma_f = _safe_sqrt(jnp.sum(anom_f**2, axis=0))
    spread = sigma_a > 0
    ratio = jnp.where(spread, sigma_f / jnp.where(spread, sigma_a, 1.0), 1.0)
    scale = alpha * ratio + (1.0 - alpha)
    return mean_a[None, :] + anom_a * scale[None, :]


def inflate_rtpp(
    analysis: Float[Array, "N_e N_x"],
    forecast: Float[Array, "N_e N_x"],
    alpha: ScalarLike,
) -> Float[Array, "N_e N_x"]:
    """Relaxation to prior perturbations (RTPP), Zhang, Snyder & Sun (2004).

    $X'^a \\leftarrow \\alpha X'^f + (1 - \\alpha) X'^a$ with the analysis mean unchanged.
    $\\alpha = 0$ is the identity; $\\alpha = 1$ replaces the analysis anomalies by the forecast
    anomalies. Member $n$ of the forecast must be the prior of member $n$ of the analysis (true
    for filters that transform the ensemble, not for ones that re-sample it).

    **Arguments:**

    - `analysis`: `(N_e, N_x)` analysis ensemble.
    - `forecast`: `(N_e, N_x)` forecast (prior) ensemble of the same cycle.
    - `alpha`: relaxation coefficient $\\alpha \\in [0, 1]$ (checked, also when traced).

    **Returns:**

    The relaxed `(N_e, N_x)` analysis ensemble.

    Reference: F. Zhang, C. Snyder and J. Sun (2004), "Impacts of initial estimate and
    observation availability on convective-scale data assimilation with an ensemble Kalman
    filter", MWR 132, 1238-1253.

    **Example:**

    ```python
    Xa = inflate_rtpp(Xa, Xf, alpha=0.5)
    ```
    """
    _check_pair(analysis, forecast)
    _check_scalar(alpha, "alpha")
    alpha = check_parameter(alpha, "alpha", low=0.0, high=1.0)
    return _relax_perturbations(analysis, forecast, alpha)


def _relax_perturbations(analysis: Array, forecast: Array, alpha: Any) -> Array:
    # `inflate_rtpp` without the checks (for `RTPP`, whose alpha its converter checked).
    mean_a = analysis.mean(axis=0)
    anom_a = analysis - mean_a[None, :]
    anom_f = forecast - forecast.mean(axis=0)[None, :]
    return mean_a[None, :] + alpha * anom_f + (1.0 - alpha) * anom_a


def inflate_adaptive(
    innovation: Float[Array, " N_y"],
    obs_anomalies: Float[Array, "N_e N_y"],
    obs_noise_variance: Real[ArrayLike, ""] | Real[ArrayLike, " N_y"] | lx.AbstractLinearOperator,
    prior_inflation: ScalarLike,
    prior_variance: ScalarLike,
    *,
    min_inflation: float | None = 1.0,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Spatially constant adaptive inflation: one Gaussian (Kalman) update of $\\lambda$.

    $\\lambda$ is the *covariance* inflation factor ($P^f \\leftarrow \\lambda P^f$, anomalies
    $\\times\\sqrt\\lambda$), estimated from the innovation statistics
    $\\mathbb E[d d^\\top] = \\lambda H P^f H^\\top + R$ (Desroziers et al. 2005), with
    $d = y - \\overline{H(x^f)}$ and $HP^fH^\\top = Y'^\\top Y' / (N_e - 1)$ from the
    *un-inflated* forecast. Over the $p$ observed entries (NaN innovations are skipped):

    1. Observation of the inflation (Li, Kalnay & Miyoshi 2009; Wang & Bishop 2003), with
       $T = \\operatorname{tr}(R^{-1} H P^f H^\\top) = \\sum_i (HP^fH^\\top)_{ii} / r_i$:
       $\\lambda^o = (d^\\top R^{-1} d - p) / T$.
    2. Its error variance from the central limit theorem (Miyoshi 2011), evaluated at the
       prior mean: $v^o = \\frac{2}{p}\\big(\\frac{\\lambda^b T + p}{T}\\big)^2$.
    3. Gaussian prior $\\mathcal N(\\lambda^b, v^b)$ times Gaussian likelihood (Miyoshi 2011's
       approximation of Anderson's 2007/2009 Bayesian update):
       $\\lambda^a = \\frac{v^o\\lambda^b + v^b\\lambda^o}{v^o + v^b}$,
       $v^a = \\frac{v^o v^b}{v^o + v^b}$.
    4. Optionally $\\lambda^a \\leftarrow \\max(\\lambda^a, \\lambda_{\\min})$.

    With no observed entry or zero forecast spread ($T = 0$) the prior is returned unchanged.
    $R$ enters only through its diagonal (the estimator assumes uncorrelated observation
    errors). Innovations larger than predicted by $HP^fH^\\top + R$ raise $\\lambda$, smaller
    ones lower it.

    **Arguments:**

    - `innovation`: `(N_y,)` innovation $d = y - \\overline{H(x^f)}$; NaN marks missing
      entries.
    - `obs_anomalies`: `(N_e, N_y)` forecast ensemble in observation space, $H(x^f_n)$, or its
      anomalies (it is centred here), from the forecast *before* this inflation is applied.
    - `obs_noise_variance`: observation-error variances $r_i > 0$: a scalar, an `(N_y,)`
      vector, or a diagonal lineax operator.
    - `prior_inflation`: $\\lambda^b$.
    - `prior_variance`: $v^b > 0$.
    - `min_inflation`: lower clamp $\\lambda_{\\min}$ for the posterior mean (default 1.0, i.e.
      never deflate); `None` disables clamping.

    **Returns:**

    `(inflation, variance)`: the posterior mean $\\lambda^a$ and variance $v^a$.

    References: J. L. Anderson (2007), "An adaptive covariance inflation error correction
    algorithm for ensemble filters", Tellus A 59, 210-224; J. L. Anderson (2009), Tellus A 61,
    72-83; H. Li, E. Kalnay and T. Miyoshi (2009), QJRMS 135, 523-533; T. Miyoshi (2011),
    "The Gaussian approach to adaptive covariance inflation and its implementation with the
    local ensemble transform Kalman filter", MWR 139, 1519-1535. DAPPER has no built-in
    equivalent (its `EAKF_A07` experiments implement Anderson 2007).

    **Example:**

    ```python
    Yf = jax.vmap(obs_op)(Xf)
    lam, var = inflate_adaptive(y - Yf.mean(0), Yf, 1.0, prior_inflation=1.0,
                                prior_variance=0.1**2)
    Xf = inflate_multiplicative(Xf, jnp.sqrt(lam))
    ```
    """
    check_vector(innovation, "innovation")
    check_ensemble(obs_anomalies, "obs_anomalies")
    n_y = innovation.shape[0]
    if obs_anomalies.shape[1] != n_y:
        raise ValueError(
            f"obs_anomalies must be (N_e, N_y) with N_y={n_y} (the length of innovation); got "
            f"{obs_anomalies.shape}."
        )
    if isinstance(obs_noise_variance, lx.AbstractLinearOperator):
        if not lx.is_diagonal(obs_noise_variance):
            raise TypeError(
                "inflate_adaptive uses only the diagonal of R; pass the vector of observation "
                "variances or a lx.DiagonalLinearOperator."
            )
        obs_noise_variance = lx.diagonal(obs_noise_variance)
    r = jnp.asarray(obs_noise_variance)
    if r.ndim > 1 or (r.ndim == 1 and r.shape[0] != n_y):
        raise ValueError(
            f"obs_noise_variance must be a scalar or a ({n_y},) vector of variances; got shape "
            f"{r.shape}."
        )
    r = check_parameter(r, "obs_noise_variance", low=0.0, low_open=True, traced=False)
    _check_scalar(prior_inflation, "prior_inflation")
    _check_scalar(prior_variance, "prior_variance")
    prior_variance = check_parameter(
        prior_variance, "prior_variance", low=0.0, low_open=True, allow_inf=False
    )

    dtype = jnp.result_type(innovation, obs_anomalies, r, prior_inflation, prior_variance)
    d = innovation.astype(dtype)
    Y = obs_anomalies.astype(dtype)
    r = jnp.broadcast_to(r.astype(dtype), (n_y,))
    lam_b = jnp.asarray(prior_inflation, dtype=dtype)
    v_b = jnp.asarray(prior_variance, dtype=dtype)

    observed = jnp.isfinite(d)
    d = jnp.where(observed, d, 0.0)
    Y = jnp.where(observed[None, :], Y, 0.0)
    anomalies = Y - Y.mean(axis=0)[None, :]
    forecast_var = jnp.sum(anomalies**2, axis=0) / (Y.shape[0] - 1)
    trace = jnp.sum(jnp.where(observed, forecast_var / r, 0.0))
    misfit = jnp.sum(jnp.where(observed, d**2 / r, 0.0))
    p = jnp.sum(observed).astype(dtype)

    valid = (p > 0) & (trace > 0)
    safe_trace = jnp.where(valid, trace, 1.0)
    safe_p = jnp.where(valid, p, 1.0)
    lam_o = (misfit - safe_p) / safe_trace
    v_o = 2.0 / safe_p * ((lam_b * safe_trace + safe_p) / safe_trace) ** 2
    lam_a = (v_o * lam_b + v_b * lam_o) / (v_o + v_b)
    v_a = v_o * v_b / (v_o + v_b)
    lam_a = jnp.where(valid, lam_a, lam_b)
    v_a = jnp.where(valid, v_a, v_b)
    if min_inflation is not None:
        lam_a = jnp.maximum(lam_a, jnp.asarray(min_inflation, dtype=dtype))
    return lam_a, v_a


class AbstractInflator(AbstractPostProcessor):
    """A stateless inflation scheme applied to the analysis ensemble.

    `inflator(analysis, forecast=None, *, key=None) -> analysis`. Relaxation schemes need the
    forecast of the same cycle; stochastic ones need a key. Subclass it and implement
    `__call__` to add a scheme; as an `AbstractPostProcessor` it then has no state (`init`
    returns ``None``) and `apply` calls it, so it can sit in any ensemble method's
    post-processing chain. The stateful `AdaptiveInflator` implements the post-processor
    protocol itself.
    """

    @abc.abstractmethod
    def __call__(
        self,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "N_e N_x"]:
        """Return the inflated analysis ensemble."""

    def init(self, ensemble: Float[Array, "N_e N_x"]) -> None:
        """No state: the scheme is fully described by its fields."""
        del ensemble
        return None

    def apply(
        self,
        key: PRNGKeyArray,
        state: None,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"],
        cycle: CycleObservation,
    ) -> tuple[Float[Array, "N_e N_x"], None]:
        """``(self(analysis, forecast, key=key), state)``."""
        del cycle
        return self(analysis, forecast, key=key), state


class MultiplicativeInflator(AbstractInflator):
    """Multiply the anomalies by `factor` (DAPPER's `infl`); see `inflate_multiplicative`.

    **Example:**

    ```python
    Xa = MultiplicativeInflator(1.02)(Xa)
    ```
    """

    factor: Float[ArrayLike, ""] = eqx.field(
        converter=parameter_converter(
            "MultiplicativeInflator.factor", low=0.0, low_open=True, allow_inf=False
        )
    )

    def __check_init__(self) -> None:
        _check_scalar(self.factor, "MultiplicativeInflator.factor")

    def __call__(
        self,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "N_e N_x"]:
        check_ensemble(analysis, "analysis")
        return _scale_anomalies(analysis, self.factor)


class AdditiveInflator(AbstractInflator):
    """Add $\\mathcal N(0, Q)$ noise to every member; see `inflate_additive`. Needs `key`.

    **Example:**

    ```python
    Xa = AdditiveInflator(0.01)(Xa, key=jax.random.key(0))
    ```
    """

    noise: Any = eqx.field(converter=_as_noise_param)

    def __call__(
        self,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "N_e N_x"]:
        if key is None:
            raise ValueError(
                "AdditiveInflator draws random noise: pass key=... (e.g. "
                "jax.random.fold_in(key, step)) when calling it."
            )
        return inflate_additive(key, analysis, self.noise)


class RTPS(AbstractInflator):
    """Relaxation to prior spread with coefficient `alpha`; see `inflate_rtps`. Needs the
    forecast.

    **Example:**

    ```python
    Xa = RTPS(0.9)(Xa, Xf)
    ```
    """

    alpha: Float[ArrayLike, ""] = eqx.field(
        converter=parameter_converter("RTPS.alpha", low=0.0, high=1.0)
    )

    def __check_init__(self) -> None:
        _check_scalar(self.alpha, "RTPS.alpha")

    def __call__(
        self,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "N_e N_x"]:
        if forecast is None:
            raise ValueError(
                "RTPS relaxes towards the forecast spread: call it as rtps(analysis, forecast)."
            )
        _check_pair(analysis, forecast)
        return _relax_spread(analysis, forecast, self.alpha)


class RTPP(AbstractInflator):
    """Relaxation to prior perturbations with coefficient `alpha`; see `inflate_rtpp`. Needs
    the forecast.

    **Example:**

    ```python
    Xa = RTPP(0.5)(Xa, Xf)
    ```
    """

    alpha: Float[ArrayLike, ""] = eqx.field(
        converter=parameter_converter("RTPP.alpha", low=0.0, high=1.0)
    )

    def __check_init__(self) -> None:
        _check_scalar(self.alpha, "RTPP.alpha")

    def __call__(
        self,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "N_e N_x"]:
        if forecast is None:
            raise ValueError(
                "RTPP relaxes towards the forecast perturbations: call it as "
                "rtpp(analysis, forecast)."
            )
        _check_pair(analysis, forecast)
        return _relax_perturbations(analysis, forecast, self.alpha)


class AdaptiveInflator(AbstractPostProcessor):
    """Adaptive, spatially constant multiplicative inflation carried as module state.

    `inflation` is the current estimate of the *covariance* factor $\\lambda$ (anomalies are
    multiplied by $\\sqrt\\lambda$ when applied) and `inflation_variance` its variance $v$.
    `update(innovation, obs_anomalies, obs_noise_variance)` returns a new inflator holding the
    posterior of `inflate_adaptive`; being a pytree, the inflator can sit in a `lax.scan`
    carry. By default the variance is kept fixed (`update_variance=False`): the posterior
    variance otherwise shrinks like 1/cycles and the estimate stops adapting (Anderson 2009
    bounds it from below for the same reason).

    Typical cycle (prior inflation, Anderson's placement):

    ```python
    infl = AdaptiveInflator(inflation=1.0, inflation_variance=0.1**2)
    # inside the loop, with Xf the un-inflated forecast and Yf = vmap(obs_op)(Xf):
    infl = infl.update(y - Yf.mean(0), Yf, r)
    Xf = infl(Xf)  # anomalies * sqrt(inflation), then run the analysis
    ```

    **Fields:**

    - `inflation`: $\\lambda$ (dynamic).
    - `inflation_variance`: $v > 0$ (dynamic).
    - `min_inflation`: lower clamp for $\\lambda$ after each update (static; `None` disables).
    - `update_variance`: store the posterior variance after an update (static).
    """

    inflation: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float_parameter)
    inflation_variance: Float[ArrayLike, ""] = eqx.field(
        default=0.1**2, converter=as_float_parameter
    )
    min_inflation: float | None = eqx.field(static=True, default=1.0)
    update_variance: bool = eqx.field(static=True, default=False)

    def __check_init__(self) -> None:
        _check_scalar(self.inflation, "AdaptiveInflator.inflation")
        _check_scalar(self.inflation_variance, "AdaptiveInflator.inflation_variance")
        check_parameter(
            self.inflation, "AdaptiveInflator.inflation", low=0.0, low_open=True, allow_inf=False
        )
        check_parameter(
            self.inflation_variance,
            "AdaptiveInflator.inflation_variance",
            low=0.0,
            low_open=True,
            allow_inf=False,
        )

    def __call__(
        self,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "N_e N_x"]:
        # The inflation is a positive estimate (sqrt of a positive mean); a NaN one makes a
        # non-finite ensemble, which the driver reports as a failed cycle.
        check_ensemble(analysis, "analysis")
        return _scale_anomalies(analysis, _safe_sqrt(jnp.asarray(self.inflation)))

    def update(
        self,
        innovation: Float[Array, " N_y"],
        obs_anomalies: Float[Array, "N_e N_y"],
        obs_noise_variance: Real[ArrayLike, ""]
        | Real[ArrayLike, " N_y"]
        | lx.AbstractLinearOperator,
    ) -> AdaptiveInflator:
        """Return a new inflator holding the posterior estimate (see `inflate_adaptive`)."""
        inflation, variance = inflate_adaptive(
            innovation,
            obs_anomalies,
            obs_noise_variance,
            self.inflation,
            self.inflation_variance,
            min_inflation=self.min_inflation,
        )
        if not self.update_variance:
            variance = jnp.asarray(self.inflation_variance, dtype=variance.dtype)
        return eqx.tree_at(
            lambda s: (s.inflation, s.inflation_variance), self, (inflation, variance)
        )

    def init(self, ensemble: Float[Array, "N_e N_x"]) -> AdaptiveInflator:
        """The state is the inflator itself: its current estimate and variance."""
        del ensemble
        return self

    def apply(
        self,
        key: PRNGKeyArray,
        state: AdaptiveInflator,
        analysis: Float[Array, "N_e N_x"],
        forecast: Float[Array, "N_e N_x"],
        cycle: CycleObservation,
    ) -> tuple[Float[Array, "N_e N_x"], AdaptiveInflator]:
        """Update the estimate from the cycle's forecast innovation (Anderson's prior
        placement: `update` with ``y - mean H(x^f)``, ``H(X^f)`` and ``R``), then inflate the
        analysis with it; the new estimate is the new state."""
        inflator = state.update(cycle.innovation, cycle.observed_forecast, cycle.obs_noise)
        return inflator(analysis, forecast, key=key), inflator
