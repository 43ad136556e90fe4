"""Per-cycle VI cost (Bach et al. 2025, eq. 2.5a) against dense numpy formulas."""

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

from filterax.primitives import IdentityObs, IndexObs, ensemble_vi_cost, gaussian_vi_cost


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _kl(m_p, c_p, m_q, c_q):
    # The textbook Gaussian KL, inv + slogdet (independent of the library's Cholesky code).
    n = len(m_p)
    iq = np.linalg.inv(c_q)
    d = m_q - m_p
    return 0.5 * (
        np.trace(iq @ c_p) + d @ iq @ d - n + np.linalg.slogdet(c_q)[1] - np.linalg.slogdet(c_p)[1]
    )


def _lw(c, gamma):
    d = c.shape[0]
    return (1 - gamma) * c + gamma * np.trace(c) / d * np.eye(d)


def _lognormal(y, mean, cov):
    r = y - mean
    return -0.5 * (
        len(y) * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + r @ np.linalg.solve(cov, r)
    )


def _ensemble_reference(xf, xa, y, h, r, sigma, gamma):
    """Dense numpy: KL of the LW-shrunk Gaussian projections minus the member log-likelihood.

    `y` may hold NaN: those entries (rows of h, rows/columns of r) are dropped."""
    cf = np.cov(xf.T, ddof=1) + sigma
    ca = np.cov(xa.T, ddof=1)
    kl = _kl(xa.mean(0), _lw(ca, gamma), xf.mean(0), _lw(cf, gamma))
    obs = ~np.isnan(y)
    ll = (
        np.mean([_lognormal(y[obs], (h @ x)[obs], r[np.ix_(obs, obs)]) for x in xa])
        if obs.any()
        else 0.0
    )
    return kl - ll


def _spd(rng, n, scale=1.0):
    a = rng.standard_normal((n, n))
    return scale * (a @ a.T / n + 0.5 * np.eye(n))


@pytest.mark.parametrize("n_e", [3, 7])
def test_ensemble_cost_matches_dense_numpy(n_e):
    rng = np.random.default_rng(0)
    n, p = 5, 3
    xf = rng.standard_normal((n_e, n)) + 1.0
    xa = 0.6 * xf + 0.1 * rng.standard_normal((n_e, n))
    h = rng.standard_normal((p, n))
    r = _spd(rng, p)
    y = rng.standard_normal(p)
    sigma = np.diag(rng.uniform(0.1, 0.5, n))
    # float64 throughout; the library's Woodbury/Cholesky route and numpy's inv/slogdet agree to
    # round-off of O(1e-14) relative on these well-conditioned 5x5 problems, far below 1e-10.
    cases = (
        (None, np.zeros((n, n))),  # no model noise
        (jnp.asarray(np.diag(sigma)), sigma),  # variances: the low-rank + diagonal route
        (0.3, 0.3 * np.eye(n)),  # a scalar variance
        (jnp.asarray(_spd(rng, n, 0.2)), None),  # a dense Sigma: the dense route
    )
    for proc, sig in cases:
        sig = np.asarray(proc) if sig is None else sig
        got = ensemble_vi_cost(xf, xa, y, jnp.asarray(h), jnp.asarray(r), process_noise=proc)
        want = _ensemble_reference(xf, xa, y, h, r, sig, 0.1)
        np.testing.assert_allclose(float(got), want, rtol=1e-10, atol=1e-10)


def test_ensemble_cost_missing_observations_have_zero_weight():
    rng = np.random.default_rng(1)
    n = 4
    xf = rng.standard_normal((6, n))
    xa = 0.5 * xf
    y = np.array([0.3, np.nan, -1.0, np.nan])
    r = np.diag([1.0, 2.0, 0.5, 3.0])
    got = ensemble_vi_cost(xf, xa, y, IdentityObs(), jnp.asarray(r), shrinkage=0.2)
    want = _ensemble_reference(xf, xa, y, np.eye(n), r, np.zeros((n, n)), 0.2)
    np.testing.assert_allclose(float(got), want, rtol=1e-10, atol=1e-10)
    # every entry missing: the likelihood term is 0, the KL is left
    none = ensemble_vi_cost(xf, xa, np.full(n, np.nan), IdentityObs(), 1.0)
    kl = _kl(xa.mean(0), _lw(np.cov(xa.T), 0.1), xf.mean(0), _lw(np.cov(xf.T), 0.1))
    np.testing.assert_allclose(float(none), kl, rtol=1e-10)


