"""EnKS: the ensemble-space transform, exactness on linear-Gaussian problems, edge cases."""

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

ALL_GLOBAL_FILTERS = {
    "ETKF": ff.ETKF(),
    "StochasticEnKF": ff.StochasticEnKF(),
    "EnSRF": ff.EnSRF(),
    "EnSRF_Serial": ff.EnSRF_Serial(),
    "DEnKF": ff.DEnKF(),
    "ESTKF": ff.ESTKF(),
    "ETKF_Livings": ff.ETKF_Livings(),
    "EnKF_N": ff.EnKF_N(),
    "KalmanFilter": ff.KalmanFilter(),
}
# Filters whose analysis ensemble has exactly the Kalman mean and covariance (square roots):
# with an exact prior ensemble they make the EnKS the exact RTS smoother. (DEnKF's covariance
# is only approximate, StochasticEnKF's Monte Carlo, EnKF-N inflates.)
EXACT_FILTERS = ["ETKF", "EnSRF", "EnSRF_Serial", "ESTKF", "ETKF_Livings", "KalmanFilter"]


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
        filt,
        history,
        problem.observations,
        problem.obs_op,
        problem.obs_noise,
        key=key,
        **kwargs,
    )


@pytest.mark.parametrize("name", sorted(ALL_GLOBAL_FILTERS))
def test_ensemble_transform_reproduces_the_analysis(name):
    filt = ALL_GLOBAL_FILTERS[name]
    rng = np.random.default_rng(1)
    forecast = jnp.asarray(rng.standard_normal((7, 5)) + rng.standard_normal(5))
    H = jnp.asarray(rng.standard_normal((4, 5)))
    obs = jnp.asarray(rng.standard_normal(4)).at[2].set(jnp.nan)
    noise = fxp.diagonal_noise(jnp.asarray(rng.uniform(0.5, 1.5, 4)))
    key = jax.random.key(3)
    analysis = filt.analysis(key, forecast, obs, fxp.LinearObs(H), noise).particles
    for obs_op in (fxp.LinearObs(H), H, lambda x: H @ x):
        w = fs.ensemble_transform(filt, key, forecast, obs, obs_op, noise)
        assert w.shape == (7, 7)
        assert refs.rel_err(w @ forecast, analysis) < TOL
        # Every filter here preserves constants: W 1 = 1.
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", EXACT_FILTERS)
@pytest.mark.parametrize("missing", [(), ((1, 0), (4, 2), (4, 1))])
def test_enks_is_the_exact_rts_on_linear_gaussian(name, missing):
    problem = refs.make_linear_gaussian(0, n_state=5, n_obs=3, n_times=7, missing=missing)
    filt = ALL_GLOBAL_FILTERS[name]
    key = jax.random.key(0)
    history = _history(problem, filt, problem.exact_ensemble(9), key)
    out = _smooth(fs.EnKS(), problem, filt, history, key, save_ensembles=True)
    mean, cov = refs.sample_moments(out.smoothed_ensembles)
    ref_mean, ref_cov = refs.rts(problem)
    assert refs.rel_err(mean, ref_mean) < TOL
    assert refs.rel_err(cov, ref_cov) < TOL
    np.testing.assert_allclose(out.smoothed_mean, mean, rtol=1e-12, atol=1e-12)
    # The filter itself is the exact KF, and the EnKS improves on it (trace of covariance).
    kf = refs.kalman_filter(problem)
    assert refs.rel_err(history.analysis_mean, kf.mean) < TOL
    assert np.all(np.trace(ref_cov, axis1=1, axis2=2) <= np.trace(kf.cov, axis1=1, axis2=2) + 1e-12)


