"""Fuzz: every public process of `filterax.processes` fed a table of bad inputs gets a clear
error or a status flag, never a silent NaN and never a plausible number with status OK
(`filterax.testing.assert_loud`).

The table-driven sweep over every process that complements `test_bad_input.py` (which pins
the exact messages, one case each):

- data: ``obs_noise`` with each of `BAD_SCALARS` as a scalar and as one entry, ``obs`` and the
  initial ensemble with a NaN/inf entry: concrete values raise in ``init``, ``update(obs=,
  obs_noise=)`` and `calibrate`; traced ones (under ``jit``, and as one member of a ``vmap``
  batch) set the state's status, or raise inside ``jit`` for `ESMDA`/`IES` with
  ``throw=True``;
- shapes and dtypes: 1-D/3-D/integer ensembles, ``N_e = 1``, wrong ``obs``/``obs_noise``/
  forward-evaluation shapes;
- hyper-parameters: every scheduler, inflation, localiser, prior and smoother constant fed
  the `BAD_SCALARS` outside its documented range: refused at construction; traced (``jit``,
  and a ``vmap`` member) it sets ``INVALID_HYPERPARAMETERS``;
- priors (`constrained_gaussian`, `ParameterDistribution`, `combine_distributions`),
  `MiniBatcher`, `evaluate_members`/`SerialExecutor` and `calibrate`'s own arguments.

Known boundaries (documented, so not swept here): `ParameterDistribution.to_unconstrained` of
a value outside the bounds is NaN; an explicit `EKS` step beyond its stability limit blows
the ensemble up (`calibrate` then reports non-finite parameters).

The processes' states hold a PRNG key, which `assert_loud` cannot turn into NumPy; the calls
below hand it the state's status, ensemble and time (`_View`).
"""

import functools
import inspect
from typing import Any, NamedTuple

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
    ExponentialStepLength,
    FixedScheduler,
    MiniBatcher,
    MultiplicativeInflation,
    ParameterDistribution,
    SECFisher,
    SECNice,
    SerialExecutor,
    SparseInversion,
    TaperLocalizer,
    calibrate,
    combine_distributions,
    constrained_gaussian,
    evaluate_members,
)
from filterax.testing import BAD_SCALARS, assert_loud

A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
Y = A @ jnp.array([0.5, -0.2])
NOISE = jnp.full(3, 0.1)
X0 = jax.random.normal(jax.random.key(0), (6, 2))
KEY = jax.random.key(1)
OK = AbstractProcessState.OK
INVALID_DATA = AbstractProcessState.INVALID_DATA
INVALID_HYPERPARAMETERS = AbstractProcessState.INVALID_HYPERPARAMETERS
NON_FINITE = ["nan", "+inf", "-inf"]
# The jaxtyping hook of the test suite may refuse a wrong shape or dtype first (a TypeCheckError
# naming the parameter); users without it get the library's message.
TYPECHECK = "|Type-check error"

PROCESSES = {
    "EKI": lambda: EKI(),
    "ETKI": lambda: ETKI(),
    "GNKI": lambda: GNKI(jnp.zeros(2), jnp.ones(2)),
    "TEKI": lambda: TEKI(jnp.zeros(2), jnp.ones(2)),
    "SparseInversion": lambda: SparseInversion(1.0),
    "EKS": lambda: EKS(jnp.zeros(2), jnp.ones(2)),
    "UKI": lambda: UKI(jnp.zeros(2), jnp.eye(2)),
    "ESMDA": lambda: ESMDA(n_assimilations=2),
    "IES": lambda: IES(n_iter=2),
}
# ESMDA and IES raise inside jit by default (throw=True); with throw=False they set the status.
THROWS = {"ESMDA", "IES"}
TRACED = {
    **PROCESSES,
    "ESMDA(throw=False)": lambda: ESMDA(n_assimilations=2, throw=False),
    "IES(throw=False)": lambda: IES(n_iter=2, throw=False),
}
# The processes that take a per-update obs/obs_noise override (mini-batches).
OVERRIDES = ["EKI", "ETKI", "GNKI", "TEKI", "SparseInversion", "EKS", "UKI"]


class _View(NamedTuple):
    """What `assert_loud` inspects of a state (it holds a PRNG key NumPy cannot convert)."""

    status: Any
    ensemble: Any
    time: Any


def _view(state: Any) -> _View:
    return _View(state.status, state.ensemble, state.time)


def forward(particles):
    return particles @ A.T


def _owner(name: str) -> str:
    return name.split("(")[0]


def _initial(name: str, x: Any = None) -> Any:
    """What ``init`` takes: an ensemble, or UKI's ``(mean, cov)`` (``x`` its mean)."""
    if _owner(name) == "UKI":
        return None if x is None else (x, jnp.eye(2))
    return X0 if x is None else x


