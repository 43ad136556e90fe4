"""ESMDA and IES are processes: `calibrate` drives them like EKI.

- `calibrate(method, ..., n_iterations=method.n_steps)` runs the same loop as `method.run`:
  equal histories and misfits (1e-12, float64; the same arithmetic, compiled separately), and
  both equal a Python `init`/`update` loop. ES-MDA's algorithm time lands on 1
  (``sum 1/alpha_i``) and `until_converged` stops after its ``N_a`` assimilations.
- The executor path (a NumPy forward model on a thread pool) equals the JAX path (1e-12).
- A constrained prior: the forward model sees constrained values, the process works in the
  unconstrained space (== calibrate on ``G o to_constrained`` without a prior, 1e-12).
- Failures: ES-MDA's handlers update with the successful members' statistics (== a numpy ES
  update of those members, 1e-10) and keep / re-sample the failed ones; the default raises;
  IES with ``throw=False`` skips the iteration; more than half failing is a CalibrationError.
- Mini-batches raise with a message; both `init` call forms give the same state.
"""

import concurrent.futures as cf
import importlib.util
import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.processes import (
    ESMDA,
    IES,
    AbstractProcessState,
    CalibrationError,
    InversionState,
    MiniBatcher,
    ProcessState,
    calibrate,
    constrained_gaussian,
)


def load_helpers():
    # --import-mode=importlib keeps tests/ off sys.path; load helpers.py under a unique name.
    name = "filterax_processes_test_helpers"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("helpers.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = load_helpers()

# Same arithmetic in the same order, compiled in different programs: round-off only
# (observed <= 2e-15 relative on these O(1) problems).
TOL_SAME = 1e-12


def _setup(seed=0, n_e=20, n_params=3, n_obs=6):
    problem = helpers.linear_problem(seed, n_params=n_params, n_obs=n_obs)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(seed + 100), n_e))
    G = jnp.asarray(problem.G)
    return problem, x0, (lambda theta: G @ theta), helpers.noise_variances(problem)


