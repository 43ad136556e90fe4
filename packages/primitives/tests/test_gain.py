"""Kalman gain and innovation covariance: Woodbury paths against the dense textbook formula."""

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.primitives import (
    LowRankUpdate,
    diagonal_noise,
    innovation_covariance,
    kalman_gain,
    low_rank_noise,
)
from filterax.testing import random_ensemble, random_spd, tol


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


N_E = 6
N_X = 7


def _noise(structure, n_y, rng):
    """A noise covariance of the given structure (as passed by users) and its dense matrix."""
    var = rng.uniform(0.3, 1.5, n_y)
    if structure == "scalar":
        return 0.8, 0.8 * np.eye(n_y)
    if structure == "variances":
        return var, np.diag(var)
    if structure == "diagonal":
        return diagonal_noise(var), np.diag(var)
    if structure == "low_rank":
        u = 0.5 * rng.standard_normal((n_y, 2))
        return low_rank_noise(u, var), u @ u.T + np.diag(var)
    cov = random_spd(rng, n_y, cond=10.0)
    return (jnp.asarray(cov) if structure == "dense_array" else cov), cov


def _dense_gain(X, Y, R):
    """The textbook K = C^{xH} (C^{HH} + R)^{-1} with numpy covariances."""
    n_x = X.shape[1]
    joint = np.cov(np.concatenate([X, Y], axis=1).T, ddof=1)
    c_xy, c_yy = joint[:n_x, n_x:], joint[n_x:, n_x:]
    return c_xy @ np.linalg.inv(c_yy + R), c_yy + R


STRUCTURES = ["scalar", "variances", "diagonal", "low_rank", "dense_array"]


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("n_y", [3, N_E, 11])  # N_y < N_e, = N_e, > N_e
def test_woodbury_gain_matches_dense_gain(structure, n_y):
    rng = np.random.default_rng(n_y)
    X = random_ensemble(rng, N_E, N_X)
    Y = np.tanh(X[:, :1]) * rng.standard_normal(n_y) + X[:, [1]] ** 2  # nonlinear H, (N_e, N_y)
    noise, R = _noise(structure, n_y, rng)
    K_ref, S_ref = _dense_gain(X, Y, R)
    K = kalman_gain(X, Y, noise)
    assert K.shape == (N_X, n_y)
    # float64; S has condition number <= ~1e3 here, so 1e-10 is ~1e3 x the expected error.
    np.testing.assert_allclose(K, K_ref, rtol=1e-10, atol=1e-10)
    S = innovation_covariance(Y, noise)
    np.testing.assert_allclose(S.as_matrix(), S_ref, rtol=1e-12, atol=1e-12)
    if structure in ("scalar", "variances", "diagonal", "low_rank"):
        assert isinstance(S, LowRankUpdate)  # structure kept: no N_y x N_y densification
    else:
        assert isinstance(S, lx.MatrixLinearOperator) and lx.is_positive_semidefinite(S)


@pytest.mark.parametrize("structure", ["variances", "low_rank", "dense_array"])
def test_float32_gain(structure):
    rng = np.random.default_rng(7)
    X = random_ensemble(rng, N_E, N_X)
    Y = X[:, :4] + 0.1 * rng.standard_normal((N_E, 4))
    noise, R = _noise(structure, 4, rng)
    K_ref, _ = _dense_gain(X, Y, R)
    noise32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), noise)
    K = kalman_gain(jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32), noise32)
    assert K.dtype == jnp.float32
    # float32 round-off (~6e-8) amplified by cond(S) <= ~1e2: tol(float32) = 1e-4 relative.
    np.testing.assert_allclose(K, K_ref, rtol=10 * tol(jnp.float32), atol=10 * tol(jnp.float32))


