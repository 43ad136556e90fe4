"""UKI and sigma points: the unscented transform is exact for affine maps; with the imposed
prior UKI reaches the exact posterior at dt = 1; without it, the least-squares solution."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import UKI, FixedScheduler, sigma_points


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


@pytest.mark.parametrize("n", [2, 7])
@pytest.mark.parametrize("modified", [False, True])
def test_sigma_points_reproduce_mean_and_covariance_through_affine_maps(n, modified):
    rng = np.random.default_rng(n)
    mean = rng.standard_normal(n)
    a = rng.standard_normal((n, n))
    cov = a @ a.T + 0.1 * np.eye(n)
    points, wm, wc = sigma_points(jnp.asarray(mean), jnp.asarray(cov), modified=modified)
    assert points.shape == (2 * n + 1, n)
    np.testing.assert_allclose(wm.sum(), 1.0, atol=1e-12)
    # Off-centre weights reconstruct the covariance around the centre; the centre sits at the
    # mean, so its covariance weight never contributes.
    m = np.asarray(wm) @ np.asarray(points)
    np.testing.assert_allclose(m, mean, atol=1e-12)
    dev = np.asarray(points) - mean
    np.testing.assert_allclose((np.asarray(wc)[:, None] * dev).T @ dev, cov, atol=1e-10)
    # An affine map is propagated exactly.
    b = rng.standard_normal((3, n))
    y = np.asarray(points) @ b.T
    np.testing.assert_allclose(np.asarray(wm) @ y, b @ mean, atol=1e-10)


def test_sigma_point_parameters_follow_huang_schneider_stuart():
    # alpha = min(sqrt(4/p), 1), lambda = alpha^2 p - p: p + lambda = min(4, p).
    for n, spread in ((2, 2.0), (9, 4.0)):
        points, wm, wc = sigma_points(jnp.zeros(n), jnp.eye(n))
        np.testing.assert_allclose(points[1, 0], np.sqrt(spread), atol=1e-12)
        np.testing.assert_allclose(wc[1], 1 / (2 * spread), atol=1e-12)


def test_sigma_points_of_a_singular_covariance_stay_finite():
    cov = jnp.array([[1.0, 1.0], [1.0, 1.0]])
    points, wm, wc = sigma_points(jnp.zeros(2), cov)
    assert np.all(np.isfinite(points))
    dev = np.asarray(points)
    np.testing.assert_allclose((np.asarray(wc)[:, None] * dev).T @ dev, cov, atol=1e-10)


@pytest.mark.parametrize("correlated", [False, True])
def test_uki_with_imposed_prior_reaches_the_exact_posterior_at_dt_one(correlated):
    # The documented convention (Sigma_nu = 2 diag(Gamma, C0), C^ = 2 C_n at dt = 1) has the
    # exact posterior as its fixed point, reached at rate 1/2: 60 iterations -> 1e-18.
    problem = helpers.linear_problem(60, n_params=4, n_obs=5, correlated_noise=correlated)
    uki = UKI(problem.m0, problem.C0, impose_prior=True)
    state = uki.init(None, problem.y, jnp.asarray(problem.gamma))
    state = helpers.scan_run(uki, state, problem.forward, 60)
    np.testing.assert_allclose(uki.mean(state), problem.m_post, atol=1e-9)
    np.testing.assert_allclose(uki.covariance(state), problem.C_post, atol=1e-9)


def test_uki_with_imposed_prior_and_smaller_steps_inflates_by_two_over_one_plus_dt():
    # The documented dt-dependence of the fixed point: C = C_post * 2 / (1 + dt).
    problem = helpers.linear_problem(61)
    uki = UKI(problem.m0, problem.C0, impose_prior=True, scheduler=FixedScheduler(0.5))
    state = uki.init(None, problem.y, helpers.noise_variances(problem))
    state = helpers.scan_run(uki, state, problem.forward, 150)
    np.testing.assert_allclose(uki.mean(state), problem.m_post, atol=1e-9)
    np.testing.assert_allclose(uki.covariance(state), problem.C_post * 2 / 1.5, atol=1e-9)


def test_uki_without_prior_converges_to_the_least_squares_solution():
    problem = helpers.linear_problem(62, n_params=3, n_obs=8)
    uki = UKI(problem.m0, problem.C0)
    state = uki.init(None, problem.y, helpers.noise_variances(problem))
    state = helpers.scan_run(uki, state, problem.forward, 300)
    np.testing.assert_allclose(uki.mean(state), problem.m_ls, atol=1e-8)


def test_uki_without_prior_refreshing_sigma_omega_recovers_the_mle_covariance():
    # update_freq = 1: C^{-1} = C^{-1}/2 + G^T Gamma^{-1} G / 2 at dt = 1 -> (G^T Gamma^-1 G)^-1.
    problem = helpers.linear_problem(63, n_params=3, n_obs=8)
    uki = UKI(problem.m0, problem.C0, update_freq=1)
    state = uki.init(None, problem.y, helpers.noise_variances(problem))
    state = helpers.scan_run(uki, state, problem.forward, 80)
    np.testing.assert_allclose(uki.mean(state), problem.m_ls, atol=1e-9)
    np.testing.assert_allclose(uki.covariance(state), problem.C_ls, atol=1e-9)


def test_uki_particles_are_the_sigma_points_of_the_prediction():
    problem = helpers.linear_problem(64)
    uki = UKI(problem.m0, problem.C0)
    state = uki.init(None, problem.y, 0.1)
    points, _, _ = sigma_points(jnp.asarray(problem.m0), jnp.asarray(problem.C0), modified=True)
    np.testing.assert_allclose(uki.particles(state), points, atol=1e-12)
    state = uki.update(state, problem.forward(uki.particles(state)))
    # Prediction with alpha_reg = 1 and Sigma_omega = C0: N(m_1, C_1 + dt C0).
    expected, _, _ = sigma_points(uki.mean(state), uki.covariance(state) + jnp.asarray(problem.C0))
    np.testing.assert_allclose(uki.particles(state), expected, atol=1e-12)


def test_uki_regularisation_pulls_toward_the_prior_mean():
    problem = helpers.linear_problem(65)
    plain = UKI(problem.m0, problem.C0)
    shrunk = UKI(problem.m0, problem.C0, alpha_reg=0.5)
    a = helpers.scan_run(plain, plain.init(None, problem.y, 0.1), problem.forward, 50)
    b = helpers.scan_run(shrunk, shrunk.init(None, problem.y, 0.1), problem.forward, 50)
    assert np.linalg.norm(shrunk.mean(b) - problem.m0) < np.linalg.norm(plain.mean(a) - problem.m0)


def test_uki_float32_and_jit():
    problem = helpers.linear_problem(66)
    m0 = jnp.asarray(problem.m0, jnp.float32)
    uki = UKI(m0, jnp.asarray(problem.C0, jnp.float32), impose_prior=True)
    state = uki.init(None, jnp.asarray(problem.y, jnp.float32), 0.1)
    state = helpers.scan_run(uki, state, problem.forward, 40)
    assert state.ensemble.dtype == jnp.float32
    c_post = np.linalg.inv(problem.G.T @ problem.G / 0.1 + np.linalg.inv(problem.C0))
    # float32 round-off (1e-7) times the conditioning of the small systems: 1e-4.
    np.testing.assert_allclose(uki.covariance(state), c_post, atol=1e-4)


def test_uki_bad_input():
    with pytest.raises(ValueError, match="alpha_reg"):
        UKI(jnp.zeros(2), 1.0, alpha_reg=1.5)
    uki = UKI(jnp.zeros(2), 1.0)
    # (the annotation check of the test run, or UKI's own TypeError, both name the argument)
    with pytest.raises(TypeError, match="ensemble_or_prior"):
        uki.init(jnp.zeros((5, 2)), jnp.ones(3), 0.1)
    with pytest.raises(ValueError, match="shape"):
        uki.init((jnp.zeros(3), jnp.eye(3)), jnp.ones(3), 0.1)
    state = uki.init(None, jnp.ones(3), 0.1)
    with pytest.raises(ValueError, match="forward_evals"):
        uki.update(state, jnp.ones((4, 3)))
    assert jax.tree.structure(state) == jax.tree.structure(uki.update(state, jnp.ones((5, 3))))
