"""Independent numpy references and linear-Gaussian test problems for the filter tests.

Import from a test module with ``load_helpers()`` (see ``test_sqrt_filters.py``): pytest runs
with ``--import-mode=importlib``, so the tests folder is not on ``sys.path``; the module is
registered under a package-specific name so it cannot clash with another package's helpers.
Keep this file additive: other filter test modules import from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

import filterax.primitives as fxp

NOISE_KINDS = ("scalar", "variances", "diagonal", "dense", "low_rank")


@dataclasses.dataclass(frozen=True)
class KalmanReference:
    """The exact Kalman analysis of an ensemble's sample mean and covariance (float64)."""

    mean: np.ndarray  # x + K d
    cov: np.ndarray  # (I - K H) P_f
    gain: np.ndarray  # K = P_f H^T (H P_f H^T + R)^{-1}, (N_x, N_y_observed)
    prior_mean: np.ndarray
    prior_cov: np.ndarray  # P_f, the Bessel-corrected sample covariance
    innovation_cov: np.ndarray  # H P_f H^T + R (observed entries)
    log_likelihood: float  # log N(d; 0, H P_f H^T + R) over the observed entries
    H: np.ndarray  # the observed rows of H


def sample_mean_cov(X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and Bessel-corrected covariance (numpy float64) of an (N_e, N_x) ensemble."""
    X = np.asarray(X, dtype=np.float64)
    return X.mean(axis=0), np.atleast_2d(np.cov(X.T, ddof=1))


def gaussian_logpdf(d: np.ndarray, cov: np.ndarray) -> float:
    """``log N(d; 0, cov)`` by Cholesky in float64."""
    if d.size == 0:
        return 0.0
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, d)
    return float(-0.5 * (d.size * np.log(2 * np.pi) + 2 * np.sum(np.log(np.diag(chol))) + z @ z))


def sample_kalman_analysis(X: Any, H: Any, R: Any, y: Any) -> KalmanReference:
    """Exact Kalman analysis with ``P_f`` the sample covariance of ``X`` (NaN in ``y``: unobserved).

    $$K = P_f H^\\top (H P_f H^\\top + R)^{-1},\\quad x^a = \\bar x + K (y - H\\bar x),\\quad
    P^a = (I - K H) P_f,$$

    computed on the observed subset with dense numpy linear algebra (an independent reference:
    no code shared with the library).
    """
    mean, cov = sample_mean_cov(X)
    H = np.asarray(H, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = ~np.isnan(y)
    H, R, y = H[keep], R[np.ix_(keep, keep)], y[keep]
    innovation_cov = H @ cov @ H.T + R
    d = y - H @ mean
    gain = np.linalg.solve(innovation_cov, H @ cov).T
    return KalmanReference(
        mean=mean + gain @ d,
        cov=(np.eye(mean.size) - gain @ H) @ cov,
        gain=gain,
        prior_mean=mean,
        prior_cov=cov,
        innovation_cov=innovation_cov,
        log_likelihood=gaussian_logpdf(d, innovation_cov),
        H=H,
    )


@dataclasses.dataclass(frozen=True)
class LinearProblem:
    """A linear-Gaussian analysis problem: forecast ensemble, ``H``, ``R`` and one observation."""

    forecast: np.ndarray  # (N_e, N_x) float64
    H: np.ndarray  # (N_y, N_x)
    noise_cov: np.ndarray  # dense (N_y, N_y) R
    obs: np.ndarray  # (N_y,), possibly with NaN
    noise_kind: str
    noise_factor: np.ndarray | None  # U of a low-rank R = diag(d) + U U^T
    noise_diag: np.ndarray  # the variances (diagonal of R, or d of the low-rank form)

    @property
    def obs_op(self) -> Callable[[Any], Any]:
        return fxp.LinearObs(jnp.asarray(self.H))

    def obs_noise(self, scale: Any = 1.0, dtype: Any = None) -> Any:
        """``scale * R`` in the form of `noise_kind` (what a user would pass to a filter)."""
        return noise_spec(
            self.noise_kind, self.noise_diag, self.noise_cov, self.noise_factor, scale, dtype
        )

    def subset(self, keep: np.ndarray) -> LinearProblem:
        """The problem restricted to the observation entries where `keep` is True."""
        factor = None if self.noise_factor is None else self.noise_factor[keep]
        return dataclasses.replace(
            self,
            H=self.H[keep],
            noise_cov=self.noise_cov[np.ix_(keep, keep)],
            obs=self.obs[keep],
            noise_factor=factor,
            noise_diag=self.noise_diag[keep],
        )

    def reference(self) -> KalmanReference:
        return sample_kalman_analysis(self.forecast, self.H, self.noise_cov, self.obs)


def noise_spec(
    kind: str,
    variances: np.ndarray,
    cov: np.ndarray,
    factor: np.ndarray | None,
    scale: Any = 1.0,
    dtype: Any = None,
) -> Any:
    """Build ``scale * R`` as a scalar / variances / operator / matrix, per `kind`."""
    dtype = jnp.float64 if dtype is None else dtype
    if kind == "scalar":
        return scale * jnp.asarray(variances[0], dtype=dtype)
    if kind == "variances":
        return scale * jnp.asarray(variances, dtype=dtype)
    if kind == "diagonal":
        return fxp.diagonal_noise(scale * jnp.asarray(variances, dtype=dtype))
    if kind == "dense":
        return scale * jnp.asarray(cov, dtype=dtype)
    if kind == "low_rank":
        assert factor is not None
        return fxp.low_rank_noise(
            jnp.sqrt(scale) * jnp.asarray(factor, dtype=dtype),
            scale * jnp.asarray(variances, dtype=dtype),
        )
    raise ValueError(kind)


def make_linear_problem(
    seed: int,
    n_ensemble: int,
    n_state: int,
    n_obs: int,
    *,
    noise: str = "diagonal",
    ensemble: str = "random",
    obs_matrix: str = "random",
    noise_rank: int = 2,
    missing: tuple[int, ...] = (),
) -> LinearProblem:
    """A random linear-Gaussian analysis problem.

    - `noise`: one of `NOISE_KINDS` (``"scalar"``: isotropic ``c I``; ``"variances"``: a 1-D
      array; ``"diagonal"``: `fxp.diagonal_noise`; ``"dense"``: an SPD matrix;
      ``"low_rank"``: `fxp.low_rank_noise` with `noise_rank` columns).
    - `ensemble`: ``"random"`` (full-rank anomalies), ``"rank_deficient"`` (anomalies of rank
      ``min(2, N_e - 1)``), or ``"repeated"`` (all ``N_e - 1`` non-zero singular values of the
      anomalies equal: the degenerate case where a naive eigh gradient is NaN).
    - `obs_matrix`: ``"random"`` or ``"identity"`` (the first `n_obs` components; needs
      ``n_obs <= n_state``; with ``"repeated"`` and isotropic noise, ``S S^T`` then has
      repeated non-zero eigenvalues too).
    - `missing`: indices of `obs` set to NaN.
    """
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(n_state)
    if ensemble == "random":
        anomalies = rng.standard_normal((n_ensemble, n_state))
    elif ensemble == "rank_deficient":
        rank = min(2, n_ensemble - 1)
        anomalies = rng.standard_normal((n_ensemble, rank)) @ rng.standard_normal((rank, n_state))
    elif ensemble == "repeated":
        # Orthonormal columns orthogonal to 1 (QR of centred Gaussians) times an orthonormal
        # row basis: all singular values of the anomalies equal 1.3 * sqrt(N_e - 1).
        k = min(n_ensemble - 1, n_state)
        centred = rng.standard_normal((n_ensemble, k))
        centred -= centred.mean(axis=0)
        left, _ = np.linalg.qr(centred)
        right, _ = np.linalg.qr(rng.standard_normal((n_state, k)))
        anomalies = 1.3 * np.sqrt(n_ensemble - 1) * left @ right.T
    else:
        raise ValueError(ensemble)
    anomalies = anomalies - anomalies.mean(axis=0)
    forecast = mean + anomalies

    if obs_matrix == "identity":
        if n_obs > n_state:
            raise ValueError("obs_matrix='identity' needs n_obs <= n_state")
        H = np.eye(n_obs, n_state)
    else:
        H = rng.standard_normal((n_obs, n_state)) / np.sqrt(n_state)

    variances = rng.uniform(0.4, 1.6, n_obs)
    factor = None
    if noise == "scalar":
        variances = np.full(n_obs, 0.7)
        cov = np.diag(variances)
    elif noise in ("variances", "diagonal"):
        cov = np.diag(variances)
    elif noise == "dense":
        q, _ = np.linalg.qr(rng.standard_normal((n_obs, n_obs)))
        cov = (q * rng.uniform(0.4, 2.0, n_obs)) @ q.T
        variances = np.diag(cov).copy()
    elif noise == "low_rank":
        factor = 0.5 * rng.standard_normal((n_obs, noise_rank))
        cov = np.diag(variances) + factor @ factor.T
    else:
        raise ValueError(noise)

    truth = mean + rng.standard_normal(n_state)
    obs = H @ truth + rng.multivariate_normal(np.zeros(n_obs), cov)
    obs[list(missing)] = np.nan
    return LinearProblem(
        forecast=forecast,
        H=H,
        noise_cov=cov,
        obs=obs,
        noise_kind=noise,
        noise_factor=factor,
        noise_diag=variances,
    )


def central_difference(f: Callable[[float], Any], x: float, h: float = 1e-5) -> np.ndarray:
    """``(f(x + h) - f(x - h)) / 2h`` in float64 (truncation error ``O(h^2)``)."""
    return (np.asarray(f(x + h), np.float64) - np.asarray(f(x - h), np.float64)) / (2 * h)
