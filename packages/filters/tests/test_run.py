"""The one driver of cycled methods: `run`, `EnsembleFilter`, the init/step contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import LinearModel, StochasticDynamics, presets

N_X, N_E, T = 4, 6, 15


def linear_problem():
    model = LinearModel(0.95 * jnp.eye(N_X) + 0.05 * jnp.eye(N_X, k=1))
    obs_op = fxp.IdentityObs()
    truth_key, obs_key, ens_key = jax.random.split(jax.random.key(0), 3)
    x, truth, ys = jnp.ones(N_X), [], []
    for k in range(T):
        x = model(x, float(k), float(k + 1)) + 0.1 * jax.random.normal(
            jax.random.fold_in(truth_key, k), (N_X,)
        )
        truth.append(x)
        ys.append(x + jnp.sqrt(0.5) * jax.random.normal(jax.random.fold_in(obs_key, k), (N_X,)))
    ensemble0 = 1.0 + jax.random.normal(ens_key, (N_E, N_X))
    times = jnp.arange(1.0, T + 1.0)
    return model, obs_op, jnp.stack(truth), jnp.stack(ys), times, ensemble0


class Var3D(fxp.AbstractCycledMethod):
    """A user-written cycled method: 3D-Var with a static background covariance B (the
    conventions page's example)."""

    B: jax.Array

    def init(self, key, initial, model):
        return jnp.asarray(initial)

    def step(self, key, x, model, t_prev, t, obs):
        xf = model.dynamics(x, t_prev, t)
        H = jax.jacfwd(lambda z: fxp.apply_obs(model.obs_op, z))(xf)
        R = fxp.as_noise_operator(model.obs_noise, obs.shape[0]).as_matrix()
        d = obs - fxp.apply_obs(model.obs_op, xf)
        S = H @ self.B @ H.T + R
        K = self.B @ H.T @ jnp.linalg.inv(S)
        xa = xf + K @ d
        loglik = jax.scipy.stats.multivariate_normal.logpdf(d, jnp.zeros_like(d), S)
        spread_f = jnp.sqrt(jnp.mean(jnp.diag(self.B)))
        spread_a = jnp.sqrt(jnp.mean(jnp.diag(self.B - K @ H @ self.B)))
        info = fxp.CycleInfo(
            forecast_mean=xf,
            forecast_spread=spread_f,
            analysis_mean=xa,
            analysis_spread=spread_a,
            log_likelihood=loglik,
            innovation=d,
            finite=jnp.all(jnp.isfinite(xa)),
        )
        return xa, info


def test_a_user_written_cycled_method_runs_through_the_driver():
    # 3D-Var through `run` == the same recursion written out in numpy (float64, exact
    # arithmetic up to round-off: 1e-10).
    model, obs_op, truth, ys, times, _ = linear_problem()
    B = 0.3 * np.eye(N_X) + 0.1
    out = ff.run(
        Var3D(jnp.asarray(B)),
        fxp.Model(model, obs_op, 0.5),
        jnp.zeros(N_X),
        ys,
        times,
        key=jax.random.key(0),
    )
    M = np.asarray(model.matrix)
    R = 0.5 * np.eye(N_X)
    K = B @ np.linalg.inv(B + R)
    x = np.zeros(N_X)
    means = []
    for k in range(T):
        x = M @ x
        x = x + K @ (np.asarray(ys[k]) - x)
        means.append(x)
    np.testing.assert_allclose(out.analysis_mean, np.stack(means), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.state, means[-1], rtol=1e-10, atol=1e-12)
    assert int(out.status) == ff.RunResult.OK and out.analyses is None
    rmse_a = np.mean(np.sqrt(np.mean((np.stack(means) - np.asarray(truth)) ** 2, axis=1))[2:])
    np.testing.assert_allclose(out.scores(truth, 2)["rmse_a"], rmse_a, rtol=1e-10)


def _golden_kwargs():
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 30)
    return ssm, xp, ssm.initial_ensemble(jax.random.key(1), 10)


