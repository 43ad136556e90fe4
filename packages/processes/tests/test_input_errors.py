"""Clear errors for inputs of the wrong size or kind (forward outputs, initial covariances)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.processes as fpr


@pytest.mark.parametrize("make", [fpr.EKI, fpr.ETKI], ids=["EKI", "ETKI"])
def test_wrong_forward_output_size_names_forward_evals(make):
    a = jax.random.normal(jax.random.key(0), (8, 3))
    ensemble = jax.random.normal(jax.random.key(1), (20, 3))
    process = make()
    state = process.init(ensemble, jnp.ones(8), 0.1, key=jax.random.key(2))
    with pytest.raises(ValueError, match="forward_evals has N_y=5 columns but obs has 8"):
        process.update(state, ensemble @ a[:5].T)


def test_uki_wrong_forward_output_size():
    process = fpr.UKI(jnp.zeros(3), jnp.eye(3))
    state = process.init(None, jnp.ones(8), 0.1)
    g = jnp.ones((state.ensemble.shape[0], 5))
    with pytest.raises(ValueError, match="forward_evals has N_y=5 columns but obs has 8"):
        process.update(state, g)


def test_uki_init_rejects_a_non_psd_initial_covariance():
    process = fpr.UKI(jnp.zeros(3), jnp.eye(3))
    with pytest.raises(ValueError, match="positive"):
        process.init((jnp.zeros(3), -jnp.eye(3)), jnp.ones(8), 0.1)


def test_diverged_update_is_not_blamed_on_the_forward_model():
    # An explicit EKS step far beyond its stability limit (Gamma = 1e-4, dt = 50) blows the
    # ensemble up; the error must say the update diverged (status 3, the state before the
    # update kept), not blame the forward model.
    a = jax.random.normal(jax.random.key(0), (6, 2))
    y = a @ jnp.array([1.0, -1.0])
    x0 = jax.random.normal(jax.random.key(1), (10, 2))
    process = fpr.EKS(jnp.zeros(2), jnp.eye(2), scheduler=fpr.FixedScheduler(50.0))
    with pytest.raises(ValueError, match=r"update diverged \(status 3\).*smaller time step"):
        fpr.calibrate(process, lambda t: a @ t, x0, y, 1e-4, n_iterations=30, key=jax.random.key(2))
    result = fpr.calibrate(
        process, lambda t: a @ t, x0, y, 1e-4, n_iterations=30, key=jax.random.key(2), throw=False
    )
    assert int(result.status) == fpr.ProcessState.DIVERGED
    assert np.all(np.isfinite(np.asarray(result.state.ensemble)))


def test_step_api_flags_a_diverged_update_instead_of_returning_nan():
    # An absurd explicit step overflowed UKI's covariance to NaN with status OK in the
    # step-by-step API: now status 3 and the state before that update (float64, as the suite).
    # A step of 1e308 overflows whatever XLA's optimisation level; 1e300 overflowed only with
    # the optimisations on (with them off the covariance stayed finite at 1e300, status OK).
    a = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
    y = a @ jnp.array([1.0, -2.0])
    process = fpr.UKI(jnp.zeros(2), jnp.eye(2), scheduler=fpr.FixedScheduler(1e308))
    state = process.init(None, y, 0.01)
    first = state
    for _ in range(3):
        state = process.update(state, jax.vmap(lambda t: a @ t)(process.particles(state)))
    assert int(state.status) == fpr.ProcessState.DIVERGED
    for leaf in [state.ensemble, *jax.tree.leaves(state.extra)]:
        assert np.all(np.isfinite(np.asarray(leaf)))
    np.testing.assert_array_equal(np.asarray(state.ensemble), np.asarray(first.ensemble))
    assert float(state.time) == 0.0