def _run(process: Any, initial: Any, y: Any, noise: Any, n: int = 1, **override: Any) -> _View:
    state = process.init(initial, y, noise, key=KEY)
    for _ in range(n):
        state = process.update(state, forward(process.particles(state)), **override)
    return _view(state)


# --- data: concrete obs_noise, obs and initial ensembles -------------------------------------


@pytest.mark.parametrize("bad", list(BAD_SCALARS))
@pytest.mark.parametrize("name", list(PROCESSES))
def test_bad_obs_noise_is_refused_by_init_update_and_calibrate(name, bad):
    process, value = PROCESSES[name](), BAD_SCALARS[bad]
    owner = _owner(name)
    state = process.init(_initial(name), Y, NOISE, key=KEY)
    evals = forward(process.particles(state))
    # ESMDA and IES take no override at all (their data are fixed in init).
    override = r"update\(obs_noise=\.\.\.\)" if name in OVERRIDES else r"no obs/obs_noise override"
    for noise in (value, NOISE.at[2].set(value)):  # as a scalar and as one entry
        assert_loud(
            lambda nz=noise: process.init(_initial(name), Y, nz, key=KEY),
            match=rf"{owner}\.init\(obs_noise=\.\.\.\)",
        )
        assert_loud(
            lambda nz=noise: calibrate(
                process, lambda t: A @ t, _initial(name), Y, nz, n_iterations=1, key=KEY
            ),  # fmt: skip
            match=r"calibrate\(obs_noise=\.\.\.\)",
        )
        assert_loud(lambda nz=noise: process.update(state, evals, obs_noise=nz), match=override)


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_non_finite_obs_is_refused_by_update_and_calibrate(name, bad):
    # init(obs=...) for every process: test_bad_input.test_nan_obs_is_refused_with_index.
    process, obs = PROCESSES[name](), Y.at[1].set(BAD_SCALARS[bad])
    assert_loud(
        lambda: calibrate(
            process, lambda t: A @ t, _initial(name), obs, NOISE, n_iterations=1, key=KEY
        ),  # fmt: skip
        match=r"calibrate\(obs=\.\.\.\) has a non-finite entry at index 1",
    )
    state = process.init(_initial(name), Y, NOISE, key=KEY)
    match = r"update\(obs=\.\.\.\) has a non-finite entry" if name in OVERRIDES else "override"
    assert_loud(
        lambda: process.update(state, forward(process.particles(state)), obs=obs, obs_noise=0.1),
        match=match,
    )


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_non_finite_initial_ensemble_is_refused(name, bad):
    # Used to pass: the EKI family re-sampled the NaN member as a "failed forward evaluation",
    # EKS kept it as NaN with status OK, ESMDA/IES blamed the forward model.
    value = BAD_SCALARS[bad]
    if _owner(name) == "UKI":
        initial, where = (jnp.zeros(2).at[1].set(value), jnp.eye(2)), r"mean, \.\.\.\)\) .*index 1"
    else:
        initial, where = X0.at[2, 1].set(value), r"\) has a non-finite entry at index \(2, 1\)"
    process = PROCESSES[name]()
    assert_loud(lambda: process.init(initial, Y, NOISE, key=KEY), match=where)
    if _owner(name) != "UKI":
        assert_loud(
            lambda: calibrate(
                process, lambda t: A @ t, initial, Y, NOISE, n_iterations=1, key=KEY
            ),  # fmt: skip
            match=r"non-finite entry at index \(2, 1\)",
        )


@pytest.mark.parametrize("name", list(PROCESSES))
def test_wrong_shapes_and_dtypes_are_refused(name):
    process = PROCESSES[name]()
    owner = _owner(name)
    state = process.init(_initial(name), Y, NOISE, key=KEY)
    evals = forward(process.particles(state))
    init = functools.partial(process.init, key=KEY)
    cases = [
        (lambda: init(_initial(name), Y[None], NOISE), r"obs=\.\.\.\) must be a non-empty 1-D"),
        (lambda: init(_initial(name), Y[:0], NOISE), r"obs=\.\.\.\) must be a non-empty 1-D"),
        (lambda: init(_initial(name), Y, jnp.full(4, 0.1)), r"obs_noise=.*length 3"),
        (lambda: init(_initial(name), Y, 0.1 * jnp.eye(2)), r"obs_noise=.*shape \(3, 3\)"),
        (lambda: init(_initial(name), Y, jnp.ones((3, 3, 3))), r"obs_noise=.*0-D .*1-D.*2-D"),
        (lambda: process.update(state, evals[:, :2]), r"N_y|\(N_e, N_y\)"),
        (lambda: process.update(state, evals[:3]), r"\(N_e, N_y\)"),
        (lambda: process.update(state, evals[0]), r"\(N_e, N_y\)"),
        (lambda: process.misfits(state, evals[:, :2]), r"N_y=2 columns but obs has 3"),
        (lambda: inspect.unwrap(type(process).init)(process, _initial(name), Y, NOISE, key=0),
         r"must be a JAX PRNG key"),
    ]  # fmt: skip
    if owner == "UKI":
        cases += [
            (lambda: init(X0, Y, NOISE), r"takes None .* or a \(mean, cov\) tuple"),
            (lambda: init((jnp.zeros(3), jnp.eye(3)), Y, NOISE), r"shape \(2,\)"),
            (lambda: init((jnp.zeros(2, int), jnp.eye(2)), Y, NOISE), r"floating-point"),
            (lambda: init((jnp.zeros(2), -jnp.eye(2)), Y, NOISE), r"positive semidefinite"),
        ]
    else:
        cases += [
            (lambda: init(X0[0], Y, NOISE), r"must be a 2-D array"),
            (lambda: init(X0[None], Y, NOISE), r"must be a 2-D array"),
            (lambda: init(X0.astype(jnp.int32), Y, NOISE), r"floating-point"),
            (lambda: init(X0[:1], Y, NOISE), r"N_e=1 members; at least 2"),
        ]
    for call, match in cases:
        assert assert_loud(call, match=match + TYPECHECK) == "error"
    if owner in ("GNKI", "TEKI", "EKS"):
        assert_loud(lambda: init(jnp.ones((6, 3)), Y, NOISE), match=r"prior has 2 parameters")


