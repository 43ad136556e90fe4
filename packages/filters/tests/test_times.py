"""Observation times: refused when concrete and bad, flagged (never integrated) when traced."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import Lorenz96, presets

BAD_TIMES = {
    "reversed": ([0.2, 0.1, 0.3], "strictly increasing"),
    "repeated": ([0.1, 0.1, 0.2], "strictly increasing"),
    "nan": ([0.1, np.nan, 0.3], "finite"),
    "inf": ([0.1, 0.2, np.inf], "finite"),
    "before_t0": ([-0.1, 0.1, 0.2], "earlier than t0"),
}


def _problem():
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 3)
    return ssm, xp.observations, ssm.initial_ensemble(jax.random.key(1), 6)


@pytest.mark.parametrize("case", list(BAD_TIMES))
def test_bad_concrete_observation_times_are_refused_before_the_run(case):
    # Regression: reversed times used to give rmse 4.2 with status 0 (skipped forecasts), an
    # infinite time a hang (2^31 integrator steps).
    ssm, ys, e0 = _problem()
    times, match = BAD_TIMES[case]
    times = jnp.asarray(times)
    with pytest.raises(ValueError, match=match):
        ff.assimilate(ff.ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, e0, ys, times,
                      key=jax.random.key(2))  # fmt: skip
    with pytest.raises(ValueError, match=match):
        ff.run(ff.EnsembleFilter(ff.ETKF()), ssm, e0, ys, times, key=jax.random.key(2))
    with pytest.raises(ValueError, match=match):
        ff.KalmanFilter().filter(ssm.x0_mean, ssm.x0_cov, ys, times, ssm.dynamics, ssm.obs_op,
                                 ssm.obs_noise)  # fmt: skip


def test_a_nonfinite_t0_is_refused():
    ssm, ys, e0 = _problem()
    with pytest.raises(ValueError, match="t0 must be a finite"):
        ff.run(ff.EnsembleFilter(ff.ETKF()), ssm, e0, ys, jnp.array([0.1, 0.2, 0.3]),
               key=jax.random.key(2), t0=jnp.nan)  # fmt: skip


def _traced_run(times, throw=False):
    ssm, ys, e0 = _problem()
    fn = jax.jit(
        lambda t: ff.run(
            ff.EnsembleFilter(ff.ETKF()), ssm, e0, ys, t, key=jax.random.key(2), throw=throw
        )
    )
    return fn(jnp.asarray(times)), e0


@pytest.mark.parametrize("case", list(BAD_TIMES))
def test_bad_traced_observation_times_set_a_status_and_assimilate_nothing(case):
    out, e0 = _traced_run(BAD_TIMES[case][0])
    assert int(out.status) == ff.RunResult.INVALID_TIMES
    np.testing.assert_array_equal(out.cycle_status, [3, 3, 3])
    assert int(out.first_failure) == 0
    assert np.all(np.isnan(out.analysis_mean)) and np.all(np.isnan(out.log_likelihood))
    np.testing.assert_array_equal(out.state.particles, e0)  # nothing was assimilated
    with pytest.raises(Exception, match="observation times are invalid"):
        _traced_run(BAD_TIMES[case][0], throw=True)


def test_good_traced_times_run_normally():
    out, _ = _traced_run([0.05, 0.1, 0.15])
    assert int(out.status) == ff.RunResult.OK and np.all(np.isfinite(out.analysis_mean))


def test_an_infinite_traced_time_never_reaches_the_integrator():
    # Lorenz-96's RK4 takes round((t1 - t0) / dt) steps: an infinite window used to hang. Now
    # the window is never integrated (a hang would time the test out; the bound is generous).
    model = fxp.Model(Lorenz96(n=8), fxp.IdentityObs(), 1.0)
    e0 = 8.0 + jax.random.normal(jax.random.key(0), (5, 8))
    ys = jnp.zeros((2, 8))
    fn = jax.jit(
        lambda t: ff.run(
            ff.EnsembleFilter(ff.ETKF()), model, e0, ys, t, key=jax.random.key(1), throw=False
        )  # fmt: skip
    )
    fn(jnp.array([0.05, 0.1])).status.block_until_ready()  # compile
    start = time.perf_counter()
    out = fn(jnp.array([0.05, jnp.inf]))
    assert int(out.status) == ff.RunResult.INVALID_TIMES
    assert time.perf_counter() - start < 30.0


BAD_NOISE = {
    "negative scalar": (-1.0, "non-negative"),
    "nan scalar": (jnp.nan, "non-finite|not NaN"),
    "negative variance": (jnp.full(40, 1.0).at[3].set(-0.5), "non-negative"),
    "nan variance": (jnp.full(40, 1.0).at[3].set(jnp.nan), "non-finite|not NaN"),
    "indefinite matrix": (jnp.eye(40).at[0, 1].set(5.0).at[1, 0].set(5.0), "positive-definite"),
}


@pytest.mark.parametrize("case", list(BAD_NOISE))
def test_bad_concrete_observation_noise_is_refused_before_the_run(case):
    # Regression: a negative, NaN or indefinite R used to come back as "the ensemble became
    # non-finite" (status 1) after the whole run.
    ssm, ys, e0 = _problem()
    times = jnp.array([0.05, 0.1, 0.15])
    noise, match = BAD_NOISE[case]
    for filt in (ff.ETKF(), ff.StochasticEnKF(), ff.KalmanFilter()):
        with pytest.raises(ValueError, match=match):
            ff.assimilate(filt, ssm.dynamics, ssm.obs_op, noise, e0, ys, times,
                          key=jax.random.key(2))  # fmt: skip
    with pytest.raises(ValueError, match=match):
        ff.KalmanFilter().filter(ssm.x0_mean, ssm.x0_cov, ys, times, ssm.dynamics, ssm.obs_op,
                                 noise)  # fmt: skip


def test_bad_process_noise_and_initial_covariance_are_refused():
    ssm, ys, e0 = _problem()
    times = jnp.array([0.05, 0.1, 0.15])
    model = fxp.Model(ssm.dynamics, ssm.obs_op, 1.0, process_noise=jnp.full(40, -0.1))
    with pytest.raises(ValueError, match="process_noise"):
        ff.run(ff.EnsembleFilter(ff.ETKF()), model, e0, ys, times, key=jax.random.key(0))
    # a zero process-noise variance is fine (semidefinite)
    ok = fxp.Model(ssm.dynamics, ssm.obs_op, 1.0, process_noise=jnp.zeros(40))
    assert (
        int(ff.run(ff.EnsembleFilter(ff.ETKF()), ok, e0, ys, times, key=jax.random.key(0)).status)
        == 0
    )
    with pytest.raises(ValueError, match="cov0"):
        ff.KalmanFilter().filter(ssm.x0_mean, -1.0, ys, times, ssm.dynamics, ssm.obs_op, 1.0)
