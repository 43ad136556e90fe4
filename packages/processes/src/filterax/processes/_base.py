"""The machinery every ensemble Kalman process shares (tutorial Part 5).

- Observation space is whitened once per update: ``Gamma = L L^T`` with ``L`` diagonal (the
  diagonal part of a diagonal or low-rank-plus-diagonal ``Gamma``) or the dense Cholesky
  factor; what remains of a low-rank ``Gamma = D + U U^T`` is ``I + U~ U~^T`` with
  ``U~ = L^{-1} U``. All Kalman algebra then happens in the ensemble (``N_e x N_e``) space via
  the Woodbury identity, so an update costs ``O(N_e^2 N_y)``: linear in the data dimension.
- Failed members (non-finite forward evaluations) are masked out of every statistic.
- The algorithm time step ``dt`` enters every update so that ``dt = 0`` is exactly the identity
  (``Gamma / dt`` is never formed: ``C^{ug} (C^{gg} + Gamma/dt)^{-1} = dt C^{ug} (dt C^{gg} +
  Gamma)^{-1}``).
- Covariance localisation of the parameter-data cross-covariance (`TaperLocalizer`, `SEC`,
  `SECFisher`, `SECNice`) and EnsembleKalmanProcesses.jl's ``dt``-aware inflation
  (`MultiplicativeInflation`, `AdditiveInflation`).
"""

# No `from __future__ import annotations`: equinox needs evaluated `AbstractVar` annotations.
import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from equinox import AbstractVar
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, ScalarLike

import filterax.primitives as fxp

from ._failures import handle_failures, masked_stats
from ._state import ProcessState

__all__ = [
    "SEC",
    "SECNice",
    "AbstractCovarianceLocalizer",
    "AbstractInflation",
    "AbstractProcessBase",
    "AdditiveInflation",
    "MultiplicativeInflation",
    "SECFisher",
    "TaperLocalizer",
]

_HIGHEST = lax.Precision.HIGHEST


def mm(a: Array, b: Array) -> Array:
    # Explicit precision: on GPUs the default may be TF32, far too coarse for covariances.
    return jnp.matmul(a, b, precision=_HIGHEST)


def as_float(x: Any) -> Any:
    # Python ints would become integer arrays that jax.grad cannot reach; Python floats stay
    # weakly typed and follow the dtype of the ensemble they meet.
    if isinstance(x, int) and not isinstance(x, bool):
        return float(x)
    return x


def float_dtype(x: Any) -> jnp.dtype:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"expected a floating-point array; got dtype {dtype}. Cast it with "
            ".astype(jnp.float32) or .astype(jnp.float64)."
        )
    return jnp.dtype(dtype)


# --- noise operators and whitening ----------------------------------------------------------


def _concrete(x: Any) -> np.ndarray | None:
    try:
        return np.asarray(x)
    except Exception:  # a tracer: cannot be checked at trace time
        return None


def checked_noise(
    noise: fxp.NoiseLike, n: int, dtype: jnp.dtype, name: str
) -> lx.AbstractLinearOperator:
    """Coerce a noise specification to an operator and check it is positive definite.

    Only concrete values can be checked; traced operators pass through.
    """
    try:
        op = fxp.as_noise_operator(noise, n, dtype=dtype)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    structure = fxp.noise_structure(op)
    if structure == "low_rank":
        assert isinstance(op, fxp.LowRankUpdate)
        if op.diagonal is None:
            raise ValueError(
                f"{name} is a low-rank covariance U U^T without a diagonal, which is singular. "
                "Pass low_rank_noise(factor, diagonal) with positive variances."
            )
        values = _concrete(op.diagonal)
        if values is not None and values.size and values.min() <= 0:
            raise ValueError(
                f"{name} must be positive definite; its diagonal has the value "
                f"{values.min():.3g}. Pass strictly positive variances."
            )
    elif structure == "diagonal":
        values = _concrete(lx.diagonal(op))
        if values is not None and values.size and values.min() <= 0:
            raise ValueError(
                f"{name} must be positive definite; it has the variance {values.min():.3g}. "
                "Pass strictly positive variances (a zero variance cannot be whitened)."
            )
    else:
        matrix = _concrete(op.as_matrix())
        if matrix is not None:
            eigenvalues = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
            if eigenvalues.min() <= 0:
                raise ValueError(
                    f"{name} must be a positive-definite covariance; its smallest eigenvalue is "
                    f"{eigenvalues.min():.3g}. Symmetrise it, add a small jitter to the "
                    "diagonal, or pass the variances of a diagonal covariance."
                )
    return op