# --- data: traced obs, obs_noise and initial ensembles ---------------------------------------


def _data_cases(name: str) -> dict[str, tuple[Any, Any, Any]]:
    """(initial, obs, noise variances) per case; "valid" first, then one bad value each."""
    x = jnp.zeros(2) if _owner(name) == "UKI" else X0
    at = (1,) if _owner(name) == "UKI" else (2, 1)
    cases = {"valid": (x, Y, NOISE)}
    for bad in NON_FINITE:
        cases[f"initial {bad}"] = (x.at[at].set(BAD_SCALARS[bad]), Y, NOISE)
        cases[f"obs {bad}"] = (x, Y.at[1].set(BAD_SCALARS[bad]), NOISE)
    for bad, value in BAD_SCALARS.items():
        cases[f"noise entry {bad}"] = (x, Y, NOISE.at[1].set(value))
        cases[f"noise all {bad}"] = (x, Y, jnp.full(3, value))
    return cases


def _traced_data_run(name: str):
    process = TRACED[name]()

    def run(x, y, noise):
        return _run(process, _initial(name, x), y, noise)

    return run


@pytest.mark.parametrize("name", list(TRACED))
def test_traced_bad_data_in_a_vmap_batch_flags_only_that_member(name):
    run = jax.jit(jax.vmap(_traced_data_run(name)))  # one compilation for every case
    cases = _data_cases(name)
    valid = cases["valid"]
    for case, bad in list(cases.items())[1:]:
        batch = [jnp.stack(pair) for pair in zip(valid, bad, strict=True)]
        if name in THROWS:
            # Inside jit a bad member raises for the whole batch, naming the status.
            assert_loud(lambda b=batch: run(*b), match=r"invalid data \(status 1\)")
            continue
        out = run(*batch)
        assert assert_loud(lambda o=out: o, match="", member=1) == "status", case
        assert int(out.status[1]) == INVALID_DATA, case
        assert int(out.status[0]) == OK and float(out.time[0]) > 0.0, case
        # The bad member does not move and (unless its own initial value was NaN) never turns
        # into NaN.
        assert float(out.time[1]) == 0.0, case
        if not case.startswith("initial"):
            assert np.all(np.isfinite(np.asarray(out.ensemble[1]))), case


@pytest.mark.parametrize("name", list(TRACED))
def test_traced_bad_data_under_jit(name):
    run = jax.jit(_traced_data_run(name))
    scalar_noise = jax.jit(lambda nz: _traced_data_run(name)(_data_cases(name)["valid"][0], Y, nz))
    calls = [functools.partial(run, *case) for case in list(_data_cases(name).values())[1:]]
    calls += [functools.partial(scalar_noise, value) for value in BAD_SCALARS.values()]
    for call in calls:
        if name in THROWS:
            assert_loud(call, match=r"invalid data \(status 1\)")
        else:
            assert assert_loud(call, match="") == "status"
            assert int(call().status) == INVALID_DATA


@pytest.mark.parametrize("name", OVERRIDES)
def test_traced_bad_override_noise_sets_status(name):
    # A mini-batch's noise, known only at run time: the update that uses it sets the status.
    process = TRACED[name]()

    def run(noise):
        return _run(process, _initial(name), Y, NOISE, obs=Y, obs_noise=noise)

    noises = jnp.stack([NOISE] + [NOISE.at[0].set(v) for v in BAD_SCALARS.values()])
    out = jax.jit(jax.vmap(run))(noises)
    assert int(out.status[0]) == OK
    for member in range(1, noises.shape[0]):
        assert assert_loud(lambda o=out: o, match="", member=member) == "status"
        assert int(out.status[member]) == INVALID_DATA


