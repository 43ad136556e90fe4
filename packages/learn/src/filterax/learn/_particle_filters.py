r"""Particle filters as cycled methods: bootstrap, auxiliary, optimal-proposal, EnKF-proposal.

Every filter carries weighted particles (`ParticleState`: particles and log-weights, DESIGN
§6) from one observation time to the next and reports, each cycle, the estimate of
``log p(y_k | y_{<k})`` (`filterax.primitives.CycleInfo.log_likelihood`), so that the sum
over a `filterax.filters.run` is the log-evidence estimate ``log p̂(y_{1:T})``.

Shared conventions (DAPPER's ``da_methods/particle.py``):

- Likelihood ``g(y | x) = N(y; h(x), R)`` over the observed entries only: NaN entries of
  ``y`` are missing and carry no weight; a cycle with nothing observed leaves the weights.
- Means and spreads are weighted: ``m = sum_i W_i x_i`` and DAPPER's ``rmv`` with the
  weighted variance ``sum_i W_i (x_i - m)^2 / (1 - sum_i W_i^2)`` (the unbiased weighting;
  ``N/(N-1)`` for uniform weights). The analysis statistics and the saved ``analysis`` are
  those of the reweighted particles *before* resampling (DAPPER assesses them there); the
  state carried to the next cycle is the resampled (and jittered) one.
- Resampling is triggered when ``ESS < ess_threshold * N`` (`effective_sample_size`);
  ``ess_threshold >= 1`` resamples every cycle (DAPPER's ``NER`` with its ``N_eff <= N*NER``
  rule: DAPPER's default ``NER = 1``; ours is 0.5).
- Regularisation (Musso, Oudjane & Le Gland 2001; DAPPER's ``reg``/``nuj``): after
  resampling, particles are jittered by ``reg * h * C^{1/2} z`` with Scott's bandwidth
  ``h = N^{-1/(N_x+4)}`` and ``C`` the weighted covariance of the pre-resampling particles
  (``nuj=True``: only particles whose ancestor was drawn more than once move). This biases
  the filter (the bias vanishes as ``N -> inf``) but keeps deterministic models alive.
- Differentiable use (`resampling`): ``"standard"`` (the ancestors and new uniform weights
  carry no gradient; particles keep their path-wise gradient), ``"stop_gradient"`` (Ścibior &
  Wood 2021, `stop_gradient_resample`: unbiased score-function gradient of the resampling),
  ``"soft"`` (Karkus et al. 2018, `soft_resample` with ``soft_alpha``).
- Failure: a cycle whose every particle has likelihood zero (``logsumexp = -inf``), or whose
  particles or log-likelihood are not finite, reports ``finite=False``; `filterax.filters.run`
  then freezes the state and flags the cycle (status 1) — never a plausible number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray, Real

import filterax.primitives as fxp

from ._expected_loglik import linearize_obs, observation_matrix
from ._resampling import (
    effective_sample_size,
    multinomial_resample,
    residual_resample,
    soft_resample,
    stop_gradient_resample,
    stratified_resample,
    systematic_resample,
)

__all__ = [
    "RESAMPLERS",
    "RESAMPLING_MODES",
    "AuxiliaryPF",
    "BootstrapPF",
    "EnKFProposalPF",
    "OptimalProposalPF",
    "ParticleDiagnostics",
    "ParticleState",
]

RESAMPLERS: dict[str, Callable[..., Array]] = {
    "multinomial": multinomial_resample,
    "stratified": stratified_resample,
    "systematic": systematic_resample,
    "residual": residual_resample,
}
RESAMPLING_MODES = ("standard", "stop_gradient", "soft")

_HIGHEST = jax.lax.Precision.HIGHEST
_LOG_2PI = math.log(2.0 * math.pi)


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


class ParticleState(eqx.Module):
    """Weighted particles: the State of every particle filter here (and its saved beliefs).

    **Fields:**

    - `particles`: ``(N, N_x)``.
    - `log_weights`: ``(N,)``, normalised in value (``logsumexp = 0``; the normaliser is a
      stop-gradient so that gradients of the weights survive).
    """

    particles: Float[Array, "N N_x"]
    log_weights: Float[Array, " N"]


class ParticleDiagnostics(eqx.Module):
    """Per-cycle rows of a particle filter (stacked by `filterax.filters.run`).

    **Fields:**

    - `ess`: the effective sample size of the weights the resampling decision saw.
    - `resampled`: whether the cycle resampled.
    """

    ess: Real[Array, ""]
    resampled: Bool[Array, ""]


# ---------------------------------------------------------------- checks and shared pieces


def _check_common(owner: str, ess_threshold: Any, resampler: Any, resampling: str, alpha: Any):
    if not (callable(resampler) or resampler in RESAMPLERS):
        raise ValueError(
            f"{owner}: resampler must be one of {tuple(RESAMPLERS)} or a function "
            f"(key, log_weights, n) -> ancestors; got {resampler!r}."
        )
    if resampling not in RESAMPLING_MODES:
        raise ValueError(
            f"{owner}: resampling must be one of {RESAMPLING_MODES} ('standard' for plain "
            "filtering, 'stop_gradient' or 'soft' for gradients through the resampling); got "
            f"{resampling!r}."
        )
    value = fxp.concrete_value(ess_threshold)
    if value is not None and (value.ndim != 0 or not np.isfinite(value) or value < 0):
        raise ValueError(
            f"{owner}: ess_threshold is a fraction of N (resample when ESS < ess_threshold * "
            f"N; 1.0 = every cycle, DAPPER's NER), a finite scalar >= 0; got {ess_threshold!r}."
        )
    value = fxp.concrete_value(alpha)
    if value is not None and (value.ndim != 0 or not 0.0 <= float(value) <= 1.0):
        raise ValueError(
            f"{owner}: soft_alpha is the weight of the particle weights in the soft-resampling "
            f"mixture, a scalar in [0, 1]; got {alpha!r}."
        )


def _check_nonnegative(owner: str, name: str, value: Any, meaning: str) -> None:
    v = fxp.concrete_value(value)
    if v is not None and (v.ndim != 0 or not np.isfinite(v) or v < 0):
        raise ValueError(
            f"{owner}: {name} ({meaning}) must be a finite scalar >= 0; got {value!r}."
        )


def _init_particles(owner: str, initial: Any) -> ParticleState:
    if isinstance(initial, ParticleState):
        particles, log_weights = jnp.asarray(initial.particles), jnp.asarray(initial.log_weights)
    else:
        particles = jnp.asarray(initial)
        log_weights = None
    if particles.ndim != 2 or particles.shape[0] < 2:
        raise ValueError(
            f"{owner}: the initial condition is an (N, N_x) ensemble of N >= 2 particles drawn "
            f"from the prior (e.g. ssm.initial_ensemble(key, 500)); got shape {particles.shape}."
        )
    if not jnp.issubdtype(particles.dtype, jnp.floating):
        raise TypeError(
            f"{owner}: the initial particles must be floating point; got dtype "
            f"{particles.dtype}. Cast them with .astype(jnp.float64)."
        )
    n = particles.shape[0]
    if log_weights is None:
        log_weights = jnp.full((n,), -math.log(n), particles.dtype)
    elif log_weights.shape != (n,):
        raise ValueError(
            f"{owner}: ParticleState.log_weights must have shape ({n},); got {log_weights.shape}."
        )
    return ParticleState(particles, log_weights.astype(particles.dtype))


def _deterministic_dynamics(owner: str, model: fxp.AbstractModel) -> Callable[..., Any]:
    if isinstance(model.dynamics, fxp.AbstractStochasticDynamics):
        raise TypeError(
            f"{owner}: this filter needs the deterministic part of the dynamics (its proposal "
            "uses the transition density N(x; M(x_prev), Q)), but the model's dynamics draws "
            "its own noise (an AbstractStochasticDynamics). Pass the deterministic dynamics and "
            "give the noise covariance as process_noise, or use BootstrapPF."
        )
    return model.dynamics


def _flow(owner: str, model: fxp.AbstractModel, particles: Array, t_prev, t) -> Array:
    """``M(x_i; t_prev, t)`` for every particle (no process noise)."""
    dynamics = _deterministic_dynamics(owner, model)
    out = jax.vmap(dynamics, in_axes=(0, None, None))(particles, t_prev, t)
    return _checked_forecast(owner, jnp.asarray(out), particles)


def _checked_forecast(owner: str, out: Array, particles: Array) -> Array:
    if out.shape != particles.shape:
        raise ValueError(
            f"{owner}: dynamics(x, t0, t1) must return a state of shape {particles.shape[1:]} "
            f"(like one particle); it returned shape {out.shape[1:]}."
        )
    return out.astype(particles.dtype)


def _noise_matrix(owner: str, noise: Any, n: int, dtype: Any, name: str) -> Array | None:
    if noise is None:
        return None
    try:
        op = fxp.as_noise_operator(noise, n, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}: model.{name}: {err}") from None
    return op.as_matrix().astype(dtype)


def _psd_root(cov: Array) -> Array:
    """``L`` with ``L L^T = cov`` for a symmetric PSD matrix (eigenvalues clipped at 0), so a
    singular covariance (no noise in some directions) is sampled exactly."""
    vals, vecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
    return vecs * jnp.sqrt(jnp.maximum(vals, 0.0))[None, :]


def _process_root(owner: str, model: fxp.AbstractModel, n: int, dtype: Any) -> Array | None:
    """``L`` with ``L L^T = Q`` (``model.process_noise``), ``None`` without process noise: the
    square root of a diagonal, else the Cholesky factor (differentiable either way)."""
    if model.process_noise is None:
        return None
    try:
        op = fxp.as_noise_operator(model.process_noise, n, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}: model.process_noise: {err}") from None
    if lx.is_diagonal(op):
        return jnp.diag(jnp.sqrt(lx.diagonal(op).astype(dtype)))
    return jnp.linalg.cholesky(op.as_matrix().astype(dtype))


def _stopped_cov_root(x: Array, lw: Array) -> Array:
    """A PSD root of the weighted covariance of ``x``, as a stop-gradient."""
    c12 = jax.lax.stop_gradient(_weighted_root(x, lw))
    return _psd_root(_mm(c12.T, c12))


def _weights(log_weights: Array) -> Array:
    return jax.nn.softmax(log_weights)


def _unbias(w: Array) -> Array:
    """DAPPER's ``unbias_var``: ``1 / (1 - sum w^2)``, 1 when the weights are degenerate."""
    s2 = jnp.sum(w * w)
    return jnp.where(s2 < 1.0 - 1e-12, 1.0 / jnp.maximum(1.0 - s2, 1e-12), 1.0)


