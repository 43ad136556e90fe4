"""EKI: exact sample-Kalman identities (deterministic), finite-time posterior sampling
(stochastic), localisation, inflation, transformations (jit, vmap, float32) and bad input."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.processes import (
    EKI,
    ETKI,
    SEC,
    AdditiveInflation,
    FixedScheduler,
    MultiplicativeInflation,
    SECFisher,
    TaperLocalizer,
)


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

# float64 algebraic identities on O(1) data hold to ~1e-14; 1e-9 leaves room for the
# conditioning of the small systems. float32: ~1e-7 relative round-off times a condition
# number of ~100 for these problems.
TOL = {jnp.float64: 1e-9, jnp.float32: 1e-3}


def _noise(problem, kind):
    """Gamma in one of the structures, with its dense matrix for the numpy reference."""
    if kind == "diagonal":
        return helpers.noise_variances(problem), problem.gamma
    if kind == "dense":
        return jnp.asarray(problem.gamma), problem.gamma
    rng = np.random.default_rng(7)
    u = 0.1 * rng.standard_normal((problem.n_obs, 2))
    d = np.diag(problem.gamma)
    return fxp.low_rank_noise(jnp.asarray(u), jnp.asarray(d)), np.diag(d) + u @ u.T


@pytest.mark.parametrize("kind", ["diagonal", "dense", "low_rank"])
@pytest.mark.parametrize("n_obs", [6, 40])
def test_deterministic_eki_is_the_sample_kalman_posterior_at_dt_one(kind, n_obs):
    # One square-root EKI step at dt = 1 on a linear model is the Kalman update of the initial
    # ensemble's mean and covariance, for every noise structure and for N_y > N_e.
    problem = helpers.linear_problem(1, n_params=4, n_obs=n_obs, correlated_noise=kind == "dense")
    noise, gamma = _noise(problem, kind)
    x0 = problem.prior_samples(np.random.default_rng(0), 15)
    eki = EKI(stochastic=False, scheduler=FixedScheduler(1.0))
    state = eki.init(jnp.asarray(x0), problem.y, noise)
    state = eki.update(state, problem.forward(eki.particles(state)))
    mean, cov = helpers.sample_mean_cov(x0)
    ref_mean, ref_cov = helpers.kalman_posterior(mean, cov, problem.G, gamma, problem.y)
    np.testing.assert_allclose(eki.mean(state), ref_mean, atol=1e-9)
    np.testing.assert_allclose(eki.covariance(state), ref_cov, atol=1e-9)
    assert float(state.time) == 1.0 and int(state.iteration) == 1


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_deterministic_eki_in_both_precisions(dtype):
    problem = helpers.linear_problem(2)
    x0 = problem.prior_samples(np.random.default_rng(1), 12)
    eki = EKI(stochastic=False, scheduler=FixedScheduler(1.0))
    state = eki.init(jnp.asarray(x0, dtype), jnp.asarray(problem.y, dtype), 0.1)
    state = eki.update(state, problem.forward(state.ensemble))
    assert state.ensemble.dtype == dtype and state.time.dtype == dtype
    mean, cov = helpers.sample_mean_cov(x0)
    gamma = 0.1 * np.eye(problem.n_obs)
    ref_mean, ref_cov = helpers.kalman_posterior(mean, cov, problem.G, gamma, problem.y)
    np.testing.assert_allclose(eki.mean(state), ref_mean, atol=TOL[dtype])
    np.testing.assert_allclose(eki.covariance(state), ref_cov, atol=TOL[dtype])


def test_stochastic_eki_mean_is_the_kalman_mean_in_expectation():
    # With many members the perturbed-observation mean increment is the Kalman increment of
    # the sample statistics up to Monte Carlo error (perturbations are not centred).
    problem = helpers.linear_problem(3)
    x0 = problem.prior_samples(np.random.default_rng(2), 20000)
    eki = EKI(scheduler=FixedScheduler(1.0))
    state = eki.init(
        jnp.asarray(x0), problem.y, helpers.noise_variances(problem), key=jax.random.key(0)
    )
    state = eki.update(state, problem.forward(state.ensemble))
    mean, cov = helpers.sample_mean_cov(x0)
    ref_mean, ref_cov = helpers.kalman_posterior(mean, cov, problem.G, problem.gamma, problem.y)
    # Standard error of the mean of 20000 posterior-spread perturbations: sqrt(diag/J);
    # 5 standard errors.
    se = np.sqrt(np.diag(ref_cov) / x0.shape[0])
    assert np.all(np.abs(np.asarray(eki.mean(state)) - ref_mean) < 5 * se)
    # Covariance: relative sampling error ~ sqrt(2 / J) = 1%; 6% allows the cross terms.
    np.testing.assert_allclose(np.diag(eki.covariance(state)), np.diag(ref_cov), rtol=0.06)


def test_finite_time_stochastic_eki_samples_the_posterior():
    # DataMisfitController steps summing to 1 temper the likelihood exactly (linear model): a
    # large ensemble at t = 1 matches the analytic posterior.
    problem = helpers.linear_problem(0)
    n_members = 4000
    x0 = problem.prior_samples(np.random.default_rng(3), n_members)
    eki = EKI()
    state = eki.init(
        jnp.asarray(x0), problem.y, helpers.noise_variances(problem), key=jax.random.key(1)
    )
    state = helpers.scan_run(eki, state, problem.forward, 15)
    assert float(state.time) == 1.0 and bool(state.converged)
    mean, cov = helpers.sample_mean_cov(state.ensemble)
    # Mean: z-scores against the posterior standard error sqrt(diag(C_post) / J); over seeds
    # they stay within +-2, 5 is a safe bound. Covariance: sampling error sqrt(2/J) ~ 2% plus
    # the prior sample's own error propagated; observed <= 4%, bound 10%.
    z = (mean - problem.m_post) / np.sqrt(np.diag(problem.C_post) / n_members)
    assert np.all(np.abs(z) < 5), z
    np.testing.assert_allclose(np.diag(cov), np.diag(problem.C_post), rtol=0.1)
    assert np.abs(cov - problem.C_post).max() < 0.1 * np.abs(problem.C_post).max()


def test_deterministic_eki_equals_etki():
    problem = helpers.linear_problem(4)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(4), 10))
    a, b = EKI(stochastic=False), ETKI()
    sa = helpers.run(a, a.init(x0, problem.y, 0.2), problem.forward, 4)
    sb = helpers.run(b, b.init(x0, problem.y, 0.2), problem.forward, 4)
    np.testing.assert_allclose(sa.ensemble, sb.ensemble, atol=1e-12)
    np.testing.assert_allclose(sa.time, sb.time, atol=1e-15)


def test_same_key_same_result_and_different_keys_differ():
    problem = helpers.linear_problem(5)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(5), 20))
    eki = EKI(scheduler=FixedScheduler(0.5))
    runs = [
        helpers.run(eki, eki.init(x0, problem.y, 0.1, key=jax.random.key(k)), problem.forward, 2)
        for k in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0].ensemble, runs[1].ensemble)
    assert not np.allclose(runs[0].ensemble, runs[2].ensemble)


def test_jit_and_vmap_over_keys_match_single_runs():
    problem = helpers.linear_problem(6)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(6), 16))
    eki = EKI(scheduler=FixedScheduler(0.5))

    def run(key):
        state = eki.init(x0, problem.y, 0.1, key=key)
        return helpers.scan_run(eki, state, problem.forward, 3).ensemble

    keys = jax.random.split(jax.random.key(3), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    eager = helpers.run(eki, eki.init(x0, problem.y, 0.1, key=keys[1]), problem.forward, 3)
    np.testing.assert_allclose(batched[1], eager.ensemble, atol=1e-12)
    assert np.all(np.isfinite(batched))


def test_updates_are_the_identity_after_the_scheduler_stops():
    # Regression guard: dt = 0 after termination must not produce NaN (Gamma / dt).
    problem = helpers.linear_problem(7)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(7), 30))
    eki = EKI()
    state = eki.init(x0, problem.y, 0.1, key=jax.random.key(0))
    state = helpers.scan_run(eki, state, problem.forward, 20)
    assert float(state.time) == 1.0 and bool(state.converged)
    before = state.ensemble
    after = helpers.run(eki, state, problem.forward, 3)
    np.testing.assert_array_equal(after.ensemble, before)
    assert float(after.dt) == 0.0 and float(after.time) == 1.0 and int(after.iteration) == 23


def test_ensemble_stays_finite_when_dt_is_zero_from_the_start():
    problem = helpers.linear_problem(8)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(8), 8))
    for process in (EKI(scheduler=FixedScheduler(0.0)), EKI(False, FixedScheduler(0.0))):
        state = process.init(x0, problem.y, 0.1, key=jax.random.key(0))
        state = process.update(state, problem.forward(state.ensemble))
        np.testing.assert_array_equal(state.ensemble, x0)


def test_taper_of_ones_and_sec_with_zero_exponent_are_no_localisation():
    problem = helpers.linear_problem(9, n_params=3, n_obs=5, correlated_noise=True)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(9), 12))
    gamma = jnp.asarray(problem.gamma)
    ref = EKI(scheduler=FixedScheduler(1.0))
    expected = ref.update(
        ref.init(x0, problem.y, gamma, key=jax.random.key(2)), problem.forward(x0)
    )
    for localizer in (TaperLocalizer(jnp.ones((3, 5))), SEC(alpha=0.0)):
        eki = EKI(scheduler=FixedScheduler(1.0), localizer=localizer)
        state = eki.update(
            eki.init(x0, problem.y, gamma, key=jax.random.key(2)), problem.forward(x0)
        )
        np.testing.assert_allclose(state.ensemble, expected.ensemble, atol=1e-10)


def test_localisation_cuts_the_cross_covariance():
    # A taper that zeroes the link between parameter 0 and every observation freezes it; the
    # stochastic update of the others still moves them.
    problem = helpers.linear_problem(10, n_params=3, n_obs=5)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(10), 12))
    taper = jnp.ones((3, 5)).at[0].set(0.0)
    eki = EKI(scheduler=FixedScheduler(1.0), localizer=TaperLocalizer(taper))
    state = eki.init(x0, problem.y, 0.1, key=jax.random.key(0))
    state = eki.update(state, problem.forward(x0))
    np.testing.assert_array_equal(state.ensemble[:, 0], x0[:, 0])
    assert np.all(np.abs(state.ensemble[:, 1:] - x0[:, 1:]) > 0)


def test_sec_weights_shrink_weak_correlations():
    corr = jnp.array([[0.9, 0.1, -0.5, 0.0]])
    np.testing.assert_allclose(SEC(alpha=1.0).weights(corr, 20), [[0.9, 0.1, 0.5, 0.0]])
    np.testing.assert_allclose(SEC(alpha=1.0, cutoff=0.05).weights(corr, 20), [[0.9, 0, 0.5, 0]])
    fisher = np.asarray(SECFisher().weights(corr, 20))
    # Q = r / sigma_r: strong correlations keep weight near 1, weak ones near 0.
    assert fisher[0, 0] > 0.9 and fisher[0, 1] < 0.3 and fisher[0, 3] == 0.0
    assert np.all((fisher >= 0) & (fisher <= 1))


def test_multiplicative_inflation_scales_the_covariance_by_one_over_one_minus_s_dt():
    problem = helpers.linear_problem(11)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(11), 15))
    plain = EKI(stochastic=False, scheduler=FixedScheduler(0.5))
    inflated = EKI(
        stochastic=False, scheduler=FixedScheduler(0.5), inflation=MultiplicativeInflation(1.0)
    )
    a = plain.update(plain.init(x0, problem.y, 0.1), problem.forward(x0))
    b = inflated.update(inflated.init(x0, problem.y, 0.1), problem.forward(x0))
    np.testing.assert_allclose(inflated.mean(b), plain.mean(a), atol=1e-12)
    np.testing.assert_allclose(inflated.covariance(b), plain.covariance(a) / (1 - 0.5), atol=1e-10)


def test_additive_inflation_adds_the_scaled_covariance():
    x = jnp.zeros((20000, 2))
    cov = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    out = AdditiveInflation(cov, s=0.5)(jax.random.key(0), x, 0.5)
    # s dt = 0.25 -> covariance 0.25 / 0.75 * cov; Monte Carlo error ~ sqrt(2/20000) = 1%.
    np.testing.assert_allclose(np.cov(np.asarray(out).T), cov / 3.0, atol=0.01)
    np.testing.assert_array_equal(AdditiveInflation(cov)(jax.random.key(0), x, 0.0), x)


def test_inflation_with_s_dt_at_least_one_raises():
    with pytest.raises(Exception, match="s \\* dt < 1"):
        MultiplicativeInflation(1.0)(jax.random.key(0), jnp.ones((3, 2)), 1.0)


def test_observation_override_equals_a_process_started_on_that_batch():
    problem = helpers.linear_problem(12, n_obs=8)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(12), 10))
    rows = np.arange(4)
    eki = EKI(stochastic=False, scheduler=FixedScheduler(1.0))
    full = eki.init(x0, problem.y, 0.1)
    batch = eki.update(full, problem.forward(x0)[:, rows], obs=problem.y[rows], obs_noise=0.1)
    direct = eki.init(x0, problem.y[rows], 0.1)
    direct = eki.update(direct, problem.forward(x0)[:, rows])
    np.testing.assert_allclose(batch.ensemble, direct.ensemble, atol=1e-12)
    np.testing.assert_array_equal(batch.obs, problem.y)  # the state keeps its own data


def test_misfits_are_half_the_whitened_squared_residuals():
    problem = helpers.linear_problem(13, correlated_noise=True)
    x0 = problem.prior_samples(np.random.default_rng(13), 5)
    eki = EKI(stochastic=False)
    state = eki.init(jnp.asarray(x0), problem.y, jnp.asarray(problem.gamma))
    g = x0 @ problem.G.T
    r = g - problem.y[None, :]
    expected = 0.5 * np.einsum("ij,ij->i", r, np.linalg.solve(problem.gamma, r.T).T)
    np.testing.assert_allclose(eki.misfits(state, jnp.asarray(g)), expected, rtol=1e-10)


def test_bad_input_raises_clear_errors():
    problem = helpers.linear_problem(14)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(14), 6))
    eki = EKI()
    with pytest.raises(ValueError, match="key"):
        eki.init(x0, problem.y, 0.1)
    state = eki.init(x0, problem.y, 0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="forward_evals must have shape"):
        eki.update(state, jnp.ones((5, problem.n_obs)))
    with pytest.raises(ValueError, match="obs"):
        eki.update(state, jnp.ones((6, problem.n_obs + 1)))
    with pytest.raises(ValueError, match="positive"):
        eki.init(x0, problem.y, jnp.zeros(problem.n_obs), key=jax.random.key(0))
    not_psd = np.eye(problem.n_obs)
    not_psd[0, 0] = -1.0
    with pytest.raises(ValueError, match="positive"):
        eki.init(x0, problem.y, jnp.asarray(not_psd), key=jax.random.key(0))
    with pytest.raises(ValueError, match="members"):
        eki.init(x0[:1], problem.y, 0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="failure_handler"):
        EKI(failure_handler="drop")
    with pytest.raises(ValueError, match="localis"):
        EKI(stochastic=False, localizer=SEC())
    with pytest.raises(ValueError, match="TaperLocalizer"):
        EKI(localizer=TaperLocalizer(jnp.ones((2, 2)))).init(
            x0, problem.y, 0.1, key=jax.random.key(0)
        )
