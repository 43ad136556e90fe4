"""Scores and innovation diagnostics against independent NumPy/SciPy references.

Tolerances: algebraic identities use ``tol(dtype)`` (1e-9 in float64, 1e-4 in float32; see
filterax.testing.tol). Monte-Carlo checks use a stated number of standard errors computed
from the known sampling distribution, with a fixed seed so they are deterministic.
"""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.stats

from filterax.primitives import (
    crps_ensemble,
    desroziers_analysis_error,
    desroziers_background_error,
    desroziers_obs_error,
    dfs,
    effective_sample_size,
    innovation_chi2,
    rank_histogram,
    rank_histogram_chi2,
    rms_spread,
    rmse,
    spread_skill_ratio,
)
from filterax.testing import random_spd, tol

DTYPES = [jnp.float32, jnp.float64]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ----------------------------------------------------------------------------- rmse / spread


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmse_matches_dapper_definition(rng, dtype):
    truth = rng.standard_normal((5, 7))
    ensemble = rng.standard_normal((5, 4, 7))
    mean = ensemble.mean(axis=1)
    # DAPPER: rmse = sqrt(mean(err**2)) of the ensemble mean, per time.
    expected = np.sqrt(np.mean((mean - truth) ** 2, axis=-1))
    got = rmse(jnp.asarray(mean, dtype), jnp.asarray(truth, dtype))
    assert got.shape == (5,) and got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=tol(dtype))
    single = rmse(jnp.asarray(mean[0], dtype), jnp.asarray(truth[0], dtype))
    assert single.shape == ()
    np.testing.assert_allclose(single, expected[0], rtol=tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_spread_matches_dapper_rmv(rng, dtype):
    ensemble = rng.standard_normal((5, 4, 7)) * rng.uniform(0.5, 2.0, size=7)
    # DAPPER rmv: sqrt(mean over components of the ddof=1 variance across members).
    expected = np.sqrt(np.mean(np.var(ensemble, axis=1, ddof=1), axis=-1))
    got = rms_spread(jnp.asarray(ensemble, dtype))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=tol(dtype))
    np.testing.assert_allclose(
        rms_spread(jnp.asarray(ensemble[2], dtype)), expected[2], rtol=tol(dtype)
    )


def test_rmse_and_spread_have_finite_gradient_at_zero():
    # Regression guard: d sqrt/dx is infinite at 0; a perfect estimate must not give NaN grads.
    x = jnp.ones(3)
    assert np.all(np.isfinite(jax.grad(lambda e: rmse(e, x))(x)))
    X = jnp.ones((4, 3))
    assert np.all(np.isfinite(jax.grad(rms_spread)(X)))


def test_rmse_and_spread_propagate_nan():
    # A missing / failed estimate must score NaN, never a perfect 0 (regression: the
    # zero-gradient guard used to map NaN to 0).
    truth = jnp.zeros((2, 3))
    estimate = jnp.array([[jnp.nan, 1.0, 1.0], [1.0, 1.0, 1.0]])
    got = rmse(estimate, truth)
    assert np.isnan(got[0]) and got[1] == pytest.approx(1.0)
    ens = jnp.ones((4, 3)).at[0, 0].set(jnp.nan)
    assert np.isnan(rms_spread(ens))
    assert rms_spread(jnp.ones((4, 3))) == 0.0


def test_rmse_and_spread_reject_bad_shapes():
    with pytest.raises((ValueError, TypeError)):
        rmse(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="at least 2 members"):
        rms_spread(jnp.ones((1, 3)))


