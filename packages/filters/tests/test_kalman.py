"""Parametric filters (KalmanFilter, SquareRootKF, ExtendedKF) against independent references."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.stats

from filterax.filters import (
    ETKF,
    ExtendedKF,
    GaussianState,
    KalmanFilter,
    SqrtGaussianState,
    SquareRootKF,
)
from filterax.primitives import IndexObs, LinearObs
from filterax.zoo import LinearModel, Lorenz96, StochasticDynamics

# float64 algebraic identities hold to ~1e-13; 1e-9 leaves room for the conditioning of the
# N_x x N_x systems and for round-off accumulated over long runs.
TOL = 1e-9


def _stable_system(seed, n=6, m=4):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = 0.95 * q @ np.diag(rng.uniform(0.5, 1.0, n)) @ q.T  # spectral radius < 0.95
    H = rng.standard_normal((m, n))
    Lq = 0.3 * rng.standard_normal((n, n))
    Q = Lq @ Lq.T + 0.05 * np.eye(n)
    R = np.diag(rng.uniform(0.2, 1.0, m))
    return A, H, Q, R


def _simulate(seed, A, H, Q, R, T):
    rng = np.random.default_rng(seed + 100)
    n, m = A.shape[0], H.shape[0]
    x = rng.standard_normal(n)
    ys = np.empty((T, m))
    for t in range(T):
        x = A @ x + rng.multivariate_normal(np.zeros(n), Q)
        ys[t] = H @ x + rng.multivariate_normal(np.zeros(m), R)
    return ys


def _numpy_kf(mean, cov, ys, A, H, Q, R):
    """Textbook Kalman filter in numpy, missing entries handled by dropping rows."""
    means, covs, logliks = [], [], []
    for y in ys:
        mean = A @ mean
        cov = A @ cov @ A.T + Q
        obs = ~np.isnan(y)
        if not obs.any():  # nothing observed: the analysis is the forecast, log p = 0
            means.append(mean)
            covs.append(cov)
            logliks.append(0.0)
            continue
        Ho, Ro, yo = H[obs], R[np.ix_(obs, obs)], y[obs]
        S = Ho @ cov @ Ho.T + Ro
        K = np.linalg.solve(S, Ho @ cov).T
        v = yo - Ho @ mean
        logliks.append(scipy.stats.multivariate_normal(np.zeros(len(yo)), S).logpdf(v))
        mean = mean + K @ v
        cov = (np.eye(len(mean)) - K @ Ho) @ cov
        means.append(mean)
        covs.append(0.5 * (cov + cov.T))
    return np.array(means), np.array(covs), np.array(logliks)


def test_kalman_equals_numpy_loop_with_missing_observations():
    A, H, Q, R = _stable_system(0)
    ys = _simulate(0, A, H, Q, R, 100)
    ys[::7, 1] = np.nan  # some entries missing
    ys[5] = np.nan  # one fully missing time
    mean0, cov0 = np.ones(6), 2.0 * np.eye(6)
    ref_mean, ref_cov, ref_ll = _numpy_kf(mean0, cov0, ys, A, H, Q, R)
    for filt in (KalmanFilter(), KalmanFilter(form="standard"), SquareRootKF()):
        out = filt.filter(mean0, cov0, ys, np.arange(1.0, 101.0), A, H, R, Q)
        np.testing.assert_allclose(out.mean, ref_mean, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(out.cov, ref_cov, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(out.log_likelihood, ref_ll, rtol=TOL, atol=TOL)
        assert np.all(np.isfinite(out.mean))


def test_kalman_equals_square_root_over_1000_steps():
    A, H, Q, R = _stable_system(1)
    ys = _simulate(1, A, H, Q, R, 1000)
    times = np.arange(1.0, 1001.0)
    args = (np.zeros(6), np.eye(6), ys, times, A, H, R, Q)
    kf = KalmanFilter().filter(*args)
    sr = SquareRootKF().filter(*args)
    # Covariances converge to the Riccati fixed point; differences stay at round-off level.
    np.testing.assert_allclose(sr.mean, kf.mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sr.cov, kf.cov, rtol=0, atol=1e-10)
    np.testing.assert_allclose(sr.forecast_cov, kf.forecast_cov, rtol=0, atol=1e-10)
    np.testing.assert_allclose(sr.log_likelihood, kf.log_likelihood, rtol=1e-10, atol=1e-10)
    chol = sr.final_state.chol
    assert isinstance(sr.final_state, SqrtGaussianState)
    np.testing.assert_array_equal(chol, jnp.tril(chol))
    assert np.all(np.diagonal(chol) >= 0)


def test_joseph_equals_standard_form():
    A, H, Q, R = _stable_system(2)
    ys = _simulate(2, A, H, Q, R, 200)
    args = (np.zeros(6), 3.0 * np.eye(6), ys, np.arange(1.0, 201.0), A, H, R, Q)
    joseph = KalmanFilter(form="joseph").filter(*args)
    standard = KalmanFilter(form="standard").filter(*args)
    np.testing.assert_allclose(joseph.mean, standard.mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(joseph.cov, standard.cov, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("filt", [KalmanFilter(), SquareRootKF(), ExtendedKF()])
def test_log_likelihood_is_gaussian_logpdf_of_innovation(filt):
    rng = np.random.default_rng(3)
    n, m = 5, 3
    mean = rng.standard_normal(n)
    L = rng.standard_normal((n, n))
    cov = L @ L.T + 0.1 * np.eye(n)
    H = rng.standard_normal((m, n))
    R = np.diag([0.5, 1.0, 2.0])
    y = rng.standard_normal(m)
    state, loglik = filt.update(filt.init(mean, cov), y, H, R)
    S = H @ cov @ H.T + R
    expected = scipy.stats.multivariate_normal(np.zeros(m), S).logpdf(y - H @ mean)
    np.testing.assert_allclose(loglik, expected, rtol=TOL)
    # The posterior is the exact conditional Gaussian.
    K = cov @ H.T @ np.linalg.inv(S)
    np.testing.assert_allclose(state.mean, mean + K @ (y - H @ mean), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(state.cov, cov - K @ H @ cov, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("filt", [KalmanFilter(), SquareRootKF()])
def test_missing_entries_equal_observed_subset(filt):
    rng = np.random.default_rng(4)
    n = 4
    mean, cov = rng.standard_normal(n), np.eye(n) + 0.3
    H = rng.standard_normal((3, n))
    R = np.array([[1.0, 0.2, 0.0], [0.2, 1.5, 0.1], [0.0, 0.1, 0.8]])  # dense R
    y = np.array([0.3, np.nan, -1.2])
    keep = np.array([0, 2])
    full, ll_full = filt.update(filt.init(mean, cov), y, H, lx.MatrixLinearOperator(R))
    sub, ll_sub = filt.update(filt.init(mean, cov), y[keep], H[keep], R[np.ix_(keep, keep)])
    np.testing.assert_allclose(full.mean, sub.mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(full.cov, sub.cov, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(ll_full, ll_sub, rtol=TOL)
    # No observation at all: the update is the identity with log-likelihood 0.
    none, ll_none = filt.update(filt.init(mean, cov), np.full(3, np.nan), H, 1.0)
    np.testing.assert_allclose(none.mean, mean, atol=1e-14)
    np.testing.assert_allclose(none.cov, cov, atol=1e-14)
    assert float(ll_none) == 0.0


def test_observation_operator_forms_agree():
    mean, cov = np.array([1.0, -2.0, 0.5]), np.diag([1.0, 2.0, 3.0])
    y = np.array([0.4, 0.1])
    H = np.eye(3)[[0, 2]]
    kf = KalmanFilter()
    ref, ll_ref = kf.update(kf.init(mean, cov), y, H, 0.5)
    for op in (
        IndexObs([0, 2]),
        LinearObs(H),
        lx.MatrixLinearOperator(jnp.asarray(H)),
        lambda x: x[jnp.array([0, 2])],
    ):
        out, ll = kf.update(kf.init(mean, cov), y, op, lx.DiagonalLinearOperator(jnp.full(2, 0.5)))
        np.testing.assert_allclose(out.mean, ref.mean, rtol=TOL)
        np.testing.assert_allclose(out.cov, ref.cov, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(ll, ll_ref, rtol=TOL)


def test_extended_kf_equals_kf_on_linear_model():
    A, H, Q, R = _stable_system(5)
    ys = _simulate(5, A, H, Q, R, 50)
    times = np.arange(1.0, 51.0)
    model = LinearModel(A)  # callable dynamics, Jacobian by autodiff
    Hj = jnp.asarray(H)
    kf = KalmanFilter(form="standard").filter(np.zeros(6), np.eye(6), ys, times, A, H, R, Q)
    Aj = jnp.asarray(A)
    # The zoo's LinearModel only supports reverse mode for traced intervals; "fwd" gets a
    # plain function.
    for jac, dynamics in (("rev", model), ("fwd", lambda x, t0, t1: Aj @ x)):
        ekf = ExtendedKF(jacobian=jac).filter(
            np.zeros(6), np.eye(6), ys, times, dynamics, lambda x: Hj @ x, R, Q
        )
        np.testing.assert_allclose(ekf.mean, kf.mean, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(ekf.cov, kf.cov, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(ekf.log_likelihood, kf.log_likelihood, rtol=TOL)


def test_extended_kf_inflation_is_per_unit_time_and_linearises_nonlinear_models():
    model = Lorenz96(n=8, dt=0.05)
    x0 = 8.0 + jnp.arange(8.0) / 10
    cov = 0.1 * jnp.eye(8)
    state = GaussianState(mean=x0, cov=cov)
    out = ExtendedKF(infl=4.0).predict(state, model, 0.01, 0.0, 0.25)
    F = jax.jacfwd(lambda x: model(x, 0.0, 0.25))(x0)
    expected = 4.0**0.25 * F @ cov @ F.T + 0.01 * jnp.eye(8)
    np.testing.assert_allclose(out.cov, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.mean, model(x0, 0.0, 0.25), rtol=1e-12)


def test_square_root_kf_stays_psd_in_float32_where_covariance_forms_fail():
    # Precise observations of half the state with a vague prior: the covariance forms lose
    # definiteness in float32 (S becomes indefinite and the Cholesky returns NaN), while the
    # QR form only ever builds L L^T.
    rng = np.random.default_rng(1)
    n, T = 6, 300
    A = np.linalg.qr(rng.standard_normal((n, n)))[0]
    H = np.eye(n)[:3]
    R, Q, P0 = 1e-6 * np.ones(3), np.full(n, 1e-8), 1e3 * np.eye(n)
    ys = rng.standard_normal((T, 3))
    times = np.arange(1.0, T + 1.0)
    f32 = [jnp.asarray(a, jnp.float32) for a in (np.zeros(n), P0, ys, times, A, H, R, Q)]
    f64 = [jnp.asarray(a, jnp.float64) for a in (np.zeros(n), P0, ys, times, A, H, R, Q)]
    standard32 = KalmanFilter(form="standard").filter(*f32)
    assert not np.all(np.isfinite(standard32.cov))  # the stress is real
    sr32 = SquareRootKF().filter(*f32)
    ref = KalmanFilter().filter(*f64)
    assert sr32.mean.dtype == jnp.float32 and sr32.cov.dtype == jnp.float32
    chol = np.asarray(sr32.final_state.chol, np.float64)
    assert np.all(np.isfinite(chol)) and np.all(np.diagonal(chol) >= 0)
    for cov in np.asarray(sr32.cov, np.float64)[::50]:
        assert np.linalg.eigvalsh(cov).min() >= -1e-6 * np.abs(cov).max()
    # float32 accuracy relative to the float64 reference (eps_32 ~ 1.2e-7, a few hundred
    # cycles of round-off).
    np.testing.assert_allclose(sr32.mean, ref.mean, rtol=0, atol=1e-5 * np.abs(ref.mean).max())
    np.testing.assert_allclose(sr32.cov, ref.cov, rtol=0, atol=1e-5 * np.abs(ref.cov).max())


@pytest.mark.parametrize("filt", [KalmanFilter(), SquareRootKF()])
def test_filter_is_jittable_and_gradient_matches_finite_differences(filt):
    A, H, Q, R = _stable_system(6)
    ys = jnp.asarray(_simulate(6, A, H, Q, R, 40))
    times = jnp.arange(1.0, 41.0)

    def evidence(scale, noise):
        out = filt.filter(jnp.zeros(6), jnp.eye(6), ys, times, scale * A, H, noise * R, Q)
        return out.log_likelihood.sum()

    jitted = jax.jit(evidence)
    np.testing.assert_allclose(jitted(1.0, 1.0), evidence(1.0, 1.0), rtol=1e-12)
    grads = jax.grad(evidence, argnums=(0, 1))(1.0, 1.0)
    h = 1e-5
    for i, g in enumerate(grads):
        plus = jitted(*[1.0 + h * (j == i) for j in range(2)])
        minus = jitted(*[1.0 - h * (j == i) for j in range(2)])
        # central differences: O(h^2) truncation plus ~1e-16 * |value| / h round-off
        np.testing.assert_allclose(g, (plus - minus) / (2 * h), rtol=1e-6)


def test_kalman_analysis_of_ensemble_is_exact_posterior_of_sample_statistics(getkey):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((12, 5)) + np.arange(5.0)
    H = rng.standard_normal((7, 5))
    y = rng.standard_normal(7)
    mean, cov = X.mean(0), np.cov(X.T)
    S = H @ cov @ H.T + 0.5 * np.eye(7)
    K = cov @ H.T @ np.linalg.inv(S)
    Hj = jnp.asarray(H)
    for filt in (KalmanFilter(), KalmanFilter(form="standard"), SquareRootKF(), ExtendedKF()):
        analysis = jax.jit(lambda k, X, y, f=filt: f.analysis(k, X, y, lambda x: Hj @ x, 0.5))
        out = analysis(getkey(), jnp.asarray(X), jnp.asarray(y))
        Xa = np.asarray(out.particles)
        np.testing.assert_allclose(Xa.mean(0), mean + K @ (y - H @ mean), rtol=TOL, atol=TOL)
        np.testing.assert_allclose(np.cov(Xa.T), cov - K @ H @ cov, rtol=TOL, atol=TOL)
        expected = scipy.stats.multivariate_normal(np.zeros(7), S).logpdf(y - H @ mean)
        np.testing.assert_allclose(out.log_likelihood, expected, rtol=TOL)
    # The symmetric square root is the ETKF transform: the same members as the ETKF.
    etkf = ETKF().analysis(None, jnp.asarray(X), jnp.asarray(y), LinearObs(H), 0.5)
    np.testing.assert_allclose(Xa, etkf.particles, rtol=TOL, atol=TOL)


def test_kalman_result_scores_are_dapper_time_means():
    A, H, Q, R = _stable_system(8)
    ys = _simulate(8, A, H, Q, R, 30)
    truth = np.random.default_rng(0).standard_normal((30, 6))
    out = KalmanFilter().filter(np.zeros(6), np.eye(6), ys, np.arange(1.0, 31.0), A, H, R, Q)
    diag = KalmanFilter().filter(
        np.zeros(6), np.eye(6), ys, np.arange(1.0, 31.0), A, H, R, Q, save_cov="diagonal"
    )
    np.testing.assert_allclose(diag.cov, np.diagonal(out.cov, axis1=1, axis2=2), rtol=1e-14)
    s = out.scores(truth, 10)
    mean = np.asarray(out.mean)
    expected = np.mean(np.sqrt(np.mean((mean[10:] - truth[10:]) ** 2, axis=1)))
    np.testing.assert_allclose(s["rmse_a"], expected, rtol=1e-12)
    var = np.diagonal(np.asarray(out.cov), axis1=1, axis2=2)[10:]
    np.testing.assert_allclose(s["spread_a"], np.mean(np.sqrt(var.mean(1))), rtol=1e-12)
    np.testing.assert_allclose(diag.scores(truth, 10)["spread_f"], s["spread_f"], rtol=1e-12)


def test_kalman_bad_inputs_raise_clear_errors():
    kf = KalmanFilter()
    with pytest.raises(ValueError, match="joseph"):
        KalmanFilter(form="information")
    with pytest.raises(ValueError, match="infl"):
        ExtendedKF(infl=-1.0)
    state = kf.init(np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N_y=2"):
        kf.update(state, np.zeros(3), np.eye(3)[:2], 1.0)
    with pytest.raises(ValueError, match="square"):
        kf.predict(state, np.eye(4))
    with pytest.raises(TypeError, match="process_noise"):
        kf.predict(state, StochasticDynamics(LinearModel(np.eye(3)), noise=0.1), None, 0.0, 1.0)
    with pytest.raises(TypeError, match="SqrtGaussianState"):
        SquareRootKF().update(state, np.zeros(3), np.eye(3), 1.0)
    with pytest.raises(ValueError, match="obs_times"):
        kf.filter(
            np.zeros(3), np.eye(3), np.zeros((5, 3)), np.arange(4.0), np.eye(3), np.eye(3), 1.0
        )
    with pytest.raises(ValueError, match="save_cov"):
        kf.filter(
            np.zeros(3),
            np.eye(3),
            np.zeros((5, 3)),
            np.arange(5.0),
            np.eye(3),
            np.eye(3),
            1.0,
            save_cov="all",
        )
    with pytest.raises(ValueError, match="burn_in_cycles"):
        kf.filter(
            np.zeros(3), np.eye(3), np.zeros((5, 3)), np.arange(5.0), np.eye(3), np.eye(3), 1.0
        ).scores(np.zeros((5, 3)), 5)