@pytest.mark.parametrize("smoother", [fs.EnKS(), fs.FixedLagSmoother(2)])
def test_rotated_runs_keep_the_members_paired(smoother):
    # assimilate(rotate=True) relabels the analysis members each cycle (mean and covariance
    # unchanged). Smoothed with rotate=True the past states get the same rotations and the
    # result is still the exact RTS / fixed-lag smoother; ignoring the rotations breaks the
    # member pairing across times and the smoother is wrong (so this test can fail).
    problem = refs.make_linear_gaussian(0, n_state=5, n_obs=3, n_times=7)
    filt = ff.ETKF()
    key = jax.random.key(0)
    history = _history(problem, filt, problem.exact_ensemble(9), key, rotate=True)
    out = _smooth(smoother, problem, filt, history, key, save_ensembles=True, rotate=True)
    mean, cov = refs.sample_moments(out.smoothed_ensembles)
    if isinstance(smoother, fs.EnKS):
        ref_mean, ref_cov = refs.rts(problem)
    else:
        ref_mean, ref_cov = refs.fixed_lag(problem, smoother.lag)
    assert refs.rel_err(mean, ref_mean) < TOL
    assert refs.rel_err(cov, ref_cov) < TOL
    # Smoothing it without the rotations is refused (the replay check sees the relabelling);
    # forced past the check, it is indeed wrong.
    with pytest.raises(ValueError, match="key or the rotate flag"):
        _smooth(smoother, problem, filt, history, key)
    unpaired = _smooth(smoother, problem, filt, history, key, check_replay=False)
    assert refs.rel_err(unpaired.smoothed_mean, ref_mean) > 1e-3
    # the online rolling buffer applies the rotations too
    if isinstance(smoother, fs.FixedLagSmoother):
        online = smoother.run_online(
            filt,
            problem.dynamics,
            problem.obs_op,
            problem.obs_noise,
            problem.exact_ensemble(9),
            problem.observations,
            problem.times,
            key=key,
            rotate=True,
        )
        np.testing.assert_allclose(online.smoothed_mean, out.smoothed_mean, rtol=1e-9, atol=1e-9)


def test_stochastic_enkf_enks_matches_rts_statistically():
    # Monte Carlo: with N_e = 400 the smoothed sample mean has a standard error of about
    # sqrt(P^s / N_e) = 0.05 sqrt(P^s) per cycle; errors of the gains accumulate over the 5
    # cycles, so we allow 0.3 sqrt(diag P^s) (about 6 standard errors). Sample covariances
    # have a relative standard error of about sqrt(2 / N_e) = 0.07 per entry; we allow 0.3
    # of the largest entry. The seed is fixed, so the test is deterministic.
    problem = refs.make_linear_gaussian(2, n_state=4, n_obs=4, n_times=5)
    filt = ff.StochasticEnKF()
    key = jax.random.key(11)
    ensemble0 = (
        jnp.asarray(problem.m0)[None, :]
        + jax.random.normal(jax.random.key(5), (400, 4))
        @ jnp.linalg.cholesky(jnp.asarray(problem.P0)).T
    )
    history = _history(problem, filt, ensemble0, key)
    out = _smooth(fs.EnKS(), problem, filt, history, key, save_ensembles=True)
    mean, cov = refs.sample_moments(out.smoothed_ensembles)
    ref_mean, ref_cov = refs.rts(problem)
    std = np.sqrt(np.diagonal(ref_cov, axis1=1, axis2=2))
    assert np.all(np.abs(mean - ref_mean) <= 0.3 * std)
    assert refs.rel_err(cov, ref_cov) < 0.3
    # And it is genuinely a smoother: later observations move the estimate.
    assert np.max(np.abs(out.smoothed_mean[:-1] - out.analysis_mean[:-1])) > 0.05


@pytest.mark.parametrize("name", ["ETKF", "StochasticEnKF", "DEnKF", "EnKF_N"])
def test_final_row_is_the_analysis(name):
    problem = refs.make_linear_gaussian(3)
    filt = ALL_GLOBAL_FILTERS[name]
    key = jax.random.key(1)
    ens0 = problem.exact_ensemble(6)
    history = _history(problem, filt, ens0, key, inflator=fxp.MultiplicativeInflator(1.1))
    out = _smooth(fs.EnKS(), problem, filt, history, key, save_ensembles=True)
    np.testing.assert_allclose(out.smoothed_ensembles[-1], history.ensembles[-1], atol=1e-12)
    np.testing.assert_allclose(out.smoothed_mean[-1], history.analysis_mean[-1], atol=1e-12)
    np.testing.assert_array_equal(out.forecast_mean, history.forecast_mean)
    np.testing.assert_array_equal(out.analysis_spread, history.analysis_spread)
    np.testing.assert_array_equal(out.log_likelihood, history.log_likelihood)
    np.testing.assert_array_equal(out.particles, history.particles)
    assert out.iterations is None


