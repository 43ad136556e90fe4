"""Ensemble RTS, square-root smoother and the exact (Kalman) RTS smoother."""

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


@pytest.mark.parametrize("missing", [(), ((1, 0), (3, 2))])
def test_rts_smooth_is_the_numpy_rts(missing):
    problem = refs.make_linear_gaussian(0, n_times=7, missing=missing)
    kf = ff.KalmanFilter().filter(
        problem.m0,
        problem.P0,
        problem.observations,
        problem.times,
        problem.dynamics,
        problem.obs_op,
        problem.obs_noise,
    )
    out = fs.rts_smooth(kf, problem.dynamics, problem.times)
    ref_mean, ref_cov = refs.rts(problem)
    assert refs.rel_err(out.mean, ref_mean) < TOL
    assert refs.rel_err(out.cov, ref_cov) < TOL
    # A matrix for the dynamics gives the same (no differentiation needed).
    out_matrix = fs.rts_smooth(kf, jnp.asarray(problem.A), problem.times)
    assert refs.rel_err(out_matrix.mean, ref_mean) < TOL


def test_rts_smooth_bad_inputs():
    problem = refs.make_linear_gaussian(1, n_times=4)
    args = (problem.observations, problem.times, problem.dynamics, problem.obs_op, 0.5)
    kf_diag = ff.KalmanFilter().filter(problem.m0, problem.P0, *args, save_cov="diagonal")
    with pytest.raises(ValueError, match="save_cov='full'"):
        fs.rts_smooth(kf_diag, problem.dynamics, problem.times)
    kf = ff.KalmanFilter().filter(problem.m0, problem.P0, *args)
    with pytest.raises(ValueError, match="obs_times"):
        fs.rts_smooth(kf, problem.dynamics, problem.times[:2])
    with pytest.raises(TypeError, match="KalmanResult"):
        fs.rts_smooth(problem, problem.dynamics, problem.times)


