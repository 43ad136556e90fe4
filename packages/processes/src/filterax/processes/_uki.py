"""Unscented Kalman inversion (UKI) and the sigma-point (unscented) transform."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, ScalarLike

import filterax.primitives as fxp

from ._checks import (
    check_hyperparameter,
    check_initial_ensemble,
    check_obs,
    checked_obs_noise,
    in_range,
)
from ._converters import as_float
from ._failures import check_failure_handler
from ._kalman_update import (
    UpdateData,
    prepare_update,
)
from ._linalg import (
    mm,
    stack_factors,
)
from ._process_base import (
    AbstractProcessBase,
    check_data_dimension,
    check_prior,
    checked_step,
    initial_key,
    new_state,
    prior_cov_ok,
    prior_operator,
    resolve_obs,
    schedule,
)
from ._schedulers import FixedScheduler
from ._state import ProcessState
from ._status import initial_status

__all__ = ["UKI", "UKIState", "sigma_points"]


def default_alpha(n_params: int, kappa: float = 0.0) -> float:
    """Huang, Schneider & Stuart's ``alpha = min(sqrt(4 / (N_p + kappa)), 1)``."""
    return min(math.sqrt(4.0 / (n_params + kappa)), 1.0)


def _matrix_root(cov: Array) -> Array:
    # Cholesky when positive definite; otherwise (a collapsed direction) the eigen square
    # root with negative round-off eigenvalues clipped, so sigma points stay finite.
    cov = 0.5 * (cov + cov.T)
    chol = jnp.linalg.cholesky(cov)

    def eigen_root(c: Array) -> Array:
        eigvals, eigvecs = jnp.linalg.eigh(c)
        return eigvecs * jnp.sqrt(jnp.maximum(eigvals, 0.0))[None, :]

    return lax.cond(jnp.all(jnp.isfinite(chol)), lambda c: chol, eigen_root, cov)


def sigma_points(
    mean: Float[ArrayLike, " N_p"],
    cov: Float[ArrayLike, "N_p N_p"],
    alpha: ScalarLike | None = None,
    beta: ScalarLike = 2.0,
    kappa: ScalarLike = 0.0,
    *,
    modified: bool = False,
) -> tuple[Float[Array, "N_s N_p"], Float[Array, " N_s"], Float[Array, " N_s"]]:
    r"""The ``2 N_p + 1`` symmetric sigma points and their mean and covariance weights.

    With $\lambda = \alpha^2 (N_p + \kappa) - N_p$ and $L L^\top = C$ (Cholesky):

    $$x_0 = m,\quad x_i = m + \sqrt{N_p + \lambda}\, L_{:,i},\quad
    x_{N_p + i} = m - \sqrt{N_p + \lambda}\, L_{:,i},$$

    $$w^m_0 = \frac{\lambda}{N_p + \lambda},\; w^c_0 = w^m_0 + 1 - \alpha^2 + \beta,\;
    w^m_i = w^c_i = \frac{1}{2(N_p + \lambda)}.$$

    The weighted mean and covariance of the points reproduce ``m`` and ``C`` exactly, so
    affine maps are propagated exactly. ``modified=True`` gives the modified unscented transform
    of UKI (mean weights ``(1, 0, ..., 0)``: the mean is the central point).

    **Arguments:**

    - `mean`: ``m``, shape ``(N_p,)``.
    - `cov`: ``C``, shape ``(N_p, N_p)``, symmetric positive semidefinite (a singular ``C``
        falls back to its eigen square root).
    - `alpha`: spread (default UKI's ``min(sqrt(4 / (N_p + kappa)), 1)``).
    - `beta`: prior-knowledge parameter (2 is optimal for Gaussians).
    - `kappa`: secondary scaling (default 0).
    - `modified`: use UKI's modified mean weights.

    **Returns:** ``(points, mean_weights, cov_weights)`` with shapes ``(2N_p+1, N_p)``,
    ``(2N_p+1,)``, ``(2N_p+1,)``.

    **Reference:** S. J. Julier & J. K. Uhlmann (2004), "Unscented filtering and nonlinear
    estimation", *Proc. IEEE* 92; D. Z. Huang, T. Schneider & A. M. Stuart (2022), "Iterated
    Kalman methodology for inverse problems", *J. Comput. Phys.* 463, 111262.
    EnsembleKalmanProcesses.jl: ``construct_sigma_ensemble``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.processes import sigma_points

        x, wm, wc = sigma_points(jnp.zeros(2), jnp.eye(2))
        x.shape, wm.sum()  # (5, 2), 1.0
        ```
    """
    m = jnp.asarray(mean)
    c = jnp.asarray(cov)
    if m.ndim != 1 or c.shape != (m.shape[0], m.shape[0]):
        raise ValueError(
            f"sigma_points needs a (N_p,) mean and an (N_p, N_p) covariance; got shapes "
            f"{m.shape} and {c.shape}."
        )
    dtype = jnp.result_type(m, c)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    m = m.astype(dtype)
    c = c.astype(dtype)
    n = m.shape[0]
    alpha = default_alpha(n, float(kappa)) if alpha is None else alpha
    alpha = jnp.asarray(alpha, dtype)
    lam = alpha**2 * (n + jnp.asarray(kappa, dtype)) - n
    spread = jnp.sqrt(n + lam)
    root = _matrix_root(c)
    offsets = spread * root.T  # row i: sqrt(n + lam) L[:, i]
    points = jnp.concatenate([m[None, :], m[None, :] + offsets, m[None, :] - offsets], axis=0)
    side = jnp.full((2 * n,), 1.0, dtype) / (2.0 * (n + lam))
    wm0 = lam / (n + lam)
    wc0 = wm0 + 1.0 - alpha**2 + jnp.asarray(beta, dtype)
    if modified:
        mean_weights = jnp.concatenate([jnp.ones((1,), dtype), jnp.zeros((2 * n,), dtype)])
    else:
        mean_weights = jnp.concatenate([wm0[None], side])
    cov_weights = jnp.concatenate([wc0[None], side])
    return points, mean_weights, cov_weights