class Whitening(eqx.Module):
    """``L^{-1}`` for ``Gamma = L L^T (+ L U~ U~^T L^T)`` and the whitened residual noise.

    In whitened coordinates the noise covariance is ``N = I + U~ U~^T`` (``N = I`` unless
    ``Gamma`` is low-rank plus diagonal).
    """

    inv_sqrt_diag: Array | None
    chol: Array | None
    factor: Array | None

    @classmethod
    def build(cls, op: lx.AbstractLinearOperator, dtype: jnp.dtype) -> "Whitening":
        structure = fxp.noise_structure(op)
        if structure == "dense":
            matrix = jnp.asarray(op.as_matrix(), dtype=dtype)
            chol = jnp.linalg.cholesky(0.5 * (matrix + matrix.T))
            return cls(None, chol, None)
        if structure == "low_rank":
            assert isinstance(op, fxp.LowRankUpdate)
            diag = jnp.asarray(op.diagonal, dtype=dtype)
            inv = 1.0 / jnp.sqrt(diag)
            return cls(inv, None, jnp.asarray(op.factor, dtype=dtype) * inv[:, None])
        diag = jnp.asarray(lx.diagonal(op), dtype=dtype)
        return cls(1.0 / jnp.sqrt(diag), None, None)

    @property
    def size(self) -> int:
        return (self.inv_sqrt_diag if self.chol is None else self.chol).shape[0]

    def white(self, x: Array) -> Array:
        """``L^{-1}`` applied along the last axis of a 1-D or 2-D array."""
        if self.chol is None:
            return x * (self.inv_sqrt_diag if x.ndim == 1 else self.inv_sqrt_diag[None, :])
        if x.ndim == 1:
            return jsl.solve_triangular(self.chol, x, lower=True)
        return jsl.solve_triangular(self.chol, x.T, lower=True).T

    def noise_solve(self, b: Array) -> Array:
        """Rows of ``b`` times ``N^{-1}`` (``b`` of shape ``(m, n)``)."""
        return woodbury_solve_rows(b, self.factor)

    def noise_sample(self, key: PRNGKeyArray, m: int, dtype: jnp.dtype) -> Array:
        """``m`` draws from ``N(0, N)``, shape ``(m, n)``."""
        return noise_sample(key, m, self.size, self.factor, dtype)


def noise_sample(
    key: PRNGKeyArray, m: int, n: int, factor: Array | None, dtype: jnp.dtype
) -> Array:
    """``m`` draws from ``N(0, I + F F^T)``, shape ``(m, n)``."""
    if factor is None:
        return jax.random.normal(key, (m, n), dtype)
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (m, n), dtype) + mm(
        jax.random.normal(k2, (m, factor.shape[1]), dtype), factor.T
    )


def woodbury_solve_rows(b: Array, factor: Array | None) -> Array:
    """Rows of ``b`` times ``(I + F F^T)^{-1}``, through the smaller of the two systems.

    $$(I + F F^\\top)^{-1} = I - F (I_r + F^\\top F)^{-1} F^\\top$$

    (the ``r x r`` capacitance matrix when ``F`` has fewer columns than rows, the ``n x n``
    matrix itself otherwise): ``O(n r min(n, r))``.
    """
    if factor is None or factor.shape[1] == 0:
        return b
    n, r = factor.shape
    if n <= r:
        # Fewer data than ensemble directions: the n x n system itself is the cheaper one.
        system = jnp.eye(n, dtype=factor.dtype) + mm(factor, factor.T)
        return jsl.cho_solve(jsl.cho_factor(system, lower=True), b.T).T
    capacitance = jnp.eye(r, dtype=factor.dtype) + mm(factor.T, factor)
    cap = jsl.cho_factor(capacitance, lower=True)
    return b - mm(jsl.cho_solve(cap, mm(factor.T, b.T)).T, factor.T)