# --- hyper-parameters ----------------------------------------------------------------------

Z2, O2 = jnp.zeros(2), jnp.ones(2)


def _step(dt=0.5):
    return FixedScheduler(dt)


# name -> (make(value) -> process, regex naming the parameter, refused bad values, a valid
# value, traced?). Values in the range the docs allow (a zero step, a zero inflation) are
# not swept: they are valid input.
HYPERPARAMETERS = {
    "FixedScheduler(dt)": (
        lambda v: EKI(scheduler=FixedScheduler(v)),
        r"FixedScheduler\(dt=",
        "nan +inf -inf negative",
        0.5,
        True,
    ),
    "DataMisfitController(terminate_at)": (
        lambda v: EKI(scheduler=DataMisfitController(terminate_at=v)),
        r"terminate_at=",
        "nan +inf -inf negative zero",
        1.0,
        True,
    ),
    "EKSStableScheduler(alpha)": (
        lambda v: EKS(Z2, O2, scheduler=EKSStableScheduler(alpha=v)),
        r"EKSStableScheduler\(alpha=",
        "nan +inf -inf negative zero",
        1.0,
        True,
    ),
    "EKSStableScheduler(eps)": (
        lambda v: EKS(Z2, O2, scheduler=EKSStableScheduler(eps=v)),
        r"EKSStableScheduler\(eps=",
        "nan +inf -inf negative zero",
        1e-8,
        True,
    ),
    "MultiplicativeInflation(s)": (
        lambda v: EKI(scheduler=_step(), inflation=MultiplicativeInflation(v)),
        r"MultiplicativeInflation\(s=",
        "nan +inf -inf negative",
        0.5,
        True,
    ),
    "AdditiveInflation(s)": (
        lambda v: ETKI(scheduler=_step(), inflation=AdditiveInflation(0.1, s=v)),
        r"AdditiveInflation\(s=",
        "nan +inf -inf negative",
        0.5,
        True,
    ),
    "AdditiveInflation(cov)": (
        lambda v: ETKI(scheduler=_step(), inflation=AdditiveInflation(O2.at[1].set(v))),
        r"AdditiveInflation\(cov=",
        "nan +inf -inf negative",
        0.1,
        True,
    ),
    "SEC(alpha)": (
        lambda v: EKI(scheduler=_step(), localizer=SEC(alpha=v)),
        r"SEC\(alpha=",
        "nan +inf -inf negative",
        1.0,
        True,
    ),
    "SEC(cutoff)": (
        lambda v: EKI(scheduler=_step(), localizer=SEC(cutoff=v)),
        r"SEC\(cutoff=",
        "nan +inf -inf negative",
        0.1,
        True,
    ),
    "SECNice(delta)": (
        lambda v: TEKI(Z2, O2, localizer=SECNice(delta=v)),
        r"SECNice\(delta=",
        "nan +inf -inf negative",
        1.0,
        True,
    ),
    "TaperLocalizer(matrix)": (
        lambda v: SparseInversion(1.0, localizer=TaperLocalizer(jnp.ones((2, 3)).at[0, 1].set(v))),
        r"TaperLocalizer\(matrix=",
        "nan +inf -inf",
        0.5,
        True,
    ),
    "SparseInversion(l1_weight)": (
        lambda v: SparseInversion(v),
        r"SparseInversion\(l1_weight=",
        "nan +inf -inf negative",
        1.0,
        True,
    ),
    "SparseInversion(threshold_value)": (
        lambda v: SparseInversion(1.0, threshold_value=v),
        r"SparseInversion\(threshold_value=",
        "nan +inf -inf negative",
        0.01,
        True,
    ),
    "UKI(alpha_reg)": (
        lambda v: UKI(Z2, jnp.eye(2), alpha_reg=v),
        r"UKI\(alpha_reg=",
        "nan +inf -inf negative zero",
        0.5,
        True,
    ),
    # static fields: concrete only
    "UKI(alpha)": (
        lambda v: UKI(Z2, jnp.eye(2), alpha=v),
        r"UKI\(alpha=",
        "nan +inf -inf negative zero",
        1.0,
        False,
    ),
    "UKI(beta)": (
        lambda v: UKI(Z2, jnp.eye(2), beta=v),
        r"UKI\(beta=",
        "nan +inf -inf",
        2.0,
        False,
    ),
    "UKI(kappa)": (
        lambda v: UKI(Z2, jnp.eye(2), kappa=v),
        r"UKI\(kappa=",
        "nan +inf -inf",
        0.0,
        False,
    ),
    "GNKI(prior_mean)": (
        lambda v: GNKI(Z2.at[1].set(v), O2),
        r"GNKI\(prior_mean=.*index 1",
        "nan +inf -inf",
        0.0,
        True,
    ),
    "GNKI(prior_cov)": (
        lambda v: GNKI(Z2, v),
        r"GNKI\(prior_cov=",
        "nan +inf -inf negative zero",
        1.0,
        True,
    ),
    "TEKI(prior_cov)": (
        lambda v: TEKI(Z2, O2.at[0].set(v)),
        r"TEKI\(prior_cov=",
        "nan +inf -inf negative zero",
        1.0,
        True,
    ),
    "EKS(prior_cov)": (
        lambda v: EKS(Z2, O2.at[0].set(v)),
        r"EKS\(prior_cov=",
        "nan +inf -inf negative zero",
        1.0,
        True,
    ),
    "ETKI(prior_mean)": (
        lambda v: ETKI(prior_mean=Z2.at[0].set(v), prior_cov=O2),
        r"ETKI\(prior_mean=.*index 0",
        "nan +inf -inf",
        0.0,
        True,
    ),
    "ETKI(prior_cov)": (
        lambda v: ETKI(prior_mean=Z2, prior_cov=v),
        r"ETKI\(prior_cov=",
        "nan +inf -inf negative zero",
        1.0,
        True,
    ),
    "UKI(prior_cov)": (
        lambda v: UKI(Z2, v * jnp.eye(2)),
        r"UKI\(prior_cov=",
        "nan +inf -inf negative zero",
        1.0,
        True,
    ),
    "ESMDA(alphas)": (
        lambda v: ESMDA(alphas=jnp.array([2.0, 2.0]).at[0].set(v), throw=False),
        r"ESMDA\(alphas=",
        "nan +inf -inf negative zero",
        2.0,
        True,
    ),
    "IES(step_length)": (
        lambda v: IES(n_iter=2, step_length=v, throw=False),
        r"IES\(step_length=",
        "nan +inf -inf negative zero",
        0.5,
        True,
    ),
    "ExponentialStepLength(max_length)": (
        lambda v: IES(n_iter=2, step_length=ExponentialStepLength(max_length=v), throw=False),
        r"ExponentialStepLength needs 0 < min_length <= max_length <= 1",
        "nan +inf -inf negative zero",
        0.6,
        True,
    ),
    "ExponentialStepLength(min_length)": (
        lambda v: IES(n_iter=2, step_length=ExponentialStepLength(min_length=v), throw=False),
        r"ExponentialStepLength needs 0 < min_length <= max_length <= 1",
        "nan +inf -inf negative zero",
        0.3,
        True,
    ),
    "ExponentialStepLength(decline)": (
        # +inf used to pass (a constant step, status OK).
        lambda v: IES(n_iter=2, step_length=ExponentialStepLength(decline=v), throw=False),
        r"ExponentialStepLength\(decline=\.\.\.\) must be finite and > 1",
        "nan +inf -inf negative zero",
        2.5,
        True,
    ),
}


