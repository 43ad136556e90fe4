"""Schedulers: the Iglesias-Yang step, exact landing on T, stop / continue / continue_fixed,
EKS's stable step, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import (
    EKI,
    ETKI,
    DataMisfitController,
    EKSStableScheduler,
    FixedScheduler,
)


def _linear(seed=0, n_params=3, n_obs=6):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n_obs, n_params))
    y = g @ rng.standard_normal(n_params) + 0.3 * rng.standard_normal(n_obs)
    x0 = jnp.asarray(rng.standard_normal((20, n_params)))
    return jnp.asarray(g), jnp.asarray(y), x0


def test_data_misfit_controller_step_formula():
    misfits = jnp.array([3.0, 5.0, 4.0, 10.0])
    d = 6
    sched = DataMisfitController()
    dt, state = sched.step(sched.init(), misfits, time=jnp.asarray(0.0), n_obs=d)
    m = np.asarray(misfits)
    q = max(d / (2 * m.mean()), np.sqrt(d / (2 * m.var(ddof=1))))
    np.testing.assert_allclose(float(dt), min(q, 1.0), rtol=1e-12)
    assert not bool(state.terminated)
    # Near the end the step is capped by the remaining time (exactly 1 - t).
    dt, state = sched.step(state, misfits, time=jnp.asarray(0.95), n_obs=d)
    assert float(dt) == 1.0 - 0.95 and bool(state.terminated)


def test_data_misfit_controller_ignores_failed_members():
    sched = DataMisfitController()
    with_nan = jnp.array([3.0, jnp.nan, 5.0, 4.0])
    without = jnp.array([3.0, 5.0, 4.0])
    a, _ = sched.step(sched.init(), with_nan, time=jnp.asarray(0.0), n_obs=2)
    b, _ = sched.step(sched.init(), without, time=jnp.asarray(0.0), n_obs=2)
    assert float(a) == float(b) and np.isfinite(float(a))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_eki_lands_exactly_on_one_and_stops(dtype):
    g, y, x0 = _linear(1)
    eki = EKI(scheduler=DataMisfitController())
    state = eki.init(x0.astype(dtype), y.astype(dtype), 0.09, key=jax.random.key(0))
    times, converged = [], []
    for _ in range(25):
        state = eki.update(state, state.ensemble @ g.T.astype(dtype))
        times.append(float(state.time))
        converged.append(bool(state.converged))
    first = converged.index(True)
    assert times[first] == 1.0  # bit-exact landing, in both precisions
    assert all(t < 1.0 for t in times[:first]) and all(t == 1.0 for t in times[first:])
    assert all(converged[first:]) and first > 0
    assert float(state.dt) == 0.0 and np.all(np.isfinite(state.ensemble))


def test_landing_inside_a_compiled_loop():
    g, y, x0 = _linear(2)
    etki = ETKI()
    state = etki.init(x0, y, 0.09)

    def body(s, _):
        s = etki.update(s, s.ensemble @ g.T)
        return s, s.time

    final, times = jax.jit(lambda s: jax.lax.scan(body, s, None, length=30))(state)
    assert float(final.time) == 1.0 and bool(final.converged)
    assert np.all(np.diff(np.asarray(times)) >= 0) and float(times.max()) == 1.0


def test_continue_keeps_stepping_past_the_final_time():
    g, y, x0 = _linear(3)
    eki = EKI(scheduler=DataMisfitController(on_terminate="continue"))
    state = eki.init(x0, y, 0.09, key=jax.random.key(0))
    times = []
    for _ in range(25):
        previous = state.ensemble
        state = eki.update(state, state.ensemble @ g.T)
        times.append(float(state.time))
    assert 1.0 in times  # it still lands on T on the way
    assert times[-1] > 1.0 and not bool(state.converged)
    assert float(state.dt) > 0 and not np.allclose(state.ensemble, previous)
    assert bool(state.scheduler_state.reached)


def test_continue_fixed_repeats_the_last_step():
    sched = DataMisfitController(on_terminate="continue_fixed")
    state = sched.init()
    misfits = jnp.array([3.0, 5.0, 4.0])
    dt, state = sched.step(state, misfits, time=jnp.asarray(0.8), n_obs=1)
    np.testing.assert_allclose(float(dt), 0.2)
    dt2, state = sched.step(state, misfits * 100, time=jnp.asarray(1.0), n_obs=1)
    np.testing.assert_allclose(float(dt2), float(dt))


def test_other_final_times():
    g, y, x0 = _linear(4)
    eki = EKI(scheduler=DataMisfitController(terminate_at=2.5))
    state = eki.init(x0, y, 0.09, key=jax.random.key(1))
    for _ in range(40):
        state = eki.update(state, state.ensemble @ g.T)
    np.testing.assert_allclose(float(state.time), 2.5, rtol=1e-14)
    assert bool(state.converged)


def test_eks_stable_scheduler():
    sched = EKSStableScheduler(alpha=0.5, eps=1e-3)
    dt, _ = sched.step(sched.init(), jnp.ones(4), d_norm=jnp.asarray(2.0))
    np.testing.assert_allclose(float(dt), 0.5 / 2.001)
    with pytest.raises(TypeError, match="d_norm"):
        sched.step(sched.init(), jnp.ones(4))


def test_fixed_scheduler_and_errors():
    dt, state = FixedScheduler(0.25).step(None, jnp.ones(3, jnp.float32))
    assert float(dt) == 0.25 and dt.dtype == jnp.float32 and state is None
    with pytest.raises(ValueError, match="FixedScheduler"):
        FixedScheduler(-1.0)
    # ValueError from the class; under the tests' annotation checking the Literal type fails
    # first (a TypeError naming the same argument).
    with pytest.raises((ValueError, TypeError), match="on_terminate"):
        DataMisfitController(on_terminate="halt")
    with pytest.raises(ValueError, match="terminate_at"):
        DataMisfitController(terminate_at=0.0)
    with pytest.raises(TypeError, match="n_obs"):
        DataMisfitController().step(DataMisfitController().init(), jnp.ones(3), time=0.0)