def stack_factors(
    first: Array | None, n_first: int, second: Array | None, n_second: int, dtype: jnp.dtype
) -> Array | None:
    """The block-diagonal factor ``[[F1, 0], [0, F2]]`` of two stacked whitened blocks."""
    if first is None and second is None:
        return None
    f1 = jnp.zeros((n_first, 0), dtype) if first is None else first
    f2 = jnp.zeros((n_second, 0), dtype) if second is None else second
    top = jnp.concatenate([f1, jnp.zeros((n_first, f2.shape[1]), dtype)], axis=1)
    bottom = jnp.concatenate([jnp.zeros((n_second, f1.shape[1]), dtype), f2], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


# --- localisation ----------------------------------------------------------------------------


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
    whitening: Whitening,
) -> Array:
    """The localised ``C^{ug}`` (raw data coordinates), whitened along the data axis."""
    denom = jnp.maximum(count - 1.0, 1.0)
    cov = mm(x_anomalies.T, g_anomalies) / denom
    std_u = jnp.sqrt(jnp.sum(x_anomalies**2, axis=0) / denom)
    std_g = jnp.sqrt(jnp.sum(g_anomalies**2, axis=0) / denom)
    scale = std_u[:, None] * std_g[None, :]
    corr = jnp.where(scale > 0, cov / jnp.where(scale > 0, scale, 1.0), 0.0)
    return whitening.white(cov * localizer.weights(corr, count))


# --- inflation -------------------------------------------------------------------------------


class AbstractInflation(eqx.Module):
    """A ``dt``-aware inflation applied after each update (EnsembleKalmanProcesses.jl style).

    ``inflation(key, ensemble, dt) -> ensemble``; ``dt = 0`` must be the identity.
    """

    @abc.abstractmethod
    def __call__(
        self, key: PRNGKeyArray, ensemble: Float[Array, "N_e N_p"], dt: ScalarLike
    ) -> Float[Array, "N_e N_p"]:
        """Inflate the updated ensemble."""


class MultiplicativeInflation(AbstractInflation):
    r"""Scale the anomalies so the covariance grows by ``1 / (1 - s dt)``.

    $$\theta_j \leftarrow \bar\theta + (1 - s\,\Delta t)^{-1/2} (\theta_j - \bar\theta),$$

    the discrete form of adding ``s C`` to the covariance dynamics for a time ``dt``. Needs
    ``s dt < 1`` (checked inside `jit` with `eqx.error_if`).

    **Arguments:**

    - `s`: the time-step scaling (default 1).

    **Reference:** EnsembleKalmanProcesses.jl: ``multiplicative_inflation!(ekp; s)``
    (Lopez-Gomez et al. 2022, *JAMES*).

    !!! Example

        ```python
        from filterax.processes import EKI, FixedScheduler, MultiplicativeInflation

        eki = EKI(scheduler=FixedScheduler(0.1), inflation=MultiplicativeInflation(0.5))
        ```
    """

    s: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)

    def __call__(
        self, key: PRNGKeyArray, ensemble: Float[Array, "N_e N_p"], dt: ScalarLike
    ) -> Float[Array, "N_e N_p"]:
        scaled = jnp.asarray(self.s, ensemble.dtype) * jnp.asarray(dt, ensemble.dtype)
        scaled = eqx.error_if(
            scaled,
            scaled >= 1,
            "MultiplicativeInflation needs s * dt < 1; reduce s or the time step.",
        )
        factor = 1.0 / jnp.sqrt(1.0 - scaled)
        mean = jnp.mean(ensemble, axis=0)
        return mean[None, :] + factor * (ensemble - mean[None, :])