@pytest.mark.parametrize(
    ("case", "bad"),
    [(case, bad) for case, spec in HYPERPARAMETERS.items() for bad in spec[2].split()],
)
def test_bad_hyperparameter_is_refused_at_construction(case, bad):
    make, match, _, _, _ = HYPERPARAMETERS[case]
    assert assert_loud(lambda: make(BAD_SCALARS[bad]), match=match) == "error"


def _hyper_run(make):
    def run(value):
        process = make(value)
        return _run(process, _initial("UKI" if isinstance(process, UKI) else "EKI"), Y, NOISE)

    return run


@pytest.mark.parametrize(
    "case", [case for case, spec in HYPERPARAMETERS.items() if spec[4]]
)  # fmt: skip
def test_traced_bad_hyperparameter_sets_status(case):
    # Used to pass with status OK for values the finiteness check let through but outside the
    # parameter's range: a negative inflation scaling deflated, a negative AdditiveInflation
    # scaling or EKS prior variance gave NaN, a zero prior variance, step length or final
    # time stalled the process. One compilation per case: the batch runs under jit, so each
    # bad value is both a jit tracer and one member of a vmap batch (the plain-jit path of
    # the same code is swept by test_traced_bad_data_under_jit).
    make, match, bad_values, good, _ = HYPERPARAMETERS[case]
    run = jax.jit(jax.vmap(_hyper_run(make)))
    for bad in bad_values.split():
        batch = jnp.array([good, BAD_SCALARS[bad]])
        kind = assert_loud(functools.partial(run, batch), match=match, member=1)
        if kind == "status":
            out = run(batch)
            np.testing.assert_array_equal(out.status, [OK, INVALID_HYPERPARAMETERS], err_msg=bad)
            # The bad member does not move; the valid one does.
            np.testing.assert_array_equal(out.time[1], 0.0, err_msg=bad)
            assert float(out.time[0]) > 0.0, bad


