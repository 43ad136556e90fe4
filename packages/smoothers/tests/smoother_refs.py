"""Independent numpy references and a linear-Gaussian problem for the sequential-smoother tests.

Load from a test module with ``load_refs()`` below (pytest runs with ``--import-mode=importlib``,
so tests/ is not on ``sys.path``); the module is registered under a package-specific name.
Nothing here imports filterax code for the reference algebra: the Kalman filter and the
Rauch–Tung–Striebel smoother are re-derived in dense float64 numpy.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import filterax.primitives as fxp
import filterax.zoo as fz


@dataclasses.dataclass(frozen=True)
class LinearGaussian:
    """``x_k = A x_{k-1}`` (no model noise), ``y_k = H x_k + noise(r)``, ``x_0 ~ N(m0, P0)``."""

    A: np.ndarray
    H: np.ndarray
    r: np.ndarray  # observation-error variances
    m0: np.ndarray
    P0: np.ndarray
    observations: np.ndarray  # (T, N_y), NaN = missing
    truth: np.ndarray  # (T, N_x)

    @property
    def times(self) -> jnp.ndarray:
        return jnp.arange(1.0, self.observations.shape[0] + 1.0)

    @property
    def dynamics(self) -> fz.LinearModel:
        return fz.LinearModel(jnp.asarray(self.A))

    @property
    def obs_op(self) -> fxp.LinearObs:
        return fxp.LinearObs(jnp.asarray(self.H))

    @property
    def obs_noise(self):
        return fxp.diagonal_noise(jnp.asarray(self.r))

    def exact_ensemble(self, n_ensemble: int, seed: int = 0) -> jnp.ndarray:
        """An ensemble whose sample mean and covariance equal ``(m0, P0)`` exactly."""
        return jnp.asarray(exact_ensemble(self.m0, self.P0, n_ensemble, seed))

    def with_observations(self, observations: np.ndarray) -> LinearGaussian:
        return dataclasses.replace(self, observations=np.asarray(observations, np.float64))


def exact_ensemble(mean: np.ndarray, cov: np.ndarray, n_ensemble: int, seed: int) -> np.ndarray:
    """``mean + G L_C^{-T} L_P^T`` with ``G`` centred Gaussian: sample moments exactly (mean, cov).

    Needs ``n_ensemble > N_x`` (a full-rank sample covariance).
    """
    rng = np.random.default_rng(seed)
    n_x = mean.size
    g = rng.standard_normal((n_ensemble, n_x))
    g -= g.mean(axis=0)
    chol_c = np.linalg.cholesky(g.T @ g / (n_ensemble - 1))
    chol_p = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol_c, g.T).T @ chol_p.T
    return mean + z


def make_linear_gaussian(
    seed: int,
    n_state: int = 5,
    n_obs: int = 3,
    n_times: int = 8,
    missing: tuple[tuple[int, int], ...] = (),
) -> LinearGaussian:
    """A random linear-Gaussian smoothing problem with an invertible, mildly unstable ``A``."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n_state, n_state)))
    A = q * rng.uniform(0.8, 1.1, n_state)[None, :] + 0.1 * rng.standard_normal((n_state,) * 2)
    H = rng.standard_normal((n_obs, n_state)) / np.sqrt(n_state)
    r = rng.uniform(0.3, 1.0, n_obs)
    m0 = rng.standard_normal(n_state)
    l0 = rng.standard_normal((n_state, n_state))
    P0 = l0 @ l0.T / n_state + 0.5 * np.eye(n_state)
    x = m0 + np.linalg.cholesky(P0) @ rng.standard_normal(n_state)
    truth, obs = [], []
    for _ in range(n_times):
        x = A @ x
        truth.append(x)
        obs.append(H @ x + np.sqrt(r) * rng.standard_normal(n_obs))
    obs = np.array(obs)
    for k, i in missing:
        obs[k, i] = np.nan
    return LinearGaussian(A, H, r, m0, P0, obs, np.array(truth))


@dataclasses.dataclass(frozen=True)
class NumpyKalman:
    forecast_mean: np.ndarray
    forecast_cov: np.ndarray
    mean: np.ndarray
    cov: np.ndarray


def kalman_filter(problem: LinearGaussian, n_times: int | None = None) -> NumpyKalman:
    """The Kalman filter (dense float64, NaN observations skipped) on the first `n_times` rows."""
    ys = problem.observations if n_times is None else problem.observations[:n_times]
    m, P = problem.m0.copy(), problem.P0.copy()
    out = {"mf": [], "Pf": [], "ma": [], "Pa": []}
    for y in ys:
        m, P = problem.A @ m, problem.A @ P @ problem.A.T
        out["mf"].append(m)
        out["Pf"].append(P)
        keep = ~np.isnan(y)
        H, R = problem.H[keep], np.diag(problem.r[keep])
        if keep.any():
            S = H @ P @ H.T + R
            K = np.linalg.solve(S, H @ P).T
            m = m + K @ (y[keep] - H @ m)
            P = P - K @ H @ P
            P = 0.5 * (P + P.T)
        out["ma"].append(m)
        out["Pa"].append(P)
    return NumpyKalman(*(np.array(out[k]) for k in ("mf", "Pf", "ma", "Pa")))


def rts(problem: LinearGaussian, n_times: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Rauch–Tung–Striebel smoother (means (T, N_x), covariances (T, N_x, N_x))."""
    kf = kalman_filter(problem, n_times)
    ms, Ps = kf.mean.copy(), kf.cov.copy()
    for k in range(ms.shape[0] - 2, -1, -1):
        G = kf.cov[k] @ problem.A.T @ np.linalg.inv(kf.forecast_cov[k + 1])
        ms[k] = kf.mean[k] + G @ (ms[k + 1] - kf.forecast_mean[k + 1])
        Ps[k] = kf.cov[k] + G @ (Ps[k + 1] - kf.forecast_cov[k + 1]) @ G.T
    return ms, Ps


def fixed_lag(problem: LinearGaussian, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-lag smoother: row ``j`` is the RTS of the problem truncated after ``j + lag``."""
    n_times = problem.observations.shape[0]
    means, covs = [], []
    for j in range(n_times):
        ms, Ps = rts(problem, min(j + lag, n_times - 1) + 1)
        means.append(ms[j])
        covs.append(Ps[j])
    return np.array(means), np.array(covs)


def sample_moments(ensembles) -> tuple[np.ndarray, np.ndarray]:
    """Sample means (T, N_x) and Bessel-corrected covariances (T, N_x, N_x) of (T, N_e, N_x)."""
    e = np.asarray(ensembles, np.float64)
    mean = e.mean(axis=1)
    a = e - mean[:, None, :]
    return mean, np.einsum("tei,tej->tij", a, a) / (e.shape[1] - 1)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
