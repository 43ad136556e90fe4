"""The ensemble Kalman–Bucy filter against the Kalman–Bucy filter (continuous observations).

Test cost is XLA compilation, so the tests share compiled programs: one simulated path
(64 fine steps per unit time, 4 unit cycles), one deterministic program (N_e = 5, 8 steps per
cycle, 4 cycles; smaller steps dt come from shorter cycles of the same program), one batched
stochastic program per ensemble size, and XLA's optimisation passes are off.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.zoo import ContinuousStateSpaceModel, EnKBF, coarsen_increments

# A damped rotation observed in its first component: the Riccati solution is not diagonal.
A = np.array([[-0.5, 1.0], [-1.0, -0.5]])
H = np.array([[1.0, 0.0]])
R = 0.5  # intensity (variance per unit time)
Q = np.array([0.2, 0.1])  # intensity
M0 = np.array([0.5, -0.3])
P0 = np.array([[0.6, 0.1], [0.1, 0.4]])
HORIZON = 1.0  # the length of a unit cycle
N_SUB, N_FINE, N_CYCLES = 8, 64, 4  # filter steps and simulation steps per unit; cycles


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    # These tests run tiny programs whose cost is all XLA compilation: skip XLA's optimisation
    # passes (same semantics; round-off at most reassociated, far below the tolerances here).
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


class _LinearDrift(eqx.Module):
    matrix: jax.Array

    def __call__(self, x, t):
        return self.matrix @ x


def _model(n_sub, dt_obs=HORIZON, process_noise=Q):
    return ContinuousStateSpaceModel(
        _LinearDrift(jnp.asarray(A)),
        jnp.asarray(H),
        R,
        dt=dt_obs / n_sub,
        dt_obs=dt_obs,
        x0_mean=jnp.asarray(M0),
        x0_cov=jnp.asarray(P0),
        process_noise=None if process_noise is None else jnp.asarray(process_noise),
    )


def _exact_ensemble(n_e, mean, cov, seed=0):
    """Members whose sample mean and covariance are exactly `mean` and `cov`."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_e, mean.size))
    z -= z.mean(0)
    # Whiten the sample anomalies, then colour them with chol(cov).
    c = np.linalg.cholesky(z.T @ z / (n_e - 1))
    z = np.linalg.solve(c, z.T).T
    return mean + z @ np.linalg.cholesky(cov).T


@eqx.filter_jit
def _drive(method, model, ensemble, increments, times, key):
    """The driver's loop (filterax.filters.run is not a zoo dependency): init, then step per
    cycle with key fold_in(key, k); returns the analysis ensembles and log-likelihoods."""
    state = method.init(key, ensemble, model)
    t_prev = jnp.concatenate([jnp.zeros(1, times.dtype), times[:-1]])

    def body(s, inputs):
        k, y, a, b = inputs
        s, info = method.step(jax.random.fold_in(key, k), s, model, a, b, y)
        return s, (info.analysis, info.forecast_mean, info.log_likelihood, info.innovation)

    steps = jnp.arange(times.shape[0])
    _, out = jax.lax.scan(body, state, (steps, increments, t_prev, times))
    return out


def _kalman_bucy(increments_fine, n_fine, dt_obs=HORIZON, q=Q):
    """Kalman–Bucy mean and covariance at the cycle ends, by diffrax (Tsit5, 4 steps per fine
    interval) with the observation path linear between the fine grid points: the exact filter
    for that path, which converges to the filter of the Brownian path as the grid is refined."""
    h_fine = dt_obs / n_fine
    a, h, qm = jnp.asarray(A), jnp.asarray(H), jnp.diag(jnp.asarray(q))

    def vf(t, y, rate):
        m, p = y
        gain = p @ h.T / R
        dm = a @ m + gain @ (rate - h @ m)
        dp = a @ p + p @ a.T + qm - gain @ h @ p
        return dm, 0.5 * (dp + dp.T)

    term = diffrax.ODETerm(vf)

    def interval(y, inputs):
        t0, dy = inputs
        sol = diffrax.diffeqsolve(
            term, diffrax.Tsit5(), t0, t0 + h_fine, h_fine / 4, y, args=dy / h_fine
        )
        return jax.tree_util.tree_map(lambda leaf: leaf[0], sol.ys), None

    incs = jnp.asarray(increments_fine).reshape(-1, n_fine, H.shape[0])
    y = (jnp.asarray(M0), jnp.asarray(P0))
    means, covs = [], []
    for k in range(incs.shape[0]):
        t0s = k * dt_obs + h_fine * jnp.arange(n_fine)
        y, _ = jax.lax.scan(interval, y, (t0s, incs[k]))
        means.append(np.asarray(y[0]))
        covs.append(np.asarray(y[1]))
    return np.stack(means), np.stack(covs)