def test_ensemble_cost_nonlinear_obs_jit_vmap_and_float32():
    rng = np.random.default_rng(2)
    xf = rng.standard_normal((3, 8, 4))
    xa = 0.7 * xf
    y = rng.standard_normal((3, 4))

    def obs_op(x):
        return jnp.sin(x)

    f = jax.jit(jax.vmap(lambda a, b, c: ensemble_vi_cost(a, b, c, obs_op, 0.5)))
    got = f(xf, xa, y)
    for k in range(3):
        # member form with a nonlinear h: the average of log N(y; sin(x_n), 0.5 I)
        cf, ca = np.cov(xf[k].T), np.cov(xa[k].T)
        kl = _kl(xa[k].mean(0), _lw(ca, 0.1), xf[k].mean(0), _lw(cf, 0.1))
        ll = np.mean([_lognormal(y[k], np.sin(x), 0.5 * np.eye(4)) for x in xa[k]])
        np.testing.assert_allclose(float(got[k]), kl - ll, rtol=1e-10)
    low = ensemble_vi_cost(
        xf[0].astype(np.float32), xa[0].astype(np.float32), y[0].astype(np.float32), obs_op, 0.5
    )
    assert low.dtype == jnp.float32
    # float32 round-off on a cost of O(10): 1e-4 relative is ~1000 ulps of headroom
    np.testing.assert_allclose(float(low), float(got[0]), rtol=1e-4)


def test_ensemble_cost_nan_input_is_nan_and_bad_shapes_raise(no_runtime_typecheck):
    rng = np.random.default_rng(3)
    xf = rng.standard_normal((5, 3))
    bad = xf.copy()
    bad[2, 1] = np.nan
    assert np.isnan(float(ensemble_vi_cost(xf, bad, np.zeros(3), IdentityObs(), 1.0)))
    assert np.isnan(float(ensemble_vi_cost(bad, xf, np.zeros(3), IdentityObs(), 1.0)))
    with pytest.raises(ValueError, match="same state"):
        ensemble_vi_cost(xf, xf[:, :2], np.zeros(3), IdentityObs(), 1.0)
    with pytest.raises(ValueError, match="obs_op maps"):
        ensemble_vi_cost(xf, xf, np.zeros(2), IdentityObs(), 1.0)
    with pytest.raises(ValueError, match="shrinkage"):
        ensemble_vi_cost(xf, xf, np.zeros(3), IdentityObs(), 1.0, shrinkage=1.5)


def test_gaussian_cost_matches_dense_numpy_and_member_expectation():
    rng = np.random.default_rng(4)
    n = 5
    m_f, m_a = rng.standard_normal(n), rng.standard_normal(n)
    c_f, c_a = _spd(rng, n), _spd(rng, n, 0.3)
    idx = np.array([0, 2, 4])
    h = np.eye(n)[idx]
    r = _spd(rng, 3)
    y = np.array([0.5, np.nan, -0.2])
    got = gaussian_vi_cost(m_f, c_f, m_a, c_a, y, IndexObs(jnp.asarray(idx)), jnp.asarray(r))
    # Reference: KL + closed-form E[-log N(y; Hv, R)] for v ~ N(m_a, C_a), on the observed rows:
    # -log N(y; H m_a, R) + 1/2 tr(R^{-1} H C_a H^T).
    obs = ~np.isnan(y)
    ho, ro = h[obs], r[np.ix_(obs, obs)]
    nll = -_lognormal(y[obs], ho @ m_a, ro) + 0.5 * np.trace(np.linalg.solve(ro, ho @ c_a @ ho.T))
    np.testing.assert_allclose(float(got), _kl(m_a, c_a, m_f, c_f) + nll, rtol=1e-10)
    # Monte Carlo check of the expectation itself (independent of the closed form): 2e5 draws,
    # standard error of the mean NLL ~ 3e-3 here, so a 2e-2 absolute tolerance is ~6 s.e.
    v = rng.multivariate_normal(m_a, c_a, size=200_000)
    mc = np.mean(
        0.5 * np.einsum("ij,ij->i", (y[obs] - v @ ho.T) @ np.linalg.inv(ro), y[obs] - v @ ho.T)
    ) + 0.5 * (obs.sum() * np.log(2 * np.pi) + np.linalg.slogdet(ro)[1])
    np.testing.assert_allclose(nll, mc, atol=2e-2)


def test_gaussian_cost_bad_covariance_shape_raises(no_runtime_typecheck):
    with pytest.raises(ValueError, match="analysis_cov"):
        gaussian_vi_cost(
            np.zeros(2), np.eye(2), np.zeros(2), np.eye(3), np.zeros(2), IdentityObs(), 1.0
        )
