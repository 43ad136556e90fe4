"""`calibrate`: the compiled JAX driver against hand-written loops, history bookkeeping,
convergence, constrained priors, failures on the JAX path, progress output and bad input."""

import concurrent.futures as cf
import contextlib
import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import (
    EKI,
    UKI,
    CalibrationError,
    DataMisfitController,
    FixedScheduler,
    calibrate,
    combine_distributions,
    constrained_gaussian,
)

T = jnp.linspace(0.0, 2.0, 8)
SIGMA = 0.02
# Same-key runs of the same update compiled in different programs (scan body vs. hand loop)
# differ only by XLA fusion round-off: ~1e-15 per step, amplified mildly by the gain.
ALGEBRAIC = dict(rtol=1e-10, atol=1e-10)
# One process configuration, ensemble size and length shared by most tests, so the compiled
# driver is reused (compilation dominates the run time of this file).
# ("ignore" compiles faster than the default re-sampling; these tests have no failures.)
EKI_FIXED = EKI(scheduler=FixedScheduler(0.5), failure_handler="ignore")
N_IT = 4


def decay(theta):
    return theta[0] * jnp.exp(-theta[1] * T) + theta[2] * T


def _problem(key, n_ensemble=10):
    truth = jnp.array([1.0, 0.7, -0.3])
    obs = decay(truth) + SIGMA * jax.random.normal(jax.random.fold_in(key, 1), (8,))
    ens = jnp.array([[1.2, 0.5, 0.0]]) + 0.3 * jax.random.normal(key, (n_ensemble, 3))
    return ens, obs, jnp.full(8, SIGMA**2)


@eqx.filter_jit
def _step(process, forward, state):
    return process.update(state, jax.vmap(forward)(process.particles(state)))


def _manual(process, forward, initial, obs, noise, key, n):
    """The reference: ``init`` then ``n`` updates, driven by hand."""
    state = process.init(initial, obs, noise, key=key)
    states = [state]
    for _ in range(n):
        state = _step(process, forward, state)
        states.append(state)
    return states


@pytest.fixture(scope="module")
def fixed_run():
    """One compiled run (with progress output) that several tests inspect."""
    key = jax.random.key(11)
    ens, obs, noise = _problem(jax.random.key(10))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = calibrate(EKI_FIXED, decay, ens, obs, noise, n_iterations=N_IT, key=key,
                           progress=True)  # fmt: skip
        jax.effects_barrier()
    return ens, obs, noise, key, result, out.getvalue()


def test_history_is_complete_and_consistent(fixed_run):
    ens, obs, noise, _, result, _ = fixed_run
    h = result.history
    assert h.parameters.shape == (5, 10, 3) and h.means.shape == (5, 3)
    assert h.outputs.shape == (4, 10, 8) and h.misfits.shape == (4, 10)
    assert h.failed.shape == (4, 10) and h.n_failed.shape == (4,)
    assert h.dt.shape == (4,) and h.time.shape == (5,) and h.batch.shape == (4,)
    assert result.n_iterations == 4 and result.failures == () and result.prior is None
    np.testing.assert_array_equal(h.parameters[0], ens)
    np.testing.assert_array_equal(h.parameters[-1], result.state.ensemble)
    np.testing.assert_array_equal(result.ensemble, result.state.ensemble)
    outputs = jax.jit(jax.vmap(jax.vmap(decay)))(h.parameters[:-1])
    np.testing.assert_allclose(h.outputs, outputs, rtol=1e-13)
    misfit = 0.5 * np.sum((np.asarray(h.outputs) - np.asarray(obs)) ** 2 / SIGMA**2, axis=-1)
    np.testing.assert_allclose(h.misfits, misfit, rtol=1e-10)
    np.testing.assert_allclose(h.means, h.parameters.mean(axis=1), rtol=1e-13)
    np.testing.assert_allclose(h.dt, 0.5, rtol=1e-15)
    np.testing.assert_allclose(h.time, 0.5 * np.arange(5), rtol=1e-14)
    assert not h.failed.any() and int(h.n_failed.sum()) == 0
    np.testing.assert_array_equal(h.batch, 0)
    np.testing.assert_allclose(h.misfit_mean, h.misfits.mean(axis=1), rtol=1e-14)


def test_scan_path_equals_hand_written_loop(fixed_run):
    ens, obs, noise, key, result, _ = fixed_run
    states = _manual(EKI_FIXED, decay, ens, obs, noise, key, N_IT)
    for n, state in enumerate(states):
        np.testing.assert_allclose(result.history.parameters[n], state.ensemble, **ALGEBRAIC)
    np.testing.assert_allclose(result.history.time, [s.time for s in states], **ALGEBRAIC)


def test_progress_prints_one_line_per_iteration(fixed_run):
    *_, result, printed = fixed_run
    lines = [ln for ln in printed.splitlines() if ln.startswith("iteration")]
    assert len(lines) == 4
    assert lines[0].startswith("iteration    1 |")
    assert "algorithm time 2.000000" in lines[-1] and "failed 0/10" in lines[-1]
    for line, misfit in zip(lines, np.asarray(result.history.misfit_mean), strict=True):
        assert f"misfit mean {misfit:.6e}" in line


