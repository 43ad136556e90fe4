"""The reparameterised gradient of a stochastic (perturbed-observation) EnKF run.

With the run key fixed, the observation perturbations are fixed numbers and ``jax.grad`` of a
run is the pathwise (reparameterised) gradient of that one realisation. Averaged over keys it
is an unbiased estimate of the gradient of the EXPECTED loss (the run is a smooth function of
the parameter and of the draws). The test checks that claim against an estimator that shares
nothing with it: a central finite difference of the key-averaged loss with independent keys
at each end (no common random numbers, so no pathwise derivative is involved), and measures
the variance of both (the reason to use the pathwise one).
"""

import jax
import jax.numpy as jnp
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp

N_X, N_E, T = 2, 6, 6
A = jnp.array([[0.9, 0.2], [-0.1, 0.95]])
MODEL = fxp.Model(lambda x, t0, t1: A @ x, fxp.IdentityObs(), 0.5, process_noise=0.2)
TIMES = jnp.arange(1.0, T + 1.0)
YS = jnp.array([[1.0, 0.5], [0.8, 0.9], [0.2, 1.1], [-0.3, 0.7], [-0.5, 0.1], [-0.2, -0.4]])
E0 = jax.random.normal(jax.random.key(0), (N_E, N_X))


def loss(inflation, key):
    """Negative log-likelihood of a stochastic EnKF run, inflation the parameter."""
    method = ff.EnsembleFilter(ff.StochasticEnKF(), inflator=fxp.MultiplicativeInflator(inflation))
    out = ff.run(method, MODEL, E0, YS, TIMES, key=key)
    return -jnp.sum(out.log_likelihood)


def test_pathwise_gradient_is_unbiased_for_the_expected_loss():
    theta, h, m = 1.5, 0.3, 4000
    keys = jax.random.split(jax.random.key(1), 3 * m).reshape(3, m)
    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(theta, keys[0])
    values = jax.jit(jax.vmap(loss, in_axes=(None, 0)))
    up, down = values(theta + h, keys[1]), values(theta - h, keys[2])
    assert np.all(np.isfinite(grads)) and np.all(np.isfinite(up)) and np.all(np.isfinite(down))
    g_path, se_path = float(grads.mean()), float(grads.std() / np.sqrt(m))
    g_fd = float((up.mean() - down.mean()) / (2 * h))
    se_fd = float(np.sqrt(up.var() / m + down.var() / m) / (2 * h))
    # The same key gives the same gradient: bit-identical call to call, and the batched
    # program agrees with a single call up to float64 round-off (vmap may reorder sums).
    one = jax.jit(jax.grad(loss))
    assert float(one(theta, keys[0, 0])) == float(one(theta, keys[0, 0]))
    np.testing.assert_allclose(one(theta, keys[0, 0]), grads[0], rtol=1e-10)
    # The test can fail: the two estimates must be tight relative to the gradient itself.
    assert 4 * np.hypot(se_path, se_fd) < 0.25 * abs(g_path)
    # Unbiasedness: agreement within 4 combined standard errors. The central difference's
    # O(h^2) truncation at h = 0.3 is below that: measured with these keys, h = 0.2 and 0.3
    # give 1.461 ± 0.053 and 1.449 ± 0.036 (pathwise 1.444 ± 0.015), no trend in h.
    print(f"pathwise {g_path:.4f} ± {se_path:.4f}, independent-keys FD {g_fd:.4f} ± {se_fd:.4f}")
    assert abs(g_path - g_fd) < 4 * np.hypot(se_path, se_fd), (g_path, se_path, g_fd, se_fd)
    # Variance: at equal cost the pathwise estimate's standard error is less than half the
    # independent-keys difference's, even at this large h (measured 0.015 vs 0.036; at
    # h = 0.05, 0.21): what the reparameterisation buys.
    assert se_path < 0.5 * se_fd