@pytest.mark.parametrize(
    "inflator, rotate, save",
    [
        (fxp.MultiplicativeInflator(1.04), True, "forecast_and_analysis"),
        (fxp.AdaptiveInflator(1.0, 0.01), True, "stats"),
        (fxp.RTPS(0.5), False, "ensembles"),
        (None, True, "stats"),
    ],
)
def test_run_of_an_ensemble_filter_is_assimilate_bit_for_bit(inflator, rotate, save):
    # assimilate is a thin wrapper over run(EnsembleFilter(...)): identical numbers.
    ssm, xp, e0 = _golden_kwargs()
    key = jax.random.key(2)
    ref = ff.assimilate(
        ff.ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, e0, xp.observations, xp.times,
        key=key, inflator=inflator, rotate=rotate, t0=ssm.t0, save=save,
    )  # fmt: skip
    out = ff.run(
        ff.EnsembleFilter(ff.ETKF(), inflator=inflator, rotate=rotate),
        ssm,
        e0,
        xp.observations,
        xp.times,
        key=key,
        save=save,
    )
    for name in ("analysis_mean", "forecast_mean", "analysis_spread", "log_likelihood"):
        np.testing.assert_array_equal(getattr(out, name), getattr(ref, name))
    np.testing.assert_array_equal(out.state.particles, ref.particles)
    if save != "stats":
        np.testing.assert_array_equal(out.analyses, ref.ensembles)
    if save == "forecast_and_analysis":
        np.testing.assert_array_equal(out.forecasts, ref.forecast_ensembles)
    if isinstance(inflator, fxp.AdaptiveInflator):
        np.testing.assert_array_equal(out.diagnostics[0].inflation, ref.inflation)
        np.testing.assert_array_equal(out.state.post_states[0].inflation, ref.inflator.inflation)


def test_a_model_with_process_noise_equals_stochastic_dynamics():
    # Process noise carried by the model is drawn exactly as a StochasticDynamics wrapper
    # draws it (member i: key i of split(k_forecast, N_e)).
    model, obs_op, _, ys, times, e0 = linear_problem()
    key = jax.random.key(3)
    with_noise = ff.run(
        ff.EnsembleFilter(ff.StochasticEnKF()),
        fxp.Model(model, obs_op, 0.5, process_noise=fxp.diagonal_noise(jnp.full(N_X, 0.01))),
        e0,
        ys,
        times,
        key=key,
    )
    wrapped = ff.assimilate(
        ff.StochasticEnKF(), StochasticDynamics(model, noise=0.01), obs_op, 0.5, e0, ys, times,
        key=key,
    )  # fmt: skip
    np.testing.assert_allclose(with_noise.analysis_mean, wrapped.analysis_mean, rtol=1e-13)


def test_analysis_kernels_and_kalman_filters_are_wrapped():
    assert isinstance(ff.as_cycled_method(ff.ETKF()), ff.EnsembleFilter)
    method = ff.EnsembleFilter(ff.ETKF())
    assert ff.as_cycled_method(method) is method
    with pytest.raises(TypeError, match="cycled method"):
        ff.as_cycled_method(object())


class Counting(fxp.AbstractPostProcessor):
    """A stateful user post-processor: counts the cycles and shifts the ensemble by 0."""

    def init(self, ensemble):
        return jnp.zeros((), jnp.int32)

    def apply(self, key, state, analysis, forecast, cycle):
        return analysis + 0.0 * jax.random.normal(key, analysis.shape), state + 1


def test_user_post_processors_carry_their_state_through_the_method_state():
    model, obs_op, _, ys, times, e0 = linear_problem()
    out = ff.run(
        ff.EnsembleFilter(ff.ETKF(), post=(Counting(), Counting())),
        fxp.Model(model, obs_op, 0.5),
        e0,
        ys,
        times,
        key=jax.random.key(0),
    )
    # the chain is (inflator slot, rotation slot, *post)
    assert [int(s) for s in out.state.post_states[2:]] == [T, T]
    np.testing.assert_array_equal(out.diagnostics[2], np.arange(1, T + 1))


