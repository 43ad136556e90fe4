"""Ensemble Kalman inversion (EKI): stochastic (perturbed observations) and deterministic."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

import filterax.primitives as fxp

from ._failures import check_failure_handler, masked_stats
from ._inflation import (
    InflationLike,
    check_inflation,
)
from ._kalman_update import (
    UpdateData,
    kalman_increments,
    normalised,
    transform_update,
)
from ._localizers import (
    AbstractCovarianceLocalizer,
    TaperLocalizer,
    localized_cross_covariance,
)
from ._process_base import AbstractEnsembleProcess
from ._schedulers import DataMisfitController

__all__ = ["EKI"]


class EKI(AbstractEnsembleProcess):
    r"""Ensemble Kalman inversion (Iglesias, Law & Stuart 2013; Schillings & Stuart 2017).

    One update with time step $\Delta t$ (EnsembleKalmanProcesses.jl's ``eki_update``):

    $$\theta_j \leftarrow \theta_j + C^{\theta g}\big(C^{gg} + \Gamma/\Delta t\big)^{-1}
    \big(y + \eta_j - G(\theta_j)\big), \qquad \eta_j \sim \mathcal N(0, \Gamma/\Delta t),$$

    with the Bessel-corrected sample covariances of the (successful) members (EKP's
    ``eki_update`` normalises by ``1/J``; the ``(J-1)/J`` factor is immaterial for large ``J``
    and makes the deterministic form exactly the Kalman update of the sample). For a linear
    forward model each update is an exact Kalman update of the likelihood tempered by
    $\Delta t$, so with steps summing to 1 (`DataMisfitController`, the default) a large
    ensemble samples the posterior (the "finite-time" EKI); iterated further it minimises the
    data misfit within the span of the initial ensemble.

    ``stochastic=False`` is the deterministic (square-root) EKI: the mean moves with the same
    Kalman gain and the anomalies are transformed by the symmetric
    $(I + \Delta t\, Y_a^\top \Gamma^{-1} Y_a)^{-1/2}$ so that, for a linear model, the new
    ensemble covariance is the Kalman posterior covariance exactly (no perturbations, no
    sampling noise). It coincides with `ETKI`; localisation needs the stochastic form.

    Cost per update: ``O(N_e^2 N_y + N_e^3 + N_e N_y N_p)``, linear in the data dimension
    (diagonal or low-rank-plus-diagonal ``Gamma``; a dense ``Gamma`` adds one Cholesky).

    **Arguments:**

    - `stochastic`: perturbed observations (default) or the deterministic square-root form.
    - `scheduler`: the time-step rule (default ``DataMisfitController(terminate_at=1.0)``, as
        EnsembleKalmanProcesses.jl).
    - `failure_handler`: ``"sample_succ_gauss"`` (default, as EKP) or ``"ignore"``.
    - `localizer`: optional localisation of ``C^{theta g}`` (`SEC`, `SECFisher`, `SECNice`,
        `TaperLocalizer`); EKP's default is ``SECNice``, here the default is none.
    - `inflation`: optional `MultiplicativeInflation` / `AdditiveInflation` (or a tuple).

    **Reference:** M. A. Iglesias, K. J. H. Law & A. M. Stuart (2013), "Ensemble Kalman methods
    for inverse problems", *Inverse Problems* 29, 045001; C. Schillings & A. M. Stuart (2017),
    *SIAM J. Numer. Anal.* 55. EnsembleKalmanProcesses.jl: ``Inversion()``.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.processes import EKI

        A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
        y = jnp.array([1.0, 2.0, 3.0])
        eki = EKI()
        state = eki.init(jax.random.normal(jax.random.key(0), (50, 2)), y, 0.1,
                         key=jax.random.key(1))
        for _ in range(10):
            state = eki.update(state, eki.particles(state) @ A.T)
        eki.mean(state), state.time  # near the posterior mean; time == 1.0
        ```
    """

    stochastic: bool = eqx.field(default=True, static=True)
    scheduler: fxp.AbstractScheduler = eqx.field(default_factory=DataMisfitController)
    failure_handler: str = eqx.field(default="sample_succ_gauss", static=True)
    localizer: AbstractCovarianceLocalizer | None = None
    inflation: InflationLike = None

    def __check_init__(self) -> None:
        check_failure_handler(self.failure_handler, "EKI")
        check_inflation(self.inflation, "EKI")
        if self.localizer is not None and not self.stochastic:
            raise ValueError(
                "EKI(stochastic=False) is the square-root (transform) update, which cannot be "
                "localised; use EKI(stochastic=True, localizer=...) for localisation."
            )

    def _needs_key(self) -> bool:
        return self.stochastic

    def _validate(self, n_ensemble: int, n_params: int, n_obs: int) -> None:
        if isinstance(self.localizer, TaperLocalizer):
            if self.localizer.matrix.shape != (n_params, n_obs):
                raise ValueError(
                    f"TaperLocalizer(matrix=...) has shape {self.localizer.matrix.shape} but "
                    f"the problem has (N_p, N_y) = ({n_params}, {n_obs})."
                )

    def _analysis(self, key: PRNGKeyArray, ensemble: Array, data: UpdateData, dt: Array) -> Array:
        x_mean, x_anomalies, count = masked_stats(ensemble, data.ok)
        y_anomalies = normalised(data.gw_anomalies, count)
        if not self.stochastic:
            mean_residual = data.yw - jnp.sum(
                jnp.where(data.ok[:, None], data.gw, 0.0), axis=0
            ) / jnp.maximum(count, 1.0)
            return transform_update(
                x_mean,
                x_anomalies,
                count,
                y_anomalies,
                mean_residual,
                dt,
                data.whitening.factor,
            )
        cross_cov = None
        if self.localizer is not None:
            cross_cov = localized_cross_covariance(
                self.localizer, x_anomalies, data.g_anomalies, count, data.whitening
            )
        increments = kalman_increments(
            key,
            normalised(x_anomalies, count),
            y_anomalies,
            data.residuals,
            dt,
            data.whitening.factor,
            stochastic=True,
            cross_cov=cross_cov,
        )
        return ensemble + increments
