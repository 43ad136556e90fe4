"""Tests of `EnKF4D` (Hunt et al. 2004) against independent numpy references.

float64 throughout (the conftest enables x64). The identities below are algebraic (no Monte
Carlo): for a linear perfect model the ensemble-space Gaussian conditioning is exact, so the
4D-EnKF must agree with a Kalman filter / sequential ETKF written here in numpy to round-off;
1e-9 leaves ~6 orders of magnitude above the ~1e-15 round-off of these 4-8 dimensional
problems while any algebra error (a missed term, a wrong normalisation) is O(1e-2) or larger.

Test cost is XLA compilation, so the tests share compiled programs: the dynamics is a module
holding its matrix (an array leaf, not a new closure per problem), every run saves the
ensembles and reports failures through the status (``throw=False``), and two shapes are used
(N_x, N_y, N_e = 4, 3, 8 and the rank-deficient 6, 5, 4; T = 6 cycles).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import EnKF4D

TOL = 1e-9

N_X, N_Y, T = 4, 3, 6


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    # These tests run tiny programs whose cost is all XLA compilation: skip XLA's optimisation
    # passes (same semantics; round-off at most reassociated, far below the 1e-9 tolerance).
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _enkf4d(lag, factor=1.0, **kw):
    # The default-shape configuration: inflation (an array leaf: any factor, one program) and
    # rotation. With factor 1 it is the plain 4D-EnKF for every mean and covariance (the
    # rotation is mean- and covariance-preserving), so the exact identities below hold for it
    # and the tests share its compiled programs (lag 1 and lag 3).
    return EnKF4D(lag=lag, inflator=fxp.MultiplicativeInflator(factor), rotate=True, **kw)


class _Linear(eqx.Module):
    # x -> A x, or inf from t1 >= blowup on (a traced overflow; blowup = inf: never). The
    # inf branch is a constant, so gradients through the finite branch stay finite.
    matrix: jax.Array
    blowup: jax.Array

    def __call__(self, x, t0, t1):
        y = self.matrix @ x
        return jnp.where(t1 >= self.blowup, jnp.full_like(y, jnp.inf), y)


def _dynamics(A, blowup=np.inf):
    return _Linear(jnp.asarray(A), jnp.asarray(blowup))


def _linear_problem(seed=0, n_x=N_X, n_y=N_Y, n_e=8, n_times=T, dynamics="linear"):
    rng = np.random.default_rng(seed)
    if dynamics == "linear":
        A = np.eye(n_x) * 0.9 + 0.15 * rng.standard_normal((n_x, n_x))
    else:
        A = np.eye(n_x)
    H = rng.standard_normal((n_y, n_x))
    r = np.linspace(0.5, 2.0, n_y)
    ys = rng.standard_normal((n_times, n_y))
    ys[2, 1] = np.nan  # one missing entry: zero weight
    E0 = rng.standard_normal((n_e, n_x)) + 1.0
    model = fxp.Model(dynamics=_dynamics(A), obs_op=jnp.asarray(H), obs_noise=r)
    return A, H, r, ys, E0, model


def _np_kalman(A, H, r, ys, m, P):
    """Exact Kalman filter (numpy): analyses and the log evidence; NaN entries skipped."""
    means, covs, loglik = [], [], 0.0
    for y in ys:
        m, P = A @ m, A @ P @ A.T
        obs = ~np.isnan(y)
        Hk, Rk = H[obs], np.diag(r[obs])
        S = Hk @ P @ Hk.T + Rk
        d = y[obs] - Hk @ m
        K = P @ Hk.T @ np.linalg.inv(S)
        loglik += -0.5 * (
            obs.sum() * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + d @ np.linalg.solve(S, d)
        )
        m, P = m + K @ d, P - K @ Hk @ P
        means.append(m)
        covs.append(P)
    return np.array(means), np.array(covs), loglik


def _np_etkf(A, H, r, ys, E):
    """Sequential symmetric-square-root ETKF (numpy, Hunt et al. 2007 eqs. 20-24)."""
    n_e = E.shape[0]
    out = []
    for y in ys:
        E = E @ A.T
        obs = ~np.isnan(y)
        x = E.mean(0)
        X = E - x
        Y = (E @ H.T)[:, obs]
        Yp = Y - Y.mean(0)
        Rinv = np.diag(1.0 / r[obs])
        C = (n_e - 1) * np.eye(n_e) + Yp @ Rinv @ Yp.T
        vals, vecs = np.linalg.eigh(C)
        Pw = vecs @ np.diag(1 / vals) @ vecs.T
        W = vecs @ np.diag(np.sqrt((n_e - 1) / vals)) @ vecs.T
        w = Pw @ Yp @ Rinv @ (y[obs] - Y.mean(0))
        E = x + w @ X + W @ X
        out.append(E)
    return np.array(out)


def _cov(E):
    return np.cov(np.asarray(E).T)


def _run(method, model, E0, ys, key=0):
    # One save mode and throw=False everywhere (status checked by the tests that need it):
    # a single compiled program per method configuration and shape.
    return ff.run(
        method,
        model,
        jnp.asarray(E0),
        jnp.asarray(ys),
        jnp.arange(1.0, len(ys) + 1),
        key=jax.random.key(key),
        save="ensembles",
        throw=False,
    )


@pytest.mark.parametrize("lag", [1, 3])
def test_window_end_equals_kalman_filter_for_linear_perfect_model(lag):
    # N_e - 1 >= N_x: the ensemble spans the state, so the ETKF (hence the 4D-EnKF at every
    # window end) carries the exact Kalman mean and covariance from the sample statistics.
    A, H, r, ys, E0, model = _linear_problem()
    out = _run(_enkf4d(lag), model, E0, ys)
    means, covs, evidence = _np_kalman(A, H, r, ys, E0.mean(0), _cov(E0))
    ends = np.arange(lag - 1, T, lag)
    np.testing.assert_array_equal(np.asarray(out.diagnostics.analysed), np.isin(np.arange(T), ends))
    for k in ends:
        np.testing.assert_allclose(out.analysis_mean[k], means[k], atol=TOL, rtol=0)
        np.testing.assert_allclose(_cov(out.analyses[k]), covs[k], atol=TOL, rtol=0)
    # The per-cycle log-likelihood rows decompose the log evidence (sequential conditioning
    # inside the window through the running sums).
    np.testing.assert_allclose(float(jnp.sum(out.log_likelihood)), evidence, atol=TOL, rtol=0)


def test_rank_deficient_ensemble_equals_sequential_etkf():
    # N_e = 4 < N_x = 6: no longer the Kalman filter, but still exactly the sequential ETKF's
    # mean and covariance at the window ends (the ensemble-space posterior is the same).
    A, H, r, ys, E0, model = _linear_problem(seed=1, n_x=6, n_y=5, n_e=4, n_times=6)
    lag = 3
    out = _run(EnKF4D(lag=lag), model, E0, ys)
    ref = _np_etkf(A, H, r, ys, E0)
    for k in (2, 5):
        np.testing.assert_allclose(out.analysis_mean[k], ref[k].mean(0), atol=TOL, rtol=0)
        np.testing.assert_allclose(_cov(out.analyses[k]), _cov(ref[k]), atol=TOL, rtol=0)
    # Inside a window the rows are the forecast (no analysis yet).
    np.testing.assert_allclose(out.analysis_mean[:2], out.forecast_mean[:2], atol=0, rtol=0)
    # The 3D shortcut observes the window-end ensemble: with moving dynamics a different
    # (approximate) analysis; guards against the mode flag being ignored.
    shortcut = _run(EnKF4D(lag=lag, mode="3d"), model, E0, ys)
    assert float(jnp.max(jnp.abs(shortcut.analysis_mean[2] - out.analysis_mean[2]))) > 1e-3
    np.testing.assert_allclose(shortcut.analysis_mean[:2], out.analysis_mean[:2], atol=TOL)


def test_smoothed_window_start_equals_batch_gaussian_conditioning():
    # The window's weights applied at the window start = the Gaussian posterior of x(t_start)
    # given the window's observations y_j = H A^j x + e_j (numpy, batch form).
    A, H, r, ys, E0, model = _linear_problem(seed=2)
    lag = 3
    out = _run(_enkf4d(lag), model, E0, ys)
    m, P = E0.mean(0), _cov(E0)
    for start in (0, 3):
        if start:
            m, P = np.asarray(out.analysis_mean[start - 1]), _cov(out.analyses[start - 1])
        G = np.vstack([H @ np.linalg.matrix_power(A, j) for j in range(1, lag + 1)])
        y = ys[start : start + lag].ravel()
        obs = ~np.isnan(y)
        G, y, R = G[obs], y[obs], np.diag(np.tile(r, lag)[obs])
        post = m + P @ G.T @ np.linalg.solve(G @ P @ G.T + R, y - G @ m)
        row = start + lag - 1
        np.testing.assert_allclose(out.diagnostics.smoothed_mean[row], post, atol=TOL, rtol=0)
        np.testing.assert_allclose(float(out.diagnostics.window_start[row]), float(start))


def test_lag_one_is_ensemble_filter_etkf_member_for_member():
    # Same keys, same transform: lag=1 with inflation and rotation reproduces the ETKF cycled
    # method of filterax.filters member by member.
    _, _, _, ys, E0, model = _linear_problem(seed=3)
    infl = fxp.MultiplicativeInflator(1.05)
    ours = _run(_enkf4d(1, 1.05), model, E0, ys)
    ref = _run(ff.EnsembleFilter(ff.ETKF(), inflator=infl, rotate=True), model, E0, ys)
    np.testing.assert_allclose(ours.analyses, ref.analyses, atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.log_likelihood, ref.log_likelihood, atol=TOL, rtol=0)


def test_observation_order_inside_window_does_not_matter():
    # With static dynamics every time of a window sees the same ensemble, so permuting the
    # rows inside each window must leave every window-end analysis unchanged; and the 3D
    # shortcut (everything observed at the window end) is then the 4D-EnKF itself.
    # (The rank-deficient shapes of the test above: the same two compiled programs.)
    _, _, _, ys, E0, model = _linear_problem(seed=4, n_x=6, n_y=5, n_e=4, dynamics="identity")
    lag = 3
    perm = np.concatenate([np.array([2, 0, 1]), 3 + np.array([1, 2, 0])])
    a = _run(EnKF4D(lag=lag), model, E0, ys)
    b = _run(EnKF4D(lag=lag), model, E0, ys[perm])
    c = _run(EnKF4D(lag=lag, mode="3d"), model, E0, ys)
    for k in (2, 5):
        np.testing.assert_allclose(a.analyses[k], b.analyses[k], atol=TOL, rtol=0)
        np.testing.assert_allclose(a.analyses[k], c.analyses[k], atol=TOL, rtol=0)
    np.testing.assert_allclose(jnp.sum(a.log_likelihood), jnp.sum(c.log_likelihood), atol=TOL)


def test_window_without_observations_is_identity_and_check_refuses_it():
    _, _, _, ys, E0, model = _linear_problem(seed=6)
    ys[3:6] = np.nan
    method = _enkf4d(3)
    out = _run(method, model, E0, ys)
    assert float(out.diagnostics.n_window_obs[5]) == 0.0
    np.testing.assert_allclose(out.analysis_mean[5], out.forecast_mean[5], atol=TOL, rtol=0)
    assert float(out.log_likelihood[5]) == 0.0
    with pytest.raises(ValueError, match=r"window 1 \(observation rows 3 to 5\)"):
        method.check_observations(ys)
    method.check_observations(ys[:3])  # a window with observations passes


def test_float32_matches_float64():
    # float32 round-off (~1e-7 relative) amplified by the 6-cycle recursion: 1e-4 is loose
    # enough for it and far below the O(1) change any dtype bug would make. (lag = 3: the
    # float64 run is the compiled program of the lag-3 tests above.)
    _, _, _, ys, E0, model = _linear_problem(seed=7)
    # (The rotations differ between the dtypes, but for a linear model the means depend only
    # on the rotation-invariant mean and covariance.)
    out64 = _run(_enkf4d(3, mode="4d"), model, E0, ys)
    model32 = eqx.tree_at(lambda m: m.obs_op, model, model.obs_op.astype(jnp.float32))
    out32 = _run(_enkf4d(3), model32, E0.astype(np.float32), ys.astype(np.float32))
    assert out32.analysis_mean.dtype == jnp.float32
    assert int(out32.status) == 0
    np.testing.assert_allclose(out32.analysis_mean, out64.analysis_mean, atol=1e-4, rtol=1e-4)


def test_jit_vmap_grad_and_same_key_same_result():
    _, _, _, ys, E0, model = _linear_problem(seed=8)
    method = _enkf4d(3, 1.1)  # lag 3: the plain run is the shared program

    def final_mean(factor):
        m = eqx.tree_at(lambda m: m.inflator.factor, method, factor)
        return _run(m, model, E0, ys).analysis_mean[-1]

    eager = final_mean(1.1)
    np.testing.assert_array_equal(final_mean(1.1), eager)  # same key: bit-identical
    # ONE compiled program for jit, vmap and grad: under jax.jit, the vmap over inflation
    # factors of (value, gradient) w.r.t. the factor. The gradient at 1.1 against the
    # central difference of the batched values at 1.1 +- 0.01 (float64; the O(h^2)
    # truncation is ~1e-4 relative here, so 1e-3 separates a right gradient from a wrong one,
    # e.g. a dropped inflation path, which is off by O(1)).
    factors = jnp.array([1.09, 1.1, 1.11])

    def total(factor):
        mean = final_mean(factor)
        return jnp.sum(mean), mean

    (values, batched), grads = jax.jit(jax.vmap(jax.value_and_grad(total, has_aux=True)))(factors)
    np.testing.assert_allclose(batched[1], eager, atol=TOL, rtol=0)
    np.testing.assert_allclose(float(values[1]), float(jnp.sum(eager)), atol=TOL, rtol=0)
    fd = (values[2] - values[0]) / 0.02
    grad = grads[1]
    assert np.isfinite(float(grad)) and abs(float(grad)) > 1e-3
    np.testing.assert_allclose(float(grad), float(fd), rtol=1e-3)


def test_bad_configuration_is_refused():
    for lag in (0, -1, True):
        with pytest.raises(ValueError, match="lag must be a Python int >= 1"):
            EnKF4D(lag=lag)
    with pytest.raises(TypeError):  # the annotation (jaxtyping-checked in tests) or our check
        EnKF4D(lag=1.5)
    with pytest.raises(ValueError, match='mode must be "4d"'):
        EnKF4D(mode="4D-Var")
    with pytest.raises(TypeError, match="stateless AbstractInflator"):
        EnKF4D(inflator=fxp.AdaptiveInflator())
    with pytest.raises(TypeError, match="stateless AbstractInflator"):
        EnKF4D(inflator=1.02)


def test_bad_input_is_refused_at_trace_time():
    _, _, _, ys, E0, model = _linear_problem(seed=9)
    method = _enkf4d(3)
    with pytest.raises(ValueError, match="2-D array"):
        _run(method, model, E0[0], ys)
    with pytest.raises(ValueError, match="N_e >= 2"):
        _run(method, model, E0[:1], ys)
    with pytest.raises(TypeError, match="floating point"):
        _run(method, model, E0.astype(np.int32), ys)
    bad = E0.copy()
    bad[0, 0] = np.nan
    # A concrete NaN ensemble given to init directly is refused there; under `run` the
    # ensemble is traced, so the driver reports it (status NONFINITE from the first cycle).
    with pytest.raises(ValueError, match="initial ensemble"):
        method.init(jax.random.key(0), jnp.asarray(bad), model)
    out = _run(method, model, bad, ys)
    assert int(out.status) == ff.RunResult.NONFINITE and int(out.first_failure) == 0
    with pytest.raises(ValueError, match="N_y=2 entries per time"):
        _run(method, model, E0, ys[:, :2])


def test_nonfinite_forecast_reported_by_driver_status():
    # A traced blow-up (dynamics overflowing to inf in the 3rd cycle) is a non-OK status with
    # the state frozen, not a NaN analysis reported as fine.
    A, H, r, ys, E0, _ = _linear_problem(seed=10)
    blowup = fxp.Model(dynamics=_dynamics(A, blowup=3.0), obs_op=jnp.asarray(H), obs_noise=r)
    out = _run(_enkf4d(3), blowup, E0, ys)
    assert int(out.status) == ff.RunResult.NONFINITE
    assert int(out.first_failure) == 2
    assert bool(jnp.all(jnp.isfinite(out.state.ensemble)))