def _weighted_mean_spread(x: Array, lw: Array, extra_var: Array | None = None):
    w = _weights(lw)
    mean = _mm(w, x)
    a = x - mean[None, :]
    var = _mm(w, a * a) * _unbias(w)
    if extra_var is not None:
        var = var + extra_var
    return mean, jnp.sqrt(jnp.maximum(jnp.mean(var), 0.0))


def _weighted_root(x: Array, lw: Array) -> Array:
    """DAPPER's ``raw_C12``: rows ``sqrt(ub w_i) (x_i - m)`` with ``C12^T C12`` the weighted
    covariance (uniform weights when degenerate)."""
    w = _weights(jax.lax.stop_gradient(lw))
    degenerate = jnp.sum(w * w) >= 1.0 - 1e-12
    w = jnp.where(degenerate, jnp.full_like(w, 1.0 / w.shape[0]), w)
    mean = _mm(w, x)
    return jnp.sqrt(_unbias(w) * w)[:, None] * (x - mean[None, :])


def _bandwidth(n: int, n_x: int) -> float:
    """Scott's rule-of-thumb bandwidth ``N^{-1/(N_x+4)}`` (DAPPER's ``auto_bandw``)."""
    return float(n) ** (-1.0 / (n_x + 4))


def _observe(owner: str, model: fxp.AbstractModel, particles: Array, obs: Array) -> Array:
    observed = fxp.observe_ensemble(model, particles).astype(particles.dtype)
    if observed.shape[1:] != obs.shape:
        raise ValueError(
            f"{owner}: obs_op maps one particle to shape {observed.shape[1:]}, but the "
            f"observations have N_y={obs.shape[0]} entries per time. Pass observations with one "
            "column per entry of obs_op(x), or the matching observation operator."
        )
    return observed


def _gaussian_loglik(residual: Array, chol: Array, half_logdet: Array, n_obs: Array) -> Array:
    """``log N(r_i; 0, L L^T)`` for each row ``r_i`` (zero rows at missing entries)."""
    z = jsl.solve_triangular(chol, residual.T, lower=True)
    return -0.5 * jnp.sum(z * z, axis=0) - half_logdet - 0.5 * n_obs * _LOG_2PI


def _obs_loglik(owner: str, model: fxp.AbstractModel, observed: Array, obs: Array) -> Array:
    """``log g(y | x_i)`` over the observed entries of ``y`` (missing ones carry no weight)."""
    try:
        lik = fxp.GaussianObsLikelihood.build(obs, model.obs_noise, observed.dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}: obs_noise: {err}") from None
    return lik.log_density_rows(observed)


