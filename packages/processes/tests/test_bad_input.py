"""Bad input to the processes gets a clear error that names the fix, or a status: never a NaN
ensemble, and never a message that blames the wrong thing (the time step, the forward model).

Concrete bad values raise when they are given; traced ones (under jit / vmap) set the state's
`status` and leave the ensemble where it was. One small linear problem throughout.
"""

import inspect
import pathlib
import re
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.primitives as fxp
import filterax.processes as fpr
from filterax.processes import (
    EKI,
    EKS,
    ESMDA,
    ETKI,
    GNKI,
    IES,
    SEC,
    TEKI,
    UKI,
    AbstractProcessState,
    AdditiveInflation,
    DataMisfitController,
    EKSStableScheduler,
    FixedScheduler,
    MiniBatcher,
    MultiplicativeInflation,
    SECNice,
    SerialExecutor,
    SparseInversion,
    TaperLocalizer,
    calibrate,
    evaluate_members,
)

A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
Y = A @ jnp.array([0.5, -0.2])
X0 = jax.random.normal(jax.random.key(0), (8, 2))
KEY = jax.random.key(1)
OK = AbstractProcessState.OK
INVALID_DATA = AbstractProcessState.INVALID_DATA
INVALID_HYPERPARAMETERS = AbstractProcessState.INVALID_HYPERPARAMETERS

PROCESSES = {
    "EKI": lambda: EKI(),
    "ETKI": lambda: ETKI(),
    "GNKI": lambda: GNKI(jnp.zeros(2), jnp.ones(2)),
    "TEKI": lambda: TEKI(jnp.zeros(2), jnp.ones(2)),
    "SparseInversion": lambda: SparseInversion(1.0),
    "EKS": lambda: EKS(jnp.zeros(2), jnp.ones(2)),
    "UKI": lambda: UKI(jnp.zeros(2), jnp.eye(2)),
    "ESMDA": lambda: ESMDA(),
    "IES": lambda: IES(n_iter=2),
}
# The processes whose status a traced bad input sets without raising (ESMDA and IES raise
# with their default throw=True; see the inverse-smoother test below).
STATUS_PROCESSES = ["EKI", "ETKI", "GNKI", "TEKI", "SparseInversion", "EKS", "UKI"]


def forward(particles):
    return particles @ A.T


def initial(name: str) -> Any:
    return None if name == "UKI" else X0


def numpy_forward(theta):
    # A black-box model written with NumPy: not traceable by JAX.
    return np.asarray(A) @ np.asarray(theta)


# --- concrete observations and noise -----------------------------------------------------------


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_nan_obs_is_refused_with_index(name, bad):
    # Used to be accepted; the update then turned the ensemble into NaN.
    process = PROCESSES[name]()
    with pytest.raises(ValueError, match=r"obs=\.\.\.\) has a non-finite entry at index 1") as e:
        process.init(initial(name), Y.at[1].set(bad), 0.1, key=KEY)
    assert "do not support missing data" in str(e.value)
    assert "Remove entry 1 from obs" in str(e.value)


def test_calibrate_nan_obs_is_refused_not_blamed_on_the_time_step():
    # Used to end in "the previous process update diverged ... Use a smaller time step".
    with pytest.raises(ValueError, match=r"calibrate\(obs=\.\.\.\).*index 2") as e:
        calibrate(EKI(), lambda t: A @ t, X0, Y.at[2].set(jnp.nan), 0.1, n_iterations=2, key=KEY)
    assert "time step" not in str(e.value) and "diverged" not in str(e.value)


NOISE_CASES = {
    "nan-variance": (jnp.array([0.1, jnp.nan, 0.1]), r"variance\[1\] is nan"),
    "inf-scalar": (jnp.inf, r"variance is inf"),
    "negative-variance": (
        jnp.array([0.1, 0.1, -0.2]),
        r"variance\[2\] is -0\.2; a variance must be non-negative",
    ),
    "zero-variance": (
        jnp.array([0.1, 0.0, 0.1]),
        r"variance\[1\] is 0\.0; a covariance must be positive definite",
    ),
    "dense-nan": (0.1 * jnp.eye(3).at[0, 2].set(jnp.nan), r"covariance\[0, 2\] is nan"),
    "dense-negative-diagonal": (
        -jnp.eye(3),
        r"covariance\[0, 0\] is -1\.0; a covariance with negative variances",
    ),
    "dense-indefinite": (
        jnp.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        r"positive-definite covariance; its smallest eigenvalue is -1",
    ),
    "low-rank-nan-factor": (
        fxp.low_rank_noise(jnp.ones((3, 1)).at[1, 0].set(jnp.nan), jnp.full(3, 0.1)),
        r"low-rank factor\[1, 0\] is nan",
    ),
}


