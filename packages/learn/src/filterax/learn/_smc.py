r"""SMC samplers for static posteriors: tempered and adaptive-tempered SMC through blackjax.

Tutorial master list 10.5. The posterior ``π(x) ∝ p_0(x) L(x)`` is reached from the prior
``p_0`` through the tempered path ``π_λ(x) ∝ p_0(x) L(x)^λ``, ``0 = λ_0 < λ_1 < … < λ_K = 1``
(Neal 2001; Del Moral, Doucet & Jasra 2006). Step ``k`` resamples the particles by their
weights, moves each with ``n_mcmc_steps`` of a ``π_{λ_{k-1}}``-invariant MCMC kernel, and
reweights them by the incremental weight ``w_k(x) = L(x)^{λ_k - λ_{k-1}}``; the product of the
mean incremental weights is an unbiased estimate of the evidence

$$\hat Z = \prod_{k=1}^{K} \frac1N \sum_{i=1}^{N} L(x_k^i)^{\lambda_k - \lambda_{k-1}},
\qquad \mathbb E[\hat Z] = Z = \int p_0(x) L(x)\,dx .$$

The adaptive variant picks ``λ_k`` by bisection so that the effective sample size of the
incremental weights is ``target_ess · N`` (Jasra, Stephens, Doucet & Tsagaris 2011). The
step kernels are blackjax's (`blackjax.smc.tempered.build_kernel`,
`blackjax.smc.adaptive_tempered.build_kernel`); this module owns the loop (``lax.scan`` for a
fixed schedule, ``lax.while_loop`` for the adaptive one), tunes the MCMC move from the current
weighted particle cloud each step (as blackjax's ``inner_kernel_tuning`` does), and checks the
result. ``blackjax>=1.6`` is required: older releases solved the adaptive-tempering ESS
equation with the wrong sign (blackjax issue #914), which is silent for symmetric
log-likelihoods and wrong for asymmetric ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import blackjax
import blackjax.smc.adaptive_tempered as bj_adaptive
import blackjax.smc.resampling as bj_resampling
import blackjax.smc.tempered as bj_tempered
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

import filterax.primitives as fxp

__all__ = ["MCMC_KERNELS", "RESAMPLERS", "SMCResult", "adaptive_tempered_smc", "tempered_smc"]

MCMC_KERNELS = ("rwm", "hmc")
RESAMPLERS = ("systematic", "stratified", "multinomial", "residual")

_RESAMPLING_FNS = {
    "systematic": bj_resampling.systematic,
    "stratified": bj_resampling.stratified,
    "multinomial": bj_resampling.multinomial,
    "residual": bj_resampling.residual,
}


class SMCResult(eqx.Module):
    r"""The output of `tempered_smc` / `adaptive_tempered_smc`.

    **Fields:**

    - `particles`: ``(N, d)`` particles targeting the posterior (with `log_weights`).
    - `log_weights`: ``(N,)`` normalised log-weights (``logsumexp = 0``) of the last
      reweighting; weighted averages ``Σ_i exp(log_weights_i) f(x_i)`` estimate posterior
      expectations. ``-inf`` marks a particle with zero likelihood.
    - `log_evidence`: ``log Ẑ``, the sum of `log_evidence_increments`.
    - `temperatures`: ``(K,)`` the tempering parameters ``λ_1, …, λ_K`` reached; for the
      adaptive sampler ``K = max_steps`` and the entries after `n_steps` are NaN (not run).
    - `log_evidence_increments`: ``(K,)`` ``log (1/N) Σ_i w_k(x_k^i)`` per step (NaN padding).
    - `acceptance`: ``(K,)`` mean MCMC acceptance rate of each step's move (NaN padding).
    - `ess`: ``(K,)`` effective sample size ``1 / Σ_i W_i²`` after each reweighting
      (NaN padding).
    - `n_steps`: number of tempering steps run.
    - `converged`: whether ``λ = 1`` was reached (always true for a fixed schedule; false
      when the adaptive sampler ran out of `max_steps`).
    - `finite`: whether the log-evidence and the particles are finite.
    """

    particles: Float[Array, "N d"]
    log_weights: Float[Array, " N"]
    log_evidence: Float[Array, ""]
    temperatures: Float[Array, " K"]
    log_evidence_increments: Float[Array, " K"]
    acceptance: Float[Array, " K"]
    ess: Float[Array, " K"]
    n_steps: Int[Array, ""]
    converged: Bool[Array, ""]
    finite: Bool[Array, ""]


# ---- input checks ----


def _check_particles(particles: Any, owner: str) -> Array:
    particles = jnp.asarray(particles)
    if particles.ndim != 2:
        raise ValueError(
            f"{owner}: initial_particles must be an (N, d) array of N prior draws of a "
            f"d-vector (reshape a scalar parameter to (N, 1)); got shape {particles.shape}."
        )
    if not jnp.issubdtype(particles.dtype, jnp.floating):
        raise TypeError(
            f"{owner}: initial_particles must be floating point; got dtype {particles.dtype}."
        )
    if particles.shape[0] < 2:
        raise ValueError(
            f"{owner}: SMC needs N >= 2 particles (a few thousand for a log-evidence to "
            f"~0.01); got N = {particles.shape[0]}."
        )
    value = fxp.concrete_value(particles)
    if value is not None and not np.all(np.isfinite(value)):
        raise ValueError(f"{owner}: initial_particles contain NaN or inf; pass prior draws.")
    return particles


def _check_density(fn: Any, name: str, particle: Array, owner: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"{owner}: {name} must be a callable mapping one particle of shape "
            f"{particle.shape} to a scalar log-density; got {type(fn).__name__}."
        )
    out = jax.eval_shape(fn, particle)
    if getattr(out, "shape", None) != ():
        raise ValueError(
            f"{owner}: {name}(x) must return a scalar for one particle x of shape "
            f"{particle.shape} (it is vmapped over particles by the sampler); got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )


def _check_positive_int(value: Any, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive Python int; got {value!r}.")
    return int(value)


def _check_options(mcmc: str, resampling: str, step_scale: Any, owner: str) -> None:
    if mcmc not in MCMC_KERNELS:
        raise ValueError(
            f"{owner}: mcmc must be one of {MCMC_KERNELS} ('rwm': random-walk Metropolis, "
            f"'hmc': Hamiltonian Monte Carlo, needs a differentiable log-density); got {mcmc!r}."
        )
    if resampling not in RESAMPLERS:
        raise ValueError(f"{owner}: resampling must be one of {RESAMPLERS}; got {resampling!r}.")
    if step_scale is not None:
        value = fxp.concrete_value(step_scale)
        if jnp.ndim(step_scale) != 0 or (value is not None and not float(value) > 0.0):
            raise ValueError(
                f"{owner}: step_scale must be a positive scalar or None (the documented "
                f"default); got {step_scale!r}."
            )


# ---- the MCMC move, tuned from the weighted particle cloud ----


_RWM_KERNEL = blackjax.mcmc.random_walk.build_additive_step()
_HMC_KERNEL = blackjax.mcmc.hmc.build_kernel()


def _rwm_step(key: Any, state: Any, logdensity_fn: Callable, scale: Array) -> Any:
    return _RWM_KERNEL(key, state, logdensity_fn, blackjax.mcmc.random_walk.normal(scale))


def _mcmc_functions(mcmc: str, n_leapfrog: int) -> tuple[Callable, Callable]:
    if mcmc == "rwm":
        return _rwm_step, blackjax.mcmc.random_walk.init

    def hmc_step(key, state, logdensity_fn, step_size, inverse_mass_matrix):
        return _HMC_KERNEL(key, state, logdensity_fn, step_size, inverse_mass_matrix, n_leapfrog)

    return hmc_step, blackjax.mcmc.hmc.init


def _default_step_scale(mcmc: str, d: int) -> float:
    # RWM: the optimal Gaussian random-walk scale 2.38/sqrt(d) in units of the target's
    # standard deviation (Roberts, Gelman & Gilks 1997). HMC with the target's variance as
    # inverse mass matrix: leapfrog step d^(-1/4) (the d^(-1/4) scaling of Beskos et al.
    # 2013), which keeps acceptance high for near-Gaussian targets with 5 leapfrog steps.
    return 2.38 / math.sqrt(d) if mcmc == "rwm" else 1.0 * d**-0.25


def _mcmc_parameters(mcmc: str, state: Any, step_scale: Any) -> dict[str, Array]:
    """Per-step MCMC parameters from the weighted moments of the current particles.

    Leading axis 1 marks a parameter shared by all particles (blackjax's convention).
    """
    x, w = state.particles, state.weights
    mean = w @ x
    var = w @ jnp.square(x - mean[None, :])
    # A collapsed cloud (one surviving particle) would freeze the move; keep a floor.
    tiny = jnp.finfo(x.dtype).eps * (1.0 + jnp.square(mean))
    var = jnp.maximum(var, tiny)
    if mcmc == "rwm":
        return {"scale": (step_scale * jnp.sqrt(var))[None]}
    return {
        "step_size": jnp.reshape(jnp.asarray(step_scale, x.dtype), (1,)),
        "inverse_mass_matrix": var[None],
    }


class _Setup(eqx.Module):
    mcmc: str = eqx.field(static=True)
    step_fn: Callable = eqx.field(static=True)
    init_fn: Callable = eqx.field(static=True)
    resampling_fn: Callable = eqx.field(static=True)
    step_scale: Any


def _setup(
    owner: str,
    log_prior: Any,
    log_likelihood: Any,
    initial_particles: Any,
    mcmc: str,
    n_mcmc_steps: Any,
    step_scale: Any,
    n_leapfrog: Any,
    resampling: str,
) -> tuple[Array, _Setup, int]:
    particles = _check_particles(initial_particles, owner)
    _check_density(log_prior, "log_prior", particles[0], owner)
    _check_density(log_likelihood, "log_likelihood", particles[0], owner)
    n_mcmc_steps = _check_positive_int(n_mcmc_steps, "n_mcmc_steps", owner)
    n_leapfrog = _check_positive_int(n_leapfrog, "n_leapfrog", owner)
    _check_options(mcmc, resampling, step_scale, owner)
    d = particles.shape[1]
    if step_scale is None:
        step_scale = _default_step_scale(mcmc, d)
    step_fn, init_fn = _mcmc_functions(mcmc, n_leapfrog)
    setup = _Setup(mcmc, step_fn, init_fn, _RESAMPLING_FNS[resampling], step_scale)
    return particles, setup, n_mcmc_steps


def _step_record(new_state: Any, info: Any) -> tuple[Array, Array, Array, Array]:
    acceptance = jnp.mean(info.update_info.acceptance_rate)
    ess = 1.0 / jnp.sum(jnp.square(new_state.weights))
    lam = jnp.asarray(new_state.tempering_param, new_state.weights.dtype)
    return lam, info.log_likelihood_increment, acceptance, ess


def _finish(
    state: Any,
    temperatures: Array,
    increments: Array,
    acceptance: Array,
    ess: Array,
    n_steps: Any,
    converged: Array,
    throw: bool,
    owner: str,
) -> SMCResult:
    # Sum the steps that ran only (the adaptive buffers are NaN-padded), so a NaN increment
    # of a real step propagates instead of being dropped.
    ran = jnp.arange(increments.shape[0]) < n_steps
    log_evidence = jnp.sum(jnp.where(ran, increments, jnp.zeros_like(increments)))
    finite = jnp.isfinite(log_evidence) & jnp.all(jnp.isfinite(state.particles))
    if throw:
        log_evidence = eqx.error_if(
            log_evidence,
            ~finite,
            f"{owner}: the log-evidence or the particles are not finite (every particle had "
            "zero likelihood at some step, or the log-densities returned NaN). Check "
            "log_likelihood on the prior draws, use more particles or, for the adaptive "
            "sampler, a higher target_ess; pass throw=False to get the result with finite=False.",
        )
        log_evidence = eqx.error_if(
            log_evidence,
            ~converged,
            f"{owner}: the adaptive schedule did not reach temperature 1 within max_steps; "
            "raise max_steps or lower target_ess (pass throw=False to get the partial result "
            "with converged=False).",
        )
    return SMCResult(
        particles=state.particles,
        log_weights=jnp.log(state.weights),
        log_evidence=log_evidence,
        temperatures=temperatures,
        log_evidence_increments=increments,
        acceptance=acceptance,
        ess=ess,
        n_steps=jnp.asarray(n_steps, jnp.int32),
        converged=jnp.asarray(converged),
        finite=finite,
    )


def tempered_smc(
    key: PRNGKeyArray,
    log_prior: Callable[[Array], Array],
    log_likelihood: Callable[[Array], Array],
    initial_particles: ArrayLike,
    *,
    schedule: Float[ArrayLike, " K"],
    mcmc: str = "rwm",
    n_mcmc_steps: int = 10,
    step_scale: float | None = None,
    n_leapfrog: int = 5,
    resampling: str = "systematic",
    throw: bool = True,
) -> SMCResult:
    r"""Tempered SMC with a fixed schedule ``0 < λ_1 < … < λ_K = 1`` (blackjax's kernel).

    Step ``k`` resamples, applies ``n_mcmc_steps`` of a ``π_{λ_{k-1}}``-invariant move and
    reweights by ``L(x)^{λ_k - λ_{k-1}}``; ``log Ẑ = Σ_k log (1/N) Σ_i L(x_k^i)^{λ_k-λ_{k-1}}``
    is the logarithm of an unbiased evidence estimate (module docstring). One ``lax.scan``
    over the schedule: jit- and vmap-safe (the schedule may be traced; it is checked when
    concrete).

    **Arguments:**
    - `key`: a JAX PRNG key (same key ⇒ same result).
    - `log_prior`: ``x -> log p_0(x)`` for ONE particle ``x`` of shape ``(d,)`` (vmapped here);
      it need not be normalised, but the evidence is then relative to its normaliser.
    - `log_likelihood`: ``x -> log L(x)``, one particle, scalar; may be ``-inf`` outside a
      support. Include the likelihood's normalising constant for the evidence ``p(y)``.
    - `initial_particles`: ``(N, d)`` draws from the prior.
    - `mcmc`: the move kernel, ``"rwm"`` (default; Gaussian random-walk Metropolis with
      per-coordinate scale ``step_scale · σ_j``, ``σ_j`` the weighted standard deviation of
      the current particles, ``step_scale = 2.38/sqrt(d)`` by default after Roberts, Gelman &
      Gilks 1997) or ``"hmc"`` (HMC with the weighted variances as diagonal inverse mass
      matrix, leapfrog step ``step_scale = d^(-1/4)`` by default and `n_leapfrog` steps).
    - `n_mcmc_steps`: MCMC steps per tempering step (Python int ≥ 1).
    - `step_scale`: overrides the default scale above (positive scalar).
    - `n_leapfrog`: leapfrog steps per HMC proposal (static).
    - `resampling`: ``"systematic"`` (default), ``"stratified"``, ``"multinomial"`` or
      ``"residual"`` (blackjax's resamplers, run at the start of every step).
    - `throw`: raise (`eqx.error_if`) on a non-finite result or, adaptive only, when ``λ = 1``
      was not reached; ``False`` reports it in `SMCResult.finite` / `SMCResult.converged`.
    - `schedule`: the temperatures ``λ_1, …, λ_K``, strictly increasing in ``(0, 1]`` with
      ``λ_K = 1``, e.g. ``jnp.linspace(0, 1, 21)[1:] ** 4``.

    **Returns:** an `SMCResult` with ``K`` steps.

    **Reference:** Del Moral, Doucet & Jasra (2006), *Sequential Monte Carlo samplers*;
    Neal (2001), *Annealed importance sampling*; blackjax's ``tempered_smc``. DAPPER has no
    equivalent (its particle filters are sequential in time, not in temperature).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    from filterax.learn import tempered_smc

    x0 = jax.random.normal(jax.random.key(0), (2000, 1))
    out = tempered_smc(jax.random.key(1), lambda x: -0.5 * jnp.sum(x**2),
                       lambda x: -0.5 * jnp.sum((x - 1.0) ** 2) / 0.25, x0,
                       schedule=jnp.linspace(0.0, 1.0, 11)[1:])
    out.log_evidence, jnp.exp(out.log_weights) @ out.particles  # ≈ log Z, ≈ 0.8
    ```
    """
    owner = "tempered_smc"
    particles, setup, n_mcmc_steps = _setup(
        owner,
        log_prior,
        log_likelihood,
        initial_particles,
        mcmc,
        n_mcmc_steps,
        step_scale,
        n_leapfrog,
        resampling,
    )
    schedule = jnp.asarray(schedule, particles.dtype)
    if schedule.ndim != 1 or schedule.shape[0] < 1:
        raise ValueError(
            f"{owner}: schedule must be a 1-d array of temperatures ending at 1 (e.g. "
            f"jnp.linspace(0, 1, 11)[1:]); got shape {schedule.shape}."
        )
    value = fxp.concrete_value(schedule)
    if value is not None:
        steps = np.diff(np.concatenate([[0.0], value]))
        if not (np.all(steps > 0) and value[-1] == 1.0):
            raise ValueError(
                f"{owner}: schedule must be strictly increasing in (0, 1] and end at exactly "
                f"1.0 (λ_0 = 0 is implied; do not include it); got {value}."
            )
    kernel = bj_tempered.build_kernel(
        log_prior, log_likelihood, setup.step_fn, setup.init_fn, setup.resampling_fn
    )

    def body(state, inputs):
        step_key, lam = inputs
        params = _mcmc_parameters(setup.mcmc, state, setup.step_scale)
        new_state, info = kernel(step_key, state, n_mcmc_steps, lam, params)
        return new_state, _step_record(new_state, info)

    state = bj_tempered.init(particles)
    state = state._replace(tempering_param=jnp.zeros((), particles.dtype))
    keys = jax.random.split(key, schedule.shape[0])
    state, (temperatures, increments, acceptance, ess) = jax.lax.scan(body, state, (keys, schedule))
    return _finish(
        state,
        temperatures,
        increments,
        acceptance,
        ess,
        schedule.shape[0],
        jnp.asarray(True),
        throw,
        owner,
    )


def adaptive_tempered_smc(
    key: PRNGKeyArray,
    log_prior: Callable[[Array], Array],
    log_likelihood: Callable[[Array], Array],
    initial_particles: ArrayLike,
    *,
    target_ess: float = 0.5,
    max_steps: int = 100,
    mcmc: str = "rwm",
    n_mcmc_steps: int = 10,
    step_scale: float | None = None,
    n_leapfrog: int = 5,
    resampling: str = "systematic",
    throw: bool = True,
) -> SMCResult:
    r"""Adaptive tempered SMC: each ``λ_k`` is chosen so the incremental weights keep ESS.

    ``λ_k = λ_{k-1} + δ`` with ``δ`` solving ``ESS(δ) = target_ess · N`` by bisection, where
    ``ESS(δ) = (Σ_i L(x^i)^δ)² / Σ_i L(x^i)^{2δ}`` over the current particles (blackjax's
    ``ess_solver``), capped at ``1 - λ_{k-1}``; then one step as in `tempered_smc`. A
    ``lax.while_loop`` runs until ``λ = 1`` or `max_steps`: jit- and vmap-safe, not
    reverse-differentiable (the number of steps is data-dependent). A higher `target_ess`
    takes more, smaller steps and gives a lower-variance ``log Ẑ`` (``Var log Ẑ`` is roughly
    ``Σ_k (1/ESS_k - 1/N)``). The adaptive choice of ``λ_k`` from the particles makes ``Ẑ``
    slightly biased (consistent as ``N → ∞``).

    **Arguments:**
    - `key`: a JAX PRNG key (same key ⇒ same result).
    - `log_prior`: ``x -> log p_0(x)`` for ONE particle ``x`` of shape ``(d,)`` (vmapped here);
      it need not be normalised, but the evidence is then relative to its normaliser.
    - `log_likelihood`: ``x -> log L(x)``, one particle, scalar; may be ``-inf`` outside a
      support. Include the likelihood's normalising constant for the evidence ``p(y)``.
    - `initial_particles`: ``(N, d)`` draws from the prior.
    - `mcmc`: the move kernel, ``"rwm"`` (default; Gaussian random-walk Metropolis with
      per-coordinate scale ``step_scale · σ_j``, ``σ_j`` the weighted standard deviation of
      the current particles, ``step_scale = 2.38/sqrt(d)`` by default after Roberts, Gelman &
      Gilks 1997) or ``"hmc"`` (HMC with the weighted variances as diagonal inverse mass
      matrix, leapfrog step ``step_scale = d^(-1/4)`` by default and `n_leapfrog` steps).
    - `n_mcmc_steps`: MCMC steps per tempering step (Python int ≥ 1).
    - `step_scale`: overrides the default scale above (positive scalar).
    - `n_leapfrog`: leapfrog steps per HMC proposal (static).
    - `resampling`: ``"systematic"`` (default), ``"stratified"``, ``"multinomial"`` or
      ``"residual"`` (blackjax's resamplers, run at the start of every step).
    - `throw`: raise (`eqx.error_if`) on a non-finite result or, adaptive only, when ``λ = 1``
      was not reached; ``False`` reports it in `SMCResult.finite` / `SMCResult.converged`.
    - `target_ess`: the ESS fraction in ``(0, 1)`` each step keeps (default 0.5).
    - `max_steps`: upper bound on the number of tempering steps (static; the result's
      arrays have this length, NaN after `SMCResult.n_steps`).

    **Returns:** an `SMCResult`.

    **Reference:** Jasra, Stephens, Doucet & Tsagaris (2011), *Inference for Lévy-driven
    stochastic volatility models via adaptive sequential Monte Carlo*; Chopin &
    Papaspiliopoulos (2020), *An Introduction to Sequential Monte Carlo*, §17.2; blackjax's
    ``adaptive_tempered_smc`` (needs ``blackjax>=1.6``, issue #914).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    from filterax.learn import adaptive_tempered_smc

    x0 = jax.random.normal(jax.random.key(0), (2000, 1))
    out = adaptive_tempered_smc(jax.random.key(1), lambda x: -0.5 * jnp.sum(x**2),
                                lambda x: -jnp.sum(jnp.abs(x - 1.0)) / 0.3, x0,
                                target_ess=0.7)
    out.n_steps, out.temperatures[: out.n_steps], out.log_evidence
    ```
    """
    owner = "adaptive_tempered_smc"
    particles, setup, n_mcmc_steps = _setup(
        owner,
        log_prior,
        log_likelihood,
        initial_particles,
        mcmc,
        n_mcmc_steps,
        step_scale,
        n_leapfrog,
        resampling,
    )
    max_steps = _check_positive_int(max_steps, "max_steps", owner)
    value = fxp.concrete_value(target_ess)
    if jnp.ndim(target_ess) != 0 or (value is not None and not 0.0 < float(value) < 1.0):
        raise ValueError(
            f"{owner}: target_ess is the fraction of N each step keeps, a scalar in (0, 1) "
            f"(0.5 is usual; higher means more, smaller steps); got {target_ess!r}."
        )
    kernel = bj_adaptive.build_kernel(
        log_prior,
        log_likelihood,
        setup.step_fn,
        setup.init_fn,
        setup.resampling_fn,
        target_ess,
    )
    dtype = particles.dtype
    # lambda + (1 - lambda) can round to 1 - ulp; anything this close to 1 is done.
    one = 1.0 - 8.0 * float(jnp.finfo(dtype).eps)
    nan_buffer = jnp.full((max_steps,), jnp.nan, dtype)

    def cond(carry):
        state, k, _ = carry
        return (state.tempering_param < one) & (k < max_steps)

    def body(carry):
        state, k, records = carry
        params = _mcmc_parameters(setup.mcmc, state, setup.step_scale)
        new_state, info = kernel(jax.random.fold_in(key, k), state, n_mcmc_steps, params)
        new_state = new_state._replace(
            tempering_param=jnp.asarray(new_state.tempering_param, dtype)
        )
        row = _step_record(new_state, info)
        records = tuple(buf.at[k].set(v.astype(dtype)) for buf, v in zip(records, row, strict=True))
        return new_state, k + 1, records

    state = bj_tempered.init(particles)
    state = state._replace(tempering_param=jnp.zeros((), dtype))
    carry = (state, jnp.zeros((), jnp.int32), (nan_buffer,) * 4)
    state, n_steps, (temperatures, increments, acceptance, ess) = jax.lax.while_loop(
        cond, body, carry
    )
    return _finish(
        state,
        temperatures,
        increments,
        acceptance,
        ess,
        n_steps,
        state.tempering_param >= one,
        throw,
        owner,
    )
