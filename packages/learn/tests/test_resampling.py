"""Resamplers against the multinomial count law, numpy re-derivations and the score identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.learn import (
    effective_sample_size,
    multinomial_resample,
    normalise_log_weights,
    residual_resample,
    soft_resample,
    stop_gradient_resample,
    stratified_resample,
    systematic_resample,
)

RESAMPLERS = {
    "multinomial": multinomial_resample,
    "stratified": stratified_resample,
    "systematic": systematic_resample,
    "residual": residual_resample,
}
# Unnormalised, one zero-weight particle, n != N on purpose.
W = np.array([0.05, 0.3, 0.0, 0.15, 0.5])
with np.errstate(divide="ignore"):
    LW = np.log(W) + 3.7
N_DRAW, N_KEYS = 7, 4000
K_SE = 5.0  # |mean - expectation| <= 5 standard errors: a false failure has odds ~ 1e-6 per entry


def _counts(resampler, lw, n, n_keys, seed=0):
    keys = jax.random.split(jax.random.key(seed), n_keys)
    ancestors = jax.jit(jax.vmap(lambda k: resampler(k, jnp.asarray(lw), n)))(keys)
    assert ancestors.dtype == jnp.int32 and ancestors.shape == (n_keys, n)
    return np.asarray(jax.nn.one_hot(ancestors, lw.shape[0], dtype=jnp.int32).sum(axis=1))


@pytest.mark.parametrize("name", list(RESAMPLERS))
def test_resampler_counts_unbiased(name):
    counts = _counts(RESAMPLERS[name], LW, N_DRAW, N_KEYS)
    assert np.all(counts.sum(axis=1) == N_DRAW)
    assert np.all(counts[:, 2] == 0)  # a -inf log-weight is never selected
    expected = N_DRAW * W
    se = counts.std(axis=0, ddof=1) / np.sqrt(N_KEYS)
    np.testing.assert_array_less(np.abs(counts.mean(axis=0) - expected), K_SE * se + 1e-12)


def test_low_variance_schemes_beat_multinomial():
    # Multinomial count variance is n W (1 - W); first check the empirical one matches it
    # (sum over particles; relative SE of a variance estimate from 4000 draws is ~ 2-3 %).
    theory = N_DRAW * W * (1 - W)
    multi = _counts(multinomial_resample, LW, N_DRAW, N_KEYS).var(axis=0, ddof=1).sum()
    assert abs(multi - theory.sum()) < 0.1 * theory.sum()
    for name in ("stratified", "systematic", "residual"):
        var = _counts(RESAMPLERS[name], LW, N_DRAW, N_KEYS, seed=1).var(axis=0, ddof=1).sum()
        assert var < multi, name
    # Systematic counts are floor(nW) or floor(nW) + 1: variance frac (1 - frac) exactly.
    frac = N_DRAW * W - np.floor(N_DRAW * W)
    sys_var = _counts(systematic_resample, LW, N_DRAW, N_KEYS, seed=2).var(axis=0, ddof=1)
    np.testing.assert_allclose(sys_var, frac * (1 - frac), atol=0.05)


def test_residual_deterministic_part_exact():
    n = 9
    copies = np.floor(n * W).astype(int)  # [0, 2, 0, 1, 4]
    deterministic = np.repeat(np.arange(W.size), copies)
    keys = jax.random.split(jax.random.key(3), 200)
    ancestors = np.asarray(jax.vmap(lambda k: residual_resample(k, jnp.asarray(LW), n))(keys))
    det = ancestors[:, : deterministic.size]
    np.testing.assert_array_equal(det, np.broadcast_to(deterministic, det.shape))
    # The random remainder follows the residual weights only: particle 2 never, others may.
    rest = ancestors[:, deterministic.size :]
    assert not np.any(rest == 2)
    # All-integer n W: fully deterministic, same for every key.
    exact = residual_resample(jax.random.key(0), jnp.log(jnp.array([0.25, 0.5, 0.25])), 4)
    np.testing.assert_array_equal(np.asarray(exact), [0, 1, 1, 2])


@pytest.mark.parametrize("name", list(RESAMPLERS))
def test_resampler_key_deterministic(name):
    f = RESAMPLERS[name]
    lw = jnp.asarray(np.log(np.linspace(0.1, 1.0, 50)))
    a1 = f(jax.random.key(11), lw, 50)
    a2 = jax.jit(f, static_argnums=2)(jax.random.key(11), lw, 50)
    a3 = f(jax.random.key(12), lw, 50)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
    assert not np.array_equal(np.asarray(a1), np.asarray(a3))


@pytest.mark.parametrize("name", list(RESAMPLERS))
def test_degenerate_weights_give_valid_indices(name):
    # Documented recovery: undefined weights resample as if uniform (indices stay in range).
    for bad in (jnp.full(4, -jnp.inf), jnp.array([0.0, jnp.nan, 0.0, 0.0])):
        a = np.asarray(RESAMPLERS[name](jax.random.key(0), bad, 6))
        assert a.shape == (6,) and a.min() >= 0 and a.max() <= 3
    assert float(effective_sample_size(jnp.full(4, -jnp.inf))) == 0.0
    assert np.all(np.isnan(np.asarray(normalise_log_weights(jnp.full(3, -jnp.inf)))))


def test_ess_and_normalise_against_numpy():
    w = W / W.sum()
    assert float(effective_sample_size(jnp.asarray(LW))) == pytest.approx(1 / np.sum(w**2), 1e-12)
    assert float(effective_sample_size(jnp.zeros(8))) == pytest.approx(8.0, 1e-12)
    np.testing.assert_allclose(np.exp(np.asarray(normalise_log_weights(jnp.asarray(LW)))), w)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="positive Python int"):
        systematic_resample(jax.random.key(0), jnp.zeros(3), 0)
    # Under the test suite's runtime type checking jaxtyping may object first (a TypeError).
    with pytest.raises((ValueError, TypeError), match="1-d|log_weights"):
        multinomial_resample(jax.random.key(0), jnp.zeros((3, 2)), 3)
    with pytest.raises(TypeError, match="floating point|log_weights"):
        stratified_resample(jax.random.key(0), jnp.zeros(3, dtype=jnp.int32), 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        soft_resample(jax.random.key(0), jnp.zeros(3), 3, alpha=1.5)


def _theta_log_weights(theta):
    # A tiny exponential family: lw_j = theta . phi_j + const.
    phi = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [-0.5, 0.5]])
    return phi @ theta + 2.0


H = jnp.array([1.0, -2.0, 0.5, 3.0])


@pytest.mark.parametrize("resampler", [multinomial_resample, systematic_resample])
def test_stop_gradient_resample_score_identity(resampler):
    theta = jnp.array([0.3, -0.4])
    lw0 = _theta_log_weights(theta)
    a, new = stop_gradient_resample(jax.random.key(0), lw0, 6, resampler)
    # Forward pass: uniform weights carrying the total mass.
    np.testing.assert_allclose(
        np.asarray(new), float(jax.nn.logsumexp(lw0)) - np.log(6), rtol=0, atol=1e-12
    )

    def estimate(th, key):
        a, new = stop_gradient_resample(key, _theta_log_weights(th), 6, resampler)
        return jnp.mean(jnp.exp(new - jax.lax.stop_gradient(new)) * H[a])

    keys = jax.random.split(jax.random.key(1), 4000)
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(estimate), in_axes=(None, 0)))(theta, keys))

    # Analytic: grad sum_j W_j h_j = sum_j W_j (h_j - sum_i W_i h_i) phi_j (numpy).
    phi = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [-0.5, 0.5]])
    lw_np = phi @ np.asarray(theta)
    w = np.exp(lw_np - lw_np.max())
    w /= w.sum()
    h = np.asarray(H)
    exact = (w * (h - w @ h)) @ phi
    se = grads.std(axis=0, ddof=1) / np.sqrt(grads.shape[0])
    np.testing.assert_array_less(np.abs(grads.mean(axis=0) - exact), K_SE * se)
    # And it is a real estimator, not a constant: the per-key gradients vary.
    assert np.all(se > 0)


def test_soft_resample_unbiased_mass_and_limits():
    lw = jnp.asarray(LW)
    f = jnp.array([1.0, -1.0, 5.0, 2.0, 0.5])
    target = float(jnp.sum(jnp.exp(lw) * f))

    def estimate(key):
        a, new = soft_resample(key, lw, 6, 0.6)
        return jnp.sum(jnp.exp(new) * f[a])

    vals = np.asarray(jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(4), 4000)))
    se = vals.std(ddof=1) / np.sqrt(vals.size)
    assert abs(vals.mean() - target) < K_SE * se
    # alpha = 1: ordinary resampling, uniform weights with the total mass.
    _, new1 = soft_resample(jax.random.key(0), lw, 6, 1.0)
    np.testing.assert_allclose(np.asarray(new1), float(jax.nn.logsumexp(lw)) - np.log(6))
    # alpha = 0: the importance weights N W_a exp(logsumexp)/n.
    a0, new0 = soft_resample(jax.random.key(0), lw, 6, 0.0)
    np.testing.assert_allclose(
        np.asarray(new0), np.asarray(lw[a0] + np.log(5) - np.log(6)), atol=1e-12
    )
    # Gradients through W/q are finite for an interior alpha.
    finite = jnp.asarray(np.log(W + 0.1))
    g = jax.grad(lambda s: soft_resample(jax.random.key(0), finite * s, 6, 0.5)[1].sum())(1.0)
    assert np.isfinite(float(g))
