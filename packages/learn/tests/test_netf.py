"""NETF and LNETF against numpy importance moments, a numpy local analysis and the KF."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.learn import LNETF, NETF

N_X = 8
GRID = np.arange(float(N_X))
PERIODIC = fxp.PeriodicDistance(float(N_X))
R_VAR = 0.5


def _np_weights(x, y, r=R_VAR, rho=None):
    """Normalised (optionally tapered) Gaussian likelihood weights, numpy."""
    keep = ~np.isnan(y)
    taper = np.ones(y.size) if rho is None else rho
    resid2 = (np.where(keep, y, 0.0)[None, :] - x) ** 2 / r * keep
    ll = -0.5 * resid2 @ taper
    w = np.exp(ll - ll.max())
    return w / w.sum()


def _ensemble(key, n, n_x=N_X):
    return jax.random.normal(key, (n, n_x)) + jnp.linspace(-1.0, 1.0, n_x)[None, :]


def _obs(seed=0):
    y = np.random.default_rng(seed).normal(size=N_X)
    y[3] = np.nan
    return y


@eqx.filter_jit
def _analyse(filt, key, x, y, **context):
    return filt.analysis(key, x, y, fxp.IdentityObs(), R_VAR, **context)


@pytest.mark.parametrize("rotate", [False, True])
def test_netf_moments_are_the_importance_moments_exactly(rotate):
    x = np.asarray(_ensemble(jax.random.key(0), 10))
    y = _obs()
    out = _analyse(NETF(rotate=rotate), jax.random.key(1), x, y)
    w = _np_weights(x, y)
    mean = w @ x
    cov = (x - mean).T @ np.diag(w) @ (x - mean)
    # second-order exact: identities up to round-off (eigh of a 10 x 10 matrix, ~1e-15
    # relative; 1e-12 for the accumulation over members)
    np.testing.assert_allclose(np.mean(out.particles, axis=0), mean, atol=1e-12)
    np.testing.assert_allclose(np.cov(np.asarray(out.particles).T), cov, atol=1e-12)
    np.testing.assert_allclose(np.exp(out.info.log_weights), w, rtol=1e-10)


def _np_gaspari_cohn(d, c):
    """Gaspari & Cohn (1999) eq. (4.10), written out in numpy."""
    z = np.abs(d) / c
    zs = np.where(z > 0, z, 1.0)  # the outer branch is not used at 0; keep 2/(3z) finite
    inner = -0.25 * z**5 + 0.5 * z**4 + 0.625 * z**3 - 5 / 3 * z**2 + 1
    outer = z**5 / 12 - 0.5 * z**4 + 0.625 * z**3 + 5 / 3 * z**2 - 5 * z + 4 - 2 / (3 * zs)
    return np.where(z <= 1, inner, np.where(z < 2, outer, 0.0))


def test_lnetf_one_local_analysis_matches_numpy():
    x = np.asarray(_ensemble(jax.random.key(2), 10))
    y = _obs(1)
    key = jax.random.key(3)
    radius = 2.5
    out = _analyse(
        LNETF(radius=radius, chunk_size=3),
        key,
        x,
        y,
        state_coords=GRID,
        obs_coords=GRID,
        distance=PERIODIC,
    )
    # Omega: the filter's documented draw (random_rotation of fold_in(key, 0))
    omega = np.asarray(fxp.random_rotation(jax.random.fold_in(key, 0), 10, jnp.float64))
    for i in (0, 5):
        dist = np.abs(GRID - GRID[i])
        dist = np.minimum(dist, N_X - dist)
        w = _np_weights(x, y, rho=_np_gaspari_cohn(dist, radius))
        a = np.diag(w) - np.outer(w, w)
        big_w = np.sqrt(9) * np.real(scipy.linalg.sqrtm(a)) @ omega
        anomalies = x[:, i] - x[:, i].mean()
        expected = w @ x[:, i] + big_w.T @ anomalies
        # sqrtm of the singular A is accurate to ~1e-8 on the null direction (scipy's Schur
        # method), which the centred anomalies annihilate; 1e-9 absolute
        np.testing.assert_allclose(out.particles[:, i], expected, atol=1e-9)


def test_lnetf_infinite_radius_is_the_global_netf():
    x = np.asarray(_ensemble(jax.random.key(4), 10))
    y = _obs(2)
    key = jax.random.key(5)
    local = _analyse(
        LNETF(radius=jnp.inf, chunk_size=3),
        key,
        x,
        y,
        state_coords=GRID,
        obs_coords=GRID,
        distance=PERIODIC,
    )
    glob = _analyse(NETF(), key, x, y)
    # rho = 1 everywhere: the same weights, the same Omega; only the order of floating-point
    # sums differs (and eigh's round-off on the null direction)
    np.testing.assert_allclose(local.particles, glob.particles, atol=1e-9)
    np.testing.assert_allclose(local.log_likelihood, glob.log_likelihood, rtol=1e-13)


def test_netf_moments_match_the_kalman_filter_within_monte_carlo_error():
    # prior N(0, P0) on 3 components, y = x_0 + x_2 + noise
    p0 = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.7]])
    h = np.array([[1.0, 0.0, 1.0]])
    y = np.array([1.3])
    s = h @ p0 @ h.T + R_VAR
    gain = p0 @ h.T / s
    m_kf, p_kf = (gain * y).ravel(), p0 - gain @ h @ p0
    chol = jnp.asarray(np.linalg.cholesky(p0).T)

    n = 200

    @jax.jit
    @jax.vmap
    def one(key):
        k1, k2 = jax.random.split(key)
        x = jax.random.normal(k1, (n, 3)) @ chol
        out = NETF().analysis(k2, x, jnp.asarray(y), jnp.asarray(h), R_VAR)
        return jnp.mean(out.particles, 0) - m_kf, jnp.cov(out.particles.T) - p_kf, out.info.ess

    mean_err, cov_err, ess = one(jax.random.split(jax.random.key(6), 4))
    ess = np.asarray(ess)[:, None]
    # importance-sampling errors shrink as N^{-1/2} (ESS ~ 0.7 N here): the mean within 4
    # standard errors sqrt(P^a_ii / ESS), the variances within 4 relative standard errors
    # sqrt(2 / ESS) of the sample variance, for every seed
    assert np.all(np.abs(mean_err) < 4 * np.sqrt(np.diag(p_kf)[None, :] / ess))
    var_err = np.diagonal(cov_err, axis1=1, axis2=2)
    assert np.all(np.abs(var_err) < 4 * np.sqrt(2.0 / ess) * np.diag(p_kf)[None, :])


def _model(obs_noise=R_VAR):
    def dynamics(x, t0, t1):
        del t0, t1
        return 0.9 * x + 0.1 * jnp.roll(x, 1)

    return fxp.Model(
        dynamics=dynamics,
        obs_op=fxp.IdentityObs(),
        obs_noise=obs_noise,
        state_coords=jnp.asarray(GRID),
        obs_coords=jnp.asarray(GRID),
        distance=PERIODIC,
    )


def test_lnetf_runs_through_run_jit_and_vmap_over_keys():
    obs = np.random.default_rng(3).normal(size=(4, N_X))
    obs[1, 2] = np.nan
    x0 = _ensemble(jax.random.key(7), 10)
    method = ff.EnsembleFilter(LNETF(radius=2.0, jitter=0.05))

    def one(key):
        return ff.run(method, _model(), x0, obs, np.arange(1.0, 5.0), key=key, throw=False)

    k0, k1 = jax.random.split(jax.random.key(8))
    res = jax.jit(jax.vmap(one))(jnp.stack([k0, k1, k1]))
    assert np.all(np.asarray(res.status) == 0)
    assert np.all(np.isfinite(np.asarray(res.log_likelihood)))
    np.testing.assert_array_equal(res.analysis_mean[1], res.analysis_mean[2])
    assert not np.allclose(res.analysis_mean[0], res.analysis_mean[1])


def test_all_weights_zero_gives_a_nan_analysis_and_minus_inf_evidence():
    # what the driver reports as a non-finite cycle (shown through `run` in test_etpf.py)
    x0 = np.asarray(_ensemble(jax.random.key(9), 10))
    y = np.zeros(N_X)
    y[0] = 1e200
    for filt, context in (
        (NETF(), {}),
        (
            LNETF(radius=2.0, chunk_size=3),
            {"state_coords": GRID, "obs_coords": GRID, "distance": PERIODIC},
        ),
    ):
        out = _analyse(filt, jax.random.key(1), x0, y, **context)
        assert np.all(np.isnan(np.asarray(out.particles))) and out.log_likelihood == -np.inf


def test_lnetf_gradient_in_radius_and_obs_is_finite():
    x = _ensemble(jax.random.key(10), 8)

    def loss(radius, y):
        out = LNETF(radius=radius, rotate=False).analysis(
            None,
            x,
            y,
            fxp.IdentityObs(),
            R_VAR,
            state_coords=GRID,
            obs_coords=GRID,
            distance=PERIODIC,
        )
        return jnp.sum(out.particles**2)

    g_r, g_y = jax.jit(jax.grad(loss, argnums=(0, 1)))(2.0, jnp.asarray(_obs(4)))
    assert np.isfinite(g_r) and g_r != 0.0
    assert np.all(np.isfinite(g_y)) and g_y[3] == 0.0  # the missing entry has no influence


def test_lnetf_refuses_bad_input():
    x = np.asarray(_ensemble(jax.random.key(11), 5))
    y = _obs()
    # trace-time errors: raised while tracing, before anything is compiled
    with pytest.raises(ValueError, match="state_coords"):
        _analyse(LNETF(radius=2.0), jax.random.key(0), x, y)
    with pytest.raises(ValueError, match="diagonal"):
        eqx.filter_jit(LNETF(radius=2.0).analysis)(
            jax.random.key(0),
            x,
            y,
            fxp.IdentityObs(),
            np.eye(N_X) + 0.1,
            state_coords=GRID,
            obs_coords=GRID,
        )
    with pytest.raises(ValueError, match="key"):
        _analyse(NETF(), None, x, y)
    with pytest.raises(ValueError, match="radius"):
        LNETF(radius=0.0)
