"""Ensemble transform Kalman inversion (ETKI)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._failures import check_failure_handler, masked_stats
from ._inflation import (
    InflationLike,
    check_inflation,
)
from ._kalman_update import (
    UpdateData,
    augment_with_prior,
    normalised,
    transform_update,
)
from ._process_base import (
    AbstractEnsembleProcess,
    check_prior,
    check_prior_size,
    prior_cov_ok,
    prior_operator,
)
from ._schedulers import DataMisfitController

__all__ = ["ETKI"]


def _optional_array(x: ArrayLike | None) -> Array | None:
    return None if x is None else jnp.asarray(x)


class ETKI(AbstractEnsembleProcess):
    r"""Ensemble transform Kalman inversion (Huang, Huang, Reich & Stuart 2022).

    The ETKF analysis applied to the inverse problem, in the ensemble space (EKP's
    ``etki_update``): with the normalised anomalies $X = (\theta - \bar\theta)/\sqrt{J-1}$,
    $Y = (G - \bar G)/\sqrt{J-1}$,

    $$\Omega = (I + \Delta t\, Y^\top \Gamma^{-1} Y)^{-1}, \quad
    w = \Delta t\,\Omega Y^\top \Gamma^{-1}(y - \bar G), \quad
    \theta_j \leftarrow \bar\theta + X\big(w + \sqrt{J-1}\,\Omega^{1/2}\big)_{:, j}.$$

    For a linear forward model and ``dt = 1`` the new ensemble mean and covariance are exactly
    the Kalman posterior of the initial ensemble's (Bessel) mean and covariance; steps with
    ``sum(dt) = 1`` give the same posterior (tempering is exact for square-root updates). The
    symmetric square root keeps the mean exact. No perturbations, so no key is needed. Cost
    ``O(N_e^2 N_y + N_e^3)``: linear in the data dimension.

    With `prior_mean` and `prior_cov` the prior is imposed through the augmented system
    ``G~ = [G; theta]``, ``y~ = [y; m_0]``, ``Gamma~ = diag(Gamma, C_0)`` (EKP's
    ``TransformInversion(prior)``).

    **Arguments:**

    - `scheduler`: default ``DataMisfitController(terminate_at=1.0)`` (as EKP).
    - `failure_handler`: ``"sample_succ_gauss"`` (default) or ``"ignore"``.
    - `inflation`: optional `MultiplicativeInflation` / `AdditiveInflation`.
    - `prior_mean`, `prior_cov`: optional Gaussian prior to impose (both or neither).

    **Reference:** D. Z. Huang, J. Huang, S. Reich & A. M. Stuart (2022), "Efficient
    derivative-free Bayesian inference for large-scale inverse problems", *Inverse Problems*
    38, 125006; Bishop, Etherton & Majumdar (2001), *MWR* 129 (the ETKF).
    EnsembleKalmanProcesses.jl: ``TransformInversion()``. Localisation is not supported (nor
    is it in EKP).

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.processes import ETKI, FixedScheduler

        A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
        etki = ETKI(scheduler=FixedScheduler(1.0))
        state = etki.init(jax.random.normal(jax.random.key(0), (20, 2)), jnp.ones(3), 0.1)
        state = etki.update(state, etki.particles(state) @ A.T)  # exact Kalman posterior
        ```
    """

    scheduler: fxp.AbstractScheduler = eqx.field(default_factory=DataMisfitController)
    failure_handler: str = eqx.field(default="sample_succ_gauss", static=True)
    inflation: InflationLike = None
    prior_mean: Float[Array, " N_p"] | None = eqx.field(default=None, converter=_optional_array)
    prior_cov: fxp.NoiseLike | None = None

    def __check_init__(self) -> None:
        check_failure_handler(self.failure_handler, "ETKI")
        check_inflation(self.inflation, "ETKI")
        if (self.prior_mean is None) != (self.prior_cov is None):
            raise ValueError(
                "ETKI imposes a prior only when both prior_mean and prior_cov are given; pass "
                "both or neither."
            )
        if self.prior_mean is not None:
            check_prior(self.prior_mean, self.prior_cov, "ETKI")

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        if self.prior_mean is None:
            return jnp.asarray(True)
        return prior_cov_ok(self.prior_mean, self.prior_cov)

    def _needs_key(self) -> bool:
        return False

    def _validate(self, n_ensemble: int, n_params: int, n_obs: int) -> None:
        if self.prior_mean is not None:
            check_prior_size(self.prior_mean, n_params, "ETKI")

    def _analysis(self, key: PRNGKeyArray, ensemble: Array, data: UpdateData, dt: Array) -> Array:
        x_mean, x_anomalies, count = masked_stats(ensemble, data.ok)
        anomalies, residuals, factor = data.gw_anomalies, data.residuals, data.whitening.factor
        if self.prior_mean is not None:
            op = prior_operator(self.prior_cov, ensemble.shape[1], ensemble.dtype, "ETKI")
            anomalies, residuals, factor, _ = augment_with_prior(
                data, ensemble, x_anomalies, self.prior_mean, op
            )
        mean_residual = jnp.sum(jnp.where(data.ok[:, None], residuals, 0.0), axis=0) / jnp.maximum(
            count, 1.0
        )
        return transform_update(
            x_mean,
            x_anomalies,
            count,
            normalised(anomalies, count),
            mean_residual,
            dt,
            factor,
        )