def test_until_converged_stops_when_data_misfit_controller_reaches_one(getkey):
    ens, obs, noise = _problem(getkey(), n_ensemble=20)
    eki = EKI(scheduler=DataMisfitController(on_terminate="stop"), failure_handler="ignore")
    key = getkey()
    result = calibrate(eki, decay, ens, obs, noise, until_converged=True, max_iterations=40,
                       key=key)  # fmt: skip
    n = result.n_iterations
    assert result.converged and 1 < n < 40
    # The controller lands on T = 1 exactly (its last step is 1 - t) and not before.
    assert float(result.history.time[-1]) == 1.0
    assert float(result.history.time[-2]) < 1.0
    assert bool(result.state.converged)
    h = result.history
    assert np.all(np.asarray(h.time[:-1]) < 1.0)
    np.testing.assert_allclose(h.time[1:], np.cumsum(h.dt), rtol=1e-14)
    # Independent re-derivation of every step from the recorded misfits (Iglesias & Yang
    # 2021): dt_n = min(max(d / (2 mean Phi), sqrt(d / (2 var Phi))), 1 - t_n), d = N_y = 8.
    phi = np.asarray(h.misfits)
    q = np.maximum(8 / (2 * phi.mean(axis=1)), np.sqrt(8 / (2 * phi.var(axis=1, ddof=1))))
    np.testing.assert_allclose(h.dt, np.minimum(q, 1.0 - np.asarray(h.time[:-1])), rtol=1e-12)
    # The misfits are those of the recorded parameters (history rows are aligned).
    outputs = jax.jit(jax.vmap(jax.vmap(decay)))(h.parameters[:-1])
    np.testing.assert_allclose(h.outputs, outputs, rtol=1e-13)


def test_until_converged_is_capped_by_max_iterations(getkey):
    ens, obs, noise = _problem(getkey())
    # A fixed step never terminates.
    result = calibrate(EKI_FIXED, decay, ens, obs, noise, until_converged=True, max_iterations=3,
                       key=getkey())  # fmt: skip
    assert result.n_iterations == 3 and not result.converged
    assert result.history.parameters.shape == (4, 10, 3)
    np.testing.assert_allclose(result.history.time, [0.0, 0.5, 1.0, 1.5], rtol=1e-14)


def test_uki_runs_through_the_driver():
    # Linear model, no prior imposed, dt = 1: UKI's mean converges to the least-squares
    # solution (Huang, Schneider & Stuart 2022), geometrically.
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 3))
    y = a @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.standard_normal(8)
    m_ls = np.linalg.lstsq(a, y, rcond=None)[0]
    uki = UKI(jnp.zeros(3), jnp.eye(3))
    a_j = jnp.asarray(a)
    result = calibrate(uki, lambda th: a_j @ th, None, y, 0.01, n_iterations=30,
                       key=jax.random.key(0))  # fmt: skip
    assert result.history.parameters.shape == (31, 7, 3)  # 2 N_p + 1 sigma points
    # History means are the process's (parametric) means, not sigma-point averages.
    np.testing.assert_array_equal(result.mean, uki.mean(result.state))
    np.testing.assert_allclose(result.history.parameters[-1, 0], result.mean, rtol=1e-12)
    # 30 iterations at rate <= 1/2 from an O(1) start: error far below 1e-6.
    np.testing.assert_allclose(result.mean, m_ls, atol=1e-6)


# --- constrained priors ------------------------------------------------------------------------


def _positive_problem(key):
    prior = combine_distributions(
        constrained_gaussian(1.5, 0.5, lower=0.0, name="amplitude"),
        constrained_gaussian(0.5, 0.3, lower=0.0, upper=2.0, name="rate"),
    )
    truth = jnp.array([1.0, 0.7])

    def model(theta):
        # The model is only defined for positive amplitude and rate in (0, 2): outside, NaN,
        # which the driver would count as a failed member.
        bad = (theta[0] <= 0) | (theta[1] <= 0) | (theta[1] >= 2)
        return jnp.where(bad, jnp.nan, theta[0] * jnp.exp(-theta[1] * T))

    obs = model(truth) + SIGMA * jax.random.normal(key, (8,))
    return prior, model, truth, obs