def _masked_obs_noise(owner: str, model: fxp.AbstractModel, mask: Array, dtype: Any) -> Array:
    n_y = mask.shape[0]
    try:
        op = fxp.as_noise_operator(model.obs_noise, n_y, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}: obs_noise: {err}") from None
    op = fxp.mask_noise(op, mask)
    if lx.is_diagonal(op):
        return jnp.diag(lx.diagonal(op).astype(dtype))
    return op.as_matrix().astype(dtype)


def _normalise(lw: Array) -> Array:
    return lw - jax.lax.stop_gradient(jax.nn.logsumexp(lw))


class _Resampled(eqx.Module):
    particles: Array
    log_weights: Array
    ancestors: Array
    ess: Array
    resampled: Array


def _resample_move(
    filt: Any,
    key: PRNGKeyArray,
    particles: Array,
    lw: Array,
    always: bool = False,
) -> _Resampled:
    """Resample (when the ESS rule or `always` says so) and jitter (``reg > 0``).

    The resample-jitter branch runs under `jax.lax.cond`, so a cycle that keeps its weights
    draws no jitter and gathers nothing (under `jax.vmap` both branches run and are selected;
    the results are the same)."""
    n, n_x = particles.shape
    k_rs, k_jit = jax.random.split(key)
    resampler = filt.resampler
    if not callable(resampler):
        resampler = RESAMPLERS[resampler]
    ess = effective_sample_size(lw)
    if always:
        do = jnp.asarray(True)
    else:
        threshold = jnp.asarray(filt.ess_threshold, lw.dtype)
        do = (ess < threshold * n) | (threshold >= 1.0)
    reg = jnp.asarray(filt.reg, particles.dtype)

    def resample(particles: Array, lw: Array, reg: Array):
        if filt.resampling == "stop_gradient":
            ancestors, new_lw = stop_gradient_resample(k_rs, lw, n, resampler)
        elif filt.resampling == "soft":
            ancestors, new_lw = soft_resample(k_rs, lw, n, filt.soft_alpha, resampler)
        else:
            ancestors = resampler(k_rs, lw, n)
            new_lw = jnp.full_like(lw, -math.log(n))
        new = particles[ancestors]
        # DAPPER's regularize: jitter ~ N(0, (reg h)^2 C), C = C12^T C12 the weighted
        # covariance; drawn through a PSD root of the (N_x, N_x) C, O(N N_x) per cycle (not
        # DAPPER's N x N). The kernel's shape is a stop-gradient (an eigendecomposition has
        # no usable gradient at repeated eigenvalues); the gradient with respect to `reg` is
        # kept.
        root = reg * _bandwidth(n, n_x) * _stopped_cov_root(particles, lw)
        jitter = _mm(jax.random.normal(k_jit, (n, n_x), particles.dtype), root.T)
        if filt.nuj:
            counts = jnp.zeros(n, jnp.int32).at[ancestors].add(1)
            jitter = jnp.where((counts[ancestors] > 1)[:, None], jitter, 0.0)
        return new + jitter, new_lw, ancestors.astype(jnp.int32)

    def keep(particles: Array, lw: Array, reg: Array):
        del reg
        return particles, lw, jnp.arange(n, dtype=jnp.int32)

    if always:
        new, new_lw, ancestors = resample(particles, lw, reg)
    else:
        new, new_lw, ancestors = jax.lax.cond(do, resample, keep, particles, lw, reg)
    return _Resampled(
        particles=new,
        log_weights=_normalise(new_lw),
        ancestors=ancestors,
        ess=ess,
        resampled=do,
    )


def _cycle_info(
    forecast: ParticleState,
    analysis: ParticleState,
    forecast_extra_var: Array | None,
    increment: Array,
    innovation: Array,
    resampled: _Resampled,
) -> fxp.CycleInfo:
    f_mean, f_spread = _weighted_mean_spread(
        forecast.particles, forecast.log_weights, forecast_extra_var
    )
    a_mean, a_spread = _weighted_mean_spread(analysis.particles, analysis.log_weights)
    finite = (
        jnp.isfinite(increment)
        & fxp.is_finite(forecast.particles, analysis.particles, resampled.particles)
        & jnp.all(jnp.isfinite(resampled.log_weights) | (resampled.log_weights == -jnp.inf))
    )
    return fxp.CycleInfo(
        forecast_mean=f_mean,
        forecast_spread=f_spread,
        analysis_mean=a_mean,
        analysis_spread=a_spread,
        log_likelihood=increment,
        innovation=innovation,
        finite=finite,
        forecast=forecast,
        analysis=analysis,
        diagnostics=ParticleDiagnostics(resampled.ess, resampled.resampled),
    )


def _innovation(obs: Array, observed: Array, lw: Array) -> Array:
    return obs - _mm(_weights(lw), observed)


def _increment(new_lw: Array, old_lw: Array) -> Array:
    """``log sum_i W_i^{old} w_i`` with ``new = old + log w``: ``log p̂(y_k | y_{<k})``."""
    return jax.nn.logsumexp(new_lw) - jax.nn.logsumexp(old_lw)


def _linear_obs_matrix(owner: str, model: fxp.AbstractModel, n: int, dtype: Any) -> Array:
    matrix = observation_matrix(model.obs_op, n, dtype)
    if matrix is None:
        raise TypeError(
            f"{owner}: the optimal proposal is exact only for a LINEAR observation operator: "
            "pass obs_op as an (N_y, N_x) matrix, a lineax operator or a filterax linear "
            "operator (IdentityObs, PartialObs, ...); for a nonlinear obs_op use "
            "EnKFProposalPF or BootstrapPF."
        )
    return matrix


def _effective_noise(
    owner: str, model: fxp.AbstractModel, flow: Array, lw: Array, qs: Any
) -> Array:
    """``Q + (qs h)^2 C_w``: the model's process noise plus DAPPER's ``Qs`` regularisation."""
    n, n_x = flow.shape
    q = _noise_matrix(owner, model.process_noise, n_x, flow.dtype, "process_noise")
    root = jnp.asarray(qs, flow.dtype) * _bandwidth(n, n_x) * _weighted_root(flow, lw)
    q_reg = _mm(root.T, root)
    return q_reg if q is None else q + q_reg


# ---------------------------------------------------------------- the filters


