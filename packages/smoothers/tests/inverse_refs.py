"""Independent numpy references for the inverse-problem smoothers (ESMDA, IES).

Nothing here imports filterax: the linear-Gaussian problems, their analytic posteriors, the
single ensemble-smoother (stochastic EnKF) update and the randomised-maximum-likelihood cost
are re-derived from the textbook formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearProblem:
    """``y = G theta + eta``, ``theta ~ N(m0, C0)``, ``eta ~ N(0, Gamma)``."""

    G: np.ndarray  # (N_y, N_p)
    m0: np.ndarray  # (N_p,)
    C0: np.ndarray  # (N_p, N_p)
    Gamma: np.ndarray  # (N_y, N_y), dense
    y: np.ndarray  # (N_y,)

    @property
    def n_params(self) -> int:
        return self.G.shape[1]

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """The analytic Gaussian posterior ``(m_post, Sigma_post)`` (information form)."""
        gi = np.linalg.inv(self.Gamma)
        precision = np.linalg.inv(self.C0) + self.G.T @ gi @ self.G
        cov = np.linalg.inv(precision)
        mean = cov @ (np.linalg.solve(self.C0, self.m0) + self.G.T @ gi @ self.y)
        return mean, 0.5 * (cov + cov.T)


def random_spd(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    a = rng.normal(size=(n, n))
    return scale * (a @ a.T / n + 0.5 * np.eye(n))


def linear_problem(
    seed: int, n_params: int = 6, n_obs: int = 12, noise: str = "diagonal"
) -> LinearProblem:
    """A random, well-conditioned linear-Gaussian inverse problem (O(1) entries)."""
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(n_obs, n_params)) / np.sqrt(n_params)
    m0 = rng.normal(size=n_params)
    C0 = random_spd(rng, n_params)
    if noise == "diagonal":
        Gamma = np.diag(rng.uniform(0.2, 0.6, size=n_obs))
    elif noise == "dense":
        Gamma = random_spd(rng, n_obs, scale=0.4)
    else:
        raise ValueError(noise)
    theta_true = m0 + np.linalg.cholesky(C0) @ rng.normal(size=n_params)
    y = G @ theta_true + np.linalg.cholesky(Gamma) @ rng.normal(size=n_obs)
    return LinearProblem(G, m0, C0, Gamma, y)


def exact_moment_ensemble(
    seed: int, mean: np.ndarray, cov: np.ndarray, n_ensemble: int
) -> np.ndarray:
    """``(N_e, N_p)`` members whose sample mean and (N_e - 1) covariance are exactly given."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_ensemble, mean.shape[0]))
    z = z - z.mean(axis=0)
    sample = z.T @ z / (n_ensemble - 1)
    vals, vecs = np.linalg.eigh(sample)
    z = z @ (vecs / np.sqrt(vals)) @ vecs.T  # sample covariance -> I
    return mean + z @ np.linalg.cholesky(cov).T


def sample_mean_cov(ensemble: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ensemble.mean(axis=0), np.cov(ensemble, rowvar=False, ddof=1)


def es_update(
    ensemble: np.ndarray,
    forward: np.ndarray,
    obs: np.ndarray,
    Gamma: np.ndarray,
    perturbations: np.ndarray,
    alpha: float = 1.0,
) -> np.ndarray:
    """The stochastic ES / EnKF update with sample covariances (explicit N_y x N_y inverse).

    ``theta_j + C^{theta G} (C^{GG} + alpha Gamma)^{-1} (y + sqrt(alpha) eps_j - G_j)``.
    """
    n = ensemble.shape[0]
    xa = ensemble - ensemble.mean(axis=0)
    ga = forward - forward.mean(axis=0)
    c_xg = xa.T @ ga / (n - 1)
    c_gg = ga.T @ ga / (n - 1)
    gain = c_xg @ np.linalg.inv(c_gg + alpha * Gamma)
    innovations = obs[None, :] + np.sqrt(alpha) * perturbations - forward
    return ensemble + innovations @ gain.T


def rml_costs(
    ensemble: np.ndarray,
    prior: np.ndarray,
    forward: np.ndarray,
    data: np.ndarray,
    C0: np.ndarray,
    Gamma: np.ndarray,
) -> np.ndarray:
    """Per member ``1/2 |theta_j - theta0_j|^2_{C0^-1} + 1/2 |G(theta_j) - d_j|^2_{Gamma^-1}``."""
    dx = ensemble - prior
    dg = forward - data
    prior_term = np.einsum("ij,ij->i", dx, np.linalg.solve(C0, dx.T).T)
    data_term = np.einsum("ij,ij->i", dg, np.linalg.solve(Gamma, dg.T).T)
    return 0.5 * (prior_term + data_term)


def data_misfit(forward: np.ndarray, obs: np.ndarray, Gamma: np.ndarray) -> float:
    """Mean over members of ``1/2 |G_j - y|^2_{Gamma^-1}``."""
    r = forward - obs
    return float(np.mean(0.5 * np.einsum("ij,ij->i", r, np.linalg.solve(Gamma, r.T).T)))