def _moments(ensembles):
    ens = np.asarray(ensembles)
    mean = ens.mean(axis=-2)
    anom = ens - mean[..., None, :]
    cov = np.einsum("...ei,...ej->...ij", anom, anom) / (ens.shape[-2] - 1)
    return mean, cov


@eqx.filter_jit
def _stochastic_batch(model, keys, ensemble_keys, n_e, increments, times):
    """The stochastic EnKBF for a batch of (noise key, initial-ensemble key) pairs (vmap): one
    compiled program per ensemble size `n_e` (static)."""

    def one(key, ensemble_key):
        ens0 = model.initial_ensemble(ensemble_key, n_e)
        return _drive(EnKBF("stochastic"), model, ens0, increments, times, key)

    return jax.vmap(one)(keys, ensemble_keys)


N_BATCH = 16  # seeds of the batched stochastic runs


@pytest.fixture(scope="module")
def path():
    """One simulated path: increments on the fine grid (N_FINE per unit) and summed to the
    filters' grid (N_SUB per unit), for N_CYCLES unit cycles."""
    xp = _model(N_FINE).simulate(jax.random.key(3), N_CYCLES)
    coarse = coarsen_increments(xp.increments, 1, N_FINE // N_SUB)
    return xp.increments, coarse, xp.times


def _deterministic(ensemble, increments, times, seed=0):
    # Every deterministic run: _model(N_SUB), (N_CYCLES, N_SUB) increments, N_e = 5.
    key = jax.random.key(seed)
    return _drive(EnKBF("deterministic"), _model(N_SUB), ensemble, increments, times, key)


# --- the deterministic variant is the Euler scheme of the Kalman–Bucy equations -------------


def test_deterministic_enkbf_is_the_euler_scheme_of_the_kalman_bucy_filter(path):
    # With an initial ensemble of exactly (M0, P0), the deterministic EnKBF's anomalies obey
    # a <- (I + dt M) a, M = A - P H^T R^-1 H / 2 + Q P^-1 / 2, and its mean the Euler step of
    # dm = A m dt + P H^T R^-1 (dY - H m dt): re-derived here in numpy. The only difference
    # is round-off and the CG solve of P^-1 (tolerance 1e-10), hence 1e-8.
    _, increments, times = path
    ens0 = _exact_ensemble(5, M0, P0)
    analyses, _, _, _ = _deterministic(jnp.asarray(ens0), increments, times)
    dt = HORIZON / N_SUB
    m, p = M0.copy(), P0.copy()
    qm = np.diag(Q)
    expected = []
    for dy in np.asarray(increments).reshape(-1, 1):
        gain = p @ H.T / R
        mat = A - 0.5 * gain @ H + 0.5 * qm @ np.linalg.inv(p)
        m = m + dt * A @ m + gain @ (dy - dt * H @ m)
        step = np.eye(2) + dt * mat
        p = step @ p @ step.T
        expected.append((m.copy(), p.copy()))
    mean, cov = _moments(analyses)
    for k in range(N_CYCLES):
        m_k, p_k = expected[(k + 1) * N_SUB - 1]
        np.testing.assert_allclose(mean[k], m_k, rtol=0, atol=1e-8)
        np.testing.assert_allclose(cov[k], p_k, rtol=0, atol=1e-8)


# --- convergence to the Kalman–Bucy filter: O(dt) and O(N_e^-1/2) -----------------------


def _slope(sizes, errors):
    return float(np.polyfit(np.log(sizes), np.log(errors), 1)[0])


def test_deterministic_enkbf_converges_to_kalman_bucy_at_first_order_in_dt(path):
    # Euler–Maruyama has strong order 1 for this additive-noise problem; the reference is the
    # diffrax Kalman–Bucy filter on the 64-step path of [0, 1], the filters see the same path
    # summed to 8, 16 and 32 steps. Fitted slopes of log error vs log dt (measured: ~1.0 for
    # the mean, ~1.1 for the covariance) must lie in [0.75, 1.3]: one path, so not exactly 1.
    # The steps dt = 1/8, 1/16, 1/32 are cycles of length 1, 1/2, 1/4 with 8 steps each (the
    # step is (t - t_prev) / n_sub): one compiled program, read at t = 1; the cycles after
    # t = 1 see zero increments and are not used.
    fine, _, _ = path
    m_ref, p_ref = _kalman_bucy(fine[:1], N_FINE)
    ens0 = jnp.asarray(_exact_ensemble(5, M0, P0))
    subs = np.array([8, 16, 32])
    err_m, err_p = [], []
    for n_sub in subs:
        per_unit = int(n_sub) // N_SUB  # cycles per unit time
        incs = np.zeros((N_CYCLES, N_SUB))
        incs[:per_unit] = np.asarray(coarsen_increments(fine[:1], 1, N_FINE // int(n_sub))).reshape(
            per_unit, N_SUB
        )
        times = jnp.arange(1, N_CYCLES + 1) / per_unit
        analyses, *_ = _deterministic(ens0, jnp.asarray(incs), times)
        mean, cov = _moments(analyses[per_unit - 1])
        err_m.append(np.abs(mean - m_ref[0]).max())
        err_p.append(np.abs(cov - p_ref[0]).max())
    assert 0.75 < _slope(1.0 / subs, err_m) < 1.3, err_m
    assert 0.75 < _slope(1.0 / subs, err_p) < 1.3, err_p
    # And the errors are small in absolute terms (P ~ 0.3): the limit is the Kalman–Bucy one.
    assert err_m[-1] < 0.03 and err_p[-1] < 0.01


def _stochastic_mean_field(increments, dt):
    """The N_e -> infinity limit of the Euler-discretised stochastic EnKBF on a linear model
    (numpy): m <- m + dt A m + K (dY - H m dt), P <- (I + dt (A - K H)) P (...)^T
    + dt Q + dt K R K^T with K = P H^T / R."""
    m, p = M0.copy(), P0.copy()
    for dy in np.asarray(increments).reshape(-1, 1):
        gain = p @ H.T / R
        step = np.eye(2) + dt * (A - gain @ H)
        m = m + dt * A @ m + gain @ (dy - dt * H @ m)
        p = step @ p @ step.T + dt * np.diag(Q) + dt * R * gain @ gain.T
    return m, p


def _batch_keys(seed):
    keys = jax.random.split(jax.random.key(seed), N_BATCH)
    return keys, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)


def test_stochastic_enkbf_error_decays_like_inverse_sqrt_ensemble_size(path):
    # Against its own N_e -> infinity limit at the same dt the stochastic EnKBF has only Monte
    # Carlo error, O(N_e^-1/2). RMS over 16 seeds (vmap) at N_e = 8, 32, 128, at the end of
    # the first cycle: the RMS of 16 draws is itself uncertain by ~18%, i.e. +-0.1 on a slope
    # over a factor 16, so the fitted slope must lie in [-0.75, -0.3] (measured ~ -0.5).
    _, increments, times = path
    m_lim, p_lim = _stochastic_mean_field(increments[0], HORIZON / N_SUB)
    keys, ensemble_keys = _batch_keys(4)
    sizes = np.array([8, 32, 128])
    err_m, err_p = [], []
    for n_e in sizes:
        analyses = _stochastic_batch(
            _model(N_SUB), keys, ensemble_keys, int(n_e), increments, times
        )[0]
        mean, cov = _moments(analyses[:, 0])
        err_m.append(np.sqrt(np.mean((mean - m_lim) ** 2)))
        err_p.append(np.sqrt(np.mean((cov - p_lim) ** 2)))
    assert -0.75 < _slope(sizes, err_m) < -0.3, err_m
    assert -0.75 < _slope(sizes, err_p) < -0.3, err_p


# --- transformations, determinism, dtypes, missing data ----------------------------------


def test_enkbf_same_key_same_result_and_grad_matches_finite_differences(path):
    # (The N_e = 8 batch of the rate test: rows 0 and 1 have the same noise key, row 2
    # another; all rows the same initial ensemble.)
    _, increments, times = path
    keys, ensemble_keys = _batch_keys(5)
    keys = jnp.concatenate([keys[:1], keys[:1], keys[2:]])
    ensemble_keys = jnp.concatenate([ensemble_keys[:1]] * N_BATCH)
    a = _stochastic_batch(_model(N_SUB), keys, ensemble_keys, 8, increments, times)[0]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.allclose(a[0], a[2])

    # d(final mean . w)/d(increments) through the deterministic variant (CG solve included),
    # against central differences (step 1e-6, float64: agreement to ~1e-7 expected).
    w = jnp.array([1.0, -2.0])
    ens_det = jnp.asarray(_exact_ensemble(5, M0, P0))

    def loss(incs):
        analyses = _deterministic(ens_det, incs, times)[0]
        return jnp.mean(analyses[-1], axis=0) @ w

    grad = jax.jit(jax.grad(loss))(increments)  # one program (forward and backward)
    direction = jnp.asarray(np.random.default_rng(6).standard_normal(increments.shape))
    eps = 1e-6
    fd = (loss(increments + eps * direction) - loss(increments - eps * direction)) / (2 * eps)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(jnp.sum(grad * direction), fd, rtol=1e-6, atol=1e-8)


def test_enkbf_float32_matches_float64(path):
    # Same problem in float32: relative round-off ~1e-7 per step over 8 steps, and the CG
    # tolerance 1e-5 on the Q P^-1 term (times dt/2): 1e-4 absolute (4 cycles of a stable,
    # damped system: the errors do not grow).
    _, increments, times = path
    ens0 = jnp.asarray(_exact_ensemble(5, M0, P0))
    out64 = _deterministic(ens0, increments, times, seed=7)[0]
    model32 = ContinuousStateSpaceModel(
        _LinearDrift(jnp.asarray(A, jnp.float32)),
        jnp.asarray(H, jnp.float32),
        R,
        dt=0.125,
        dt_obs=1.0,
        x0_mean=jnp.asarray(M0, jnp.float32),
        x0_cov=jnp.asarray(P0, jnp.float32),
        process_noise=jnp.asarray(Q, jnp.float32),
    )
    out32 = _drive(
        EnKBF("deterministic"),
        model32,
        ens0.astype(jnp.float32),
        increments.astype(jnp.float32),
        times.astype(jnp.float32),
        jax.random.key(7),
    )[0]
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, out64, rtol=0, atol=1e-4)