class BootstrapPF(fxp.AbstractCycledMethod):
    r"""The bootstrap particle filter (SIR), with optional regularisation: a cycled method.

    Cycle ``k`` (observation ``y_k``; NaN entries missing):

    $$x_k^i = \mathcal M(x_{k-1}^i) + \xi^i,\ \xi^i\sim N(0, Q),\qquad
    \log w_k^i = \log w_{k-1}^i + \log g(y_k\mid x_k^i),$$

    $$\log \hat p(y_k\mid y_{<k}) = \operatorname{logsumexp}_i(\log w_k^i)
    - \operatorname{logsumexp}_i(\log w_{k-1}^i),$$

    then resample when ``ESS < ess_threshold · N`` (and jitter with ``reg > 0``, the
    regularised PF of Musso, Oudjane & Le Gland 2001). The forecast is
    `filterax.primitives.forecast_ensemble` (the model's dynamics, stochastic dynamics
    included, plus ``process_noise``). The product of the increments is the unbiased SMC
    estimate of ``p(y_{1:T})`` (Del Moral 2004).

    **Arguments:**

    - `ess_threshold`: resample when ``ESS < ess_threshold · N`` (default 0.5; ``>= 1``:
      every cycle, DAPPER's ``NER=1``).
    - `resampler`: ``"systematic"`` (default), ``"stratified"``, ``"residual"``,
      ``"multinomial"`` or a function ``(key, log_weights, n) -> ancestors`` (static).
    - `resampling`: ``"standard"``, ``"stop_gradient"`` or ``"soft"`` (module docstring).
    - `soft_alpha`: the mixture weight of ``"soft"`` resampling (default 0.5).
    - `reg`: the regularisation jitter scale (DAPPER's ``reg``; 0 = none).
    - `nuj`: jitter only duplicated particles (DAPPER's ``nuj``, default ``True``; static).

    **Initial condition:** an ``(N, N_x)`` ensemble from the prior (uniform weights), or a
    `ParticleState`.

    **Reference:** Gordon, Salmond & Smith (1993), *Novel approach to nonlinear/non-Gaussian
    Bayesian state estimation*, IEE Proc. F 140; Musso, Oudjane & Le Gland (2001), in
    *Sequential Monte Carlo Methods in Practice*, ch. 12. DAPPER:
    ``PartFilt(N, NER, resampl, reg, nuj)`` (``qroot``/``wroot`` are not implemented).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import filterax.filters as ff, filterax.primitives as fxp
    from filterax.learn import BootstrapPF

    model = fxp.Model(lambda x, t0, t1: 0.9 * x, fxp.IdentityObs(), 0.5, process_noise=0.1)
    x0 = jax.random.normal(jax.random.key(0), (500, 2))
    out = ff.run(BootstrapPF(), model, x0, jnp.ones((10, 2)), jnp.arange(1.0, 11.0),
                 key=jax.random.key(1))
    out.log_likelihood.sum()  # log p̂(y_{1:10})
    ```
    """

    ess_threshold: float | Array = 0.5
    resampler: Any = eqx.field(static=True, default="systematic")
    resampling: str = eqx.field(static=True, default="standard")
    soft_alpha: float | Array = 0.5
    reg: float | Array = 0.0
    nuj: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        _check_common(
            "BootstrapPF", self.ess_threshold, self.resampler, self.resampling, self.soft_alpha
        )
        _check_nonnegative("BootstrapPF", "reg", self.reg, "the regularisation jitter scale")

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> ParticleState:
        """Uniformly weighted particles from the ``(N, N_x)`` initial ensemble."""
        del key, model
        return _init_particles("BootstrapPF", initial)

    def step(
        self,
        key: PRNGKeyArray,
        state: ParticleState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[ParticleState, fxp.CycleInfo]:
        """Forecast, reweight, resample-move (see the class docstring)."""
        owner = "BootstrapPF"
        k_fc, k_rs = jax.random.split(key)
        x = state.particles
        forecast = _checked_forecast(owner, fxp.forecast_ensemble(model, k_fc, x, t_prev, t), x)
        obs = jnp.asarray(obs).astype(x.dtype)
        observed = _observe(owner, model, forecast, obs)
        lw = state.log_weights + _obs_loglik(owner, model, observed, obs)
        increment = _increment(lw, state.log_weights)
        lw = _normalise(lw)
        moved = _resample_move(self, k_rs, forecast, lw)
        info = _cycle_info(
            ParticleState(forecast, state.log_weights),
            ParticleState(forecast, lw),
            None,
            increment,
            _innovation(obs, observed, state.log_weights),
            moved,
        )
        return ParticleState(moved.particles, moved.log_weights), info


class AuxiliaryPF(fxp.AbstractCycledMethod):
    r"""The auxiliary particle filter (Pitt & Shephard 1999): a cycled method.

    With the point predictions ``\mu^i = \mathcal M(x_{k-1}^i)`` (deterministic dynamics,
    additive Gaussian ``Q`` = ``model.process_noise``), first-stage weights

    $$\log\lambda^i = \log w_{k-1}^i + \log g(y_k\mid\mu^i),$$

    ancestors ``a^i \sim \lambda`` (resampled every cycle), propagation
    ``x_k^i = \mu^{a^i} + \xi^i``, and second-stage weights
    ``\log w_k^i = \log g(y_k\mid x_k^i) - \log g(y_k\mid \mu^{a^i})``. The evidence increment
    is Pitt's (2002) unbiased estimator

    $$\hat p(y_k\mid y_{<k}) = \Big(\sum_i W_{k-1}^i g(y_k\mid\mu^i)\Big)
    \Big(\frac1N\sum_i w_k^i\Big).$$

    The reported forecast is the weighted ``\mu`` (prior weights), whose spread includes
    ``diag Q``. ``reg > 0`` jitters the resampled ``\mu`` (DAPPER's regularisation), which
    keeps a model without process noise alive at the price of a bias.

    **Arguments:** as `BootstrapPF`, without `ess_threshold` (the first stage always
    resamples).

    **Initial condition:** an ``(N, N_x)`` ensemble, or a `ParticleState`.

    **Reference:** Pitt & Shephard (1999), *Filtering via simulation: auxiliary particle
    filters*, JASA 94; Pitt (2002), *Smooth particle filters for likelihood evaluation and
    maximisation*; Johansen & Doucet (2008), *A note on auxiliary particle filters*. DAPPER
    has no equivalent.

    **Example:**

    ```python
    out = ff.run(AuxiliaryPF(), model, x0, y, times, key=jax.random.key(1))
    ```
    """

    resampler: Any = eqx.field(static=True, default="systematic")
    resampling: str = eqx.field(static=True, default="standard")
    soft_alpha: float | Array = 0.5
    reg: float | Array = 0.0
    nuj: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        _check_common("AuxiliaryPF", 1.0, self.resampler, self.resampling, self.soft_alpha)
        _check_nonnegative("AuxiliaryPF", "reg", self.reg, "the regularisation jitter scale")

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> ParticleState:
        """Uniformly weighted particles from the ``(N, N_x)`` initial ensemble."""
        del key, model
        return _init_particles("AuxiliaryPF", initial)

    def step(
        self,
        key: PRNGKeyArray,
        state: ParticleState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[ParticleState, fxp.CycleInfo]:
        """First-stage resampling, propagation, second-stage weights (class docstring)."""
        owner = "AuxiliaryPF"
        k_rs, k_noise = jax.random.split(key)
        x = state.particles
        n, n_x = x.shape
        mu = _flow(owner, model, x, t_prev, t)
        obs = jnp.asarray(obs).astype(x.dtype)
        observed_mu = _observe(owner, model, mu, obs)
        first = _obs_loglik(owner, model, observed_mu, obs)
        lam = state.log_weights + first
        first_increment = _increment(lam, state.log_weights)
        lam = _normalise(lam)
        moved = _resample_move(self, k_rs, mu, lam, always=True)
        q_root = _process_root(owner, model, n_x, x.dtype)
        new = moved.particles
        q_diag = None
        if q_root is not None:
            z = jax.random.normal(k_noise, (n, n_x), x.dtype)
            new = new + _mm(z, q_root.T)
            q_diag = jnp.sum(q_root * q_root, axis=1)
        second = _obs_loglik(owner, model, _observe(owner, model, new, obs), obs)
        lw = moved.log_weights + second - first[moved.ancestors]
        increment = first_increment + _increment(lw, moved.log_weights)
        lw = _normalise(lw)
        info = _cycle_info(
            ParticleState(mu, state.log_weights),
            ParticleState(new, lw),
            q_diag,
            increment,
            _innovation(obs, observed_mu, state.log_weights),
            moved,
        )
        return ParticleState(new, lw), info


class OptimalProposalPF(fxp.AbstractCycledMethod):
    r"""The particle filter with the optimal proposal for linear-Gaussian observations.

    For ``x_k = \mathcal M(x_{k-1}) + \xi``, ``\xi\sim N(0, Q)``, ``y_k = Hx_k + \eta``,
    ``\eta\sim N(0, R)``, the proposal ``p(x_k\mid x_{k-1}^i, y_k)`` and the weights
    ``p(y_k\mid x_{k-1}^i)`` are Gaussian (Doucet, Godsill & Andrieu 2000):

    $$S = HQH^\top + R,\quad K = QH^\top S^{-1},\quad P = (I - KH)Q,$$

    $$x_k^i \sim N\big(\mu^i + K(y_k - H\mu^i),\ P\big),\qquad
    \log w_k^i = \log w_{k-1}^i + \log N(y_k;\ H\mu^i,\ S),\quad \mu^i = \mathcal M(x_{k-1}^i).$$

    The weights do not depend on the new particles, so their variance is the smallest of any
    proposal. ``Q`` is ``model.process_noise`` plus DAPPER's ``Qs`` regularisation
    ``(qs\,h)^2 C_w`` (``h`` Scott's bandwidth, ``C_w`` the weighted covariance of
    ``\mu``), which gives a deterministic model a proposal kernel; with neither, the filter
    is the bootstrap filter. Missing observations drop their rows of ``H``. After the update
    the ESS rule resamples (and ``reg`` jitters) as in `BootstrapPF`.

    **Arguments:** `qs` (DAPPER's ``Qs``, default 0), and the resampling arguments of
    `BootstrapPF`.

    **Initial condition:** an ``(N, N_x)`` ensemble, or a `ParticleState`.

    **Reference:** Doucet, Godsill & Andrieu (2000), *On sequential Monte Carlo sampling
    methods for Bayesian filtering*, Stat. Comput. 10, §II.A; Bocquet, Pires & Wu (2010),
    *Beyond Gaussian statistical modeling in geophysical data assimilation*, MWR 138. DAPPER:
    ``OptPF(N, Qs, reg, nuj)`` — there the model noise is drawn first and only ``Qs`` enters
    the proposal; here the model's ``Q`` is part of the optimal proposal (exact for a
    linear-Gaussian model).

    **Example:**

    ```python
    out = ff.run(OptimalProposalPF(), model, x0, y, times, key=jax.random.key(1))
    ```
    """

    qs: float | Array = 0.0
    ess_threshold: float | Array = 0.5
    resampler: Any = eqx.field(static=True, default="systematic")
    resampling: str = eqx.field(static=True, default="standard")
    soft_alpha: float | Array = 0.5
    reg: float | Array = 0.0
    nuj: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        owner = "OptimalProposalPF"
        _check_common(owner, self.ess_threshold, self.resampler, self.resampling, self.soft_alpha)
        _check_nonnegative(owner, "reg", self.reg, "the regularisation jitter scale")
        _check_nonnegative(owner, "qs", self.qs, "DAPPER's Qs proposal-kernel scale")

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> ParticleState:
        """Uniformly weighted particles from the ``(N, N_x)`` initial ensemble."""
        del key
        _deterministic_dynamics("OptimalProposalPF", model)
        return _init_particles("OptimalProposalPF", initial)

    def step(
        self,
        key: PRNGKeyArray,
        state: ParticleState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[ParticleState, fxp.CycleInfo]:
        """Optimal-proposal move and weights, then resample-move (class docstring)."""
        owner = "OptimalProposalPF"
        k_prop, k_rs = jax.random.split(key)
        x = state.particles
        n, n_x = x.shape
        dtype = x.dtype
        mu = _flow(owner, model, x, t_prev, t)
        obs = jnp.asarray(obs).astype(dtype)
        h = _linear_obs_matrix(owner, model, n_x, dtype)
        if h.shape[0] != obs.shape[0]:
            raise ValueError(
                f"{owner}: obs_op has {h.shape[0]} rows but the observations have "
                f"N_y={obs.shape[0]} entries per time."
            )
        mask = jnp.isfinite(obs)
        hm = jnp.where(mask[:, None], h, 0.0)
        q = _effective_noise(owner, model, mu, state.log_weights, self.qs)
        r = _masked_obs_noise(owner, model, mask, dtype)
        s = _mm(_mm(hm, q), hm.T) + r
        chol_s = jnp.linalg.cholesky(0.5 * (s + s.T))
        gain = jsl.cho_solve((chol_s, True), _mm(hm, q)).T
        residual = jnp.where(mask[None, :], obs[None, :] - _mm(mu, hm.T), 0.0)
        log_pred = _gaussian_loglik(
            residual, chol_s, jnp.sum(jnp.log(jnp.diagonal(chol_s))), jnp.sum(mask)
        )
        # A draw from N(mu + K r, (I - KH) Q) without a square root of that (possibly
        # singular) covariance: xi ~ N(0, Q), eta ~ N(0, R), x = mu + xi + K(r - H xi - eta)
        # has covariance (I-KH)Q(I-KH)^T + KRK^T = (I-KH)Q for the optimal K.
        k_xi, k_reg, k_eta = jax.random.split(k_prop, 3)
        xi = _mm(
            jax.random.normal(k_reg, (n, n_x), dtype),
            jnp.asarray(self.qs, dtype)
            * _bandwidth(n, n_x)
            * _stopped_cov_root(mu, state.log_weights).T,
        )
        q_root = _process_root(owner, model, n_x, dtype)
        if q_root is not None:
            xi = xi + _mm(jax.random.normal(k_xi, (n, n_x), dtype), q_root.T)
        # r: R with the missing rows/columns the identity's (their K columns are zero).
        eta = _mm(jax.random.normal(k_eta, (n, obs.shape[0]), dtype), jnp.linalg.cholesky(r).T)
        new = mu + xi + _mm(residual - _mm(xi, hm.T) - eta, gain.T)
        lw = state.log_weights + log_pred
        increment = _increment(lw, state.log_weights)
        lw = _normalise(lw)
        moved = _resample_move(self, k_rs, new, lw)
        innovation = _innovation(obs, _mm(mu, h.T), state.log_weights)
        info = _cycle_info(
            ParticleState(mu, state.log_weights),
            ParticleState(new, lw),
            jnp.diagonal(q),
            increment,
            innovation,
            moved,
        )
        return ParticleState(moved.particles, moved.log_weights), info


_WROOT_STEP = 0.1


def _psd_whitening(cov: Array) -> tuple[Array, Array]:
    """``(whiten, root)`` of a symmetric PSD matrix from its eigendecomposition: ``root
    root^T = cov`` and ``x @ whiten`` the whitened coordinates of ``x`` in ``range(cov)``;
    directions with eigenvalue ``<= 100 N_x eps max(eig)`` (duplicated particles, no noise)
    are dropped from both (zero columns) instead of failing like a Cholesky factor would."""
    vals, vecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
    top = jnp.maximum(jnp.max(vals), 0.0)
    keep = vals > top * (100.0 * cov.shape[0] * jnp.finfo(cov.dtype).eps)
    safe = jnp.where(keep, vals, 1.0)
    whiten = vecs * jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)[None, :]
    root = vecs * jnp.where(keep, jnp.sqrt(safe), 0.0)[None, :]
    return whiten, root


def _sq_dist(a: Array, b: Array) -> Array:
    """``|a_m - b_j|^2`` for all row pairs, as one matrix product (rows centred by the caller)."""
    d2 = jnp.sum(a * a, axis=1)[:, None] - 2.0 * _mm(a, b.T) + jnp.sum(b * b, axis=1)[None, :]
    return jnp.maximum(d2, 0.0)


def _reduce(filt: Any, key: PRNGKeyArray, lw: Array, n: int) -> tuple[Array, Array, Array]:
    """DAPPER's "resample and reduce" of ``PFxN``: ``n`` ancestors out of ``len(lw)`` drawn
    from the flattened weights ``W^{1/r}`` with the smallest ``r = 1, 1.1, ...`` (``<
    wroot_max``) that gives no duplicate, compensated by ``W^{1 - 1/r}`` (Liu 2001, §3.1: the
    weighted sample stays unbiased). Returns ``(ancestors, log_weights, r)``."""
    m = lw.shape[0]
    resampler = filt.resampler if callable(filt.resampler) else RESAMPLERS[filt.resampler]
    if filt.resampling == "soft":
        ancestors, new = soft_resample(key, lw, n, filt.soft_alpha, resampler)
        return ancestors, _normalise(new), jnp.asarray(1.0, lw.dtype)
    base = jax.lax.stop_gradient(lw)
    n_tries = jnp.ceil((jnp.asarray(filt.wroot_max, lw.dtype) - 1.0) / _WROOT_STEP - 1e-6)
    n_tries = jnp.maximum(n_tries, 1.0).astype(jnp.int32)

    def draw(i):
        wroot = 1.0 + _WROOT_STEP * i.astype(lw.dtype)
        ancestors = resampler(jax.random.fold_in(key, i), base / wroot, n)
        counts = jnp.zeros(m, jnp.int32).at[ancestors].add(1)
        return ancestors, jnp.any(counts > 1)

    def cond(carry):
        i, _, duplicated = carry
        return duplicated & (i < n_tries)

    def body(carry):
        i, _, _ = carry
        return (i + 1, *draw(i))

    first = draw(jnp.asarray(0, jnp.int32))
    i, ancestors, _ = jax.lax.while_loop(cond, body, (jnp.asarray(1, jnp.int32), *first))
    inv = 1.0 / (1.0 + _WROOT_STEP * (i - 1).astype(lw.dtype))
    picked = lw[ancestors]
    finite = jnp.isfinite(picked)
    safe = jnp.where(finite, picked, 0.0)
    if filt.resampling == "stop_gradient":
        # value W^{1 - 1/r}; gradient that of log W^{1/r}, the sampling probability (Ścibior &
        # Wood 2021's score-function term, generalised to the flattened weights)
        new = (
            safe * inv
            - jax.lax.stop_gradient(safe * inv)
            + jax.lax.stop_gradient(safe * (1.0 - inv))
        )
    else:
        new = jax.lax.stop_gradient(safe * (1.0 - inv))
    new = jnp.where(finite, new, -jnp.inf)
    return ancestors, _normalise(new), 1.0 / inv


class EnKFProposalPF(fxp.AbstractCycledMethod):
    r"""DAPPER's ``PFxN_EnKF``: a particle filter whose proposal is centred on an EnKF analysis
    of each particle, with ``xn``-fold oversampling and exact mixture importance weights.

    Cycle ``k``: ``\mu^i = \mathcal M(x_{k-1}^i)`` with weights ``W^i``. When the bootstrap
    weights ``W^i g(y_k\mid\mu^i)`` keep ``ESS >= ess_threshold · N`` (DAPPER's ``NER``
    test), the cycle is a bootstrap step without resampling (``x^i = \mu^i + \xi^i``, ``\xi^i
    \sim N(0, Q_m)``, ``\log w^i \mathrel{+}= \log g(y_k\mid x^i)``). Otherwise:

    1. **Kernel and proposal.** The transition kernel of the weights is ``N(x; \mu^j, Q)``,
       ``Q = Q_m + (q_s h)^2 C_w`` (``Q_m`` = ``model.process_noise``, ``C_w`` the weighted
       covariance of ``\mu``, ``h = N^{-1/(N_x+4)}`` Scott's bandwidth; DAPPER's ``Qs``
       regularisation). Each parent proposes ``xn`` children from

       $$q_i = N\big(c^i,\ P\big),\quad c^i = \mu^i + K_B\big(y_k - h(\mu^i)\big),\quad
       K_B = BH^\top(HBH^\top + R)^{-1},\ B = C_w + Q_m,$$

       $$P = (I - K_QH)\,Q = Q^{1/2}(I + G)^{-1}Q^{1/2},\quad
       G = Q^{1/2}H^\top R^{-1}HQ^{1/2}:$$

       the EnKF (no perturbations) centre of DAPPER, and the covariance of the optimal
       proposal for the kernel — DAPPER's docstring ("the posterior mean of (2) and cov of
       (1)"); ``H`` is the observation operator linearised at the weighted mean.
    2. **Weights.** With ``\pi(x) = \sum_j W^j N(x; \mu^j, Q)\,g(y_k\mid x)`` and the
       proposal mixture ``\psi(x) = \frac1N\sum_j q_j(x)``, every child gets

       $$\omega = \pi(x)/\psi(x),\qquad \hat p(y_k\mid y_{<k}) = \frac{1}{N x_N}
       \sum_{i,l}\omega(x^{il}),$$

       the deterministic-mixture weights (Owen & Zhou 2000; the marginal particle filter of
       Klaas, de Freitas & Doucet 2005): unbiased, and far less variable than the
       per-parent ratio ``W^i N(x; \mu^i, Q) g / q_i`` when the EnKF shift ``c^i - \mu^i``
       is large compared with ``Q`` (the divergence of the earlier version). Both ``N x N
       x_N`` density tables are matrix products in the whitened coordinates of ``Q``.
    3. **Resample and reduce** the ``N x_N`` children to ``N`` (DAPPER's ``wroot`` loop):
       resample from ``W^{1/r}`` with ``r = 1, 1.1, ...`` until no child is drawn twice or
       ``r`` reaches ``wroot_max``, and weight the survivors by ``W^{1 - 1/r}``; so the
       carried weights are in general *not* uniform. ``reg > 0`` then jitters duplicates as
       in `BootstrapPF` (DAPPER's ``PFxN_EnKF`` has no jitter; default 0).

    Covariance roots are eigendecompositions with the null space dropped, so duplicated
    particles (a singular ``C_w``) never fail a Cholesky; the kernel densities are then
    taken on ``range(Q)``, where every particle, centre and child lies.

    **Deviations from DAPPER** (``dapper/da_methods/particle.py``, ``PFxN_EnKF``): DAPPER
    weights a child by ``g(x)\,N(x - c^i; 0, Q) / \exp(-\tfrac12 \lVert z\rVert^2 N_x/N)``
    (the prior kernel evaluated at the displacement from the *centre*, a heuristic its
    comments call "correct: (ED - E_orig)"), with ``P`` the EnKF analysis covariance of
    ``C_w``; that is not an importance weight, so its evidence is biased. Here the weights
    are exact (the evidence estimate is unbiased, tested against the Kalman filter).
    DAPPER's ``re_use`` (the same normal draws every cycle) is not offered (fresh draws);
    when ``wroot_max`` is reached with duplicates DAPPER keeps the forecast ensemble with
    the last weights, here the last draw is kept; the NER test uses ``g(y\mid\mu^i)``
    before the model noise is drawn (identical without model noise, and a choice measurable
    with respect to the past, so unbiasedness holds); the analysis statistics are those of
    the ``N x_N`` weighted children, the saved ``analysis`` the reduced ``N`` weighted
    particles. Gradients flow through the dynamics, the likelihood and the weights; the
    gain, the kernel and proposal roots are stop-gradients.

    **Arguments:**

    - `qs`: DAPPER's ``Qs`` (the kernel's scale; default 0, then ``Q = Q_m``). Without
      process noise ``qs`` must be positive.
    - `xn`: children per particle (DAPPER's ``xN``, static; default 1).
    - `wroot_max`: the largest weight root of the reduction (DAPPER's default 5.0; 1.0 =
      plain resampling).
    - `ess_threshold`: DAPPER's ``NER`` (default 0.5; ``>= 1`` every cycle).
    - `resampler`, `resampling`, `soft_alpha`, `reg`, `nuj`: as `BootstrapPF` (``"soft"``
      resamples once, without the weight-root loop).

    **Initial condition:** an ``(N, N_x)`` ensemble, or a `ParticleState`.

    **Cost:** ``O(N^2 x_N N_x)`` per triggered cycle (the two mixture tables), plus
    ``N x_N`` observation-operator calls.

    **Reference:** Papadakis, Mémin, Cuzol & Gengembre (2010), *Data assimilation with the
    weighted ensemble Kalman filter*, Tellus A 62; Klaas, de Freitas & Doucet (2005),
    *Toward practical N^2 Monte Carlo: the marginal particle filter*, UAI; Owen & Zhou
    (2000), *Safe and effective importance sampling*, JASA 95; Liu (2001), *Monte Carlo
    strategies in scientific computing*, §3.1 (weight roots). DAPPER:
    ``PFxN_EnKF(N, Qs, xN, re_use, wroot_max, NER)``.

    **Example:**

    ```python
    out = ff.run(EnKFProposalPF(qs=1.0, xn=100, ess_threshold=0.2), model, x0, y, times,
                 key=jax.random.key(1))
    ```
    """

    qs: float | Array = 0.0
    xn: int = eqx.field(static=True, default=1)
    wroot_max: float | Array = 5.0
    ess_threshold: float | Array = 0.5
    resampler: Any = eqx.field(static=True, default="systematic")
    resampling: str = eqx.field(static=True, default="standard")
    soft_alpha: float | Array = 0.5
    reg: float | Array = 0.0
    nuj: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        owner = "EnKFProposalPF"
        _check_common(owner, self.ess_threshold, self.resampler, self.resampling, self.soft_alpha)
        _check_nonnegative(owner, "reg", self.reg, "the regularisation jitter scale")
        _check_nonnegative(owner, "qs", self.qs, "DAPPER's Qs proposal-kernel scale")
        if isinstance(self.xn, bool) or not isinstance(self.xn, int | np.integer) or self.xn < 1:
            raise ValueError(
                f"{owner}: xn is the number of children each particle proposes (DAPPER's xN), "
                f"a Python int >= 1 (e.g. 100); got {self.xn!r}."
            )
        value = fxp.concrete_value(self.wroot_max)
        if value is not None and (value.ndim != 0 or not np.isfinite(value) or value < 1.0):
            raise ValueError(
                f"{owner}: wroot_max is the largest weight root of the reduction (DAPPER's "
                f"default 5.0; 1.0 = plain resampling), a finite scalar >= 1; got "
                f"{self.wroot_max!r}."
            )

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> ParticleState:
        """Uniformly weighted particles from the ``(N, N_x)`` initial ensemble."""
        del key
        owner = "EnKFProposalPF"
        _deterministic_dynamics(owner, model)
        qs = fxp.concrete_value(self.qs)
        if model.process_noise is None and qs is not None and float(qs) == 0.0:
            raise ValueError(
                f"{owner}: the importance weights need the transition density N(x; M(x_prev), "
                "Q) with Q positive definite, but the model has no process_noise and qs = 0. "
                "Give the model a process_noise or pass qs > 0 (DAPPER's Qs, e.g. 0.5)."
            )
        return _init_particles(owner, initial)

    def step(
        self,
        key: PRNGKeyArray,
        state: ParticleState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[ParticleState, fxp.CycleInfo]:
        """NER test; bootstrap step, or EnKF-centred xn-fold proposal, mixture weights and
        resample-and-reduce (class docstring)."""
        owner = "EnKFProposalPF"
        k_noise, k_prop, k_rs, k_jit = jax.random.split(key, 4)
        x, lw_prev = state.particles, state.log_weights
        n, n_x = x.shape
        dtype = x.dtype
        mu = _flow(owner, model, x, t_prev, t)
        obs = jnp.asarray(obs).astype(dtype)
        observed_mu = _observe(owner, model, mu, obs)
        q_root = _process_root(owner, model, n_x, dtype)
        q_model = _noise_matrix(owner, model.process_noise, n_x, dtype, "process_noise")
        try:
            lik = fxp.GaussianObsLikelihood.build(obs, model.obs_noise, dtype)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{owner}: obs_noise: {err}") from None
        lw_boot = _normalise(lw_prev + lik.log_density_rows(observed_mu))
        ess = effective_sample_size(lw_boot)
        threshold = jnp.asarray(self.ess_threshold, dtype)
        trigger = (ess < threshold * n) | (threshold >= 1.0)

        def bootstrap(_):
            new = mu
            if q_root is not None:
                new = mu + _mm(jax.random.normal(k_noise, (n, n_x), dtype), q_root.T)
            lw = lw_prev + lik.log_density_rows(_observe(owner, model, new, obs))
            increment = _increment(lw, lw_prev)
            lw = _normalise(lw)
            mean, spread = _weighted_mean_spread(new, lw)
            return new, lw, increment, mean, spread

        def enkf(_):
            m = n * self.xn
            w_prev = _weights(jax.lax.stop_gradient(lw_prev))
            centre = jax.lax.stop_gradient(_mm(w_prev, mu))
            _, h = linearize_obs(model.obs_op, centre)
            h = h.astype(dtype)
            cw_root = jax.lax.stop_gradient(_weighted_root(mu, lw_prev))
            c_w = _mm(cw_root.T, cw_root)
            b = c_w if q_model is None else c_w + q_model
            scale = jnp.asarray(self.qs, dtype) * _bandwidth(n, n_x)
            q = jax.lax.stop_gradient(scale * scale) * c_w
            q = q if q_model is None else q + jax.lax.stop_gradient(q_model)
            # EnKF centres c_i = mu_i + K_B (y - h(mu_i)) (missing entries dropped) through the
            # push-through identity K_B r = B^{1/2} (I + Gb^T Gb)^{-1} Gb^T R^{-1/2} r,
            # Gb = R^{-1/2} H B^{1/2}: an (N_x, N_x) solve, PSD-safe for a singular B.
            b_half = _psd_root(jax.lax.stop_gradient(b))
            gb = lik.whitened_rows(_mm(h, b_half))
            core = jnp.eye(n_x, dtype=dtype) + _mm(gb.T, gb)
            white_resid = lik.whitened_residuals(observed_mu)  # rows R^{-1/2}(y - h(mu_i))
            shift = _mm(jnp.linalg.solve(core, _mm(white_resid, gb).T).T, b_half.T)
            centres = mu + shift
            # Kernel whitening and the optimal-proposal covariance P = Q^{1/2}(I+G)^{-1}Q^{1/2}.
            whiten, root = _psd_whitening(jax.lax.stop_gradient(q))
            gq = jax.lax.stop_gradient(lik.whitened_rows(_mm(h, root)))
            gamma, u_vecs = jnp.linalg.eigh(jnp.eye(n_x, dtype=dtype) + _mm(gq.T, gq))
            t_half = u_vecs * jnp.sqrt(gamma)[None, :]
            t_mat = _mm(t_half, u_vecs.T)  # (I + G)^{1/2}
            t_inv = _mm(u_vecs / jnp.sqrt(gamma)[None, :], u_vecs.T)
            half_logdet = 0.5 * jnp.sum(jnp.log(gamma))
            z = jax.random.normal(k_prop, (n, self.xn, n_x), dtype)
            disp = _mm(_mm(z.reshape(m, n_x), t_inv), root.T)
            children = jnp.repeat(centres, self.xn, axis=0) + disp
            # Mixture densities in whitened coordinates (centred: no cancellation).
            origin = centre[None, :]
            u = _mm(children - origin, whiten)
            a = _mm(mu - origin, whiten)
            c = _mm(centres - origin, whiten)
            log_kernel = jax.nn.logsumexp(lw_prev[None, :] - 0.5 * _sq_dist(u, a), axis=1)
            log_g = lik.log_density_rows(_observe(owner, model, children, obs))
            log_psi = (
                jax.nn.logsumexp(-0.5 * _sq_dist(_mm(u, t_mat), _mm(c, t_mat)), axis=1)
                - math.log(n)
                + half_logdet
            )
            log_omega = log_kernel + log_g - log_psi
            increment = jax.nn.logsumexp(log_omega) - math.log(m) - jax.nn.logsumexp(lw_prev)
            lw_children = _normalise(log_omega)
            mean, spread = _weighted_mean_spread(children, lw_children)
            ancestors, lw_new, _ = _reduce(self, k_rs, lw_children, n)
            new = children[ancestors]
            reg = jnp.asarray(self.reg, dtype)
            jit_root = reg * _bandwidth(n, n_x) * _stopped_cov_root(children, lw_children)
            jitter = _mm(jax.random.normal(k_jit, (n, n_x), dtype), jit_root.T)
            if self.nuj:
                counts = jnp.zeros(m, jnp.int32).at[ancestors].add(1)
                jitter = jnp.where((counts[ancestors] > 1)[:, None], jitter, 0.0)
            return new + jitter, lw_new, increment, mean, spread

        new, lw, increment, a_mean, a_spread = jax.lax.cond(trigger, enkf, bootstrap, None)
        f_mean, f_spread = _weighted_mean_spread(
            mu, lw_prev, None if q_model is None else jnp.diagonal(q_model)
        )
        finite = (
            jnp.isfinite(increment)
            & fxp.is_finite(mu, new, a_mean)
            & jnp.all(jnp.isfinite(lw) | (lw == -jnp.inf))
        )
        info = fxp.CycleInfo(
            forecast_mean=f_mean,
            forecast_spread=f_spread,
            analysis_mean=a_mean,
            analysis_spread=a_spread,
            log_likelihood=increment,
            innovation=_innovation(obs, observed_mu, lw_prev),
            finite=finite,
            forecast=ParticleState(mu, lw_prev),
            analysis=ParticleState(new, lw),
            diagnostics=ParticleDiagnostics(ess, trigger),
        )
        return ParticleState(new, lw), info
