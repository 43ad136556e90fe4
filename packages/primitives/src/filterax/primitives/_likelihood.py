"""Innovation statistics and the ensemble predictive log-likelihood."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, Int

from ._gain import _innovation_operator, _innovation_woodbury, _observed_setup
from ._lowrank import Woodbury
from ._missing import fill_missing
from ._noise import NoiseLike

_LOG_2PI = math.log(2.0 * math.pi)


def _core(
    Y: ArrayLike, obs: ArrayLike, obs_noise: NoiseLike
) -> tuple[Array, lx.AbstractLinearOperator, Woodbury, Array, Array]:
    """Masked anomalies, masked noise, the Woodbury factorisation of S, innovation, mask."""
    if obs is None:
        raise ValueError("obs (the observation vector) is required; use NaN for missing entries.")
    anomalies, noise, mask = _observed_setup(Y, obs_noise, obs)
    assert mask is not None
    dtype = anomalies.dtype
    y_mean = jnp.mean(jnp.asarray(Y).astype(dtype), axis=0)
    # Sanitise before subtracting so neither NaN values nor NaN gradients can leak.
    obs_filled = fill_missing(jnp.asarray(obs).astype(dtype), mask)
    innovation = jnp.where(mask, obs_filled - y_mean, jnp.zeros((), dtype))
    return anomalies, noise, _innovation_woodbury(anomalies, noise), innovation, mask


def _gaussian_loglik(n_obs: Array, logdet: Array, mahalanobis: Array) -> Array:
    return -0.5 * (n_obs.astype(logdet.dtype) * _LOG_2PI + logdet + mahalanobis)


class InnovationStatistics(eqx.Module):
    r"""The innovation ``v``, its covariance ``S`` and the Gaussian predictive log-likelihood.

    $$v = y - \overline{H(X)},\quad S = C^{HH} + R,\quad
    \log p(y) = -\tfrac12\left[n_{obs}\log 2\pi + \log|S| + v^\top S^{-1} v\right].$$

    Missing (NaN) observation entries have ``v_i = 0`` and identity rows/columns in ``S``, so
    every field equals that of the observed subset (``normalized_innovation`` is zero there).

    **Fields:**

    - `innovation`: ``v``, shape ``(N_y,)``.
    - `innovation_covariance`: the operator ``S`` (masked as described above).
    - `mahalanobis`: ``v^T S^{-1} v`` (scalar).
    - `logdet`: ``log|S|`` (scalar).
    - `n_obs`: the number of observed entries (integer array).
    - `log_likelihood`: ``log N(v; 0, S)`` over the observed entries (scalar).
    - `normalized_innovation`: a whitened innovation ``w`` with ``||w||^2 = v^T S^{-1} v`` and
        ``Cov(w) = I`` under the model; equal to the symmetric ``S^{-1/2} v`` for isotropic
        (and for no-ensemble) ``R``. Diagnostic only: computed under `lax.stop_gradient`.

    **Arguments:** the fields above, in order (normally built by `innovation_statistics`).

    **Returns:** an `equinox.Module` (a pytree: it passes through `jit`, `vmap` and `scan`).

    **Reference:** Desroziers et al. (2005), *QJRMS* 131 (innovation diagnostics);
    DAPPER reports the same quantities in its ``stats``.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import innovation_statistics

        Y = jax.random.normal(jax.random.key(0), (8, 3))
        stats = innovation_statistics(Y, jnp.zeros(3), 1.0)
        stats.mahalanobis / stats.n_obs  # ~1 when the ensemble spread and R are consistent
        ```
    """

    innovation: Float[Array, " N_y"]
    innovation_covariance: lx.AbstractLinearOperator
    mahalanobis: Float[Array, ""]
    logdet: Float[Array, ""]
    n_obs: Int[Array, ""]
    log_likelihood: Float[Array, ""]
    normalized_innovation: Float[Array, " N_y"]


def innovation_statistics(
    Y: Float[ArrayLike, "N_e N_y"],
    obs: Float[ArrayLike, " N_y"],
    obs_noise: NoiseLike,
) -> InnovationStatistics:
    r"""Innovation, innovation covariance and Gaussian predictive log-likelihood of a forecast.

    $$v = y - N_e^{-1}\sum_j H(x_j), \qquad S = C^{HH} + R,$$

    $$\log p(y \mid \text{forecast}) = -\tfrac12\left[n_{obs}\log 2\pi + \log|S|
    + v^\top S^{-1} v\right].$$

    ``log|S|`` by the matrix determinant lemma and ``v^T S^{-1} v`` by Woodbury (as a sum of
    squares), so diagonal and low-rank-plus-diagonal ``R`` cost ``O(N_e^2 N_y + N_e^3)``;
    dense ``R`` adds one ``O(N_y^3)`` Cholesky. NaN entries of `obs` are ignored exactly
    (the result equals that of the observed subset) without changing shapes. Gradients with
    respect to `Y`, `obs` and the noise parameters are finite (zero at missing entries).

    **Arguments:**

    - `Y`: the forecast observed ensemble ``H(X_j)``, shape ``(N_e, N_y)``.
    - `obs`: the observation vector ``y``, shape ``(N_y,)``, NaN where missing.
    - `obs_noise`: ``R`` in any form `as_noise_operator` accepts.

    **Returns:** an `InnovationStatistics`.

    **Reference:** Evensen (2009), §9; the ensemble predictive likelihood used for parameter
    learning in Bach, Baptista, Luk & Stuart (2025), *Learning optimal filters using
    variational inference*. DAPPER: ``stats.log_lklhd``-style diagnostics;
    EnsembleKalmanProcesses.jl has no direct equivalent.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import innovation_statistics

        Y = jax.random.normal(jax.random.key(0), (10, 4))
        stats = innovation_statistics(Y, jnp.array([0.1, jnp.nan, -0.3, 0.2]), 0.5)
        stats.log_likelihood, stats.n_obs  # n_obs == 3
        ```
    """
    anomalies, noise, woodbury, innovation, mask = _core(Y, obs, obs_noise)
    mahalanobis = woodbury.inv_quad(innovation)
    logdet = woodbury.logdet()
    n_obs = jnp.sum(mask)
    return InnovationStatistics(
        innovation=innovation,
        innovation_covariance=_innovation_operator(anomalies, noise),
        mahalanobis=mahalanobis,
        logdet=logdet,
        n_obs=n_obs,
        log_likelihood=_gaussian_loglik(n_obs, logdet, mahalanobis),
        normalized_innovation=woodbury.inv_sqrt(innovation),
    )


def log_likelihood(
    Y: Float[ArrayLike, "N_e N_y"],
    obs: Float[ArrayLike, " N_y"],
    obs_noise: NoiseLike,
) -> Float[Array, ""]:
    r"""The Gaussian ensemble predictive log-likelihood ``log N(y; mean H(X), C^HH + R)``.

    $$\log p(y \mid \text{forecast}) = -\tfrac12\left[n_{obs}\log 2\pi + \log|S|
    + v^\top S^{-1} v\right].$$

    The universal training signal of differentiable DA: finite gradients with respect to `Y`,
    `obs` and the noise parameters; NaN entries of `obs` ignored exactly. See
    `innovation_statistics` for the computation and cost.

    **Arguments:**

    - `Y`: the forecast observed ensemble ``H(X_j)``, shape ``(N_e, N_y)``.
    - `obs`: the observation vector, shape ``(N_y,)``, NaN where missing.
    - `obs_noise`: ``R`` in any form `as_noise_operator` accepts.

    **Returns:** the scalar log-likelihood.

    **Reference:** Bach, Baptista, Luk & Stuart (2025). DAPPER / EKP.jl: no
    direct equivalent.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import log_likelihood

        Y = jax.random.normal(jax.random.key(0), (10, 4))
        y = jnp.zeros(4)
        jax.grad(lambda s: log_likelihood(Y, y, s))(0.5)  # d log p / d (noise variance)
        ```
    """
    _, _, woodbury, innovation, mask = _core(Y, obs, obs_noise)
    return _gaussian_loglik(jnp.sum(mask), woodbury.logdet(), woodbury.inv_quad(innovation))