def test_gnki_refuses_a_step_that_diverges():
    # (1 - dt) theta + dt (...) diverges for dt >= 2: it used to run, with status OK, to 1e28.
    for dt in (2.0, 3.0, 1e3):
        assert_loud(lambda d=dt: GNKI(Z2, O2, scheduler=FixedScheduler(d)), match=r"dt < 2")
    run = _hyper_run(lambda v: GNKI(Z2, O2, scheduler=FixedScheduler(v)))
    out = jax.jit(jax.vmap(run))(jnp.array([1.0, 3.0]))
    assert assert_loud(lambda: out, match="", member=1) == "status"
    np.testing.assert_array_equal(out.status, [OK, INVALID_HYPERPARAMETERS])


FAILURE_HANDLED = {
    "EKI": EKI,
    "ETKI": ETKI,
    "GNKI": functools.partial(GNKI, Z2, O2),
    "TEKI": functools.partial(TEKI, Z2, O2),
    "SparseInversion": functools.partial(SparseInversion, 1.0),
    "EKS": functools.partial(EKS, Z2, O2),
    "UKI": functools.partial(UKI, Z2, jnp.eye(2)),
    "ESMDA": ESMDA,
}


@pytest.mark.parametrize("name", list(FAILURE_HANDLED))
def test_bad_failure_handler_and_inflation_are_refused(name):
    make = FAILURE_HANDLED[name]
    # FailureHandler is "sample_succ_gauss" or "ignore"; anything else used to be a typo away.
    assert_loud(lambda: make(failure_handler="resample"), match=r"failure_handler=" + TYPECHECK)
    if name not in ("UKI", "ESMDA"):
        assert_loud(lambda: make(inflation=1.5), match=r"inflation=" + TYPECHECK)


def test_localizers_refuse_what_they_cannot_use():
    with pytest.raises(ValueError, match=r"cannot be localised"):
        EKI(stochastic=False, localizer=SECFisher())
    assert_loud(lambda: TaperLocalizer(jnp.ones(3)), match=r"2-D \(N_p, N_y\)" + TYPECHECK)
    eki = EKI(scheduler=_step(), localizer=TaperLocalizer(jnp.ones((2, 4))))
    assert_loud(lambda: eki.init(X0, Y, NOISE, key=KEY), match=r"TaperLocalizer\(matrix=.*\(2, 3\)")


# --- priors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", list(BAD_SCALARS))
def test_constrained_gaussian_refuses_bad_std_and_traced_arguments(bad):
    value = BAD_SCALARS[bad]
    for lower, upper in ((-np.inf, np.inf), (0.0, np.inf), (0.0, 2.0)):
        assert_loud(lambda lo=lower, hi=upper: constrained_gaussian(1.0, value, lo, hi),
                    match=r"std")  # fmt: skip
    # Under jit it used to fail in float() with JAX's "try x.astype(float)".
    # inspect.unwrap: without the test-only type checker, which refuses the tracer first.
    unchecked = inspect.unwrap(constrained_gaussian)
    assert_loud(
        lambda: jax.jit(lambda s: unchecked(1.0, s).cov)(value), match=r"needs concrete numbers"
    )


@pytest.mark.parametrize("bad", NON_FINITE)
def test_constrained_gaussian_refuses_a_mean_outside_or_nan_bounds(bad):
    value = BAD_SCALARS[bad]
    assert_loud(lambda: constrained_gaussian(value, 0.1, 0.0, 1.0), match=r"mean .* inside")
    assert_loud(lambda: constrained_gaussian(value, 0.1), match=r"mean .* inside")
    if bad == "nan":
        assert_loud(lambda: constrained_gaussian(0.5, 0.1, value, 1.0), match=r"inside the bounds")
        assert_loud(lambda: constrained_gaussian(0.5, 0.1, 0.0, value), match=r"inside the bounds")
    assert_loud(lambda: constrained_gaussian(0.5, 0.1, 1.0, 0.0), match=r"inside the bounds")


def _sample(prior: ParameterDistribution):
    return prior.to_constrained(prior.sample(jax.random.key(0), 4))


@pytest.mark.parametrize("bad", list(BAD_SCALARS))
def test_parameter_distribution_refuses_bad_covariance_mean_and_bounds(bad):
    # Used to pass: a NaN, infinite or negative variance (or a NaN mean) gave NaN samples and a
    # NaN bound counted as "no bound".
    value = BAD_SCALARS[bad]
    if bad != "zero":  # a zero variance is a valid (degenerate) prior
        assert_loud(lambda: _sample(ParameterDistribution(Z2, O2.at[1].set(value))),
                    match=r"ParameterDistribution\(cov=\.\.\.\): variance\[1\]")  # fmt: skip
        # traced: checked when sampled
        assert_loud(
            lambda: jax.jit(lambda c: _sample(ParameterDistribution(Z2, c)))(O2.at[1].set(value)),
            match=r"ParameterDistribution\.sample: the draws are not finite",
        )
    if bad in NON_FINITE:
        assert_loud(lambda: _sample(ParameterDistribution(Z2.at[0].set(value), O2)),
                    match=r"ParameterDistribution\(mean=\.\.\.\) .* index 0")  # fmt: skip
    if bad == "nan":
        for bound in ("lower", "upper"):
            kwargs = {bound: jnp.array([-5.0 if bound == "lower" else 5.0, value])}
            assert_loud(
                lambda k=kwargs: _sample(ParameterDistribution(Z2, O2, **k)),
                match=rf"ParameterDistribution\({bound}=\.\.\.\) is NaN at index 1",
            )


