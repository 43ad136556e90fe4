"""Black-box forward models through concurrent.futures executors: member evaluation, failure
capture, and the executor path of `calibrate` against the compiled JAX path."""

import concurrent.futures as cf
import importlib
import importlib.util
import multiprocessing
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import (
    EKI,
    CalibrationError,
    FixedScheduler,
    SerialExecutor,
    calibrate,
    evaluate_members,
)

TESTS = pathlib.Path(__file__).parent
T = jnp.linspace(0.0, 2.0, 8)
TRUTH = jnp.array([1.0, 0.7, -0.3])


@pytest.fixture
def models(monkeypatch):
    # Spawned process-pool workers import forward functions by module name; they inherit
    # sys.path, so the helper module must be importable from it (not only via importlib).
    monkeypatch.syspath_prepend(str(TESTS))
    return importlib.import_module("processes_numpy_models")


def decay_jax(theta):
    """The JAX twin of ``processes_numpy_models.decay``."""
    return theta[0] * jnp.exp(-theta[1] * T) + theta[2] * T


def _problem(key, n_ensemble=12):
    obs = decay_jax(TRUTH) + 0.02 * jax.random.normal(jax.random.fold_in(key, 1), (8,))
    noise = jnp.full(8, 0.02**2)
    ens = jnp.array([[1.2, 0.5, 0.0]]) + 0.4 * jax.random.normal(key, (n_ensemble, 3))
    return ens, obs, noise


# --- evaluate_members -------------------------------------------------------------------------


def test_thread_pool_evaluations_equal_direct_calls(models):
    thetas = np.random.default_rng(0).standard_normal((6, 3))
    with cf.ThreadPoolExecutor(3) as pool:
        ev = evaluate_members(models.decay, thetas, pool)
    np.testing.assert_array_equal(ev.outputs, np.stack([models.decay(t) for t in thetas]))
    assert ev.n_failed == 0 and not ev.failed.any() and ev.first_error() is None


def test_every_failure_kind_is_captured_per_member(models):
    def flaky(theta):
        kind = int(theta[0])
        if kind == 1:
            raise RuntimeError("segfault in the solver")
        if kind == 2:
            return np.full(8, np.inf)
        if kind == 3:
            return np.zeros(5)
        return models.decay(theta)

    thetas = np.zeros((5, 3))
    thetas[:, 0] = [0, 1, 2, 3, 0]
    with cf.ThreadPoolExecutor(2) as pool:
        ev = evaluate_members(flaky, thetas, pool, output_size=8)
    assert ev.failed.tolist() == [False, True, True, True, False]
    assert isinstance(ev.errors[1], RuntimeError) and "segfault" in str(ev.errors[1])
    assert isinstance(ev.errors[2], FloatingPointError)
    assert isinstance(ev.errors[3], ValueError) and "(8,)" in str(ev.errors[3])
    assert np.all(np.isnan(ev.outputs[1:4]))
    np.testing.assert_array_equal(ev.outputs[[0, 4]], [models.decay(thetas[0])] * 2)
    assert ev.first_error()[0] == 1


def test_output_size_is_inferred_from_the_majority(models):
    thetas = np.zeros((4, 3))
    thetas[3, 0] = 1.0

    def odd_one_out(theta):
        return np.zeros(2) if theta[0] == 1.0 else np.zeros(8)

    ev = evaluate_members(odd_one_out, thetas, SerialExecutor())
    assert ev.outputs.shape == (4, 8)
    assert ev.failed.tolist() == [False, False, False, True]


def test_timeout_marks_unfinished_members_failed(models):
    thetas = np.zeros((4, 3))
    thetas[0, 0] = -10.0  # the slow member
    pool = cf.ThreadPoolExecutor(4)
    try:
        ev = evaluate_members(models.slow_first_member, thetas, pool, timeout=0.2)
    finally:
        pool.shutdown(wait=True)
    assert ev.failed.tolist() == [True, False, False, False]
    assert isinstance(ev.errors[0], TimeoutError)


def test_bad_executor_and_particles_are_rejected(models):
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        evaluate_members(models.decay, np.zeros((2, 3)), executor=map)
    with pytest.raises(ValueError, match=r"\(N_e, N_p\)"):
        evaluate_members(models.decay, np.zeros(3))
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        calibrate(EKI(), models.decay, np.zeros((4, 3)), np.zeros(8), 1.0, n_iterations=1,
                  key=jax.random.key(0), executor=object())  # fmt: skip


# --- calibrate through executors ----------------------------------------------------------------


def _executor(kind):
    if kind == "serial":
        return SerialExecutor()
    if kind == "thread":
        return cf.ThreadPoolExecutor(2)
    # spawn, not fork: forking a process that runs JAX's threads can deadlock.
    return cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))