class FailsAt(fxp.AbstractCycledMethod):
    """x <- x + 1 each cycle; cycle `bad` reports a non-finite analysis."""

    bad: int

    def init(self, key, initial, model):
        return (jnp.asarray(initial), jnp.zeros((), jnp.int32))

    def step(self, key, state, model, t_prev, t, obs):
        x, k = state
        xa = jnp.where(k == self.bad, jnp.nan, x + 1.0)
        finite = jnp.all(jnp.isfinite(xa))
        info = fxp.CycleInfo(x, 0.0 * x[0], xa, 0.0 * x[0], 0.0 * x[0], obs - x[:1], finite)
        return (xa, k + 1), info


def test_the_driver_freezes_a_failing_method_and_reports_it():
    model = fxp.Model(lambda x, t0, t1: x, lambda x: x[:1], 1.0)
    ys, times = jnp.zeros((8, 1)), jnp.arange(1.0, 9.0)
    out = ff.run(FailsAt(3), model, jnp.zeros(2), ys, times, key=jax.random.key(0), throw=False)
    assert int(out.status) == ff.RunResult.NONFINITE and int(out.first_failure) == 3
    np.testing.assert_array_equal(out.cycle_status, [0, 0, 0, 1, 1, 1, 1, 1])
    assert np.all(np.isnan(out.analysis_mean[3:])) and np.all(np.isfinite(out.analysis_mean[:3]))
    # the state stays at the last finite analysis (x = 3 after three good cycles)
    np.testing.assert_array_equal(out.state[0], [3.0, 3.0])
    with pytest.raises(Exception, match="run: the ensemble became non-finite"):
        ff.run(FailsAt(3), model, jnp.zeros(2), ys, times, key=jax.random.key(0))


def test_divergence_is_detected_from_the_methods_innovation():
    model = fxp.Model(lambda x, t0, t1: x, lambda x: x[:1], 1.0)
    ys = jnp.array([[0.0], [0.5], [10.0], [0.0]])
    out = ff.run(
        FailsAt(100), model, jnp.zeros(2), ys, jnp.arange(1.0, 5.0), key=jax.random.key(0),
        throw=False, divergence_threshold=5.0,
    )  # fmt: skip
    # innovations y - x with x = 0, 1, 2, 3: |d| = 0, 0.5, 8, 3
    np.testing.assert_array_equal(out.cycle_status, [0, 0, 2, 0])
    assert int(out.status) == ff.RunResult.DIVERGED and int(out.n_diverged) == 1


def test_a_repeated_call_with_unchanged_shapes_does_not_retrace():
    # The per-call overhead is the dispatch only: validation that needs tracing happens
    # inside the compiled program, so the dynamics are traced once for both calls.
    model, obs_op, _, ys, times, e0 = linear_problem()
    traces = []

    def dynamics(x, t0, t1):
        traces.append(1)
        return model(x, t0, t1)

    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.01))
    m = fxp.Model(dynamics, obs_op, 0.5)
    first = ff.run(method, m, e0, ys, times, key=jax.random.key(0))
    n = len(traces)
    second = ff.run(method, m, e0 + 1.0, ys, times, key=jax.random.key(1))
    assert len(traces) == n and n > 0
    assert not np.allclose(first.analysis_mean, second.analysis_mean)


