"""Noise-operator constructors, coercion, square roots and missing-entry masking."""

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

from filterax.primitives import (
    LowRankUpdate,
    as_noise_operator,
    dense_noise,
    diagonal_noise,
    fill_missing,
    isotropic_noise,
    low_rank_noise,
    mask_anomalies,
    mask_noise,
    noise_sqrt,
    noise_structure,
    observation_mask,
)
from filterax.testing import random_spd


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _noises(n=5, seed=0):
    """One noise covariance of each structure, with its dense numpy reference."""
    rng = np.random.default_rng(seed)
    var = rng.uniform(0.5, 2.0, n)
    u = rng.standard_normal((n, 2))
    cov = random_spd(rng, n, cond=20.0)
    return {
        "diagonal": (diagonal_noise(var), np.diag(var)),
        "isotropic": (isotropic_noise(0.7, n), 0.7 * np.eye(n)),
        "low_rank": (low_rank_noise(u, var), u @ u.T + np.diag(var)),
        "dense": (dense_noise(cov), cov),
    }


def test_constructors_build_the_right_matrices_and_structures():
    expected_structure = {
        "diagonal": "diagonal",
        "isotropic": "diagonal",
        "low_rank": "low_rank",
        "dense": "dense",
    }
    for name, (op, dense) in _noises().items():
        np.testing.assert_allclose(op.as_matrix(), dense, rtol=1e-14, atol=1e-14)
        assert noise_structure(op) == expected_structure[name]
    dense_op = _noises()["dense"][0]
    assert lx.is_positive_semidefinite(dense_op) and lx.is_symmetric(dense_op)
    assert isinstance(_noises()["low_rank"][0], LowRankUpdate)


def test_as_noise_operator_accepts_every_documented_form():
    rng = np.random.default_rng(1)
    var = rng.uniform(0.5, 2.0, 4)
    cov = random_spd(rng, 4)
    cases = [
        (2.0, 2.0 * np.eye(4)),  # DAPPER's noise=c
        (3, 3.0 * np.eye(4)),  # Python int variance
        (jnp.asarray(0.5), 0.5 * np.eye(4)),
        (var, np.diag(var)),
        (jnp.asarray(cov), cov),
        (diagonal_noise(var), np.diag(var)),
    ]
    for noise, dense in cases:
        op = as_noise_operator(noise, 4)
        assert isinstance(op, lx.AbstractLinearOperator)
        np.testing.assert_allclose(op.as_matrix(), dense, rtol=1e-14)
    # dtype= stops a Python-float variance promoting float32 work to float64.
    assert as_noise_operator(2.0, 4, dtype=jnp.float32).as_matrix().dtype == jnp.float32
    # Traced scalars are accepted (differentiating w.r.t. the noise level).
    grad = jax.grad(lambda s: jnp.sum(as_noise_operator(s, 4).as_matrix()))(1.0)
    np.testing.assert_allclose(grad, 4.0)


@pytest.mark.parametrize("name", ["diagonal", "isotropic", "low_rank", "dense"])
def test_noise_sqrt_squares_back_to_r(name):
    op, dense = _noises()[name]
    root = noise_sqrt(op)
    root_matrix = root.as_matrix()
    assert root_matrix.shape[0] == dense.shape[0]
    if name == "low_rank":  # the rectangular [diag(sqrt d), U]
        assert root_matrix.shape == (5, 5 + 2)
    # float64 identity; Cholesky of a cond-20 matrix reconstructs to ~1e-15 relative.
    np.testing.assert_allclose(root_matrix @ root_matrix.T, dense, rtol=1e-12, atol=1e-12)
    # Pure low-rank noise (no diagonal) has the factor itself as its root.
    u = np.random.default_rng(2).standard_normal((5, 2))
    np.testing.assert_allclose(noise_sqrt(LowRankUpdate(u)).as_matrix(), u, rtol=1e-15)


@pytest.mark.parametrize("name", ["diagonal", "low_rank", "dense"])
def test_mask_noise_replaces_missing_rows_and_columns_by_identity(name):
    op, dense = _noises()[name]
    mask = np.array([True, False, True, True, False])
    masked = mask_noise(op, jnp.asarray(mask))
    assert noise_structure(masked) == noise_structure(op)
    expected = np.eye(5)
    keep = np.ix_(mask, mask)
    expected[keep] = dense[keep]
    np.testing.assert_allclose(masked.as_matrix(), expected, rtol=1e-14, atol=1e-14)


def test_observation_mask_and_fill_are_nan_safe():
    y = jnp.array([1.0, jnp.nan, 3.0])
    mask = observation_mask(y)
    np.testing.assert_array_equal(mask, [True, False, True])
    np.testing.assert_array_equal(fill_missing(y), [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(mask_anomalies(jnp.ones((2, 3)), mask), [[1, 0, 1], [1, 0, 1]])
    # The jnp.where gradient trap: the gradient at a missing entry must be 0, not NaN.
    grad = jax.grad(lambda y: jnp.sum(fill_missing(y) ** 2))(y)
    np.testing.assert_array_equal(grad, [2.0, 0.0, 6.0])


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="non-negative"):
        diagonal_noise(jnp.array([1.0, -0.1]))
    with pytest.raises(ValueError, match="non-negative"):
        isotropic_noise(-1.0, 3)
    with pytest.raises(ValueError, match="diagonal_noise"):
        isotropic_noise(jnp.ones(3), 3)
    with pytest.raises(ValueError, match="square"):
        dense_noise(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="symmetric"):
        dense_noise(jnp.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="negative variances"):
        dense_noise(jnp.array([[-1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="length 4"):
        as_noise_operator(jnp.ones(3), 4)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        as_noise_operator(jnp.eye(3), 4)
    with pytest.raises(ValueError, match="square of size 4 x 4"):
        as_noise_operator(diagonal_noise(jnp.ones(3)), 4)
    with pytest.raises(ValueError, match="0-D"):
        as_noise_operator(jnp.ones((4, 4, 4)), 4)
    with pytest.raises(TypeError, match="lineax operator, a scalar variance"):
        as_noise_operator("diag", 4)