@pytest.mark.parametrize("kind", ["serial", "thread", "process"])
def test_executor_path_equals_vmapped_jax_path(models, getkey, kind):
    ens, obs, noise = _problem(getkey())
    eki = EKI(scheduler=FixedScheduler(0.5), failure_handler="ignore")
    key = getkey()
    reference = calibrate(eki, decay_jax, ens, obs, noise, n_iterations=4, key=key)
    with _executor(kind) as executor:
        result = calibrate(
            eki, models.decay, ens, obs, noise, n_iterations=4, key=key, executor=executor
        )
    # Same keys and same update; only np.exp vs XLA's exp (~1 ulp) and XLA fusion differ.
    for name in ("parameters", "means", "outputs", "misfits", "dt", "time"):
        np.testing.assert_allclose(
            getattr(result.history, name),
            getattr(reference.history, name),
            rtol=1e-10,
            atol=1e-10,
            err_msg=name,
        )
    assert result.n_iterations == reference.n_iterations == 4
    assert result.failures == ()


def test_raising_members_are_failures_and_match_nan_members_in_jax(models, getkey):
    ens, obs, noise = _problem(getkey(), n_ensemble=16)
    eki = EKI(scheduler=FixedScheduler(0.5))
    key = getkey()
    initially_failing = np.asarray(ens[:, 0]) > 1.5
    assert 0 < initially_failing.sum() <= 8  # the test needs some, but at most half, failing

    with cf.ThreadPoolExecutor(2) as pool:
        result = calibrate(
            eki, models.decay_raising_above, ens, obs, noise, n_iterations=4, key=key,
            executor=pool,
        )  # fmt: skip
    np.testing.assert_array_equal(result.history.failed[0], initially_failing)
    assert int(result.history.n_failed[0]) == initially_failing.sum()
    first_round = [f for f in result.failures if f[0] == 0]
    assert [f[1] for f in first_round] == np.flatnonzero(initially_failing).tolist()
    assert all("RuntimeError: solver diverged" in f[2] for f in first_round)
    assert np.all(np.isnan(result.history.outputs[0][initially_failing]))
    assert np.all(np.isfinite(result.ensemble))
    assert result.n_iterations == 4

    def decay_nan_above(theta):
        return jnp.where(theta[0] > 1.5, jnp.nan, decay_jax(theta))

    # A member that raises on the executor path is the same as a NaN member on the JAX path.
    reference = calibrate(eki, decay_nan_above, ens, obs, noise, n_iterations=4, key=key)
    np.testing.assert_array_equal(reference.history.failed, result.history.failed)
    np.testing.assert_allclose(
        reference.history.parameters, result.history.parameters, rtol=1e-10, atol=1e-10
    )


def test_more_than_half_failing_raises_naming_iteration_and_first_error(models, getkey):
    ens, obs, noise = _problem(getkey())
    with pytest.raises(CalibrationError, match="iteration 0") as info:
        calibrate(EKI(), models.always_raises, ens, obs, noise, n_iterations=3,
                  key=getkey(), executor=SerialExecutor())  # fmt: skip
    message = str(info.value)
    assert "12 of 12" in message and "member 0" in message
    assert "license server unreachable" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.iteration == 0 and info.value.n_failed == 12


def test_wrong_output_shape_is_reported(models, getkey):
    ens, obs, noise = _problem(getkey())
    with pytest.raises(CalibrationError, match=r"shape \(8,\)"):
        calibrate(EKI(), models.wrong_shape, ens, obs, noise, n_iterations=1, key=getkey(),
                  executor=SerialExecutor())  # fmt: skip


def test_throw_false_returns_the_history_up_to_the_failure(models, getkey):
    ens, obs, noise = _problem(getkey())
    result = calibrate(EKI(), models.always_raises, ens, obs, noise, n_iterations=3,
                       key=getkey(), executor=SerialExecutor(), throw=False)  # fmt: skip
    assert result.failed_iteration == 0 and result.n_iterations == 0
    assert result.history.parameters.shape == (1, 12, 3)
    assert result.history.outputs.shape == (0, 12, 8)
    np.testing.assert_array_equal(result.ensemble, ens)
    assert len(result.failures) == 12


# --- the Dask example ---------------------------------------------------------------------------


def test_dask_example_calibrates_on_a_local_cluster(capsys):
    # `distributed` is in the test dependency group (the optional extra `[dask]` for users).
    path = TESTS.parent / "examples" / "dask_calibration.py"
    spec = importlib.util.spec_from_file_location("filterax_processes_dask_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(n_ensemble=30, n_workers=2, processes=False, progress=True)
    # DataMisfitController: stops exactly at algorithm time 1.
    assert result.converged and float(result.history.time[-1]) == 1.0
    # The simulator raises for frequency > 2.3; a prior draw hits that (seed 0), the failure is
    # recorded with its message and the run carries on.
    assert any("time step unstable" in message for _, _, message in result.failures)
    assert int(result.history.n_failed.sum()) == len(result.failures) >= 1
    # 20 observations with noise 0.02 pin the three parameters to a few per cent.
    estimate = np.asarray(result.constrained_ensemble).mean(axis=0)
    np.testing.assert_allclose(estimate, example.TRUTH, rtol=0.05)
    printed = capsys.readouterr().out
    assert "algorithm time 1.000000" in printed and "failed simulator runs" in printed