def test_run_is_jit_vmap_and_grad_safe():
    model, obs_op, truth, ys, times, e0 = linear_problem()
    m = fxp.Model(model, obs_op, 0.5)

    def loss(factor):
        method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(factor))
        out = ff.run(method, m, e0, ys, times, key=jax.random.key(0))
        return jnp.mean((out.analysis_mean - truth) ** 2)

    g = jax.grad(loss)(1.05)
    h = 1e-6
    fd = (loss(1.05 + h) - loss(1.05 - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5)  # central differences, O(h^2) + round-off
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.vmap(
        lambda k: ff.run(ff.EnsembleFilter(ff.StochasticEnKF()), m, e0, ys, times, key=k)
    )(keys)
    single = ff.run(ff.EnsembleFilter(ff.StochasticEnKF()), m, e0, ys, times, key=keys[1])
    np.testing.assert_allclose(batched.analysis_mean[1], single.analysis_mean, rtol=1e-12)


def test_bad_run_arguments_raise_clear_errors():
    model, obs_op, _, ys, times, e0 = linear_problem()
    m = fxp.Model(model, obs_op, 0.5)
    method = ff.EnsembleFilter(ff.ETKF())
    with pytest.raises(TypeError, match="AbstractModel"):
        ff.run(method, (model, obs_op, 0.5), e0, ys, times, key=jax.random.key(0))
    with pytest.raises(TypeError, match="key"):
        ff.run(method, m, e0, ys, times, key=None)
    with pytest.raises(ValueError, match="save"):
        ff.run(method, m, e0, ys, times, key=jax.random.key(0), save="all")
    with pytest.raises(ValueError, match="obs_times"):
        ff.run(method, m, e0, ys, times[1:], key=jax.random.key(0))
    with pytest.raises(TypeError, match="inflator"):
        ff.EnsembleFilter(ff.ETKF(), inflator=1.02)
    with pytest.raises(TypeError, match="kernel"):
        ff.EnsembleFilter(object())


@pytest.mark.parametrize(
    "kernel", [ff.ETKF(), ff.StochasticEnKF(), ff.EnSRF(), ff.KalmanFilter()], ids=type
)
def test_global_filters_refuse_context_instead_of_ignoring_it(kernel):
    # A localizer or coordinates handed to a global filter would do nothing: refused.
    model, obs_op, _, ys, times, e0 = linear_problem()
    method = ff.EnsembleFilter(kernel, context={"localizer": fxp.GaspariCohnLocalizer(1.0)})
    with pytest.raises(TypeError, match="takes no context"):
        ff.run(method, fxp.Model(model, obs_op, 0.5), e0, ys, times, key=jax.random.key(0))


class PerCycle(fxp.AbstractCycledMethod):
    """An EnsembleFilter stepped cycle by cycle (not presampled): the reference for `run`'s
    block-presampled path."""

    inner: ff.EnsembleFilter

    def init(self, key, initial, model):
        return self.inner.init(key, initial, model)

    def step(self, key, state, model, t_prev, t, obs):
        return self.inner.step(key, state, model, t_prev, t, obs)


@pytest.mark.parametrize("n_cycles", [7, 130, 200])
def test_block_presampled_draws_equal_cycle_by_cycle_draws(n_cycles):
    # run draws the rotations of up to 64 cycles at once (vmapped over the cycle keys) and pads
    # the last block; the numbers, rows, status and final state are those of plain stepping,
    # bit for bit (130 cycles: 3 blocks of 44, 2 padded cycles).
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), n_cycles)
    ys = xp.observations
    t_bad = xp.times[n_cycles - 4] + 0.5 * ssm.dt_obs

    l96 = ssm.dynamics

    def dynamics(x, t0, t1):  # blows up in cycle n - 3: a failure near the end
        return l96(x, t0, t1) * jnp.where(t1 > t_bad, jnp.nan, 1.0)

    e0 = ssm.initial_ensemble(jax.random.key(1), 8)
    ssm = fxp.Model(dynamics, ssm.obs_op, ssm.obs_noise, t0=ssm.t0)
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.05), rotate=True)
    assert isinstance(method, fxp.AbstractPresampledMethod)
    kwargs = dict(key=jax.random.key(2), save="ensembles", throw=False)
    blocked = ff.run(method, ssm, e0, ys, xp.times, **kwargs)
    stepped = ff.run(PerCycle(method), ssm, e0, ys, xp.times, **kwargs)
    for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(stepped), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(blocked.first_failure) == n_cycles - 3 and blocked.analysis_mean.shape[0] == n_cycles


def test_a_rotation_is_its_haar_draw_embedded():
    key = jax.random.key(4)
    q = jax.random.orthogonal(key, 9, dtype=jnp.float64)
    np.testing.assert_array_equal(
        fxp.mean_preserving_rotation(q), fxp.random_rotation(key, 10, jnp.float64)
    )
    X = jax.random.normal(jax.random.key(5), (10, 3))
    np.testing.assert_array_equal(
        fxp.rotate_with(fxp.random_rotation(key, 10, jnp.float64), X), fxp.rotate_ensemble(key, X)
    )