@pytest.mark.parametrize("structure", ["variances", "low_rank", "dense_array"])
def test_missing_observations_give_zero_gain_columns(structure):
    rng = np.random.default_rng(3)
    n_y = 5
    X = random_ensemble(rng, N_E, N_X)
    Y = X[:, :n_y] ** 2
    noise, R = _noise(structure, n_y, rng)
    obs = np.array([0.3, np.nan, -1.0, np.nan, 2.0])
    observed = ~np.isnan(obs)
    K = kalman_gain(X, Y, noise, obs=jnp.asarray(obs))
    assert np.all(np.isfinite(K))
    np.testing.assert_array_equal(K[:, ~observed], 0.0)  # exactly zero, not just small
    K_sub, _ = _dense_gain(X, Y[:, observed], R[np.ix_(observed, observed)])
    np.testing.assert_allclose(K[:, observed], K_sub, rtol=1e-10, atol=1e-10)
    # A fully observed vector changes nothing.
    np.testing.assert_allclose(
        kalman_gain(X, Y, noise, obs=jnp.zeros(n_y)), kalman_gain(X, Y, noise), rtol=1e-13
    )


def test_jit_vmap_and_grad():
    rng = np.random.default_rng(4)
    X = jnp.asarray(random_ensemble(rng, N_E, N_X))
    Y = X[:, :3] + 0.1
    var = jnp.asarray(rng.uniform(0.5, 1.0, 3))
    obs = jnp.array([1.0, jnp.nan, 0.0])
    eager = kalman_gain(X, Y, diagonal_noise(var), obs=obs)
    jitted = jax.jit(lambda X, Y, R, o: kalman_gain(X, Y, R, obs=o))(X, Y, diagonal_noise(var), obs)
    np.testing.assert_allclose(jitted, eager, rtol=1e-13)
    scales = jnp.array([0.5, 1.0, 2.0])
    batched = jax.vmap(lambda s: kalman_gain(X, Y, s * var))(scales)
    for i, s in enumerate(np.asarray(scales)):
        K_ref, _ = _dense_gain(np.asarray(X), np.asarray(Y), np.diag(s * np.asarray(var)))
        np.testing.assert_allclose(batched[i], K_ref, rtol=1e-10, atol=1e-12)

    # d/ds of sum(K(s R)) against a central finite difference (float64; h = 1e-5 gives an
    # O(h^2) ~ 1e-10 truncation error, far below rtol = 1e-6).
    def loss(s):
        return jnp.sum(kalman_gain(X, Y, s * var, obs=obs))

    grad = jax.jit(jax.grad(loss))(1.0)
    h = 1e-5
    jit_loss = jax.jit(loss)
    fd = (jit_loss(1.0 + h) - jit_loss(1.0 - h)) / (2 * h)
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    X, Y = jnp.ones((4, 3)), jnp.ones((4, 2))
    with pytest.raises(ValueError, match="Apply the observation operator to every member"):
        kalman_gain(X, jnp.ones((5, 2)), 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        kalman_gain(jnp.ones((1, 3)), jnp.ones((1, 2)), 1.0)
    with pytest.raises(ValueError, match=r"2-D array of shape \(N_e, N_x\)"):
        kalman_gain(jnp.ones(3), Y, 1.0)
    with pytest.raises(ValueError, match="length 2"):
        kalman_gain(X, Y, jnp.ones(3))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        kalman_gain(X, Y, jnp.eye(3))
    with pytest.raises(ValueError, match="obs .* must have length 2"):
        kalman_gain(X, Y, 1.0, obs=jnp.ones(3))
    with pytest.raises(ValueError, match="positive diagonal"):
        kalman_gain(X, Y, LowRankUpdate(jnp.ones((2, 1))))
    # Regression: masking must not hide a missing diagonal (it sets d_i = 1 at gaps).
    with pytest.raises(ValueError, match="positive diagonal"):
        kalman_gain(X, Y, LowRankUpdate(jnp.ones((2, 1))), obs=jnp.array([0.0, jnp.nan]))


@pytest.mark.parametrize(
    "noise",
    [0.0, np.array([1.0, 0.0, 1.0]), np.ones((3, 3))],
    ids=["zero-isotropic", "one-zero-variance", "singular-dense"],
)
def test_singular_obs_noise_raises_instead_of_silent_nan(noise):
    # Regression: a zero variance or a singular dense R made the Woodbury path return NaN.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 4))
    Y = X[:, :3] + 0.1 * rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match="positive definite"):
        fxp.kalman_gain(X, Y, noise)
    with pytest.raises(ValueError, match="positive definite"):
        fxp.log_likelihood(Y, np.zeros(3), noise)
