"""The darcy1d calibration problem uses the zoo's Darcy1D and its data are unchanged."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from filterax.bench import get_calibration_problem
from filterax.zoo import Darcy1D


def _previous_private_forward(theta):
    # The bench's private forward model before it moved to the zoo (verbatim numbers).
    n_grid, n_modes, n_obs = 128, 8, 25
    x = (np.arange(n_grid) + 0.5) / n_grid
    k = np.arange(1, n_modes + 1)
    lam = (math.pi**2 * k**2 + 3.0**2) ** (-2.0)
    lam /= lam[0]
    modes = jnp.asarray(np.sqrt(2.0 * lam)[:, None] * np.sin(math.pi * k[:, None] * x[None, :]))
    obs_index = np.linspace(4, n_grid - 6, n_obs).round().astype(int)
    h = 1.0 / n_grid
    kappa = jnp.exp(theta @ modes)
    diag = (kappa[:-1] + kappa[1:]) / h**2
    off = -kappa[1:-1] / h**2
    lower = jnp.concatenate([jnp.zeros(1, off.dtype), off])
    upper = jnp.concatenate([off, jnp.zeros(1, off.dtype)])
    u = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, jnp.ones((n_grid - 1, 1)))[:, 0]
    return u[obs_index]


def test_darcy1d_calibration_problem_data_are_unchanged_with_the_zoo_forward():
    # Bit-for-bit: the same arithmetic, now in filterax.zoo.Darcy1D.
    problem = get_calibration_problem("darcy1d")
    for seed in (0, 1):
        inst = problem.build(seed, True)
        assert isinstance(inst.forward, Darcy1D)
        rng = np.random.default_rng(seed)
        truth = rng.standard_normal(8)
        clean = np.asarray(_previous_private_forward(jnp.asarray(truth)))
        std = 0.02 * np.abs(clean).max()
        y = clean + std * rng.standard_normal(25)
        np.testing.assert_array_equal(inst.truth, truth)
        np.testing.assert_array_equal(inst.obs, y)
        np.testing.assert_array_equal(inst.noise_var, np.full(25, std**2))