def test_stochastic_enks_replays_the_same_perturbations():
    # Replaying cycle k's analysis with cycle_keys(key, k)[1] reproduces the stored analysis
    # (the perturbed observations included) for every cycle: W_k X^f_k == X^a_k.
    problem = refs.make_linear_gaussian(4)
    filt = ff.StochasticEnKF()
    key = jax.random.key(7)
    history = _history(problem, filt, problem.exact_ensemble(8), key)

    @jax.jit
    def replay(forecasts, observations):
        def one(k, forecast, y):
            k_an = ff.cycle_keys(key, k)[1]
            w = fs.ensemble_transform(filt, k_an, forecast, y, problem.obs_op, problem.obs_noise)
            return w @ forecast

        steps = jnp.arange(forecasts.shape[0])
        return jax.vmap(one)(steps, forecasts, observations)

    replayed = replay(history.forecast_ensembles, jnp.asarray(problem.observations))
    assert refs.rel_err(replayed, history.ensembles) < TOL


def test_zero_innovation_leaves_the_mean_unchanged():
    # y_k = H xbar^f_k every cycle: the ETKF mean update is zero, so W maps means to means and
    # every smoother must return the analysis (= forecast) means.
    problem = refs.make_linear_gaussian(5, n_times=6)
    ys = [problem.H @ np.linalg.matrix_power(problem.A, k + 1) @ problem.m0 for k in range(6)]
    problem = problem.with_observations(np.array(ys))
    filt = ff.ETKF()
    key = jax.random.key(0)
    history = _history(problem, filt, problem.exact_ensemble(8), key)
    np.testing.assert_allclose(history.analysis_mean, history.forecast_mean, atol=1e-10)
    for smoother in (
        fs.EnKS(),
        fs.FixedLagSmoother(2),
        fs.EnsembleRTS(),
        fs.EnsembleSqrtSmoother(),
    ):
        out = _smooth(smoother, problem, filt, history, key)
        np.testing.assert_allclose(out.smoothed_mean, history.analysis_mean, atol=1e-10)
        # ... while the spread still shrinks (the smoother uses the later observations).
        assert np.all(out.smoothed_spread[:-1] < out.analysis_spread[:-1])


def test_missing_observations_equal_assimilating_the_subset():
    missing = ((0, 1), (2, 0), (2, 2), (5, 1))
    problem = refs.make_linear_gaussian(6, n_obs=3, n_times=6, missing=missing)
    filt = ff.ETKF()
    key = jax.random.key(0)
    ens0 = problem.exact_ensemble(8)
    out = _smooth(fs.EnKS(), problem, filt, _history(problem, filt, ens0, key), key)
    assert np.all(np.isfinite(out.smoothed_mean))

    # The same run with the missing entries removed from H, R and y, cycle by cycle: the
    # analysis at cycle k is then a different callable per cycle, so replay it by hand.
    smoothed_ref = []
    forecasts, analyses, transforms = [], [], []
    ens = ens0
    for k in range(6):
        keep = ~np.isnan(problem.observations[k])
        ens_f = ens @ problem.A.T
        H, r, y = problem.H[keep], problem.r[keep], problem.observations[k][keep]
        w = fs.ensemble_transform(
            filt,
            None,
            ens_f,
            jnp.asarray(y),
            fxp.LinearObs(jnp.asarray(H)),
            fxp.diagonal_noise(jnp.asarray(r)),
        )
        ens = w @ ens_f
        forecasts.append(ens_f)
        analyses.append(ens)
        transforms.append(w)
    for j in range(6):
        x = analyses[j]
        for k in range(j + 1, 6):
            x = transforms[k] @ x
        smoothed_ref.append(x.mean(axis=0))
    assert refs.rel_err(out.smoothed_mean, np.array(smoothed_ref)) < TOL


