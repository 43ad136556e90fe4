"""One inflation vocabulary: the processes take the filters' inflators (`filterax.primitives`).

- `MultiplicativeInflation(s)` at step ``dt`` is ``fxp.MultiplicativeInflator((1 - s dt)^-1/2)``
  (bit-identical).
- A primitives inflator in `inflation=` acts once per update: `MultiplicativeInflator(l)` scales
  the deterministic EKI posterior covariance by ``l^2`` (1e-10), `RTPS(1)` restores the spread
  the ensemble had before the update (1e-12).
- After a stopping scheduler terminated (``dt = 0``) the update, inflation included, is the
  identity.
- Anything else is refused with a message naming what to pass.
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.processes import (
    EKI,
    DataMisfitController,
    FixedScheduler,
    MultiplicativeInflation,
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


def _one_update(inflation, seed=0, dt=0.5):
    problem = helpers.linear_problem(seed)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(seed), 15))
    eki = EKI(stochastic=False, scheduler=FixedScheduler(dt), inflation=inflation)
    state = eki.update(eki.init(x0, problem.y, 0.1), problem.forward(x0))
    return eki, state, x0


def test_dt_aware_multiplicative_inflation_is_the_primitives_inflator():
    x = jax.random.normal(jax.random.key(0), (12, 4))
    for s, dt in ((1.0, 0.5), (0.3, 0.9), (2.0, 0.1)):
        ours = MultiplicativeInflation(s)(jax.random.key(1), x, dt)
        theirs = fxp.MultiplicativeInflator(1.0 / np.sqrt(1.0 - s * dt))(x)
        np.testing.assert_array_equal(ours, theirs)


def test_primitives_multiplicative_inflator_scales_the_posterior_covariance():
    plain, a, _ = _one_update(None)
    inflated, b, _ = _one_update(fxp.MultiplicativeInflator(1.1))
    np.testing.assert_allclose(inflated.mean(b), plain.mean(a), atol=1e-12)
    np.testing.assert_allclose(inflated.covariance(b), 1.21 * plain.covariance(a), atol=1e-10)


def test_rtps_relaxes_to_the_spread_before_the_update():
    plain, a, x0 = _one_update(None)
    relaxed, b, _ = _one_update(fxp.RTPS(1.0))
    before = np.std(np.asarray(x0), axis=0, ddof=1)
    np.testing.assert_allclose(np.std(np.asarray(b.ensemble), axis=0, ddof=1), before, rtol=1e-12)
    np.testing.assert_allclose(relaxed.mean(b), plain.mean(a), atol=1e-12)
    # The update shrank the spread, so restoring it is a real change.
    assert np.all(np.std(np.asarray(a.ensemble), axis=0, ddof=1) < 0.9 * before)


def test_zero_time_step_is_the_identity_with_any_inflation():
    problem = helpers.linear_problem(3)
    x0 = jnp.asarray(problem.prior_samples(np.random.default_rng(3), 20))
    eki = EKI(
        stochastic=False,
        scheduler=DataMisfitController(),
        inflation=(fxp.MultiplicativeInflator(1.5), MultiplicativeInflation(0.5)),
    )
    state = eki.init(x0, problem.y, 0.1)
    for _ in range(30):
        state = eki.update(state, problem.forward(eki.particles(state)))
        if bool(state.converged):
            break
    assert bool(state.converged)
    after = eki.update(state, problem.forward(eki.particles(state)))
    assert float(after.dt) == 0.0
    np.testing.assert_array_equal(after.ensemble, state.ensemble)


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def test_other_inflation_objects_are_refused(no_runtime_typecheck):
    with pytest.raises(TypeError, match="RTPS"):
        EKI(inflation=1.02)
    with pytest.raises(TypeError, match="MultiplicativeInflation"):
        EKI(inflation=(fxp.RTPS(0.5), "rtps"))
