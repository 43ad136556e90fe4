"""EKS: with small steps and the ALDI correction it samples the posterior (Monte Carlo
tolerance); without the correction a small ensemble is under-dispersed; the stable step."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import EKS, FixedScheduler


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

N_MEMBERS = 20
DT = 0.01
N_STEPS = 8000
BURN_IN = 1000


def _time_averaged_stats(aldi: bool):
    problem = helpers.linear_problem(50)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(0), N_MEMBERS))
    eks = EKS(problem.m0, problem.C0, aldi=aldi, scheduler=FixedScheduler(DT))
    state = eks.init(x0, problem.y, helpers.noise_variances(problem), key=jax.random.key(0))
    _, ensembles = helpers.scan_run(eks, state, problem.forward, N_STEPS, keep=True)
    samples = np.asarray(ensembles[BURN_IN:]).reshape(-1, problem.n_params)
    return problem, samples.mean(axis=0), np.cov(samples.T)


def test_eks_with_aldi_samples_the_posterior():
    # 20 members x 70 time units (relaxation time ~1 by affine invariance) give ~1000
    # effectively independent draws: mean error ~0.03 sd, variance error ~5%; the O(dt) time
    # discretisation bias is ~1%. Over seeds the variance ratios stay within 0.88-1.09 at half
    # this run length; the bounds are 0.1 sd for the mean and 12% (average) / 20% (each) for
    # the variances.
    problem, mean, cov = _time_averaged_stats(aldi=True)
    sd = np.sqrt(np.diag(problem.C_post))
    assert np.all(np.abs(mean - problem.m_post) < 0.1 * sd)
    ratios = np.diag(cov) / np.diag(problem.C_post)
    assert abs(ratios.mean() - 1.0) < 0.12, ratios
    assert np.all(np.abs(ratios - 1.0) < 0.2), ratios
    assert np.abs(cov - problem.C_post).max() < 0.15 * np.abs(problem.C_post).max()


def test_eks_without_the_correction_is_under_dispersed():
    # The uncorrected finite ensemble shrinks by about (J - N_p - 1) / J = 0.8; the bound 0.9
    # separates it from the corrected sampler above.
    problem, _, cov = _time_averaged_stats(aldi=False)
    ratios = np.diag(cov) / np.diag(problem.C_post)
    assert ratios.mean() < 0.9, ratios


def test_eks_stable_scheduler_uses_the_norm_of_d():
    problem = helpers.linear_problem(51)
    x0 = problem.prior_samples(np.random.default_rng(1), 10)
    eks = EKS(problem.m0, problem.C0)  # default EKSStableScheduler(alpha=1, eps=1e-8)
    state = eks.init(jnp.asarray(x0), problem.y, jnp.asarray(problem.gamma), key=jax.random.key(0))
    g = x0 @ problem.G.T
    d = (g - g.mean(axis=0)) @ np.linalg.solve(problem.gamma, (g - problem.y).T) / x0.shape[0]
    state = eks.update(state, jnp.asarray(g))
    np.testing.assert_allclose(float(state.dt), 1.0 / (np.linalg.norm(d) + 1e-8), rtol=1e-10)


def test_eks_step_zero_is_the_identity():
    problem = helpers.linear_problem(52)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(2), 10))
    eks = EKS(problem.m0, problem.C0, scheduler=FixedScheduler(0.0))
    state = eks.init(x0, problem.y, 0.1, key=jax.random.key(0))
    np.testing.assert_array_equal(eks.update(state, problem.forward(x0)).ensemble, x0)


def test_eks_mean_field_drift_matches_a_numpy_rederivation():
    # One step against EKP's eks_update (ALDI) re-derived in numpy in its own form,
    # (I + dt C C0^{-1})^{-1}(...), with the 1/J-normalised covariance. The noise is zero-mean
    # with covariance 2 dt C: the means agree to Monte Carlo error and the covariance grows by
    # 2 dt C.
    problem = helpers.linear_problem(53)
    n = 4000
    x0 = problem.prior_samples(np.random.default_rng(3), n)
    dt = 0.05
    eks = EKS(problem.m0, problem.C0, scheduler=FixedScheduler(dt))
    state = eks.init(jnp.asarray(x0), problem.y, jnp.asarray(problem.gamma), key=jax.random.key(1))
    state = eks.update(state, problem.forward(state.ensemble))
    g = x0 @ problem.G.T
    c = np.cov(x0.T, ddof=0)
    d = (g - g.mean(axis=0)) @ np.linalg.solve(problem.gamma, (g - problem.y).T) / n
    u = x0.T  # EKP's column layout
    a = x0 - x0.mean(axis=0)
    rhs = (
        u
        - dt * a.T @ d
        + dt * (c @ np.linalg.solve(problem.C0, problem.m0))[:, None]
        + dt * (problem.n_params + 1) / n * a.T
    )
    implicit = np.linalg.solve(np.eye(problem.n_params) + dt * c @ np.linalg.inv(problem.C0), rhs)
    # Noise: mean of n draws of sqrt(2 dt) N(0, C): standard error sqrt(2 dt diag(C) / n);
    # 5 standard errors.
    se = np.sqrt(2 * dt * np.diag(c) / n)
    assert np.all(np.abs(np.asarray(eks.mean(state)) - implicit.mean(axis=1)) < 5 * se)
    # The spread added by the noise: Cov(new) = Cov(implicit) + 2 dt C up to sampling error.
    expected = np.cov(implicit, ddof=0) + 2 * dt * c
    np.testing.assert_allclose(np.cov(np.asarray(state.ensemble).T, ddof=0), expected, rtol=0.1)


def test_eks_needs_a_key():
    problem = helpers.linear_problem(54)
    eks = EKS(problem.m0, problem.C0)
    with pytest.raises(ValueError, match="key"):
        eks.init(jnp.asarray(problem.prior_samples(np.random.default_rng(4), 5)), problem.y, 0.1)