def test_nonfinite_cycles_stay_nan_and_do_not_leak():
    # Dynamics that return NaN from t = 5 on: cycles 4.. (times 5..) fail and are frozen.
    problem = refs.make_linear_gaussian(7, n_times=8)
    A = jnp.asarray(problem.A)

    def dynamics(x, t0, t1):
        return jnp.where(t1 >= 5.0, jnp.nan, A @ x)

    filt = ff.ETKF()
    key = jax.random.key(0)
    ens0 = problem.exact_ensemble(8)
    kwargs = dict(key=key, save="forecast_and_analysis", throw=False)
    history = ff.assimilate(
        filt, dynamics, problem.obs_op, problem.obs_noise, ens0, problem.observations,
        problem.times, **kwargs,
    )  # fmt: skip
    assert int(history.first_failure) == 4
    for smoother in (
        fs.EnKS(),
        fs.FixedLagSmoother(2),
        fs.EnsembleRTS(),
        fs.EnsembleSqrtSmoother(),
    ):
        out = _smooth(smoother, problem, filt, history, key)
        assert int(out.status) == ff.AssimilationResult.NONFINITE
        assert int(out.first_failure) == 4
        assert np.all(np.isnan(out.smoothed_mean[4:]))
        assert np.all(np.isfinite(out.smoothed_mean[:4]))
        # Frozen cycles contribute nothing: the rows before equal smoothing the first 4 cycles.
        short = problem.with_observations(problem.observations[:4])
        short_history = _history(short, filt, ens0, key)
        ref = _smooth(smoother, short, filt, short_history, key)
        assert refs.rel_err(out.smoothed_mean[:4], ref.smoothed_mean) < TOL


def test_same_key_is_bit_identical_and_keys_matter():
    problem = refs.make_linear_gaussian(8)
    filt = ff.StochasticEnKF()
    ens0 = problem.exact_ensemble(8)

    def run(seed):
        key = jax.random.key(seed)
        return _smooth(fs.EnKS(), problem, filt, _history(problem, filt, ens0, key), key)

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a.smoothed_mean, b.smoothed_mean)
    assert not np.allclose(a.smoothed_mean, c.smoothed_mean)


def test_bad_inputs_raise_clear_errors():
    problem = refs.make_linear_gaussian(9)
    filt = ff.ETKF()
    key = jax.random.key(0)
    ens0 = problem.exact_ensemble(8)
    history = _history(problem, filt, ens0, key)
    enks = fs.EnKS()
    with pytest.raises(ValueError, match="forecast_and_analysis"):
        stats_only = ff.assimilate(
            filt, problem.dynamics, problem.obs_op, problem.obs_noise, ens0,
            problem.observations, problem.times, key=key,
        )  # fmt: skip
        _smooth(enks, problem, filt, stats_only, key)
    # a localised filter is replayed point by point and needs its geometry (context)
    with pytest.raises(ValueError, match="LETKF is a localised filter.*state_coords"):
        _smooth(enks, problem, ff.LETKF(radius=2.0), history, key)
    with pytest.raises(ValueError, match="T=8"):
        enks.smooth(
            filt, history, problem.observations[:5], problem.obs_op, problem.obs_noise, key=key
        )
    with pytest.raises(TypeError, match="key"):
        _smooth(enks, problem, filt, history, None)
    empty = eqx.tree_at(
        lambda h: (h.ensembles, h.forecast_ensembles), history, (jnp.zeros((0, 8, 5)),) * 2
    )
    with pytest.raises(ValueError, match="empty"):
        _smooth(enks, problem, filt, empty, key)
    single = eqx.tree_at(
        lambda h: (h.ensembles, h.forecast_ensembles),
        history,
        (history.ensembles[:, :1], history.forecast_ensembles[:, :1]),
    )
    for smoother in (enks, fs.EnsembleRTS(), fs.EnsembleSqrtSmoother()):
        with pytest.raises(ValueError, match="N_e >= 2"):
            _smooth(smoother, problem, filt, single, key)
    with pytest.raises(TypeError, match="AssimilationResult"):
        _smooth(enks, problem, filt, "history", key)
