"""Reverse-mode gradients stay finite through updates with a zero time step.

Once algorithm time reaches 1 the DataMisfitController returns dt = 0; the square-root
(transform) updates then see an all-zero ensemble-space Gram matrix, where a plain `eigh`
derivative is NaN. Regression test for the gradient-safe inverse square root.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.processes as fpr


def _problem():
    a = jax.random.normal(jax.random.key(5), (8, 3))
    y = a @ jnp.array([1.0, -0.5, 2.0])
    ensemble = jax.random.normal(jax.random.key(1), (20, 3))
    return a, y, 0.01 * jnp.ones(8), ensemble


@pytest.mark.parametrize(
    "make", [fpr.ETKI, lambda: fpr.EKI(stochastic=False)], ids=["ETKI", "EKI-deterministic"]
)
def test_gradient_is_finite_after_algorithm_time_one(make):
    a, y, noise, ensemble = _problem()
    process = make()

    def final(obs, n):
        state = process.init(ensemble, obs, noise)
        for _ in range(n):
            state = process.update(state, state.ensemble @ a.T)
        return state

    n = 12  # well past the update that lands on algorithm time 1
    state = final(y, n)
    assert float(state.time) == pytest.approx(1.0) and float(state.dt) == 0.0
    grad = jax.grad(lambda obs: final(obs, n).ensemble.mean(axis=0).sum())(y)
    assert np.all(np.isfinite(grad))
    # dt = 0 updates change nothing, so the gradient equals the one at termination
    n_stop = next(k for k in range(1, n) if float(final(y, k).time) >= 1.0)
    grad_stop = jax.grad(lambda obs: final(obs, n_stop).ensemble.mean(axis=0).sum())(y)
    np.testing.assert_allclose(grad, grad_stop, rtol=1e-10, atol=1e-12)


def test_zero_step_update_gradient_is_finite():
    a, y, noise, ensemble = _problem()
    process = fpr.ETKI(scheduler=fpr.FixedScheduler(0.0))
    state = process.init(ensemble, y, noise)
    grad = jax.grad(lambda g: process.update(state, g).ensemble.sum())(ensemble @ a.T)
    assert np.all(np.isfinite(grad))
