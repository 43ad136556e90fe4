"""inverse_sqrt_one_plus: value against numpy, derivative against finite differences, also at
repeated eigenvalues where a plain eigh derivative is NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives import inverse_sqrt_one_plus


def _numpy_reference(m):
    lam, u = np.linalg.eigh(0.5 * (m + m.T))
    return (u / np.sqrt(1.0 + np.maximum(lam, 0.0))) @ u.T


@pytest.mark.parametrize("rank", [0, 2, 6])
def test_value_matches_numpy(rank):
    rng = np.random.default_rng(rank)
    y = rng.standard_normal((6, rank))
    m = y @ y.T
    got = inverse_sqrt_one_plus(jnp.asarray(m))
    np.testing.assert_allclose(got, _numpy_reference(m), rtol=1e-12, atol=1e-12)
    # (I + M)^{-1/2} squared is the inverse of I + M
    np.testing.assert_allclose(got @ got @ (np.eye(6) + m), np.eye(6), atol=1e-10)


def test_centred_gram_preserves_the_ones_vector():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((8, 3))
    y = y - y.mean(axis=0)
    t = inverse_sqrt_one_plus(jnp.asarray(y @ y.T))
    np.testing.assert_allclose(t @ np.ones(8), np.ones(8), atol=1e-12)


@pytest.mark.parametrize("rank", [0, 2, 5])
def test_gradient_is_finite_and_matches_finite_differences(rank):
    # M(s) = (Y + s E)(Y + s E)^T stays PSD; at s = 0 it has rank `rank` < 5, i.e. repeated
    # zero eigenvalues (rank 0: M = 0, every eigenvalue equal).
    rng = np.random.default_rng(10 + rank)
    y = jnp.asarray(rng.standard_normal((5, max(rank, 1)))) * (rank > 0)
    e = jnp.asarray(rng.standard_normal((5, max(rank, 1))))
    w = jnp.asarray(rng.standard_normal((5, 5)))

    def gram(s):
        z = y + s * e
        return z @ z.T

    def loss(s):
        return jnp.sum(w * inverse_sqrt_one_plus(gram(s)))

    grad = jax.grad(loss)(0.0)
    assert np.isfinite(grad)
    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    if rank == 0:
        # the plain eigh derivative is NaN at M = 0 (all eigenvalues equal), so this can fail
        def plain(s):
            lam, u = jnp.linalg.eigh(gram(s))
            return jnp.sum(w * ((u / jnp.sqrt(1 + lam)[None, :]) @ u.T))

        assert not np.isfinite(jax.grad(plain)(0.0))


def test_vmap_and_bad_input():
    m = jnp.stack([jnp.eye(3), 2 * jnp.eye(3)])
    out = jax.vmap(inverse_sqrt_one_plus)(m)
    np.testing.assert_allclose(out[1], np.eye(3) / np.sqrt(3.0), rtol=1e-12)
    with pytest.raises(ValueError, match="square"):
        inverse_sqrt_one_plus(jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="floating"):
        inverse_sqrt_one_plus(jnp.eye(2, dtype=jnp.int32))