@pytest.mark.parametrize("smoother", [fs.EnsembleRTS(), fs.EnsembleSqrtSmoother()])
@pytest.mark.parametrize("missing", [(), ((1, 0), (3, 2))])
def test_ensemble_rts_is_exact_on_linear_gaussian(smoother, missing):
    # Exact prior ensemble (N_e = 9 > N_x = 5) + ETKF = exact KF; then the dual gain
    # F^T (F F^T)^+ A is the RTS gain and both backward passes give the RTS moments.
    problem = refs.make_linear_gaussian(2, n_times=7, missing=missing)
    key = jax.random.key(0)
    history = _history(problem, ff.ETKF(), problem.exact_ensemble(9), key)
    out = smoother.smooth(ff.ETKF(), history, None, None, None, key=None, save_ensembles=True)
    mean, cov = refs.sample_moments(out.smoothed_ensembles)
    ref_mean, ref_cov = refs.rts(problem)
    assert refs.rel_err(mean, ref_mean) < TOL
    assert refs.rel_err(cov, ref_cov) < TOL
    np.testing.assert_allclose(out.smoothed_mean, mean, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("filt", [ff.ETKF(), ff.DEnKF(), ff.StochasticEnKF()])
def test_ensemble_rts_equals_enks_when_rank_is_n_e_minus_1(filt):
    # Raanes (2016): on a linear deterministic model with rank(F) = N_e - 1 <= N_x the EnRTS
    # and the EnKS are the same ensemble, for any filter of the form X^a = W X^f. (Not with
    # inflation: the EnKS applies the un-inflated W to the past, the EnRTS regresses on the
    # inflated analysis.)
    problem = refs.make_linear_gaussian(3, n_state=6, n_obs=3, n_times=6)
    key = jax.random.key(2)
    ens0 = jnp.asarray(problem.m0)[None, :] + jax.random.normal(jax.random.key(1), (5, 6))
    history = _history(problem, filt, ens0, key)
    enks = _smooth(fs.EnKS(), problem, filt, history, key, save_ensembles=True)
    erts = _smooth(fs.EnsembleRTS(), problem, filt, history, key, save_ensembles=True)
    assert refs.rel_err(erts.smoothed_ensembles, enks.smoothed_ensembles) < 1e-8
    # The square-root variant shares the mean and the covariance.
    sqrt = _smooth(fs.EnsembleSqrtSmoother(), problem, filt, history, key, save_ensembles=True)
    m_sqrt, c_sqrt = refs.sample_moments(sqrt.smoothed_ensembles)
    m_enks, c_enks = refs.sample_moments(enks.smoothed_ensembles)
    assert refs.rel_err(m_sqrt, m_enks) < 1e-8
    assert refs.rel_err(c_sqrt, c_enks) < 1e-8


def test_sqrt_smoother_keeps_rts_covariance_with_model_noise():
    # With model noise the member pairing across times is broken; EnsembleSqrtSmoother's
    # covariance still equals the dual-gain RTS formula A^T A + J^T (S^T S - F^T F) J (here
    # checked against its definition in numpy, step by step, on the last two cycles).
    problem = refs.make_linear_gaussian(4, n_state=4, n_obs=2, n_times=3)
    A = jnp.asarray(problem.A)

    class Noisy(fxp.AbstractStochasticDynamics):
        def __call__(self, x, t0, t1, *, key):
            return A @ x + 0.3 * jax.random.normal(key, x.shape)

    dynamics = Noisy()

    key = jax.random.key(0)
    history = ff.assimilate(
        ff.ETKF(), dynamics, problem.obs_op, problem.obs_noise, problem.exact_ensemble(7),
        problem.observations, problem.times, key=key, save="forecast_and_analysis",
    )  # fmt: skip
    out = fs.EnsembleSqrtSmoother().smooth(
        ff.ETKF(), history, None, None, None, save_ensembles=True
    )
    xa = np.asarray(history.ensembles[1])
    xf = np.asarray(history.forecast_ensembles[2])
    xs_next = np.asarray(out.smoothed_ensembles[2])
    a, f, s = (x - x.mean(0) for x in (xa, xf, xs_next))
    j = np.linalg.pinv(f) @ a  # primal gain (N_x x N_x): F^+ A
    cov_ref = (a.T @ a + j.T @ (s.T @ s - f.T @ f) @ j) / 6
    mean_ref = xa.mean(0) + (xs_next.mean(0) - xf.mean(0)) @ j
    _, cov = refs.sample_moments(out.smoothed_ensembles[1:2])
    assert refs.rel_err(cov[0], cov_ref) < 1e-8
    assert refs.rel_err(out.smoothed_mean[1], mean_ref) < 1e-8


def test_rts_smoothers_ignore_replay_inputs():
    # Only the filter's identity (global or localised) is used: no observations, operators or
    # key are needed (nothing is replayed).
    problem = refs.make_linear_gaussian(5)
    key = jax.random.key(0)
    history = _history(problem, ff.ETKF(), problem.exact_ensemble(8), key)
    for smoother in (fs.EnsembleRTS(), fs.EnsembleSqrtSmoother()):
        a = smoother.smooth(ff.ETKF(), history, None, None, None, key=None)
        b = _smooth(smoother, problem, ff.ETKF(), history, key)
        np.testing.assert_array_equal(a.smoothed_mean, b.smoothed_mean)
        np.testing.assert_allclose(a.smoothed_mean[-1], history.analysis_mean[-1], atol=1e-12)


def test_rcond_is_validated():
    with pytest.raises(ValueError, match="rcond"):
        fs.EnsembleRTS(rcond=2.0)
    with pytest.raises(ValueError, match="rcond"):
        fs.EnsembleSqrtSmoother(rcond=-1.0)


def test_pinv_and_sqrt_gradients_are_finite_at_repeated_eigenvalues():
    from filterax.smoothers._transforms import psd_pinv, psd_sqrt

    # F F^T of centred anomalies of rank 2 in N_e = 5: eigenvalue 0 three times.
    rng = np.random.default_rng(0)
    f = rng.standard_normal((5, 2))
    f = jnp.asarray(f - f.mean(0))
    h = jnp.asarray(rng.standard_normal((5, 5)))

    def loss(t):
        g = (t * f) @ (t * f).T + t * jnp.outer(f[:, 0], f[:, 0])
        return jnp.sum(psd_pinv(g) * h) + jnp.sum(psd_sqrt(jnp.eye(5) + g) * h)

    grad = jax.grad(loss)(1.3)
    eps = 1e-6
    fd = (loss(1.3 + eps) - loss(1.3 - eps)) / (2 * eps)
    assert np.isfinite(grad) and abs(grad) > 1e-3
    # Central difference with h = 1e-6: truncation ~1e-12, round-off ~1e-10.
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_decorr_scales_the_gain():
    # decorr = c multiplies G_k: on a two-cycle run the smoothed increment of the first
    # cycle's mean is exactly c times the undamped one, and the square-root smoother's
    # covariance is A^T (I - c^2 Pi + c^2 K_e S^T S K_e^T) A / (N_e - 1) (checked at c = 1, 0.5
    # via the difference: P^s(c) - P^a = c^2 (P^s(1) - P^a) for one step).
    problem = refs.make_linear_gaussian(3, n_state=6, n_obs=3, n_times=2)
    key = jax.random.key(2)
    ens0 = jnp.asarray(problem.m0)[None, :] + jax.random.normal(jax.random.key(1), (5, 6))
    history = _history(problem, ff.ETKF(), ens0, key)
    c = 0.6
    for cls in (fs.EnsembleRTS, fs.EnsembleSqrtSmoother):
        full = _smooth(cls(), problem, ff.ETKF(), history, None, save_ensembles=True)
        damped = _smooth(cls(decorr=c), problem, ff.ETKF(), history, None, save_ensembles=True)
        inc_full = full.smoothed_mean[0] - history.analysis_mean[0]
        inc_damped = damped.smoothed_mean[0] - history.analysis_mean[0]
        np.testing.assert_allclose(inc_damped, c * inc_full, rtol=1e-9, atol=1e-12)
    _, cov_a = refs.sample_moments(history.ensembles[:1])
    _, cov_1 = refs.sample_moments(full.smoothed_ensembles[:1])
    _, cov_c = refs.sample_moments(damped.smoothed_ensembles[:1])
    np.testing.assert_allclose(cov_c - cov_a, c**2 * (cov_1 - cov_a), rtol=1e-8, atol=1e-12)
    assert np.max(np.abs(cov_1 - cov_a)) > 1e-3  # the test can fail


def test_decorr_is_validated():
    with pytest.raises(ValueError, match="decorr"):
        fs.EnsembleRTS(decorr=0.0)
    with pytest.raises(ValueError, match="decorr"):
        fs.EnsembleSqrtSmoother(decorr=1.5)
