"""Gauss-Newton Kalman inversion (GNKI)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._failures import check_failure_handler, masked_stats
from ._inflation import (
    InflationLike,
    check_inflation,
)
from ._kalman_update import UpdateData
from ._linalg import mm
from ._process_base import (
    AbstractEnsembleProcess,
    check_prior,
    check_prior_size,
    prior_cov_ok,
    prior_operator,
)
from ._schedulers import FixedScheduler

__all__ = ["GNKI"]

# (1 - dt) theta_j + dt (...) contracts only for |1 - dt| < 1.
_MAX_DT = 2.0


class GNKI(AbstractEnsembleProcess):
    r"""Gauss-Newton Kalman inversion (Chada, Chen & Sanz-Alonso 2021).

    Each member takes a damped Gauss-Newton step on the regularised misfit with the Jacobian
    replaced by its ensemble (least-squares) estimate
    $\hat G = C^{g\theta} (C^{\theta\theta})^{-1}$:

    $$\theta_j \leftarrow (1 - \Delta t)\,\theta_j + \Delta t\Big(m_j + K\big(y_j - G(\theta_j)
    - \hat G (m_j - \theta_j)\big)\Big), \qquad
    K = C_0 \hat G^\top (\hat G C_0 \hat G^\top + \Gamma)^{-1},$$

    with $m_j \sim \mathcal N(m_0, 2C_0/\Delta t)$, $y_j \sim \mathcal N(y, 2\Gamma/\Delta t)$
    when ``stochastic`` (EKP's ``gnki_update``), $m_j = m_0$, $y_j = y$ otherwise. For a linear
    model $\hat G$ is exact, so the deterministic update maps every member onto
    $(1 - \Delta t)\theta_j + \Delta t\, m_{\text{post}}$: ``m_post`` is the fixed point, reached in
    one step at ``dt = 1``. The stochastic update is then an AR(1) chain per member with
    stationary law $\mathcal N(m_{\text{post}}, \Sigma_{\text{post}} / (1 - \Delta t / 2))$.

    The Jacobian estimate needs an invertible parameter covariance: **GNKI requires more
    ensemble members than parameters** (``N_e > N_p``; checked at trace time). Cost
    ``O(N_e N_p N_y + (N_p)^2 N_y)``, linear in the data dimension.

    **Arguments:**

    - `prior_mean`, `prior_cov`: the Gaussian prior ``N(m_0, C_0)``.
    - `stochastic`: perturb ``m_0`` and ``y`` as EKP (default True).
    - `scheduler`: default ``FixedScheduler(1.0)`` (EKP's ``DefaultScheduler``); steps must
        be ``< 2`` (a larger one diverges: refused, or status 2 when known at run time).
    - `failure_handler`: ``"sample_succ_gauss"`` (default) or ``"ignore"``.
    - `inflation`: optional `MultiplicativeInflation` / `AdditiveInflation`.

    **Reference:** N. K. Chada, Y. Chen & D. Sanz-Alonso (2021), "Iterative ensemble Kalman
    methods: a unified perspective with some new variants", *Foundations of Data Science* 3.
    EnsembleKalmanProcesses.jl: ``GaussNewtonInversion(prior)``.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.processes import GNKI

        gnki = GNKI(jnp.zeros(2), jnp.ones(2), stochastic=False)
        state = gnki.init(jax.random.normal(jax.random.key(0), (10, 2)), jnp.ones(3), 0.1)
        ```
    """

    prior_mean: Float[Array, " N_p"] = eqx.field(converter=jnp.asarray)
    prior_cov: fxp.NoiseLike
    stochastic: bool = eqx.field(default=True, static=True)
    scheduler: fxp.AbstractScheduler = eqx.field(default_factory=FixedScheduler)
    failure_handler: str = eqx.field(default="sample_succ_gauss", static=True)
    inflation: InflationLike = None

    def __check_init__(self) -> None:
        check_failure_handler(self.failure_handler, "GNKI")
        check_inflation(self.inflation, "GNKI")
        check_prior(self.prior_mean, self.prior_cov, "GNKI")
        if isinstance(self.scheduler, FixedScheduler):
            dt = fxp.concrete_value(self.scheduler.dt)
            if dt is not None and not float(dt) < _MAX_DT:
                raise ValueError(
                    f"GNKI needs a time step dt < 2; got FixedScheduler(dt={float(dt)}). Each "
                    "update maps theta to (1 - dt) theta + dt (...), which diverges for "
                    "|1 - dt| >= 1 (and the stochastic chain's stationary covariance "
                    "Sigma_post / (1 - dt/2) needs dt < 2). Use dt in (0, 1]: 1 reaches the "
                    "fixed point in one step for a linear model."
                )

    def _step_ok(self, dt: Array) -> Bool[Array, ""]:
        # Any scheduler, traced steps: dt >= 2 sets INVALID_HYPERPARAMETERS (see above).
        return dt < _MAX_DT

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return prior_cov_ok(self.prior_mean, self.prior_cov)

    def _needs_key(self) -> bool:
        return self.stochastic

    def _validate(self, n_ensemble: int, n_params: int, n_obs: int) -> None:
        check_prior_size(self.prior_mean, n_params, "GNKI")
        if n_ensemble <= n_params:
            raise ValueError(
                f"GNKI needs more ensemble members than parameters (N_e > N_p) to estimate the "
                f"Jacobian from the ensemble; got N_e={n_ensemble}, N_p={n_params}. Use at "
                f"least {n_params + 1} members (10 N_p is a good rule), or EKI/ETKI/UKI."
            )

    def _analysis(self, key: PRNGKeyArray, ensemble: Array, data: UpdateData, dt: Array) -> Array:
        dtype = ensemble.dtype
        n_e, n_p = ensemble.shape
        _, x_anomalies, _ = masked_stats(ensemble, data.ok)
        # Jacobian (whitened data rows) by least squares on the anomalies, via QR: the estimate
        # is invariant to the ensemble's scale, so a contracting ensemble keeps it accurate.
        q, r = jnp.linalg.qr(x_anomalies, mode="reduced")
        jac_t = jsl.solve_triangular(r, mm(q.T, data.gw_anomalies), lower=False)  # (N_p, M)
        c0 = prior_operator(self.prior_cov, n_p, dtype, "GNKI").as_matrix().astype(dtype)
        c0 = 0.5 * (c0 + c0.T)
        root = jnp.linalg.cholesky(c0)
        m0 = self.prior_mean.astype(dtype)
        factor = mm(jac_t.T, root)  # (M, N_p): G C0 G^T = factor factor^T
        if data.whitening.factor is not None:
            factor = jnp.concatenate([factor, data.whitening.factor], axis=1)
        prior_step = dt * (m0[None, :] - ensemble)  # dt (m_j - theta_j)
        data_step = dt * data.residuals  # dt (y_j - G_j), whitened
        if self.stochastic:
            k_prior, k_data = jax.random.split(key)
            scale = jnp.sqrt(2.0 * dt)
            z = jax.random.normal(k_prior, (n_e, n_p), dtype)
            prior_step = prior_step + scale * mm(z, root.T)
            data_step = data_step + scale * fxp.whitened_noise_sample(
                k_data, n_e, data.gw.shape[1], data.whitening.factor, dtype
            )
        rhs = data_step - mm(prior_step, jac_t)
        gain_rhs = mm(mm(fxp.whitened_noise_solve(rhs, factor), jac_t.T), c0)
        return ensemble + prior_step + gain_rhs
