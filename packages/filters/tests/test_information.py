"""InformationFilter: == KalmanFilter, sequential == batch == any order, structure kept."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp

# Information and covariance forms are the same algebra in a different order: in float64 on
# these 3-5 dimensional, well-conditioned problems (cond(P) < 1e3) they agree to ~1e-14 per
# cycle and the errors do not grow over 40 cycles of a contracting model, so 1e-9 (the issue's
# bound) leaves four orders of margin while any algebra error is O(1e-2) or more.
TOL = 1e-9


def _problem(seed=0, n_x=4, n_y=3, n_t=40, singular_q=True):
    rng = np.random.default_rng(seed)
    A = 0.95 * np.linalg.qr(rng.normal(size=(n_x, n_x)))[0]
    H = rng.normal(size=(n_y, n_x))
    q = rng.uniform(0.05, 0.3, size=n_x)
    if singular_q:
        q[1] = 0.0  # a singular Q: the information predict must not invert it
    r = rng.uniform(0.3, 1.5, size=n_y)
    ys = rng.normal(size=(n_t, n_y))
    ys[5, 0] = np.nan
    ys[7, :] = np.nan
    ys[9, [0, n_y - 1]] = np.nan
    return A, H, q, r, ys


def _model(A, H, q, r):
    A = jnp.asarray(A)
    return fxp.Model(
        dynamics=lambda x, t0, t1: A @ x,
        obs_op=jnp.asarray(H),
        obs_noise=jnp.asarray(r),
        process_noise=None if q is None else jnp.asarray(q),
    )


def _run(kernel, model, ys, mean0, cov0):
    times = jnp.arange(1.0, ys.shape[0] + 1.0)
    return ff.run(
        kernel,
        model,
        (mean0, cov0),
        ys,
        times,
        key=jax.random.key(0),
        save="forecast_and_analysis",
    )


@pytest.mark.parametrize("singular_q", [True, False])
def test_equals_the_kalman_filter_over_many_cycles(singular_q):
    A, H, q, r, ys = _problem(singular_q=singular_q)
    model = _model(A, H, q, r)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    mean0, cov0 = jnp.asarray(rng.normal(size=4)), jnp.asarray(a @ a.T + np.eye(4))
    kf = _run(ff.KalmanFilter(), model, ys, mean0, cov0)
    inf = _run(ff.InformationFilter(), model, ys, mean0, cov0)
    assert int(inf.status) == inf.OK
    assert isinstance(inf.analyses, ff.InformationState)
    np.testing.assert_allclose(inf.analysis_mean, kf.analysis_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(inf.forecast_mean, kf.forecast_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(inf.log_likelihood, kf.log_likelihood, rtol=0, atol=TOL)
    precision = np.asarray(inf.analyses.precision)
    np.testing.assert_allclose(
        np.linalg.inv(precision), np.asarray(kf.analyses.cov), rtol=0, atol=TOL
    )
    np.testing.assert_allclose(
        inf.diagnostics.forecast_variance, kf.diagnostics.forecast_variance, rtol=0, atol=TOL
    )


def test_dense_obs_noise_and_nonlinear_operators_match_the_extended_kf():
    # A correlated R and a callable (linearised) obs_op / dynamics: == ExtendedKF (infl 1).
    A, _, q, _, ys = _problem(seed=2, n_y=2)
    R = np.array([[0.8, 0.3], [0.3, 0.6]])

    def obs_op(x):
        return jnp.stack([x[0] + 0.1 * x[1] ** 2, jnp.sin(x[2]) + x[3]])

    A_ = jnp.asarray(A)
    model = fxp.Model(
        dynamics=lambda x, t0, t1: A_ @ x + 0.05 * jnp.tanh(x),
        obs_op=obs_op,
        obs_noise=jnp.asarray(R),
        process_noise=jnp.asarray(q),
    )
    ys = ys[:15]
    mean0, cov0 = jnp.full(4, 0.2), 0.5 * jnp.eye(4)
    ekf = _run(ff.ExtendedKF(), model, ys, mean0, cov0)
    inf = _run(ff.InformationFilter(), model, ys, mean0, cov0)
    np.testing.assert_allclose(inf.analysis_mean, ekf.analysis_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(inf.log_likelihood, ekf.log_likelihood, rtol=0, atol=TOL)


def test_sequential_equals_batch_in_any_order_for_diagonal_r():
    rng = np.random.default_rng(3)
    n_x, n_y = 4, 4
    H = jnp.asarray(rng.normal(size=(n_y, n_x)))
    r = jnp.asarray(rng.uniform(0.3, 1.5, size=n_y))
    y = jnp.asarray(rng.normal(size=n_y))
    inf = ff.InformationFilter()
    prior = inf.init(jnp.asarray(rng.normal(size=n_x)), jnp.asarray(np.diag([1.0, 2.0, 0.5, 1.5])))
    batch, batch_ll = inf.update(prior, y, H, r)
    for order in itertools.permutations(range(n_y)):
        state, total = prior, 0.0
        for i in order:
            only_i = jnp.where(jnp.arange(n_y) == i, y, jnp.nan)  # one component observed
            state, ll = inf.update(state, only_i, H, r)
            total += ll
        np.testing.assert_allclose(state.eta, batch.eta, rtol=0, atol=TOL)
        np.testing.assert_allclose(state.precision, batch.precision, rtol=0, atol=TOL)
        # the chain rule: sum_i log p(y_i | y_<i) = log p(y)
        np.testing.assert_allclose(total, batch_ll, rtol=0, atol=TOL)


def test_missing_observations_carry_no_information():
    rng = np.random.default_rng(4)
    H = jnp.asarray(rng.normal(size=(3, 3)))
    inf = ff.InformationFilter()
    prior = inf.init(jnp.ones(3), 2.0)
    y = jnp.array([0.4, jnp.nan, -1.0])
    full, ll = inf.update(prior, y, H, jnp.array([0.5, 0.7, 0.9]))
    kept = jnp.array([0, 2])
    reduced, ll_reduced = inf.update(prior, y[kept], H[kept], jnp.array([0.5, 0.9]))
    np.testing.assert_allclose(full.eta, reduced.eta, rtol=0, atol=TOL)
    np.testing.assert_allclose(full.precision, reduced.precision, rtol=0, atol=TOL)
    np.testing.assert_allclose(ll, ll_reduced, rtol=0, atol=TOL)
    nothing, ll_nothing = inf.update(prior, jnp.full(3, jnp.nan), H, 1.0)
    np.testing.assert_allclose(nothing.precision, prior.precision, rtol=0, atol=0)
    assert float(ll_nothing) == 0.0


def test_diffuse_prior_is_fine_in_information_form():
    # Lambda = 0 (no prior information) then one full-rank observation: the posterior is the
    # least-squares estimate, which the covariance form cannot start from.
    H = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    r = jnp.array([0.5, 2.0])
    y = jnp.array([1.0, 3.0])
    inf = ff.InformationFilter()
    state = inf.init_information(jnp.zeros(2), jnp.zeros((2, 2)))
    state = inf.predict(state, jnp.eye(2))  # static, no process noise: still diffuse
    state, _ = inf.update(state, y, H, r)
    Hn, Ri = np.asarray(H), np.diag(1 / np.asarray(r))
    ls = np.linalg.solve(Hn.T @ Ri @ Hn, Hn.T @ Ri @ np.asarray(y))
    np.testing.assert_allclose(state.mean, ls, rtol=0, atol=TOL)


def _tridiagonal_problem(n=6, n_t=8, seed=5):
    rng = np.random.default_rng(seed)
    # point observations of every other component plus one two-point average: each row of H
    # touches at most two neighbours, so H^T R^{-1} H is tridiagonal
    # (x_0, (x_0 + x_1) / 2, ..., (x_{n-2} + x_{n-1}) / 2): a connected chain, so the
    # precision is a full tridiagonal and the covariance is dense
    H = np.zeros((n, n))
    H[0, 0] = 1.0
    for i in range(1, n):
        H[i, i - 1] = H[i, i] = 0.5
    r = rng.uniform(0.3, 1.0, size=n)
    ys = rng.normal(size=(n_t, n))
    ys[2, 1] = np.nan
    return H, r, ys


@pytest.mark.parametrize("dynamics", ["identity", "diagonal"])
def test_tridiagonal_precision_stays_tridiagonal_and_exact(dynamics):
    n = 6
    H, r, ys = _tridiagonal_problem(n)
    d = np.ones(n) if dynamics == "identity" else np.linspace(0.8, 1.1, n)
    D = jnp.asarray(np.diag(d))
    model = fxp.Model(
        dynamics=lambda x, t0, t1: D @ x, obs_op=jnp.asarray(H), obs_noise=jnp.asarray(r)
    )
    variances = jnp.linspace(1.0, 2.0, n)
    mean0 = jnp.linspace(-1.0, 1.0, n)
    kf = _run(ff.KalmanFilter(), model, ys, mean0, jnp.diag(variances))
    tri = _run(ff.InformationFilter(structure="tridiagonal"), model, ys, mean0, variances)
    assert int(tri.status) == tri.OK
    # the saved beliefs are tridiagonal operators: O(N_x) storage, never a dense matrix
    assert isinstance(tri.analyses.precision, lx.TridiagonalLinearOperator)
    assert tri.analyses.precision.diagonal.shape == (ys.shape[0], n)
    np.testing.assert_allclose(tri.analysis_mean, kf.analysis_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(tri.log_likelihood, kf.log_likelihood, rtol=0, atol=TOL)
    last = jax.tree_util.tree_map(lambda a: a[-1], tri.analyses)
    np.testing.assert_allclose(
        np.linalg.inv(last.precision_matrix()), kf.analyses.cov[-1], rtol=0, atol=TOL
    )
    # and the precision really is banded (the covariance is not)
    assert np.abs(np.asarray(kf.analyses.cov[-1])[0, -1]) > 1e-4


def test_tridiagonal_refuses_what_would_fill_the_precision_in():
    tri = ff.InformationFilter(structure="tridiagonal")
    state = tri.init(jnp.zeros(4), 1.0)
    with pytest.raises(ValueError, match="process noise"):
        tri.predict(state, jnp.eye(4), 0.1)
    with pytest.raises(ValueError, match="diagonal obs_noise"):
        tri.update(state, jnp.zeros(2), jnp.eye(2, 4), jnp.array([[1.0, 0.2], [0.2, 1.0]]))
    with pytest.raises(ValueError, match="diagonal cov"):
        tri.init(jnp.zeros(2), jnp.array([[1.0, 0.2], [0.2, 1.0]]))
    wide = jnp.array([[1.0, 0.0, 1.0, 0.0]])  # touches components 0 and 2: fills in
    with pytest.raises(eqx.EquinoxRuntimeError, match="more than one apart"):
        eqx.filter_jit(tri.update)(state, jnp.zeros(1), wide, 1.0)
    mixing = jnp.eye(4).at[0, 3].set(0.1)
    with pytest.raises(eqx.EquinoxRuntimeError, match="not diagonal"):
        eqx.filter_jit(tri.predict)(state, mixing)


def test_jit_vmap_and_grad_through_run():
    A, H, q, r, ys = _problem(seed=6, n_t=10)

    def evidence(scale):
        model = _model(A, H, q, scale * jnp.asarray(r))
        out = ff.run(
            ff.InformationFilter(),
            model,
            (jnp.zeros(4), jnp.eye(4)),
            ys,
            jnp.arange(1.0, 11.0),
            key=jax.random.key(0),
        )
        return jnp.sum(out.log_likelihood)

    def kf_evidence(scale):
        model = _model(A, H, q, scale * jnp.asarray(r))
        out = ff.run(
            ff.KalmanFilter(),
            model,
            (jnp.zeros(4), jnp.eye(4)),
            ys,
            jnp.arange(1.0, 11.0),
            key=jax.random.key(0),
        )
        return jnp.sum(out.log_likelihood)

    scales = jnp.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(evidence))(scales), jax.vmap(kf_evidence)(scales), rtol=0, atol=TOL
    )
    np.testing.assert_allclose(
        jax.grad(evidence)(1.0), jax.grad(kf_evidence)(1.0), rtol=1e-8, atol=0
    )


def test_float32_runs_and_agrees_to_single_precision():
    A, H, q, r, ys = _problem(seed=7, n_t=10)
    model = fxp.Model(
        dynamics=lambda x, t0, t1: jnp.asarray(A, jnp.float32) @ x,
        obs_op=jnp.asarray(H, jnp.float32),
        obs_noise=jnp.asarray(r, jnp.float32),
        process_noise=jnp.asarray(q, jnp.float32),
    )
    ys32 = jnp.asarray(ys, jnp.float32)
    out = _run(ff.InformationFilter(), model, ys32, jnp.zeros(4, jnp.float32), jnp.eye(4))
    kf = _run(ff.KalmanFilter(), model, ys32, jnp.zeros(4, jnp.float32), jnp.eye(4))
    assert out.analysis_mean.dtype == jnp.float32
    # float32: eps 1.2e-7 times cond(P) < 1e3 and 10 cycles: 1e-3 absolute on O(1) means
    np.testing.assert_allclose(out.analysis_mean, kf.analysis_mean, rtol=0, atol=1e-3)


def test_bad_input():
    inf = ff.InformationFilter()
    with pytest.raises(ValueError, match="positive-definite|positive definite|variance"):
        inf.init(jnp.zeros(2), jnp.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="r >= N_x"):
        inf.init_sqrt(jnp.zeros(3), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="N_y=2"):
        inf.update(inf.init(jnp.zeros(2), 1.0), jnp.zeros(3), jnp.eye(2), 1.0)
    with pytest.raises(ValueError, match="structure"):
        ff.InformationFilter(structure="banded")
    with pytest.raises(TypeError, match="InformationState"):
        inf.predict(ff.GaussianState(jnp.zeros(2), jnp.eye(2)), jnp.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        inf.init_information(jnp.zeros(2), jnp.array([[1.0, jnp.nan], [0.0, 1.0]]))


def test_run_accepts_an_information_state_as_the_initial_belief():
    # Regression: run(InformationFilter(...), model, InformationState) used to be refused
    # ("the initial condition of a Kalman filter is a Gaussian"), so a GMRF prior with a
    # tridiagonal precision could not start a run without densifying it into (mean, cov).
    n = 6
    H, r, ys = _tridiagonal_problem(n)
    model = fxp.Model(dynamics=lambda x, t0, t1: x, obs_op=jnp.asarray(H), obs_noise=jnp.asarray(r))
    main = jnp.full(n, 2.5)
    off = jnp.full(n - 1, -1.0)
    precision0 = lx.TridiagonalLinearOperator(main, off, off)
    eta0 = jnp.linspace(-1.0, 1.0, n)
    tri = ff.InformationFilter(structure="tridiagonal")
    out = ff.run(
        tri,
        model,
        tri.init_information(eta0, precision0),
        ys,
        jnp.arange(1.0, ys.shape[0] + 1.0),
        key=jax.random.key(0),
        save="ensembles",
    )
    cov0 = jnp.linalg.inv(precision0.as_matrix())
    kf = _run(ff.KalmanFilter(), model, ys, cov0 @ eta0, cov0)
    assert int(out.status) == out.OK
    assert isinstance(out.analyses.precision, lx.TridiagonalLinearOperator)
    np.testing.assert_allclose(out.analysis_mean, kf.analysis_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.log_likelihood, kf.log_likelihood, rtol=0, atol=TOL)
    # the dense information filter takes it too (its own init_information checks it)
    dense = ff.InformationFilter()
    out_dense = ff.run(
        dense,
        model,
        dense.init_information(eta0, precision0.as_matrix()),
        ys,
        jnp.arange(1.0, ys.shape[0] + 1.0),
        key=jax.random.key(0),
    )
    np.testing.assert_allclose(out_dense.analysis_mean, kf.analysis_mean, rtol=0, atol=TOL)