def test_parameter_distribution_refuses_shapes_reversed_bounds_and_indefinite_covariance():
    cases = [
        (lambda: ParameterDistribution(Z2, jnp.array([[1.0, 2.0], [2.0, 1.0]])),
         r"positive-semidefinite"),
        (lambda: ParameterDistribution(Z2, O2, lower=1.0, upper=0.0), r"lower < upper"),
        (lambda: ParameterDistribution(Z2, O2, lower=1.0, upper=1.0), r"lower < upper"),
        (lambda: ParameterDistribution(Z2, jnp.ones(3)), r"cov=\.\.\.\) must be"),
        (lambda: ParameterDistribution(jnp.zeros((2, 2)), O2), r"1-D"),
        (lambda: ParameterDistribution(Z2, O2, names=("a",), sizes=(3,)), r"sum to N_p"),
        (lambda: combine_distributions(), r"ParameterDistribution"),
        (lambda: combine_distributions(constrained_gaussian(0.5, 0.1),
                                       constrained_gaussian(0.5, 0.1)), r"unique"),
        (lambda: constrained_gaussian(0.5, 0.1, repeats=0), r"repeats"),
        (lambda: constrained_gaussian(0.5, 0.6, 0.0, 1.0), r"too large"),
        (lambda: constrained_gaussian(0.5, 0.1).to_constrained(jnp.zeros(3)), r"N_p = 1"),
    ]  # fmt: skip
    for call, match in cases:
        assert assert_loud(call, match=match + TYPECHECK) == "error"


# --- mini-batches, executors, calibrate's arguments -----------------------------------------

Y4 = jnp.arange(4.0)
BATCHES = [[0, 1], [2, 3]]


@pytest.mark.parametrize("bad", list(BAD_SCALARS))
def test_minibatcher_refuses_bad_noise(bad):
    value = BAD_SCALARS[bad]
    for noise in (value, jnp.full(4, 0.1).at[3].set(value), 0.1 * jnp.eye(4).at[2, 2].set(value)):
        assert_loud(lambda nz=noise: MiniBatcher(Y4, nz, BATCHES),
                    match=r"MiniBatcher\(obs_noise=\.\.\.\)")  # fmt: skip


def test_minibatcher_refuses_bad_batches():
    cases = [
        (lambda: MiniBatcher(Y4, 0.1, []), r"at least one batch"),
        (lambda: MiniBatcher(Y4, 0.1, [[0, 1, 2], [3]]), r"same non-zero length"),
        (lambda: MiniBatcher(Y4, 0.1, [[0, 1], [2, 4]]), r"lie in \[0, 4\)"),
        (lambda: MiniBatcher(Y4, 0.1, [[0, 1], [-1, 2]]), r"lie in \[0, 4\)"),
        # float and boolean indices used to be cast to int silently (0.5 -> 0, True -> 1)
        (lambda: MiniBatcher(Y4, 0.1, [[0.5, 1.0], [2.0, 3.0]]), r"integer indices"),
        (lambda: MiniBatcher(Y4, 0.1, [[True, False], [False, True]]), r"integer indices"),
        (lambda: MiniBatcher(Y4, 0.1, BATCHES, shuffle=True), r"needs key"),
        (lambda: MiniBatcher(Y4[None], 0.1, BATCHES), r"1-D"),
        (lambda: MiniBatcher(Y4, jnp.ones(3), BATCHES), r"obs_noise=.*length 4"),
    ]
    for call, match in cases:
        assert assert_loud(call, match=match + TYPECHECK) == "error"


def _numpy_forward(theta):
    return np.asarray(A) @ np.asarray(theta)


@pytest.mark.parametrize("bad", list(BAD_SCALARS))
def test_evaluate_members_and_calibrate_refuse_bad_timeouts(bad):
    value = BAD_SCALARS[bad]
    assert_loud(
        lambda: evaluate_members(_numpy_forward, np.zeros((2, 2)), SerialExecutor(), timeout=value),
        match=r"evaluate_members\(timeout=",
    )
    assert_loud(
        lambda: calibrate(
            EKI(),
            _numpy_forward,
            X0,
            Y,
            NOISE,
            n_iterations=1,
            key=KEY,
            executor=SerialExecutor(),
            timeout=value,
        ),  # fmt: skip
        match=r"calibrate\(timeout=",
    )


