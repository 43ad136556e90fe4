"""Fuzz: every public smoother fed a table of bad inputs gets a clear error or a status flag,
never a silent NaN and never a plausible number with status OK (`filterax.testing.assert_loud`).

Covered: `EnKS`, `FixedLagSmoother` (`.smooth` on a saved history; `run_online` and
`OnlineFixedLagSmoother` through `filterax.filters.run`), `EnsembleRTS`, `EnsembleSqrtSmoother`,
`rts_smooth`, `assimilate_and_smooth`, `iEnKS` (`iEnKS.run` and through `run`),
`ensemble_transform`, `local_ensemble_transforms`. Bad inputs: `obs_noise` NaN, +-inf,
negative, zero (a scalar and one entry of a vector); non-finite, wrongly shaped or integer
histories, ensembles and observations; N_e = 1; NaN, infinite, reversed observation times and
a bad `t0`; bad hyper-parameters. Concrete values get a `ValueError`/`TypeError` naming the
argument; traced ones (under `jit`, or one member of a `vmap` batch) an `eqx.error_if` error or
the result's status (INVALID_NOISE 4, INVALID_TIMES 3, NONFINITE 1) for the bad member only.

Replays with another key, filter, observations or rotation flag are in `test_bad_history.py`.
Documented values that are not errors are checked to give the documented answer: an infinite
observation is a missing one (the same result as NaN), `FixedLagSmoother(0)` is the filter.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
import filterax.smoothers as fs
from filterax.testing import BAD_SCALARS, assert_loud
from filterax.zoo import Lorenz96, StateSpaceModel, presets
from filterax.zoo.presets import grid_geometry

OK, NONFINITE = ff.RunResult.OK, ff.RunResult.NONFINITE
INVALID_TIMES, INVALID_NOISE = ff.RunResult.INVALID_TIMES, ff.RunResult.INVALID_NOISE
# Under the test suite's jaxtyping hook a wrong shape or type is caught by the annotations
# first (a TypeCheckError naming the parameter); users get the library's message.
TYPECHECK = "|Type-check error"

SSM = presets.lorenz63_sakov2012()
R = 2.0  # the preset's observation variance
N_E = 6
KEY = jax.random.key(2)

SMOOTHERS = {
    "EnKS": fs.EnKS(),
    "FixedLag2": fs.FixedLagSmoother(2),
    "EnsembleRTS": fs.EnsembleRTS(),
    "EnsembleSqrtSmoother": fs.EnsembleSqrtSmoother(),
}
REPLAYING = ("EnKS", "FixedLag2")


@functools.cache
def _problem():
    """Lorenz-63, 4 cycles, N_e = 6: (observations, times, ensemble0, ETKF history)."""
    xp = SSM.simulate(jax.random.key(0), 4)
    ens0 = SSM.initial_ensemble(jax.random.key(1), N_E)
    history = ff.assimilate(
        ff.ETKF(), SSM.dynamics, SSM.obs_op, R, ens0, xp.observations, xp.times, key=KEY,
        save="forecast_and_analysis",
    )  # fmt: skip
    assert int(history.status) == OK
    return xp.observations, xp.times, ens0, history


def _smooth(name, history, noise=R, observations=None, **kwargs):
    ys = _problem()[0] if observations is None else observations
    return SMOOTHERS[name].smooth(ff.ETKF(), history, ys, SSM.obs_op, noise, key=KEY, **kwargs)


@functools.cache
def _jit_smooth(name):
    # One compiled program per smoother, reused by every traced case (same shapes).
    return jax.jit(lambda history, noise: _smooth(name, history, noise))


def _vector_noise(bad):
    return jnp.full(3, R).at[1].set(BAD_SCALARS[bad])


# --- smoothing a saved history -------------------------------------------------------------


@pytest.mark.parametrize("name", REPLAYING)
@pytest.mark.parametrize("bad", list(BAD_SCALARS))
def test_replaying_smoother_refuses_bad_concrete_obs_noise(name, bad):
    # Regression: NaN, negative and zero noise came back as NaN rows with status OK (the
    # replayed analyses divide by it), +inf as a misleading "replay differs" error.
    history = _problem()[3]
    for noise in (BAD_SCALARS[bad], jnp.asarray(BAD_SCALARS[bad]), _vector_noise(bad)):
        assert assert_loud(lambda n=noise: _smooth(name, history, n), match="obs_noise") == "error"


@pytest.mark.parametrize("name", REPLAYING)
def test_replaying_smoother_flags_bad_traced_obs_noise(name):
    # Regression: under jit the bad noise came back as NaN rows with status OK. Now status
    # INVALID_NOISE (every row NaN), per member of a sweep; the good member is untouched.
    history = _problem()[3]
    for bad in BAD_SCALARS:
        out = _jit_smooth(name)(history, jnp.asarray(BAD_SCALARS[bad]))
        assert assert_loud(lambda o=out: o, match="") == "status"
        assert int(out.status) == INVALID_NOISE
        assert np.all(np.isnan(out.smoothed_mean))
    scales = jnp.array([R, *BAD_SCALARS.values()])
    out = jax.vmap(lambda s: _smooth(name, history, s * jnp.ones(3)))(scales)
    for member in range(1, len(scales)):
        assert assert_loud(lambda o=out: o, match="", member=member) == "status"
    assert int(out.status[0]) == OK
    eager = _smooth(name, history)
    np.testing.assert_allclose(out.smoothed_mean[0], eager.smoothed_mean, rtol=1e-10)


@pytest.mark.parametrize("name", list(SMOOTHERS))
@pytest.mark.parametrize("bad", ["nan", "+inf", "-inf"])
def test_smoother_refuses_a_non_finite_history(name, bad):
    # Regression: a NaN/inf entry in a cycle the history calls assimilated (cycle_status 0:
    # the history was edited or built by hand) came back as NaN rows with status OK.
    history = _problem()[3]
    value = BAD_SCALARS[bad]
    for field, k in (("ensembles", 1), ("forecast_ensembles", 2)):
        array = getattr(history, field).at[k, 3, 2].set(value)
        edited = eqx.tree_at(lambda h, f=field: getattr(h, f), history, array)
        match = rf"history\.{field} has a non-finite entry at index \({k}, 3, 2\)"
        assert assert_loud(lambda h=edited: _smooth(name, h), match=match) == "error"
        # traced (under jit): status NONFINITE instead of NaN with status OK
        traced = _jit_smooth(name)(edited, jnp.asarray(R))
        assert assert_loud(lambda o=traced: o, match="") == "status"
        assert int(traced.status) == NONFINITE


def _breaking_dynamics(x, t0, t1):
    # Lorenz-63 whose forecast to t > 0.6 (cycle 2 of 4) is NaN: a run that fails mid-way.
    return jnp.where(t1 > 0.6, jnp.nan, SSM.dynamics(x, t0, t1))


@functools.cache
def _failed_history():
    ys, ts, ens0, _ = _problem()
    history = ff.assimilate(
        ff.ETKF(), _breaking_dynamics, SSM.obs_op, R, ens0, ys, ts, key=KEY,
        save="forecast_and_analysis", throw=False,
    )  # fmt: skip
    assert int(history.status) == NONFINITE and int(history.first_failure) == 2
    return history


@pytest.mark.parametrize("name", list(SMOOTHERS))
def test_smoother_of_a_failed_run_keeps_its_status(name):
    # A run that failed (throw=False) is smoothed up to its failure; the status stays.
    out = _smooth(name, _failed_history())
    assert assert_loud(lambda: out, match="") == "status"
    assert int(out.status) == NONFINITE and int(out.first_failure) == 2
    assert np.all(np.isfinite(out.smoothed_mean[:2])) and np.all(np.isnan(out.smoothed_mean[2:]))


@pytest.mark.parametrize("name", list(SMOOTHERS))
def test_smoother_refuses_malformed_histories(name):
    ys, _, _, history = _problem()

    def edit(**fields):
        names = tuple(fields)
        return eqx.tree_at(
            lambda h: tuple(getattr(h, f) for f in names), history, tuple(fields.values())
        )

    saved_analyses_only = ff.assimilate(
        ff.ETKF(), SSM.dynamics, SSM.obs_op, R, _problem()[2], ys, _problem()[1], key=KEY,
        save="ensembles",
    )  # fmt: skip
    cases = [
        (
            edit(
                ensembles=history.ensembles.astype(jnp.int32),
                forecast_ensembles=history.forecast_ensembles.astype(jnp.int32),
            ),
            r"floating point",
        ),
        (
            edit(
                ensembles=history.ensembles[:, :1],
                forecast_ensembles=history.forecast_ensembles[:, :1],
            ),
            r"N_e=1",
        ),
        (edit(forecast_ensembles=history.forecast_ensembles[:, :, :2]), r"same shape"),
        (edit(ensembles=history.ensembles[0], forecast_ensembles=history.ensembles[0]), "shape"),
        (saved_analyses_only, r"save='forecast_and_analysis'"),
        (history.ensembles, r"AssimilationResult"),
    ]
    for bad, match in cases:
        assert assert_loud(lambda h=bad: _smooth(name, h), match=match + TYPECHECK) == "error"


@pytest.mark.parametrize("name", REPLAYING)
def test_replaying_smoother_refuses_bad_observations_and_key(name):
    ys, _, _, history = _problem()
    smoother = SMOOTHERS[name]
    cases = [
        (lambda: _smooth(name, history, observations=ys[:-1]), r"T=4 rows"),
        (lambda: _smooth(name, history, observations=ys[0]), r"shape \(T, N_y\)"),
        (lambda: _smooth(name, history, observations=ys[:, :2]), r"N_y|obs_op"),
        (
            lambda: smoother.smooth(ff.ETKF(), history, None, SSM.obs_op, R, key=KEY),
            r"needs the \(T, N_y\) observations",
        ),
        (
            lambda: smoother.smooth(ff.ETKF(), history, ys, SSM.obs_op, R, key=None),
            r"needs key=",
        ),
        (lambda: smoother.smooth(None, history, ys, SSM.obs_op, R, key=KEY), r"analysis"),
    ]
    for call, match in cases:
        assert assert_loud(call, match=match + TYPECHECK) == "error"


@pytest.mark.parametrize("name", REPLAYING)
def test_infinite_observation_is_missing_in_the_replay(name):
    # One rule: an infinite observation is not observed, like NaN. A run with a NaN entry
    # smoothed with +-inf there is the same run (no replay error, the same estimate).
    ys, ts, ens0, _ = _problem()
    missing = ys.at[2, 1].set(jnp.nan)
    history = ff.assimilate(
        ff.ETKF(), SSM.dynamics, SSM.obs_op, R, ens0, missing, ts, key=KEY,
        save="forecast_and_analysis",
    )  # fmt: skip
    reference = _smooth(name, history, observations=missing)
    for value in (jnp.inf, -jnp.inf):
        observations = ys.at[2, 1].set(value)
        out = _smooth(name, history, observations=observations)
        assert assert_loud(lambda o=out: o, match="", allow_finite=True) == "value"
        np.testing.assert_array_equal(out.smoothed_mean, reference.smoothed_mean)


def test_lag_zero_is_the_filter():
    # FixedLagSmoother(0) is documented as the filter: not an error, and exactly the analysis.
    history = _problem()[3]
    out = _smooth("EnKS", history)  # compiled once; lag 0 below must differ from it
    zero = fs.FixedLagSmoother(0).smooth(ff.ETKF(), history, _problem()[0], SSM.obs_op, R,
                                         key=KEY)  # fmt: skip
    np.testing.assert_array_equal(zero.smoothed_mean, history.analysis_mean)
    assert not np.allclose(out.smoothed_mean[:-1], history.analysis_mean[:-1])


# --- hyper-parameters ----------------------------------------------------------------------

_ONLINE = functools.partial(fs.OnlineFixedLagSmoother, ff.EnsembleFilter(ff.ETKF()))
HYPER = [
    *[(f"FixedLagSmoother(lag={v!r})", lambda v=v: fs.FixedLagSmoother(v), "lag")
      for v in (-1, 1.5, True, "2", float("nan"), None)],
    *[(f"OnlineFixedLagSmoother(lag={v!r})", lambda v=v: _ONLINE(v), "lag")
      for v in (-1, 1.5, True)],
    *[(f"iEnKS(lag={v!r})", lambda v=v: fs.iEnKS(lag=v), "lag") for v in (-1, 1.5, True)],
    *[(f"iEnKS(n_iter={v!r})", lambda v=v: fs.iEnKS(n_iter=v), "n_iter")
      for v in (0, -1, 2.0, True)],
    *[(f"iEnKS(wtol={v!r})", lambda v=v: fs.iEnKS(wtol=v), "wtol")
      for v in (-1.0, float("nan"), float("inf"), True, "1e-5")],
    ("iEnKS(variant='foo')", lambda: fs.iEnKS(variant="foo"), "variant"),
    ("iEnKS(mda=1)", lambda: fs.iEnKS(mda=1), "mda"),
    ("iEnKS(bundle='yes')", lambda: fs.iEnKS(bundle="yes"), "bundle"),
    ("iEnKS(rotate=1)", lambda: fs.iEnKS(rotate=1), "rotate"),
    ("iEnKS(AdaptiveInflator)", lambda: fs.iEnKS(inflator=fxp.AdaptiveInflator()), "Adaptive"),
    ("iEnKS(inflator=1.02)", lambda: fs.iEnKS(inflator=1.02), "inflator"),
    *[(f"{cls.__name__}(rcond={v!r})", lambda c=cls, v=v: c(rcond=v), "rcond")
      for cls in (fs.EnsembleRTS, fs.EnsembleSqrtSmoother)
      for v in (float("nan"), -1.0, 1.0, float("inf"))],
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(HYPER)), ids=[c[0] for c in HYPER])
def test_constructor_refuses_bad_hyper_parameter(case):
    # iEnKS(wtol=inf) is a regression: it stopped every window after one iteration silently.
    _, build, match = HYPER[case]
    assert assert_loud(build, match=match + TYPECHECK) == "error"


@pytest.mark.parametrize("cls", [fs.EnsembleRTS, fs.EnsembleSqrtSmoother])
def test_rts_refuses_bad_decorr_concrete_and_traced(cls):
    # Regression: only Python numbers were checked; decorr=jnp.asarray(-1.0), a numpy float32
    # or a vmapped sweep over decorr smoothed silently (a plausible number, or NaN).
    history = _problem()[3]

    def smooth(decorr):
        return cls(decorr=decorr).smooth(ff.ETKF(), history, None, None, None)

    for value in [*BAD_SCALARS.values(), 1.5]:
        for form in (value, jnp.asarray(value), np.float32(value)):
            assert assert_loud(lambda f=form: smooth(f), match=r"decorr") == "error"
        # traced: an error, not the NaN rows' status 1 (a bad finite decorr has no NaN to show)
        traced = assert_loud(lambda v=value: jax.jit(smooth)(jnp.asarray(v)), match=r"decorr")
        assert traced == "error"
        batch = jnp.array([0.5, value])
        assert assert_loud(lambda b=batch: jax.vmap(smooth)(b), match=r"decorr") == "error"


# --- the drivers (filter and smooth from an initial ensemble) -------------------------------


def _online_method():
    return fs.OnlineFixedLagSmoother(ff.EnsembleFilter(ff.ETKF()), 2)


def _through_run(method, noise, ens0, ys, ts, *, t0=0.0, throw=True):
    model = fxp.Model(SSM.dynamics, SSM.obs_op, noise, t0=t0)
    out = ff.run(method, model, ens0, ys, ts, key=KEY, throw=throw)
    if isinstance(method, fs.iEnKS):
        return method.smoother_result(out, model)
    return method.smoother_result(out)


DRIVERS = {
    "assimilate_and_smooth(EnKS)": lambda n, e, y, t, **kw: fs.assimilate_and_smooth(
        fs.EnKS(), ff.ETKF(), SSM.dynamics, SSM.obs_op, n, e, y, t, key=KEY, **kw
    ),
    "assimilate_and_smooth(EnsembleRTS)": lambda n, e, y, t, **kw: fs.assimilate_and_smooth(
        fs.EnsembleRTS(), ff.ETKF(), SSM.dynamics, SSM.obs_op, n, e, y, t, key=KEY, **kw
    ),
    "FixedLagSmoother.run_online": lambda n, e, y, t, **kw: fs.FixedLagSmoother(2).run_online(
        ff.ETKF(), SSM.dynamics, SSM.obs_op, n, e, y, t, key=KEY, **kw
    ),
    "run(OnlineFixedLagSmoother)": lambda n, e, y, t, **kw: _through_run(
        _online_method(), n, e, y, t, **kw
    ),
    "iEnKS.run": lambda n, e, y, t, **kw: fs.iEnKS(lag=1, n_iter=2).run(
        SSM.dynamics, SSM.obs_op, n, e, y, t, key=KEY, **kw
    ),
    "run(iEnKS)": lambda n, e, y, t, **kw: _through_run(
        fs.iEnKS(lag=1, n_iter=2), n, e, y, t, **kw
    ),
}


def _bad_times(ts):
    return {
        "nan": ts.at[1].set(jnp.nan),
        "+inf": ts.at[-1].set(jnp.inf),
        "reversed": ts[::-1],
        "repeated": ts.at[2].set(ts[1]),
    }


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_driver_refuses_bad_concrete_inputs(driver):
    run = DRIVERS[driver]
    ys, ts, ens0, _ = _problem()
    cases = []
    for bad, value in BAD_SCALARS.items():
        cases.append((f"obs_noise {bad}", lambda v=value: run(v, ens0, ys, ts), r"obs_noise"))
        cases.append(
            (f"obs_noise[1] {bad}", lambda b=bad: run(_vector_noise(b), ens0, ys, ts), r"obs_noise")
        )
    for bad, times in _bad_times(ts).items():
        cases.append((f"obs_times {bad}", lambda t=times: run(R, ens0, ys, t), r"obs_times"))
    cases += [
        ("t0 nan", lambda: run(R, ens0, ys, ts, t0=jnp.nan), r"t0"),
        ("t0 after obs_times[0]", lambda: run(R, ens0, ys, ts, t0=1.0), r"t0"),
        ("obs_times length", lambda: run(R, ens0, ys, ts[:2]), r"obs_times"),
        ("observations 1-D", lambda: run(R, ens0, ys[0], ts), r"2-D"),
        ("N_e=1", lambda: run(R, ens0[:1], ys, ts), r"N_e"),
        ("integer ensemble", lambda: run(R, ens0.astype(jnp.int32), ys, ts), r"float"),
        ("1-D ensemble", lambda: run(R, ens0[0], ys, ts), r"2-D|shape"),
        ("NaN ensemble", lambda: run(R, ens0.at[0, 1].set(jnp.nan), ys, ts), r"non-finite"),
    ]
    for label, call, match in cases:
        try:
            assert assert_loud(call, match=match + TYPECHECK) == "error"
        except AssertionError as err:
            raise AssertionError(f"{driver}, {label}: {err}") from err


# The throw=True error under jit is the driver's (`run_cycles`): checked once per kind of
# driver (the run(...) forms and the RTS driver share it), to keep compilations down.
JIT_DRIVERS = ("assimilate_and_smooth(EnKS)", "FixedLagSmoother.run_online", "iEnKS.run")


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_driver_flags_bad_traced_noise_and_times(driver):
    # Under jit (throw=True): an error naming the input. As one member of a vmap sweep
    # (throw=False): that member's status; the good member is OK and finite. Regression for the
    # iEnKS: its status 3/4 came back as 0 with every row NaN.
    run = DRIVERS[driver]
    ys, ts, ens0, _ = _problem()

    def traced(scale, times, throw):
        return run(scale * jnp.ones(3), ens0, ys, times, throw=throw)

    if driver in JIT_DRIVERS:
        jitted = jax.jit(functools.partial(traced, throw=True))
        for value in BAD_SCALARS.values():
            assert assert_loud(lambda v=value: jitted(v, ts), match=r"obs_noise") == "error"
        for times in _bad_times(ts).values():
            result = assert_loud(lambda t=times: jitted(R, t), match=r"observation times")
            assert result == "error"

    bad_times = list(_bad_times(ts).values())
    scales = jnp.array([R, *BAD_SCALARS.values()] + [R] * len(bad_times))
    times = jnp.stack([ts] * (1 + len(BAD_SCALARS)) + bad_times)
    out = jax.vmap(functools.partial(traced, throw=False))(scales, times)
    expected = [OK] + [INVALID_NOISE] * len(BAD_SCALARS) + [INVALID_TIMES] * len(bad_times)
    np.testing.assert_array_equal(out.status, expected)
    for member in range(1, len(scales)):
        assert assert_loud(lambda o=out: o, match="", member=member) == "status"
    assert np.all(np.isfinite(out.smoothed_mean[0]))


# --- the exact RTS smoother ----------------------------------------------------------------


@functools.cache
def _kalman():
    ys, ts, _, _ = _problem()
    return ff.KalmanFilter().filter(
        SSM.x0_mean, SSM.x0_cov, ys, ts, SSM.dynamics, SSM.obs_op, R, save_cov="full"
    )


@functools.cache
def _rts_jit():
    # One compiled rts_smooth (result and times traced), shared by the traced cases.
    return jax.jit(lambda result, times: fs.rts_smooth(result, SSM.dynamics, times))


def test_rts_smooth_refuses_bad_times():
    # Regression: NaN or decreasing times (and a bad t0) gave a plausible smoother (the
    # Jacobians integrate between them); an infinite time never returned. Under jit: status 3.
    kf = _kalman()
    ts = _problem()[1]
    for times in _bad_times(ts).values():
        assert assert_loud(
            lambda t=times: fs.rts_smooth(kf, SSM.dynamics, t), match=r"obs_times"
        ) == "error"  # fmt: skip
    for t0 in (jnp.nan, jnp.inf, 1.0):
        assert assert_loud(
            lambda t=t0: fs.rts_smooth(kf, SSM.dynamics, ts, t0=t), match=r"t0"
        ) == "error"  # fmt: skip
    assert_loud(lambda: fs.rts_smooth(kf, SSM.dynamics, ts[:2]), match=r"obs_times" + TYPECHECK)
    for times in _bad_times(ts).values():
        out = _rts_jit()(kf, times)
        assert assert_loud(lambda o=out: o, match="") == "status"
        assert int(out.status) == INVALID_TIMES and np.all(np.isnan(out.mean))
    good = _rts_jit()(kf, ts)
    assert int(good.status) == OK and np.all(np.isfinite(good.mean))


def test_rts_smooth_of_a_failed_or_edited_filter_run_is_flagged():
    # Regression: the result had no status, so a failed Kalman run (rows NaN) or an edited one
    # came back as NaN rows with nothing to say so.
    # A linear model (the dynamics as a matrix): what is tested does not need Lorenz-63.
    ys, ts, _, _ = _problem()
    dynamics = 0.9 * jnp.eye(3)

    def kalman(noise):
        return ff.KalmanFilter().filter(
            SSM.x0_mean, SSM.x0_cov, ys, ts, dynamics, SSM.obs_op, noise, save_cov="full"
        )

    def smooth(result):
        return fs.rts_smooth(result, dynamics, ts)

    kf = kalman(R)
    sweep = jax.vmap(lambda r: kalman(r * jnp.ones(3)))(jnp.array([R, *BAD_SCALARS.values()]))
    out = jax.vmap(smooth)(sweep)
    for member in range(1, 1 + len(BAD_SCALARS)):
        assert assert_loud(lambda o=out: o, match="", member=member) == "status"
    assert int(out.status[0]) == OK
    failed = jax.tree_util.tree_map(lambda x: x[1], sweep)
    assert assert_loud(lambda: smooth(failed), match="") == "status"
    for bad in ("nan", "+inf"):
        array = kf.forecast_cov.at[2, 0, 0].set(BAD_SCALARS[bad])
        edited = eqx.tree_at(lambda r: r.forecast_cov, kf, array)
        match = r"result\.forecast_cov has a non-finite entry in row 2"
        assert assert_loud(lambda e=edited: smooth(e), match=match) == "error"
        traced = jax.jit(smooth)(edited)
        assert assert_loud(lambda o=traced: o, match="") == "status"
        assert int(traced.status) == NONFINITE
    diagonal = eqx.tree_at(
        lambda r: (r.cov, r.forecast_cov),
        kf,
        (jnp.diagonal(kf.cov, axis1=1, axis2=2), jnp.diagonal(kf.forecast_cov, axis1=1, axis2=2)),
    )
    cases = [
        (eqx.tree_at(lambda r: r.mean, kf, kf.mean.astype(jnp.int32)), r"floating point"),
        (kf.mean, r"KalmanResult"),
        (diagonal, r"save_cov='full'"),
    ]
    for bad, match in cases:
        assert assert_loud(lambda b=bad: smooth(b), match=match + TYPECHECK) == "error"


# --- the ensemble transforms ---------------------------------------------------------------


@functools.cache
def _local_problem():
    """Lorenz-96 on 8 sites (fully observed), N_e = 6, one forecast and observation."""
    l96 = StateSpaceModel(
        Lorenz96(n=8, forcing=8.0, dt=0.05), fxp.IdentityObs(), 1.0, dt_obs=0.05,
        x0_mean=jnp.zeros(8).at[0].set(1.0), x0_cov=1.0, **grid_geometry(8, fxp.IdentityObs()),
    )  # fmt: skip
    xp = l96.simulate(jax.random.key(0), 1)
    context = {"state_coords": l96.state_coords, "obs_coords": l96.obs_coords,
               "distance": l96.distance}  # fmt: skip
    return l96.initial_ensemble(jax.random.key(1), N_E), xp.observations[0], context


def _transform_calls():
    """name -> call(forecast, obs, noise) and the noise size (a vector's)."""
    ys, _, ens0, _ = _problem()
    forecast8, obs8, context = _local_problem()
    letkf = ff.LETKF(radius=2.0)
    return {
        "ensemble_transform": (
            lambda f, y, n: fs.ensemble_transform(ff.ETKF(), None, f, y, SSM.obs_op, n),
            ens0, ys[0], 3,
        ),
        "local_ensemble_transforms": (
            lambda f, y, n: fs.local_ensemble_transforms(
                letkf, None, f, y, fxp.IdentityObs(), n, context
            ),
            forecast8, obs8, 8,
        ),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["ensemble_transform", "local_ensemble_transforms"])
def test_transform_refuses_bad_noise_and_forecast(name):
    # Regression (traced): under jit / vmap a bad noise or forecast returned NaN, or for an
    # infinite variance the identity (a plausible "no update"); now an error naming it.
    call, forecast, obs, n_y = _transform_calls()[name]
    compiled = jax.jit(call)
    batched = jax.jit(jax.vmap(call, in_axes=(None, None, 0)))
    for value in BAD_SCALARS.values():
        for noise in (value, jnp.ones(n_y).at[1].set(value)):
            result = assert_loud(lambda v=noise: call(forecast, obs, v), match=r"obs_noise")
            assert result == "error"
        result = assert_loud(lambda v=value: compiled(forecast, obs, v), match=r"obs_noise")
        assert result == "error"
        batch = jnp.array([1.0, value])
        result = assert_loud(lambda b=batch: batched(forecast, obs, b), match=r"obs_noise")
        assert result == "error"
    for value in ("nan", "+inf", "-inf"):
        bad = forecast.at[2, 1].set(BAD_SCALARS[value])
        assert assert_loud(lambda b=bad: call(b, obs, 1.0), match=r"finite") == "error"
        assert assert_loud(lambda b=bad: compiled(b, obs, 1.0), match=r"forecast") == "error"
    cases = [
        (forecast[:1], r"N_e=1|at least 2"),
        (forecast.astype(jnp.int32), r"float"),
        (forecast[0], r"2-D|shape"),
    ]
    for bad, match in cases:
        assert assert_loud(lambda b=bad: call(b, obs, 1.0), match=match + TYPECHECK) == "error"
    # An infinite observation is a missing one: the same transform as NaN, not an error.
    missing = compiled(forecast, obs.at[1].set(jnp.nan), 1.0)
    for value in (jnp.inf, -jnp.inf):
        out = compiled(forecast, obs.at[1].set(value), 1.0)
        assert assert_loud(lambda o=out: o, match="", allow_finite=True) == "value"
        np.testing.assert_array_equal(out, missing)


def test_transforms_refuse_the_wrong_filter():
    ys, _, ens0, _ = _problem()
    forecast8, obs8, context = _local_problem()
    cases = [
        # a localised filter has no single W (it used to fail with LETKF's coordinate message)
        (lambda: fs.ensemble_transform(ff.LETKF(radius=2.0), None, forecast8, obs8,
                                       fxp.IdentityObs(), 1.0, context),
         r"local_ensemble_transforms"),
        # not a filter (it used to be an AttributeError)
        (lambda: fs.ensemble_transform(None, None, ens0, ys[0], SSM.obs_op, R), r"analysis"),
        (lambda: fs.local_ensemble_transforms(None, None, forecast8, obs8, fxp.IdentityObs(),
                                              1.0, context), r"analysis"),
        # the geometry is needed, and must have one row per grid point
        (lambda: fs.local_ensemble_transforms(ff.LETKF(radius=2.0), None, forecast8, obs8,
                                              fxp.IdentityObs(), 1.0, {}), r"state_coords"),
        (lambda: fs.local_ensemble_transforms(
            ff.LETKF(radius=2.0), None, forecast8, obs8, fxp.IdentityObs(), 1.0,
            {**context, "state_coords": context["state_coords"][:5]}), r"state_coords"),
        (lambda: fs.local_ensemble_transforms(
            ff.LETKF(radius=2.0), None, forecast8, obs8, fxp.IdentityObs(), 1.0,
            {**context, "state_coords": context["state_coords"].at[2].set(jnp.nan)}),
         r"coord"),
    ]  # fmt: skip
    for call, match in cases:
        assert assert_loud(call, match=match + TYPECHECK) == "error"
