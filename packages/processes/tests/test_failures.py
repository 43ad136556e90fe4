"""Failed members: detection, SampleSuccGauss re-sampling, the 'ignore' handler, and every
process staying finite (and statistically unchanged) when forward evaluations fail."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import (
    EKI,
    EKS,
    ETKI,
    GNKI,
    TEKI,
    UKI,
    FixedScheduler,
    SparseInversion,
    failed_members,
    n_failed,
    resample_failed,
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


def test_failed_members_are_rows_with_any_non_finite_entry():
    g = jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [0.0, jnp.inf], [3.0, -jnp.inf], [0.0, 0.0]])
    np.testing.assert_array_equal(failed_members(g), [False, True, True, True, False])
    assert int(n_failed(g)) == 3


def test_resample_failed_draws_from_the_successful_gaussian():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    good = rng.multivariate_normal([1.0, -2.0], cov, size=20000)
    x = np.concatenate([good, np.full((20000, 2), np.nan)])
    failed = np.arange(40000) >= 20000
    out = np.asarray(resample_failed(jax.random.key(0), jnp.asarray(x), jnp.asarray(failed)))
    np.testing.assert_array_equal(out[:20000], good)
    m, c = helpers.sample_mean_cov(good)
    rm, rc = helpers.sample_mean_cov(out[20000:])
    # 20000 draws: mean standard error <= 0.01, covariance relative error ~1%; 5 se / 5%.
    np.testing.assert_allclose(rm, m, atol=0.05)
    np.testing.assert_allclose(rc, c, rtol=0.05, atol=0.03)


def test_resample_failed_with_fewer_members_than_parameters():
    x = np.asarray(jax.random.normal(jax.random.key(0), (6, 10)))
    failed = np.arange(6) >= 4
    out = np.asarray(resample_failed(jax.random.key(1), jnp.asarray(x).at[4:].set(jnp.nan), failed))
    assert np.all(np.isfinite(out))
    # The draws live in the (rank-3) span of the 4 successful anomalies around their mean.
    mean = x[:4].mean(axis=0)
    basis = np.linalg.svd(x[:4] - mean[None, :], full_matrices=False)[2][:3]
    centred = out[4:] - mean[None, :]
    np.testing.assert_allclose(centred - centred @ basis.T @ basis, 0.0, atol=1e-10)


def _inject(forward, fraction, key, limit=None):
    """NaN rows for a random ``fraction`` of the members (only among the first ``limit``)."""

    def failing(particles, iteration):
        n = particles.shape[0]
        mask = jax.random.bernoulli(jax.random.fold_in(key, iteration), fraction, (n,))
        if limit is not None:
            mask = mask & (jnp.arange(n) < limit)
        return jnp.where(mask[:, None], jnp.nan, forward(particles))

    return failing


def test_eki_with_failures_matches_the_posterior_like_without():
    # 20% of the members fail at every iteration; SampleSuccGauss keeps the finite-time EKI a
    # posterior sampler: the same tolerances as the failure-free test in test_eki.py.
    problem = helpers.linear_problem(0)
    n_members = 4000
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(3), n_members))
    eki = EKI()
    forward = _inject(problem.forward, 0.2, jax.random.key(42))
    state = eki.init(x0, problem.y, helpers.noise_variances(problem), key=jax.random.key(1))

    def body(s, _):
        new = eki.update(s, forward(s.ensemble, s.iteration))
        return new, new.n_failed

    state, failures = jax.jit(lambda s: jax.lax.scan(body, s, None, length=15))(state)
    assert float(state.time) == 1.0
    # Binomial(4000, 0.2): 800 +- 25 failures per iteration.
    assert np.all((np.asarray(failures) > 650) & (np.asarray(failures) < 950))
    assert np.all(np.isfinite(state.ensemble))
    mean, cov = helpers.sample_mean_cov(state.ensemble)
    z = (mean - problem.m_post) / np.sqrt(np.diag(problem.C_post) / n_members)
    assert np.all(np.abs(z) < 5), z
    np.testing.assert_allclose(np.diag(cov), np.diag(problem.C_post), rtol=0.1)


@pytest.mark.parametrize("handler", ["ignore", "sample_succ_gauss"])
def test_etki_updates_the_successful_members_as_if_alone(handler):
    problem = helpers.linear_problem(70)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(0), 12))
    ok = np.ones(12, bool)
    ok[[2, 7, 9]] = False
    g = problem.forward(x0).at[~ok].set(jnp.nan)
    etki = ETKI(scheduler=FixedScheduler(1.0), failure_handler=handler)
    state = etki.update(etki.init(x0, problem.y, 0.1), g)
    alone = etki.update(etki.init(x0[ok], problem.y, 0.1), problem.forward(x0[ok]))
    np.testing.assert_allclose(state.ensemble[ok], alone.ensemble, atol=1e-10)
    assert int(state.n_failed) == 3
    if handler == "ignore":
        np.testing.assert_array_equal(state.ensemble[~ok], x0[~ok])
    else:
        assert np.all(np.isfinite(state.ensemble)) and not np.allclose(state.ensemble[~ok], x0[~ok])


def _processes(problem):
    return {
        "EKI": EKI(scheduler=FixedScheduler(0.5)),
        "EKI-det": EKI(stochastic=False, scheduler=FixedScheduler(0.5)),
        "ETKI": ETKI(scheduler=FixedScheduler(0.5)),
        "TEKI": TEKI(problem.m0, problem.C0),
        "GNKI": GNKI(problem.m0, problem.C0, scheduler=FixedScheduler(0.5)),
        "Sparse": SparseInversion(1.0),
        "EKS": EKS(problem.m0, problem.C0, scheduler=FixedScheduler(0.05)),
        "EKS-resample": EKS(problem.m0, problem.C0, failure_handler="sample_succ_gauss"),
    }


@pytest.mark.parametrize(
    "name", ["EKI", "EKI-det", "ETKI", "TEKI", "GNKI", "Sparse", "EKS", "EKS-resample"]
)
def test_every_process_stays_finite_when_up_to_half_the_members_fail(name):
    problem = helpers.linear_problem(71)
    process = _processes(problem)[name]
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(1), 16))
    state = process.init(x0, problem.y, 0.1, key=jax.random.key(0))
    # At most half fail (members 0..7 at random); the driver raises beyond that.
    forward = _inject(problem.forward, 0.7, jax.random.key(5), limit=8)
    counts = []
    for _ in range(5):
        state = process.update(state, forward(state.ensemble, state.iteration))
        counts.append(int(state.n_failed))
        assert np.all(np.isfinite(state.ensemble)), name
    assert np.all(np.isfinite(process.mean(state))) and max(counts) > 2


@pytest.mark.parametrize("bad", [0, 3])
def test_uki_drops_failed_sigma_points(bad):
    # A failed centre (index 0) or off-centre point: the analysis uses the re-weighted
    # survivors and stays finite; a symmetric linear problem stays close to the exact answer.
    problem = helpers.linear_problem(72)
    uki = UKI(problem.m0, problem.C0, impose_prior=True)
    state = uki.init(None, problem.y, helpers.noise_variances(problem))
    g = problem.forward(uki.particles(state)).at[bad].set(jnp.nan)
    state = uki.update(state, g)
    assert int(state.n_failed) == 1
    assert np.all(np.isfinite(uki.mean(state))) and np.all(np.isfinite(uki.covariance(state)))
    assert np.all(np.linalg.eigvalsh(np.asarray(uki.covariance(state))) > 0)
