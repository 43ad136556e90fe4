r"""The stochastic (perturbed-observation) ensemble Kalman filter."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

import filterax.primitives as fxp

from ._common import prepare_analysis, require_key, require_no_context
from ._transforms import matmul

__all__ = ["StochasticEnKF", "StochasticEnKFInfo"]


class StochasticEnKFInfo(eqx.Module):
    r"""Diagnostics returned (as ``Analysis.info``) by `StochasticEnKF`.

    **Fields:**

    - `perturbed_obs`: the perturbed observations ``D = y + \epsilon`` (``(N_e, N_y)``, NaN at
        missing entries).
    - `innovation`: ``d = y - mean H(X^f)`` (0 at missing entries).
    - `n_obs`: the number of observed (non-NaN) entries.
    """

    perturbed_obs: Float[Array, "N_e N_y"]
    innovation: Float[Array, " N_y"]
    n_obs: Int[Array, ""]


class StochasticEnKF(fxp.AbstractSequentialFilter):
    r"""The stochastic ensemble Kalman filter with perturbed observations.

    Every member is updated with its own perturbed copy of the observation:

    $$x^a_j = x^f_j + K\,(y + \epsilon_j - H(x^f_j)), \qquad \epsilon_j \sim \mathcal N(0, R),
    \qquad K = C^{xH}(C^{HH} + R)^{-1},$$

    with the sample (Bessel-corrected) covariances of the forecast. The gain is applied in
    whitened Woodbury form (any structure of ``R``: diagonal, low-rank-plus-diagonal, dense;
    whitening ``G^T G = R^{-1}`` from `prepare_analysis`), with ``S = Y' G^T / sqrt(N_e - 1)``
    and ``B = X' / sqrt(N_e - 1)``:

    $$K v = B^\top (I + S S^\top)^{-1} S\, G v = B^\top S (I + S^\top S)^{-1} G v,$$

    factorising the smaller of the two capacitance matrices (``min(N_e, N_y)^3``), and
    contracting in whichever order is cheaper (a static choice): through the ``(N_y, N_x)``
    matrix ``K^T`` when ``2 N_y N_x <= N_e (N_y + N_x)``, otherwise through an ``(N_e, N_e)``
    coefficient matrix, so nothing ``N_x x N_y`` is formed for large grids and nothing
    ``N_e x N_e`` for large ensembles. (`filterax.primitives.kalman_gain` always factorises
    the ``N_e x N_e`` capacitance, prohibitive for ``N_e`` in the thousands.)

    With ``center_perturbations=True`` (DAPPER's ``mean0``) the perturbations average to exactly
    zero, so for a linear ``H`` the analysis *mean* equals the Kalman analysis of the sample
    mean and covariance exactly; the analysis covariance matches
    ``(I - K H) P^f`` only statistically (Monte-Carlo error ``O(N_e^{-1/2})``). Missing (NaN)
    observations get exactly zero gain and are never perturbed into the update.

    **Arguments:**

    - `center_perturbations`: subtract the sample mean of the perturbations (static bool,
        default ``True``, as DAPPER).

    `analysis(key, forecast, obs, obs_op, obs_noise, **context)` needs a PRNG `key` (same key
    ⇒ bit-identical analysis); `context` must be empty.

    **Returns** (of `analysis`): `fxp.Analysis(particles, log_likelihood, info)` with
    ``log_likelihood = log N(d; 0, C^HH + R)`` on the forecast and ``info`` a
    `StochasticEnKFInfo`.

    **Reference:** Evensen (1994), *JGR* 99(C5); Burgers, van Leeuwen & Evensen (1998), *MWR*
    126; Houtekamer & Mitchell (1998), *MWR* 126. DAPPER: ``EnKF("PertObs", N)``
    (``EnKF_analysis`` with ``upd_a="PertObs"``: ``D = mean0(hnoise.sample(N))``,
    ``E + (KG @ (y - D - Eo).T).T``; the sign of ``D`` is immaterial).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import StochasticEnKF

        X = jax.random.normal(jax.random.key(0), (50, 10))
        out = StochasticEnKF().analysis(
            jax.random.key(1), X, jnp.zeros(10), fxp.IdentityObs(), 0.5
        )
        out.particles.shape  # (50, 10)
        ```
    """

    center_perturbations: bool = eqx.field(static=True, default=True)

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[ArrayLike, "N_e N_x"],
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> fxp.Analysis:
        """Assimilate `obs` into `forecast` with perturbed observations (see the class)."""
        name = "StochasticEnKF.analysis"
        require_no_context(context, name)
        key = require_key(key, name)
        inputs = prepare_analysis(forecast, obs, obs_op, obs_noise, name=name)
        dtype = inputs.dtype
        n_e = inputs.n_ensemble
        obs = jnp.asarray(obs).astype(dtype)
        perturbed = fxp.perturbed_observations(
            key, obs, inputs.noise, n_e, center=self.center_perturbations
        )
        # NaN never enters arithmetic: missing entries are replaced before subtracting.
        zero = jnp.zeros((), dtype)
        observed = inputs.mask[None, :]
        perturbed_filled = jnp.where(observed, perturbed, zero)
        member_innovations = jnp.where(observed, perturbed_filled - inputs.observed, zero)
        n_x, n_y = inputs.n_state, inputs.n_obs_total
        S = inputs.whitened_anomalies
        # P = (I + S^T S)^{-1} S^T = S^T (I + S S^T)^{-1}, from the smaller capacitance.
        if n_y < n_e:
            cap = jnp.eye(n_y, dtype=dtype) + matmul(S.T, S)
            P = jsl.cho_solve((jnp.linalg.cholesky(cap), True), S.T)
        else:
            cap = jnp.eye(n_e, dtype=dtype) + matmul(S, S.T)
            P = jsl.cho_solve((jnp.linalg.cholesky(cap), True), S).T
        B = inputs.anomalies / math.sqrt(n_e - 1)
        whitened = inputs.whitener.rows(member_innovations)  # rows G v_j
        if 2 * n_y * n_x <= n_e * (n_y + n_x):
            increments = matmul(whitened, matmul(P, B))  # through K^T, (N_y, N_x)
        else:
            increments = matmul(matmul(whitened, P), B)  # through (N_e, N_e)
        particles = inputs.forecast_mean[None, :] + inputs.anomalies + increments
        info = StochasticEnKFInfo(
            perturbed_obs=perturbed,
            innovation=inputs.innovation,
            n_obs=inputs.n_obs,
        )
        return fxp.Analysis(particles, inputs.log_likelihood, info)
