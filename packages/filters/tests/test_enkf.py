"""StochasticEnKF (perturbed observations) against exact and statistical references.

Three kinds of check: (1) given the perturbations the filter drew (``info.perturbed_obs``), the
analysis is an algebraic identity, compared with a numpy transcription of DAPPER's ``PertObs``
update at 1e-9 in float64; (2) with centred perturbations the analysis *mean* equals the exact
Kalman analysis of the sample mean and covariance at 1e-9; (3) at large N_e the analysis
covariance agrees with ``(I - KH) P_f`` within a stated Monte-Carlo tolerance.
"""

import importlib.util
import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp


def _load_helpers():
    # --import-mode=importlib keeps tests/ off sys.path; load helpers.py under a unique name.
    name = "filterax_filters_tests_helpers"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("helpers.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = _load_helpers()

# Algebraic identities in float64 on O(1) data: round-off ~1e-14, 1e-9 leaves room for the
# conditioning of the small solves.
TOL64 = 1e-9


def dapper_pertobs(E, Eo, R, D_plus):
    """DAPPER ``EnKF_analysis(upd_a="PertObs")`` with given perturbed observations ``y + eps``.

    DAPPER draws ``D = mean0(noise.sample(N))`` and uses ``y - D``; here the perturbed
    observations ``y + eps`` are given (``eps = -D``), so ``y - D - Eo = D_plus - Eo``.
    """
    N = E.shape[0]
    A = E - E.mean(0)
    Y = Eo - Eo.mean(0)
    C = Y.T @ Y + R * (N - 1)
    YC = np.linalg.solve(C.T, Y.T).T  # mrdiv(Y, C)
    KG = A.T @ YC
    return E + (KG @ (D_plus - Eo).T).T


@eqx.filter_jit
def _analysis(filt, key, X, y, obs_op, noise):
    return filt.analysis(key, X, y, obs_op, noise)


def _run(problem, key, *, filt=None, obs=None, noise=None):
    filt = ff.StochasticEnKF() if filt is None else filt
    return _analysis(
        filt,
        key,
        jnp.asarray(problem.forecast),
        jnp.asarray(problem.obs if obs is None else obs),
        problem.obs_op,
        problem.obs_noise() if noise is None else noise,
    )


# (N_e, N_x, N_y, noise): N_y < N_e, N_y = N_e, N_y > N_e; the last two use the
# (N_e, N_e) contraction (2 N_y N_x > N_e (N_y + N_x)), the others go through K^T.
CASES = [
    (7, 9, 3, "diagonal"),
    (7, 9, 7, "dense"),
    (7, 9, 12, "low_rank"),
    (7, 9, 12, "dense"),
    (7, 40, 30, "diagonal"),
    (5, 60, 4, "low_rank"),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_dapper_pertobs_given_the_perturbations(getkey, case):
    n_e, n_x, n_y, noise = case
    problem = helpers.make_linear_problem(3 + n_y, n_e, n_x, n_y, noise=noise)
    for center in (True, False):
        filt = ff.StochasticEnKF(center_perturbations=center)
        out = _run(problem, getkey(), filt=filt)
        D_plus = np.asarray(out.info.perturbed_obs)
        Eo = problem.forecast @ problem.H.T
        expected = dapper_pertobs(problem.forecast, Eo, problem.noise_cov, D_plus)
        np.testing.assert_allclose(out.particles, expected, atol=TOL64, rtol=0)
        ref = problem.reference()
        np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, atol=TOL64, rtol=0)
        if center:
            # Centred perturbations average to zero and H is linear: mean(X^a) = x + K d.
            np.testing.assert_allclose(D_plus.mean(0), problem.obs, atol=TOL64, rtol=0)
            np.testing.assert_allclose(out.particles.mean(0), ref.mean, atol=TOL64, rtol=0)


def test_statistical_agreement_with_kalman_at_large_ensemble(getkey):
    # N_e = 2000 members of a 4-d Gaussian, 3 observations with correlated R. (Larger N_e
    # only tightens the bands; the forecast log-likelihood of prepare_analysis costs O(N_e^3).)
    n_e, n_x, n_y = 2000, 4, 3
    problem = helpers.make_linear_problem(7, n_e, n_x, n_y, noise="dense")
    ref = problem.reference()
    K, R = ref.gain, problem.noise_cov

    # Centred perturbations: the mean is exact (identity), the covariance is Monte Carlo. The
    # analysis anomalies are (I - KH) X' + K eps', so the error of their sample covariance is
    # K (R_hat - R) K^T + cross terms: each entry has standard deviation about
    # sqrt((C_ii C_jj + C_ij^2) / N_e) with C = (I - KH) P_f (Gaussian sample-covariance
    # variance). We allow 5 of those (a 5-sigma band; the largest observed is ~2).
    out = _run(problem, getkey())
    _, cov = helpers.sample_mean_cov(out.particles)
    C = ref.cov
    sigma = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / n_e)
    assert np.all(np.abs(cov - C) <= 5 * sigma), np.max(np.abs(cov - C) / sigma)
    np.testing.assert_allclose(out.particles.mean(0), ref.mean, atol=TOL64)

    # Uncentred perturbations: the mean error is K mean(eps), eps ~ N(0, R), so each component
    # has standard deviation sqrt(diag(K R K^T) / N_e); allow 5 sigma.
    out = _run(problem, getkey(), filt=ff.StochasticEnKF(center_perturbations=False))
    err = np.asarray(out.particles.mean(0)) - ref.mean
    sigma_mean = np.sqrt(np.diag(K @ R @ K.T) / n_e)
    assert np.all(np.abs(err) <= 5 * sigma_mean), np.abs(err) / sigma_mean
    _, cov = helpers.sample_mean_cov(out.particles)
    assert np.all(np.abs(cov - C) <= 5 * sigma)


