"""VariationalEnKF, enkf_vi_cost and vi_cost_surface against a dense numpy re-derivation of
App. A.6 (Bach, Baptista, Luk & Stuart 2025) with the authors' code conventions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.learn import (
    EnKFVICost,
    VariationalEnKF,
    enkf_localization,
    enkf_vi_cost,
    vi_cost_surface,
)

D, N = 6, 4
SIGMA, GAMMA_OBS, SHRINK = 0.03, 0.5, 0.1


def _dynamics_matrix():
    rng = np.random.default_rng(0)
    return 0.9 * np.eye(D) + 0.1 * rng.standard_normal((D, D))


M_DYN = _dynamics_matrix()


def _linear(x, t0, t1):
    del t0, t1
    return jnp.asarray(M_DYN, x.dtype) @ x


def _model(obs_op=None, obs_noise=GAMMA_OBS):
    return fxp.Model(
        dynamics=_linear,
        obs_op=fxp.IdentityObs() if obs_op is None else obs_op,
        obs_noise=obs_noise,
        process_noise=SIGMA,
    )


def _data(n_times, n_obs=D, seed=1):
    rng = np.random.default_rng(seed)
    ens = rng.standard_normal((N, D))
    y = rng.standard_normal((n_times, n_obs))
    times = np.arange(1.0, n_times + 1.0)
    return ens, y, times


# ---- the numpy reference: App. A.6 with the code's conventions, dense, scipy sqrtm ----


def _np_dist():
    i = np.arange(D)
    diff = np.abs(i[:, None] - i[None, :])
    return np.minimum(diff, D - diff).astype(float)


def _lw(c):
    return (1 - SHRINK) * c + SHRINK * np.trace(c) / c.shape[0] * np.eye(c.shape[0])


def _np_cycle(ens, y, lam, ell, h, g, root, likelihood):
    ef = ens @ M_DYN.T
    mf = ef.mean(0)
    a = ef - mf
    sig = SIGMA * np.eye(D)
    if np.all(np.isnan(y)):  # no observation: keep the forecast, cost 0
        return ef, 0.0, 0.0
    cref = _lw(a.T @ a / (N - 1) + sig)
    al = lam * a
    p = np.exp(-((_np_dist() / ell) ** 2)) * (al.T @ al / (N - 1)) + sig
    s = h @ p @ h.T + g
    k = p @ h.T @ np.linalg.inv(s)
    ma = mf + k @ (y - h @ mf)
    if root == "symmetric":
        r = np.real(scipy.linalg.sqrtm(np.eye(D) - k @ h))
    else:
        s_half = np.real(scipy.linalg.sqrtm(s))
        g_half = np.real(scipy.linalg.sqrtm(g))
        kt = p @ h.T @ np.linalg.inv(s_half) @ np.linalg.inv(s_half + g_half)
        r = np.eye(D) - kt @ h
    aa = al @ r.T
    ea = ma + aa
    ca = _lw(aa.T @ aa / (N - 1))
    ci = np.linalg.inv(cref)
    dm = mf - ma
    kl = 0.5 * (
        np.trace(ci @ ca) + dm @ ci @ dm - D + np.linalg.slogdet(cref)[1] - np.linalg.slogdet(ca)[1]
    )
    if likelihood == "members":
        nll = -np.mean([scipy.stats.multivariate_normal.logpdf(y, h @ e, g) for e in ea])
    else:  # analytic
        nll = -scipy.stats.multivariate_normal.logpdf(y, h @ ma, g) + 0.5 * np.trace(
            np.linalg.inv(g) @ h @ ca @ h.T
        )
    return ea, kl, nll


def _np_cost(ens, ys, lam, ell, h, g, root, likelihood):
    total, kls, nlls = 0.0, [], []
    for y in ys:
        ens, kl, nll = _np_cycle(ens, y, lam, ell, h, g, root, likelihood)
        kls.append(kl)
        nlls.append(nll)
        total += kl + nll
    return total, ens, np.array(kls), np.array(nlls)


# ---- tests ----


@pytest.mark.parametrize(
    ("root", "likelihood"), [("symmetric", "members"), ("modified_gain", "analytic")]
)
def test_one_cycle_matches_dense_numpy(root, likelihood):
    ens, y, times = _data(1)
    method = VariationalEnKF(inflation=1.15, radius=2.0, likelihood=likelihood, square_root=root)
    out = ff.run(method, _model(), ens, y, times, key=jax.random.key(0), save="ensembles")
    ea, kl, nll = _np_cycle(
        ens, y[0], 1.15, 2.0, np.eye(D), GAMMA_OBS * np.eye(D), root, likelihood
    )
    # Same algebra, different factorisations (Cholesky/eigh vs inv/sqrtm) of matrices with
    # condition numbers < 1e3: agreement to ~1e-12; 1e-9 leaves margin.
    np.testing.assert_allclose(out.analyses[0], ea, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out.diagnostics.kl[0], kl, rtol=1e-9)
    np.testing.assert_allclose(out.diagnostics.expected_nll[0], nll, rtol=1e-9)
    assert int(out.status) == ff.RunResult.OK


def test_modified_gain_root_for_general_h_matches_numpy():
    h = np.eye(D)[::2]
    g = np.diag([0.4, 0.7, 1.1])
    ens, y, times = _data(1, n_obs=3)
    model = _model(obs_op=jnp.asarray(h), obs_noise=jnp.asarray(np.diag(g)))
    method = VariationalEnKF(
        inflation=1.2, radius=1.5, likelihood="analytic", square_root="modified_gain"
    )
    out = ff.run(method, model, ens, y, times, key=jax.random.key(0), save="ensembles")
    ea, kl, nll = _np_cycle(ens, y[0], 1.2, 1.5, h, g, "modified_gain", "analytic")
    # Same algebra, different factorisations: see test_one_cycle_matches_dense_numpy.
    np.testing.assert_allclose(out.analyses[0], ea, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(
        out.diagnostics.kl[0] + out.diagnostics.expected_nll[0], kl + nll, rtol=1e-9
    )
    # The symmetric root is not a square root of I - KH here: refused eagerly by the cost...
    with pytest.raises(ValueError, match="modified_gain"):
        enkf_vi_cost(model, ens, y, times, inflation=1.2, radius=1.5, key=jax.random.key(0))
    # ... and flagged (not finite, code 2) by the cycled method inside the driver.
    sym = VariationalEnKF(inflation=1.2, radius=1.5, square_root="symmetric")
    out = ff.run(sym, model, ens, y, times, key=jax.random.key(0), throw=False)
    assert int(out.status) == ff.RunResult.NONFINITE
    assert int(out.diagnostics.code[0]) == 2


@pytest.mark.parametrize("likelihood", ["members", "analytic"])
def test_three_cycle_cost_matches_numpy_loop(likelihood):
    ens, y, times = _data(3)
    y[1] = np.nan  # a cycle without observations keeps the forecast and costs 0
    cost = enkf_vi_cost(
        _model(),
        ens,
        y,
        times,
        inflation=1.3,
        radius=1.7,
        key=jax.random.key(0),
        likelihood=likelihood,
    )
    total, _, kls, nlls = _np_cost(
        ens, y, 1.3, 1.7, np.eye(D), GAMMA_OBS * np.eye(D), "symmetric", likelihood
    )
    assert int(cost.status) == EnKFVICost.OK
    # Three cycles of the same algebra: round-off grows mildly; 1e-9 relative is ample.
    np.testing.assert_allclose(cost.value, total, rtol=1e-9)
    np.testing.assert_allclose(cost.kl, kls, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cost.expected_nll, nlls, rtol=1e-9, atol=1e-12)
    assert cost.kl[1] == 0.0 and cost.expected_nll[1] == 0.0


def test_gaussian_projection_likelihood_is_unbiased_for_the_analytic_one():
    ens, y, times = _data(1)
    kw = dict(inflation=1.1, radius=2.5, key=jax.random.key(3))
    s = 20000
    mc = enkf_vi_cost(_model(), ens, y, times, n_samples=s, **kw)
    exact = enkf_vi_cost(_model(), ens, y, times, likelihood="analytic", **kw)
    # Standard deviation of one draw of 1/2 |z|^2, z ~ N(mu, W) whitened residual:
    # Var = tr(W^2)/2 + mu^T W mu (numpy, from the reference's C^a).
    ef = ens @ M_DYN.T
    a = 1.1 * (ef - ef.mean(0))
    p = np.exp(-((_np_dist() / 2.5) ** 2)) * (a.T @ a / (N - 1)) + SIGMA * np.eye(D)
    k = p @ np.linalg.inv(p + GAMMA_OBS * np.eye(D))
    aa = a @ np.real(scipy.linalg.sqrtm(np.eye(D) - k)).T
    ca = _lw(aa.T @ aa / (N - 1))
    mu = (y[0] - (ef.mean(0) + k @ (y[0] - ef.mean(0)))) / math.sqrt(GAMMA_OBS)
    w = ca / GAMMA_OBS
    sd = math.sqrt(0.5 * np.trace(w @ w) + mu @ w @ mu)
    # 5 standard errors of the Monte Carlo mean: fails by chance with probability < 1e-6.
    assert abs(float(mc.expected_nll[0] - exact.expected_nll[0])) < 5 * sd / math.sqrt(s)
    np.testing.assert_allclose(mc.kl, exact.kl, rtol=1e-12)


def _cost_of_logs(likelihood, ens, y, times):
    def f(u):
        return enkf_vi_cost(
            _model(),
            ens,
            y,
            times,
            inflation=jnp.exp(u[0]),
            radius=jnp.exp(u[1]),
            key=jax.random.key(0),
            likelihood=likelihood,
        ).value

    return f


def test_gradient_matches_finite_differences_also_at_degenerate_eigenvalues():
    ens, y, times = _data(3)
    # The default Monte Carlo likelihood: its draws are reparameterised with a fixed key, so
    # the cost is a deterministic function of (lambda, l) that finite differences can check.
    f = _cost_of_logs("gaussian_projection", ens, y, times)
    # Row 1: a moderate radius. Row 2: l = 1e4, so L ~ 11^T and P = lambda^2 cov + Sigma has
    # D - N + 1 equal eigenvalues (Sigma), where differentiating an eigh-based sqrtm gives NaN
    # (VI_REPRODUCTION pitfall 3).
    points = jnp.log(jnp.array([[1.2, 1.8], [1.2, 1e4]]))
    grads = jax.jit(jax.vmap(jax.grad(f)))(points)
    assert np.all(np.isfinite(grads))
    h = 1e-5
    steps = h * jnp.concatenate([jnp.eye(2), -jnp.eye(2)])
    shifted = (points[:, None, :] + steps[None, :, :]).reshape(-1, 2)
    values = np.asarray(jax.jit(jax.vmap(f))(shifted)).reshape(2, 4)
    fd = (values[:, :2] - values[:, 2:]) / (2 * h)
    # Central differences: truncation O(h^2 f''') ~ 1e-10 and cancellation eps |f| / h ~ 1e-9
    # against |grad| ~ 1..10; the radius component at l = 1e4 is ~(d/l)^2 ~ 1e-7 small, so
    # compare against the gradient norm: 1e-6 relative is safe.
    for g_row, fd_row in zip(np.asarray(grads), fd, strict=True):
        np.testing.assert_allclose(g_row, fd_row, rtol=1e-6, atol=1e-6 * np.linalg.norm(fd_row))


def test_adjoint_option_keeps_the_value_and_truncates_the_gradient():
    ens, y, times = _data(4)
    u = jnp.log(jnp.array([1.2, 1.8]))

    def cost(adjoint):
        def f(v):
            return enkf_vi_cost(
                _model(),
                ens,
                y,
                times,
                inflation=jnp.exp(v[0]),
                radius=jnp.exp(v[1]),
                key=jax.random.key(2),
                adjoint=adjoint,
            ).value

        return jax.value_and_grad(f)(u)

    v_full, g_full = cost(None)
    v_long, g_long = cost(ff.TruncatedAdjoint(4))
    v_cut, g_cut = cost(ff.TruncatedAdjoint(1))
    # The forward program is the same for every adjoint (only stop_gradients differ).
    np.testing.assert_allclose([v_long, v_cut], [v_full, v_full], rtol=1e-13)
    # A window as long as the run is the exact gradient (same program up to round-off) ...
    np.testing.assert_allclose(g_long, g_full, rtol=1e-10)
    # ... and a one-cycle window drops the dependence through the carried ensemble.
    assert np.all(np.isfinite(g_cut)) and not np.allclose(g_cut, g_full, rtol=1e-3)


def test_surface_is_one_vmapped_call_equal_to_pointwise_costs():
    ens, y, times = _data(3)
    lams = jnp.array([1.05, 1.4])
    radii = jnp.array([0.8, 3.0, 50.0])
    surf = vi_cost_surface(_model(), ens, y, times, lams, radii, key=jax.random.key(5))
    assert surf.value.shape == (2, 3) and surf.kl.shape == (2, 3, 3)
    for i, lam in enumerate(lams):
        for j, r in enumerate(radii):
            point = enkf_vi_cost(
                _model(), ens, y, times, inflation=lam, radius=r, key=jax.random.key(5)
            )
            # The same program vmapped: equal up to batched-kernel round-off.
            np.testing.assert_allclose(surf.value[i, j], point.value, rtol=1e-10)
    assert np.all(np.asarray(surf.status) == 0)
    # Same key, same cost (above); another key, other likelihood draws.
    other = enkf_vi_cost(
        _model(), ens, y, times, inflation=lams[0], radius=radii[0], key=jax.random.key(6)
    )
    assert float(other.value) != float(surf.value[0, 0])


def test_bad_parameters_refused_eagerly_and_flagged_when_traced():
    ens, y, times = _data(3)
    for lam, r in ((0.0, 1.0), (-1.0, 1.0), (1.1, 0.0), (1.1, np.nan)):
        with pytest.raises(ValueError, match="VariationalEnKF"):
            VariationalEnKF(inflation=lam, radius=r)
        with pytest.raises(ValueError, match="enkf_vi_cost"):
            enkf_vi_cost(_model(), ens, y, times, inflation=lam, radius=r, key=jax.random.key(0))
    with pytest.raises(ValueError, match="radii"):
        vi_cost_surface(
            _model(), ens, y, times, jnp.array([1.1]), jnp.array([1.0, -2.0]), key=jax.random.key(0)
        )

    @jax.jit
    def traced(lams):
        out = vi_cost_surface(
            _model(), ens, y, times, lams, jnp.array([1.0, 2.0]), key=jax.random.key(0)
        )
        return out.value, out.status

    value, status = traced(jnp.array([1.1, -1.0]))
    np.testing.assert_array_equal(status, [[0, 0], [2, 2]])
    assert np.all(np.isfinite(value[0])) and np.all(np.isnan(value[1]))


def test_localization_is_the_codes_convention():
    d = jnp.asarray(_np_dist())
    np.testing.assert_allclose(
        enkf_localization(d, 2.0), np.exp(-((_np_dist() / 2.0) ** 2)), rtol=1e-14
    )
    with pytest.raises(ValueError):
        enkf_localization(d, 0.0)


def test_float32_cost_is_close_to_float64():
    ens, y, times = _data(3)
    kw = dict(inflation=1.2, radius=2.0, key=jax.random.key(0), likelihood="analytic")
    c64 = enkf_vi_cost(_model(), ens, y, times, **kw)
    c32 = enkf_vi_cost(
        _model(), ens.astype(np.float32), y.astype(np.float32), times.astype(np.float32), **kw
    )
    assert c32.value.dtype == jnp.float32 and int(c32.status) == 0
    # float32 round-off (eps 6e-8) through ~10 factorisations of matrices with condition
    # numbers ~1e2: 1e-4 relative.
    np.testing.assert_allclose(c32.value, c64.value, rtol=1e-4)