def test_prior_runs_the_ensemble_unconstrained_and_the_model_constrained(getkey):
    prior, model, truth, obs = _positive_problem(getkey())
    key = getkey()
    result = calibrate(EKI_FIXED, model, 16, obs, SIGMA**2, n_iterations=N_IT, key=key,
                       prior=prior)  # fmt: skip
    # initial=<int> draws the members from the prior with the second half of split(key).
    _, sample_key = jax.random.split(key)
    np.testing.assert_array_equal(result.history.parameters[0], prior.sample(sample_key, 16))
    assert int(result.history.n_failed.sum()) == 0  # the model only ever saw valid values
    # The model was evaluated at the constrained particles.
    constrained = result.constrained_parameters
    np.testing.assert_allclose(
        result.history.outputs[3], jax.vmap(model)(constrained[3]), rtol=1e-13
    )
    x = np.asarray(result.constrained_ensemble)
    assert np.all(x[:, 0] > 0) and np.all((x[:, 1] > 0) & (x[:, 1] < 2))
    # Identifiable 2-parameter problem, noise 0.02: the ensemble collapses near the truth.
    np.testing.assert_allclose(x.mean(axis=0), truth, atol=0.05)
    # And the unconstrained view is the one the process iterates.
    np.testing.assert_allclose(prior.to_unconstrained(x), result.ensemble, rtol=1e-10)

    # The executor path applies the same transform before calling a NumPy model.
    t = np.asarray(T)

    def numpy_model(theta):
        return theta[0] * np.exp(-theta[1] * t)

    with cf.ThreadPoolExecutor(2) as pool:
        threaded = calibrate(EKI_FIXED, numpy_model, 16, obs, SIGMA**2, n_iterations=N_IT,
                             key=key, prior=prior, executor=pool)  # fmt: skip
    np.testing.assert_allclose(threaded.history.parameters, result.history.parameters, **ALGEBRAIC)


# --- failures on the JAX path -------------------------------------------------------------------


def test_jax_path_records_failures_and_names_the_iteration_of_too_many(getkey):
    a = jnp.array([[1.0, 0.2], [0.3, 1.0], [1.0, -1.0], [0.5, 0.5]])
    obs = a @ jnp.array([3.0, 1.0])
    ens = 0.3 * jax.random.normal(getkey(), (10, 2))
    eki = EKI_FIXED

    def model(theta):
        # The "simulator" breaks for theta_0 > 2; EKI drives the ensemble towards theta_0 = 3.
        return jnp.where(theta[0] > 2.0, jnp.nan, a @ theta)

    key = getkey()
    partial = calibrate(eki, model, ens, obs, 1e-4, n_iterations=30, key=key, throw=False)
    k = partial.failed_iteration
    assert k is not None and k >= 1
    assert partial.n_iterations == k and partial.history.outputs.shape[0] == k
    # Before k at most half failed (failures recorded, run continued) ...
    assert np.all(2 * np.asarray(partial.history.n_failed) <= 10)
    recorded = {(i, j) for i, j, _ in partial.failures}
    expected = {(i, int(j)) for i in range(k)
                for j in np.flatnonzero(np.asarray(partial.history.failed[i]))}  # fmt: skip
    assert expected <= recorded
    # ... and at k more than half of the (frozen) ensemble fails.
    outputs = jax.vmap(model)(partial.ensemble)
    assert 2 * int(np.sum(~np.all(np.isfinite(np.asarray(outputs)), axis=1))) > 10
    with pytest.raises(CalibrationError, match=f"at iteration {k},") as info:
        calibrate(eki, model, ens, obs, 1e-4, n_iterations=30, key=key)
    assert info.value.iteration == k and "NaN/inf" in str(info.value)


# --- progress and bad input ---------------------------------------------------------------------


def test_executor_path_prints_progress_too(fixed_run, capsys):
    ens, obs, noise, key, result, printed = fixed_run

    def numpy_decay(theta):
        t = np.asarray(T)
        return theta[0] * np.exp(-theta[1] * t) + theta[2] * t

    with cf.ThreadPoolExecutor(2) as pool:
        threaded = calibrate(EKI_FIXED, numpy_decay, ens, obs, noise, n_iterations=N_IT,
                             key=key, executor=pool, progress=True)  # fmt: skip
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("iteration")]
    assert len(lines) == 4 and "algorithm time 2.000000" in lines[-1]
    np.testing.assert_allclose(threaded.history.parameters, result.history.parameters,
                               **ALGEBRAIC)  # fmt: skip


def test_bad_input_is_rejected_with_instructions(getkey):
    ens, obs, noise = _problem(getkey())
    eki = EKI()
    key = getkey()
    with pytest.raises(ValueError, match="exactly one of"):
        calibrate(eki, decay, ens, obs, noise, key=key)
    with pytest.raises(ValueError, match="exactly one of"):
        calibrate(eki, decay, ens, obs, noise, n_iterations=2, until_converged=True, key=key)
    with pytest.raises(ValueError, match="positive int"):
        calibrate(eki, decay, ens, obs, noise, n_iterations=0, key=key)
    with pytest.raises(ValueError, match=r"ONE parameter vector"):
        calibrate(eki, lambda th: jnp.sum(th), ens, obs, noise, n_iterations=1, key=key)
    with pytest.raises(ValueError, match="prior="):
        calibrate(eki, decay, 10, obs, noise, n_iterations=1, key=key)
    with pytest.raises(ValueError, match="1-D"):
        calibrate(eki, decay, ens, obs[None], noise, n_iterations=1, key=key)
    with pytest.raises(TypeError, match="MiniBatcher"):
        calibrate(eki, decay, ens, obs, noise, n_iterations=1, key=key, batches=[[0, 1]])
