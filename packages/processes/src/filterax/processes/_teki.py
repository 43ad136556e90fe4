"""Tikhonov ensemble Kalman inversion (TEKI): EKI on the prior-augmented system."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._failures import check_failure_handler, masked_stats
from ._inflation import (
    InflationLike,
    check_inflation,
)
from ._kalman_update import (
    UpdateData,
    augment_with_prior,
    kalman_increments,
    normalised,
    transform_update,
)
from ._linalg import mm
from ._localizers import (
    AbstractCovarianceLocalizer,
    TaperLocalizer,
    localized_cross_covariance,
)
from ._process_base import (
    AbstractEnsembleProcess,
    check_prior,
    check_prior_size,
    prior_cov_ok,
    prior_operator,
)
from ._schedulers import FixedScheduler

__all__ = ["TEKI"]


class TEKI(AbstractEnsembleProcess):
    r"""Tikhonov-regularised EKI (Chada, Stuart & Tong 2020).

    EKI applied to the augmented inverse problem

    $$\tilde G(\theta) = \begin{bmatrix} G(\theta) \\ \theta \end{bmatrix},\quad
    \tilde y = \begin{bmatrix} y \\ m_0 \end{bmatrix},\quad
    \tilde\Gamma = \begin{bmatrix} \Gamma & 0 \\ 0 & C_0 \end{bmatrix},$$

    whose least-squares solution is the MAP estimate
    $\arg\min \tfrac12\|y - G(\theta)\|^2_{\Gamma} + \tfrac12\|\theta - m_0\|^2_{C_0}$; iterated
    (default ``FixedScheduler(1.0)``) the ensemble mean converges to it. Everything else is
    `EKI` (stochastic with perturbations of both blocks, or ``stochastic=False`` square root);
    localisation, when given, applies to the data block of the cross-covariance only.

    The default scheduler differs from EnsembleKalmanProcesses.jl (whose ``Inversion(prior)``
    inherits ``DataMisfitController``, which stops at ``T = 1``): TEKI is an optimiser, run for
    many unit steps as in Chada et al.

    **Arguments:**

    - `prior_mean`: ``m_0``, shape ``(N_p,)``.
    - `prior_cov`: ``C_0``: scalar, variances, ``(N_p, N_p)`` matrix or lineax operator.
    - `stochastic`, `failure_handler`, `localizer`, `inflation`: as `EKI`.
    - `scheduler`: default ``FixedScheduler(1.0)``.

    **Reference:** N. K. Chada, A. M. Stuart & X. T. Tong (2020), "Tikhonov regularization
    within ensemble Kalman inversion", *SIAM J. Numer. Anal.* 58, 1263-1294.
    EnsembleKalmanProcesses.jl: ``Inversion(prior)`` (augmented-system prior imposition).

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.processes import TEKI

        teki = TEKI(jnp.zeros(2), jnp.ones(2))
        X0 = jax.random.normal(jax.random.key(0), (30, 2))
        state = teki.init(X0, jnp.ones(3), 0.1, key=jax.random.key(1))
        ```
    """

    prior_mean: Float[Array, " N_p"] = eqx.field(converter=jnp.asarray)
    prior_cov: fxp.NoiseLike
    stochastic: bool = eqx.field(default=True, static=True)
    scheduler: fxp.AbstractScheduler = eqx.field(default_factory=FixedScheduler)
    failure_handler: str = eqx.field(default="sample_succ_gauss", static=True)
    localizer: AbstractCovarianceLocalizer | None = None
    inflation: InflationLike = None

    def __check_init__(self) -> None:
        check_failure_handler(self.failure_handler, "TEKI")
        check_inflation(self.inflation, "TEKI")
        check_prior(self.prior_mean, self.prior_cov, "TEKI")
        if self.localizer is not None and not self.stochastic:
            raise ValueError(
                "TEKI(stochastic=False) is a square-root update, which cannot be localised; "
                "use stochastic=True with a localizer."
            )

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return prior_cov_ok(self.prior_mean, self.prior_cov)

    def _needs_key(self) -> bool:
        return self.stochastic

    def _validate(self, n_ensemble: int, n_params: int, n_obs: int) -> None:
        check_prior_size(self.prior_mean, n_params, "TEKI")
        if isinstance(self.localizer, TaperLocalizer):
            if self.localizer.matrix.shape != (n_params, n_obs):
                raise ValueError(
                    f"TaperLocalizer(matrix=...) has shape {self.localizer.matrix.shape} but "
                    f"the data block is (N_p, N_y) = ({n_params}, {n_obs})."
                )

    def _analysis(self, key: PRNGKeyArray, ensemble: Array, data: UpdateData, dt: Array) -> Array:
        x_mean, x_anomalies, count = masked_stats(ensemble, data.ok)
        op = prior_operator(self.prior_cov, ensemble.shape[1], ensemble.dtype, "TEKI")
        anomalies, residuals, factor, w0 = augment_with_prior(
            data, ensemble, x_anomalies, self.prior_mean, op
        )
        y_anomalies = normalised(anomalies, count)
        if not self.stochastic:
            mean_residual = jnp.sum(
                jnp.where(data.ok[:, None], residuals, 0.0), axis=0
            ) / jnp.maximum(count, 1.0)
            return transform_update(
                x_mean, x_anomalies, count, y_anomalies, mean_residual, dt, factor
            )
        cross_cov = None
        if self.localizer is not None:
            data_block = localized_cross_covariance(
                self.localizer, x_anomalies, data.g_anomalies, count, data.whitening
            )
            x_norm = normalised(x_anomalies, count)
            prior_block = w0.white(mm(x_norm.T, x_norm))
            cross_cov = jnp.concatenate([data_block, prior_block], axis=1)
        increments = kalman_increments(
            key,
            normalised(x_anomalies, count),
            y_anomalies,
            residuals,
            dt,
            factor,
            stochastic=True,
            cross_cov=cross_cov,
        )
        return ensemble + increments
