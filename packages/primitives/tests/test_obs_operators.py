"""Observation operators against NumPy matmul / fancy indexing, under jit, vmap and grad."""

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.primitives import (
    AbstractObsOperator,
    IdentityObs,
    IndexObs,
    LinearObs,
    every_nth,
)
from filterax.testing import tol

DTYPES = [jnp.float32, jnp.float64]


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _operators(rng, n_state):
    """(operator, dense numpy H) pairs covering every class and both IndexObs storage modes."""
    H = rng.standard_normal((3, n_state))
    return [
        (IdentityObs(), np.eye(n_state)),
        (LinearObs(H), H),
        (IndexObs([4, 0, 2, 2]), np.eye(n_state)[[4, 0, 2, 2]]),
        (IndexObs(jnp.array([1, 3])), np.eye(n_state)[[1, 3]]),
        (every_nth(n_state, 2), np.eye(n_state)[0::2]),
    ]


def test_all_are_obs_operators(rng):
    for op, _ in _operators(rng, 6):
        assert isinstance(op, AbstractObsOperator)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_numpy_matmul_single_and_vmapped(rng, dtype):
    n_state, n_members = 6, 7
    x = rng.standard_normal(n_state)
    X = rng.standard_normal((n_members, n_state))
    for op, H in _operators(rng, n_state):
        if isinstance(op, LinearObs):
            op = LinearObs(jnp.asarray(H, dtype))
        y = op(jnp.asarray(x, dtype))
        assert y.dtype == dtype
        # Float32 rounding of a 6-term dot product; tol() covers it (selection is exact).
        np.testing.assert_allclose(y, H @ x, rtol=tol(dtype), atol=tol(dtype))
        Y = jax.vmap(op)(jnp.asarray(X, dtype))
        assert Y.shape == (n_members, H.shape[0])
        np.testing.assert_allclose(Y, X @ H.T, rtol=tol(dtype), atol=tol(dtype))
        np.testing.assert_allclose(op.matrix(n_state), H, rtol=tol(dtype), atol=0)
        assert op.n_obs(n_state) == H.shape[0]


def test_jit_with_operator_as_argument(rng):
    n_state = 6
    x = rng.standard_normal(n_state)
    apply = jax.jit(lambda op, x: op(x))
    for op, H in _operators(rng, n_state):
        np.testing.assert_allclose(apply(op, jnp.asarray(x)), H @ x, rtol=1e-12, atol=1e-12)


def test_linear_obs_gradient_wrt_matrix_and_state(rng):
    H = rng.standard_normal((3, 5))
    x = rng.standard_normal(5)
    w = rng.standard_normal(3)

    def loss(H, x):
        return jnp.dot(jnp.asarray(w), LinearObs(H)(x))

    grad_H, grad_x = jax.grad(loss, argnums=(0, 1))(jnp.asarray(H), jnp.asarray(x))
    # d(w^T H x)/dH = w x^T and d/dx = H^T w, exactly (float64 round-off only).
    np.testing.assert_allclose(grad_H, np.outer(w, x), rtol=1e-12)
    np.testing.assert_allclose(grad_x, H.T @ w, rtol=1e-12)


def test_index_obs_gradient_scatters_back(rng):
    x = jnp.asarray(rng.standard_normal(5))
    grad = jax.grad(lambda x: jnp.sum(IndexObs([1, 1, 3])(x)))(x)
    np.testing.assert_array_equal(grad, [0.0, 2.0, 0.0, 1.0, 0.0])


def test_index_obs_time_varying_indices_in_scan(rng):
    # Dynamic indices: a different observed subset at every step of a lax.scan.
    xs = rng.standard_normal((4, 8))
    idx = np.stack([rng.permutation(8)[:3] for _ in range(4)])

    def body(carry, inputs):
        x, i = inputs
        return carry, IndexObs(i)(x)

    _, ys = jax.lax.scan(body, 0.0, (jnp.asarray(xs), jnp.asarray(idx)))
    np.testing.assert_array_equal(ys, np.take_along_axis(xs, idx, axis=1))


def test_every_nth_matches_numpy_slicing():
    assert every_nth(40, 2).static_indices == tuple(range(0, 40, 2))
    assert every_nth(10, 3, offset=1).static_indices == (1, 4, 7)
    assert every_nth(5, 1).n_obs(5) == 5


def test_integer_matrix_is_cast_to_float():
    op = LinearObs(np.array([[1, 0], [0, 2]]))
    assert jnp.issubdtype(op.H.dtype, jnp.floating)
    np.testing.assert_array_equal(op(jnp.array([3.0, 4.0])), [3.0, 8.0])


@pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 3, 4)), 1.0])
def test_linear_obs_rejects_non_matrix(bad):
    with pytest.raises(ValueError, match="2-D matrix H"):
        LinearObs(bad)


def test_linear_obs_rejects_wrong_state_length():
    op = LinearObs(np.ones((2, 3)))
    with pytest.raises(ValueError, match="N_x=3"):
        op(jnp.ones(4))
    with pytest.raises(ValueError, match="N_x=3"):
        jax.jit(lambda op, x: op(x))(op, jnp.ones(4))
    with pytest.raises(ValueError, match="n_state=4"):
        op.matrix(4)


def test_operators_reject_an_ensemble_without_vmap():
    # ValueError from our check; jaxtyping's TypeCheckError (a TypeError) when the test
    # session's runtime type-checker sees the (N_x,) annotation first.
    with pytest.raises((ValueError, TypeError)):
        LinearObs(np.ones((2, 3)))(jnp.ones((5, 3)))


@pytest.mark.parametrize("bad", [[0.0, 2.0], np.array([0.5, 1.0]), jnp.array([0.0, 1.0])])
def test_index_obs_rejects_float_indices(bad):
    with pytest.raises(TypeError, match="integers"):
        IndexObs(bad)


def test_index_obs_rejects_bool_mask():
    with pytest.raises(TypeError, match="flatnonzero"):
        IndexObs(np.array([True, False, True]))


@pytest.mark.parametrize("bad", [[0, -1], jnp.array([-2, 1])])
def test_index_obs_rejects_negative_indices(bad):
    with pytest.raises(ValueError, match="non-negative"):
        IndexObs(bad)


@pytest.mark.parametrize("bad", [3, [[0, 1]], []])
def test_index_obs_rejects_non_vector(bad):
    with pytest.raises(ValueError, match="1-D|at least one"):
        IndexObs(bad)


def test_index_obs_out_of_range_static_and_concrete():
    with pytest.raises(ValueError, match="only N_x=3"):
        IndexObs([0, 3])(jnp.ones(3))
    with pytest.raises(ValueError, match="only N_x=3"):
        IndexObs(jnp.array([0, 3]))(jnp.ones(3))
    with pytest.raises(ValueError, match="only N_x=3"):
        IndexObs([5]).matrix(3)


def test_index_obs_out_of_range_traced_raises_at_run_time():
    # Traced indices cannot be checked at trace time; eqx.error_if must still stop silent clamping.
    apply = jax.jit(lambda op, x: op(x))
    with pytest.raises(RuntimeError, match="out of range"):
        apply(IndexObs(jnp.array([0, 5])), jnp.ones(3))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_state": 4, "step": 0}, ValueError),
        ({"n_state": 4, "step": 1, "offset": 4}, ValueError),
        ({"n_state": 0, "step": 1}, ValueError),
        ({"n_state": 4, "step": 1.5}, TypeError),
    ],
)
def test_every_nth_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        every_nth(**kwargs)


# --- apply_obs: the one observation-operator dispatcher -----------------------------------------


def test_apply_obs_forms_agree():
    H = np.random.default_rng(0).standard_normal((3, 5))
    x = jnp.asarray(np.random.default_rng(1).standard_normal(5))
    expected = H @ np.asarray(x)
    forms = {
        "callable": lambda v: jnp.asarray(H) @ v,
        "linear_obs": fxp.LinearObs(jnp.asarray(H)),
        "lineax": lx.MatrixLinearOperator(jnp.asarray(H)),
        "jax_matrix": jnp.asarray(H),
        "numpy_matrix": H,
    }
    for name, op in forms.items():
        # float64 matvec of O(1) numbers: exact to ~1e-15.
        np.testing.assert_allclose(fxp.apply_obs(op, x), expected, atol=1e-13, err_msg=name)
        batched = jax.vmap(lambda v, op=op: fxp.apply_obs(op, v))(jnp.stack([x, 2 * x]))
        np.testing.assert_allclose(batched[1], 2 * expected, atol=1e-13, err_msg=name)
        jitted = jax.jit(lambda v, op=op: fxp.apply_obs(op, v))(x)
        np.testing.assert_allclose(jitted, expected, atol=1e-13, err_msg=name)


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_apply_obs_rejects_bad_forms():
    with pytest.raises(ValueError, match=r"\(N_y, N_x\) matrix"):
        fxp.apply_obs(jnp.ones(3), jnp.ones(3))
    with pytest.raises(TypeError, match="callable"):
        fxp.apply_obs("identity", jnp.ones(3))
