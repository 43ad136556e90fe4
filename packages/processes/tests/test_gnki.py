"""GNKI: m_post is the fixed point (exactly, for a linear model), the stochastic chain's
stationary law, and the J > N_p requirement."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import GNKI, FixedScheduler


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


@pytest.mark.parametrize("correlated", [False, True])
def test_deterministic_gnki_maps_every_member_onto_the_posterior_mean_at_dt_one(correlated):
    # The ensemble Jacobian is exact for a linear model, so one Gauss-Newton step lands on the
    # minimiser of the regularised misfit: m_post (float64 identity, 1e-9).
    problem = helpers.linear_problem(40, correlated_noise=correlated)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(0), 8))
    gnki = GNKI(problem.m0, problem.C0, stochastic=False)
    state = gnki.init(x0, problem.y, jnp.asarray(problem.gamma))
    state = gnki.update(state, problem.forward(state.ensemble))
    np.testing.assert_allclose(state.ensemble, np.broadcast_to(problem.m_post, x0.shape), atol=1e-9)


def test_deterministic_gnki_contracts_geometrically_to_its_fixed_point():
    # theta_n - m_post = (1 - dt)^n (theta_0 - m_post) exactly for a linear model.
    problem = helpers.linear_problem(41)
    x0 = problem.prior_samples(np.random.default_rng(1), 6)
    gnki = GNKI(problem.m0, problem.C0, stochastic=False, scheduler=FixedScheduler(0.5))
    state = gnki.init(jnp.asarray(x0), problem.y, helpers.noise_variances(problem))
    state = helpers.run(gnki, state, problem.forward, 10)
    expected = problem.m_post + 0.5**10 * (x0 - problem.m_post)
    np.testing.assert_allclose(state.ensemble, expected, atol=1e-9)


def test_stochastic_gnki_samples_its_stationary_law():
    # With dt = 1 each member becomes m_j + K (y_j - G m_j), independent of its past:
    # N(m_post, 2 C_post) (the chain's law N(m_post, C_post / (1 - dt/2)) at dt = 1).
    problem = helpers.linear_problem(42)
    n = 20000
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(2), n))
    gnki = GNKI(problem.m0, problem.C0)
    state = gnki.init(x0, problem.y, helpers.noise_variances(problem), key=jax.random.key(0))
    state = helpers.scan_run(gnki, state, problem.forward, 2)
    mean, cov = helpers.sample_mean_cov(state.ensemble)
    target = 2.0 * problem.C_post
    # 5 standard errors of the mean; covariance sampling error sqrt(2/J) = 1%, bound 5%.
    assert np.all(np.abs(mean - problem.m_post) < 5 * np.sqrt(np.diag(target) / n))
    np.testing.assert_allclose(np.diag(cov), np.diag(target), rtol=0.05)


def test_gnki_needs_more_members_than_parameters():
    problem = helpers.linear_problem(43, n_params=5)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(3), 5))
    gnki = GNKI(problem.m0, problem.C0)
    with pytest.raises(ValueError, match="GNKI needs more ensemble members than parameters"):
        gnki.init(x0, problem.y, 0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        gnki.init(jnp.concatenate([x0, x0 + 1.0]), problem.y, 0.1)
