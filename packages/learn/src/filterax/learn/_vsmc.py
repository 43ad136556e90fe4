r"""Variational SMC (Naesseth et al. 2018) and FIVO (Maddison et al. 2017): learnable proposals.

State-space model (`filterax.primitives.Model` with Gaussian process noise)

$$x_0 \sim \mathcal N(m_0, P_0),\qquad x_k = \Psi(x_{k-1}; t_{k-1}, t_k) + \xi_k,\
\xi_k \sim \mathcal N(0, Q),\qquad y_k = h(x_k) + \eta_k,\ \eta_k \sim \mathcal N(0, R).$$

A particle filter with proposal ``q_φ(x_k | x_{k-1}, y_k)`` weights each proposed particle by

$$\alpha_k^i = \frac{p(y_k \mid x_k^i)\, \mathcal N(x_k^i; \Psi(x_{k-1}^{a_i}), Q)}
{q_\phi(x_k^i \mid x_{k-1}^{a_i}, y_k)}$$

and its evidence estimate ``Ẑ = Π_k Σ_i W_{k-1}^i α_k^i`` is unbiased, so by Jensen

$$\mathcal L_N(\phi) = \mathbb E[\log \hat Z] \le \log p(y_{1:T}),$$

a lower bound that tightens as ``N`` grows or as ``q_φ`` approaches the optimal proposal
``p(x_k | x_{k-1}, y_k)``. VSMC resamples every step; FIVO resamples when the effective sample
size falls below a threshold (``resample="ess"``), which keeps the bound tighter for the same
``N``.

**Gradient estimator.** Proposal draws are reparameterised (``x = μ_φ + s_φ ⊙ ε``), so
``∇_φ log Ẑ`` is computed by ordinary reverse-mode differentiation through the filter. The
ancestor indices are discrete draws that depend on ``φ`` through the weights; the exact
gradient of ``E[log Ẑ]`` has an additional score-function term
``Σ_k E[log Ẑ · ∇_φ log P(a_k | W_{k-1})]``. Like the VSMC and FIVO authors (Naesseth et al.
2018 §4; Maddison et al. 2017 §4; Le et al. 2018) this module DROPS that term: resampling
is done on ``stop_gradient`` weights and the post-resampling weights are constants. The
estimator is therefore biased — it ignores how changing ``φ`` changes which particles
survive — but its variance is far lower than with the score term (whose variance grows with
``T`` and ``N``). The bias vanishes when no resampling happens (then it is exact IWAE-style
reparameterisation) and is small when resampling rarely changes the ancestry, e.g. near the
optimal proposal; Corenflos et al. (2021) and Ścibior & Wood (2021,
`stop_gradient_resample`) discuss unbiased alternatives.

**Truncated gradient** (``truncate_gradient=True``). The reparameterisation gradient also runs
back through every earlier cycle: ``x_k`` depends on ``φ`` through ``x_{k-1}`` and the
dynamics. For chaotic dynamics that path grows like ``exp(λ_max t)`` (on Lorenz-63 with
observations every 0.25 time units the full gradient made training diverge:
`bench/scripts/vsmc_l63.py --full-gradient`). Truncation stops the gradient at each cycle's
incoming particles, so each cycle contributes ``∇_φ log Σ_i W_{k-1}^i α_k^i`` with
``x_{k-1}`` held fixed: a further bias (the effect of ``φ`` on later cycles through the
particles' positions is ignored) that buys a usable, low-variance gradient — the same
trade as truncated backpropagation through time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

import filterax.primitives as fxp
from filterax.filters import GaussianState

from ._resampling import effective_sample_size, systematic_resample

__all__ = [
    "RESAMPLE_RULES",
    "GainCorrection",
    "GaussianProposal",
    "InnovationMLP",
    "VSMCFit",
    "bootstrap_proposal",
    "fit_vsmc",
    "vsmc_bound",
]

RESAMPLE_RULES = ("always", "ess")
_LOG_2PI = math.log(2.0 * math.pi)
_HIGHEST = jax.lax.Precision.HIGHEST


# ---- proposals ----


class InnovationMLP(eqx.Module):
    r"""A mean correction ``g_θ(f, v) = K v + s · MLP_θ([f, v] / s)`` of forecast and innovation.

    ``f`` is the forecast, ``v = y_k - h(f)`` the innovation with missing entries set to zero,
    ``K`` a learnable ``(N_x, N_y)`` gain (the linear part, which alone can represent the
    optimal proposal of a linear-Gaussian observation) and the MLP (tanh) the nonlinear
    part. ``K`` and the MLP's output layer start at zero, so an untrained correction is ``0``
    and a `GaussianProposal` built on it is the bootstrap proposal (mean = forecast). The
    fixed `input_scale` ``s`` (e.g. the climatological standard deviation) makes the network
    see O(1) numbers.

    **Arguments:** `key`; `n_x`, `n_y` the state and observation sizes; `width`, `depth`
    of the hidden layers; `input_scale` a positive scalar.
    """

    gain: Float[Array, "N_x N_y"]
    mlp: eqx.nn.MLP
    input_scale: float = eqx.field(static=True)

    def __init__(
        self,
        key: PRNGKeyArray,
        n_x: int,
        n_y: int,
        *,
        width: int = 32,
        depth: int = 2,
        input_scale: float = 1.0,
    ):
        if not input_scale > 0:
            raise ValueError(f"InnovationMLP: input_scale must be positive; got {input_scale}.")
        mlp = eqx.nn.MLP(n_x + n_y, n_x, width, depth, activation=jnp.tanh, key=key)
        last = mlp.layers[-1]
        last = eqx.tree_at(
            lambda lin: (lin.weight, lin.bias),
            last,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )
        self.mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, last)
        self.gain = jnp.zeros((n_x, n_y), last.weight.dtype)
        self.input_scale = float(input_scale)

    def __call__(self, forecast: Array, innovation: Array) -> Array:
        dtype = self.mlp.layers[0].weight.dtype
        z = (jnp.concatenate([forecast, innovation]) / self.input_scale).astype(dtype)
        nonlinear = self.input_scale * self.mlp(z).astype(forecast.dtype)
        linear = jnp.matmul(self.gain.astype(forecast.dtype), innovation, precision=_HIGHEST)
        return linear + nonlinear


class GainCorrection(eqx.Module):
    r"""A linear mean correction ``g(f, v) = K v`` (a learnable or fixed gain ``K``).

    With ``K = Q Hᵀ (H Q Hᵀ + R)⁻¹`` and scale ``diag((I - K H) Q)^{1/2}`` (diagonal case) a
    `GaussianProposal` on it is the locally optimal proposal ``p(x_k | x_{k-1}, y_k)`` of a
    linear-Gaussian observation (Doucet, Godsill & Andrieu 2000; DAPPER's ``OptPF``).
    """

    gain: Float[Array, "N_x N_y"]

    def __call__(self, forecast: Array, innovation: Array) -> Array:
        del forecast
        return jnp.matmul(self.gain, innovation, precision=_HIGHEST)


class GaussianProposal(eqx.Module):
    r"""A Gaussian proposal ``q_φ(x_k | x_{k-1}, y_k) = N(f + g(f, v), diag(exp(2 ℓ)))``.

    ``f = Ψ(x_{k-1}; t_{k-1}, t_k)`` is the model forecast, ``v = y_k - h(f)`` the innovation
    (missing entries zero), ``g`` the `correction` (`InnovationMLP`, `GainCorrection` or any
    callable ``(f, v) -> (N_x,)`` module) and ``ℓ`` the learnable `log_scale`. Draws are
    reparameterised: ``x = f + g(f, v) + exp(ℓ) ⊙ ε``, ``ε ~ N(0, I)``.

    Build one with `bootstrap_proposal` (untrained = the bootstrap filter's transition when
    ``Q`` is diagonal).
    """

    correction: Callable[[Array, Array], Array]
    log_scale: Float[Array, " N_x"]

    def __check_init__(self) -> None:
        if not callable(self.correction):
            raise TypeError(
                "GaussianProposal: correction must be callable as correction(forecast, "
                f"innovation) -> (N_x,) (e.g. InnovationMLP); got {type(self.correction)}."
            )
        if jnp.ndim(self.log_scale) != 1:
            raise ValueError(
                "GaussianProposal: log_scale must be a vector (one log standard deviation per "
                f"state component); got shape {jnp.shape(self.log_scale)}."
            )

    def __call__(self, forecast: Array, innovation: Array) -> tuple[Array, Array]:
        """``(mean, standard deviation)`` of the proposal for one particle."""
        mean = forecast + self.correction(forecast, innovation)
        return mean, jnp.exp(self.log_scale).astype(forecast.dtype)


def bootstrap_proposal(
    key: PRNGKeyArray,
    model: fxp.AbstractModel,
    n_x: int,
    n_y: int,
    *,
    width: int = 32,
    depth: int = 2,
    input_scale: float = 1.0,
) -> GaussianProposal:
    r"""A `GaussianProposal` with an `InnovationMLP` correction that starts as the bootstrap.

    The correction's output layer is zero and ``exp(ℓ) = sqrt(diag Q)``, so before training
    the proposal is the transition density ``N(Ψ(x_{k-1}), Q)`` exactly when ``Q`` is diagonal
    (for a dense ``Q`` it is its diagonal approximation) and `vsmc_bound` is the bootstrap
    particle filter's log-evidence estimate.

    **Example:**

    ```python
    proposal = bootstrap_proposal(jax.random.key(0), model, 3, 3, input_scale=8.0)
    ```
    """
    n_x = int(n_x)
    q = _noise_matrix(model.process_noise, n_x, jnp.result_type(float), "bootstrap_proposal")
    log_scale = 0.5 * jnp.log(jnp.diagonal(q))
    return GaussianProposal(
        InnovationMLP(key, n_x, int(n_y), width=width, depth=depth, input_scale=input_scale),
        log_scale,
    )


# ---- the particle filter ----


def _noise_matrix(noise: Any, n: int, dtype: Any, owner: str) -> Array:
    if noise is None:
        raise ValueError(
            f"{owner}: variational SMC needs the transition density: give the model a "
            "process_noise (Q, the covariance of the additive noise per observation window)."
        )
    try:
        matrix = fxp.as_noise_operator(noise, n, dtype=dtype).as_matrix()
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}: {err}") from None
    return jnp.asarray(matrix, dtype)


def _initial_gaussian(initial: Any, owner: str) -> tuple[Array, Array]:
    if isinstance(initial, GaussianState):
        mean, cov = initial.mean, initial.cov
    elif isinstance(initial, tuple | list) and len(initial) == 2:
        mean, cov = initial
    else:
        raise TypeError(
            f"{owner}: initial is the prior of x_0: pass filterax.filters.GaussianState(mean, "
            f"cov) or a (mean, cov) pair; got {type(initial).__name__}."
        )
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov)
    n = mean.shape[0] if mean.ndim == 1 else -1
    if mean.ndim != 1 or cov.shape != (n, n):
        raise ValueError(
            f"{owner}: the prior of x_0 needs a mean (N_x,) and a dense covariance (N_x, N_x); "
            f"got {mean.shape} and {cov.shape}."
        )
    dtype = jnp.result_type(mean, cov, float)
    return mean.astype(dtype), cov.astype(dtype)


def _gaussian_logpdf(residual: Array, chol: Array) -> Array:
    """``log N(r; 0, L Lᵀ)`` (the transition density)."""
    white = jsl.solve_triangular(chol, residual, lower=True)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    n = residual.shape[0]
    return -0.5 * (jnp.sum(white**2) + logdet + n * _LOG_2PI)


def _check_common(
    proposal: Any,
    model: Any,
    observations: Any,
    obs_times: Any,
    n_particles: Any,
    resample: Any,
    ess_threshold: Any,
    owner: str,
) -> tuple[Array, Array, int]:
    if not isinstance(proposal, GaussianProposal):
        raise TypeError(
            f"{owner}: proposal must be a GaussianProposal (build one with bootstrap_proposal); "
            f"got {type(proposal).__name__}."
        )
    if not isinstance(model, fxp.AbstractModel):
        raise TypeError(
            f"{owner}: model must be a filterax.primitives.Model (dynamics, obs_op, obs_noise, "
            f"process_noise); got {type(model).__name__}."
        )
    if isinstance(model.dynamics, fxp.AbstractStochasticDynamics):
        raise TypeError(
            f"{owner}: the dynamics draws its own noise (an AbstractStochasticDynamics), whose "
            "transition density is unknown. Give the deterministic part as dynamics and its "
            "noise covariance as process_noise."
        )
    if resample not in RESAMPLE_RULES:
        raise ValueError(
            f"{owner}: resample must be 'always' (VSMC) or 'ess' (FIVO: resample when "
            f"ESS < ess_threshold * N); got {resample!r}."
        )
    if not 0.0 < float(ess_threshold) <= 1.0:
        raise ValueError(f"{owner}: ess_threshold must lie in (0, 1]; got {ess_threshold}.")
    if (
        isinstance(n_particles, bool)
        or not isinstance(n_particles, int | np.integer)
        or (n_particles < 2)
    ):
        raise ValueError(f"{owner}: n_particles must be a Python int >= 2; got {n_particles!r}.")
    observations = jnp.asarray(observations)
    obs_times = jnp.asarray(obs_times)
    if observations.ndim != 2 or obs_times.shape != (observations.shape[0],):
        raise ValueError(
            f"{owner}: observations must be (T, N_y) with NaN for missing entries and "
            f"obs_times (T,); got {observations.shape} and {obs_times.shape}."
        )
    return observations, obs_times, int(n_particles)


def _filter(
    proposal: GaussianProposal,
    key: PRNGKeyArray,
    model: fxp.AbstractModel,
    initial: Any,
    observations: Array,
    obs_times: Array,
    n_particles: int,
    resample: str,
    ess_threshold: float,
    t0: Any,
    owner: str,
    truncate: bool = False,
) -> tuple[Array, Array, Array]:
    mean0, cov0 = _initial_gaussian(initial, owner)
    n_x, dtype = mean0.shape[0], mean0.dtype
    if proposal.log_scale.shape != (n_x,):
        raise ValueError(
            f"{owner}: the proposal's log_scale has shape {proposal.log_scale.shape} but the "
            f"state has N_x = {n_x}."
        )
    n_y = observations.shape[1]
    observations = observations.astype(dtype)
    chol_q = jnp.linalg.cholesky(_noise_matrix(model.process_noise, n_x, dtype, owner))
    try:
        obs_noise = fxp.as_noise_operator(model.obs_noise, n_y, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}: model.obs_noise: {err}") from None
    y_shape = jax.eval_shape(lambda x: fxp.apply_obs(model.obs_op, x), mean0).shape
    if y_shape != (n_y,):
        raise ValueError(
            f"{owner}: obs_op maps a state to shape {y_shape} but observations have N_y = {n_y}."
        )
    t0 = model.t0 if t0 is None else t0
    times_prev = jnp.concatenate(
        [jnp.reshape(jnp.asarray(t0, obs_times.dtype), (1,)), obs_times[:-1]]
    )

    k_init, k_loop = jax.random.split(key)
    chol0 = jnp.linalg.cholesky(cov0)
    x = mean0[None, :] + jnp.matmul(
        jax.random.normal(k_init, (n_particles, n_x), dtype), chol0.T, precision=_HIGHEST
    )
    lw = jnp.full((n_particles,), -math.log(n_particles), dtype)
    log_n = math.log(n_particles)

    def one_particle(xp, y, mask, lik, t_prev, t, eps):
        xp = jax.lax.stop_gradient(xp) if truncate else xp
        forecast = jnp.asarray(model.dynamics(xp, t_prev, t), dtype)
        pred = fxp.apply_obs(model.obs_op, forecast)
        innovation = jnp.where(mask, y - pred, 0.0)
        mean, scale = proposal(forecast, innovation)
        x_new = mean + scale * eps
        log_q = -0.5 * jnp.sum(eps**2) - jnp.sum(jnp.log(scale)) - 0.5 * n_x * _LOG_2PI
        log_trans = _gaussian_logpdf(x_new - forecast, chol_q)
        log_lik = lik.log_density(fxp.apply_obs(model.obs_op, x_new))
        return x_new, log_lik + log_trans - log_q

    def step(carry, inputs):
        x, lw = carry
        k, y, t_prev, t = inputs
        k_res, k_prop = jax.random.split(jax.random.fold_in(k_loop, k))
        ess = effective_sample_size(lw)
        do_resample = (
            jnp.asarray(True) if resample == "always" else ess < ess_threshold * n_particles
        )
        # Resampling on stop_gradient weights, uniform constants after it: the score term of
        # the ancestor draw is dropped (module docstring).
        ancestors = systematic_resample(k_res, jax.lax.stop_gradient(lw), n_particles)
        ancestors = jnp.where(do_resample, ancestors, jnp.arange(n_particles))
        x = x[ancestors]
        lw = jnp.where(do_resample, jnp.full_like(lw, -log_n), lw)
        mask = fxp.observation_mask(y)
        lik = fxp.GaussianObsLikelihood.build(y, obs_noise, dtype)
        eps = jax.random.normal(k_prop, x.shape, dtype)
        x, log_alpha = jax.vmap(one_particle, in_axes=(0, None, None, None, None, None, 0))(
            x, y, mask, lik, t_prev, t, eps
        )
        total = lw + log_alpha
        increment = jax.nn.logsumexp(total)
        return (x, total - increment), (increment, do_resample, ess)

    steps = jnp.arange(observations.shape[0])
    _, (increments, resampled, ess) = jax.lax.scan(
        step, (x, lw), (steps, observations, times_prev, obs_times)
    )
    return increments, resampled, ess


def vsmc_bound(
    proposal: GaussianProposal,
    key: PRNGKeyArray,
    model: fxp.AbstractModel,
    initial: Any,
    observations: ArrayLike,
    obs_times: Real[ArrayLike, " T"],
    *,
    n_particles: int,
    resample: str = "always",
    ess_threshold: float = 0.5,
    t0: Real[ArrayLike, ""] | None = None,
    truncate_gradient: bool = False,
    throw: bool = True,
) -> Float[Array, ""]:
    r"""One draw of the VSMC / FIVO surrogate ``log Ẑ``, with ``E[log Ẑ] ≤ log p(y_{1:T})``.

    Runs the particle filter of the module docstring with proposal `proposal`
    (reparameterised draws, systematic resampling of ``stop_gradient`` weights) over the
    observations and returns

    $$\log \hat Z = \sum_{k=1}^{T} \log \sum_{i=1}^{N} W_{k-1}^i\, \alpha_k^i ,$$

    ``W_{k-1}`` the normalised weights after the (possible) resampling at step ``k``.
    Differentiate it with `eqx.filter_grad` w.r.t. `proposal` (first argument) for the biased,
    low-variance VSMC/FIVO gradient (resampling score term dropped; module docstring). One
    ``lax.scan`` over time; jit- and vmap-safe. NaN observation entries are missing (no
    likelihood term, zero innovation).

    **Arguments:**

    - `proposal`: a `GaussianProposal` (its arrays are the variational parameters ``φ``).
    - `key`: a JAX PRNG key (same key ⇒ same value).
    - `model`: a `filterax.primitives.Model` with `process_noise` ``Q`` (needed for the
      transition density), `obs_op` and `obs_noise` ``R``.
    - `initial`: the prior of ``x_0``, a `filterax.filters.GaussianState` or ``(mean, cov)``.
    - `observations`, `obs_times`: ``(T, N_y)`` and ``(T,)``; cycle ``k`` forecasts from
      ``t_{k-1}`` (``t_{-1} = t0``, default ``model.t0``) to ``t_k`` (as `filterax.filters.run`).
    - `n_particles`: ``N`` (Python int ≥ 2).
    - `resample`: ``"always"`` (VSMC, Naesseth et al. 2018) or ``"ess"`` (FIVO, Maddison
      et al. 2017: resample when ESS < `ess_threshold` · N).
    - `truncate_gradient`: stop the gradient at each cycle's incoming particles (module
      docstring; use it for chaotic dynamics). The value is unchanged.
    - `throw`: raise (`eqx.error_if`) when ``log Ẑ`` is not finite (every particle got zero
      weight); ``False`` returns the non-finite value.

    **Returns:** the scalar ``log Ẑ``.

    **Reference:** Naesseth, Linderman, Ranganath & Blei (2018), *Variational sequential
    Monte Carlo*, AISTATS; Maddison et al. (2017), *Filtering variational objectives*, NeurIPS;
    Le, Igl, Rainforth, Jin & Wood (2018), *Auto-encoding sequential Monte Carlo*, ICLR.
    DAPPER has no equivalent.

    **Example:**

    ```python
    q = bootstrap_proposal(jax.random.key(0), model, 3, 3)
    eqx.filter_grad(vsmc_bound)(q, jax.random.key(1), model, (m0, P0), ys, ts, n_particles=64)
    ```
    """
    owner = "vsmc_bound"
    observations, obs_times, n_particles = _check_common(
        proposal, model, observations, obs_times, n_particles, resample, ess_threshold, owner
    )
    increments, _, _ = _filter(
        proposal,
        key,
        model,
        initial,
        observations,
        obs_times,
        n_particles,
        resample,
        ess_threshold,
        t0,
        owner,
        bool(truncate_gradient),
    )
    log_z = jnp.sum(increments)
    if throw:
        log_z = eqx.error_if(
            log_z,
            ~jnp.isfinite(log_z),
            f"{owner}: log Z_hat is not finite: at some cycle every particle had zero weight "
            "(or the model returned NaN). Use more particles, a wider proposal or check the "
            "observations; throw=False returns the value.",
        )
    return log_z


class VSMCFit(eqx.Module):
    """The output of `fit_vsmc`: the trained `proposal` and the objective per iteration.

    - `proposal`: the fitted `GaussianProposal`.
    - `bounds`: ``(n_steps,)`` the Monte Carlo mean of ``log Ẑ`` at each iteration (before
      its update), a noisy estimate of the bound being maximised.
    """

    proposal: GaussianProposal
    bounds: Float[Array, " n_steps"]


def fit_vsmc(
    proposal: GaussianProposal,
    key: PRNGKeyArray,
    model: fxp.AbstractModel,
    initial: Any,
    observations: ArrayLike,
    obs_times: Real[ArrayLike, " T"],
    *,
    n_particles: int,
    n_steps: int = 200,
    optimiser: optax.GradientTransformation | None = None,
    n_samples: int = 1,
    resample: str = "always",
    ess_threshold: float = 0.5,
    t0: Real[ArrayLike, ""] | None = None,
    truncate_gradient: bool = False,
) -> VSMCFit:
    r"""Maximise the VSMC / FIVO bound over the proposal's parameters with optax.

    Iteration ``j`` draws `n_samples` independent filters (keys ``fold_in(key, j)``),
    averages their ``log Ẑ`` and takes one optimiser step along its gradient (the
    resampling score term dropped, see the module docstring). One ``lax.scan`` over
    iterations: jit-able. Every inexact array of `proposal` is trained.

    **Arguments:** as `vsmc_bound` (including `truncate_gradient`), plus `n_steps`
    (iterations), `optimiser` (default ``optax.adam(1e-2)``) and `n_samples` (filters per
    gradient estimate). An iteration whose objective or gradient is not finite is skipped
    (parameters and optimiser state unchanged), so one degenerate draw cannot poison ``φ``.

    **Returns:** a `VSMCFit`.

    **Reference:** Naesseth et al. (2018), Algorithm 2; Maddison et al. (2017), §4.

    **Example:**

    ```python
    fit = fit_vsmc(q, jax.random.key(2), model, (m0, P0), ys, ts, n_particles=16, n_steps=100)
    fit.bounds[-10:].mean() > fit.bounds[:10].mean()
    ```
    """
    owner = "fit_vsmc"
    observations, obs_times, n_particles = _check_common(
        proposal, model, observations, obs_times, n_particles, resample, ess_threshold, owner
    )
    for name, value in (("n_steps", n_steps), ("n_samples", n_samples)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive Python int; got {value!r}.")
    optimiser = optax.adam(1e-2) if optimiser is None else optimiser
    params, static = eqx.partition(proposal, eqx.is_inexact_array)

    def objective(p, k):
        q = eqx.combine(p, static)
        keys = jax.random.split(k, n_samples)

        def one(kk):
            inc, _, _ = _filter(
                q,
                kk,
                model,
                initial,
                observations,
                obs_times,
                n_particles,
                resample,
                ess_threshold,
                t0,
                owner,
                bool(truncate_gradient),
            )
            return jnp.sum(inc)

        return jnp.mean(jax.vmap(one)(keys))

    grad_fn = jax.value_and_grad(lambda p, k: -objective(p, k))

    def body(carry, j):
        p, opt_state = carry
        neg, grads = grad_fn(p, jax.random.fold_in(key, j))
        # A non-finite draw would poison the parameters: skip that update instead.
        ok = jnp.isfinite(neg) & jax.tree.reduce(
            lambda a, b: a & b, jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads)
        )
        grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)
        updates, new_state = optimiser.update(grads, opt_state, p)
        new_p = optax.apply_updates(p, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        return (keep(new_p, p), keep(new_state, opt_state)), -neg

    (params, _), bounds = jax.lax.scan(body, (params, optimiser.init(params)), jnp.arange(n_steps))
    return VSMCFit(eqx.combine(params, static), bounds)
