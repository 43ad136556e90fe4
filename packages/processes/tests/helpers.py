"""Linear-Gaussian inverse problems with analytic answers, shared by the processes tests.

For ``y = G theta + e``, ``e ~ N(0, Gamma)``, prior ``theta ~ N(m0, C0)``:

- posterior covariance ``C_post = (G^T Gamma^{-1} G + C0^{-1})^{-1}``,
- posterior mean (= MAP) ``m_post = C_post (G^T Gamma^{-1} y + C0^{-1} m0)``,
- least-squares (MLE) solution ``m_ls = (G^T Gamma^{-1} G)^{-1} G^T Gamma^{-1} y``.

Everything here is numpy float64: an independent reference for the JAX processes.

Import from a test module with ``load_helpers()`` below (copied into each module): pytest runs
with ``--import-mode=importlib``, so ``tests/`` is not on ``sys.path``; the module is registered
under a package-specific name so it cannot clash with another package's helpers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LinearProblem:
    """A linear-Gaussian inverse problem and its closed-form posterior / MLE."""

    G: np.ndarray  # (N_y, N_p)
    y: np.ndarray  # (N_y,)
    gamma: np.ndarray  # (N_y, N_y)
    m0: np.ndarray  # (N_p,)
    C0: np.ndarray  # (N_p, N_p)
    theta_true: np.ndarray  # (N_p,)

    @property
    def n_params(self) -> int:
        return self.G.shape[1]

    @property
    def n_obs(self) -> int:
        return self.G.shape[0]

    @property
    def C_post(self) -> np.ndarray:
        gi = np.linalg.inv(self.gamma)
        return np.linalg.inv(self.G.T @ gi @ self.G + np.linalg.inv(self.C0))

    @property
    def m_post(self) -> np.ndarray:
        gi = np.linalg.inv(self.gamma)
        rhs = self.G.T @ gi @ self.y + np.linalg.solve(self.C0, self.m0)
        return self.C_post @ rhs

    @property
    def m_ls(self) -> np.ndarray:
        gi = np.linalg.inv(self.gamma)
        return np.linalg.solve(self.G.T @ gi @ self.G, self.G.T @ gi @ self.y)

    @property
    def C_ls(self) -> np.ndarray:
        gi = np.linalg.inv(self.gamma)
        return np.linalg.inv(self.G.T @ gi @ self.G)

    def forward(self, particles):
        """``G theta`` for every row of an ``(N_e, N_p)`` array (JAX or numpy)."""
        return particles @ jnp.asarray(self.G, dtype=particles.dtype).T

    def prior_samples(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws from the prior, shape ``(n, N_p)``."""
        return rng.multivariate_normal(self.m0, self.C0, size=n)


def linear_problem(
    seed: int = 0,
    n_params: int = 3,
    n_obs: int = 6,
    noise_var: float = 0.1,
    prior_var: float = 1.0,
    correlated_noise: bool = False,
) -> LinearProblem:
    """A random well-conditioned linear problem with data drawn from a prior sample."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n_obs, n_params))
    if correlated_noise:
        q, _ = np.linalg.qr(rng.standard_normal((n_obs, n_obs)))
        gamma = noise_var * (q * np.linspace(0.5, 2.0, n_obs)) @ q.T
    else:
        gamma = noise_var * np.diag(np.linspace(0.5, 1.5, n_obs))
    m0 = 0.5 * rng.standard_normal(n_params)
    a = rng.standard_normal((n_params, n_params))
    C0 = prior_var * (0.5 * np.eye(n_params) + 0.5 * a @ a.T / n_params)
    theta = rng.multivariate_normal(m0, C0)
    y = G @ theta + rng.multivariate_normal(np.zeros(n_obs), gamma)
    return LinearProblem(G=G, y=y, gamma=gamma, m0=m0, C0=C0, theta_true=theta)


def kalman_posterior(
    mean: np.ndarray, cov: np.ndarray, G: np.ndarray, gamma: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The Kalman (conditioning) update of ``N(mean, cov)`` on ``y = G theta + N(0, gamma)``."""
    s = G @ cov @ G.T + gamma
    k = np.linalg.solve(s, G @ cov).T
    return mean + k @ (y - G @ mean), cov - k @ G @ cov


def sample_mean_cov(x) -> tuple[np.ndarray, np.ndarray]:
    """Bessel-corrected sample mean and covariance of an ``(N_e, N_p)`` ensemble."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1)


def noise_variances(problem: LinearProblem) -> jnp.ndarray:
    """The diagonal of ``Gamma`` (for problems built with diagonal noise)."""
    return jnp.asarray(np.diag(problem.gamma))


def run(process, state, forward, n_steps: int):
    """``n_steps`` updates in a Python loop (small tests) with ``forward(particles)``."""
    for _ in range(n_steps):
        state = process.update(state, forward(process.particles(state)))
    return state


def scan_run(process, state, forward, n_steps: int, *, keep: bool = False):
    """``n_steps`` updates inside one jitted ``lax.scan``; optionally stack the ensembles."""

    def body(carry, _):
        new = process.update(carry, forward(process.particles(carry)))
        return new, (new.ensemble if keep else None)

    @jax.jit
    def go(s):
        return jax.lax.scan(body, s, None, length=n_steps)

    final, stacked = go(state)
    return (final, stacked) if keep else final