def test_spread_skill_ratio_definition_and_calibrated_ensemble(rng):
    n_times, n_members, n_state = 200, 10, 100
    truth = rng.standard_normal((n_times, n_state))
    ensemble = rng.standard_normal((n_times, n_members, n_state))
    err = rmse(jnp.asarray(ensemble.mean(axis=1)), jnp.asarray(truth))
    spread = rms_spread(jnp.asarray(ensemble))
    ratio = spread_skill_ratio(spread, err)
    np.testing.assert_allclose(ratio, np.mean(spread) / np.mean(err), rtol=1e-12)
    # Truth exchangeable with members: E[rmse^2] = (1 + 1/N) E[spread^2]. Sampling noise of
    # the ratio is ~0.005 and the sqrt's Jensen bias ~0.002 here; 0.03 is a safe bound that
    # still separates sqrt(10/11) = 0.953 from 1.
    np.testing.assert_allclose(ratio, np.sqrt(n_members / (n_members + 1)), atol=0.03)
    corrected = spread_skill_ratio(spread, err, ensemble_size=n_members)
    np.testing.assert_allclose(corrected, 1.0, atol=0.03)
    with pytest.raises((ValueError, TypeError)):
        spread_skill_ratio(spread, err[:-1])


# ----------------------------------------------------------------------------- CRPS


def _crps_double_sum(ensemble, truth, fair):
    n = ensemble.shape[0]
    skill = np.mean(np.abs(ensemble - truth), axis=0)
    pairs = np.abs(ensemble[:, None, :] - ensemble[None, :, :]).sum(axis=(0, 1))
    return skill - pairs / (2 * n * (n - 1) if fair else 2 * n * n)


def _crps_integral(members, y):
    """Exact integral of (F_N(z) - 1{y <= z})^2 over the real line for one variable."""
    points = np.sort(np.append(members, y))
    total = 0.0
    for left, right in zip(points[:-1], points[1:], strict=True):
        cdf = np.mean(members <= left)
        step = float(y <= left)
        total += (cdf - step) ** 2 * (right - left)
    return total


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fair", [False, True])
def test_crps_matches_double_sum(rng, dtype, fair):
    ensemble = rng.standard_normal((11, 6)) * 2.0 + 0.5
    truth = rng.standard_normal(6)
    got = crps_ensemble(jnp.asarray(ensemble, dtype), jnp.asarray(truth, dtype), fair=fair)
    assert got.shape == (6,) and got.dtype == dtype
    np.testing.assert_allclose(
        got, _crps_double_sum(ensemble, truth, fair), rtol=tol(dtype), atol=tol(dtype)
    )


