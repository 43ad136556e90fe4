r"""The ensemble transform particle filter (Reich 2013): OT coupling as resampling.

Also the per-member Gaussian log-likelihood (importance weights) shared with the nonlinear
ensemble transform filters (`filterax.learn.NETF`, `filterax.learn.LNETF`).
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

import filterax.primitives as fxp
from filterax.filters import AnalysisInputs, prepare_analysis

from ._optimal_transport import _uniform_target_coupling

__all__ = ["ETPF", "ETPFInfo", "member_log_likelihoods", "whitened_residuals"]

_LOG_2PI = math.log(2.0 * math.pi)


def whitened_residuals(inputs: AnalysisInputs) -> Float[Array, "N_e N_y"]:
    r"""The whitened residuals ``G (y - H(x_k))`` of every member, zero at missing entries.

    $$G(y - H(x_k)) = G d - G Y'_k = \delta - \sqrt{N_e - 1}\, S_k,$$

    from the whitened innovation ``delta`` and anomalies ``S`` of `prepare_analysis` (both zero
    at NaN observations), so no NaN reaches arithmetic.
    """
    scale = math.sqrt(inputs.n_ensemble - 1)
    return inputs.whitened_innovation[None, :] - scale * inputs.whitened_anomalies


def member_log_likelihoods(inputs: AnalysisInputs) -> Float[Array, " N_e"]:
    r"""``log p(y | x_k) = log N(y; H(x_k), R)`` for every member, over the observed entries.

    $$\log p(y\mid x_k) = -\tfrac12\big(n_{obs}\log 2\pi + \log|R_{obs}|
      + \|G(y - H(x_k))\|^2\big)$$

    (missing entries carry an identity block in the masked ``R``, so ``log|R|`` is that of the
    observed subset). These are the importance log-weights of a particle filter with the
    forecast ensemble as proposal.
    """
    residuals = whitened_residuals(inputs)
    n_obs = inputs.n_obs.astype(inputs.dtype)
    logdet = inputs.whitener.logdet()
    return -0.5 * (n_obs * _LOG_2PI + logdet + jnp.sum(residuals**2, axis=1))


def log_evidence(log_lik: Float[Array, " N_e"]) -> Float[Array, ""]:
    r"""``log (1/N) sum_k p(y | x_k)``: the particle estimate of ``log p(y | y_{1:t-1})``."""
    return jax.nn.logsumexp(log_lik) - math.log(log_lik.shape[0])


def _check_jitter_key(jitter: Any, key: PRNGKeyArray | None, name: str) -> None:
    concrete = fxp.concrete_value(jitter)
    if key is None and concrete is not None and float(concrete) != 0.0:
        raise ValueError(
            f"{name}: rejuvenation (jitter > 0) is random and needs a PRNG key: pass "
            "key=jax.random.key(seed), or jitter=0.0 for the deterministic transform."
        )


def rejuvenate(
    key: PRNGKeyArray | None,
    analysis: Float[Array, "N_e N_x"],
    anomalies: Float[Array, "N_e N_x"],
    jitter: Float[Array, ""],
) -> Float[Array, "N_e N_x"]:
    r"""Add ``jitter * X'^T xi / sqrt(N_e - 1)``, ``xi ~ N(0, I_{N_e})`` per member: draws of
    ``N(0, jitter^2 P^f)`` with ``P^f`` the forecast sample covariance (never formed)."""
    if key is None:
        # a traced jitter without a key (a concrete one was refused at trace time)
        return eqx.error_if(
            analysis,
            jitter != 0.0,
            "rejuvenation (jitter > 0) needs a PRNG key: pass key=jax.random.key(seed).",
        )
    n_e = analysis.shape[0]
    xi = jax.random.normal(key, (n_e, n_e), analysis.dtype)
    return analysis + jitter * fxp.matmul(xi, anomalies) / math.sqrt(n_e - 1)


def fail_if_no_weight(
    log_lik: Float[Array, " N_e"],
) -> tuple[Float[Array, " N_e"], Bool[Array, ""]]:
    """Normalised log-weights with a safe fallback, and the flag ``some member has weight``.

    When every log-likelihood is ``-inf`` (or one is NaN/+inf) there are no importance weights;
    the uniform weights stand in so the arithmetic stays finite and the caller marks the
    analysis NaN (the driver reports the cycle non-finite)."""
    ok = jnp.all(~jnp.isnan(log_lik)) & jnp.any(jnp.isfinite(log_lik))
    ok = ok & jnp.all(log_lik < jnp.inf)
    safe = jnp.where(ok, log_lik, jnp.zeros_like(log_lik))
    return safe - jax.nn.logsumexp(safe), ok


class ETPFInfo(eqx.Module):
    r"""Diagnostics returned (as ``Analysis.info``) by `ETPF`.

    **Fields:**

    - `log_weights`: the normalised importance log-weights ``log w_k``, ``(N_e,)``.
    - `ess`: the effective sample size ``1 / sum_k w_k^2``.
    - `coupling`: the transport matrix ``P``, ``(N_e, N_e)`` (rows sum to ``w``, columns to
      ``1/N_e``).
    - `marginal_error`: ``max_j |N_e sum_k P_kj - 1|``, the Sinkhorn residual (0 when exact).
    - `innovation`: ``d = y - mean H(X^f)`` (0 at missing entries).
    """

    log_weights: Float[Array, " N_e"]
    ess: Float[Array, ""]
    coupling: Float[Array, "N_e N_e"]
    marginal_error: Float[Array, ""]
    innovation: Float[Array, " N_y"]


class ETPF(fxp.AbstractSequentialFilter):
    r"""Ensemble transform particle filter: importance weights, then an OT transform (Reich 2013).

    The forecast members are the particles of an importance sampler with weights
    ``w_k ∝ p(y | x_k)`` (Gaussian likelihood, `member_log_likelihoods`; NaN observations get
    zero weight). Instead of resampling at random, the weighted and the uniformly weighted
    ensembles are coupled by optimal transport on the squared distance, and the analysis is the
    coupling's barycentric map:

    $$P = \arg\min_{P \ge 0,\ P\mathbf 1 = w,\ P^\top \mathbf 1 = \mathbf 1/N_e}
        \sum_{k,j} P_{kj}\,|x^f_k - x^f_j|^2 - \varepsilon H(P), \qquad
      X^a = N_e\, P^\top X^f .$$

    Reich solves the linear programme (``epsilon = 0``); here ``P`` is the entropy-regularised
    coupling by log-domain Sinkhorn with ``epsilon``-scaling (`sinkhorn_coupling`), which
    converges to it as ``epsilon -> 0`` and is differentiable (Corenflos et al. 2021). The
    analysis mean equals the importance (weighted) mean ``sum_k w_k x^f_k`` to round-off for any
    ``epsilon``; the analysis covariance is the weighted one minus an ``O(epsilon)`` shrinkage
    (the transform is a deterministic, consistent resampling: ETPF -> the Bayesian posterior as
    ``N_e -> inf`` with ``epsilon -> 0``).

    **Rejuvenation.** The transform gives no new spread; with `jitter` ``> 0`` each member gets
    ``jitter * X'^{fT} xi_k / sqrt(N_e - 1)``, ``xi_k ~ N(0, I)`` (draws of
    ``N(0, jitter^2 P^f)``, Reich 2013 §4; Reich & Cotter 2015, §8.2), which needs a key.
    Multiplicative inflation and random rotations via `EnsembleFilter` are the alternatives.

    **Log-evidence.** ``log_likelihood = log (1/N_e) sum_k p(y | x^f_k)``, the particle
    estimate of ``log p(y_t | y_{1:t-1})`` (not the Gaussian ``log N(d; 0, C^HH + R)`` of the
    Kalman-type kernels); summed over cycles by `run`.

    **Failure.** If no member has a finite likelihood (all ``-inf``: every member infinitely
    far from the data) the analysis is NaN and ``log_likelihood = -inf``, which the driver
    reports as a non-finite cycle (status 1) and freezes on.

    **Arguments:**

    - `epsilon`: the entropic regularisation relative to the mean pairwise squared distance
      of the forecast members (dynamic; default ``0.02``; smaller is closer to Reich's LP and
      needs more sweeps; `ETPFInfo.marginal_error` reports the residual).
    - `n_iter`: Sinkhorn sweeps (static, default 500); with `epsilon_scaling` (static,
      default ``0.9``) the schedule reaches `epsilon` after ``log(epsilon / max C)/log 0.9``
      (~60) sweeps, but converging there takes more: measured on a 60-member 1-d cloud, the
      column residual after 600 / 2000 sweeps is 2e-4 / 8e-11 at ``epsilon = 0.01``, 3e-3 /
      3e-6 at ``0.005`` and 2e-2 / 2e-3 at ``0.002`` (3e-6 at the default 0.02 with 500).
      Check `ETPFInfo.marginal_error`.
    - `tol`: optional early-freeze tolerance of the Sinkhorn iteration (static).
    - `jitter`: rejuvenation scale (dynamic, default 0).

    `analysis(key, forecast, obs, obs_op, obs_noise)`: `obs_op` a callable on one state, a
    lineax operator or a matrix; `obs_noise` any noise structure; `key` used only for `jitter`.
    Run it as a cycled method with ``run(EnsembleFilter(ETPF(...)), model, ...)``.

    **Returns** (of `analysis`): `fxp.Analysis(particles, log_likelihood, info)` with ``info``
    an `ETPFInfo`.

    **Reference:** Reich (2013), *A nonparametric ensemble transform method for Bayesian
    inference*, SIAM J. Sci. Comput. 35, A2013–A2024; Reich & Cotter (2015), *Probabilistic
    Forecasting and Bayesian Data Assimilation*, §5.3, §7.4; Corenflos, Thornton, Deligiannidis
    & Doucet (2021), ICML. Tutorial 10.9 (OT coupling as resampling). DAPPER has no ETPF (its
    ``PartFilt`` resamples at random).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.learn import ETPF

        X = jax.random.normal(jax.random.key(0), (50, 3))
        out = ETPF(epsilon=0.01).analysis(None, X, jnp.ones(3), fxp.IdentityObs(), 1.0)
        out.particles.mean(0)  # == sum_k w_k X_k (out.info.log_weights)
        ```
    """

    epsilon: Float[ArrayLike, ""] = eqx.field(
        default=0.02,
        converter=fxp.parameter_converter(
            "ETPF(epsilon=...)",
            low=0.0,
            low_open=True,
            hint="It is relative to the mean squared distance between members (e.g. 0.01).",
        ),
    )
    n_iter: int = eqx.field(static=True, default=500)
    epsilon_scaling: float | None = eqx.field(static=True, default=0.9)
    tol: float | None = eqx.field(static=True, default=None)
    jitter: Float[ArrayLike, ""] = eqx.field(
        default=0.0,
        converter=fxp.parameter_converter(
            "ETPF(jitter=...)", low=0.0, hint="A rejuvenation scale >= 0 (0 disables it)."
        ),
    )

    def __check_init__(self) -> None:
        if not isinstance(self.n_iter, int) or isinstance(self.n_iter, bool) or self.n_iter < 1:
            raise ValueError(f"ETPF(n_iter=...) must be a positive int; got {self.n_iter!r}.")
        for name in ("epsilon", "jitter"):
            if jnp.ndim(getattr(self, name)) != 0:
                raise ValueError(f"ETPF({name}=...) must be a scalar.")

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[ArrayLike, "N_e N_x"],
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> fxp.Analysis:
        """Weight, couple, transform (see the class docstring)."""
        name = "ETPF.analysis"
        if context:
            raise TypeError(
                f"{name} takes no context keywords, so {sorted(context)} would be ignored "
                "(the ETPF is a global analysis; LNETF is the localised particle-type filter)."
            )
        _check_jitter_key(self.jitter, key, name)
        inputs = prepare_analysis(forecast, obs, obs_op, obs_noise, name=name)
        dtype = inputs.dtype
        members = inputs.anomalies + inputs.forecast_mean[None, :]
        log_lik = member_log_likelihoods(inputs)
        log_w, ok = fail_if_no_weight(log_lik)
        coupling = _uniform_target_coupling(
            log_w,
            members,
            jnp.asarray(self.epsilon, dtype),
            self.n_iter,
            self.tol,
            self.epsilon_scaling,
            True,
        )
        n_e = inputs.n_ensemble
        # X^a = N P^T X = mean-free part plus the weighted mean: the anomaly form keeps the
        # mean exact to round-off even for large |x|.
        analysis = inputs.forecast_mean[None, :] + n_e * fxp.matmul(coupling.T, inputs.anomalies)
        jitter = jnp.asarray(self.jitter, dtype)
        analysis = rejuvenate(key, analysis, inputs.anomalies, jitter)
        analysis = jnp.where(ok, analysis, jnp.nan)
        evidence = jnp.where(ok, log_evidence(log_lik), -jnp.inf)
        info = ETPFInfo(
            log_weights=log_w,
            ess=1.0 / jnp.sum(jnp.exp(2.0 * log_w)),
            coupling=coupling,
            marginal_error=jnp.max(jnp.abs(n_e * jnp.sum(coupling, axis=0) - 1.0)),
            innovation=inputs.innovation,
        )
        return fxp.Analysis(analysis, evidence, info)
