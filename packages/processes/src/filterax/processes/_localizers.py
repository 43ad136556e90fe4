"""Localisation of the parameter-data cross-covariance ``C^{ug}`` of the EKI family.

A localiser returns Schur-product weights for ``C^{ug}`` from the sample correlations; the
data-data covariance is never localised (nor formed), so an update keeps its ``O(N_e^2 N_y)``
Woodbury solve. Fixed tapers (`TaperLocalizer`) and sampling-error corrections (`SEC`,
`SECFisher`, `SECNice`) as in EnsembleKalmanProcesses.jl's ``Localizers``.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, ScalarLike

import filterax.primitives as fxp

from ._checks import check_hyperparameter, in_range
from ._converters import as_float
from ._linalg import mm

__all__ = [
    "SEC",
    "SECFisher",
    "SECNice",
    "AbstractCovarianceLocalizer",
    "TaperLocalizer",
    "correlation_std",
    "localized_cross_covariance",
]


class AbstractCovarianceLocalizer(eqx.Module):
    """Localisation of the parameter-data cross-covariance ``C^{ug}`` of the EKI family.

    A localiser returns Schur-product weights for ``C^{ug}`` (shape ``(N_p, N_y)``) from the
    sample correlations; the data-data covariance is not localised, so the update keeps its
    ``O(N_e^2 N_y)`` Woodbury solve (only the ``(N_p, N_y)`` cross-covariance is formed).
    Subclasses implement `weights`.

    **Reference:** EnsembleKalmanProcesses.jl's ``Localizers`` (which localise the same block).
    """

    @abc.abstractmethod
    def weights(
        self, corr: Float[Array, "N_p N_y"], n_ensemble: ScalarLike
    ) -> Float[Array, "N_p N_y"]:
        """Weights given the sample correlations and the number of (successful) members."""


class TaperLocalizer(AbstractCovarianceLocalizer):
    """A fixed taper: ``C^{ug} <- rho o C^{ug}`` with a user-given ``(N_p, N_y)`` matrix.

    Build ``rho`` from locations, e.g. a Gaspari-Cohn taper between parameter sites and
    observation sites with `filterax.primitives.GaspariCohnLocalizer(r).matrix(sites_p, sites_y)`.

    **Arguments:**

    - `matrix`: the ``(N_p, N_y)`` weights (dynamic: differentiable and sweepable).

    **Reference:** Tong & Morzfeld (2023), "Localized ensemble Kalman inversion", *Inverse
    Problems* 39; EnsembleKalmanProcesses.jl: ``RBF``/``Delta`` localisers (fixed kernels).

    !!! Example

        ```python
        import jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.processes import EKI, TaperLocalizer

        rho = fxp.GaspariCohnLocalizer(3.0).matrix(jnp.arange(10.0), jnp.arange(0.0, 10.0, 2.0))
        eki = EKI(localizer=TaperLocalizer(rho))
        ```
    """

    matrix: Float[Array, "N_p N_y"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self) -> None:
        if jnp.ndim(self.matrix) != 2:
            raise ValueError(
                f"TaperLocalizer(matrix=...) must be a 2-D (N_p, N_y) array of weights; got "
                f"shape {jnp.shape(self.matrix)}."
            )
        values = fxp.concrete_value(self.matrix)
        if values is not None and not np.all(np.isfinite(values)):
            i, j = (int(k) for k in np.argwhere(~np.isfinite(values))[0])
            raise ValueError(
                f"TaperLocalizer(matrix=...) has a non-finite weight at ({i}, {j}) "
                f"({values[i, j]}); pass finite weights (0 drops a parameter-observation pair)."
            )

    def weights(
        self, corr: Float[Array, "N_p N_y"], n_ensemble: ScalarLike
    ) -> Float[Array, "N_p N_y"]:
        if self.matrix.shape != corr.shape:
            raise ValueError(
                f"TaperLocalizer(matrix=...) has shape {self.matrix.shape} but the "
                f"cross-covariance is (N_p, N_y) = {corr.shape}; pass one weight per "
                "(parameter, observation) pair."
            )
        return self.matrix.astype(corr.dtype)


class SEC(AbstractCovarianceLocalizer):
    r"""Sampling-error correction (Lee 2021): shrink correlations by ``|r|^alpha``.

    $$\rho_{ij} = |r_{ij}|^{\alpha}\,\mathbf 1\{|r_{ij}|^{1+\alpha} > r_0\},$$

    so a correlation ``r`` becomes ``r |r|^alpha`` and corrected correlations below the cutoff
    ``r_0`` are dropped.

    **Arguments:**

    - `alpha`: the exponent (default 1).
    - `cutoff`: ``r_0`` (default 0, no sparsification).

    **Reference:** Y. Lee (2021), "Sampling error correction in ensemble Kalman inversion",
    arXiv:2105.11341. EnsembleKalmanProcesses.jl: ``SEC(alpha, r_0)``.

    !!! Example

        ```python
        from filterax.processes import EKI, SEC

        eki = EKI(localizer=SEC(alpha=1.0))
        ```
    """

    alpha: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)
    cutoff: Float[ArrayLike, ""] = eqx.field(default=0.0, converter=as_float)

    def __check_init__(self) -> None:
        check_hyperparameter(
            self.alpha,
            "SEC(alpha=...)",
            hint=" A correlation r is shrunk to r |r|^alpha; 0 leaves it unchanged.",
        )
        check_hyperparameter(self.cutoff, "SEC(cutoff=...)", hint=" 0: no sparsification.")

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return in_range(self.alpha) & in_range(self.cutoff)

    def weights(
        self, corr: Float[Array, "N_p N_y"], n_ensemble: ScalarLike
    ) -> Float[Array, "N_p N_y"]:
        magnitude = jnp.abs(corr)
        shrink = magnitude ** jnp.asarray(self.alpha, corr.dtype)
        return jnp.where(magnitude * shrink > self.cutoff, shrink, 0.0)


class SECFisher(AbstractCovarianceLocalizer):
    r"""Sampling-error correction with Flowerdew's (2015) Fisher-transform weights.

    With ``s = artanh(r)``, ``sigma_s = (J - 3)^{-1/2}``,
    ``sigma_r = (tanh(s + sigma_s) - tanh(s - sigma_s)) / 2`` and ``Q = r / sigma_r``:
    ``rho = Q^2 / (1 + Q^2)``. Needs more than 3 members.

    **Reference:** J. Flowerdew (2015), "Towards a theory of optimal localisation", *Tellus A*
    67; Lee (2021). EnsembleKalmanProcesses.jl: ``SECFisher()``.

    !!! Example

        ```python
        from filterax.processes import EKI, SECFisher

        eki = EKI(localizer=SECFisher())
        ```
    """

    def weights(
        self, corr: Float[Array, "N_p N_y"], n_ensemble: ScalarLike
    ) -> Float[Array, "N_p N_y"]:
        bound = 1.0 - 1e3 * jnp.finfo(corr.dtype).eps
        r = jnp.clip(corr, -bound, bound)
        s = jnp.arctanh(r)
        sigma_s = 1.0 / jnp.sqrt(jnp.maximum(jnp.asarray(n_ensemble, corr.dtype) - 3.0, 1.0))
        sigma_r = 0.5 * (jnp.tanh(s + sigma_s) - jnp.tanh(s - sigma_s))
        q2 = (r / sigma_r) ** 2
        return q2 / (1.0 + q2)


# Gauss-Hermite rule for E[f(Z)], Z ~ N(0, 1): 64 nodes integrate tanh(mu + sigma Z) moments
# to round-off for the sigma = (J - 3)^{-1/2} <= 1 that occur here.
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(64)


def correlation_std(r: Array, n_ensemble: Array) -> Array:
    """Standard deviation of a sample correlation coefficient around ``r`` from ``J`` draws.

    Fisher's transform: ``artanh(r_hat) ~ N(artanh(r), 1 / (J - 3))``, so the std of
    ``r_hat = tanh(.)`` is computed by Gauss-Hermite quadrature (EnsembleKalmanProcesses.jl
    estimates the same quantity by Monte Carlo and interpolates it on a grid of ``r``).
    """
    dtype = r.dtype
    sigma = 1.0 / jnp.sqrt(jnp.maximum(jnp.asarray(n_ensemble, dtype) - 3.0, 1.0))
    # Quadrature axis last, broadcast explicitly (rank promotion is an error in the tests).
    shape = (1,) * r.ndim + (-1,)
    nodes = jnp.asarray(np.sqrt(2.0) * _GH_NODES, dtype).reshape(shape)
    weights = jnp.asarray(_GH_WEIGHTS / np.sqrt(np.pi), dtype).reshape(shape)
    values = jnp.tanh(jnp.arctanh(r)[..., None] + sigma * nodes)
    first = jnp.sum(values * weights, axis=-1)
    second = jnp.sum(values**2 * weights, axis=-1)
    return jnp.sqrt(jnp.maximum(second - first**2, 0.0))


class SECNice(AbstractCovarianceLocalizer):
    r"""Sampling-error correction by a discrepancy principle (Vishny, Morzfeld et al. 2024).

    No tuning parameter: with ``s_ij`` the standard deviation of the sample correlation
    ``r_ij`` for ``J`` members (`correlation_std`) and the noise level
    ``tau = delta (sum_ij s_ij^2)^{1/2}``, the correction is the largest even-power shrinkage
    that stays within the noise:

    1. ``gamma`` = the first of ``2, 4, ..., 10`` with ``||r^{gamma+1} - r||_F > tau`` (10 if
       none);
    2. ``w(alpha) = (1 - alpha) r^{gamma-2} + alpha r^{gamma}``; the weights are
       ``w(alpha*)`` for the first ``alpha*`` of ``1, 8/9, ..., 0`` with
       ``||w(alpha) r - r||_F < tau`` (no correction, weights 1, if none).

    Only the parameter-data block is localised here (the data-data block is never formed), so
    only EnsembleKalmanProcesses.jl's ``delta_ug`` applies.

    **Arguments:**

    - `delta`: scaling of the discrepancy tolerance (default 1; EKP's ``delta_ug``).

    **Reference:** M. Vishny, M. Morzfeld, K. Gurumoorthy & A. Anderson (2024),
    "High-dimensional covariance estimation from a small number of samples", *JAMES*
    (doi:10.22541/essoar.171501094.44068137/v1). EnsembleKalmanProcesses.jl: ``SECNice()``.

    !!! Example

        ```python
        from filterax.processes import EKI, SECNice

        eki = EKI(localizer=SECNice())
        ```
    """

    delta: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)

    def __check_init__(self) -> None:
        check_hyperparameter(self.delta, "SECNice(delta=...)")

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return in_range(self.delta)

    def weights(
        self, corr: Float[Array, "N_p N_y"], n_ensemble: ScalarLike
    ) -> Float[Array, "N_p N_y"]:
        dtype = corr.dtype
        bound = 1.0 - 1e3 * jnp.finfo(dtype).eps
        r = jnp.clip(corr, -bound, bound)
        tol = jnp.asarray(self.delta, dtype) * jnp.sqrt(
            jnp.sum(correlation_std(r, n_ensemble) ** 2)
        )
        r2 = r * r
        # Step 1: even exponents 2..10 (even powers keep the corrected matrix PSD in EKP).
        exponents = jnp.arange(2, 12, 2)
        gaps = jnp.stack(
            [jnp.sqrt(jnp.sum((r * r2 ** (g // 2) - r) ** 2)) for g in range(2, 12, 2)]
        )
        exceeded = gaps > tol
        gamma = jnp.where(jnp.any(exceeded), exponents[jnp.argmax(exceeded)], 10).astype(dtype)
        upper = r2 ** (gamma / 2)
        lower = r2 ** (gamma / 2 - 1)
        # Step 2: ||((1 - a) P + a U) r - r||^2 is quadratic in a: three sums, not 10 matrices.
        p = lower * r - r
        u = upper * r - r
        spp, suu, spu = jnp.sum(p * p), jnp.sum(u * u), jnp.sum(p * u)
        alphas = jnp.linspace(1.0, 0.0, 10, dtype=dtype)
        norms = jnp.sqrt(
            jnp.maximum(
                (1 - alphas) ** 2 * spp + 2 * alphas * (1 - alphas) * spu + alphas**2 * suu, 0.0
            )
        )
        within = norms < tol
        alpha = alphas[jnp.argmax(within)]
        shrink = (1 - alpha) * lower + alpha * upper
        return jnp.where(jnp.any(within), shrink, jnp.ones_like(r))


def localized_cross_covariance(
    localizer: AbstractCovarianceLocalizer,
    x_anomalies: Array,
    g_anomalies: Array,
    count: Array,
    whitening: fxp.Whitening,
) -> Array:
    """The localised ``C^{ug}`` (raw data coordinates), whitened along the data axis."""
    denom = jnp.maximum(count - 1.0, 1.0)
    cov = mm(x_anomalies.T, g_anomalies) / denom
    std_u = jnp.sqrt(jnp.sum(x_anomalies**2, axis=0) / denom)
    std_g = jnp.sqrt(jnp.sum(g_anomalies**2, axis=0) / denom)
    scale = std_u[:, None] * std_g[None, :]
    corr = jnp.where(scale > 0, cov / jnp.where(scale > 0, scale, 1.0), 0.0)
    return whitening.white(cov * localizer.weights(corr, count))