class AdditiveInflation(AbstractInflation):
    r"""Add Gaussian noise with covariance ``s dt / (1 - s dt) * cov`` to every member.

    $$\theta_j \leftarrow \theta_j + \xi_j, \qquad
    \xi_j \sim \mathcal N\big(0, \tfrac{s\Delta t}{1 - s\Delta t}\,\Sigma\big).$$

    **Arguments:**

    - `cov`: ``Sigma`` over the parameters: a scalar variance, a vector of variances, a matrix
        or a lineax operator (any form `filterax.primitives.as_noise_operator` accepts).
    - `s`: the time-step scaling (default 1); needs ``s dt < 1``.

    **Reference:** EnsembleKalmanProcesses.jl: ``additive_inflation!(ekp, cov; s)``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.processes import EKI, AdditiveInflation, FixedScheduler

        eki = EKI(scheduler=FixedScheduler(0.1), inflation=AdditiveInflation(jnp.ones(3)))
        ```
    """

    cov: fxp.NoiseLike
    s: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)

    def __call__(
        self, key: PRNGKeyArray, ensemble: Float[Array, "N_e N_p"], dt: ScalarLike
    ) -> Float[Array, "N_e N_p"]:
        dtype = ensemble.dtype
        scaled = jnp.asarray(self.s, dtype) * jnp.asarray(dt, dtype)
        scaled = eqx.error_if(
            scaled,
            scaled >= 1,
            "AdditiveInflation needs s * dt < 1; reduce s or the time step.",
        )
        n_e, n_p = ensemble.shape
        draws = fxp.perturbed_observations(key, jnp.zeros(n_p, dtype), self.cov, n_e)
        return ensemble + jnp.sqrt(scaled / (1.0 - scaled)) * draws


def apply_inflation(
    inflation: AbstractInflation | tuple[AbstractInflation, ...] | None,
    key: PRNGKeyArray,
    ensemble: Array,
    dt: Array,
) -> Array:
    if inflation is None:
        return ensemble
    steps = inflation if isinstance(inflation, tuple) else (inflation,)
    for index, step in enumerate(steps):
        ensemble = step(jax.random.fold_in(key, index), ensemble, dt)
    return ensemble


def check_inflation(inflation: Any, owner: str) -> None:
    steps = inflation if isinstance(inflation, tuple) else (inflation,)
    if inflation is not None and not all(isinstance(s, AbstractInflation) for s in steps):
        raise TypeError(
            f"{owner}(inflation=...) must be a MultiplicativeInflation, an AdditiveInflation, "
            f"a tuple of them, or None; got {inflation!r}."
        )


# --- shared Kalman steps ---------------------------------------------------------------------


def kalman_increments(
    key: PRNGKeyArray | None,
    x_anomalies: Array,
    y_anomalies: Array,
    residuals: Array,
    dt: Array,
    factor: Array | None,
    *,
    stochastic: bool,
    cross_cov: Array | None = None,
) -> Array:
    r"""Per-member EKI increments in whitened data coordinates.

    $$\delta\theta_j = C^{ug} (C^{gg} + N/\Delta t)^{-1} (\tilde y + \eta_j/\sqrt{\Delta t}
    - \tilde g_j) = C^{ug} S^{-1} \epsilon_j,$$

    with ``S = dt C^{gg} + N = I + F F^T``, ``F = [sqrt(dt) Y_a^T, U~]``,
    ``eps_j = dt (y~ - g~_j) + sqrt(dt) eta_j`` and ``eta_j ~ N(0, N)`` (EKP's perturbed
    observations with covariance ``Gamma / dt``). ``x_anomalies``, ``y_anomalies`` are the
    ``(N_e, .)`` anomalies divided by ``sqrt(n - 1)`` (zero rows for failed members).
    """
    dtype = residuals.dtype
    eps = dt * residuals
    if stochastic:
        assert key is not None
        eta = noise_sample(key, residuals.shape[0], residuals.shape[1], factor, dtype)
        eps = eps + jnp.sqrt(dt) * eta
    f = jnp.sqrt(dt) * y_anomalies.T
    if factor is not None:
        f = jnp.concatenate([f, factor], axis=1)
    z = woodbury_solve_rows(eps, f)
    if cross_cov is None:
        return mm(z, mm(y_anomalies.T, x_anomalies))
    return mm(z, cross_cov.T)


