"""Clear errors for inputs of the wrong size or kind (forward outputs, initial covariances)."""

import jax
import jax.numpy as jnp
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
    # ensemble up; the error must say the parameters were non-finite, i.e. the update diverged.
    a = jax.random.normal(jax.random.key(0), (6, 2))
    y = a @ jnp.array([1.0, -1.0])
    x0 = jax.random.normal(jax.random.key(1), (10, 2))
    process = fpr.EKS(jnp.zeros(2), jnp.eye(2), scheduler=fpr.FixedScheduler(50.0))
    with pytest.raises(fpr.CalibrationError, match="non-finite PARAMETERS") as info:
        fpr.calibrate(process, lambda t: a @ t, x0, y, 1e-4, n_iterations=30, key=jax.random.key(2))
    assert info.value.n_nonfinite_parameters > 0
