"""The ensemble Kalman sampler (EKS) with the ALDI finite-ensemble correction."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._failures import check_failure_handler, gaussian_from_anomalies, masked_stats
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
from ._schedulers import EKSStableScheduler

__all__ = ["EKS"]


class EKS(AbstractEnsembleProcess):
    r"""Ensemble Kalman sampler (Garbuno-Iñigo et al. 2020), ALDI-corrected by default.

    A time discretisation of the interacting Langevin dynamics

    $$d\theta_j = -\Big(C^{\theta g}\Gamma^{-1}(G(\theta_j) - y) + C\,C_0^{-1}(\theta_j - m_0)
    \Big)dt + \frac{N_p + 1}{J}(\theta_j - \bar\theta)\,dt + \sqrt{2}\,C^{1/2} dW_j,$$

    with the ``1/J``-normalised ensemble covariances, the data term explicit and the prior term
    implicit (EnsembleKalmanProcesses.jl's ``eks_update``):

    $$\theta^*_j = (I + \Delta t\,C C_0^{-1})^{-1}\Big(\theta_j - \Delta t\sum_k
    (\theta_k - \bar\theta) D_{kj} + \Delta t\,C C_0^{-1} m_0
    + \Delta t\frac{N_p+1}{J}(\theta_j - \bar\theta)\Big),\quad
    \theta_j \leftarrow \theta^*_j + \sqrt{2\Delta t}\,C^{1/2}\xi_j,$$

    $D_{kj} = \tfrac1J\langle G_k - \bar G, \Gamma^{-1}(G_j - y)\rangle$,
    $\xi_j \sim \mathcal N(0, I)$ (any square root of ``C`` gives the same law; the QR factor
    of the anomalies is used, valid also when ``C`` is rank deficient). The
    ``(N_p + 1)/J`` drift is the Nüsken-Reich correction (ALDI): with it the product posterior
    is invariant for any ``J > N_p + 1``; without it (``aldi=False``, the original EKS) the
    finite ensemble is under-dispersed. Per step the correction scales the anomalies by
    ``1 + dt (N_p + 1)/J`` before the implicit prior solve. For a linear model the dynamics
    sample the posterior up to an ``O(dt)`` time-discretisation bias. The implicit prior step
    is written as ``C_0 (C_0 + dt C)^{-1}``, so ``C_0`` is never inverted and ``dt = 0`` is the
    identity.

    **Arguments:**

    - `prior_mean`, `prior_cov`: the Gaussian prior ``N(m_0, C_0)``.
    - `aldi`: include the finite-ensemble correction (default True; EKP's ``"aldi"``).
    - `scheduler`: default `EKSStableScheduler` (``dt = 1 / (||D||_F + eps)``, as EKP).
        The step is explicit in the data term: a `FixedScheduler` step must stay below the
        stability limit ``~ 1 / ||D||_F``, which shrinks with small ``Gamma`` (e.g. about
        ``1e-4`` at the prior for ``Gamma = 0.01 I`` on EKP's exponential sinusoid); beyond
        it the ensemble blows up to NaN (`calibrate` then reports non-finite parameters).
    - `failure_handler`: ``"ignore"`` (default, as EKP's ``Sampler``, whose only handler it
        is: a failed member keeps its position and is left out of the ensemble statistics;
        a draw from a Gaussian fitted to the others would not be a step of the sampler's
        dynamics) or ``"sample_succ_gauss"``.
    - `inflation`: optional (rarely wanted for a sampler).

    **Reference:** A. Garbuno-Iñigo, F. Hoffmann, W. Li & A. M. Stuart (2020), *SIAM J. Appl.
    Dyn. Syst.* 19, 412-441; A. Garbuno-Iñigo, N. Nüsken & S. Reich (2020), "Affine invariant
    interacting Langevin dynamics for Bayesian inference", *SIAM J. Appl. Dyn. Syst.* 19,
    1633-1658; N. Nüsken & S. Reich (2019), arXiv:1908.10890. EnsembleKalmanProcesses.jl:
    ``Sampler(prior; sampler_type="aldi")``.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.processes import EKS

        eks = EKS(jnp.zeros(2), jnp.ones(2))
        state = eks.init(jax.random.normal(jax.random.key(0), (20, 2)), jnp.ones(3), 0.1,
                         key=jax.random.key(1))
        ```
    """

    prior_mean: Float[Array, " N_p"] = eqx.field(converter=jnp.asarray)
    prior_cov: fxp.NoiseLike
    aldi: bool = eqx.field(default=True, static=True)
    scheduler: fxp.AbstractScheduler = eqx.field(default_factory=EKSStableScheduler)
    failure_handler: str = eqx.field(default="ignore", static=True)
    inflation: InflationLike = None

    def __check_init__(self) -> None:
        check_failure_handler(self.failure_handler, "EKS")
        check_inflation(self.inflation, "EKS")
        check_prior(self.prior_mean, self.prior_cov, "EKS")

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return prior_cov_ok(self.prior_mean, self.prior_cov)

    def _needs_key(self) -> bool:
        return True

    def _validate(self, n_ensemble: int, n_params: int, n_obs: int) -> None:
        check_prior_size(self.prior_mean, n_params, "EKS")

    def _analysis(self, key: PRNGKeyArray, ensemble: Array, data: UpdateData, dt: Array) -> Array:
        dtype = ensemble.dtype
        n_e, n_p = ensemble.shape
        ok = data.ok
        _, anomalies, count = masked_stats(ensemble, ok)
        n = jnp.maximum(count, 1.0)
        cov = mm(anomalies.T, anomalies) / n
        # D_kj = <G_k - mean G, N^{-1}(G_j - y)> / J in whitened coordinates.
        misfit_dirs = data.whitening.noise_solve(jnp.where(ok[:, None], -data.residuals, 0.0))
        d = mm(data.gw_anomalies, misfit_dirs.T) / n
        explicit = ensemble - dt * mm(d.T, anomalies)
        if self.aldi:
            explicit = explicit + dt * (n_p + 1.0) / n * anomalies
        c0 = prior_operator(self.prior_cov, n_p, dtype, "EKS").as_matrix().astype(dtype)
        c0 = 0.5 * (c0 + c0.T)
        lhs = c0 + dt * cov
        factor = jsl.cho_factor(0.5 * (lhs + lhs.T), lower=True)
        m0 = self.prior_mean.astype(dtype)
        # (I + dt C C0^{-1})^{-1} v = C0 (C0 + dt C)^{-1} v and
        # (I + dt C C0^{-1})^{-1} dt C C0^{-1} m0 = dt C (C0 + dt C)^{-1} m0.
        implicit = mm(jsl.cho_solve(factor, explicit.T).T, c0)
        implicit = implicit + dt * mm(cov, jsl.cho_solve(factor, m0))[None, :]
        # sqrt(2 dt) C^{1/2} xi_j with C = A^T A / J: the same law as EKP's ensemble square
        # root sum_k xi_kj a_k / sqrt(J), drawn through the QR factor of A in O(J N_p^2).
        noise = jnp.sqrt(2.0 * dt / n) * gaussian_from_anomalies(key, anomalies, n_e)
        return implicit + noise
