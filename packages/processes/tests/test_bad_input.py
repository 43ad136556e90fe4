"""Bad input to the processes gets a clear error that names the fix, or a status: never a NaN
ensemble, and never a message that blames the wrong thing (the time step, the forward model).

Concrete bad values raise when they are given, naming the argument, the first bad index and
what to pass instead. One small linear problem throughout.
"""

import inspect
from typing import Any

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
    "negative-variance": (jnp.array([0.1, 0.1, -0.2]), r"variance\[2\] is -0\.2.*must be positive"),
    "zero-variance": (jnp.array([0.1, 0.0, 0.1]), r"variance\[1\] is 0\.0.*must be positive"),
    "dense-nan": (0.1 * jnp.eye(3).at[0, 2].set(jnp.nan), r"covariance\[0, 2\] is nan"),
    "dense-negative-diagonal": (-jnp.eye(3), r"covariance\[0, 0\] is -1\.0"),
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
        r"AdditiveInflation\(cov=\.\.\.\): variance\[1\] is -1\.0; every variance must be "
        r"non-negative",
    ),
    "AdditiveInflation-nan-cov": (
        lambda: AdditiveInflation(jnp.nan),
        r"AdditiveInflation\(cov=\.\.\.\): variance is nan",
    ),
    "AdditiveInflation-indefinite-cov": (
        lambda: AdditiveInflation(jnp.array([[1.0, 2.0], [2.0, 1.0]])),
        r"AdditiveInflation\(cov=\.\.\.\) must be a positive-semidefinite covariance",
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


# --- timeouts, keys ----------------------------------------------------------------------


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
