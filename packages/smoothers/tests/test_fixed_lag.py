"""Fixed-lag smoother: batch form against numpy, lag limits, online == batch == assimilate."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
import filterax.smoothers as fs
from filterax.testing import load_sibling

refs = load_sibling(__file__, "smoother_refs.py", "smoothers")

# Algebraic identities in float64 on O(1) data with condition numbers < 1e3: round-off is
# ~1e-13, so 1e-9 relative leaves a wide margin while still catching any algebra error.
TOL = 1e-9


def _history(problem, filt, ensemble0, key, **kwargs):
    return ff.assimilate(
        filt,
        problem.dynamics,
        problem.obs_op,
        problem.obs_noise,
        ensemble0,
        problem.observations,
        problem.times,
        key=key,
        save="forecast_and_analysis",
        **kwargs,
    )


def _smooth(smoother, problem, filt, history, key, **kwargs):
    return smoother.smooth(
        filt, history, problem.observations, problem.obs_op, problem.obs_noise, key=key, **kwargs
    )


@pytest.fixture(scope="module")
def exact_run():
    problem = refs.make_linear_gaussian(0, n_state=5, n_obs=3, n_times=7, missing=((2, 1),))
    key = jax.random.key(0)
    history = _history(problem, ff.ETKF(), problem.exact_ensemble(9), key)
    return problem, key, history


@pytest.mark.parametrize("lag", [0, 1, 2, 4, 6, 20])
def test_fixed_lag_is_the_numpy_fixed_lag(exact_run, lag):
    problem, key, history = exact_run
    out = _smooth(fs.FixedLagSmoother(lag), problem, ff.ETKF(), history, key, save_ensembles=True)
    mean, cov = refs.sample_moments(out.smoothed_ensembles)
    ref_mean, ref_cov = refs.fixed_lag(problem, lag)
    assert refs.rel_err(mean, ref_mean) < TOL
    assert refs.rel_err(cov, ref_cov) < TOL


def test_lag_limits(exact_run):
    problem, key, history = exact_run
    filt = ff.ETKF()
    lag0 = _smooth(fs.FixedLagSmoother(0), problem, filt, history, key)
    np.testing.assert_allclose(lag0.smoothed_mean, history.analysis_mean, atol=1e-12)
    np.testing.assert_allclose(lag0.smoothed_spread, history.analysis_spread, atol=1e-12)
    enks = _smooth(fs.EnKS(), problem, filt, history, key)
    for lag in (6, 7, 100):
        out = _smooth(fs.FixedLagSmoother(lag), problem, filt, history, key)
        np.testing.assert_allclose(out.smoothed_mean, enks.smoothed_mean, atol=1e-12)


@pytest.mark.parametrize("lag", [-1, 1.5, True, "2", None])
def test_bad_lag(lag):
    with pytest.raises(ValueError, match="lag"):
        fs.FixedLagSmoother(lag)


@pytest.fixture(scope="module")
def l63():
    from filterax.zoo import presets

    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(0), 40)
    ens0 = ssm.initial_ensemble(jax.random.key(1), 8)
    return ssm, xp, ens0


@pytest.mark.parametrize(
    "filt, inflator, rotate, lag",
    [
        (ff.ETKF(), fxp.MultiplicativeInflator(1.02), True, 3),
        (ff.ETKF(), fxp.MultiplicativeInflator(1.02), True, 60),
        (ff.StochasticEnKF(), fxp.RTPS(0.5), False, 0),
        (ff.StochasticEnKF(), fxp.RTPS(0.5), False, 5),
        (ff.ETKF(), fxp.AdaptiveInflator(), False, 2),
    ],
)
def test_online_equals_assimilate_and_batch(l63, filt, inflator, rotate, lag):
    ssm, xp, ens0 = l63
    key = jax.random.key(4)
    args = (filt, ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0, xp.observations, xp.times)
    kwargs = dict(key=key, inflator=inflator, rotate=rotate)
    online = fs.FixedLagSmoother(lag).run_online(*args, **kwargs, save_ensembles=True)
    history = ff.assimilate(*args, **kwargs, save="forecast_and_analysis")
    for name in ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread"):
        np.testing.assert_allclose(
            getattr(online, name), getattr(history, name), rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(online.log_likelihood, history.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(online.particles, history.particles, rtol=1e-12, atol=1e-12)
    batch = fs.FixedLagSmoother(lag).smooth(
        filt,
        history,
        xp.observations,
        ssm.obs_op,
        ssm.obs_noise,
        key=key,
        save_ensembles=True,
        rotate=rotate,
    )
    # Same transforms, multiplied in a different order: round-off only (L63 values are O(10)).
    np.testing.assert_allclose(online.smoothed_mean, batch.smoothed_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(online.smoothed_spread, batch.smoothed_spread, rtol=1e-9)
    np.testing.assert_allclose(
        online.smoothed_ensembles, batch.smoothed_ensembles, rtol=1e-9, atol=1e-9
    )
    assert int(online.status) == 0 and int(online.first_failure) == -1


def test_online_does_not_stack_ensembles_by_default(l63):
    ssm, xp, ens0 = l63
    out = fs.FixedLagSmoother(2).run_online(
        ff.ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0, xp.observations, xp.times,
        key=jax.random.key(0),
    )  # fmt: skip
    assert out.smoothed_ensembles is None
    assert out.smoothed_mean.shape == (40, 3)
    # The jaxpr of the run holds no (T, N_e, N_x) array: memory does not grow with T * N_e.
    jaxpr = jax.make_jaxpr(
        lambda obs: fs.FixedLagSmoother(2).run_online(
            ff.ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0, obs, xp.times,
            key=jax.random.key(0),
        ).smoothed_mean
    )(xp.observations)  # fmt: skip
    assert "40,8,3" not in str(jaxpr).replace(" ", "")


def test_online_reports_nonfinite_cycles():
    problem = refs.make_linear_gaussian(7, n_times=8)
    A = jnp.asarray(problem.A)

    def dynamics(x, t0, t1):
        return jnp.where(t1 >= 5.0, jnp.nan, A @ x)

    args = (ff.ETKF(), dynamics, problem.obs_op, problem.obs_noise, problem.exact_ensemble(8))
    args = args + (problem.observations, problem.times)
    out = fs.FixedLagSmoother(2).run_online(*args, key=jax.random.key(0), throw=False)
    assert int(out.status) == ff.AssimilationResult.NONFINITE
    assert int(out.first_failure) == 4
    assert np.all(np.isnan(out.smoothed_mean[4:])) and np.all(np.isfinite(out.smoothed_mean[:4]))
    assert np.all(np.isfinite(out.particles))
    with pytest.raises(Exception, match="non-finite"):
        fs.FixedLagSmoother(2).run_online(*args, key=jax.random.key(0))


def test_online_refuses_localised_filters_and_bad_shapes(l63):
    ssm, xp, ens0 = l63
    lag = fs.FixedLagSmoother(1)
    with pytest.raises(ValueError, match=r"LETKF.*FixedLagSmoother\(lag\)\.smooth"):
        lag.run_online(
            ff.LETKF(radius=1.0), ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0,
            xp.observations, xp.times, key=jax.random.key(0),
        )  # fmt: skip
    with pytest.raises(ValueError, match="N_e >= 2"):
        lag.run_online(
            ff.ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0[:1], xp.observations,
            xp.times, key=jax.random.key(0),
        )  # fmt: skip
    with pytest.raises(ValueError, match="obs_times"):
        lag.run_online(
            ff.ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0, xp.observations,
            xp.times[:3], key=jax.random.key(0),
        )  # fmt: skip


# ----------------------------------------------------------------------------------------
# the online smoother as a cycled method of the one driver (filterax.filters.run)
# ----------------------------------------------------------------------------------------

_RESULT_FIELDS = (
    "forecast_mean",
    "analysis_mean",
    "smoothed_mean",
    "forecast_spread",
    "analysis_spread",
    "smoothed_spread",
    "log_likelihood",
    "smoothed_ensembles",
    "particles",
    "times",
    "status",
    "first_failure",
)


def _assert_same_bits(a, b):
    for name in _RESULT_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


@pytest.mark.parametrize(
    "filt, inflator, rotate, lag, save",
    [
        (ff.ETKF(), fxp.MultiplicativeInflator(1.02), True, 3, False),
        (ff.StochasticEnKF(), fxp.RTPS(0.5), False, 0, True),
        (ff.ETKF(), fxp.AdaptiveInflator(), False, 2, True),
        (ff.DEnKF(), None, True, 39, False),
    ],
)
def test_run_of_the_online_method_is_run_online_bit_for_bit(l63, filt, inflator, rotate, lag, save):
    # run_online is a thin wrapper of run(OnlineFixedLagSmoother(...)): same program, same bits.
    ssm, xp, ens0 = l63
    key = jax.random.key(4)
    online = fs.FixedLagSmoother(lag).run_online(
        filt, ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0, xp.observations, xp.times,
        key=key, inflator=inflator, rotate=rotate, save_ensembles=save,
    )  # fmt: skip
    method = fs.FixedLagSmoother(lag).online(
        ff.EnsembleFilter(filt, inflator=inflator, rotate=rotate), save_ensembles=save
    )
    assert isinstance(method, fs.OnlineFixedLagSmoother)
    out = ff.run(method, ssm, ens0, xp.observations, xp.times, key=key)
    # Compiled like run_online's (op-by-op the flushed rows may differ in the last bit).
    _assert_same_bits(eqx.filter_jit(method.smoother_result)(out), online)
    # The smoothed row of cycle j is emitted by cycle j + lag: only O(N_x) rows are stacked.
    assert out.analyses is None and out.forecasts is None
    n_emitted = xp.times.shape[0] - lag
    np.testing.assert_array_equal(
        out.diagnostics.smoothed_mean[lag:], online.smoothed_mean[:n_emitted]
    )


def test_online_fixed_lag_rotation_in_the_post_chain_reaches_the_buffer():
    # A RandomRotation anywhere in the filter's post chain relabels the members; the buffered
    # past ensembles must get the same relabelling, or W_k would mix unpaired members. On a
    # linear-Gaussian problem the ETKF's moments do not depend on the rotations, so the
    # smoothed moments are still the numpy fixed-lag smoother's (algebraic identity, TOL).
    problem = refs.make_linear_gaussian(0, n_state=5, n_obs=3, n_times=7, missing=((2, 1),))
    lag = 2
    method = fs.OnlineFixedLagSmoother(
        ff.EnsembleFilter(ff.ETKF(), post=(fxp.RandomRotation(),)), lag, save_ensembles=True
    )
    model = fxp.Model(problem.dynamics, problem.obs_op, problem.obs_noise)
    out = ff.run(
        method, model, problem.exact_ensemble(9), problem.observations, problem.times,
        key=jax.random.key(0),
    )  # fmt: skip
    smoothed = method.smoother_result(out)
    mean, cov = refs.sample_moments(smoothed.smoothed_ensembles)
    ref_mean, ref_cov = refs.fixed_lag(problem, lag)
    assert refs.rel_err(mean, ref_mean) < TOL
    assert refs.rel_err(cov, ref_cov) < TOL


def test_online_fixed_lag_reports_divergence_like_the_filters(l63):
    # New with the one driver: divergence_threshold and status 2, exactly as assimilate's.
    ssm, xp, ens0 = l63
    args = (ff.ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0, xp.observations, xp.times)
    kwargs = dict(key=jax.random.key(0), divergence_threshold=1.5)
    online = fs.FixedLagSmoother(2).run_online(*args, **kwargs, throw=False)
    history = ff.assimilate(*args, **kwargs, throw=False)
    assert int(history.status) == ff.AssimilationResult.DIVERGED  # the threshold bites
    assert int(online.status) == int(history.status)
    assert int(online.first_failure) == int(history.first_failure)
    # Diverged cycles are still assimilated: every row has an estimate.
    assert np.all(np.isfinite(np.asarray(online.smoothed_mean)))
    quiet = fs.FixedLagSmoother(2).run_online(*args, key=jax.random.key(0), throw=False)
    np.testing.assert_array_equal(online.smoothed_mean, quiet.smoothed_mean)
    with pytest.raises(Exception, match="diverged"):
        fs.FixedLagSmoother(2).run_online(*args, **kwargs)


def test_online_method_refuses_what_it_cannot_smooth():
    with pytest.raises(ValueError, match=r"LETKF.*FixedLagSmoother\(lag\)\.smooth"):
        fs.OnlineFixedLagSmoother(ff.EnsembleFilter(ff.LETKF(radius=1.0)), 2)
    with pytest.raises(TypeError, match="EnsembleFilter"):
        fs.OnlineFixedLagSmoother(ff.ETKF(), 2)
    with pytest.raises(ValueError, match="lag"):
        fs.OnlineFixedLagSmoother(ff.EnsembleFilter(ff.ETKF()), -1)