def test_statistical_test_can_fail(getkey):
    # Guard against a vacuous tolerance: a filter that skips the perturbations (the
    # "no-perturbation EnKF" whose covariance is (I-KH) P (I-KH)^T, too small) must fail it.
    n_e, n_x, n_y = 2000, 4, 3
    problem = helpers.make_linear_problem(7, n_e, n_x, n_y, noise="dense")
    ref = problem.reference()
    I_KH = np.eye(n_x) - ref.gain @ ref.H
    wrong = I_KH @ ref.prior_cov @ I_KH.T
    C = ref.cov
    sigma = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / n_e)
    assert not np.all(np.abs(wrong - C) <= 5 * sigma)


def test_same_key_identical_and_different_keys_differ():
    problem = helpers.make_linear_problem(1, 10, 6, 4)
    a = _run(problem, jax.random.key(3))
    b = _run(problem, jax.random.key(3))
    c = _run(problem, jax.random.key(4))
    np.testing.assert_array_equal(a.particles, b.particles)
    assert not np.allclose(a.particles, c.particles)


def test_missing_obs_get_zero_weight(getkey):
    # NaN entries: the update equals DAPPER's PertObs on the observed subset with the same
    # perturbations, nothing NaN leaks, and the log-likelihood is the subset's.
    missing = (1, 4)
    problem = helpers.make_linear_problem(2, 9, 7, 6, noise="dense", missing=missing)
    out = _run(problem, getkey())
    keep = ~np.isnan(problem.obs)
    sub = problem.subset(keep)
    D_plus = np.asarray(out.info.perturbed_obs)
    assert np.all(np.isnan(D_plus[:, ~keep]))
    expected = dapper_pertobs(sub.forecast, sub.forecast @ sub.H.T, sub.noise_cov, D_plus[:, keep])
    np.testing.assert_allclose(out.particles, expected, atol=TOL64, rtol=0)
    np.testing.assert_allclose(out.log_likelihood, sub.reference().log_likelihood, atol=TOL64)
    assert int(out.info.n_obs) == keep.sum()
    np.testing.assert_allclose(out.particles.mean(0), sub.reference().mean, atol=TOL64)


def test_all_observations_missing_leaves_forecast_unchanged(getkey):
    problem = helpers.make_linear_problem(2, 9, 7, 6)
    out = _run(problem, getkey(), obs=np.full(6, np.nan))
    np.testing.assert_allclose(out.particles, problem.forecast, atol=1e-12)


def test_missing_obs_gradients_are_finite(getkey):
    problem = helpers.make_linear_problem(2, 9, 7, 6, missing=(0, 3))
    key = getkey()

    def loss(scale):
        out = _run(problem, key, noise=problem.obs_noise(scale))
        return jnp.sum(out.particles**2) + out.log_likelihood

    g = jax.grad(loss)(1.0)
    assert np.isfinite(g) and g != 0.0


def test_jit_and_vmap_over_keys(getkey):
    problem = helpers.make_linear_problem(5, 8, 6, 4)
    filt = ff.StochasticEnKF()
    X, y = jnp.asarray(problem.forecast), jnp.asarray(problem.obs)

    @jax.jit
    def run(key):
        return filt.analysis(key, X, y, problem.obs_op, problem.obs_noise()).particles

    keys = jax.random.split(getkey(), 3)
    batched = jax.vmap(run)(keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], run(keys[i]), atol=1e-12)


def test_float32(getkey):
    problem = helpers.make_linear_problem(5, 8, 6, 4)
    out = ff.StochasticEnKF().analysis(
        getkey(),
        jnp.asarray(problem.forecast, jnp.float32),
        jnp.asarray(problem.obs, jnp.float32),
        problem.obs_op,
        problem.obs_noise(dtype=jnp.float32),
    )
    assert out.particles.dtype == jnp.float32
    # Centred mean identity holds to float32 round-off (values are O(1)).
    np.testing.assert_allclose(out.particles.mean(0), problem.reference().mean, atol=1e-4)


def test_missing_key_is_a_clear_error():
    problem = helpers.make_linear_problem(5, 8, 6, 4)
    with pytest.raises(ValueError, match="PRNG key"):
        _run(problem, None)


def test_bad_shapes_are_clear_errors(getkey):
    problem = helpers.make_linear_problem(5, 8, 6, 4)
    with pytest.raises(ValueError, match="obs"):
        ff.StochasticEnKF().analysis(
            getkey(), jnp.asarray(problem.forecast), jnp.zeros(5), problem.obs_op, 1.0
        )
    with pytest.raises(ValueError, match="N_e"):
        ff.StochasticEnKF().analysis(
            getkey(), jnp.zeros((1, 6)), jnp.zeros(4), fxp.IdentityObs(), 1.0
        )


@pytest.mark.parametrize("form", ["matrix", "lineax"])
def test_matrix_and_lineax_obs_op_equal_the_callable(form):
    problem = helpers.make_linear_problem(240, 7, 9, 5, noise="dense", missing=(2,))
    H = jnp.asarray(problem.H)
    obs_op = H if form == "matrix" else lx.MatrixLinearOperator(H)
    X, y = jnp.asarray(problem.forecast), jnp.asarray(problem.obs)
    key = jax.random.key(7)
    filt = ff.StochasticEnKF()
    ref = _analysis(filt, key, X, y, problem.obs_op, problem.obs_noise())
    out = _analysis(filt, key, X, y, obs_op, problem.obs_noise())
    # Same key, same float64 products H x: equal to round-off.
    np.testing.assert_allclose(out.particles, ref.particles, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=0, atol=1e-12)
