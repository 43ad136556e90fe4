"""Climatology and OptInterp against numpy re-derivations of DAPPER's baselines (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.zoo import BaselineDiagnostics, Climatology, OptInterp

# Every comparison below is an algebraic identity evaluated in float64 on 3-6 dimensional
# problems with condition numbers below 1e3: round-off is ~1e-13, so 1e-10 leaves room for
# the different order of operations (Cholesky solves here, numpy.linalg.solve there) while
# any real error (a wrong transpose, a missed mask, the wrong linearisation point) is O(1).
TOL = 1e-10


class _LinearMap(eqx.Module):
    matrix: jax.Array

    def __call__(self, x, t0, t1):
        return self.matrix @ x


def _square_obs(x):
    # A nonlinear observation operator: H(x) = (x_0^2, x_1 x_2).
    return jnp.stack([x[0] ** 2, x[1] * x[2]])


def _square_jacobian(x):
    return np.array([[2 * x[0], 0.0, 0.0], [0.0, x[2], x[1]]])


def _problem(seed=0, n_x=3, n_y=2, n_t=6):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=n_x)
    a = rng.normal(size=(n_x, n_x))
    cov = a @ a.T + 0.5 * np.eye(n_x)
    H = rng.normal(size=(n_y, n_x))
    r = rng.uniform(0.3, 1.5, size=n_y)
    A = 0.9 * np.linalg.qr(rng.normal(size=(n_x, n_x)))[0]
    ys = rng.normal(size=(n_t, n_y)) * 2.0
    return mean, cov, H, r, A, ys


def _drive(method, model, initial, ys):
    """The driver's loop (filterax.filters.run's scan without its bookkeeping)."""
    key = jax.random.key(0)
    times = jnp.arange(1.0, ys.shape[0] + 1.0)
    state = method.init(key, initial, model)

    def cycle(state, xs):
        t_prev, t, y = xs
        state, info = method.step(key, state, model, t_prev, t, y)
        return state, info

    _, infos = jax.lax.scan(cycle, state, (times - 1.0, times, jnp.asarray(ys)))
    return infos


def _numpy_gaussian(background, B, H, R, y, predicted):
    """x^a, diag((I-KH)B), log N(y; predicted, H B H^T + R) on the observed entries."""
    obs = ~np.isnan(y)
    H, R, innov = H[obs], R[np.ix_(obs, obs)], (y - predicted)[obs]
    S = H @ B @ H.T + R
    K = B @ H.T @ np.linalg.inv(S)
    mean = background + K @ innov
    var = np.diag((np.eye(len(background)) - K @ H) @ B)
    sign, logdet = np.linalg.slogdet(S)
    loglik = -0.5 * (obs.sum() * np.log(2 * np.pi) + logdet + innov @ np.linalg.solve(S, innov))
    return mean, var, loglik


def test_climatology_reports_the_climatological_gaussian():
    mean, cov, H, r, A, ys = _problem()
    model = fxp.Model(dynamics=_LinearMap(jnp.asarray(A)), obs_op=jnp.asarray(H), obs_noise=r)
    infos = _drive(Climatology(mean, cov), model, None, ys)
    for k, y in enumerate(ys):
        _, _, loglik = _numpy_gaussian(mean, cov, H, np.diag(r), y, H @ mean)
        np.testing.assert_allclose(infos.analysis_mean[k], mean, rtol=0, atol=TOL)
        np.testing.assert_allclose(infos.forecast_mean[k], mean, rtol=0, atol=TOL)
        np.testing.assert_allclose(infos.log_likelihood[k], loglik, rtol=TOL)
    spread = np.sqrt(np.trace(cov) / 3)
    np.testing.assert_allclose(infos.analysis_spread, spread, rtol=TOL)
    np.testing.assert_allclose(infos.diagnostics.analysis_variance[0], np.diag(cov), rtol=TOL)


@pytest.mark.parametrize("missing", [False, True])
def test_optinterp_matches_dapper_climatological_gain(missing):
    # DAPPER's OptInterp: x^a = mu_c + K (y - H mu_c), K = B H^T (H B H^T + R)^-1, every cycle.
    mean, cov, H, r, A, ys = _problem(seed=1, n_x=4, n_y=3)
    if missing:
        ys[1, 0] = np.nan
        ys[3, [0, 2]] = np.nan
    model = fxp.Model(dynamics=_LinearMap(jnp.asarray(A)), obs_op=jnp.asarray(H), obs_noise=r)
    infos = _drive(OptInterp(mean, cov), model, None, ys)
    for k, y in enumerate(ys):
        xa, var, loglik = _numpy_gaussian(mean, cov, H, np.diag(r), y, H @ mean)
        np.testing.assert_allclose(infos.analysis_mean[k], xa, rtol=0, atol=TOL)
        np.testing.assert_allclose(infos.diagnostics.analysis_variance[k], var, rtol=0, atol=TOL)
        np.testing.assert_allclose(infos.analysis_spread[k], np.sqrt(var.mean()), rtol=TOL)
        np.testing.assert_allclose(infos.log_likelihood[k], loglik, rtol=TOL)
        np.testing.assert_allclose(infos.forecast_mean[k], mean, rtol=0, atol=TOL)
    assert np.all(np.isfinite(np.asarray(infos.innovation)))


def test_optinterp_linearises_a_nonlinear_operator_at_the_background():
    mean, cov, _, _, A, _ = _problem(seed=2)
    ys = np.random.default_rng(3).normal(size=(4, 2)) + 1.0
    r = np.array([0.5, 0.8])
    model = fxp.Model(dynamics=_LinearMap(jnp.asarray(A)), obs_op=_square_obs, obs_noise=r)
    infos = _drive(OptInterp(mean, cov), model, None, ys)
    H = _square_jacobian(mean)
    pred = np.array([mean[0] ** 2, mean[1] * mean[2]])
    for k, y in enumerate(ys):
        xa, var, loglik = _numpy_gaussian(mean, cov, H, np.diag(r), y, pred)
        np.testing.assert_allclose(infos.analysis_mean[k], xa, rtol=0, atol=TOL)
        np.testing.assert_allclose(infos.log_likelihood[k], loglik, rtol=TOL)


def test_optinterp_forecast_background_cycles_the_model():
    # background="forecast": x^b = A x^a_{k-1}, same static B, H at x^b (nonlinear H).
    mean, cov, _, _, A, _ = _problem(seed=4)
    ys = np.random.default_rng(5).normal(size=(5, 2)) + 1.0
    r = np.array([0.4, 0.9])
    x0 = np.array([0.3, -0.2, 0.5])
    model = fxp.Model(dynamics=_LinearMap(jnp.asarray(A)), obs_op=_square_obs, obs_noise=r)
    infos = _drive(OptInterp(mean, cov, background="forecast"), model, jnp.asarray(x0), ys)
    x = x0
    for k, y in enumerate(ys):
        xb = A @ x
        pred = np.array([xb[0] ** 2, xb[1] * xb[2]])
        x, var, _ = _numpy_gaussian(xb, cov, _square_jacobian(xb), np.diag(r), y, pred)
        np.testing.assert_allclose(infos.forecast_mean[k], xb, rtol=0, atol=TOL)
        np.testing.assert_allclose(infos.analysis_mean[k], x, rtol=0, atol=TOL)


def test_structured_background_covariances_agree_with_dense():
    # A diagonal B given as variances / a lineax operator = the same B as a dense matrix.
    mean, _, H, r, A, ys = _problem(seed=6)
    variances = np.array([0.5, 2.0, 1.3])
    model = fxp.Model(dynamics=_LinearMap(jnp.asarray(A)), obs_op=jnp.asarray(H), obs_noise=r)
    dense = _drive(OptInterp(mean, np.diag(variances)), model, None, ys)
    for cov in (variances, lx.DiagonalLinearOperator(jnp.asarray(variances))):
        other = _drive(OptInterp(mean, cov), model, None, ys)
        np.testing.assert_allclose(other.analysis_mean, dense.analysis_mean, rtol=0, atol=TOL)
        np.testing.assert_allclose(other.log_likelihood, dense.log_likelihood, rtol=TOL)


def test_jit_and_vmap_over_the_background_scale():
    mean, cov, H, r, A, ys = _problem(seed=7)
    model = fxp.Model(dynamics=_LinearMap(jnp.asarray(A)), obs_op=jnp.asarray(H), obs_noise=r)

    def analysis(scale):
        return _drive(OptInterp(mean, scale * jnp.asarray(cov)), model, None, ys).analysis_mean

    scales = jnp.array([0.5, 1.0, 2.0])
    batched = jax.jit(jax.vmap(analysis))(scales)
    for i, s in enumerate([0.5, 1.0, 2.0]):
        xa, _, _ = _numpy_gaussian(mean, s * cov, H, np.diag(r), ys[-1], H @ mean)
        np.testing.assert_allclose(batched[i, -1], xa, rtol=0, atol=TOL)
    # the gain is differentiable in B (e.g. to tune its scale): finite, and non-zero
    grad = jax.grad(lambda s: jnp.sum(analysis(s) ** 2))(1.0)
    assert np.isfinite(grad) and grad != 0.0


def test_run_by_the_driver_and_traced_indefinite_b_is_not_ok():
    import filterax.filters as ff

    mean, cov, H, r, A, ys = _problem(seed=8)
    model = fxp.Model(dynamics=_LinearMap(jnp.asarray(A)), obs_op=jnp.asarray(H), obs_noise=r)
    times = jnp.arange(1.0, ys.shape[0] + 1.0)
    out = ff.run(OptInterp(mean, cov), model, None, ys, times, key=jax.random.key(0))
    ref = _drive(OptInterp(mean, cov), model, None, ys)
    assert int(out.status) == out.OK
    np.testing.assert_allclose(out.analysis_mean, ref.analysis_mean, rtol=0, atol=TOL)
    assert isinstance(out.diagnostics, BaselineDiagnostics)

    def status(scale):
        method = OptInterp(mean, scale * jnp.asarray(cov))
        return ff.run(method, model, None, ys, times, key=jax.random.key(0), throw=False).status

    # a traced B = -10 B_c makes H B H^T + R indefinite: a non-finite status, never OK
    statuses = jax.vmap(status)(jnp.array([1.0, -10.0]))
    assert int(statuses[0]) == ff.RunResult.OK
    assert int(statuses[1]) == ff.RunResult.NONFINITE


@pytest.mark.parametrize("cls", [Climatology, OptInterp])
def test_bad_input_is_refused_with_a_message(cls):
    mean, cov, *_ = _problem()
    with pytest.raises(ValueError, match="non-finite"):
        cls(np.array([0.0, np.nan, 1.0]), cov)
    with pytest.raises(ValueError, match="positive-semidefinite"):
        cls(mean, np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="non-negative|negative"):
        cls(mean, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="finite|non-finite"):
        cls(mean, np.where(np.eye(3) > 0, np.nan, cov))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        cls(mean, np.eye(4))
    with pytest.raises(ValueError, match="1-D state vector"):
        cls(np.zeros((3, 1)), cov)
    method = cls(mean, cov)
    model = fxp.Model(dynamics=lambda x, t0, t1: x, obs_op=jnp.eye(3), obs_noise=1.0)
    with pytest.raises(ValueError, match="initial"):
        method.init(jax.random.key(0), jnp.zeros(4), model)
    with pytest.raises(ValueError, match="N_y=3"):
        method.step(
            jax.random.key(0),
            jnp.asarray(mean),
            model,
            jnp.asarray(0.0),
            jnp.asarray(1.0),
            jnp.zeros(2),
        )


def test_optinterp_background_must_be_known():
    mean, cov, *_ = _problem()
    with pytest.raises(ValueError, match="climatology"):
        OptInterp(mean, cov, background="analysis")
