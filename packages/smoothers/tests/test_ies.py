"""IES against independent numpy references (inverse_refs.py).

- Linear forward model, step length 1: the first iteration equals the ensemble smoother
  (stochastic EnKF) update computed in numpy with the same perturbed observations, and further
  iterations leave it unchanged (1e-9, algebraic identity), in both branches of the
  averaged-sensitivity computation (``Omega^{-1}`` when N_p >= N_e - 1, the ``A^+ A``
  projection otherwise) and for diagonal, dense and low-rank-plus-diagonal ``Gamma``.
- Linear, step length gamma_i < 1: ``X_k - X_ES = prod_i (1 - gamma_i) (X_0 - X_ES)`` (1e-9).
- Large ensemble (N_e = 4000): posterior mean/covariance within a Monte-Carlo tolerance.
- Mildly nonlinear problem: the data misfit decreases, and IES ends with a lower mean RML cost
  and data misfit than a single ES step with the same perturbations.
- Driver: init/update stepping == run; same key => identical; vmap over keys; bad input.
- IES is a process of `filterax.processes`: `calibrate` drives it through the same loop as
  `run` (1e-12), and with step length 1 its first iteration is the ES update (1e-9).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import filterax.primitives as fxp
import filterax.processes as fpr
from filterax.smoothers import ESMDA, IES, ExponentialStepLength
from filterax.testing import load_sibling

refs = load_sibling(__file__, "inverse_refs.py", "smoothers")

# Algebraic identities in float64 on O(1) data (condition numbers < 1e3): round-off ~1e-13.
TOL64 = 1e-9
# Monte-Carlo tolerance in (posterior std) / sqrt(N_e) units; see test_esmda.py: the worst error
# of the ES update over 5 seeds x 6 components x {diagonal, dense} at N_e = 4000 was 4.0 units.
MC_FACTOR = 8.0


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _gaussian_prior(problem, n_e, seed):
    rng = np.random.default_rng(seed)
    return problem.m0 + rng.normal(size=(n_e, problem.n_params)) @ np.linalg.cholesky(problem.C0).T


def _linear_setup(noise, n_params, n_obs, n_e, seed=0):
    problem = refs.linear_problem(seed, n_params=n_params, n_obs=n_obs)
    if noise == "dense":
        problem = refs.linear_problem(seed, n_params=n_params, n_obs=n_obs, noise="dense")
        noise_arg = jnp.asarray(problem.Gamma)
    elif noise == "diagonal":
        noise_arg = jnp.asarray(np.diag(problem.Gamma))
    else:  # low-rank plus diagonal
        rng = np.random.default_rng(seed + 1)
        factor = 0.3 * rng.normal(size=(n_obs, 2))
        diag = np.diag(problem.Gamma)
        problem.Gamma = np.diag(diag) + factor @ factor.T
        noise_arg = fxp.low_rank_noise(jnp.asarray(factor), jnp.asarray(diag))
    prior = _gaussian_prior(problem, n_e, seed + 2)
    G = jnp.asarray(problem.G)
    return problem, prior, noise_arg, (lambda theta: G @ theta)


# (N_p, N_e): N_p >= N_e - 1 takes the Omega^{-1} branch, N_p < N_e - 1 the A^+A projection.
BRANCHES = {"omega": (8, 6), "projection": (6, 40)}


@pytest.mark.parametrize("noise", ["diagonal", "dense", "low_rank"])
@pytest.mark.parametrize("branch", list(BRANCHES))
def test_linear_first_iteration_is_es_and_then_fixed(branch, noise, getkey):
    n_p, n_e = BRANCHES[branch]
    problem, prior, noise_arg, forward = _linear_setup(noise, n_p, 10, n_e, seed=3)
    result = IES(n_iter=4, step_length=1.0).run(
        forward, jnp.asarray(prior), jnp.asarray(problem.y), noise_arg, key=getkey()
    )
    eps = np.asarray(result.state.perturbations)
    expected = refs.es_update(prior, prior @ problem.G.T, problem.y, problem.Gamma, eps)
    history = np.asarray(result.history)
    np.testing.assert_allclose(history[1], expected, atol=TOL64, rtol=0)
    for k in range(2, 5):
        np.testing.assert_allclose(history[k], expected, atol=TOL64, rtol=0)
    # The update moved the ensemble, so the identity is not vacuous.
    assert np.max(np.abs(expected - prior)) > 0.1


@pytest.mark.parametrize(
    "step_length", [0.5, ExponentialStepLength(), ExponentialStepLength(0.9, 0.2, 3.0)]
)
def test_linear_step_length_contracts_to_es_geometrically(step_length, getkey):
    # For linear G, S_i and H_i do not depend on W, so W_{k} - W* = prod (1 - gamma_i) (W_0 - W*).
    problem, prior, noise_arg, forward = _linear_setup("diagonal", 5, 8, 30, seed=4)
    method = IES(n_iter=5, step_length=step_length)
    result = method.run(
        forward, jnp.asarray(prior), jnp.asarray(problem.y), noise_arg, key=getkey()
    )
    eps = np.asarray(result.state.perturbations)
    es = refs.es_update(prior, prior @ problem.G.T, problem.y, problem.Gamma, eps)
    factor = 1.0
    for k in range(1, 6):
        factor *= 1.0 - float(method.gamma(k))
        expected = es + factor * (prior - es)
        np.testing.assert_allclose(np.asarray(result.history[k]), expected, atol=TOL64, rtol=0)


def test_exponential_step_length_formula():
    schedule = ExponentialStepLength(0.6, 0.3, 2.5)
    # Evensen et al. (2019) eq. (49): gamma_i = min + (max - min) 2^{-(i-1)/(dec-1)}.
    for i in range(1, 6):
        expected = 0.3 + 0.3 * 2.0 ** (-(i - 1) / 1.5)
        np.testing.assert_allclose(float(schedule(i)), expected, rtol=1e-14)
    assert float(IES().gamma(1)) == pytest.approx(0.6)


@pytest.mark.parametrize("noise", ["diagonal", "dense"])
def test_large_ensemble_matches_posterior(noise):
    # gamma = 0.8, 8 iterations: the distance to the ES fixed point is 0.2^8 ~ 3e-6 of the
    # prior's, far below the Monte-Carlo tolerance (MC_FACTOR, see above).
    n_e = 4000
    problem, prior, noise_arg, forward = _linear_setup(noise, 6, 12, n_e, seed=0)
    result = IES(n_iter=8, step_length=0.8).run(
        forward, jnp.asarray(prior), jnp.asarray(problem.y), noise_arg, key=jax.random.key(1)
    )
    mean, cov = refs.sample_mean_cov(np.asarray(result.ensemble))
    m_post, s_post = problem.posterior()
    sd = np.sqrt(np.diag(s_post))
    assert np.all(np.abs(mean - m_post) <= MC_FACTOR * sd / np.sqrt(n_e))
    assert np.all(np.abs(cov - s_post) <= MC_FACTOR * np.outer(sd, sd) / np.sqrt(n_e))
    prior_mean, _ = refs.sample_mean_cov(prior)
    assert np.max(np.abs(prior_mean - m_post) / sd) > 10 * MC_FACTOR / np.sqrt(n_e)


def _nonlinear_problem():
    rng = np.random.default_rng(21)
    n_p, n_y = 5, 10
    A = rng.normal(size=(n_y, n_p)) / np.sqrt(n_p)
    theta_true = rng.normal(size=n_p)
    Gamma = np.diag(np.full(n_y, 0.05))

    def forward_np(theta):
        u = theta @ A.T
        return u + 0.1 * u**3

    y = forward_np(theta_true) + rng.normal(size=n_y) * np.sqrt(0.05)
    A_j = jnp.asarray(A)

    def forward(theta):
        u = A_j @ theta
        return u + 0.1 * u**3

    return forward, forward_np, y, Gamma


@pytest.mark.parametrize("n_e", [100, 4])
def test_nonlinear_beats_single_es_step(n_e, getkey):
    # n_e = 100 uses the A^+A projection (N_p = 5 < N_e - 1), n_e = 4 the Omega^{-1} branch.
    forward, forward_np, y, Gamma = _nonlinear_problem()
    C0 = 1.5 * np.eye(5)
    prior = np.random.default_rng(22).normal(size=(n_e, 5)) * np.sqrt(1.5)
    result = IES(n_iter=10).run(
        forward, jnp.asarray(prior), jnp.asarray(y), jnp.asarray(np.diag(Gamma)), key=getkey()
    )
    eps = np.asarray(result.state.perturbations)
    data = y + eps
    es = refs.es_update(prior, forward_np(prior), y, Gamma, eps)
    final = np.asarray(result.ensemble)

    misfit = np.append(np.asarray(result.misfit), refs.data_misfit(forward_np(final), y, Gamma))
    # "Monotonically-ish": no iteration raises the mean data misfit by more than 5 % (observed:
    # every iteration lowers it, worst ratio 0.996 over 3 keys), and the end is far below the
    # start (observed: 1/200 for N_e = 100, 1/13 for N_e = 4).
    assert np.all(misfit[1:] <= 1.05 * misfit[:-1])
    assert misfit[-1] < 0.1 * misfit[0]
    # IES minimises the per-member RML cost J_j that one ES step only linearises (observed
    # ratios IES/ES over 3 keys: J 0.27-0.29 / 0.63-0.65, data misfit 0.15 / 0.57-0.59 for
    # N_e = 100 / 4).
    j_ies = refs.rml_costs(final, prior, forward_np(final), data, C0, Gamma)
    j_es = refs.rml_costs(es, prior, forward_np(es), data, C0, Gamma)
    assert np.mean(j_ies) < 0.75 * np.mean(j_es)
    assert misfit[-1] < 0.75 * refs.data_misfit(forward_np(es), y, Gamma)


def test_stepping_equals_run_and_same_key_is_identical(getkey):
    forward, _, y, Gamma = _nonlinear_problem()
    prior = jnp.asarray(np.random.default_rng(23).normal(size=(30, 5)))
    noise = jnp.asarray(np.diag(Gamma))
    method = IES(n_iter=3)
    key = getkey()
    result = method.run(forward, prior, jnp.asarray(y), noise, key=key)
    again = method.run(forward, prior, jnp.asarray(y), noise, key=key)
    np.testing.assert_array_equal(np.asarray(result.history), np.asarray(again.history))

    state = method.init(key, prior, jnp.asarray(y), noise)
    update = eqx.filter_jit(method.update)
    for k in range(3):
        g = jax.vmap(forward)(state.ensemble)
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(result.forward_history[k]), atol=1e-10, rtol=0
        )
        state = update(state, g)
        np.testing.assert_allclose(
            np.asarray(state.ensemble), np.asarray(result.history[k + 1]), atol=1e-10, rtol=0
        )
    assert int(state.iteration) == 3
    np.testing.assert_array_equal(
        np.asarray(state.perturbations), np.asarray(result.state.perturbations)
    )
    other = method.run(forward, prior, jnp.asarray(y), noise, key=getkey())
    assert not np.allclose(np.asarray(other.ensemble), np.asarray(result.ensemble))


def test_vmap_over_keys_equals_separate_runs(getkey):
    forward, _, y, Gamma = _nonlinear_problem()
    prior = jnp.asarray(np.random.default_rng(24).normal(size=(20, 5)))
    noise = jnp.asarray(np.diag(Gamma))
    method = IES(n_iter=2)
    keys = jax.random.split(getkey(), 3)
    batched = jax.vmap(lambda k: method.run(forward, prior, jnp.asarray(y), noise, key=k))(keys)
    assert batched.history.shape == (3, 3, 20, 5)
    for i in range(3):
        single = method.run(forward, prior, jnp.asarray(y), noise, key=keys[i])
        np.testing.assert_allclose(
            np.asarray(batched.ensemble[i]), np.asarray(single.ensemble), atol=1e-10
        )
    assert not np.allclose(np.asarray(batched.ensemble[0]), np.asarray(batched.ensemble[1]))


def test_non_finite_forward_evaluation_raises_or_skips(getkey):
    problem, prior, noise_arg, _ = _linear_setup("diagonal", 4, 6, 10, seed=5)
    forward = prior @ problem.G.T
    forward[2, 1] = np.inf
    state = IES().init(getkey(), jnp.asarray(prior), jnp.asarray(problem.y), noise_arg)
    with pytest.raises(Exception, match="NaN/inf"):
        jax.block_until_ready(eqx.filter_jit(IES().update)(state, jnp.asarray(forward)))
    skipped = IES(throw=False).update(state, jnp.asarray(forward))
    np.testing.assert_array_equal(np.asarray(skipped.ensemble), prior)
    np.testing.assert_array_equal(np.asarray(skipped.weights), 0.0)
    assert int(skipped.n_failed) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_iter": 0}, "positive int"),
        ({"step_length": 0.0}, "\\(0, 1\\]"),
        ({"step_length": 1.5}, "\\(0, 1\\]"),
        ({"step_length": jnp.ones(2)}, "scalar"),
        ({"variant": "full"}, "'subspace'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match, no_runtime_typecheck):
    with pytest.raises(ValueError, match=match):
        IES(**kwargs)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.3, 0.6, 2.5), "min_length <= max_length"),
        ((1.2, 0.3, 2.5), "<= 1"),
        ((0.6, 0.3, 1.0), "> 1"),
    ],
)
def test_bad_step_length_schedule_raises(args, match):
    with pytest.raises(ValueError, match=match):
        ExponentialStepLength(*args)


def test_bad_inputs_raise(getkey, no_runtime_typecheck):
    method = IES()
    prior = jnp.zeros((10, 3))
    y = jnp.zeros(4)
    with pytest.raises(ValueError, match="N_e=1"):
        method.init(getkey(), jnp.zeros((1, 3)), y, 1.0)
    with pytest.raises(ValueError, match="2-D"):
        method.init(getkey(), jnp.zeros((2, 3, 1)), y, 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        method.init(getkey(), prior, y, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        method.init(getkey(), prior, y, -1.0)
    with pytest.raises(ValueError, match="obs_noise"):
        method.init(getkey(), prior, y, jnp.ones((4, 3)))
    state = method.init(getkey(), prior, y, 1.0)
    with pytest.raises(ValueError, match="forward_evals must have shape"):
        method.update(state, jnp.zeros((9, 4)))
    esmda_state = ESMDA().init(getkey(), prior, y, 1.0)
    with pytest.raises(ValueError, match="IES.init"):
        method.update(esmda_state, jnp.zeros((10, 4)))


# calibrate and run execute the same loop, compiled in different programs: round-off only.
TOL_SAME = 1e-12


def test_smoothers_reexport_the_processes_objects():
    assert IES is fpr.IES and ExponentialStepLength is fpr.ExponentialStepLength


@pytest.mark.parametrize("branch", list(BRANCHES))
def test_calibrate_equals_run_and_the_first_iteration_is_es(branch, getkey):
    n_p, n_e = BRANCHES[branch]
    problem, prior, noise_arg, forward = _linear_setup("dense", n_p, 10, n_e, seed=3)
    method = IES(n_iter=3, step_length=1.0)
    key = getkey()
    ran = method.run(forward, jnp.asarray(prior), jnp.asarray(problem.y), noise_arg, key=key)
    result = fpr.calibrate(
        method,
        forward,
        jnp.asarray(prior),
        jnp.asarray(problem.y),
        noise_arg,
        key=key,
        until_converged=True,
    )
    assert result.n_iterations == 3 and result.converged
    np.testing.assert_allclose(result.history.parameters, ran.history, atol=TOL_SAME, rtol=0)
    np.testing.assert_allclose(result.state.perturbations, ran.state.perturbations, atol=0, rtol=0)
    eps = np.asarray(result.state.perturbations)
    expected = refs.es_update(prior, prior @ problem.G.T, problem.y, problem.Gamma, eps)
    np.testing.assert_allclose(result.history.parameters[1], expected, atol=TOL64, rtol=0)