@pytest.mark.parametrize("case", list(NOISE_CASES))
def test_bad_obs_noise_is_refused_with_index(case):
    noise, message = NOISE_CASES[case]
    with pytest.raises(ValueError, match=r"EKI\.init\(obs_noise=\.\.\.\).*" + message):
        EKI().init(X0, Y, noise, key=KEY)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_nan_obs_noise_is_refused_by_every_process_without_the_filters_missing_data_hint(name):
    # The primitives' message said "put NaN in the observations" (the filters' rule), which
    # the processes do not follow.
    noise = jnp.array([0.1, jnp.nan, 0.1])
    with pytest.raises(ValueError, match=r"variance\[1\] is nan") as e:
        PROCESSES[name]().init(initial(name), Y, noise, key=KEY)
    assert "do not support missing data" in str(e.value)


def test_minibatch_override_and_minibatcher_are_checked():
    eki = EKI(scheduler=FixedScheduler(0.5))
    state = eki.init(X0, Y, 0.1, key=KEY)
    with pytest.raises(ValueError, match=r"update\(obs=\.\.\.\) has a non-finite entry at index 0"):
        eki.update(state, forward(X0), obs=Y.at[0].set(jnp.nan), obs_noise=0.1)
    with pytest.raises(ValueError, match=r"update\(obs_noise=\.\.\.\): variance\[1\] is -1"):
        eki.update(state, forward(X0), obs_noise=jnp.array([0.1, -1.0, 0.1]))
    with pytest.raises(ValueError, match=r"MiniBatcher\(obs=\.\.\.\).*index 1"):
        MiniBatcher(Y.at[1].set(jnp.inf), 0.1, [[0], [1], [2]])
    with pytest.raises(ValueError, match=r"MiniBatcher\(obs_noise=\.\.\.\): variance\[2\]"):
        MiniBatcher(Y, jnp.array([0.1, 0.1, 0.0]), [[0], [1], [2]])


# --- traced observations and noise: a status, the ensemble never moves ----------------------


def _traced_run(name):
    process = PROCESSES[name]()

    @jax.jit
    def run(y, noise):
        first = state = process.init(initial(name), y, noise, key=KEY)
        for _ in range(2):
            state = process.update(state, forward(process.particles(state)))
        return first, state

    return run


@pytest.mark.parametrize("name", STATUS_PROCESSES)
def test_traced_nan_obs_sets_status_not_timestep_message(name):
    # Under jit the values are unknown when init runs: the status reports them, and the
    # ensemble stays finite (it used to become NaN, which calibrate blamed on the time step).
    run = _traced_run(name)
    first, state = run(Y.at[1].set(jnp.nan), 0.1)
    assert int(first.status) == int(state.status) == INVALID_DATA
    np.testing.assert_array_equal(state.ensemble, first.ensemble)
    assert np.all(np.isfinite(state.ensemble)) and float(state.time) == 0.0
    _, good = run(Y, 0.1)
    assert int(good.status) == OK and float(good.time) > 0.0


@pytest.mark.parametrize(
    "noise",
    [jnp.array([0.1, -0.1, 0.1]), jnp.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])],
    ids=["negative-variance", "indefinite-matrix"],
)
def test_traced_bad_obs_noise_sets_invalid_data(noise):
    _, state = _traced_run("EKI")(Y, noise)
    assert int(state.status) == INVALID_DATA
    np.testing.assert_array_equal(state.ensemble, X0)


def test_vmapped_obs_flag_only_the_bad_member():
    run = _traced_run("ETKI")
    ys = jnp.stack([Y, Y.at[2].set(jnp.inf), Y + 0.1])
    _, states = jax.vmap(run, in_axes=(0, None))(ys, 0.1)
    np.testing.assert_array_equal(states.status, [OK, INVALID_DATA, OK])
    np.testing.assert_array_equal(states.ensemble[1], X0)
    _, alone = run(Y, 0.1)
    # vmap and a single run differ only by batched-kernel round-off.
    np.testing.assert_allclose(states.ensemble[0], alone.ensemble, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make", [lambda t: ESMDA(throw=t), lambda t: IES(n_iter=2, throw=t)], ids=["ESMDA", "IES"]
)
def test_inverse_smoothers_traced_nan_obs_raise_or_set_status(make):
    def run(y, throw):
        return make(throw).run(lambda t: A @ t, X0, y, 0.1, key=KEY)

    bad = Y.at[0].set(jnp.nan)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"update: invalid data \(status 1\)"):
        jax.block_until_ready(eqx.filter_jit(lambda y: run(y, True))(bad))
    result = eqx.filter_jit(lambda y: run(y, False))(bad)
    assert int(result.state.status) == INVALID_DATA
    np.testing.assert_array_equal(result.ensemble, X0)


