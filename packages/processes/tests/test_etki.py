"""ETKI: the exact Kalman posterior of the initial sample, exact tempering, the imposed prior,
and precision."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import block_diag

from filterax.processes import ETKI, DataMisfitController, FixedScheduler


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

# Algebraic identity: 1e-9 in float64 (round-off ~1e-14 times the conditioning of the
# (N_e x N_e) transform); float32 round-off ~1e-7 times the same: 1e-3.
TOL = {jnp.float64: 1e-9, jnp.float32: 1e-3}


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("correlated", [False, True])
def test_etki_reproduces_the_kalman_posterior_of_the_initial_sample(dtype, correlated):
    problem = helpers.linear_problem(20, n_params=4, n_obs=7, correlated_noise=correlated)
    x0 = problem.prior_samples(np.random.default_rng(0), 12)
    etki = ETKI(scheduler=FixedScheduler(1.0))
    noise = jnp.asarray(problem.gamma if correlated else np.diag(problem.gamma), dtype)
    state = etki.init(jnp.asarray(x0, dtype), jnp.asarray(problem.y, dtype), noise)
    state = etki.update(state, problem.forward(etki.particles(state)))
    mean, cov = helpers.sample_mean_cov(x0)
    ref_mean, ref_cov = helpers.kalman_posterior(mean, cov, problem.G, problem.gamma, problem.y)
    np.testing.assert_allclose(etki.mean(state), ref_mean, atol=TOL[dtype])
    np.testing.assert_allclose(etki.covariance(state), ref_cov, atol=TOL[dtype])


def test_etki_tempering_is_exact():
    # Square-root updates temper exactly: four steps of dt = 1/4 equal one step of dt = 1.
    problem = helpers.linear_problem(21)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(1), 10))
    one = ETKI(scheduler=FixedScheduler(1.0))
    quarter = ETKI(scheduler=FixedScheduler(0.25))
    a = one.update(one.init(x0, problem.y, 0.1), problem.forward(x0))
    b = helpers.run(quarter, quarter.init(x0, problem.y, 0.1), problem.forward, 4)
    np.testing.assert_allclose(quarter.mean(b), one.mean(a), atol=1e-10)
    np.testing.assert_allclose(quarter.covariance(b), one.covariance(a), atol=1e-10)


def test_etki_with_data_misfit_controller_ends_at_the_posterior_of_the_sample():
    # Adaptive steps summing to exactly 1 give the same exact posterior (linear model).
    problem = helpers.linear_problem(22)
    x0 = problem.prior_samples(np.random.default_rng(2), 10)
    etki = ETKI(scheduler=DataMisfitController())
    state = helpers.scan_run(etki, etki.init(jnp.asarray(x0), problem.y, 0.1), problem.forward, 30)
    assert float(state.time) == 1.0 and bool(state.converged) and int(state.iteration) == 30
    mean, cov = helpers.sample_mean_cov(x0)
    gamma = 0.1 * np.eye(problem.n_obs)
    ref_mean, ref_cov = helpers.kalman_posterior(mean, cov, problem.G, gamma, problem.y)
    np.testing.assert_allclose(etki.mean(state), ref_mean, atol=1e-9)
    np.testing.assert_allclose(etki.covariance(state), ref_cov, atol=1e-9)


def test_etki_with_prior_is_the_kalman_update_of_the_augmented_system():
    problem = helpers.linear_problem(23)
    x0 = problem.prior_samples(np.random.default_rng(3), 15)
    etki = ETKI(scheduler=FixedScheduler(1.0), prior_mean=problem.m0, prior_cov=problem.C0)
    state = etki.init(jnp.asarray(x0), problem.y, helpers.noise_variances(problem))
    state = etki.update(state, problem.forward(state.ensemble))
    mean, cov = helpers.sample_mean_cov(x0)
    g_aug = np.vstack([problem.G, np.eye(problem.n_params)])
    gamma_aug = block_diag(problem.gamma, problem.C0)
    y_aug = np.concatenate([problem.y, problem.m0])
    ref_mean, ref_cov = helpers.kalman_posterior(mean, cov, g_aug, gamma_aug, y_aug)
    np.testing.assert_allclose(etki.mean(state), ref_mean, atol=1e-9)
    np.testing.assert_allclose(etki.covariance(state), ref_cov, atol=1e-9)


def test_etki_needs_no_key_and_is_deterministic():
    problem = helpers.linear_problem(24)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(4), 8))
    etki = ETKI(scheduler=FixedScheduler(0.5))
    a = helpers.run(etki, etki.init(x0, problem.y, 0.1), problem.forward, 2)
    b = helpers.run(etki, etki.init(x0, problem.y, 0.1, key=jax.random.key(9)), problem.forward, 2)
    np.testing.assert_array_equal(a.ensemble, b.ensemble)


def test_step_size_is_a_dynamic_field_that_vmap_can_sweep():
    # A vmapped sweep over dt equals the individual runs (the scheduler's dt is not static).
    problem = helpers.linear_problem(25)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(5), 8))

    def run(dt):
        etki = ETKI(scheduler=FixedScheduler(dt))
        return helpers.scan_run(etki, etki.init(x0, problem.y, 0.1), problem.forward, 2).ensemble

    dts = jnp.array([0.1, 0.5, 1.0])
    swept = jax.vmap(run)(dts)
    for i, dt in enumerate([0.1, 0.5, 1.0]):
        np.testing.assert_allclose(swept[i], run(dt), atol=1e-12)


def test_etki_prior_arguments_come_in_pairs():
    with pytest.raises(ValueError, match="both"):
        ETKI(prior_mean=jnp.zeros(2))