class UKIState(eqx.Module):
    """UKI's parametric state (in `ProcessState.extra`).

    **Fields:**

    - `mean`, `cov`: the current analysis mean and covariance (EKP's ``u_mean``/``uu_cov``).
    - `sigma_omega`: the artificial evolution covariance ``Sigma_omega``.
    """

    mean: Float[Array, " N_p"]
    cov: Float[Array, "N_p N_p"]
    sigma_omega: Float[Array, "N_p N_p"]


class UKI(AbstractProcessBase):
    r"""Unscented Kalman inversion (Huang, Schneider & Stuart 2022).

    UKI iterates a Gaussian ``N(m_n, C_n)`` with the unscented transform of an artificial
    dynamics (EnsembleKalmanProcesses.jl's ``Unscented``). Prediction:

    $$\hat m = \alpha_r m_n + (1 - \alpha_r) m_0,\qquad
    \hat C = \alpha_r^2 C_n + \Delta t\,\Sigma_\omega,\qquad
    \Sigma_\omega = (2 - \alpha_r^2)\,\Lambda$$

    (``Lambda = C_0``, or the current ``C_n`` every `update_freq` iterations), then the
    ``2N_p + 1`` sigma points of ``N(m^, C^)`` are the `particles` to evaluate. Analysis with the
    modified unscented transform (mean = central point) and ``Sigma_nu = 2 Gamma``:

    $$m_{n+1} = \hat m + C^{\theta g}(C^{gg} + \Sigma_\nu/\Delta t)^{-1}(y - \hat g),\quad
    C_{n+1} = \hat C - C^{\theta g}(C^{gg} + \Sigma_\nu/\Delta t)^{-1}C^{g\theta}.$$

    **Prior convention (documented choice).** With ``impose_prior=True`` the prior enters
    through the augmented system ``G~ = [G; theta]``, ``y~ = [y; m_0]`` with the *same* factor
    2 on both blocks, ``Sigma_nu = 2 diag(Gamma, C_0)``, and (as in EKP) ``alpha_reg = 1``,
    ``update_freq = 1`` (so ``C^ = (1 + dt) C_n``). For a linear model the precision then
    obeys $C_{n+1}^{-1} = C_n^{-1}/(1 + \Delta t) + \tfrac{\Delta t}{2}(G^\top\Gamma^{-1}G +
    C_0^{-1})$, whose fixed point at ``dt = 1`` is **exactly the posterior**
    $(G^\top\Gamma^{-1}G + C_0^{-1})^{-1}$, reached geometrically (rate 1/2), with the mean
    converging to the posterior mean (the MAP). For other ``dt`` the fixed-point covariance is
    the posterior times ``2 / (1 + dt)``. EKP scales the prior block by ``C_0/dt`` instead of
    ``2 C_0/dt``; its ``dt = 1`` fixed point has precision ``G^T Gamma^{-1} G + 2 C_0^{-1}``,
    which is why this implementation deviates.

    Without a prior (default, as EKP), ``alpha_reg = 1`` and a full-column-rank linear ``G``,
    the mean converges to the least-squares solution (the MLE); with ``update_freq = 1`` the
    covariance converges to ``(G^T Gamma^{-1} G)^{-1}``.

    The sigma points use ``alpha = min(sqrt(4/(N_p + kappa)), 1)``, ``beta = 2``,
    ``kappa = 0``, ``lambda = alpha^2 (N_p + kappa) - N_p``. Failed sigma points (either
    `failure_handler`) are dropped from the quadrature with EKP's re-weighting: the mean
    becomes the average of the successful points when the centre failed, and the off-centre
    covariance weights are rescaled to keep their sum.

    **Arguments:**

    - `prior_mean`, `prior_cov`: ``m_0``, ``C_0`` (the initial distribution unless `init` is
        given another one, the regularisation target ``r``, and the imposed prior).
    - `alpha_reg`: ``alpha_r`` in ``(0, 1]`` (default 1: no regularisation toward ``m_0``).
    - `update_freq`: refresh ``Sigma_omega`` from ``C_n`` every so many iterations (default 0,
        never; `impose_prior` forces 1, as EKP).
    - `impose_prior`: augmented-system prior (default False, as EKP).
    - `scheduler`: default ``FixedScheduler(1.0)`` (EKP defaults to ``DataMisfitController``,
        which stops at ``T = 1`` before UKI's fixed point is reached).
    - `failure_handler`: ``"sample_succ_gauss"`` (default) or ``"ignore"`` (same treatment).
    - `alpha`, `beta`, `kappa`: sigma-point parameters (static).

    **Reference:** D. Z. Huang, T. Schneider & A. M. Stuart (2022), "Iterated Kalman
    methodology for inverse problems", *J. Comput. Phys.* 463, 111262.
    EnsembleKalmanProcesses.jl: ``Unscented(prior; alpha_reg, update_freq, impose_prior)``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.processes import UKI

        A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
        uki = UKI(jnp.zeros(2), jnp.eye(2), impose_prior=True)
        state = uki.init(None, jnp.ones(3), 0.1)
        for _ in range(50):
            state = uki.update(state, uki.particles(state) @ A.T)
        uki.mean(state), uki.covariance(state)  # the exact posterior
        ```
    """

    prior_mean: Float[Array, " N_p"] = eqx.field(converter=jnp.asarray)
    prior_cov: fxp.NoiseLike
    alpha_reg: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)
    update_freq: int = eqx.field(default=0, static=True, converter=int)
    impose_prior: bool = eqx.field(default=False, static=True)
    scheduler: fxp.AbstractScheduler = eqx.field(default_factory=FixedScheduler)
    failure_handler: str = eqx.field(default="sample_succ_gauss", static=True)
    alpha: float | None = eqx.field(default=None, static=True)
    beta: float = eqx.field(default=2.0, static=True)
    kappa: float = eqx.field(default=0.0, static=True)

    def __check_init__(self) -> None:
        check_failure_handler(self.failure_handler, "UKI")
        check_prior(self.prior_mean, self.prior_cov, "UKI")
        if self.update_freq < 0:
            raise ValueError(f"UKI(update_freq=...) must be >= 0; got {self.update_freq}.")
        check_hyperparameter(self.alpha_reg, "UKI(alpha_reg=...)", strict=True, high=1.0)
        if self.alpha is not None:
            check_hyperparameter(
                self.alpha,
                "UKI(alpha=...)",
                strict=True,
                hint=" It sets the spread of the sigma points (None: the default).",
            )
        for value, name in ((self.beta, "beta"), (self.kappa, "kappa")):
            if not math.isfinite(value):
                raise ValueError(f"UKI({name}=...) must be finite; got {value!r}.")
        if self.n_params + self.kappa <= 0:
            raise ValueError(
                f"UKI(kappa=...) must be > -N_p = {-self.n_params} (the sigma points are "
                f"spread by sqrt(alpha^2 (N_p + kappa))); got {self.kappa!r}."
            )

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return in_range(self.alpha_reg, strict=True, high=1.0) & prior_cov_ok(
            self.prior_mean, self.prior_cov
        )

    @property
    def n_params(self) -> int:
        return self.prior_mean.shape[0]

    def _settings(self) -> tuple[Any, int]:
        if self.impose_prior:
            return 1.0, 1
        return self.alpha_reg, self.update_freq

    def _points(self, mean: Array, cov: Array) -> Array:
        points, _, _ = sigma_points(mean, cov, self.alpha, self.beta, self.kappa, modified=True)
        return points

    def init(
        self,
        ensemble_or_prior: tuple[Float[ArrayLike, " N_p"], Float[ArrayLike, "N_p N_p"]] | None,
        obs: Float[ArrayLike, " N_y"],
        obs_noise: fxp.NoiseLike,
        *,
        key: PRNGKeyArray | None = None,
    ) -> ProcessState:
        """Start from ``N(m, C)``: ``ensemble_or_prior = (m, C)``, or ``None`` for the prior.

        **Arguments:**

        - `ensemble_or_prior`: the initial ``(mean, cov)`` or ``None`` (``(m_0, C_0)``).
        - `obs`, `obs_noise`: ``y`` and ``Gamma`` (positive definite).
        - `key`: unused by UKI (deterministic); accepted for a uniform interface.

        **Returns:** the initial `ProcessState`; its `ensemble` holds the first sigma points.
        """
        n = self.n_params
        if ensemble_or_prior is None:
            dtype = jnp.result_type(self.prior_mean)
            if not jnp.issubdtype(dtype, jnp.floating):
                dtype = jnp.result_type(float)
            mean = self.prior_mean.astype(dtype)
            cov = prior_operator(self.prior_cov, n, dtype, "UKI").as_matrix()
        else:
            if not isinstance(ensemble_or_prior, tuple) or len(ensemble_or_prior) != 2:
                raise TypeError(
                    "UKI.init(ensemble_or_prior=...) takes None (start at the prior) or a "
                    "(mean, cov) tuple; UKI builds its own sigma points."
                )
            mean, cov = (jnp.asarray(a) for a in ensemble_or_prior)
            if mean.shape != (n,) or cov.shape != (n, n):
                raise ValueError(
                    f"UKI.init needs an initial mean of shape ({n},) and covariance of shape "
                    f"({n}, {n}) to match the prior; got {mean.shape} and {cov.shape}."
                )
            # symmetric positive-semidefinite, checked like the prior covariance
            fxp.positive_definite_noise(
                cov,
                n,
                dtype=fxp.floating_dtype(mean, "UKI.init(ensemble_or_prior=(mean, ...))"),
                name="UKI.init(ensemble_or_prior=(mean, cov))",
            )
        dtype = fxp.floating_dtype(mean, "UKI.init(ensemble_or_prior=(mean, ...))")
        check_initial_ensemble(mean, "UKI.init(ensemble_or_prior=(mean, ...))")
        mean = mean.astype(dtype)
        cov = jnp.asarray(cov).astype(dtype)
        y = jnp.asarray(obs).astype(dtype)
        check_obs(y, "UKI.init(obs=...)")
        noise = checked_obs_noise(
            obs_noise, y.shape[0], dtype=dtype, name="UKI.init(obs_noise=...)"
        )
        given = None if ensemble_or_prior is None else (mean, cov)
        alpha_reg, _ = self._settings()
        alpha_reg = jnp.asarray(alpha_reg, dtype)
        extra = UKIState(mean=mean, cov=cov, sigma_omega=(2.0 - alpha_reg**2) * cov)
        return ProcessState(
            ensemble=self._points(mean, cov),
            obs=y,
            obs_noise=noise,
            key=initial_key(key, False, "UKI"),
            iteration=jnp.asarray(0, jnp.int32),
            time=jnp.zeros((), dtype),
            dt=jnp.zeros((), dtype),
            scheduler_state=self.scheduler.init(),
            n_failed=jnp.asarray(0, jnp.int32),
            converged=jnp.asarray(False),
            # A given (mean, cov) is data; the prior (None) is checked as a hyper-parameter.
            status=initial_status(self, y, noise, dtype, given),
            extra=extra,
        )

    def update(
        self,
        state: ProcessState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> ProcessState:
        """Analysis from the sigma points' forward evaluations, then the next prediction.

        **Arguments:**

        - `state`: the current state.
        - `forward_evals`: ``G`` at `particles(state)`, shape ``(2 N_p + 1, N_y)``.
        - `obs`, `obs_noise`: optional per-update override (mini-batching).

        **Returns:** the next state (`extra` holds the new mean and covariance; `ensemble` the
        next sigma points).
        """
        x = state.ensemble
        n_sigma, n_p = x.shape
        dtype = x.dtype
        g = fxp.check_forward_evals(forward_evals, n_sigma, dtype=dtype)
        y, noise = resolve_obs(state, obs, obs_noise, dtype)
        check_data_dimension(y, g)
        data = prepare_update(g, y, noise)
        dt, sched_state, converged = schedule(self.scheduler, state, data, g.shape[1], dtype)
        dt, status = checked_step(self, state, data, dt)
        mean, cov = self._analysis(x, data, dt)
        alpha_reg, update_freq = self._settings()
        alpha_reg = jnp.asarray(alpha_reg, dtype)
        extra = state.extra
        sigma_omega = extra.sigma_omega
        if update_freq > 0:
            # EKP counts predictions from 1 (the initial one), so after update n it is n + 2.
            refresh = (state.iteration + 2) % update_freq == 0
            sigma_omega = jnp.where(refresh, (2.0 - alpha_reg**2) * cov, sigma_omega)
        pred_mean = alpha_reg * mean + (1.0 - alpha_reg) * self.prior_mean.astype(dtype)
        pred_cov = alpha_reg**2 * cov + dt * sigma_omega
        points = self._points(pred_mean, pred_cov)
        new_extra = UKIState(mean=mean, cov=cov, sigma_omega=sigma_omega)
        return new_state(state, points, dt, sched_state, converged, data, status, new_extra)

    def _analysis(self, x: Array, data: UpdateData, dt: Array) -> tuple[Array, Array]:
        dtype = x.dtype
        n_sigma, n_p = x.shape
        ok = data.ok
        okf = ok.astype(dtype)
        # Mean weights: the central point (modified transform), or the plain average of the
        # successful points when the centre failed (EKP's construct_successful_mean).
        centre = jnp.zeros((n_sigma,), dtype).at[0].set(1.0)
        uniform = okf / jnp.maximum(jnp.sum(okf), 1.0)
        w_mean = jnp.where(ok[0], centre, uniform)
        # Off-centre covariance weights rescaled to keep their sum over the survivors; the
        # centre's anomaly vanishes (or it failed), so its weight never matters.
        _, _, cov_w = sigma_points(
            jnp.zeros(n_p, dtype), jnp.eye(n_p, dtype=dtype), self.alpha, self.beta, self.kappa
        )
        off = jnp.zeros((n_sigma,), dtype).at[1:].set(1.0) * okf
        total = jnp.sum(cov_w[1:])
        w_cov = off * cov_w * total / jnp.maximum(jnp.sum(off * cov_w), jnp.finfo(dtype).tiny)
        x_mean = mm(w_mean[None, :], x)[0]
        g_mean = mm(w_mean[None, :], data.gw)[0]
        sqrt_w = jnp.sqrt(w_cov)[:, None]
        ax = sqrt_w * (x - x_mean[None, :])
        ag = sqrt_w * (data.gw - g_mean[None, :])
        residual = data.yw - g_mean
        factor = data.whitening.factor
        if self.impose_prior:
            op = prior_operator(self.prior_cov, n_p, dtype, "UKI")
            w0 = fxp.noise_whitening(op, dtype)
            ag = jnp.concatenate([ag, w0.white(ax)], axis=1)
            prior_residual = w0.white(self.prior_mean.astype(dtype) - x_mean)
            residual = jnp.concatenate([residual, prior_residual])
            factor = stack_factors(factor, data.gw.shape[1], w0.factor, n_p, dtype)
        # dt C^{ug} (dt C^{gg} + 2 N)^{-1} = (dt / 2) A_x^T A_g (I + F F^T)^{-1},
        # F = [sqrt(dt / 2) A_g^T, U~].
        f = jnp.sqrt(0.5 * dt) * ag.T
        if factor is not None:
            f = jnp.concatenate([f, factor], axis=1)
        solved = fxp.whitened_noise_solve(jnp.concatenate([residual[None, :], ag], axis=0), f)
        gain_residual = mm(ag, solved[0][:, None])[:, 0]
        mean = x_mean + 0.5 * dt * mm(ax.T, gain_residual[:, None])[:, 0]
        q = mm(solved[1:], ag.T)
        q = 0.5 * (q + q.T)
        cov = mm(ax.T, ax) - 0.5 * dt * mm(mm(ax.T, q), ax)
        return mean, 0.5 * (cov + cov.T)

    def mean(self, state: ProcessState) -> Float[Array, " N_p"]:
        """The current analysis mean ``m_n``."""
        return state.extra.mean

    def covariance(self, state: ProcessState) -> Float[Array, "N_p N_p"]:
        """The current analysis covariance ``C_n``."""
        return state.extra.cov
