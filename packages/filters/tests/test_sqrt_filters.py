"""Deterministic square-root filters against the exact Kalman analysis of the sample covariance.

Every filter here is checked against an independent numpy reference (helpers.py): on a
linear-Gaussian problem the analysis mean must be ``x + K d`` and the analysis sample
covariance ``(I - KH) P_f`` (DEnKF: plus ``K H P_f H^T K^T / 4``) with ``P_f`` the sample
covariance, to 1e-9 in float64 — an algebraic identity, so any error above round-off is a bug.
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import jaxtyping
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

# Algebraic identity in float64 on O(1) data: round-off is ~1e-14; the brief's 1e-9 leaves
# room for the (N_y x N_y) and (N_e x N_e) systems (condition numbers < 1e2 here).
TOL64 = 1e-9

FILTERS = {
    "ETKF": ff.ETKF(),
    "EnSRF": ff.EnSRF(),
    "EnSRF_Serial": ff.EnSRF_Serial(),
    "DEnKF": ff.DEnKF(),
    "ESTKF": ff.ESTKF(),
    "ETKF_Livings": ff.ETKF_Livings(),
}
# Filters that accept correlated (dense / low-rank) observation noise.
CORRELATED_OK = [name for name in FILTERS if name != "EnSRF_Serial"]

N_E, N_X = 7, 9
# N_y < N_e, N_y = N_e, N_y > N_e.
OBS_SIZES = [3, N_E, 12]


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _run(name, problem, *, key=None, forecast=None, obs=None, noise=None, obs_op=None):
    key = jax.random.key(0) if key is None else key
    return FILTERS[name].analysis(
        key,
        jnp.asarray(problem.forecast if forecast is None else forecast),
        jnp.asarray(problem.obs if obs is None else obs),
        problem.obs_op if obs_op is None else obs_op,
        problem.obs_noise() if noise is None else noise,
    )


def _expected_cov(name, ref):
    if name == "DEnKF":
        # Sakov & Oke (2008), eq. (6): half-gain anomalies leave K H P H^T K^T / 4 on top.
        khp = ref.gain @ ref.H @ ref.prior_cov
        return ref.cov + 0.25 * khp @ ref.H.T @ ref.gain.T
    return ref.cov


def _assert_matches_reference(name, problem, out, atol=TOL64):
    ref = problem.reference()
    mean, cov = helpers.sample_mean_cov(out.particles)
    np.testing.assert_allclose(mean, ref.mean, atol=atol, rtol=0)
    np.testing.assert_allclose(cov, _expected_cov(name, ref), atol=atol, rtol=0)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, atol=atol, rtol=0)


# --- exact Kalman analysis of the sample covariance ----------------------------------------


# EnSRF_Serial takes diagonal R only (its refusal of correlated R is tested below).
FILTER_NOISE = [
    (name, noise)
    for name in FILTERS
    for noise in ("diagonal", "dense", "low_rank")
    if name != "EnSRF_Serial" or noise == "diagonal"
]


@pytest.mark.parametrize("n_obs", OBS_SIZES)
@pytest.mark.parametrize(("name", "noise"), FILTER_NOISE)
def test_matches_sample_kalman_analysis(name, noise, n_obs):
    problem = helpers.make_linear_problem(10 + n_obs, N_E, N_X, n_obs, noise=noise)
    _assert_matches_reference(name, problem, _run(name, problem))


@pytest.mark.parametrize("ensemble", ["rank_deficient", "repeated"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_matches_sample_kalman_analysis_degenerate_ensembles(name, ensemble):
    # Rank-deficient anomalies and anomalies with all singular values equal: S S^T has
    # repeated eigenvalues (the case a naive eigh cannot differentiate).
    problem = helpers.make_linear_problem(
        20, N_E, N_X, 5, noise="scalar", ensemble=ensemble, obs_matrix="identity"
    )
    _assert_matches_reference(name, problem, _run(name, problem))


@pytest.mark.parametrize("name", list(FILTERS))
def test_ensemble_transform_reproduces_particles(name):
    # info.ensemble_transform E satisfies X^a = E X^f (what smoothers apply to lagged states).
    problem = helpers.make_linear_problem(21, N_E, N_X, 5)
    out = _run(name, problem)
    E = np.asarray(out.info.ensemble_transform)
    np.testing.assert_allclose(E @ problem.forecast, out.particles, atol=TOL64)
    np.testing.assert_allclose(E.sum(axis=1), np.ones(N_E), atol=TOL64)


# --- equivalences between the filters --------------------------------------------------------


@pytest.mark.parametrize("n_obs", OBS_SIZES)
def test_serial_equals_etkf_for_diagonal_noise(n_obs):
    problem = helpers.make_linear_problem(30 + n_obs, N_E, N_X, n_obs, noise="variances")
    serial = _run("EnSRF_Serial", problem)
    etkf = _run("ETKF", problem)
    m_s, c_s = helpers.sample_mean_cov(serial.particles)
    m_e, c_e = helpers.sample_mean_cov(etkf.particles)
    np.testing.assert_allclose(m_s, m_e, atol=TOL64)
    np.testing.assert_allclose(c_s, c_e, atol=TOL64)
    np.testing.assert_allclose(serial.log_likelihood, etkf.log_likelihood, atol=TOL64)


@pytest.mark.parametrize("n_obs", OBS_SIZES)
@pytest.mark.parametrize("noise", ["diagonal", "dense"])
def test_estkf_equals_etkf(noise, n_obs):
    problem = helpers.make_linear_problem(40 + n_obs, N_E, N_X, n_obs, noise=noise)
    estkf = _run("ESTKF", problem)
    etkf = _run("ETKF", problem)
    np.testing.assert_allclose(estkf.particles, etkf.particles, atol=TOL64)
    np.testing.assert_allclose(estkf.info.transform, etkf.info.transform, atol=TOL64)


def test_etkf_transform_is_symmetric_and_ensrf_is_a_rotation_of_it():
    problem = helpers.make_linear_problem(50, N_E, N_X, 5, noise="dense")
    etkf, ensrf = _run("ETKF", problem), _run("EnSRF", problem)
    T = np.asarray(etkf.info.transform)
    np.testing.assert_allclose(T, T.T, atol=TOL64)
    # Same mean and covariance, different ensemble: EnSRF is a different square root.
    assert np.max(np.abs(np.asarray(etkf.particles) - np.asarray(ensrf.particles))) > 1e-3
    A = problem.forecast - problem.forecast.mean(0)
    Ta = np.asarray(ensrf.info.transform)
    np.testing.assert_allclose((Ta @ A).T @ (Ta @ A), (T @ A).T @ (T @ A), atol=TOL64)


def test_livings_preserves_mean_and_covariance_but_rotates_members():
    problem = helpers.make_linear_problem(60, N_E, N_X, 5, noise="dense")
    etkf = _run("ETKF", problem)
    a = _run("ETKF_Livings", problem, key=jax.random.key(1))
    a_again = _run("ETKF_Livings", problem, key=jax.random.key(1))
    b = _run("ETKF_Livings", problem, key=jax.random.key(2))
    for out in (a, b):
        m, c = helpers.sample_mean_cov(out.particles)
        m_e, c_e = helpers.sample_mean_cov(etkf.particles)
        np.testing.assert_allclose(m, m_e, atol=TOL64)
        np.testing.assert_allclose(c, c_e, atol=TOL64)
    assert np.max(np.abs(np.asarray(a.particles) - np.asarray(etkf.particles))) > 1e-3
    assert np.max(np.abs(np.asarray(a.particles) - np.asarray(b.particles))) > 1e-3
    # Same key => bit-identical.
    np.testing.assert_array_equal(a.particles, a_again.particles)


@pytest.mark.parametrize("name", list(FILTERS))
def test_same_key_gives_identical_results(name):
    problem = helpers.make_linear_problem(61, N_E, N_X, 5)
    key = jax.random.key(3)
    first = _run(name, problem, key=key)
    second = _run(name, problem, key=key)
    np.testing.assert_array_equal(first.particles, second.particles)
    np.testing.assert_array_equal(first.log_likelihood, second.log_likelihood)


# --- missing observations ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "noise"), FILTER_NOISE)
def test_nan_observations_equal_observed_subset(name, noise):
    problem = helpers.make_linear_problem(70, N_E, N_X, 8, noise=noise, missing=(0, 3, 4))
    keep = ~np.isnan(problem.obs)
    subset = problem.subset(keep)
    full = _run(name, problem)
    part = _run(name, subset)
    np.testing.assert_allclose(full.particles, part.particles, atol=TOL64)
    np.testing.assert_allclose(full.log_likelihood, part.log_likelihood, atol=TOL64)
    assert np.all(np.isfinite(np.asarray(full.particles)))
    _assert_matches_reference(name, problem, full)


@pytest.mark.parametrize("name", list(FILTERS))
def test_all_observations_missing_leaves_forecast_unchanged(name):
    problem = helpers.make_linear_problem(71, N_E, N_X, 4, missing=(0, 1, 2, 3))
    out = _run(name, problem)
    transform = np.asarray(out.info.transform)
    if name == "ETKF_Livings":  # only a rotation remains
        m, c = helpers.sample_mean_cov(out.particles)
        np.testing.assert_allclose(m, problem.forecast.mean(0), atol=TOL64)
        np.testing.assert_allclose(c, np.cov(problem.forecast.T), atol=TOL64)
    else:
        np.testing.assert_allclose(out.particles, problem.forecast, atol=TOL64)
        np.testing.assert_allclose(transform, np.eye(N_E), atol=TOL64)
    assert float(out.log_likelihood) == 0.0


# --- gradients ---------------------------------------------------------------------------------


def _gradient_problem(n_obs, ensemble, noise):
    obs_matrix = "identity" if ensemble == "repeated" else "random"
    n_state = max(N_X, n_obs) if obs_matrix == "identity" else N_X
    return helpers.make_linear_problem(
        80 + n_obs, N_E, n_state, n_obs, noise=noise, ensemble=ensemble, obs_matrix=obs_matrix
    )


def _losses(name, problem):
    """Both losses of (inflation, noise scale): the log-likelihood and a particle loss."""
    X = jnp.asarray(problem.forecast)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(X.shape))

    def losses(inflation, scale):
        mean = jnp.mean(X, axis=0)
        forecast = mean[None, :] + inflation * (X - mean[None, :])
        out = FILTERS[name].analysis(
            jax.random.key(0),
            forecast,
            jnp.asarray(problem.obs),
            problem.obs_op,
            problem.obs_noise(scale),
        )
        particle_loss = jnp.sum(weights * out.particles) + jnp.sum(out.particles**2)
        return jnp.stack([out.log_likelihood, particle_loss])

    return losses


@pytest.mark.parametrize(
    "n_obs, ensemble",
    [(3, "random"), (N_E, "random"), (12, "random"), (5, "repeated"), (12, "rank_deficient")],
)
@pytest.mark.parametrize("name", list(FILTERS))
def test_gradients_match_finite_differences(name, n_obs, ensemble):
    noise = "scalar" if ensemble == "repeated" or name == "EnSRF_Serial" else "dense"
    problem = _gradient_problem(n_obs, ensemble, noise)
    losses = _losses(name, problem)
    point = (1.15, 0.8)
    # Rows: (log-likelihood, particle loss); columns: d/d inflation, d/d noise scale.
    jacobian = np.stack(jax.jacrev(losses, argnums=(0, 1))(*point), axis=1)
    assert np.all(np.isfinite(jacobian))
    fd = np.stack(
        [
            helpers.central_difference(lambda t: losses(t, point[1]), point[0]),
            helpers.central_difference(lambda s: losses(point[0], s), point[1]),
        ],
        axis=1,
    )
    # Central differences with h = 1e-5 in float64: truncation ~1e-10, round-off ~1e-10
    # relative to O(1..100) losses, so rtol 1e-5 (plus a tiny atol for zero gradients).
    np.testing.assert_allclose(jacobian, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", list(FILTERS))
def test_gradient_wrt_forecast_and_obs_with_missing_entries(name):
    # Repeated singular values and NaN observations together; the directional derivative of
    # the particle loss along a random forecast perturbation must match finite differences.
    problem = helpers.make_linear_problem(
        90, N_E, N_X, 6, noise="scalar", ensemble="repeated", obs_matrix="identity", missing=(2,)
    )
    X = jnp.asarray(problem.forecast)
    direction = jnp.asarray(np.random.default_rng(2).standard_normal(X.shape))

    def loss(forecast, obs):
        out = FILTERS[name].analysis(
            jax.random.key(0), forecast, obs, problem.obs_op, problem.obs_noise()
        )
        return jnp.sum(out.particles**2) + out.log_likelihood

    obs = jnp.asarray(problem.obs)
    g_x, g_y = jax.grad(loss, argnums=(0, 1))(X, obs)
    assert np.all(np.isfinite(np.asarray(g_x)))
    assert np.all(np.isfinite(np.asarray(g_y)))
    assert float(g_y[2]) == 0.0  # no gradient flows into a missing observation
    fd = helpers.central_difference(lambda t: loss(X + t * direction, obs), 0.0)
    np.testing.assert_allclose(jnp.sum(g_x * direction), fd, rtol=1e-5)


# --- transformations: jit, vmap, dtypes --------------------------------------------------------


@pytest.mark.parametrize("name", list(FILTERS))
def test_jit_and_vmap_match_eager(name):
    # One compiled call over a (key, inflation, noise scale) batch == the eager loop.
    problem = helpers.make_linear_problem(100, N_E, N_X, 5)
    filt = FILTERS[name]
    X, y = jnp.asarray(problem.forecast), jnp.asarray(problem.obs)

    def run(key, inflation, scale):
        mean = jnp.mean(X, axis=0)
        forecast = mean[None, :] + inflation * (X - mean[None, :])
        out = filt.analysis(key, forecast, y, problem.obs_op, problem.obs_noise(scale))
        return out.particles, out.log_likelihood

    keys = jax.random.split(jax.random.key(4), 3)
    inflations = jnp.array([0.9, 1.0, 1.2])
    scales = jnp.array([0.5, 1.0, 2.0])
    eager = [run(*args) for args in zip(keys, inflations, scales, strict=True)]
    jitted = jax.jit(run)(keys[0], inflations[0], scales[0])
    np.testing.assert_allclose(jitted[0], eager[0][0], atol=TOL64)
    particles, loglik = jax.jit(jax.vmap(run))(keys, inflations, scales)
    np.testing.assert_allclose(particles, np.stack([p for p, _ in eager]), atol=TOL64)
    np.testing.assert_allclose(loglik, np.stack([ll for _, ll in eager]), atol=TOL64)


@pytest.mark.parametrize("name", list(FILTERS))
def test_float32(name):
    problem = helpers.make_linear_problem(110, N_E, N_X, 5, noise="variances")
    out = FILTERS[name].analysis(
        jax.random.key(0),
        jnp.asarray(problem.forecast, jnp.float32),
        jnp.asarray(problem.obs, jnp.float32),
        lambda x: x[:5] * 1.0,
        jnp.asarray(problem.noise_diag, jnp.float32),
    )
    assert out.particles.dtype == jnp.float32
    assert out.log_likelihood.dtype == jnp.float32
    ref = helpers.sample_kalman_analysis(
        problem.forecast, np.eye(5, N_X), problem.noise_cov, problem.obs
    )
    mean, cov = helpers.sample_mean_cov(out.particles)
    # float32 round-off (~6e-8) amplified by O(10) condition numbers and O(N_e N_y) sums.
    np.testing.assert_allclose(mean, ref.mean, atol=1e-4)
    np.testing.assert_allclose(cov, _expected_cov(name, ref), atol=1e-4)

    def loglik(scale):
        return (
            FILTERS[name]
            .analysis(
                jax.random.key(0),
                jnp.asarray(problem.forecast, jnp.float32),
                jnp.asarray(problem.obs, jnp.float32),
                lambda x: x[:5],
                scale * jnp.asarray(problem.noise_diag, jnp.float32),
            )
            .log_likelihood
        )

    grad = jax.grad(loglik)(jnp.float32(1.0))
    assert grad.dtype == jnp.float32 and np.isfinite(grad)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["dense", "low_rank"])
def test_serial_refuses_correlated_noise_and_names_alternatives(noise):
    problem = helpers.make_linear_problem(120, N_E, N_X, 4, noise=noise)
    with pytest.raises(ValueError, match="EnSRF_Serial needs a diagonal.*ETKF or EnSRF"):
        _run("EnSRF_Serial", problem)


@pytest.mark.usefixtures("no_runtime_typecheck")
@pytest.mark.parametrize("name", list(FILTERS))
def test_bad_inputs_raise_at_trace_time(name):
    filt = FILTERS[name]
    key = jax.random.key(0)
    X = jnp.asarray(helpers.make_linear_problem(130, N_E, N_X, 3).forecast)
    H = lambda x: x[:3]  # noqa: E731
    with pytest.raises(ValueError, match=rf"{name}\.analysis.*2-D ensemble"):
        filt.analysis(key, X[0], jnp.zeros(3), H, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        filt.analysis(key, X[:1], jnp.zeros(3), H, 1.0)
    with pytest.raises(ValueError, match="obs` has length 4"):
        filt.analysis(key, X, jnp.zeros(4), H, 1.0)
    with pytest.raises(ValueError, match="does not match the 3 observations"):
        filt.analysis(key, X, jnp.zeros(3), H, jnp.ones(4))
    with pytest.raises(ValueError, match="obs` has length 4"):
        jax.jit(lambda X: filt.analysis(key, X, jnp.zeros(4), H, 1.0))(X)


def test_livings_needs_a_key():
    problem = helpers.make_linear_problem(131, N_E, N_X, 3)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        ff.ETKF_Livings().analysis(
            None, jnp.asarray(problem.forecast), jnp.asarray(problem.obs), problem.obs_op, 1.0
        )


def test_filters_are_sequential_filters():
    for filt in FILTERS.values():
        assert isinstance(filt, fxp.AbstractSequentialFilter)


# --- one analysis for the whole transform family; every observation-operator form ---------------

TRANSFORM_FILTERS = {**FILTERS, "EnKF_N": ff.EnKF_N()}


def test_transform_filters_share_one_analysis():
    # The analysis body is written once (AbstractTransformFilter); filters only supply (w, T).
    for filt in TRANSFORM_FILTERS.values():
        assert isinstance(filt, ff.AbstractTransformFilter)
        assert type(filt).analysis is ff.AbstractTransformFilter.analysis


@pytest.mark.parametrize("form", ["matrix", "numpy_matrix", "lineax"])
@pytest.mark.parametrize("name", list(TRANSFORM_FILTERS))
def test_matrix_and_lineax_obs_op_equal_the_callable(name, form):
    problem = helpers.make_linear_problem(140, N_E, N_X, 5, noise="variances", missing=(1,))
    H = {
        "matrix": jnp.asarray(problem.H),
        "numpy_matrix": np.asarray(problem.H),
        "lineax": lx.MatrixLinearOperator(jnp.asarray(problem.H)),
    }[form]
    filt = TRANSFORM_FILTERS[name]
    args = (jnp.asarray(problem.forecast), jnp.asarray(problem.obs))
    key = jax.random.key(5)
    ref = filt.analysis(key, *args, problem.obs_op, problem.obs_noise())
    out = filt.analysis(key, *args, H, problem.obs_noise())
    # The same float64 products H x (full precision in every form): equal to round-off.
    np.testing.assert_allclose(out.particles, ref.particles, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=0, atol=1e-12)
    jitted = jax.jit(lambda X, y: filt.analysis(key, X, y, H, problem.obs_noise()).particles)
    np.testing.assert_allclose(jitted(*args), ref.particles, rtol=0, atol=1e-12)


def test_etkf_newton_transform_equals_eigh_and_has_the_same_gradient():
    # The default Newton-Schulz value of (I + S S^T)^{-1/2} (N_y >= N_e) runs to round-off:
    # it equals the eigh value to ~1e-13 (condition of I + S S^T is ~1e2 here), and the
    # derivative is the same Daleckii-Krein rule either way.
    key = jax.random.key(7)
    X = jax.random.normal(key, (8, 12)) + 1.0
    y = jnp.linspace(-1.0, 1.0, 12)
    obs_op = fxp.IdentityObs()

    def mean_after(scale, method):
        out = ff.ETKF(transform_method=method).analysis(None, scale * X, y, obs_op, 0.3)
        return jnp.sum(out.particles**2)

    newton, eigh = mean_after(1.0, "newton"), mean_after(1.0, "eigh")
    np.testing.assert_allclose(newton, eigh, rtol=1e-12)
    g_newton = jax.grad(mean_after)(1.0, "newton")
    g_eigh = jax.grad(mean_after)(1.0, "eigh")
    np.testing.assert_allclose(g_newton, g_eigh, rtol=1e-10)
    with pytest.raises(ValueError, match="transform_method"):
        ff.ETKF(transform_method="svd")