def test_crps_matches_integral_definition(rng):
    ensemble = rng.standard_normal((7, 4))
    truth = rng.standard_normal(4) * 2
    got = crps_ensemble(jnp.asarray(ensemble), jnp.asarray(truth))
    expected = [_crps_integral(ensemble[:, i], truth[i]) for i in range(4)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_crps_single_member_at_truth_is_zero(rng):
    truth = rng.standard_normal(5)
    np.testing.assert_array_equal(crps_ensemble(jnp.asarray(truth)[None, :], jnp.asarray(truth)), 0)
    # ... and it reduces to the absolute error away from the truth.
    np.testing.assert_allclose(
        crps_ensemble(jnp.asarray(truth + 1.5)[None, :], jnp.asarray(truth)), 1.5, rtol=1e-12
    )


def test_fair_crps_is_unbiased_across_ensemble_sizes(rng):
    # E[fair CRPS] does not depend on N_e: N(0,1) forecast, N(0,1) truth gives
    # E = E|X-Y| - E|X-X'|/2 = 2/sqrt(pi) - 1/sqrt(pi) = 1/sqrt(pi) for every N_e.
    truth = rng.standard_normal(20000)
    expected = 1 / np.sqrt(np.pi)
    for n_members in (2, 5):
        ensemble = rng.standard_normal((n_members, 20000))
        fair = crps_ensemble(jnp.asarray(ensemble), jnp.asarray(truth), fair=True)
        # Per-variable sd of the score is < 1, so the mean over 20000 has sd < 0.007.
        np.testing.assert_allclose(np.mean(fair), expected, atol=0.03)
    plain = crps_ensemble(jnp.asarray(ensemble[:2]), jnp.asarray(truth))
    # The unfair score of a 2-member ensemble is biased up by E|X-X'|/4 = 1/(2 sqrt(pi)) ~ 0.28.
    assert np.mean(plain) > expected + 0.2


def test_crps_rejects_bad_input():
    with pytest.raises(ValueError, match="fair=False"):
        crps_ensemble(jnp.ones((1, 3)), jnp.ones(3), fair=True)
    with pytest.raises((ValueError, TypeError)):
        crps_ensemble(jnp.ones((4, 3)), jnp.ones(2))


# ----------------------------------------------------------------------------- rank histogram


def test_rank_histogram_matches_numpy_counts(rng):
    ensemble = rng.standard_normal((30, 6, 4))
    truth = rng.standard_normal((30, 4))
    ranks = np.sum(ensemble < truth[:, None, :], axis=1)
    expected = np.bincount(ranks.ravel(), minlength=7)
    got = rank_histogram(jnp.asarray(ensemble), jnp.asarray(truth))
    assert got.shape == (7,) and jnp.issubdtype(got.dtype, jnp.integer)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(jax.jit(rank_histogram)(ensemble, truth), expected)


def test_rank_histogram_flat_for_exchangeable_draws(rng):
    n_members = 9
    ensemble = rng.standard_normal((400, n_members, 5))
    truth = rng.standard_normal((400, 5))
    counts = rank_histogram(jnp.asarray(ensemble), jnp.asarray(truth))
    assert counts.sum() == 2000
    # Independent ranks uniform on 10 bins: chi2 ~ chi^2_9; its 99.9% quantile is 27.9.
    assert rank_histogram_chi2(counts) < scipy.stats.chi2.ppf(0.999, n_members)


def test_rank_histogram_shapes_for_mis_dispersed_ensembles(rng):
    truth = rng.standard_normal((400, 5))
    narrow = rng.standard_normal((400, 9, 5)) * 0.3
    wide = rng.standard_normal((400, 9, 5)) * 3.0
    u_shape = np.asarray(rank_histogram(jnp.asarray(narrow), jnp.asarray(truth)))
    dome = np.asarray(rank_histogram(jnp.asarray(wide), jnp.asarray(truth)))
    # Ensemble sd 0.3 vs truth sd 1: the truth lies outside the 9 members far more often
    # than the 1/10 per end bin of a flat histogram (and inside far more often for sd 3).
    assert min(u_shape[0], u_shape[-1]) > 3 * u_shape[1:-1].mean()
    assert max(dome[0], dome[-1]) < 0.3 * dome[1:-1].mean()
    assert rank_histogram_chi2(jnp.asarray(u_shape)) > scipy.stats.chi2.ppf(0.999, 9)


def test_rank_histogram_random_tie_breaking(getkey):
    # Every member equals the truth: without a key all ranks are 0; with a key they must be
    # uniform over the N_e + 1 bins.
    ensemble = jnp.zeros((300, 4, 5))
    truth = jnp.zeros((300, 5))
    no_key = rank_histogram(ensemble, truth)
    np.testing.assert_array_equal(no_key, [1500, 0, 0, 0, 0])
    counts = rank_histogram(ensemble, truth, key=getkey())
    assert counts.sum() == 1500
    # chi^2_4 99.9% quantile is 18.5.
    assert rank_histogram_chi2(counts) < scipy.stats.chi2.ppf(0.999, 4)


def test_rank_histogram_skips_missing_truth(rng):
    ensemble = rng.standard_normal((10, 3, 4))
    truth = rng.standard_normal((10, 4))
    truth[::2, 1] = np.nan
    counts = rank_histogram(jnp.asarray(ensemble), jnp.asarray(truth))
    assert counts.sum() == 40 - 5


def test_rank_histogram_chi2_matches_scipy():
    counts = np.array([12, 7, 9, 15, 7])
    expected = scipy.stats.chisquare(counts).statistic
    np.testing.assert_allclose(rank_histogram_chi2(jnp.asarray(counts)), expected, rtol=1e-12)
    assert rank_histogram_chi2(jnp.array([5, 5, 5])) == 0
    with pytest.raises((ValueError, TypeError)):
        rank_histogram_chi2(jnp.array([3]))


# ----------------------------------------------------------------------------- ESS


def _ess_numpy(log_weights):
    w = np.exp(log_weights - log_weights.max())
    return w.sum() ** 2 / np.sum(w**2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ess_limits(dtype):
    np.testing.assert_allclose(effective_sample_size(jnp.zeros(17, dtype)), 17, rtol=tol(dtype))
    np.testing.assert_allclose(
        effective_sample_size(jnp.full(17, 3.0, dtype), log=False), 17, rtol=tol(dtype)
    )
    dominant = jnp.asarray([0.0] + [-1e4] * 16, dtype)
    np.testing.assert_allclose(effective_sample_size(dominant), 1, rtol=tol(dtype))
    np.testing.assert_allclose(
        effective_sample_size(jnp.asarray([5.0] + [0.0] * 9, dtype), log=False),
        1,
        rtol=tol(dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [-1000.0, 1000.0])
def test_ess_is_stable_for_large_log_weights(rng, dtype, shift):
    log_weights = rng.standard_normal(50)
    got = effective_sample_size(jnp.asarray(log_weights + shift, dtype))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _ess_numpy(log_weights), rtol=10 * tol(dtype))
    wide = 1000.0 * rng.standard_normal(50)
    got_wide = effective_sample_size(jnp.asarray(wide, dtype))
    np.testing.assert_allclose(got_wide, _ess_numpy(wide), rtol=10 * tol(dtype))


def test_ess_log_and_linear_agree_and_batch(rng):
    log_weights = rng.standard_normal((3, 20))
    from_log = effective_sample_size(jnp.asarray(log_weights))
    from_linear = effective_sample_size(jnp.exp(jnp.asarray(log_weights)), log=False)
    assert from_log.shape == (3,)
    np.testing.assert_allclose(from_log, [_ess_numpy(lw) for lw in log_weights], rtol=1e-12)
    np.testing.assert_allclose(from_linear, from_log, rtol=1e-12)
    assert np.all(np.isfinite(jax.grad(lambda w: effective_sample_size(w))(log_weights[0])))
    with pytest.raises(ValueError, match="non-negative"):
        effective_sample_size(jnp.array([1.0, -0.5]), log=False)


# ----------------------------------------------------------------------------- innovation chi2


def _obs_setup(rng, n_members=8, n_obs=6):
    obs_ensemble = rng.standard_normal((n_members, n_obs)) + rng.standard_normal(n_obs)
    variances = rng.uniform(0.3, 2.0, n_obs)
    innovation = rng.standard_normal(n_obs) * 2
    return obs_ensemble, variances, innovation


def _chi2_numpy(innovation, S):
    observed = np.isfinite(innovation)
    v = innovation[observed]
    S_oo = S[np.ix_(observed, observed)]
    return v @ np.linalg.solve(S_oo, v) / observed.sum()


@pytest.mark.parametrize("noise_kind", ["variances", "scalar", "diag_op", "dense", "dense_op"])
@pytest.mark.parametrize("missing", [False, True])
def test_innovation_chi2_matches_numpy(rng, noise_kind, missing):
    obs_ensemble, variances, innovation = _obs_setup(rng)
    dense_R = random_spd(rng, 6, cond=5.0)
    R, noise = {
        "variances": (np.diag(variances), jnp.asarray(variances)),
        "scalar": (0.7 * np.eye(6), 0.7),
        "diag_op": (np.diag(variances), lx.DiagonalLinearOperator(jnp.asarray(variances))),
        "dense": (dense_R, jnp.asarray(dense_R)),
        "dense_op": (
            dense_R,
            lx.MatrixLinearOperator(jnp.asarray(dense_R), lx.positive_semidefinite_tag),
        ),
    }[noise_kind]
    if missing:
        innovation[[1, 4]] = np.nan
    S = np.cov(obs_ensemble, rowvar=False, ddof=1) + R
    got = innovation_chi2(jnp.asarray(innovation), jnp.asarray(obs_ensemble), noise)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _chi2_numpy(innovation, S), rtol=1e-9)
    # Passing S itself (diagonal or dense operator) gives the same number.
    S_op = lx.MatrixLinearOperator(jnp.asarray(S), lx.positive_semidefinite_tag)
    np.testing.assert_allclose(
        innovation_chi2(jnp.asarray(innovation), S_op), _chi2_numpy(innovation, S), rtol=1e-9
    )


def test_innovation_chi2_with_diagonal_S_operator(rng):
    s = rng.uniform(0.5, 2.0, 5)
    v = rng.standard_normal(5)
    v[2] = np.nan
    got = innovation_chi2(jnp.asarray(v), lx.DiagonalLinearOperator(jnp.asarray(s)))
    np.testing.assert_allclose(got, _chi2_numpy(v, np.diag(s)), rtol=1e-12)


def test_innovation_chi2_is_one_for_a_consistent_model(rng):
    n_samples, n_obs = 4000, 6
    obs_ensemble, variances, _ = _obs_setup(rng, n_obs=n_obs)
    S = np.cov(obs_ensemble, rowvar=False, ddof=1) + np.diag(variances)
    draws = rng.standard_normal((n_samples, n_obs)) @ np.linalg.cholesky(S).T
    chi2 = jax.jit(jax.vmap(innovation_chi2, in_axes=(0, None, None)))(
        jnp.asarray(draws), jnp.asarray(obs_ensemble), jnp.asarray(variances)
    )
    # Each value is chi^2_6 / 6 (mean 1, variance 2/6): the mean over 4000 has sd 0.0091;
    # allow 5 sd. An inconsistent filter (S off by 2x) would be ~0.5 or ~2.
    assert abs(float(np.mean(chi2)) - 1.0) < 5 * np.sqrt(2 / (n_obs * n_samples))


def test_innovation_chi2_rejects_bad_input(rng):
    obs_ensemble, variances, innovation = _obs_setup(rng)
    S_op = lx.DiagonalLinearOperator(jnp.ones(6))
    with pytest.raises(ValueError, match="obs_noise=None"):
        innovation_chi2(jnp.asarray(innovation), S_op, jnp.asarray(variances))
    with pytest.raises(ValueError, match="obs_noise is required"):
        innovation_chi2(jnp.asarray(innovation), jnp.asarray(obs_ensemble))
    with pytest.raises(ValueError, match=r"\(6,\) array of variances"):
        innovation_chi2(jnp.asarray(innovation), jnp.asarray(obs_ensemble), jnp.ones(5))
    with pytest.raises(ValueError, match="strictly positive"):
        innovation_chi2(jnp.asarray(innovation), jnp.asarray(obs_ensemble), -1.0)
    with pytest.raises((ValueError, TypeError)):
        innovation_chi2(jnp.asarray(innovation[:5]), jnp.asarray(obs_ensemble), 1.0)


# ----------------------------------------------------------------------------- Desroziers


def _linear_gaussian_cycle(rng, n_times=20000):
    """Innovation statistics of the exact Kalman update on a static linear-Gaussian problem."""
    n_state, n_obs = 6, 4
    H = rng.standard_normal((n_obs, n_state))
    B = random_spd(rng, n_state, cond=8.0)
    R = random_spd(rng, n_obs, cond=4.0) * 0.5
    HBHt = H @ B @ H.T
    S = HBHt + R
    K = B @ H.T @ np.linalg.inv(S)
    background_err = rng.standard_normal((n_times, n_state)) @ np.linalg.cholesky(B).T
    obs_err = rng.standard_normal((n_times, n_obs)) @ np.linalg.cholesky(R).T
    # x^f = 0 wlog; truth = x^f + background error; y = H truth + obs error.
    d_of = background_err @ H.T + obs_err
    d_ab = d_of @ (H @ K).T
    d_oa = d_of - d_ab
    HAHt = H @ (np.eye(n_state) - K @ H) @ B @ H.T
    return {"d_of": d_of, "d_oa": d_oa, "d_ab": d_ab, "R": R, "HBHt": HBHt, "HAHt": HAHt, "S": S}


def _standard_error(cov_a, cov_b, cross, n):
    """Sd of the sample mean of a_i b_j for zero-mean jointly Gaussian a, b (Isserlis)."""
    var = np.outer(np.diag(cov_a), np.diag(cov_b)) + cross**2
    se = np.sqrt(var / n)
    return 0.5 * (se + se.T)  # bounds the sd of the symmetrised estimate (Minkowski)


def test_desroziers_recovers_R_HBHt_HAHt(rng):
    c = _linear_gaussian_cycle(rng)
    n = c["d_of"].shape[0]
    S, R, HBHt, HAHt = c["S"], c["R"], c["HBHt"], c["HAHt"]
    cov_oa = R @ np.linalg.solve(S, R)  # Cov(d_oa) = R S^-1 R
    cov_ab = HBHt @ np.linalg.solve(S, HBHt)  # Cov(d_ab) = HBH^T S^-1 HBH^T
    cases = [
        (desroziers_obs_error(c["d_of"], c["d_oa"], full=True), R, (cov_oa, S, R)),
        (desroziers_background_error(c["d_ab"], c["d_of"], full=True), HBHt, (cov_ab, S, HBHt)),
        (desroziers_analysis_error(c["d_ab"], c["d_oa"], full=True), HAHt, (cov_ab, cov_oa, HAHt)),
    ]
    for estimate, truth, moments in cases:
        se = _standard_error(*moments, n)
        # 5 standard errors per entry (fixed seed; ~6e-7 two-sided false-alarm rate each).
        assert np.all(np.abs(np.asarray(estimate) - truth) < 5 * se), (estimate, truth)
        np.testing.assert_allclose(estimate, np.asarray(estimate).T, rtol=1e-12)
    # The test can fail: the innovation covariance S (what a wrong formula d_of d_of^T gives)
    # differs from R by far more than the tolerance.
    assert np.all(np.abs(np.diag(S - R)) > 20 * np.diag(_standard_error(cov_oa, S, R, n)))
    diag = desroziers_obs_error(c["d_of"], c["d_oa"])
    np.testing.assert_allclose(diag, np.mean(c["d_oa"] * c["d_of"], axis=0), rtol=1e-12)


def test_desroziers_skips_missing_observations(rng):
    c = _linear_gaussian_cycle(rng, n_times=500)
    missing = rng.uniform(size=c["d_of"].shape) < 0.2
    d_of, d_oa = c["d_of"].copy(), c["d_oa"].copy()
    d_of[missing] = np.nan
    d_oa[missing] = np.nan
    d_ab = d_of - d_oa
    expected_diag = np.nanmean(d_oa * d_of, axis=0)
    np.testing.assert_allclose(desroziers_obs_error(d_of, d_oa), expected_diag, rtol=1e-12)
    n_obs = d_of.shape[1]
    expected = np.array(
        [[np.nanmean(d_ab[:, i] * d_oa[:, j]) for j in range(n_obs)] for i in range(n_obs)]
    )
    got = desroziers_analysis_error(d_ab, d_oa, full=True, symmetrize=False)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    got_sym = desroziers_background_error(d_ab, d_of, full=True)
    assert np.all(np.isfinite(got_sym))


def test_desroziers_rejects_mismatched_shapes():
    with pytest.raises((ValueError, TypeError)):
        desroziers_obs_error(jnp.ones((5, 3)), jnp.ones((5, 2)))
    with pytest.raises((ValueError, TypeError)):
        desroziers_obs_error(jnp.ones(3), jnp.ones(3))


# ----------------------------------------------------------------------------- DFS


def _etkf_problem(rng, n_members, n_obs, dense):
    n_state = 8
    forecast = rng.standard_normal((n_members, n_state)) @ np.diag(rng.uniform(0.5, 2, n_state))
    H = rng.standard_normal((n_obs, n_state))
    R = random_spd(rng, n_obs, cond=3.0) if dense else np.diag(rng.uniform(0.5, 2.0, n_obs))
    anomalies = forecast - forecast.mean(axis=0)
    Pf = anomalies.T @ anomalies / (n_members - 1)
    K = Pf @ H.T @ np.linalg.inv(H @ Pf @ H.T + R)
    exact_dfs = np.trace(H @ K)
    # Exact ETKF analysis anomalies A_a = (I + Y R^-1 Y^T / (N-1))^(-1/2) A_f (symmetric root).
    Y = anomalies @ H.T
    C = np.eye(n_members) + Y @ np.linalg.solve(R, Y.T) / (n_members - 1)
    eigval, eigvec = np.linalg.eigh(C)
    analysis = (eigvec / np.sqrt(eigval)) @ eigvec.T @ anomalies
    Pa = analysis.T @ analysis / (n_members - 1)
    # Helper sanity: the transform reproduces the Kalman covariance update exactly.
    np.testing.assert_allclose(Pa, (np.eye(n_state) - K @ H) @ Pf, atol=1e-10)
    offset = rng.standard_normal(n_obs)  # a mean in obs space must not matter
    return analysis @ H.T + offset, forecast @ H.T, R, exact_dfs


@pytest.mark.parametrize(("n_members", "n_obs"), [(12, 5), (5, 7)])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("method", ["analysis", "forecast", "ratio"])
def test_dfs_equals_exact_trace_HK(rng, n_members, n_obs, dense, method):
    Ya, Yf, R, exact = _etkf_problem(rng, n_members, n_obs, dense)
    noise = jnp.asarray(R) if dense else lx.DiagonalLinearOperator(jnp.asarray(np.diag(R)))
    got = dfs(jnp.asarray(Ya), jnp.asarray(Yf), noise, method=method)
    # Exact algebraic identity for the ETKF with the ensemble covariance (float64).
    np.testing.assert_allclose(got, exact, rtol=1e-9)
    assert 0 < exact < min(n_obs, n_members - 1)


def test_dfs_float32_and_gradients(rng):
    Ya, Yf, R, exact = _etkf_problem(rng, 10, 4, dense=False)
    variances = jnp.asarray(np.diag(R), jnp.float32)
    got = dfs(jnp.asarray(Ya, jnp.float32), jnp.asarray(Yf, jnp.float32), variances)
    assert got.dtype == jnp.float32
    # float32 round-off (eps 1.2e-7) amplified by condition numbers ~1e2 of the small systems.
    np.testing.assert_allclose(got, exact, rtol=1e-4)
    for method in ("analysis", "forecast"):
        grad = jax.grad(lambda r, m=method: dfs(jnp.asarray(Ya), jnp.asarray(Yf), r, method=m))(
            jnp.asarray(np.diag(R))
        )
        # More noise variance -> less information: DFS decreases in every R_ii.
        assert np.all(np.isfinite(grad)) and np.all(grad < 0)


def test_dfs_needs_the_right_ensembles(rng):
    Ya, Yf, R, _ = _etkf_problem(rng, 6, 3, dense=False)
    with pytest.raises(ValueError, match="needs forecast_obs_anomalies"):
        dfs(jnp.asarray(Ya), None, jnp.asarray(np.diag(R)), method="ratio")
    # ValueError from our check, or TypeCheckError from the Literal annotation under the
    # test session's runtime type-checker.
    with pytest.raises((ValueError, TypeError)):
        dfs(jnp.asarray(Ya), jnp.asarray(Yf), jnp.asarray(np.diag(R)), method="trace")
    with pytest.raises((ValueError, TypeError)):
        dfs(jnp.asarray(Ya[:4]), jnp.asarray(Yf), jnp.asarray(np.diag(R)))
    with pytest.raises(ValueError, match="at least 2 are needed"):
        dfs(jnp.asarray(Ya[:1]), None, jnp.asarray(np.diag(R)))
