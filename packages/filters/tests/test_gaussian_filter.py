"""The Kalman filters as cycled methods: `GaussianFilter` run by the one driver `run`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import LinearModel

# float64: the Kalman recursions agree with a numpy re-derivation to round-off (~1e-13 over
# these short runs); 1e-10 leaves room for the conditioning of the N_x x N_x solves.
TOL = 1e-10
N_X, N_Y, T = 5, 3, 40


def _system(seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((N_X, N_X)))
    A = 0.95 * q @ np.diag(rng.uniform(0.5, 1.0, N_X)) @ q.T  # spectral radius < 0.95
    H = rng.standard_normal((N_Y, N_X))
    Lq = 0.3 * rng.standard_normal((N_X, N_X))
    Q = Lq @ Lq.T + 0.05 * np.eye(N_X)
    R = np.diag(rng.uniform(0.2, 1.0, N_Y))
    x = rng.standard_normal(N_X)
    ys = np.empty((T, N_Y))
    for t in range(T):
        x = A @ x + rng.multivariate_normal(np.zeros(N_X), Q)
        ys[t] = H @ x + rng.multivariate_normal(np.zeros(N_Y), R)
    ys[::6, 1] = np.nan  # some entries missing
    ys[4] = np.nan  # one fully missing time
    return A, H, Q, R, ys


class MatrixDynamics(eqx.Module):
    """``x -> A x``: a module of arrays (not a fresh closure, so repeated runs reuse one
    compile) that reverse mode can differentiate twice (the zoo's stepped models cannot)."""

    A: jax.Array

    def __call__(self, x, t0, t1):
        return self.A @ x


def _model(A, H, Q, R, obs_noise_scale=1.0):
    return fxp.Model(
        dynamics=MatrixDynamics(jnp.asarray(A)),
        obs_op=jnp.asarray(H),
        obs_noise=obs_noise_scale * jnp.asarray(R),
        process_noise=jnp.asarray(Q),
    )


def _numpy_kf(mean, cov, ys, A, H, Q, R):
    """Textbook Kalman filter, missing entries dropped; also the forecast innovations."""
    rows = {k: [] for k in ("mf", "Pf", "ma", "Pa", "ll", "rms_innovation")}
    for y in ys:
        mean = A @ mean
        cov = A @ cov @ A.T + Q
        rows["mf"].append(mean)
        rows["Pf"].append(cov)
        obs = ~np.isnan(y)
        v = y[obs] - H[obs] @ mean
        rows["rms_innovation"].append(np.sqrt(np.mean(v**2)) if obs.any() else 0.0)
        if obs.any():
            Ho, Ro = H[obs], R[np.ix_(obs, obs)]
            S = Ho @ cov @ Ho.T + Ro
            K = np.linalg.solve(S, Ho @ cov).T
            rows["ll"].append(scipy.stats.multivariate_normal(np.zeros(obs.sum()), S).logpdf(v))
            mean = mean + K @ v
            cov = (np.eye(N_X) - K @ Ho) @ cov
            cov = 0.5 * (cov + cov.T)
        else:
            rows["ll"].append(0.0)
        rows["ma"].append(mean)
        rows["Pa"].append(cov)
    return {k: np.array(v) for k, v in rows.items()}


TIMES = np.arange(1.0, T + 1.0)
MEAN0, COV0 = np.ones(N_X), 2.0 * np.eye(N_X)


def _run(method, model, initial, ys, times=TIMES, **kwargs):
    return ff.run(method, model, initial, ys, times, key=jax.random.key(0), **kwargs)


@pytest.mark.parametrize(
    "kf", [ff.KalmanFilter(), ff.KalmanFilter(form="standard"), ff.SquareRootKF(), ff.ExtendedKF()]
)
def test_run_equals_legacy_filter_bit_for_bit(kf):
    # `filter` is a thin wrapper over the driver: the very same numbers, not just close ones.
    A, H, Q, R, ys = _system(1)
    model = _model(A, H, Q, R)
    legacy = kf.filter(MEAN0, COV0, ys, TIMES, model.dynamics, model.obs_op, model.obs_noise, Q)
    diagonal = kf.filter(
        MEAN0,
        COV0,
        ys,
        TIMES,
        model.dynamics,
        model.obs_op,
        model.obs_noise,
        Q,
        save_cov="diagonal",
    )
    for method in (ff.GaussianFilter(kf), kf):  # run wraps a bare Kalman filter itself
        out = _run(method, model, kf.init(MEAN0, COV0), ys, save="forecast_and_analysis")
        np.testing.assert_array_equal(out.analysis_mean, legacy.mean)
        np.testing.assert_array_equal(out.forecast_mean, legacy.forecast_mean)
        np.testing.assert_array_equal(out.log_likelihood, legacy.log_likelihood)
        np.testing.assert_array_equal(out.diagnostics.analysis_variance, diagonal.cov)
        np.testing.assert_array_equal(out.diagnostics.forecast_variance, diagonal.forecast_cov)
        for a, b in zip(
            jax.tree.leaves(out.state), jax.tree.leaves(legacy.final_state), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        if isinstance(kf, ff.SquareRootKF):
            # The stacked factors, multiplied out after the scan (a batched matmul): round-off.
            np.testing.assert_allclose(out.analyses.cov, legacy.cov, rtol=0, atol=1e-13)
            np.testing.assert_allclose(out.forecasts.cov, legacy.forecast_cov, rtol=0, atol=1e-13)
        else:
            np.testing.assert_array_equal(out.analyses.cov, legacy.cov)
            np.testing.assert_array_equal(out.forecasts.cov, legacy.forecast_cov)
    assert int(legacy.status) == ff.KalmanResult.OK and int(legacy.first_failure) == -1
    np.testing.assert_array_equal(legacy.cycle_status, np.zeros(T, np.int32))


@pytest.mark.parametrize("kf", [ff.KalmanFilter(), ff.SquareRootKF()])
def test_run_equals_numpy_kalman_filter(kf):
    A, H, Q, R, ys = _system(2)
    ref = _numpy_kf(MEAN0, COV0, ys, A, H, Q, R)
    out = _run(
        kf,
        _model(A, H, Q, R),
        ff.GaussianState(jnp.asarray(MEAN0), jnp.asarray(COV0)),
        ys,
        save="ensembles",
    )
    np.testing.assert_allclose(out.analysis_mean, ref["ma"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(out.forecast_mean, ref["mf"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(out.analyses.cov, ref["Pa"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(out.log_likelihood, ref["ll"], rtol=TOL, atol=TOL)
    var_a = np.diagonal(ref["Pa"], axis1=1, axis2=2)
    var_f = np.diagonal(ref["Pf"], axis1=1, axis2=2)
    np.testing.assert_allclose(out.diagnostics.analysis_variance, var_a, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(out.diagnostics.forecast_variance, var_f, rtol=TOL, atol=TOL)
    # DAPPER's rmv of a Gaussian: sqrt(trace(P) / N_x).
    np.testing.assert_allclose(out.analysis_spread, np.sqrt(var_a.mean(1)), rtol=TOL)
    np.testing.assert_allclose(out.forecast_spread, np.sqrt(var_f.mean(1)), rtol=TOL)
    assert out.forecasts is None


def test_innovation_drives_the_divergence_flag():
    # The innovation a GaussianFilter reports is y - H x^f: with a threshold between two
    # cycles' RMS innovations (numpy), exactly the cycles above it are flagged as diverged.
    A, H, Q, R, ys = _system(3)
    rms = _numpy_kf(MEAN0, COV0, ys, A, H, Q, R)["rms_innovation"]
    threshold = float(np.sort(rms)[-4])  # the three largest lie above it
    out = _run(
        ff.KalmanFilter(),
        _model(A, H, Q, R),
        (MEAN0, COV0),
        ys,
        divergence_threshold=threshold,
        throw=False,
    )
    expected = np.where(rms > threshold, ff.RunResult.DIVERGED, ff.RunResult.OK)
    np.testing.assert_array_equal(out.cycle_status, expected)
    assert int(out.n_diverged) == 3 and int(out.status) == ff.RunResult.DIVERGED
    assert np.all(np.isfinite(out.analysis_mean))  # a diverged cycle is still assimilated


def test_square_root_kf_equals_kf_through_run():
    A, H, Q, R, ys = _system(4)
    model = _model(A, H, Q, R)
    kf = _run(
        ff.KalmanFilter(),
        model,
        ff.GaussianState(jnp.asarray(MEAN0), jnp.asarray(COV0)),
        ys,
        save="ensembles",
    )
    chol0 = np.linalg.cholesky(COV0)
    for initial in (
        ff.GaussianState(jnp.asarray(MEAN0), jnp.asarray(COV0)),
        ff.SqrtGaussianState(jnp.asarray(MEAN0), jnp.asarray(chol0)),
    ):
        sr = _run(ff.SquareRootKF(), model, initial, ys, save="ensembles")
        assert isinstance(sr.state, ff.SqrtGaussianState)
        # Algebraically identical recursions (covariance vs QR-array form): 1e-9.
        np.testing.assert_allclose(sr.analysis_mean, kf.analysis_mean, rtol=0, atol=1e-9)
        np.testing.assert_allclose(sr.analyses.cov, kf.analyses.cov, rtol=0, atol=1e-9)
        np.testing.assert_allclose(sr.log_likelihood, kf.log_likelihood, rtol=1e-9)
        np.testing.assert_allclose(sr.analysis_spread, kf.analysis_spread, rtol=1e-9)


def test_extended_kf_on_a_linear_model_equals_kf():
    A, H, Q, R, ys = _system(5)
    kf = _run(ff.KalmanFilter(form="standard"), _model(A, H, Q, R), (MEAN0, COV0), ys)
    Hj = jnp.asarray(H)
    model = fxp.Model(LinearModel(A), lambda x: Hj @ x, jnp.asarray(R), process_noise=Q)
    chol0 = np.linalg.cholesky(COV0)
    ekf = _run(
        ff.ExtendedKF(), model, ff.SqrtGaussianState(jnp.asarray(MEAN0), jnp.asarray(chol0)), ys
    )
    # Autodiff Jacobians of linear maps are exact: agreement to round-off.
    np.testing.assert_allclose(ekf.analysis_mean, kf.analysis_mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(ekf.log_likelihood, kf.log_likelihood, rtol=TOL)
    np.testing.assert_allclose(
        ekf.diagnostics.analysis_variance, kf.diagnostics.analysis_variance, rtol=TOL
    )


@pytest.mark.parametrize("kf", [ff.KalmanFilter(), ff.SquareRootKF()])
def test_non_finite_cycle_freezes_the_gaussian_and_sets_the_status(kf):
    # Dynamics that blow up in cycle 10 (an inf observation no longer does: it is a missing
    # one): that cycle and all later ones are not assimilated (NaN rows, status 1), the state
    # stays the analysis of cycle 9, nothing before changes.
    A, H, Q, R, ys = _system(6)

    def blowing_up(after):
        def dynamics(x, t0, t1):
            return jnp.asarray(A) @ x * jnp.where(t1 > after, jnp.nan, 1.0)

        return fxp.Model(dynamics, jnp.asarray(H), jnp.asarray(R), process_noise=jnp.asarray(Q))

    model = blowing_up(float(TIMES[9]) + 0.5)
    good = _run(kf, blowing_up(np.inf), (MEAN0, COV0), ys)
    bad = ys
    out = _run(kf, model, (MEAN0, COV0), bad, throw=False)
    assert int(out.status) == ff.RunResult.NONFINITE and int(out.first_failure) == 10
    np.testing.assert_array_equal(out.cycle_status, (np.arange(T) >= 10).astype(np.int32))
    np.testing.assert_array_equal(out.analysis_mean[:10], good.analysis_mean[:10])
    np.testing.assert_array_equal(out.log_likelihood[:10], good.log_likelihood[:10])
    assert np.all(np.isnan(out.analysis_mean[10:])) and np.all(np.isnan(out.log_likelihood[10:]))
    assert np.all(np.isnan(out.diagnostics.analysis_variance[10:]))
    upto9 = _run(kf, blowing_up(np.inf), (MEAN0, COV0), ys[:10], TIMES[:10])
    for a, b in zip(jax.tree.leaves(out.state), jax.tree.leaves(upto9.state), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(Exception, match="run: the ensemble became non-finite"):
        _run(kf, model, (MEAN0, COV0), bad)
    # The legacy form reports the same through KalmanResult (and does not raise by default).
    legacy = kf.filter(MEAN0, COV0, bad, TIMES, model.dynamics, model.obs_op, model.obs_noise, Q)
    assert int(legacy.status) == ff.KalmanResult.NONFINITE and int(legacy.first_failure) == 10
    np.testing.assert_array_equal(legacy.cycle_status, out.cycle_status)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(legacy.final_state))
    with pytest.raises(Exception, match="filter: the ensemble became non-finite"):
        kf.filter(
            MEAN0, COV0, bad, TIMES, model.dynamics, model.obs_op, model.obs_noise, Q, throw=True
        )


@pytest.mark.parametrize("kf", [ff.KalmanFilter(), ff.SquareRootKF()])
def test_run_is_jittable_vmappable_and_differentiable(kf):
    A, H, Q, R, ys = _system(7)
    ys = np.nan_to_num(ys, nan=0.5)  # keep every entry: the evidence is then smooth in s

    def evidence(scale):
        out = _run(kf, _model(A, H, Q, R, scale), (MEAN0, COV0), ys)
        return out.log_likelihood.sum()

    jitted = jax.jit(evidence)
    np.testing.assert_allclose(jitted(1.3), evidence(1.3), rtol=1e-13)
    scales = jnp.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(
        jax.vmap(evidence)(scales), [evidence(s) for s in scales], rtol=1e-13
    )
    # d evidence / d (obs-noise scale) against central differences: O(h^2) truncation plus
    # ~1e-16 |value| / h round-off, both far below rtol=1e-6 at h=1e-5.
    h = 1e-5
    for s in (0.7, 1.0):
        fd = (jitted(s + h) - jitted(s - h)) / (2 * h)
        np.testing.assert_allclose(jax.grad(evidence)(s), fd, rtol=1e-6)
    # The log evidence of a linear-Gaussian model is also available in closed form:
    # y_{1:T} ~ N(mu, Sigma) for the stacked observations.
    Rs = 1.3 * R
    blocks = [np.linalg.matrix_power(A, k + 1) for k in range(T)]
    mu = np.concatenate([H @ Ak @ MEAN0 for Ak in blocks])
    cov_x = [[None] * T for _ in range(T)]
    P = COV0
    Ps = []
    for _ in range(T):
        P = A @ P @ A.T + Q
        Ps.append(P)
    for i in range(T):
        for j in range(T):
            lo, hi = min(i, j), max(i, j)
            cross = np.linalg.matrix_power(A, hi - lo) @ Ps[lo]
            cov_x[i][j] = cross if i >= j else cross.T
    Sigma = np.block([[H @ cov_x[i][j] @ H.T for j in range(T)] for i in range(T)])
    Sigma += np.kron(np.eye(T), Rs)
    exact = scipy.stats.multivariate_normal(mu, Sigma).logpdf(ys.reshape(-1))
    np.testing.assert_allclose(evidence(1.3), exact, rtol=1e-10)


def test_save_modes_and_initial_forms():
    A, H, Q, R, ys = _system(8)
    model = _model(A, H, Q, R)
    kf = ff.KalmanFilter()
    stats = _run(kf, model, (MEAN0, COV0), ys)
    assert stats.forecasts is None and stats.analyses is None
    assert stats.diagnostics.analysis_variance.shape == (T, N_X)
    analyses = _run(kf, model, (MEAN0, COV0), ys, save="ensembles")
    assert analyses.forecasts is None
    assert isinstance(analyses.analyses, ff.GaussianState)
    assert analyses.analyses.cov.shape == (T, N_X, N_X)
    both = _run(kf, model, (MEAN0, COV0), ys, save="forecast_and_analysis")
    assert both.forecasts.cov.shape == (T, N_X, N_X)
    np.testing.assert_array_equal(both.analyses.cov, analyses.analyses.cov)
    np.testing.assert_array_equal(both.analysis_mean, stats.analysis_mean)
    # The variances are the diagonals of the saved covariances, whatever is saved.
    np.testing.assert_array_equal(
        jnp.diagonal(both.forecasts.cov, axis1=1, axis2=2), stats.diagnostics.forecast_variance
    )
    # A stack of square-root states multiplies out per cycle.
    sr = _run(ff.SquareRootKF(), model, (MEAN0, COV0), ys, save="ensembles")
    assert sr.analyses.chol.shape == (T, N_X, N_X)
    np.testing.assert_allclose(sr.analyses.cov, analyses.analyses.cov, rtol=0, atol=1e-9)
    # The initial condition: a (mean, cov) pair, a GaussianState or a SqrtGaussianState, and a
    # cov in any form init accepts (here variances).
    for initial in (
        ff.GaussianState(jnp.asarray(MEAN0), jnp.asarray(COV0)),
        ff.SqrtGaussianState(jnp.asarray(MEAN0), jnp.linalg.cholesky(COV0)),
        (MEAN0, np.full(N_X, 2.0)),
    ):
        out = _run(kf, model, initial, ys)
        np.testing.assert_allclose(out.analysis_mean, stats.analysis_mean, rtol=1e-12, atol=1e-12)
    assert isinstance(kf.as_cycled_method(), ff.GaussianFilter)
    assert ff.as_cycled_method(kf).kernel is kf


def test_gaussian_filter_bad_inputs_raise_clear_errors():
    A, H, Q, R, ys = _system(9)
    model = _model(A, H, Q, R)
    with pytest.raises(TypeError, match="AbstractKalmanFilter"):
        ff.GaussianFilter(ff.ETKF())
    with pytest.raises(TypeError, match="GaussianState"):
        _run(ff.KalmanFilter(), model, jnp.zeros((10, N_X)), ys)
    with pytest.raises(ValueError, match="cov"):  # a (mean, cov) pair goes through kf.init
        _run(ff.KalmanFilter(), model, (MEAN0, np.eye(N_X + 1)), ys)
    with pytest.raises(ValueError, match="N_y"):
        _run(ff.KalmanFilter(), model, (MEAN0, COV0), ys[:, :2])