# --- hyper-parameters ---------------------------------------------------------------------


CONCRETE_HYPERPARAMETERS = {
    "FixedScheduler-nan": (lambda: FixedScheduler(jnp.nan), r"FixedScheduler\(dt=\.\.\.\)"),
    "FixedScheduler-negative": (lambda: FixedScheduler(-0.5), r"finite and >= 0; got -0\.5"),
    "FixedScheduler-inf": (lambda: FixedScheduler(float("inf")), r"FixedScheduler\(dt=.*inf"),
    "DataMisfitController-zero": (
        lambda: DataMisfitController(terminate_at=0.0),
        r"terminate_at=\.\.\.\) must be finite and > 0",
    ),
    "DataMisfitController-nan": (
        lambda: DataMisfitController(terminate_at=float("nan")),
        r"terminate_at=\.\.\.\) must be finite",
    ),
    "EKSStableScheduler-negative": (
        lambda: EKSStableScheduler(alpha=-1.0),
        r"EKSStableScheduler\(alpha=\.\.\.\) must be finite and > 0",
    ),
    "EKSStableScheduler-nan-eps": (
        lambda: EKSStableScheduler(eps=float("nan")),
        r"EKSStableScheduler\(eps=\.\.\.\)",
    ),
    "MultiplicativeInflation-negative": (
        lambda: MultiplicativeInflation(-0.1),
        r"MultiplicativeInflation\(s=\.\.\.\) must be finite and >= 0",
    ),
    "MultiplicativeInflation-nan": (
        lambda: MultiplicativeInflation(float("nan")),
        r"MultiplicativeInflation\(s=\.\.\.\)",
    ),
    "AdditiveInflation-negative-cov": (
        lambda: AdditiveInflation(jnp.array([1.0, -1.0])),
        r"AdditiveInflation\(cov=\.\.\.\): variance\[1\] is -1\.0; a variance must be "
        r"non-negative \(it is a squared standard deviation\)\. Pass",
    ),
    "AdditiveInflation-nan-cov": (
        lambda: AdditiveInflation(jnp.nan),
        r"AdditiveInflation\(cov=\.\.\.\): variance is nan",
    ),
    "AdditiveInflation-indefinite-cov": (
        lambda: AdditiveInflation(jnp.array([[1.0, 2.0], [2.0, 1.0]])),
        r"AdditiveInflation\(cov=\.\.\.\) must be a positive-semidefinite covariance",
    ),
    "AdditiveInflation-singular-dense-cov": (
        lambda: AdditiveInflation(jnp.ones((2, 2))),
        r"AdditiveInflation\(cov=\.\.\.\) \(dense, drawn by Cholesky\) must be a "
        r"positive-definite covariance",
    ),
    "AdditiveInflation-nan-s": (
        lambda: AdditiveInflation(1.0, s=float("nan")),
        r"AdditiveInflation\(s=\.\.\.\)",
    ),
    "SEC-negative": (lambda: SEC(alpha=-1.0), r"SEC\(alpha=\.\.\.\) must be finite and >= 0"),
    "SEC-nan-cutoff": (lambda: SEC(cutoff=float("nan")), r"SEC\(cutoff=\.\.\.\)"),
    "SECNice-nan": (lambda: SECNice(delta=float("nan")), r"SECNice\(delta=\.\.\.\)"),
    "TaperLocalizer-nan": (
        lambda: TaperLocalizer(jnp.ones((2, 3)).at[1, 2].set(jnp.nan)),
        r"non-finite weight at \(1, 2\)",
    ),
    "SparseInversion-nan": (
        lambda: SparseInversion(float("nan")),
        r"SparseInversion\(l1_weight=\.\.\.\) must be finite",
    ),
    "SparseInversion-negative-threshold": (
        lambda: SparseInversion(1.0, threshold_value=-1.0),
        r"SparseInversion\(threshold_value=\.\.\.\) must be finite and >= 0",
    ),
    "UKI-nan-alpha-reg": (
        lambda: UKI(jnp.zeros(2), jnp.eye(2), alpha_reg=float("nan")),
        r"UKI\(alpha_reg=\.\.\.\) must be finite and > 0 and <= 1",
    ),
    "UKI-zero-alpha": (
        lambda: UKI(jnp.zeros(2), jnp.eye(2), alpha=0.0),
        r"UKI\(alpha=\.\.\.\) must be finite and > 0",
    ),
    "UKI-kappa": (
        lambda: UKI(jnp.zeros(2), jnp.eye(2), kappa=-3.0),
        r"kappa=\.\.\.\) must be > -N_p",
    ),
    "EKS-nan-prior-mean": (
        lambda: EKS(jnp.array([0.0, jnp.nan]), jnp.ones(2)),
        r"EKS\(prior_mean=\.\.\.\) has a non-finite entry at index 1",
    ),
}