def transform_update(
    x_mean: Array,
    x_anomalies: Array,
    count: Array,
    y_anomalies: Array,
    mean_residual: Array,
    dt: Array,
    factor: Array | None,
) -> Array:
    r"""The ensemble-transform (square-root) update, exact Kalman for a linear model.

    $$\Omega = (I + \Delta t\, Y_a N^{-1} Y_a^\top)^{-1}, \quad
    w = \Delta t\,\Omega Y_a N^{-1} (\tilde y - \bar{\tilde g}), \quad
    \theta_j = \bar\theta + X_a^\top w + (\Omega^{1/2} X')_j,$$

    with ``X' = x_anomalies`` (raw), ``X_a = X' / sqrt(n - 1)`` and ``Y_a`` the normalised
    whitened data anomalies (EKP's ``etki_update``; symmetric square root, so the mean is
    preserved exactly).
    """
    y_noise = woodbury_solve_rows(y_anomalies, factor)
    k = dt * mm(y_noise, y_anomalies.T)
    # Gradient-safe (I + K)^{-1/2}: K has repeated eigenvalues whenever N_y < N_e - 1 and is
    # exactly 0 once the time step is 0 (after algorithm time 1), where eigh's derivative is
    # NaN; Omega = (I + K)^{-1} is its square.
    omega_half = fxp.inverse_sqrt_one_plus(0.5 * (k + k.T))
    omega = mm(omega_half, omega_half)
    w = dt * mm(omega, mm(y_noise, mean_residual[:, None]))[:, 0]
    x_norm = x_anomalies / jnp.sqrt(jnp.maximum(count - 1.0, 1.0))
    mean = x_mean + mm(x_norm.T, w[:, None])[:, 0]
    return mean[None, :] + mm(omega_half, x_anomalies)


# --- the update context ----------------------------------------------------------------------


class UpdateData(eqx.Module):
    """Everything an update derives from the forward evaluations, computed once."""

    failed: Bool[Array, " N_e"]
    count: Array
    whitening: Whitening
    gw: Array
    gw_anomalies: Array
    g_anomalies: Array
    yw: Array
    residuals: Array
    misfits: Array
    d_norm: Array

    @property
    def ok(self) -> Array:
        return ~self.failed


def check_forward_evals(forward_evals: Any, n_ensemble: int, dtype: jnp.dtype) -> Array:
    shape = jnp.shape(forward_evals)
    if len(shape) != 2 or shape[0] != n_ensemble:
        raise ValueError(
            f"forward_evals must have shape (N_e, N_y) = ({n_ensemble}, N_y), one row per "
            f"member of `process.particles(state)`; got shape {shape}."
        )
    return jnp.asarray(forward_evals).astype(dtype)


def resolve_obs(
    state: ProcessState, obs: Any, obs_noise: Any, dtype: jnp.dtype
) -> tuple[Array, lx.AbstractLinearOperator]:
    """The observation and noise of this update (state's, or a mini-batch override)."""
    if obs is None:
        if obs_noise is not None:
            noise = checked_noise(obs_noise, state.obs.shape[0], dtype, "obs_noise")
            return state.obs, noise
        return state.obs, state.obs_noise
    check_vector(obs, "obs (the observation vector)")
    y = jnp.asarray(obs).astype(dtype)
    if obs_noise is None:
        if state.obs_noise.in_size() != y.shape[0]:
            raise ValueError(
                f"the obs override has {y.shape[0]} entries but the state's obs_noise is "
                f"{state.obs_noise.in_size()}-dimensional; pass obs_noise for the new batch too."
            )
        return y, state.obs_noise
    return y, checked_noise(obs_noise, y.shape[0], dtype, "obs_noise")


def check_ensemble(x: Any, name: str) -> None:
    shape = jnp.shape(x)
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be a 2-D (N_e, N_p) ensemble with the members along axis 0; got "
            f"shape {shape}."
        )
    if shape[0] < 2:
        raise ValueError(
            f"{name} has N_e={shape[0]} members; ensemble statistics need at least 2. Pass "
            "more members."
        )
    float_dtype(x)


def check_vector(x: Any, name: str, size: int | None = None) -> None:
    shape = jnp.shape(x)
    if len(shape) != 1 or (size is not None and shape[0] != size):
        expected = "a 1-D array" if size is None else f"a 1-D array of length {size}"
        raise ValueError(f"{name} must be {expected}; got shape {shape}.")


def check_data_dimension(y: Any, g: Array) -> None:
    """`obs` is 1-D and `forward_evals` has one column per observation (clear message)."""
    check_vector(y, "obs")
    if jnp.shape(y)[0] != g.shape[1]:
        raise ValueError(
            f"forward_evals has N_y={g.shape[1]} columns but obs has {jnp.shape(y)[0]} entries: "
            "the forward model must return one value per observation, G(theta) of shape "
            f"({jnp.shape(y)[0]},) for each member."
        )