def test_evaluate_members_refuses_bad_arguments_and_reports_failed_members():
    unwrapped = inspect.unwrap(evaluate_members)
    cases = [
        (lambda: evaluate_members(_numpy_forward, np.zeros(2)), r"2-D"),
        (lambda: unwrapped(_numpy_forward, np.zeros((2, 2)), executor=3), r"Executor"),
        # used to fail in NumPy ("negative dimensions are not allowed") / return empty rows
        (lambda: unwrapped(_numpy_forward, np.zeros((2, 2)), output_size=-1), r"output_size"),
        (lambda: unwrapped(_numpy_forward, np.zeros((2, 2)), output_size=0), r"output_size"),
        (lambda: unwrapped(_numpy_forward, np.zeros((2, 2)), timeout="5"), r"seconds"),
    ]
    for call, match in cases:
        assert assert_loud(call, match=match) == "error"
    # A member returning NaN, the wrong shape or raising is a failure, never a silent row.
    for bad in (lambda t: np.full(3, np.nan), lambda t: np.zeros(2), lambda t: 1 / 0):
        result = evaluate_members(bad, np.zeros((2, 2)), SerialExecutor(), output_size=3)
        assert result.n_failed == 2 and np.all(np.isnan(result.outputs))
        assert all(e is not None for e in result.errors)


def test_calibrate_refuses_bad_arguments():
    eki = EKI(scheduler=_step())
    run = inspect.unwrap(calibrate)
    model = lambda t: A @ t  # noqa: E731
    batcher = MiniBatcher(Y, 0.1, [[0], [1], [2]])
    cases = [
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=0, key=KEY), r"positive int"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=-1, key=KEY), r"positive int"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=2.5, key=KEY), r"positive int"),
        (lambda: run(eki, model, X0, Y, NOISE, key=KEY), r"exactly one of"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=1, until_converged=True, key=KEY),
         r"exactly one of"),
        (lambda: run(eki, model, X0, Y, NOISE, until_converged=True, max_iterations=0, key=KEY),
         r"positive int"),
        (lambda: run(eki, 3, X0, Y, NOISE, n_iterations=1, key=KEY), r"callable"),
        (lambda: run(eki, lambda t: t, X0, Y, NOISE, n_iterations=1, key=KEY),
         r"returned shape \(6, 2\); expected \(6, 3\)"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=1, key=None), r"jax\.random\.key"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=1, key=KEY, executor=3),
         r"Executor"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=1, key=KEY, prior=3),
         r"ParameterDistribution"),
        (lambda: run(eki, model, X0, None, None, n_iterations=1, key=KEY, batches=3),
         r"MiniBatcher"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=1, key=KEY, batches=batcher),
         r"pass obs=None"),
        (lambda: run(eki, model, 6, Y, NOISE, n_iterations=1, key=KEY), r"draws the initial"),
        (lambda: run(eki, model, X0, None, NOISE, n_iterations=1, key=KEY), r"required"),
        (lambda: run(eki, model, X0, Y, NOISE, n_iterations=1, key=KEY, timeout=1.0),
         r"executor path only"),
        (lambda: run(eki, model, X0[:1], Y, NOISE, n_iterations=1, key=KEY), r"N_e=1"),
        (lambda: run(eki, model, X0.astype(jnp.int32), Y, NOISE, n_iterations=1, key=KEY),
         r"floating-point"),
        (lambda: run(eki, model, X0, Y[None], NOISE, n_iterations=1, key=KEY), r"1-D"),
        (lambda: run(eki, model, X0, Y, jnp.full(4, 0.1), n_iterations=1, key=KEY),
         r"obs_noise=.*length 3"),
    ]  # fmt: skip
    for call, match in cases:
        assert assert_loud(call, match=match + TYPECHECK) == "error"


def test_public_names_are_all_swept():
    # A new public process or hyper-parameter class must join the tables above.
    swept = {
        "EKI", "ETKI", "GNKI", "TEKI", "SparseInversion", "EKS", "UKI", "ESMDA", "IES",
        "FixedScheduler", "DataMisfitController", "EKSStableScheduler", "ExponentialStepLength",
        "MultiplicativeInflation", "AdditiveInflation", "SEC", "SECFisher", "SECNice",
        "TaperLocalizer", "MiniBatcher", "ParameterDistribution", "constrained_gaussian",
        "combine_distributions", "SerialExecutor", "evaluate_members", "calibrate",
    }  # fmt: skip
    classes = {
        name
        for name, obj in vars(fpr).items()
        if inspect.isclass(obj)
        and not name.startswith("Abstract")
        and issubclass(
            obj,
            fpr.AbstractProcessBase
            | fpr.AbstractInflation
            | fpr.AbstractCovarianceLocalizer
            | fxp.AbstractScheduler,
        )
    }
    assert classes <= swept, classes - swept