METHODS = {
    "esmda_pertobs": lambda: ESMDA(alphas=(2.0, 4.0, 4.0)),
    "esmda_sqrt": lambda: ESMDA(alphas=(2.0, 4.0, 4.0), variant="sqrt"),
    "ies": lambda: IES(n_iter=3, step_length=0.7),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_calibrate_runs_the_same_loop_as_run_and_as_stepping(name, getkey):
    problem, x0, forward, noise = _setup(1)
    method = METHODS[name]()
    key = getkey()
    ran = method.run(forward, x0, problem.y, noise, key=key)
    cal = calibrate(method, forward, x0, problem.y, noise, key=key, n_iterations=method.n_steps)
    np.testing.assert_allclose(cal.history.parameters, ran.history, atol=TOL_SAME, rtol=0)
    np.testing.assert_allclose(cal.history.outputs, ran.forward_history, atol=TOL_SAME, rtol=0)
    np.testing.assert_allclose(
        np.mean(cal.history.misfits, axis=1), ran.misfit, rtol=TOL_SAME, atol=0
    )
    state = method.init(x0, problem.y, noise, key=key)
    assert isinstance(state, InversionState) and isinstance(state, AbstractProcessState)
    for k in range(method.n_steps):
        state = method.update(state, jax.vmap(forward)(method.particles(state)))
        np.testing.assert_allclose(
            state.ensemble, ran.history[k + 1], atol=TOL_SAME, rtol=0, err_msg=f"update {k}"
        )
    assert bool(cal.converged) and bool(state.converged)
    # The ensemble moved: the comparison is not between two copies of the prior.
    assert np.max(np.abs(np.asarray(ran.ensemble) - np.asarray(x0))) > 0.1


def test_esmda_time_is_the_tempering_and_until_converged_stops_after_n_a(getkey):
    problem, x0, forward, noise = _setup(2)
    alphas = (9.333, 7.0, 4.0, 2.0)
    result = calibrate(
        ESMDA(alphas=alphas, normalize_alphas=True),
        forward,
        x0,
        problem.y,
        noise,
        key=getkey(),
        until_converged=True,
        max_iterations=20,
    )
    assert result.n_iterations == 4 and result.converged
    scaled = np.asarray(alphas) * np.sum(1.0 / np.asarray(alphas))
    np.testing.assert_allclose(result.history.dt, 1.0 / scaled, rtol=1e-14)
    np.testing.assert_allclose(result.history.time[-1], 1.0, rtol=1e-14)


def test_executor_path_equals_the_jax_path(getkey):
    problem, x0, forward, noise = _setup(3)
    G = np.asarray(problem.G)
    key = getkey()
    for method in (ESMDA(n_assimilations=2), IES(n_iter=2)):
        jax_path = calibrate(method, forward, x0, problem.y, noise, key=key, n_iterations=2)
        with cf.ThreadPoolExecutor(2) as pool:
            pooled = calibrate(
                method,
                lambda theta: G @ theta,
                x0,
                problem.y,
                noise,
                key=key,
                n_iterations=2,
                executor=pool,
            )
        np.testing.assert_allclose(
            pooled.history.parameters, jax_path.history.parameters, atol=TOL_SAME, rtol=0
        )


def test_constrained_prior_is_the_unconstrained_process_on_the_mapped_model(getkey):
    prior = constrained_gaussian(1.0, 0.5, lower=0.0, repeats=3)
    problem, _, _, noise = _setup(4)
    G = jnp.asarray(problem.G)
    u0 = prior.sample(jax.random.key(5), 30)

    def physical(theta):  # a positive parameter, e.g. a diffusivity
        return G @ jnp.sqrt(theta)

    key = getkey()
    with_prior = calibrate(
        ESMDA(n_assimilations=2),
        physical,
        u0,
        problem.y,
        noise,
        key=key,
        n_iterations=2,
        prior=prior,
    )
    mapped = calibrate(
        ESMDA(n_assimilations=2),
        lambda u: physical(prior.to_constrained(u)),
        u0,
        problem.y,
        noise,
        key=key,
        n_iterations=2,
    )
    np.testing.assert_allclose(
        with_prior.history.parameters, mapped.history.parameters, atol=TOL_SAME, rtol=0
    )
    assert np.all(np.asarray(with_prior.constrained_parameters) > 0)


def _masked_es_update(x, g, y, gamma, eps, alpha, ok):
    """Numpy ES update of the successful members with their own (Bessel) statistics."""
    xs, gs = x[ok], g[ok]
    n = xs.shape[0]
    xa, ga = xs - xs.mean(axis=0), gs - gs.mean(axis=0)
    gain = (xa.T @ ga / (n - 1)) @ np.linalg.inv(ga.T @ ga / (n - 1) + alpha * gamma)
    out = x.copy()
    out[ok] = xs + (y[None, :] + np.sqrt(alpha) * eps[ok] - gs) @ gain.T
    return out


def test_esmda_failure_handlers_use_the_successful_members(getkey):
    problem, x0, _, noise = _setup(6, n_e=24)
    G = jnp.asarray(problem.G)
    threshold = float(np.quantile(np.asarray(x0[:, 0]), 0.8))

    def flaky(theta):  # the "simulator" fails for large theta_0
        return jnp.where(theta[0] > threshold, jnp.nan, G @ theta)

    key = getkey()
    runs = {
        handler: calibrate(
            ESMDA(alphas=(1.0,), failure_handler=handler),
            flaky,
            x0,
            problem.y,
            noise,
            key=key,
            n_iterations=1,
        )
        for handler in ("ignore", "sample_succ_gauss")
    }
    failed = np.asarray(x0[:, 0]) > threshold
    assert failed.sum() == 5
    ignore = runs["ignore"]
    np.testing.assert_array_equal(ignore.history.failed[0], failed)
    assert ignore.failures and all(f[0] == 0 for f in ignore.failures)
    x = np.asarray(x0)
    eps = np.asarray(ignore.state.perturbations)
    expected = _masked_es_update(x, x @ problem.G.T, problem.y, problem.gamma, eps, 1.0, ~failed)
    # The masked update in numpy (explicit inverse, condition < 1e3): 1e-10.
    np.testing.assert_allclose(ignore.ensemble, expected, atol=1e-10, rtol=0)
    np.testing.assert_array_equal(np.asarray(ignore.ensemble)[failed], x[failed])
    resampled = np.asarray(runs["sample_succ_gauss"].ensemble)
    np.testing.assert_allclose(resampled[~failed], expected[~failed], atol=1e-10, rtol=0)
    assert np.all(np.isfinite(resampled)) and np.all(resampled[failed] != x[failed])


def test_failures_raise_by_default_skip_with_throw_false_and_stop_beyond_half(getkey):
    problem, x0, _, noise = _setup(7, n_e=10)
    G = jnp.asarray(problem.G)

    def one_fails(theta):
        return jnp.where(theta[0] == x0[3, 0], jnp.nan, G @ theta)

    with pytest.raises(Exception, match="NaN/inf"):
        calibrate(ESMDA(), one_fails, x0, problem.y, noise, key=getkey(), n_iterations=1)
    skipped = calibrate(
        IES(n_iter=2, throw=False), one_fails, x0, problem.y, noise, key=getkey(), n_iterations=2
    )
    np.testing.assert_array_equal(skipped.ensemble, x0)
    assert int(skipped.state.iteration) == 2 and int(skipped.state.n_failed) == 1
    with pytest.raises(CalibrationError, match="iteration 0"):
        calibrate(
            ESMDA(failure_handler="ignore"),
            lambda theta: jnp.full(problem.n_obs, jnp.nan),
            x0,
            problem.y,
            noise,
            key=getkey(),
            n_iterations=1,
        )


@pytest.mark.parametrize("method", [ESMDA(), IES()], ids=["esmda", "ies"])
def test_mini_batches_are_refused_with_a_reason(method, getkey):
    problem, x0, forward, noise = _setup(8)
    batches = MiniBatcher(problem.y, noise, np.split(np.arange(problem.n_obs), 2))
    with pytest.raises(ValueError, match="mini-batches"):
        calibrate(method, forward, x0, None, None, key=getkey(), n_iterations=1, batches=batches)


def test_both_init_forms_give_the_same_state(getkey):
    problem, x0, _, noise = _setup(9)
    key = getkey()
    for method in (ESMDA(), IES()):
        legacy = method.init(key, x0, problem.y, noise)
        process = method.init(x0, problem.y, noise, key=key)
        assert bool(eqx.tree_equal(legacy, process))
    with pytest.raises(ValueError, match="key"):
        ESMDA().init(x0, problem.y, noise)  # perturbed observations need a key
    sqrt = ESMDA(variant="sqrt").init(x0, problem.y, noise)  # deterministic: no key needed
    assert isinstance(sqrt, InversionState)
    assert issubclass(ProcessState, AbstractProcessState)