@pytest.mark.parametrize("case", list(CONCRETE_HYPERPARAMETERS))
def test_invalid_hyperparameter_is_refused_at_construction(case):
    make, message = CONCRETE_HYPERPARAMETERS[case]
    with pytest.raises(ValueError, match=message):
        make()


def test_traced_negative_or_nan_step_sets_invalid_hyperparameters():
    # A vmapped sweep over the time step: the bad members report status 2 and stay put, the
    # good one moves as usual.
    def run(dt):
        eki = EKI(scheduler=FixedScheduler(dt))
        state = eki.init(X0, Y, 0.1, key=KEY)
        return eki.update(state, forward(eki.particles(state)))

    states = jax.vmap(run)(jnp.array([0.5, -0.5, jnp.nan, jnp.inf]))
    np.testing.assert_array_equal(states.status, [OK] + [INVALID_HYPERPARAMETERS] * 3)
    np.testing.assert_array_equal(states.time, [0.5, 0.0, 0.0, 0.0])
    for k in (1, 2, 3):
        np.testing.assert_array_equal(states.ensemble[k], X0)
    assert not np.allclose(states.ensemble[0], X0)


def test_traced_nan_inflation_sets_invalid_hyperparameters():
    def run(s):
        eki = EKI(scheduler=FixedScheduler(0.5), inflation=MultiplicativeInflation(s))
        state = eki.init(X0, Y, 0.1, key=KEY)
        return eki.update(state, forward(eki.particles(state)))

    states = jax.vmap(run)(jnp.array([0.5, jnp.nan]))
    np.testing.assert_array_equal(states.status, [OK, INVALID_HYPERPARAMETERS])
    assert np.all(np.isfinite(states.ensemble))


def test_traced_negative_additive_inflation_covariance_raises():
    def run(cov):
        eki = EKI(scheduler=FixedScheduler(0.5), inflation=AdditiveInflation(cov))
        state = eki.init(X0, Y, 0.1, key=KEY)
        return eki.update(state, forward(eki.particles(state)))

    with pytest.raises(eqx.EquinoxRuntimeError, match="positive-semidefinite covariance"):
        jax.block_until_ready(eqx.filter_jit(run)(jnp.array([1.0, -1.0])))


class _BackwardScheduler(fxp.AbstractScheduler):
    """A user scheduler with a bug: a negative step."""

    def init(self) -> None:
        return None

    def step(self, state, misfits, **info):
        return jnp.asarray(-0.1, jnp.result_type(misfits)), None


def test_calibrate_reports_a_negative_step_from_the_scheduler():
    eki = EKI(scheduler=_BackwardScheduler(), failure_handler="ignore")
    with pytest.raises(ValueError, match=r"iteration 0\): invalid hyper-parameters \(status 2\)"):
        calibrate(eki, lambda t: A @ t, X0, Y, 0.1, n_iterations=2, key=KEY)
    result = calibrate(eki, lambda t: A @ t, X0, Y, 0.1, n_iterations=2, key=KEY, throw=False)
    assert result.status == INVALID_HYPERPARAMETERS
    np.testing.assert_array_equal(result.history.status, [INVALID_HYPERPARAMETERS] * 2)
    np.testing.assert_array_equal(result.ensemble, X0)


# --- forward models, timeouts, keys --------------------------------------------------------


def _uses_float(theta):
    return A @ theta * float(theta[0])


def _python_if(theta):
    return A @ theta if theta[0] > 0 else -(A @ theta)


@pytest.mark.parametrize(
    "model", [numpy_forward, _uses_float, _python_if], ids=["numpy", "float", "python-if"]
)
def test_non_jax_forward_model_names_executor(model):
    # Used to fail deep inside JAX (TracerArrayConversionError from vmap inside the scan).
    eki = EKI(scheduler=FixedScheduler(0.5), failure_handler="ignore")
    with pytest.raises(TypeError, match=r"executor=SerialExecutor\(\)") as e:
        calibrate(eki, model, X0, Y, 0.1, n_iterations=2, key=KEY)
    assert "forward_fn cannot be traced by JAX" in str(e.value)
    assert isinstance(e.value.__cause__, jax.errors.JAXTypeError)