def test_enkbf_missing_increments_are_not_assimilated(path):
    # A cycle whose increments are all NaN is a pure forecast: analysis == forecast (same
    # noise draws), zero innovation and zero log-likelihood; other cycles are unaffected
    # up to the changed state. (The N_e = 8 batch program; every row checked.)
    _, increments, times = path
    incs = increments.at[0].set(jnp.nan)
    keys, ensemble_keys = _batch_keys(8)
    analyses, forecast_means, logliks, innovations = _stochastic_batch(
        _model(N_SUB), keys, ensemble_keys, 8, incs, times
    )
    np.testing.assert_allclose(
        jnp.mean(analyses[:, 0], 1), forecast_means[:, 0], rtol=0, atol=1e-12
    )
    assert np.all(logliks[:, 0] == 0.0) and np.all(innovations[:, 0] == 0.0)
    assert np.all(np.isfinite(analyses)) and np.all(np.isfinite(logliks[:, 1]))
    assert np.all(logliks[:, 1] != 0.0)


def test_enkbf_runs_under_the_one_driver(path):
    # filterax.filters.run drives it like every cycled method (the same loop as _drive:
    # identical numbers), and the status is OK. (Compared with row 0 of the N_e = 8 batch.)
    ff = pytest.importorskip("filterax.filters")
    _, increments, times = path
    keys, ensemble_keys = _batch_keys(9)
    model = _model(N_SUB)
    mine = _stochastic_batch(model, keys, ensemble_keys, 8, increments, times)
    ens0 = model.initial_ensemble(ensemble_keys[0], 8)
    out = ff.run(EnKBF("stochastic"), model, ens0, increments, times, key=keys[0], save="ensembles")
    assert int(out.status) == 0
    np.testing.assert_allclose(out.analyses, mine[0][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.log_likelihood, mine[2][0], rtol=1e-12, atol=1e-12)


# --- bad input -----------------------------------------------------------------------------


def test_bad_continuous_models_are_refused():
    drift = _LinearDrift(jnp.asarray(A))
    common = dict(x0_mean=jnp.asarray(M0), x0_cov=1.0)
    with pytest.raises(ValueError, match="dt must be a finite number > 0"):
        ContinuousStateSpaceModel(drift, jnp.asarray(H), 1.0, dt=0.0, dt_obs=1.0, **common)
    with pytest.raises(ValueError, match="dt must be a finite number > 0"):
        ContinuousStateSpaceModel(drift, jnp.asarray(H), 1.0, dt=-0.1, dt_obs=1.0, **common)
    with pytest.raises(ValueError, match="whole number of grid steps"):
        ContinuousStateSpaceModel(drift, jnp.asarray(H), 1.0, dt=0.3, dt_obs=1.0, **common)
    with pytest.raises(ValueError, match="obs_noise"):
        ContinuousStateSpaceModel(drift, jnp.asarray(H), -1.0, dt=0.1, dt_obs=1.0, **common)
    with pytest.raises(ValueError, match="obs_noise"):
        ContinuousStateSpaceModel(drift, jnp.asarray(H), 0.0, dt=0.1, dt_obs=1.0, **common)
    with pytest.raises(ValueError, match="process_noise"):
        ContinuousStateSpaceModel(
            drift, jnp.asarray(H), 1.0, dt=0.1, dt_obs=1.0, process_noise=-0.1, **common
        )
    with pytest.raises(TypeError, match="drift must be callable"):
        ContinuousStateSpaceModel("A", jnp.asarray(H), 1.0, dt=0.1, dt_obs=1.0, **common)


def test_bad_enkbf_inputs_are_refused(getkey):
    model = _model(4)
    ens0 = model.initial_ensemble(getkey(), 5)
    with pytest.raises(ValueError, match="stochastic"):
        EnKBF("square-root")
    with pytest.raises(ValueError, match="n_sub \\* N_y = 4 \\* 1 = 4"):
        EnKBF().step(getkey(), ens0, model, jnp.asarray(0.0), jnp.asarray(1.0), jnp.zeros(3))
    with pytest.raises(ValueError, match="N_e >= 2"):
        EnKBF().init(getkey(), ens0[:1], model)
    with pytest.raises(ValueError, match="N_e, 2"):
        EnKBF().init(getkey(), jnp.zeros((5, 3)), model)
    from filterax.primitives import Model

    plain = Model(dynamics=lambda x, t0, t1: x, obs_op=jnp.asarray(H), obs_noise=1.0)
    with pytest.raises(TypeError, match="ContinuousStateSpaceModel"):
        EnKBF().init(getkey(), ens0, plain)
    with pytest.raises(ValueError, match="factor"):
        coarsen_increments(jnp.zeros((2, 8)), 1, 3)