def prepare_update(
    forward_evals: Array, obs: Array, noise: lx.AbstractLinearOperator
) -> UpdateData:
    """Mask failures, whiten, and compute misfits and ``||D||_F`` (EKS/EKSStableScheduler)."""
    dtype = forward_evals.dtype
    failed = ~jnp.all(jnp.isfinite(forward_evals), axis=1)
    ok = ~failed
    g_mean, g_anomalies, count = masked_stats(forward_evals, ok)
    g_clean = jnp.where(ok[:, None], forward_evals, g_mean[None, :])
    whitening = Whitening.build(noise, dtype)
    gw = whitening.white(g_clean)
    yw = whitening.white(obs)
    residuals = yw[None, :] - gw
    gw_anomalies = whitening.white(g_anomalies)
    res_noise = whitening.noise_solve(residuals)
    misfits = jnp.where(ok, 0.5 * jnp.sum(residuals * res_noise, axis=1), jnp.nan)
    # D_ij = <G_i - mean G, Gamma^{-1}(G_j - y)> / J over the successful members (EKP's EKS).
    masked_res = jnp.where(ok[:, None], res_noise, 0.0)
    # ||E R^T||_F^2 = sum((E^T E) o (R^T R)) in the smaller of the two Gram spaces.
    if gw.shape[1] < gw.shape[0]:
        gram = mm(gw_anomalies.T, gw_anomalies) * mm(masked_res.T, masked_res)
    else:
        gram = mm(gw_anomalies, masked_res.T) ** 2
    d_norm = jnp.sqrt(jnp.maximum(jnp.sum(gram), 0.0)) / jnp.maximum(count, 1.0)
    return UpdateData(
        failed=failed,
        count=count,
        whitening=whitening,
        gw=gw,
        gw_anomalies=gw_anomalies,
        g_anomalies=g_anomalies,
        yw=yw,
        residuals=residuals,
        misfits=misfits,
        d_norm=d_norm,
    )


def schedule(
    scheduler: fxp.AbstractScheduler,
    state: ProcessState,
    data: UpdateData,
    n_obs: int,
    dtype: jnp.dtype,
) -> tuple[Array, Any, Array]:
    """Ask the scheduler for ``dt``; returns ``(dt, scheduler_state, converged)``."""
    dt, sched_state = scheduler.step(
        state.scheduler_state,
        data.misfits,
        time=state.time,
        n_obs=n_obs,
        d_norm=data.d_norm,
        iteration=state.iteration,
    )
    dt = jnp.asarray(dt).astype(dtype)
    if jnp.shape(dt) != ():
        raise ValueError(f"the scheduler must return a scalar dt; got shape {jnp.shape(dt)}.")
    terminated = getattr(sched_state, "terminated", None)
    converged = jnp.asarray(False) if terminated is None else jnp.asarray(terminated, bool)
    return dt, sched_state, converged


def prior_operator(
    prior_cov: fxp.NoiseLike, n_params: int, dtype: jnp.dtype, owner: str
) -> lx.AbstractLinearOperator:
    return checked_noise(prior_cov, n_params, dtype, f"{owner}(prior_cov=...)")


def check_prior(prior_mean: Array, prior_cov: Any, owner: str) -> None:
    if jnp.ndim(prior_mean) != 1:
        raise ValueError(
            f"{owner}(prior_mean=...) must be a 1-D array of length N_p; got shape "
            f"{jnp.shape(prior_mean)}."
        )
    n = jnp.shape(prior_mean)[0]
    dtype = jnp.result_type(prior_mean)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    checked_noise(prior_cov, n, dtype, f"{owner}(prior_cov=...)")


def check_prior_size(prior_mean: Array, n_params: int, owner: str) -> None:
    if prior_mean.shape[0] != n_params:
        raise ValueError(
            f"{owner}'s prior has {prior_mean.shape[0]} parameters but the ensemble has "
            f"N_p={n_params}; the prior mean and covariance must match the parameter dimension."
        )


def augment_with_prior(
    data: UpdateData,
    ensemble: Array,
    x_anomalies: Array,
    prior_mean: Array,
    prior_op: lx.AbstractLinearOperator,
) -> tuple[Array, Array, Array | None, Whitening]:
    r"""Tikhonov augmentation ``G~ = [G; theta]``, ``y~ = [y; m_0]``, ``Gamma~ = diag(Gamma, C_0)``.

    Returns the whitened augmented ``(anomalies, residuals, factor, prior_whitening)``.
    """
    dtype = ensemble.dtype
    w0 = Whitening.build(prior_op, dtype)
    anomalies = jnp.concatenate([data.gw_anomalies, w0.white(x_anomalies)], axis=1)
    prior_res = w0.white(prior_mean.astype(dtype))[None, :] - w0.white(ensemble)
    residuals = jnp.concatenate([data.residuals, prior_res], axis=1)
    factor = stack_factors(
        data.whitening.factor, data.gw.shape[1], w0.factor, ensemble.shape[1], dtype
    )
    return anomalies, residuals, factor, w0