def test_non_jax_forward_model_runs_with_the_executor_the_message_names():
    eki = EKI(scheduler=FixedScheduler(0.5), failure_handler="ignore")
    with pytest.raises(TypeError, match="executor"):
        calibrate(eki, numpy_forward, X0, Y, 0.1, until_converged=True, key=KEY)
    result = calibrate(
        eki, numpy_forward, X0, Y, 0.1, n_iterations=2, key=KEY, executor=SerialExecutor()
    )
    assert result.n_iterations == 2 and np.all(np.isfinite(result.ensemble))


def test_inverse_smoother_run_names_the_calibrate_executor_path():
    with pytest.raises(TypeError, match=r"ESMDA\.run: forward_fn cannot be traced") as e:
        ESMDA().run(numpy_forward, X0, Y, 0.1, key=KEY)
    assert "calibrate(ESMDA(...), forward_fn, prior_ensemble" in str(e.value)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_timeout_must_be_positive(timeout):
    message = r"timeout=\.\.\.\) must be a positive, finite number of seconds"
    with pytest.raises(ValueError, match=r"calibrate\(" + message):
        calibrate(
            EKI(),
            numpy_forward,
            X0,
            Y,
            0.1,
            n_iterations=1,
            key=KEY,
            executor=SerialExecutor(),
            timeout=timeout,
        )
    with pytest.raises(ValueError, match=r"evaluate_members\(" + message):
        evaluate_members(numpy_forward, np.zeros((2, 2)), timeout=timeout)


def test_timeout_of_the_wrong_kind_or_without_executor_is_refused():
    # inspect.unwrap: the test-only runtime type checker would refuse "5" first.
    with pytest.raises(TypeError, match="must be a number of seconds, or None"):
        inspect.unwrap(evaluate_members)(numpy_forward, np.zeros((2, 2)), timeout="5")
    with pytest.raises(ValueError, match="executor path only"):
        calibrate(EKI(), lambda t: A @ t, X0, Y, 0.1, n_iterations=1, key=KEY, timeout=5.0)


def test_missing_or_wrong_key_is_a_type_error_naming_jax_random_key():
    # calibrate(key=None) used to fail inside jax.random (or blame init(..., key=...)).
    # inspect.unwrap: without the test-only runtime type checker, as users run it.
    pattern = r"must be a JAX PRNG key, e\.g\. jax\.random\.key\(0\); got None"
    with pytest.raises(TypeError, match=r"calibrate\(key=\.\.\.\) " + pattern):
        inspect.unwrap(calibrate)(EKI(), lambda t: A @ t, X0, Y, 0.1, n_iterations=1, key=None)
    with pytest.raises(TypeError, match=r"EKI\.init\(key=\.\.\.\) must be a JAX PRNG key"):
        inspect.unwrap(EKI.init)(EKI(), X0, Y, 0.1, key=0)
    with pytest.raises(TypeError, match=r"key=\.\.\. must be a JAX PRNG key"):
        inspect.unwrap(fpr.optax.process_transform)(
            lambda anchor, std: EKI(), lambda t: A @ t, Y, 0.1, make_initial=None, key=None
        )


# --- failure handlers: code and README agree ------------------------------------------------


def test_eks_default_failure_handler_keeps_failed_members_as_the_readme_says():
    # The README said every process re-samples failed members; EKS (as EKP's Sampler) ignores
    # them: they keep their position and are left out of the statistics.
    eks = EKS(jnp.zeros(2), jnp.ones(2), scheduler=FixedScheduler(0.05))
    assert eks.failure_handler == "ignore" and EKI().failure_handler == "sample_succ_gauss"
    state = eks.init(X0, Y, 0.1, key=KEY)
    new = eks.update(state, forward(X0).at[jnp.array([1, 4])].set(jnp.nan))
    np.testing.assert_array_equal(new.ensemble[jnp.array([1, 4])], X0[jnp.array([1, 4])])
    assert int(new.n_failed) == 2 and not np.allclose(new.ensemble[0], X0[0])
    readme = pathlib.Path(__file__).parents[1].joinpath("README.md").read_text()
    text = re.sub(r"\s+", " ", readme)
    assert '`EKS` leaves them where they were and updates the others (`"ignore"`' in text
    assert "re-samples them from a Gaussian fitted to the successful members" in text
    assert "re-sampled from a Gaussian fitted to the others" not in text
