"""The ensemble smoother with multiple data assimilation (ES-MDA, Emerick & Reynolds 2013)."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._failures import check_failure_handler, handle_failures, masked_stats
from ._inversion import (
    AbstractInverseSmoother,
    InversionState,
    checked_status,
    draw_perturbations,
    failure_guard,
    no_minibatches,
    skip_if_failed,
)
from ._linalg import mm, stack_factor

__all__ = ["ESMDA"]

_VARIANTS = ("pertobs", "sqrt")
# |sum 1/alpha - 1| accepted as "= 1": loose enough for the published rounded sets such as
# Emerick's (9.333, 7, 4, 2) (off by 4e-6), tight enough that the posterior is not visibly
# tempered (the likelihood's exponent is off by at most this relative amount).
_ALPHA_SUM_TOL = 1e-4


class ESMDA(AbstractInverseSmoother):
    r"""Ensemble smoother with multiple data assimilation (Emerick & Reynolds 2013).

    The same data are assimilated ``N_a`` times with the noise inflated by ``alpha_i``; for
    ``i = 1..N_a``, with ``G_j = G(theta_j)`` of the current ensemble and Bessel-corrected
    sample covariances,

    $$\theta_j \leftarrow \theta_j + C^{\theta G}\big(C^{GG} + \alpha_i\Gamma\big)^{-1}
      \big(y + \sqrt{\alpha_i}\,\varepsilon_j - G_j\big), \qquad
      \varepsilon_j \sim \mathcal N(0, \Gamma),$$

    with fresh perturbations at every assimilation and $\sum_i 1/\alpha_i = 1$, so that for a
    linear-Gaussian problem the ``N_a`` tempered updates multiply to one full Bayesian update
    (the likelihood $p(y|\theta)$ is the product of the $p(y|\theta)^{1/\alpha_i}$).

    ``variant="sqrt"`` replaces the perturbed observations by a deterministic square-root
    (ETKF-like) update: the mean moves by the Kalman gain applied to ``y - mean(G)``, and the
    anomalies ``A`` (rows) by the symmetric transform

    $$A \leftarrow \big(I + Y\,(\alpha_i\Gamma)^{-1} Y^\top/(N_e - 1)\big)^{-1/2} A,$$

    ``Y`` the ``(N_e, N_y)`` anomalies of ``G``. For a linear ``G`` each update is the exact
    Kalman update of the sample mean and covariance, so the final sample mean and covariance
    equal the exact Gaussian posterior of the prior sample's moments (an algebraic identity).

    Cost per update: ``O(N_e^2 N_y + N_e N_p N_y)`` (``+ N_e^3`` for ``"sqrt"``) for diagonal
    ``Gamma``; a dense ``Gamma`` adds one ``N_y x N_y`` Cholesky.

    ES-MDA is a process (``init(ensemble, obs, obs_noise, *, key)``, ``update(state,
    forward_evals)``), so `calibrate` drives it like `EKI` (executors for non-JAX forward
    models, constrained priors, member failures; ``until_converged=True`` stops after the
    ``N_a`` assimilations). Its algorithm time step is ``dt_i = 1/alpha_i``: update ``i`` is
    the stochastic (``"pertobs"``) or square-root (``"sqrt"``) EKI step with ``dt = 1/alpha_i``,
    and the time reaches 1 with the last assimilation. Mini-batches are not supported (every
    assimilation needs the same data).

    **Arguments:**

    - `alphas`: the inflation coefficients ``(alpha_1, ..., alpha_Na)``, all ``> 0`` with
        ``sum 1/alpha_i = 1`` (default: ``N_a`` times ``N_a``). Dynamic (vmap/sweep-able).
    - `n_assimilations`: ``N_a`` when `alphas` is not given (default 4).
    - `variant`: ``"pertobs"`` (stochastic, the paper's) or ``"sqrt"`` (deterministic).
    - `normalize_alphas`: rescale `alphas` to ``sum 1/alpha_i = 1`` instead of raising.
    - `center_perturbations`: subtract the ensemble mean of the perturbations (DAPPER's
        ``mean0``), removing their sampling error in the mean update.
    - `throw`: with non-finite forward evaluations, raise inside jit (``eqx.error_if``,
        default) or, with ``throw=False``, skip that update (the ensemble is kept, the
        assimilation counted, and `InversionState.n_failed` reports the failed members).
    - `failure_handler`: ``None`` (default: as `throw` says), or EnsembleKalmanProcesses.jl's
        ``"sample_succ_gauss"`` / ``"ignore"`` as in `EKI`: the update uses the statistics of
        the successful members, then the failed ones are re-sampled from a Gaussian fitted to
        the updated successful members, or left where they were.

    **Reference:** A. A. Emerick & A. C. Reynolds (2013), "Ensemble smoother with multiple
    data assimilation", *Computers & Geosciences* 55, 3-15. DAPPER's ``EnKF`` analysis
    (``upd_a="PertObs"`` / ``"Sqrt"``) is the single update; the Python Ensemble Toolbox's
    ``esmda`` is the same loop.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.processes import ESMDA, calibrate

        A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
        y = jnp.array([1.0, 2.0, 3.0])
        prior = jax.random.normal(jax.random.key(0), (200, 2))
        result = ESMDA(n_assimilations=4).run(lambda th: A @ th, prior, y, 0.1,
                                              key=jax.random.key(1))
        result.ensemble.mean(axis=0), result.misfit  # posterior mean; misfit per step
        # the same run through the process driver (or with executor=, prior=, ...):
        same = calibrate(ESMDA(n_assimilations=4), lambda th: A @ th, prior, y, 0.1,
                         key=jax.random.key(1), until_converged=True)
        ```
    """

    alphas: Float[Array, " N_a"]
    variant: str = eqx.field(static=True)
    center_perturbations: bool = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    failure_handler: str | None = eqx.field(static=True)

    def __init__(
        self,
        alphas: Float[ArrayLike, " N_a"] | Sequence[int | float] | None = None,
        n_assimilations: int | None = None,
        variant: str = "pertobs",
        *,
        normalize_alphas: bool = False,
        center_perturbations: bool = False,
        throw: bool = True,
        failure_handler: str | None = None,
    ):
        if variant not in _VARIANTS:
            raise ValueError(
                f"ESMDA(variant=...) must be 'pertobs' (perturbed observations) or 'sqrt' "
                f"(deterministic square root); got {variant!r}."
            )
        if n_assimilations is not None and (
            isinstance(n_assimilations, bool)
            or not isinstance(n_assimilations, int | np.integer)
            or n_assimilations < 1
        ):
            raise ValueError(
                f"ESMDA(n_assimilations=...) must be a positive int; got {n_assimilations!r}."
            )
        if alphas is None:
            n_a = 4 if n_assimilations is None else int(n_assimilations)
            values = jnp.full((n_a,), float(n_a))
        else:
            if isinstance(alphas, list | tuple):
                alphas = jnp.asarray([float(a) for a in alphas])
            if jnp.ndim(alphas) != 1 or jnp.shape(alphas)[0] < 1:
                raise ValueError(
                    f"ESMDA(alphas=...) must be a non-empty 1-D sequence of inflation "
                    f"coefficients, one per assimilation; got shape {jnp.shape(alphas)}."
                )
            if n_assimilations is not None and n_assimilations != jnp.shape(alphas)[0]:
                raise ValueError(
                    f"ESMDA got {jnp.shape(alphas)[0]} alphas but n_assimilations="
                    f"{n_assimilations}; pass one of them (N_a = len(alphas))."
                )
            values = jnp.asarray(alphas)
            if not jnp.issubdtype(values.dtype, jnp.floating):
                values = values.astype(float)
            concrete = fxp.concrete_value(values)
            if concrete is not None:
                if not np.all(np.isfinite(concrete)) or concrete.min() <= 0:
                    raise ValueError(
                        f"ESMDA(alphas=...) must all be finite and > 0 (noise inflation "
                        f"factors); got {concrete.tolist()}."
                    )
                total = float(np.sum(1.0 / concrete))
                if not normalize_alphas and abs(total - 1.0) > _ALPHA_SUM_TOL:
                    raise ValueError(
                        f"ESMDA(alphas=...) must satisfy sum(1/alpha_i) = 1 so that the "
                        f"assimilations add up to one Bayesian update; got sum(1/alpha_i) = "
                        f"{total:.6g}. Rescale them, or pass normalize_alphas=True."
                    )
            if normalize_alphas:
                values = values * jnp.sum(1.0 / values)
        self.alphas = values
        self.variant = variant
        self.center_perturbations = bool(center_perturbations)
        self.throw = bool(throw)
        if failure_handler is not None:
            check_failure_handler(failure_handler, "ESMDA")
        self.failure_handler = failure_handler

    @property
    def n_steps(self) -> int:
        """``N_a``, the number of assimilations."""
        return self.alphas.shape[0]

    def _needs_key(self) -> bool:
        return self.variant == "pertobs"

    def _start(
        self, key: PRNGKeyArray, ensemble: Array, obs: Array, noise: lx.AbstractLinearOperator
    ) -> tuple[Array, None]:
        # Fresh perturbations are drawn at every update; none before the first.
        return jnp.zeros((ensemble.shape[0], obs.shape[0]), ensemble.dtype), None

    def update(
        self,
        state: InversionState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> InversionState:
        """Assimilate once, with ``alpha_i``, ``i = state.iteration``.

        **Arguments:**

        - `state`: the current state.
        - `forward_evals`: ``G(theta_j)`` for every member of `state.ensemble`, shape
            ``(N_e, N_y)``.
        - `obs`, `obs_noise`: not supported (ES-MDA assimilates the same data ``N_a`` times;
            mini-batches would break ``sum 1/alpha_i = 1``); passing them raises.

        **Returns:** the next `InversionState` (``dt = 1/alpha_i``). Calling it more than
        ``N_a`` times raises inside jit.
        """
        no_minibatches(
            "ESMDA",
            obs,
            obs_noise,
            "its inflation coefficients temper ONE data set N_a times (sum 1/alpha_i = 1), so "
            "every assimilation needs the same y and Gamma.",
        )
        x = state.ensemble
        n_e = x.shape[0]
        dtype = x.dtype
        g = fxp.check_forward_evals(forward_evals, n_e, state.obs.shape[0], dtype=dtype)
        handled = self.failure_handler is not None
        g, failed = failure_guard(g, self.throw and not handled, "ESMDA", state.status)
        ok = ~failed
        n_failed = jnp.sum(failed).astype(jnp.int32)
        iteration = eqx.error_if(
            state.iteration,
            state.iteration >= self.n_steps,
            "ESMDA.update: all N_a assimilations have been done; build ESMDA with more "
            "alphas (or start a new run from init).",
        )
        alpha = self.alphas.astype(dtype)[jnp.minimum(iteration, self.n_steps - 1)]
        whitening = fxp.noise_whitening(state.obs_noise, dtype)
        dt, status = checked_status(self, state, whitening, (1.0 / alpha).astype(dtype), self.throw)
        # Statistics of the successful members only (all of them unless a failure handler is
        # set: with `throw` a failure has raised, without it the update is skipped).
        x_mean, x_centred, count = masked_stats(x, ok)
        g_mean, g_centred, _ = masked_stats(g, ok)
        denom = jnp.sqrt(jnp.maximum(count - 1.0, 1.0))
        x_anom = x_centred / denom
        y_anom = whitening.white(g_centred) / denom  # (N_e, N_y), whitened
        # (C^GG + alpha Gamma)^{-1} = alpha^{-1} L^{-T} (I + F F^T)^{-1} L^{-1},
        # F = [Y_a^T / sqrt(alpha), U~] (whitened noise N = I + U~ U~^T).
        factor = stack_factor(y_anom.T / jnp.sqrt(alpha), whitening.factor)
        cross = mm(y_anom.T, x_anom)  # (N_y, N_p): (C^{theta G})^T, whitened data axis
        step_key = jax.random.fold_in(state.key, state.iteration)
        if self.variant == "pertobs":
            eps = draw_perturbations(
                step_key, state.obs_noise, n_e, dtype, self.center_perturbations
            )
            g_clean = jnp.where(ok[:, None], g, g_mean[None, :])
            residuals = whitening.white(state.obs[None, :] + jnp.sqrt(alpha) * eps - g_clean)
            z = fxp.whitened_noise_solve(residuals, factor) / alpha
            updated = x + mm(z, cross)
        else:
            eps = jnp.zeros_like(state.perturbations)
            residual = whitening.white(state.obs - g_mean)
            z = fxp.whitened_noise_solve(residual[None, :], factor)[0] / alpha
            mean = x_mean + mm(z[None, :], cross)[0]
            # T^{-2} = I + Y_a N^{-1} Y_a^T / alpha (ensemble space, N_e x N_e); symmetric
            # root, so T 1 = 1 and the anomalies stay centred.
            y_noise = fxp.whitened_noise_solve(y_anom, whitening.factor)
            gram = mm(y_noise, y_anom.T) / alpha
            # (I + gram)^{-1/2} with a Daleckii-Krein derivative: finite at the repeated
            # zero eigenvalues that N_y < N_e - 1 always gives (a plain eigh gives NaN grads).
            transform = fxp.inverse_sqrt_one_plus(gram)
            updated = mean[None, :] + mm(transform, x_centred)
        if handled:
            assert self.failure_handler is not None
            fail_key = jax.random.fold_in(step_key, 1)
            updated = handle_failures(self.failure_handler, fail_key, x, updated, failed)
        new = InversionState(
            ensemble=jnp.where(dt > 0, updated, x),
            prior=state.prior,
            obs=state.obs,
            obs_noise=state.obs_noise,
            perturbations=eps.astype(dtype),
            key=state.key,
            iteration=state.iteration + 1,
            weights=None,
            n_failed=n_failed,
            time=state.time + dt,
            dt=dt,
            converged=state.iteration + 1 >= self.n_steps,
            status=status,
        )
        # With throw=True (and no handler) a failure has already raised; the select is only
        # needed otherwise.
        return new if self.throw or handled else skip_if_failed(new, state, n_failed)
