"""concrete_value: the one trace-time concreteness test, under every JAX transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives import concrete_value, diagonal_noise


@pytest.mark.parametrize(
    "value", [1.5, 3, np.array([1.0, 2.0]), jnp.array([1.0, 2.0]), np.float32(2.0)]
)
def test_concrete_values_come_back_as_numpy(value):
    out = concrete_value(value)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, np.asarray(value))


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad", "eval_shape", "jit_vmap_grad"])
def test_traced_values_are_none_under_every_transformation(transform):
    seen = []

    def probe(x):
        seen.append(concrete_value(x))
        return jnp.sum(x**2)

    x = jnp.array([1.0, 2.0])
    xs = jnp.stack([x, x])
    {
        "jit": lambda: jax.jit(probe)(x),
        "vmap": lambda: jax.vmap(probe)(xs),
        "grad": lambda: jax.grad(probe)(x),
        "eval_shape": lambda: jax.eval_shape(probe, x),
        "jit_vmap_grad": lambda: jax.jit(jax.vmap(jax.grad(probe)))(xs),
    }[transform]()
    assert seen == [None]


def test_closed_over_concrete_array_stays_concrete_under_jit():
    x = jnp.array([1.0, 2.0])
    inside = []
    jax.jit(lambda y: inside.append(concrete_value(x)) or y)(1.0)
    np.testing.assert_array_equal(inside[0], np.asarray(x))


def test_eager_checks_run_and_traced_checks_pass_through():
    # Checks built on concrete_value raise eagerly and defer under jit (no tracer errors).
    with pytest.raises(ValueError, match="non-negative"):
        diagonal_noise(jnp.array([1.0, -1.0]))
    out = jax.jit(lambda v: diagonal_noise(v).as_matrix())(jnp.array([1.0, 2.0]))
    np.testing.assert_array_equal(out, np.diag([1.0, 2.0]))
