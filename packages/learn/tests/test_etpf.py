"""ETPF against numpy importance weights, scipy's LP transform and the Kalman filter."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.learn import ETPF, member_log_likelihoods

# A linear-Gaussian analysis: prior N(M0, P0), y = H x + N(0, R).
M0 = np.array([0.5, -1.0, 0.2])
P0 = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.2], [0.0, 0.2, 0.5]])
H = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
R_DIAG = np.array([0.5, 0.8])
Y = np.array([1.2, -0.4])


def _kalman(m=M0, p=P0, h=H, r=R_DIAG, y=Y):
    s = h @ p @ h.T + np.diag(r)
    k = p @ h.T @ np.linalg.inv(s)
    log_ev = scipy.stats.multivariate_normal(h @ m, s).logpdf(y)
    return m + k @ (y - h @ m), p - k @ h @ p, log_ev


def _np_log_lik(x, y=Y, h=H, r=R_DIAG):
    keep = ~np.isnan(y)
    dist = scipy.stats.multivariate_normal(np.zeros(keep.sum()), np.diag(r[keep]))
    return dist.logpdf(y[keep][None, :] - x @ h[keep].T)


@eqx.filter_jit
def _analyse(filt, x, y, h=H, r=R_DIAG):
    return filt.analysis(None, x, y, h, r)


def _prior(key, n):
    chol = jnp.asarray(np.linalg.cholesky(P0).T)
    return jnp.asarray(M0)[None, :] + jax.random.normal(key, (n, 3)) @ chol


def test_member_log_likelihoods_match_scipy_with_missing_entries():
    x = np.asarray(_prior(jax.random.key(0), 7))
    y = np.array([np.nan, -0.4])
    log_lik = jax.jit(lambda x, y: member_log_likelihoods(ff.prepare_analysis(x, y, H, R_DIAG)))
    np.testing.assert_allclose(log_lik(x, y), _np_log_lik(x, y), rtol=1e-12)


def test_etpf_mean_is_the_importance_mean_and_the_evidence_is_the_particle_estimate():
    x = np.asarray(_prior(jax.random.key(1), 40))
    y = np.array([1.2, np.nan])  # the second observation missing
    out = _analyse(ETPF(epsilon=0.03, n_iter=300), x, y)
    ll = _np_log_lik(x, y)
    w = np.exp(ll - ll.max())
    w /= w.sum()
    # P 1 = w holds to round-off, so the mean is the importance mean exactly (any epsilon)
    np.testing.assert_allclose(np.mean(out.particles, axis=0), w @ x, atol=1e-13)
    np.testing.assert_allclose(np.exp(out.info.log_weights), w, rtol=1e-10)
    log_ev = np.log(np.mean(np.exp(ll - ll.max()))) + ll.max()
    np.testing.assert_allclose(out.log_likelihood, log_ev, rtol=1e-12)
    assert float(out.info.marginal_error) < 1e-6  # the Sinkhorn iteration converged


def test_etpf_small_epsilon_is_reichs_lp_transform():
    from scipy.optimize import linprog

    x = np.asarray(_prior(jax.random.key(2), 8))
    out = _analyse(ETPF(epsilon=1e-3, n_iter=3000, epsilon_scaling=0.95), x, Y)
    w = np.exp(np.asarray(out.info.log_weights))
    cost = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
    a_eq = np.vstack([np.kron(np.eye(8), np.ones(8)), np.kron(np.ones(8), np.eye(8))])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.r_[w, np.full(8, 1 / 8)], method="highs")
    # Reich (2013): X^a = N P*^T X^f with P* the LP coupling; the entropic coupling at 1e-3 of
    # the mean squared distance is the same vertex to ~1e-13 (see test_optimal_transport)
    np.testing.assert_allclose(out.particles, 8 * res.x.reshape(8, 8).T @ x, atol=1e-8)


def test_etpf_moments_approach_the_kalman_filter_as_n_grows():
    m_kf, p_kf, _ = _kalman()
    filt = ETPF()

    @jax.jit
    @jax.vmap
    def mean_error(key):
        x = _prior(key, 200)
        out = filt.analysis(None, x, jnp.asarray(Y), jnp.asarray(H), jnp.asarray(R_DIAG))
        a = out.particles
        return jnp.mean(a, axis=0) - m_kf, jnp.cov(a.T), out.info.ess

    keys = jax.random.split(jax.random.key(3), 4)
    err, cov, ess = mean_error(keys)
    # the importance mean has standard error ~ sqrt(diag(P^a) / ESS); 4 standard errors
    se = np.sqrt(np.diag(p_kf)[None, :] / np.asarray(ess)[:, None])
    assert np.all(np.abs(err) < 4 * se)
    # covariance: the relative sampling error is ~ sqrt(2 / ESS) ~ 0.12 at ESS ~ 130 (/2 over
    # 4 seeds), and the deterministic transform under-disperses at finite N (Reich 2013, §4:
    # why rejuvenation exists) on top of the O(epsilon) entropic shrinkage: within 30 %, and
    # never inflated
    var = np.mean(np.diagonal(cov, axis1=1, axis2=2), 0)
    np.testing.assert_allclose(var, np.diag(p_kf), rtol=0.3)
    assert np.all(var < np.diag(p_kf) * 1.1)

    @jax.jit
    @jax.vmap
    def small(key):
        out = filt.analysis(None, _prior(key, 20), jnp.asarray(Y), jnp.asarray(H), R_DIAG)
        return jnp.mean(out.particles, axis=0) - m_kf

    err_small = small(keys)
    # 10x more members: the RMS mean error over seeds shrinks ~ sqrt(10) ~ 3.2x; asking for
    # a decrease at all fails with negligible probability
    assert np.sqrt(np.mean(err**2)) < np.sqrt(np.mean(np.asarray(err_small) ** 2))


def test_etpf_log_evidence_matches_the_kalman_filter_one_step():
    _, _, log_ev_kf = _kalman()
    x = _prior(jax.random.key(4), 1000)
    out = jax.jit(lambda x: ETPF(n_iter=1).analysis(None, x, Y, H, R_DIAG))(x)
    # the evidence does not depend on the transform (n_iter=1 keeps this cheap); the estimator
    # log mean p(y|x_k) has standard error std(p)/(sqrt(N) mean(p)): 4 standard errors
    lik = np.exp(_np_log_lik(np.asarray(x)))
    se = np.std(lik) / (np.sqrt(lik.size) * np.mean(lik))
    assert abs(float(out.log_likelihood) - log_ev_kf) < 4 * se


def _linear_model(obs_noise=R_DIAG):
    a = jnp.asarray(0.9 * np.eye(3) + 0.05)

    def dynamics(x, t0, t1):
        del t0, t1
        return a @ x

    return fxp.Model(dynamics=dynamics, obs_op=jnp.asarray(H), obs_noise=obs_noise)


def test_etpf_runs_through_run_jit_and_vmap_over_keys():
    model = _linear_model()
    obs = np.random.default_rng(0).normal(size=(5, 2))
    obs[2, 0] = np.nan
    times = np.arange(1.0, 6.0)
    x0 = _prior(jax.random.key(5), 16)
    method = ff.EnsembleFilter(
        ETPF(jitter=0.1, n_iter=200), inflator=fxp.MultiplicativeInflator(1.02)
    )

    def one(key):
        return ff.run(method, model, x0, obs, times, key=key, throw=False)

    keys = jax.random.split(jax.random.key(6), 2)
    batched = jax.jit(jax.vmap(one))(jnp.stack([keys[0], keys[1], keys[1]]))
    assert np.all(np.asarray(batched.status) == 0)
    assert np.all(np.isfinite(np.asarray(batched.log_likelihood)))
    # same key => same result; different keys (jitter) => different results
    np.testing.assert_array_equal(batched.analysis_mean[1], batched.analysis_mean[2])
    assert not np.allclose(batched.analysis_mean[0], batched.analysis_mean[1])


def test_all_weights_zero_is_a_nonfinite_cycle_not_a_number():
    # an observation so far away that every member's likelihood underflows to exp(-inf)
    x = np.asarray(_prior(jax.random.key(7), 10))
    out = _analyse(ETPF(n_iter=10), x, np.array([1e200, 0.0]))
    assert np.all(np.isnan(np.asarray(out.particles))) and out.log_likelihood == -np.inf
    model = _linear_model()
    obs = np.zeros((4, 2))
    obs[2, 0] = 1e200
    res = ff.run(
        ff.EnsembleFilter(ETPF(n_iter=10)),
        model,
        x,
        obs,
        np.arange(1.0, 5.0),
        key=jax.random.key(0),
        throw=False,
    )
    assert int(res.status) == ff.RunResult.NONFINITE
    np.testing.assert_array_equal(res.cycle_status, [0, 0, 1, 1])
    assert np.all(np.isfinite(np.asarray(res.analysis_mean[:2])))


def test_etpf_gradient_is_finite():
    x = _prior(jax.random.key(8), 12)

    def loss(y):
        return jnp.sum(ETPF(n_iter=100).analysis(None, x, y, H, R_DIAG).particles ** 2)

    g = jax.jit(jax.grad(loss))(jnp.asarray(Y))
    assert np.all(np.isfinite(g)) and np.any(g != 0.0)


def test_etpf_refuses_context_and_jitter_without_key():
    x = np.asarray(_prior(jax.random.key(9), 5))
    with pytest.raises(TypeError, match="context"):
        ETPF().analysis(None, x, Y, H, R_DIAG, state_coords=np.arange(3.0))
    with pytest.raises(ValueError, match="key"):
        ETPF(jitter=0.1).analysis(None, x, Y, H, R_DIAG)
    with pytest.raises(ValueError, match="epsilon"):
        ETPF(epsilon=0.0)