# --- the process classes ---------------------------------------------------------------------


class AbstractProcessBase(fxp.AbstractProcess):
    """What every filterax process provides on top of ``init``/``update``.

    `particles` (where to evaluate the forward model) and `misfits` are concrete; `init`,
    `update`, `mean` and `covariance` are implemented by each process.
    """

    @abc.abstractmethod
    def init(
        self,
        ensemble_or_prior: Any,
        obs: Float[ArrayLike, " N_y"],
        obs_noise: fxp.NoiseLike,
        *,
        key: PRNGKeyArray | None = None,
    ) -> ProcessState:
        """Return the initial state."""

    @abc.abstractmethod
    def update(
        self,
        state: ProcessState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> ProcessState:
        """Return the state after one update given the forward evaluations of `particles`."""

    @abc.abstractmethod
    def mean(self, state: ProcessState) -> Float[Array, " N_p"]:
        """The current parameter mean."""

    @abc.abstractmethod
    def covariance(self, state: ProcessState) -> Float[Array, "N_p N_p"]:
        """The current parameter covariance."""

    def particles(self, state: ProcessState) -> Float[Array, "N_e N_p"]:
        """The ``(N_e, N_p)`` points at which to evaluate the forward model next."""
        return state.ensemble

    def misfits(
        self,
        state: ProcessState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> Float[Array, " N_e"]:
        r"""Per-member data misfits ``Phi_j = 1/2 ||Gamma^{-1/2} (G_j - y)||^2`` (NaN if failed).

        ``obs``/``obs_noise`` override the state's observation (mini-batching).
        """
        dtype = state.ensemble.dtype
        g = check_forward_evals(forward_evals, state.ensemble.shape[0], dtype)
        y, noise = resolve_obs(state, obs, obs_noise, dtype)
        check_data_dimension(y, g)
        return prepare_update(g, y, noise).misfits


def initial_key(key: PRNGKeyArray | None, needs_key: bool, owner: str) -> PRNGKeyArray:
    if key is None:
        if needs_key:
            raise ValueError(
                f"{owner} draws random numbers (perturbed observations or sampler noise); pass "
                "init(..., key=jax.random.key(seed))."
            )
        # Only used to re-sample failed members; fixed so deterministic runs are reproducible.
        return jax.random.key(0)
    return key


def new_state(
    state: ProcessState,
    ensemble: Array,
    dt: Array,
    sched_state: Any,
    converged: Array,
    data: UpdateData,
    extra: Any = None,
) -> ProcessState:
    moved = dt > 0
    ensemble = jnp.where(moved, ensemble, state.ensemble)
    if extra is not None:
        extra = jax.tree.map(lambda new, old: jnp.where(moved, new, old), extra, state.extra)
    return ProcessState(
        ensemble=ensemble,
        obs=state.obs,
        obs_noise=state.obs_noise,
        key=state.key,
        iteration=state.iteration + 1,
        time=state.time + dt,
        dt=dt,
        scheduler_state=sched_state,
        n_failed=jnp.sum(data.failed).astype(jnp.int32),
        converged=jnp.logical_or(jnp.asarray(state.converged, bool), converged),
        extra=extra,
    )


class AbstractEnsembleProcess(AbstractProcessBase):
    """An ensemble process: ``init`` takes an ``(N_e, N_p)`` ensemble; shared ``update`` loop.

    Subclasses implement `_analysis` (the method's update of the successful members),
    `_validate` (trace-time checks of the dimensions) and `_needs_key`.
    """

    scheduler: AbstractVar[fxp.AbstractScheduler]
    failure_handler: AbstractVar[str]
    inflation: AbstractVar[AbstractInflation | tuple[AbstractInflation, ...] | None]

    @abc.abstractmethod
    def _needs_key(self) -> bool:
        """Whether the update draws random numbers."""

    @abc.abstractmethod
    def _validate(self, n_ensemble: int, n_params: int, n_obs: int) -> None:
        """Raise ValueError for unsupported dimensions (trace time)."""

    @abc.abstractmethod
    def _analysis(self, key: PRNGKeyArray, ensemble: Array, data: UpdateData, dt: Array) -> Array:
        """The updated ensemble (rows of failed members are replaced afterwards)."""

    def init(
        self,
        ensemble_or_prior: Float[ArrayLike, "N_e N_p"],
        obs: Float[ArrayLike, " N_y"],
        obs_noise: fxp.NoiseLike,
        *,
        key: PRNGKeyArray | None = None,
    ) -> ProcessState:
        """Start the process from an initial ``(N_e, N_p)`` ensemble (e.g. prior draws).

        **Arguments:**

        - `ensemble_or_prior`: the initial ensemble, members along axis 0, ``N_e >= 2``.
        - `obs`: the observation vector ``y``, shape ``(N_y,)``.
        - `obs_noise`: ``Gamma``: a lineax operator, scalar variance, vector of variances or
            ``(N_y, N_y)`` matrix; must be positive definite.
        - `key`: PRNG key (required by stochastic methods).

        **Returns:** the initial `ProcessState`.
        """
        owner = type(self).__name__
        check_ensemble(ensemble_or_prior, f"{owner}.init(ensemble_or_prior=...)")
        x = jnp.asarray(ensemble_or_prior)
        dtype = float_dtype(x)
        check_vector(obs, f"{owner}.init(obs=...)")
        y = jnp.asarray(obs).astype(dtype)
        noise = checked_noise(obs_noise, y.shape[0], dtype, f"{owner}.init(obs_noise=...)")
        self._validate(x.shape[0], x.shape[1], y.shape[0])
        return ProcessState(
            ensemble=x,
            obs=y,
            obs_noise=noise,
            key=initial_key(key, self._needs_key(), owner),
            iteration=jnp.asarray(0, jnp.int32),
            time=jnp.zeros((), dtype),
            dt=jnp.zeros((), dtype),
            scheduler_state=self.scheduler.init(),
            n_failed=jnp.asarray(0, jnp.int32),
            converged=jnp.asarray(False),
            extra=None,
        )

    def update(
        self,
        state: ProcessState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> ProcessState:
        """One update from the forward evaluations of `particles(state)`.

        **Arguments:**

        - `state`: the current state.
        - `forward_evals`: ``G(theta_j)`` for every member, shape ``(N_e, N_y)``; rows with a
            non-finite entry are failed members.
        - `obs`, `obs_noise`: optional observation (and noise) for this update only
            (mini-batching); the state keeps its own.

        **Returns:** the next `ProcessState` (``dt = 0``, e.g. after a stopping scheduler
        terminated, returns the same ensemble).
        """
        x = state.ensemble
        n_e, n_p = x.shape
        dtype = x.dtype
        g = check_forward_evals(forward_evals, n_e, dtype)
        y, noise = resolve_obs(state, obs, obs_noise, dtype)
        check_data_dimension(y, g)
        self._validate(n_e, n_p, g.shape[1])
        data = prepare_update(g, y, noise)
        dt, sched_state, converged = schedule(self.scheduler, state, data, g.shape[1], dtype)
        step_key = jax.random.fold_in(state.key, state.iteration)
        k_update, k_fail, k_inflate = jax.random.split(step_key, 3)
        updated = self._analysis(k_update, x, data, dt)
        updated = handle_failures(self.failure_handler, k_fail, x, updated, data.failed)
        updated = apply_inflation(self.inflation, k_inflate, updated, dt)
        return new_state(state, updated, dt, sched_state, converged, data)

    def mean(self, state: ProcessState) -> Float[Array, " N_p"]:
        """The ensemble mean."""
        return jnp.mean(state.ensemble, axis=0)

    def covariance(self, state: ProcessState) -> Float[Array, "N_p N_p"]:
        """The Bessel-corrected ensemble covariance (dense ``(N_p, N_p)``)."""
        return fxp.ensemble_covariance(state.ensemble, dense=True)


def normalised(anomalies: Array, count: Array) -> Array:
    return anomalies / jnp.sqrt(jnp.maximum(count - 1.0, 1.0))
