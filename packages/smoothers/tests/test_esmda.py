"""ESMDA against independent numpy references (inverse_refs.py).

- ``variant="sqrt"`` on a linear-Gaussian problem with an exact-moment prior ensemble: the
  final sample mean and covariance equal the analytic posterior to 1e-9 (algebraic identity
  for any alphas with sum 1/alpha = 1).
- ``variant="pertobs"``: one assimilation equals the numpy ES update with the same
  perturbations to 1e-9; with N_e = 20000 the final ensemble matches the posterior within a
  Monte-Carlo tolerance (see `MC_FACTOR`).
- Driver: init/update stepping == run; same key => identical; vmap over keys; bad input.
- ESMDA is a process of `filterax.processes`: `calibrate` drives it through the same loop as
  `run` (1e-12) and lands on the analytic posterior (sqrt, 1e-9).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import filterax.primitives as fxp
import filterax.processes as fpr
from filterax.smoothers import ESMDA, InversionResult, InversionState
from filterax.testing import load_sibling

refs = load_sibling(__file__, "inverse_refs.py", "smoothers")

# Algebraic identities in float64 on O(1) data (condition numbers < 1e3): round-off ~1e-13.
TOL64 = 1e-9
# Monte-Carlo tolerance in units of (posterior std) / sqrt(N_e): the sample mean and covariance
# of N_e members have standard errors ~ std / sqrt(N_e) (covariance: ~ sqrt(2) std_i std_j /
# sqrt(N_e)), inflated for ES by the prior's own sampling error propagated through the gain.
# Over 5 seeds x 6 components x {diagonal, dense Gamma} the worst observed error was 5.0 of
# these units; 8 leaves margin while a wrong tempering (e.g. sum 1/alpha = 2) is off by ~50%.
MC_FACTOR = 8.0


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _noise_arg(problem, kind):
    if kind == "diagonal":
        return jnp.asarray(np.diag(problem.Gamma))
    return jnp.asarray(problem.Gamma)


def _forward(problem):
    G = jnp.asarray(problem.G)
    return lambda theta: G @ theta


def _gaussian_prior(problem, n_e, seed):
    rng = np.random.default_rng(seed)
    return problem.m0 + rng.normal(size=(n_e, problem.n_params)) @ np.linalg.cholesky(problem.C0).T


@pytest.mark.parametrize("noise", ["diagonal", "dense"])
@pytest.mark.parametrize(
    "alphas", [(1.0,), (4.0, 4.0, 4.0, 4.0), (2.0, 4.0, 8.0, 8.0), (9.333, 7.0, 4.0, 2.0)]
)
def test_sqrt_reproduces_exact_posterior(noise, alphas, getkey):
    problem = refs.linear_problem(1, n_params=6, n_obs=12, noise=noise)
    prior = refs.exact_moment_ensemble(2, problem.m0, problem.C0, n_ensemble=20)
    method = ESMDA(alphas=alphas, variant="sqrt", normalize_alphas=True)
    result = method.run(
        _forward(problem),
        jnp.asarray(prior),
        jnp.asarray(problem.y),
        _noise_arg(problem, noise),
        key=getkey(),
    )
    mean, cov = refs.sample_mean_cov(np.asarray(result.ensemble))
    m_post, s_post = problem.posterior()
    np.testing.assert_allclose(mean, m_post, atol=TOL64, rtol=0)
    np.testing.assert_allclose(cov, s_post, atol=TOL64, rtol=0)


def test_sqrt_with_low_rank_noise_reproduces_exact_posterior(getkey):
    # Gamma = D + U U^T through the Woodbury path, checked against the dense analytic posterior.
    problem = refs.linear_problem(3, n_params=5, n_obs=10)
    rng = np.random.default_rng(4)
    factor = 0.3 * rng.normal(size=(10, 2))
    diag = np.diag(problem.Gamma)
    problem.Gamma = np.diag(diag) + factor @ factor.T
    prior = refs.exact_moment_ensemble(5, problem.m0, problem.C0, n_ensemble=16)
    noise = fxp.low_rank_noise(jnp.asarray(factor), jnp.asarray(diag))
    result = ESMDA(n_assimilations=3, variant="sqrt").run(
        _forward(problem), jnp.asarray(prior), jnp.asarray(problem.y), noise, key=getkey()
    )
    mean, cov = refs.sample_mean_cov(np.asarray(result.ensemble))
    m_post, s_post = problem.posterior()
    np.testing.assert_allclose(mean, m_post, atol=TOL64, rtol=0)
    np.testing.assert_allclose(cov, s_post, atol=TOL64, rtol=0)


@pytest.mark.parametrize("noise", ["diagonal", "dense"])
@pytest.mark.parametrize("center", [False, True])
def test_pertobs_step_equals_numpy_es_update(noise, center, getkey):
    # Each assimilation is the ES update with alpha Gamma and sqrt(alpha) eps_j (same eps).
    problem = refs.linear_problem(6, n_params=7, n_obs=9, noise=noise)
    prior = _gaussian_prior(problem, 30, 7)
    method = ESMDA(alphas=(3.0, 1.5), center_perturbations=center)
    state = method.init(
        getkey(), jnp.asarray(prior), jnp.asarray(problem.y), _noise_arg(problem, noise)
    )
    ensemble = prior
    for alpha in (3.0, 1.5):
        forward = ensemble @ problem.G.T
        state = method.update(state, jnp.asarray(forward))
        eps = np.asarray(state.perturbations)
        expected = refs.es_update(ensemble, forward, problem.y, problem.Gamma, eps, alpha)
        np.testing.assert_allclose(np.asarray(state.ensemble), expected, atol=TOL64, rtol=0)
        ensemble = expected
    if center:
        np.testing.assert_allclose(eps.mean(axis=0), 0.0, atol=1e-12)


@pytest.mark.parametrize("noise", ["diagonal", "dense"])
@pytest.mark.parametrize("alphas", [(1.0,), (4.0, 4.0, 4.0, 4.0)])
def test_pertobs_large_ensemble_matches_posterior(noise, alphas):
    # alphas=(1,) is a single ES step. Tolerance: MC_FACTOR, see above.
    n_e = 20000
    problem = refs.linear_problem(0, n_params=6, n_obs=12, noise=noise)
    prior = _gaussian_prior(problem, n_e, 100)
    result = ESMDA(alphas=alphas).run(
        _forward(problem),
        jnp.asarray(prior),
        jnp.asarray(problem.y),
        _noise_arg(problem, noise),
        key=jax.random.key(0),
    )
    mean, cov = refs.sample_mean_cov(np.asarray(result.ensemble))
    m_post, s_post = problem.posterior()
    sd = np.sqrt(np.diag(s_post))
    assert np.all(np.abs(mean - m_post) <= MC_FACTOR * sd / np.sqrt(n_e))
    assert np.all(np.abs(cov - s_post) <= MC_FACTOR * np.outer(sd, sd) / np.sqrt(n_e))
    # The prior is far from the posterior at this scale: the check can fail.
    prior_mean, prior_cov = refs.sample_mean_cov(prior)
    assert np.max(np.abs(prior_mean - m_post) / sd) > 10 * MC_FACTOR / np.sqrt(n_e)
    assert np.max(np.abs(prior_cov - s_post) / np.outer(sd, sd)) > 10 * MC_FACTOR / np.sqrt(n_e)


def test_run_records_history_misfit_and_evaluations(getkey):
    problem = refs.linear_problem(8, n_params=5, n_obs=8)
    prior = _gaussian_prior(problem, 40, 9)
    result = ESMDA(n_assimilations=3).run(
        _forward(problem),
        jnp.asarray(prior),
        jnp.asarray(problem.y),
        _noise_arg(problem, "diagonal"),
        key=getkey(),
    )
    assert isinstance(result, InversionResult)
    assert result.history.shape == (4, 40, 5)
    assert result.forward_history.shape == (3, 40, 8)
    assert result.n_forward_evaluations == 120
    np.testing.assert_array_equal(np.asarray(result.history[0]), prior)
    np.testing.assert_array_equal(np.asarray(result.history[-1]), np.asarray(result.ensemble))
    for k in range(3):
        forward = np.asarray(result.history[k]) @ problem.G.T
        np.testing.assert_allclose(np.asarray(result.forward_history[k]), forward, atol=1e-12)
        expected = refs.data_misfit(forward, problem.y, problem.Gamma)
        np.testing.assert_allclose(float(result.misfit[k]), expected, rtol=1e-10)
    assert float(result.misfit[-1]) < float(result.misfit[0])


@pytest.mark.parametrize("variant", ["pertobs", "sqrt"])
def test_stepping_equals_run_and_same_key_is_identical(variant, getkey):
    problem = refs.linear_problem(10, n_params=5, n_obs=8, noise="dense")
    prior = jnp.asarray(_gaussian_prior(problem, 25, 11))
    y, noise = jnp.asarray(problem.y), _noise_arg(problem, "dense")
    forward = _forward(problem)
    method = ESMDA(n_assimilations=3, variant=variant)
    key = getkey()
    result = method.run(forward, prior, y, noise, key=key)
    again = method.run(forward, prior, y, noise, key=key)
    np.testing.assert_array_equal(np.asarray(result.history), np.asarray(again.history))

    state = method.init(key, prior, y, noise)
    update = eqx.filter_jit(method.update)
    for k in range(3):
        state = update(state, jax.vmap(forward)(state.ensemble))
        np.testing.assert_allclose(
            np.asarray(state.ensemble), np.asarray(result.history[k + 1]), atol=1e-12, rtol=0
        )
    assert int(state.iteration) == 3

    other = method.run(forward, prior, y, noise, key=getkey())
    if variant == "pertobs":
        assert not np.allclose(np.asarray(other.ensemble), np.asarray(result.ensemble))
    else:  # deterministic: the key is not used
        np.testing.assert_array_equal(np.asarray(other.ensemble), np.asarray(result.ensemble))


def test_vmap_over_keys_equals_separate_runs(getkey):
    problem = refs.linear_problem(12, n_params=4, n_obs=6)
    prior = jnp.asarray(_gaussian_prior(problem, 20, 13))
    y, noise = jnp.asarray(problem.y), _noise_arg(problem, "diagonal")
    forward = _forward(problem)
    method = ESMDA(n_assimilations=2)
    keys = jax.random.split(getkey(), 3)
    batched = jax.vmap(lambda k: method.run(forward, prior, y, noise, key=k).ensemble)(keys)
    for i in range(3):
        single = method.run(forward, prior, y, noise, key=keys[i]).ensemble
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), atol=1e-12)
    assert not np.allclose(np.asarray(batched[0]), np.asarray(batched[1]))


def test_sqrt_gradient_is_finite_and_matches_finite_differences(getkey):
    # N_y = 3 < N_e - 1 = 11: the ensemble-space Gram matrix has repeated zero eigenvalues,
    # where a plain eigh derivative is NaN; the Daleckii-Krein JVP is finite and exact.
    problem = refs.linear_problem(21, n_params=4, n_obs=3)
    prior = jnp.asarray(_gaussian_prior(problem, 12, 22))
    y = jnp.asarray(problem.y)
    forward = _forward(problem)
    key = getkey()

    def loss(scale):
        out = ESMDA(alphas=jnp.array([2.0, 2.0]), variant="sqrt").run(
            forward, prior, y, scale * jnp.ones(3), key=key
        )
        return jnp.sum(jnp.var(out.ensemble, axis=0)) + jnp.sum(out.ensemble.mean(axis=0) ** 2)

    grad = jax.grad(loss)(1.3)
    assert np.isfinite(grad)
    h = 1e-6
    fd = (loss(1.3 + h) - loss(1.3 - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_vmap_over_alphas_is_possible(getkey):
    # alphas are a dynamic field: a sweep over inflation schedules is one vmap.
    problem = refs.linear_problem(14, n_params=4, n_obs=6)
    prior = refs.exact_moment_ensemble(15, problem.m0, problem.C0, 12)
    y, noise = jnp.asarray(problem.y), _noise_arg(problem, "diagonal")
    forward = _forward(problem)
    schedules = jnp.array([[2.0, 2.0], [4.0, 4.0 / 3.0]])

    def final(alphas):
        return ESMDA(alphas=alphas, variant="sqrt").run(
            forward, jnp.asarray(prior), y, noise, key=getkey()
        )

    results = eqx.filter_vmap(final)(schedules)
    m_post, _ = problem.posterior()
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(results.ensemble[i]).mean(axis=0), m_post, atol=TOL64, rtol=0
        )


def test_float32_stays_float32(getkey):
    problem = refs.linear_problem(16, n_params=4, n_obs=6)
    prior = jnp.asarray(_gaussian_prior(problem, 30, 17), dtype=jnp.float32)
    G = jnp.asarray(problem.G, dtype=jnp.float32)
    result = ESMDA().run(
        lambda th: G @ th,
        prior,
        jnp.asarray(problem.y, dtype=jnp.float32),
        0.3,
        key=getkey(),
    )
    assert result.ensemble.dtype == jnp.float32
    assert result.misfit.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(result.history)))


def test_non_finite_forward_evaluation_raises_or_skips(getkey):
    problem = refs.linear_problem(18, n_params=4, n_obs=6)
    prior = jnp.asarray(_gaussian_prior(problem, 10, 19))
    y = jnp.asarray(problem.y)
    forward = np.asarray(prior) @ problem.G.T
    forward[3, 2] = np.nan
    state = ESMDA().init(getkey(), prior, y, 0.3)
    with pytest.raises(Exception, match="NaN/inf"):
        jax.block_until_ready(eqx.filter_jit(ESMDA().update)(state, jnp.asarray(forward)))
    skipped = ESMDA(throw=False).update(state, jnp.asarray(forward))
    np.testing.assert_array_equal(np.asarray(skipped.ensemble), np.asarray(prior))
    assert int(skipped.n_failed) == 1
    assert int(skipped.iteration) == 1


def test_more_updates_than_assimilations_raises(getkey):
    problem = refs.linear_problem(20, n_params=3, n_obs=4)
    prior = jnp.asarray(_gaussian_prior(problem, 8, 21))
    method = ESMDA(alphas=(1.0,))
    state = method.init(getkey(), prior, jnp.asarray(problem.y), 0.5)
    state = method.update(state, prior @ jnp.asarray(problem.G).T)
    with pytest.raises(Exception, match="all N_a assimilations"):
        jax.block_until_ready(method.update(state, state.ensemble @ jnp.asarray(problem.G).T))


def test_alphas_options():
    assert ESMDA().alphas.tolist() == [4.0, 4.0, 4.0, 4.0]
    assert ESMDA(n_assimilations=2).alphas.tolist() == [2.0, 2.0]
    np.testing.assert_allclose(
        np.asarray(ESMDA(alphas=[1.0, 1.0], normalize_alphas=True).alphas), [2.0, 2.0]
    )
    assert ESMDA(alphas=[9.333, 7.0, 4.0, 2.0]).n_steps == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alphas": [1.0, 1.0]}, "sum\\(1/alpha_i\\) = 1"),
        ({"alphas": [2.0, -2.0]}, "> 0"),
        ({"alphas": [0.0, 1.0]}, "> 0"),
        ({"alphas": jnp.ones((1, 1))}, "1-D"),
        ({"alphas": [2.0, 2.0], "n_assimilations": 3}, "n_assimilations"),
        ({"n_assimilations": 0}, "positive int"),
        ({"variant": "etkf"}, "'pertobs'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match, no_runtime_typecheck):
    with pytest.raises(ValueError, match=match):
        ESMDA(**kwargs)


def test_bad_inputs_raise(getkey, no_runtime_typecheck):
    method = ESMDA()
    prior = jnp.zeros((10, 3))
    y = jnp.zeros(4)
    with pytest.raises(ValueError, match="N_e=1"):
        method.init(getkey(), jnp.zeros((1, 3)), y, 1.0)
    with pytest.raises(ValueError, match="2-D"):
        method.init(getkey(), jnp.zeros(3), y, 1.0)
    with pytest.raises(TypeError, match="floating"):
        method.init(getkey(), jnp.zeros((10, 3), dtype=jnp.int32), y, 1.0)
    with pytest.raises(ValueError, match="1-D observation"):
        method.init(getkey(), prior, jnp.zeros((4, 1)), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        method.init(getkey(), prior, y.at[0].set(jnp.nan), 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        method.init(getkey(), prior, y, jnp.array([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="negative variances"):
        method.init(getkey(), prior, y, jnp.array(np.diag([1.0, 1.0, 1.0, -1.0])))
    indefinite = np.eye(4)
    indefinite[0, 1] = indefinite[1, 0] = 2.0
    with pytest.raises(ValueError, match="smallest eigenvalue"):
        method.init(getkey(), prior, y, jnp.asarray(indefinite))
    with pytest.raises(ValueError, match="obs_noise"):
        method.init(getkey(), prior, y, jnp.ones(5))
    with pytest.raises(ValueError, match="obs_noise"):
        method.init(getkey(), prior, y, jnp.eye(3))
    with pytest.raises(TypeError, match="PRNG key"):
        method.init(0, prior, y, 1.0)
    state = method.init(getkey(), prior, y, 1.0)
    assert isinstance(state, InversionState)
    with pytest.raises(ValueError, match="forward_evals must have shape"):
        method.update(state, jnp.zeros((10, 5)))
    with pytest.raises(ValueError, match="forward_fn must map ONE"):
        method.run(lambda th: jnp.zeros(5), prior, y, 1.0, key=getkey())
    with pytest.raises(TypeError, match="callable"):
        method.run(None, prior, y, 1.0, key=getkey())


# calibrate and run execute the same loop, compiled in different programs: round-off only.
TOL_SAME = 1e-12


def test_smoothers_reexport_the_processes_objects():
    assert ESMDA is fpr.ESMDA and InversionState is fpr.InversionState
    assert InversionResult is fpr.InversionResult


@pytest.mark.parametrize("noise", ["diagonal", "dense"])
@pytest.mark.parametrize("variant", ["pertobs", "sqrt"])
def test_calibrate_equals_run_and_sqrt_reaches_the_exact_posterior(variant, noise, getkey):
    problem = refs.linear_problem(1, n_params=6, n_obs=12, noise=noise)
    prior = jnp.asarray(refs.exact_moment_ensemble(2, problem.m0, problem.C0, n_ensemble=20))
    y, noise_arg = jnp.asarray(problem.y), _noise_arg(problem, noise)
    method = ESMDA(alphas=(2.0, 4.0, 8.0, 8.0), variant=variant)
    key = getkey()
    ran = method.run(_forward(problem), prior, y, noise_arg, key=key)
    result = fpr.calibrate(
        method, _forward(problem), prior, y, noise_arg, key=key, until_converged=True
    )
    assert result.n_iterations == 4 and result.converged
    np.testing.assert_allclose(result.history.time[-1], 1.0, rtol=1e-14)
    np.testing.assert_allclose(result.history.parameters, ran.history, atol=TOL_SAME, rtol=0)
    np.testing.assert_allclose(
        np.mean(np.asarray(result.history.misfits), axis=1), ran.misfit, rtol=TOL_SAME
    )
    if variant == "sqrt":
        mean, cov = refs.sample_mean_cov(np.asarray(result.ensemble))
        m_post, s_post = problem.posterior()
        np.testing.assert_allclose(mean, m_post, atol=TOL64, rtol=0)
        np.testing.assert_allclose(cov, s_post, atol=TOL64, rtol=0)
