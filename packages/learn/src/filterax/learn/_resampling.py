r"""Resamplers on log-weights, the effective sample size, and differentiable resampling.

Every resampler maps ``(key, log_weights, n)`` to ``n`` ancestor indices (int32) drawn so that
particle ``j`` is copied ``O_j`` times with ``E[O_j] = n W_j``, where
``W_j = exp(lw_j - logsumexp(lw))`` are the normalised weights of the (unnormalised)
log-weights ``lw``. Entries ``-inf`` (zero weight) are never selected.

**Degenerate weights.** When ``logsumexp(lw)`` is not finite (every entry ``-inf``, or a NaN or
``+inf`` entry) the weights are undefined. The resamplers then resample as if the weights were
uniform, so the indices stay valid and nothing downstream reads out of range; the result
carries no information. Callers detect the case first with
``jnp.isfinite(jax.nn.logsumexp(lw))`` — the particle filters of this package do and report
``CycleInfo.finite=False``, so the `filterax.filters.run` driver freezes and flags the status.
`effective_sample_size` returns ``0`` in that case and `normalise_log_weights` returns NaN.

The four unbiased schemes (Douc, Cappé & Moulines 2005, *Comparison of resampling schemes
for particle filtering*) differ in the uniforms fed to the inverse CDF
``a = F^{-1}(u)``, ``F(j) = sum_{i <= j} W_i``:

- multinomial: ``u_i ~ U[0, 1)`` independently;
- stratified: ``u_i = (i + U_i) / n`` with independent ``U_i ~ U[0, 1)``;
- systematic: ``u_i = (i + U) / n`` with one ``U ~ U[0, 1)``;
- residual: ``floor(n W_j)`` deterministic copies of particle ``j``, then the remaining
  ``R = n - sum_j floor(n W_j)`` drawn multinomially from the residuals
  ``(n W_j - floor(n W_j)) / R``.

Stratified, systematic and residual have conditional variance of the counts no larger than
multinomial's (systematic's is not guaranteed in theory but is in practice, Douc et al. 2005).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

import filterax.primitives as fxp

__all__ = [
    "effective_sample_size",
    "multinomial_resample",
    "normalise_log_weights",
    "residual_resample",
    "soft_resample",
    "stop_gradient_resample",
    "stratified_resample",
    "systematic_resample",
]

Resampler = Callable[[PRNGKeyArray, Array, int], Array]


def _check(name: str, log_weights: Any, n: Any) -> Array:
    lw = jnp.asarray(log_weights)
    if lw.ndim != 1 or lw.shape[0] < 1:
        raise ValueError(
            f"{name}: log_weights must be a 1-d array of N >= 1 log-weights (one per "
            f"particle); got shape {lw.shape}."
        )
    if not jnp.issubdtype(lw.dtype, jnp.floating):
        raise TypeError(
            f"{name}: log_weights must be floating point (e.g. jnp.zeros(N) for uniform "
            f"weights); got dtype {lw.dtype}."
        )
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(
            f"{name}: n (the number of ancestors to draw) must be a positive Python int, "
            f"known at trace time because it is an output shape; got {n!r}."
        )
    return lw


def _weights(lw: Array) -> Array:
    """Normalised weights; uniform where the normaliser is not finite (see module docs)."""
    lw = jax.lax.stop_gradient(lw)
    total = jax.nn.logsumexp(lw)
    ok = jnp.isfinite(total)
    w = jnp.exp(lw - jnp.where(ok, total, 0.0))
    return jnp.where(ok, w, jnp.full_like(w, 1.0 / lw.shape[0]))


def _inverse_cdf(u: Array, w: Array) -> Array:
    """``F^{-1}(u)``: the first ``j`` with ``F(j) > u``; zero-weight entries are never hit."""
    cdf = jnp.cumsum(w)
    # Normalise so that F(N-1) = 1 exactly: round-off must not leave u in (F(N-1), 1).
    cdf = cdf / cdf[-1]
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(idx, w.shape[0] - 1).astype(jnp.int32)


def normalise_log_weights(log_weights: Float[ArrayLike, " N"]) -> Float[Array, " N"]:
    r"""Normalised log-weights ``lw - logsumexp(lw)`` (so that ``sum exp = 1``).

    Differentiable. If every entry is ``-inf`` the result is NaN (undefined weights): test
    ``jnp.isfinite(jax.nn.logsumexp(lw))`` first.

    **Example:**

    ```python
    normalise_log_weights(jnp.log(jnp.array([1.0, 3.0])))  # log([0.25, 0.75])
    ```
    """
    lw = jnp.asarray(log_weights)
    if lw.ndim != 1:
        raise ValueError(
            f"normalise_log_weights: log_weights must be 1-d (one per particle); got shape "
            f"{lw.shape}."
        )
    return lw - jax.nn.logsumexp(lw)


def effective_sample_size(log_weights: Float[ArrayLike, " N"]) -> Float[Array, ""]:
    r"""The effective sample size ``1 / sum_j W_j^2`` of unnormalised log-weights.

    Computed in log space, ``exp(2 logsumexp(lw) - logsumexp(2 lw))``; it lies in ``[1, N]``
    (``N`` for uniform weights, ``1`` when one particle holds all the weight). Degenerate
    weights (no finite normaliser: all ``-inf``, or NaN) give ``0``, so an ESS-triggered
    resampling rule fires; the caller should still report the failure.

    **Reference:** Kong, Liu & Wong (1994), *Sequential imputations and Bayesian missing data
    problems*; DAPPER's ``N_eff = 1/(w@w)`` in ``PartFilt``.

    **Example:**

    ```python
    effective_sample_size(jnp.zeros(10))  # 10.0
    ```
    """
    lw = jnp.asarray(log_weights)
    if lw.ndim != 1:
        raise ValueError(
            f"effective_sample_size: log_weights must be 1-d (one per particle); got shape "
            f"{lw.shape}."
        )
    total = jax.nn.logsumexp(lw)
    ok = jnp.isfinite(total)
    safe = jnp.where(ok, lw, 0.0)
    ess = jnp.exp(2.0 * jax.nn.logsumexp(safe) - jax.nn.logsumexp(2.0 * safe))
    return jnp.where(ok, ess, jnp.zeros_like(ess))


def multinomial_resample(
    key: PRNGKeyArray, log_weights: Float[ArrayLike, " N"], n: int
) -> Int[Array, " n"]:
    r"""Multinomial resampling: ``n`` i.i.d. draws ``a_i ~ Categorical(W)``.

    Inverse CDF at independent uniforms; the counts are ``Multinomial(n, W)``, with variance
    ``n W_j (1 - W_j)``. See the module docstring for degenerate weights.

    **Arguments:** `key`; `log_weights` ``(N,)`` unnormalised, ``-inf`` allowed; `n` the
    number of ancestors (a Python int).

    **Returns:** int32 ancestors ``(n,)`` in ``[0, N)``.

    **Reference:** Gordon, Salmond & Smith (1993). DAPPER: ``resample(w, 'Multinomial')``.

    **Example:**

    ```python
    multinomial_resample(jax.random.key(0), jnp.log(jnp.array([0.0, 1.0])), 3)  # [1, 1, 1]
    ```
    """
    lw = _check("multinomial_resample", log_weights, n)
    u = jax.random.uniform(key, (n,), dtype=lw.dtype)
    return _inverse_cdf(u, _weights(lw))


def stratified_resample(
    key: PRNGKeyArray, log_weights: Float[ArrayLike, " N"], n: int
) -> Int[Array, " n"]:
    r"""Stratified resampling: one uniform per stratum, ``u_i = (i + U_i) / n``.

    Unbiased (``E[O_j] = n W_j``) with count variance never larger than multinomial's.
    Ancestors come out sorted. See the module docstring for degenerate weights.

    **Reference:** Kitagawa (1996), *Monte Carlo filter and smoother for non-Gaussian
    nonlinear state space models*. DAPPER: ``resample(w, 'Stochastic')`` is the systematic
    variant; DAPPER has no stratified scheme.

    **Example:**

    ```python
    stratified_resample(jax.random.key(0), jnp.zeros(4), 4)  # a permutation-free [0, 1, 2, 3]
    ```
    """
    lw = _check("stratified_resample", log_weights, n)
    u = (jnp.arange(n, dtype=lw.dtype) + jax.random.uniform(key, (n,), dtype=lw.dtype)) / n
    return _inverse_cdf(u, _weights(lw))


def systematic_resample(
    key: PRNGKeyArray, log_weights: Float[ArrayLike, " N"], n: int
) -> Int[Array, " n"]:
    r"""Systematic resampling: one uniform shared by all strata, ``u_i = (i + U) / n``.

    Unbiased; each count is ``floor(n W_j)`` or ``floor(n W_j) + 1``. Ancestors come out
    sorted. See the module docstring for degenerate weights.

    **Reference:** Carpenter, Clifford & Fearnhead (1999); Kitagawa (1996). DAPPER:
    ``resample(w, 'Systematic')`` (the default of ``PartFilt``).

    **Example:**

    ```python
    systematic_resample(jax.random.key(0), jnp.log(jnp.array([0.5, 0.25, 0.25])), 4)
    # two copies of 0, one each of 1 and 2
    ```
    """
    lw = _check("systematic_resample", log_weights, n)
    u0 = jax.random.uniform(key, (), dtype=lw.dtype)
    u = (jnp.arange(n, dtype=lw.dtype) + u0) / n
    return _inverse_cdf(u, _weights(lw))


def residual_resample(
    key: PRNGKeyArray, log_weights: Float[ArrayLike, " N"], n: int
) -> Int[Array, " n"]:
    r"""Residual resampling: ``floor(n W_j)`` copies of each particle, the rest multinomial.

    The deterministic part fills the first ``D = sum_j floor(n W_j)`` ancestors in index
    order; the remaining ``n - D`` are i.i.d. draws from the residual weights
    ``r_j = n W_j - floor(n W_j)``. Unbiased, with count variance never larger than
    multinomial's. See the module docstring for degenerate weights.

    **Reference:** Liu & Chen (1998), *Sequential Monte Carlo methods for dynamic systems*.
    DAPPER: ``resample(w, 'Residual')``.

    **Example:**

    ```python
    residual_resample(jax.random.key(0), jnp.log(jnp.array([0.5, 0.5])), 4)  # [0, 0, 1, 1]
    ```
    """
    lw = _check("residual_resample", log_weights, n)
    w = _weights(lw)
    scaled = n * w
    copies = jnp.floor(scaled)
    # Round-off may put sum(copies) a hair above n; cap so the deterministic part fits.
    ends = jnp.minimum(jnp.cumsum(copies), float(n))
    positions = jnp.arange(n, dtype=w.dtype)
    deterministic = jnp.searchsorted(ends, positions, side="right")
    residual = jnp.maximum(scaled - copies, 0.0)
    has_residual = jnp.sum(residual) > 0.0
    residual = jnp.where(has_residual, residual, jnp.ones_like(residual))
    u = jax.random.uniform(key, (n,), dtype=w.dtype)
    random = _inverse_cdf(u, residual)
    ancestors = jnp.where(positions < ends[-1], deterministic, random)
    return jnp.minimum(ancestors, lw.shape[0] - 1).astype(jnp.int32)


def stop_gradient_resample(
    key: PRNGKeyArray,
    log_weights: Float[ArrayLike, " N"],
    n: int,
    resampler: Resampler = systematic_resample,
) -> tuple[Int[Array, " n"], Float[Array, " n"]]:
    r"""Resampling whose log-weights carry the score-function gradient (Ścibior & Wood 2021).

    With ``a = resampler(key, lw, n)`` and normalised log-weights
    ``\ell_j = lw_j - logsumexp(lw)``, the new log-weights are

    $$\tilde{lw}_i = \ell_{a_i} - \bot(\ell_{a_i}) + \bot\big(\mathrm{logsumexp}(lw)\big)
    - \log n,$$

    where ``⊥`` is `jax.lax.stop_gradient`. Their *value* is uniform and preserves the total
    mass ``sum_i exp(\tilde{lw}_i) = sum_j exp(lw_j)`` — the forward pass is exactly that of
    ordinary resampling — while their *gradient* is the score ``∇ log W_{a_i}``, so for any
    ``h``, ``(1/n) sum_i exp(\tilde{lw}_i - ⊥\tilde{lw}_i) h(a_i)`` has expectation
    ``sum_j W_j h_j`` and gradient expectation ``∇ sum_j W_j h_j`` (unbiased for every
    unbiased resampler). Particle filters that resample this way give unbiased gradient
    estimates of the log-evidence's expectation up to the usual SMC bias.

    **Arguments:** `key`; `log_weights` ``(N,)``; `n`; `resampler` one of this module's
    resamplers (default systematic).

    **Returns:** ``(ancestors (n,) int32, new_log_weights (n,))``.

    **Reference:** Ścibior & Wood (2021), *Differentiable particle filtering without modifying
    the forward pass*, arXiv:2106.10314.

    **Example:**

    ```python
    a, lw = stop_gradient_resample(jax.random.key(0), jnp.log(jnp.array([0.2, 0.8])), 4)
    jnp.exp(lw)  # [0.25, 0.25, 0.25, 0.25]
    ```
    """
    lw = _check("stop_gradient_resample", log_weights, n)
    ancestors = resampler(key, jax.lax.stop_gradient(lw), n)
    total = jax.nn.logsumexp(lw)
    ell = lw[ancestors] - total
    new = ell - jax.lax.stop_gradient(ell) + jax.lax.stop_gradient(total) - math.log(n)
    return ancestors, new


def soft_resample(
    key: PRNGKeyArray,
    log_weights: Float[ArrayLike, " N"],
    n: int,
    alpha: float | Float[ArrayLike, ""],
    resampler: Resampler = systematic_resample,
) -> tuple[Int[Array, " n"], Float[Array, " n"]]:
    r"""Soft resampling (Karkus, Hsu & Lee 2018): resample from a mixture with the uniform.

    Ancestors are drawn from ``q = α W + (1 - α)/N`` and re-weighted by ``W/q``:

    $$a \sim q,\qquad \tilde{lw}_i = \log W_{a_i} - \log q_{a_i} + \mathrm{logsumexp}(lw)
    - \log n,$$

    so ``sum_i exp(\tilde{lw}_i)`` is an unbiased estimate of ``sum_j exp(lw_j)`` and the
    weights stay differentiable through ``W/q`` (the sampling itself is not differentiated).
    ``α = 1`` is ordinary resampling (uniform new weights, no gradient through them);
    ``α = 0`` draws uniformly and keeps the importance weights ``N W``.

    **Arguments:** `key`; `log_weights` ``(N,)``; `n`; `alpha` in ``[0, 1]`` (dynamic, may be
    traced); `resampler` (default systematic).

    **Returns:** ``(ancestors (n,) int32, new_log_weights (n,))``.

    **Reference:** Karkus, Hsu & Lee (2018), *Particle filter networks with application to
    visual localization*, CoRL, §3.

    **Example:**

    ```python
    a, lw = soft_resample(jax.random.key(0), jnp.log(jnp.array([0.2, 0.8])), 4, alpha=0.5)
    ```
    """
    lw = _check("soft_resample", log_weights, n)
    value = fxp.concrete_value(alpha)
    if value is not None and (value.ndim != 0 or not 0.0 <= float(value) <= 1.0):
        raise ValueError(
            f"soft_resample: alpha is the mixing weight of the weights with the uniform, a "
            f"scalar in [0, 1] (1 = ordinary resampling); got {alpha!r}."
        )
    big_n = lw.shape[0]
    total = jax.nn.logsumexp(lw)
    ell = lw - total
    alpha = jnp.asarray(alpha, lw.dtype)
    # log q = log(α W + (1 - α)/N), computed in log space so that tiny W stay accurate.
    log_q = jnp.logaddexp(jnp.log(alpha) + ell, jnp.log1p(-alpha) - math.log(big_n))
    ancestors = resampler(key, jax.lax.stop_gradient(log_q), n)
    new = ell[ancestors] - log_q[ancestors] + total - math.log(n)
    return ancestors, new
