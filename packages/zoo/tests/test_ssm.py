"""Tests for StateSpaceModel / TwinExperiment (DAPPER time conventions, noise statistics)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from filterax.primitives import IdentityObs, LinearObs
from filterax.zoo import LinearModel, StateSpaceModel, StochasticDynamics, TwinExperiment


class _LinearMap(eqx.Module):
    """x -> A x per observation window (autonomous)."""

    matrix: jax.Array

    def __call__(self, x, t0, t1):
        return self.matrix @ x


class _DecayForced(eqx.Module):
    """Exact flow of dx/dt = -x + b cos(t): non-autonomous, so it checks the times passed."""

    b: jax.Array

    def __call__(self, x, t0, t1):
        # x(t) = e^{-(t - t0)} x0 + b * [particular solution difference]
        def part(t):
            return 0.5 * (jnp.cos(t) + jnp.sin(t))

        decay = jnp.exp(-(t1 - t0))
        return decay * (x - self.b * part(t0)) + self.b * part(t1)


def _linear_ssm(**kwargs):
    defaults = dict(
        dynamics=_LinearMap(0.5 * jnp.eye(3)),
        # A module (not a lambda) so equal models hit filter_jit's cache across tests.
        obs_op=IdentityObs(),
        obs_noise=1.0,
        dt_obs=0.1,
        x0_mean=jnp.array([1.0, -2.0, 3.0]),
        x0_cov=jnp.array([0.5, 1.0, 2.0]),
    )
    defaults.update(kwargs)
    return StateSpaceModel(**defaults)


def _max_entry_sd(cov, n):
    # Standard deviation of a sample-covariance entry from n Gaussian draws:
    # sqrt((C_ii C_jj + C_ij^2) / n).
    d = np.diag(cov)
    return np.sqrt((np.outer(d, d) + cov**2) / n)


# --- reproducibility and time conventions -------------------------------------------------


def test_same_key_is_bit_identical_and_different_keys_differ(getkey):
    ssm = _linear_ssm(process_noise=0.1)
    key = getkey()
    a = ssm.simulate(key, 12)
    b = ssm.simulate(key, 12)
    assert isinstance(a, TwinExperiment)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    c = ssm.simulate(getkey(), 12)
    assert not np.allclose(a.truth, c.truth)
    assert not np.allclose(a.observations, c.observations)
    assert not np.allclose(a.initial_truth, c.initial_truth)


def test_no_observation_at_t0_and_times_on_the_obs_grid(getkey):
    ssm = _linear_ssm(t0=3.0, dt_obs=0.25)
    xp = ssm.simulate(getkey(), 7)
    assert xp.truth.shape == (7, 3)
    assert xp.observations.shape == (7, 3)
    assert xp.times.shape == (7,)
    assert xp.n_cycles == 7
    assert float(xp.times[0]) == 3.0 + 0.25
    np.testing.assert_allclose(xp.times, 3.0 + 0.25 * np.arange(1, 8), rtol=0, atol=1e-14)
    np.testing.assert_allclose(ssm.observation_times(7), xp.times, rtol=0, atol=0)


def test_truth_matches_python_loop_resimulation(getkey):
    b = jnp.array([1.0, 2.0, -0.5])
    ssm = _linear_ssm(dynamics=_DecayForced(b), dt_obs=0.3, t0=1.0)
    xp = ssm.simulate(getkey(), 15)
    x = np.asarray(xp.initial_truth)
    for k in range(15):
        t_prev, t_next = 1.0 + 0.3 * k, 1.0 + 0.3 * (k + 1)
        decay = np.exp(-(t_next - t_prev))

        def part(t):
            return 0.5 * (np.cos(t) + np.sin(t))

        x = decay * (x - np.asarray(b) * part(t_prev)) + np.asarray(b) * part(t_next)
        # float64 identity between a numpy loop and the compiled scan: only round-off differs.
        np.testing.assert_allclose(xp.truth[k], x, rtol=1e-12, atol=1e-12)


def test_observations_use_the_observation_operator(getkey):
    h = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    key = getkey()
    as_callable = _linear_ssm(obs_op=lambda x: h @ x, obs_noise=0.3).simulate(key, 10)
    matrix_ssm = _linear_ssm(obs_op=h, obs_noise=0.3)
    assert isinstance(matrix_ssm.obs_op, LinearObs)
    as_matrix = matrix_ssm.simulate(key, 10)
    as_lineax = _linear_ssm(obs_op=lx.MatrixLinearOperator(h), obs_noise=0.3).simulate(key, 10)
    assert as_callable.observations.shape == (10, 2)
    np.testing.assert_allclose(as_matrix.observations, as_callable.observations, atol=1e-12)
    np.testing.assert_allclose(as_lineax.observations, as_callable.observations, atol=1e-12)


# --- noise statistics ----------------------------------------------------------------------


def test_observation_errors_have_mean_zero_and_covariance_r(getkey):
    h = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    r = np.array([[1.0, 0.3], [0.3, 0.5]])
    ssm = _linear_ssm(obs_op=lambda x: h @ x, obs_noise=jnp.asarray(r), process_noise=1.0)
    n = 20_000
    xp = ssm.simulate(getkey(), n)
    err = np.asarray(xp.observations - xp.truth @ h.T)
    # Monte Carlo: the sample mean has sd sqrt(R_ii / n); 5 sd gives a ~1e-6 false-alarm rate.
    assert np.all(np.abs(err.mean(0)) < 5 * np.sqrt(np.diag(r) / n))
    cov = np.cov(err, rowvar=False)
    assert np.all(np.abs(cov - r) < 5 * _max_entry_sd(r, n))
    # Errors are white in time: lag-1 correlation ~ N(0, 1/n).
    lag1 = np.mean(err[1:, 0] * err[:-1, 0]) / r[0, 0]
    assert abs(lag1) < 5 / np.sqrt(n)


def test_scalar_obs_noise_means_c_times_identity(getkey):
    ssm = _linear_ssm(obs_noise=2.0)
    np.testing.assert_array_equal(ssm.obs_noise.as_matrix(), 2.0 * np.eye(3))
    n = 20_000
    xp = ssm.simulate(getkey(), n)
    var = np.var(np.asarray(xp.observations - xp.truth), axis=0, ddof=1)
    # Relative sd of a sample variance is sqrt(2 / n) ~ 0.01; 5 sd.
    np.testing.assert_allclose(var, 2.0, rtol=5 * np.sqrt(2 / n))


def test_process_noise_per_window_has_covariance_sigma(getkey):
    a = 0.5 * np.eye(3)
    q = np.array([[1.0, 0.2, 0.0], [-0.3, 0.4, 0.1], [0.0, 0.5, 0.2]])
    sigma = q @ q.T + 0.1 * np.eye(3)
    ssm = _linear_ssm(dynamics=_LinearMap(jnp.asarray(a)), process_noise=jnp.asarray(sigma))
    n = 20_000
    xp = ssm.simulate(getkey(), n)
    prev = np.concatenate([np.asarray(xp.initial_truth)[None], np.asarray(xp.truth[:-1])])
    xi = np.asarray(xp.truth) - prev @ a.T
    assert np.all(np.abs(xi.mean(0)) < 5 * np.sqrt(np.diag(sigma) / n))
    cov = np.cov(xi, rowvar=False)
    assert np.all(np.abs(cov - sigma) < 5 * _max_entry_sd(sigma, n))


def test_stochastic_dynamics_get_a_key_per_window(getkey):
    # StochasticDynamics adds its own noise (here 0.2 I) and needs a key each call.
    dyn = StochasticDynamics(LinearModel(0.5 * jnp.eye(3), dt=0.1), noise=0.2)
    ssm = _linear_ssm(dynamics=dyn)
    n = 5000
    xp = ssm.simulate(getkey(), n)
    prev = np.concatenate([np.asarray(xp.initial_truth)[None], np.asarray(xp.truth[:-1])])
    xi = np.asarray(xp.truth) - 0.5 * prev
    np.testing.assert_allclose(xi.var(0, ddof=1), 0.2, rtol=5 * np.sqrt(2 / n))


def test_without_process_noise_truth_is_deterministic_given_x0(getkey):
    ssm = _linear_ssm()
    xp = ssm.simulate(getkey(), 5)
    expected = np.asarray(xp.initial_truth) * 0.5 ** np.arange(1, 6)[:, None]
    np.testing.assert_allclose(xp.truth, expected, rtol=1e-14)


def test_initial_truth_is_drawn_from_the_prior_vmap_over_keys(getkey):
    p0 = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.1]])
    mu = np.array([1.0, -2.0, 3.0])
    ssm = _linear_ssm(x0_cov=jnp.asarray(p0))
    n = 20_000
    keys = jax.random.split(getkey(), n)
    x0 = np.asarray(jax.vmap(lambda k: ssm.simulate(k, 1).initial_truth)(keys))
    assert np.all(np.abs(x0.mean(0) - mu) < 5 * np.sqrt(np.diag(p0) / n))
    assert np.all(np.abs(np.cov(x0, rowvar=False) - p0) < 5 * _max_entry_sd(p0, n))


def test_initial_ensemble_is_drawn_from_the_prior(getkey):
    p0 = np.array([0.5, 1.0, 2.0])
    ssm = _linear_ssm()
    ens = np.asarray(ssm.initial_ensemble(getkey(), 20_000))
    assert ens.shape == (20_000, 3)
    n = ens.shape[0]
    assert np.all(np.abs(ens.mean(0) - np.array([1.0, -2.0, 3.0])) < 5 * np.sqrt(p0 / n))
    np.testing.assert_allclose(ens.var(0, ddof=1), p0, rtol=5 * np.sqrt(2 / n))
    small = ssm.initial_ensemble(getkey(), 5)
    assert small.shape == (5, 3)


# --- transformations -----------------------------------------------------------------------


def test_jit_matches_eager_and_is_reproducible(getkey):
    ssm = _linear_ssm(process_noise=0.2, obs_noise=0.5)
    key = getkey()
    jitted = eqx.filter_jit(lambda m, k: m.simulate(k, 12))
    a = jitted(ssm, key)
    b = jitted(ssm, key)
    eager = ssm.simulate(key, 12)
    assert np.array_equal(a.truth, b.truth) and np.array_equal(a.observations, b.observations)
    # jit and op-by-op execution may fuse differently: round-off level only.
    np.testing.assert_allclose(a.truth, eager.truth, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.observations, eager.observations, rtol=1e-12, atol=1e-12)


def test_vmap_over_keys_matches_individual_runs(getkey):
    ssm = _linear_ssm(process_noise=0.2)
    keys = jax.random.split(getkey(), 4)
    batched = jax.vmap(lambda k: ssm.simulate(k, 6))(keys)
    assert batched.truth.shape == (4, 6, 3)
    assert batched.times.shape == (4, 6)
    for i in range(4):
        single = ssm.simulate(keys[i], 6)
        np.testing.assert_allclose(batched.truth[i], single.truth, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            batched.observations[i], single.observations, rtol=1e-12, atol=1e-12
        )
    assert not np.allclose(batched.truth[0], batched.truth[1])


def test_float32_model_simulates_in_float32(getkey):
    ssm = _linear_ssm(
        dynamics=_LinearMap(0.5 * jnp.eye(3, dtype=jnp.float32)),
        x0_mean=jnp.array([1.0, -2.0, 3.0], dtype=jnp.float32),
        process_noise=0.1,
    )
    xp = ssm.simulate(getkey(), 4)
    assert xp.truth.dtype == jnp.float32
    assert xp.observations.dtype == jnp.float32
    assert ssm.initial_ensemble(getkey(), 3).dtype == jnp.float32


# --- burn-in and helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("burn_in", "dt_obs", "expected"),
    [(0.0, 0.1, 0), (0.3, 0.1, 3), (0.25, 0.1, 2), (16.0, 0.25, 64), (20.0, 0.05, 400)],
)
def test_burn_in_cycles_counts_analysis_times_up_to_burn_in(burn_in, dt_obs, expected):
    ssm = _linear_ssm(burn_in=burn_in, dt_obs=dt_obs)
    assert ssm.burn_in_cycles == expected
    times = np.asarray(ssm.observation_times(expected + 5))
    # DAPPER scores t > BurnIn (strict); the rows before burn_in_cycles are exactly t <= BurnIn.
    assert np.all(times[:expected] <= burn_in + 1e-9)
    assert np.all(times[expected:] > burn_in + 1e-9)


def test_climatology_rmse_matches_numpy(getkey):
    ssm = _linear_ssm(burn_in=0.5, process_noise=1.0)
    xp = ssm.simulate(getkey(), 50)
    after = np.asarray(xp.truth)[5:]
    expected = np.mean(np.sqrt(np.mean((after - after.mean(0)) ** 2, axis=1)))
    np.testing.assert_allclose(ssm.climatology_rmse(xp.truth), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="burn-in"):
        ssm.climatology_rmse(xp.truth[:5])


def test_climatology_matches_numpy_statistics_of_the_free_run(getkey):
    # The same key gives the same truth as simulate: the statistics are numpy's of its rows
    # after the burn-in (np.cov: unbiased, rows are samples), to round-off (rtol 1e-12).
    ssm = _linear_ssm(burn_in=0.5, process_noise=1.0)
    key = getkey()
    mean, cov = ssm.climatology(key, 400)
    after = np.asarray(ssm.simulate(key, 400).truth)[5:]
    np.testing.assert_allclose(mean, after.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(after.T), rtol=1e-12, atol=1e-12)
    assert cov.shape == (ssm.n_state, ssm.n_state)
    with pytest.raises(ValueError, match="at least 2 states after the burn-in"):
        ssm.climatology(key, 6)
    with pytest.raises(TypeError, match="n_cycles"):
        ssm.climatology(key, 100.0)


def test_metadata_fields_and_default_n_cycles(getkey):
    ssm = _linear_ssm(
        name="toy",
        reference="nobody 2025",
        n_cycles=100,
        recommended_n_cycles=8,
        published_rmse={"ETKF N=10": 0.5},
    )
    assert ssm.name == "toy" and ssm.reference == "nobody 2025"
    assert dict(ssm.published_rmse) == {"ETKF N=10": 0.5}
    assert ssm.simulate(getkey()).n_cycles == 8
    assert ssm.n_state == 3 and ssm.n_obs == 3
    with pytest.raises(ValueError, match="n_cycles"):
        _linear_ssm().simulate(getkey())


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(x0_mean=jnp.zeros((3, 1))), "x0_mean must be a 1-D"),
        (dict(x0_mean=jnp.array(1.0)), "x0_mean must be a 1-D"),
        (dict(x0_cov=jnp.ones(4)), "length 3"),
        (dict(x0_cov=jnp.eye(2)), r"shape \(3, 3\)"),
        (dict(x0_cov=lx.DiagonalLinearOperator(jnp.ones(2))), "3 x 3"),
        (dict(x0_cov=jnp.ones((3, 3, 3))), "scalar, a 1-D vector"),
        (dict(x0_cov=-1.0), "non-negative"),
        (dict(x0_cov=jnp.array([1.0, -0.1, 1.0])), "non-negative"),
        (dict(x0_cov=jnp.diag(jnp.array([1.0, -1.0, 1.0]))), "non-negative"),
        (dict(x0_cov=jnp.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]])), "symmetric"),
        (dict(process_noise=jnp.array([1.0, 1.0])), "length 3"),
        (dict(obs_noise=-0.5), "non-negative"),
        (dict(obs_noise=jnp.ones(2)), "N_y=3"),
        (dict(obs_noise=jnp.eye(4)), "N_y=3"),
        (dict(obs_noise=lx.DiagonalLinearOperator(jnp.ones(2))), "N_y=3"),
        (dict(obs_op=lambda x: x[:2], obs_noise=jnp.ones(3)), "N_y=2"),
        (dict(obs_op=jnp.ones((2, 4))), r"\(N_y, 3\)"),
        (dict(obs_op=lambda x: jnp.outer(x, x)), "1-D observation"),
        (dict(dynamics=lambda x, t0, t1: x[:2]), "dynamics"),
        (dict(dt_obs=0.0), "dt_obs must be a positive"),
        (dict(burn_in=-1.0), "burn_in"),
    ],
)
def test_bad_construction_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _linear_ssm(**kwargs)


@pytest.mark.parametrize("n_cycles", [0, -3])
def test_n_cycles_below_one_raises_value_error(getkey, n_cycles):
    with pytest.raises(ValueError, match="n_cycles must be >= 1"):
        _linear_ssm().simulate(getkey(), n_cycles)


@pytest.mark.parametrize("n_cycles", [2.5, True, jnp.array(3)])
def test_non_int_n_cycles_raises_type_error(getkey, n_cycles):
    # TypeError from our check, or jaxtyping's TypeCheckError (a TypeError) when enabled.
    with pytest.raises(TypeError):
        _linear_ssm().simulate(getkey(), n_cycles)


@pytest.mark.parametrize("n_ensemble", [0, 1])
def test_n_ensemble_below_two_raises_value_error(getkey, n_ensemble):
    with pytest.raises(ValueError, match="n_ensemble"):
        _linear_ssm().initial_ensemble(getkey(), n_ensemble)


def test_non_int_n_ensemble_raises_type_error(getkey):
    with pytest.raises(TypeError):
        _linear_ssm().initial_ensemble(getkey(), 3.0)
