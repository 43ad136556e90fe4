"""TEKI: the augmented-system Kalman identity and convergence to the MAP estimate."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import block_diag

from filterax.processes import TEKI, FixedScheduler, TaperLocalizer


def _load_helpers():
    # --import-mode=importlib keeps tests/ off sys.path; load helpers.py under a unique name.
    name = "filterax_processes_tests_helpers"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("helpers.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = _load_helpers()


def _augmented(problem):
    g = np.vstack([problem.G, np.eye(problem.n_params)])
    return g, block_diag(problem.gamma, problem.C0), np.concatenate([problem.y, problem.m0])


def test_n_deterministic_teki_steps_are_one_kalman_update_with_the_data_counted_n_times():
    # Square-root TEKI at dt = 1, n times = conditioning the sample prior on the augmented data
    # with noise Gamma~ / n (float64 identity, 1e-9).
    problem = helpers.linear_problem(30)
    x0 = problem.prior_samples(np.random.default_rng(0), 12)
    teki = TEKI(problem.m0, problem.C0, stochastic=False)
    state = teki.init(jnp.asarray(x0), problem.y, helpers.noise_variances(problem))
    state = helpers.run(teki, state, problem.forward, 5)
    g, gamma, y = _augmented(problem)
    mean, cov = helpers.sample_mean_cov(x0)
    ref_mean, ref_cov = helpers.kalman_posterior(mean, cov, g, gamma / 5, y)
    np.testing.assert_allclose(teki.mean(state), ref_mean, atol=1e-9)
    np.testing.assert_allclose(teki.covariance(state), ref_cov, atol=1e-9)


def test_deterministic_teki_converges_to_the_map():
    # dt = 100 for 100 steps counts the augmented data 1e4 times: the initial sample's pull is
    # 1e-4 of the data's, so the mean sits within ~1e-4 |mean0 - MAP| of the MAP.
    problem = helpers.linear_problem(31)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(1), 12))
    teki = TEKI(problem.m0, problem.C0, stochastic=False, scheduler=FixedScheduler(100.0))
    state = teki.init(x0, problem.y, helpers.noise_variances(problem))
    state = helpers.scan_run(teki, state, problem.forward, 100)
    start = np.abs(np.asarray(x0.mean(axis=0)) - problem.m_post).max()
    assert np.abs(np.asarray(teki.mean(state)) - problem.m_post).max() < 1e-3 * start


def test_stochastic_teki_converges_to_the_map():
    # Perturbed observations keep the mean fluctuating at the scale of the collapsing spread;
    # after 500 unit steps with 100 members it is within 5% of a posterior standard deviation
    # (observed <= 1% over seeds).
    problem = helpers.linear_problem(30)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(2), 100))
    teki = TEKI(problem.m0, problem.C0)
    state = teki.init(x0, problem.y, helpers.noise_variances(problem), key=jax.random.key(2))
    state = helpers.scan_run(teki, state, problem.forward, 500)
    sd = np.sqrt(np.diag(problem.C_post)).min()
    assert np.abs(np.asarray(teki.mean(state)) - problem.m_post).max() < 0.05 * sd
    assert np.all(np.isfinite(state.ensemble))


def test_teki_with_localisation_runs_and_respects_the_taper():
    problem = helpers.linear_problem(32, n_params=3, n_obs=4)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(3), 20))
    taper = TaperLocalizer(jnp.ones((3, 4)))
    a = TEKI(problem.m0, problem.C0, localizer=taper)
    b = TEKI(problem.m0, problem.C0)
    sa = a.update(a.init(x0, problem.y, 0.1, key=jax.random.key(0)), problem.forward(x0))
    sb = b.update(b.init(x0, problem.y, 0.1, key=jax.random.key(0)), problem.forward(x0))
    np.testing.assert_allclose(sa.ensemble, sb.ensemble, atol=1e-10)


def test_teki_prior_must_match_the_parameters():
    problem = helpers.linear_problem(33)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(4), 8))
    teki = TEKI(jnp.zeros(problem.n_params + 1), 1.0)
    with pytest.raises(ValueError, match="prior"):
        teki.init(x0, problem.y, 0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="non-negative|positive"):
        TEKI(jnp.zeros(2), jnp.array([1.0, -1.0]))
