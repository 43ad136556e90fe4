"""LowRankUpdate: a lineax operator whose Woodbury algebra matches dense numpy."""

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

from filterax.primitives import LowRankUpdate, WoodburySolver
from filterax.testing import tol


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _problem(n, k, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, k))
    d = rng.uniform(0.5, 2.0, n)
    return u, d, u @ u.T + np.diag(d), rng


# (n, k): k < n (the usual ensemble case), k == n and k > n (more members than obs).
SHAPES = [(8, 3), (5, 5), (4, 9)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("n,k", SHAPES)
def test_matches_dense_numpy(n, k, dtype):
    u, d, dense, rng = _problem(n, k)
    op = LowRankUpdate(jnp.asarray(u, dtype), jnp.asarray(d, dtype))
    b = rng.standard_normal(n)
    B = rng.standard_normal((n, 3))
    # The dense matrix has condition number <= ~(k * 4 + 2) / 0.5 ~ 100, so float32 solves
    # lose ~2 digits: tol(float32) = 1e-4 relative is still ~10x above that.
    rtol = tol(dtype) * (10 if dtype == jnp.float32 else 1)
    assert op.in_structure() == jax.ShapeDtypeStruct((n,), dtype)
    assert op.rank == k
    np.testing.assert_allclose(op.as_matrix(), dense, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(op.mv(jnp.asarray(b, dtype)), dense @ b, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(op.logdet(), np.linalg.slogdet(dense)[1], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(
        op.solve(jnp.asarray(b, dtype)), np.linalg.solve(dense, b), rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(
        op.solve(jnp.asarray(B, dtype)), np.linalg.solve(dense, B), rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(op.trace(), np.trace(dense), rtol=rtol)


def test_no_diagonal_is_the_pure_low_rank_product():
    u, _, _, _ = _problem(6, 2)
    op = LowRankUpdate(u)
    np.testing.assert_allclose(op.as_matrix(), u @ u.T, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(lx.diagonal(op), np.sum(u**2, axis=1), rtol=1e-14)


def test_lineax_registrations_and_linear_solve():
    u, d, dense, rng = _problem(7, 3)
    op = LowRankUpdate(u, d)
    assert lx.is_symmetric(op) and lx.is_positive_semidefinite(op)
    assert not lx.is_negative_semidefinite(op)
    assert not lx.is_diagonal(op) and not lx.is_tridiagonal(op)
    assert not lx.is_lower_triangular(op) and not lx.is_upper_triangular(op)
    assert not lx.has_unit_diagonal(op)
    assert op.transpose() is op and op.T is op
    assert lx.linearise(op) is op and lx.materialise(op) is op
    assert isinstance(lx.conj(op), LowRankUpdate)
    np.testing.assert_allclose(lx.diagonal(op), np.diag(dense), rtol=1e-13)
    main, lower, upper = lx.tridiagonal(op)
    np.testing.assert_allclose(main, np.diag(dense), rtol=1e-13)
    np.testing.assert_allclose(lower, np.diag(dense, -1), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(upper, np.diag(dense, 1), rtol=1e-13, atol=1e-14)
    # A rank-0 update is structurally diagonal.
    assert lx.is_diagonal(LowRankUpdate(np.zeros((3, 0)), np.ones(3)))

    b = rng.standard_normal(7)
    solver = lx.AutoLinearSolver(well_posed=True)
    assert isinstance(solver.select_solver(op), lx.Cholesky)
    sol = lx.linear_solve(op, jnp.asarray(b), solver).value
    # float64 solve of a cond ~ 50 system: 1e-10 leaves 4 orders of magnitude of headroom.
    np.testing.assert_allclose(sol, np.linalg.solve(dense, b), rtol=1e-10)
    # Composition with other lineax operators works through mv / as_matrix.
    summed = op + lx.DiagonalLinearOperator(jnp.ones(7))
    np.testing.assert_allclose(summed.as_matrix(), dense + np.eye(7), rtol=1e-13)


def test_jit_vmap_and_gradients():
    u, d, dense, rng = _problem(6, 2)
    b = jnp.asarray(rng.standard_normal(6))
    jitted = jax.jit(lambda op, b: (op.logdet(), op.solve(b), op.mv(b)))
    logdet, sol, mv = jitted(LowRankUpdate(u, d), b)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(dense)[1], rtol=1e-12)
    np.testing.assert_allclose(sol, np.linalg.solve(dense, b), rtol=1e-10)
    np.testing.assert_allclose(mv, dense @ b, rtol=1e-12)

    scales = jnp.array([0.5, 1.0, 2.0])
    batched = jax.vmap(lambda s: LowRankUpdate(s * u, d).logdet())(scales)
    for i, s in enumerate(np.asarray(scales)):
        ref = np.linalg.slogdet(s**2 * u @ u.T + np.diag(d))[1]
        np.testing.assert_allclose(batched[i], ref, rtol=1e-12)

    # d log|A| / dU = 2 A^{-1} U and d log|A| / dd = diag(A^{-1}) (matrix calculus).
    # (jit: compiled once, much faster than eager autodiff on these tiny problems)
    gu, gd = jax.jit(jax.grad(lambda u, d: LowRankUpdate(u, d).logdet(), argnums=(0, 1)))(u, d)
    inv = np.linalg.inv(dense)
    np.testing.assert_allclose(gu, 2 * inv @ u, rtol=1e-10)
    np.testing.assert_allclose(gd, np.diag(inv), rtol=1e-10)

    # Differentiating through lx.linear_solve exercises lineax's JVP (TangentLinearOperator).
    def via_lineax(u):
        return jnp.sum(lx.linear_solve(LowRankUpdate(u, d), b).value)

    def via_woodbury(u):
        return jnp.sum(LowRankUpdate(u, d).solve(b))

    np.testing.assert_allclose(
        jax.jit(jax.grad(via_lineax))(u), jax.jit(jax.grad(via_woodbury))(u), rtol=1e-9
    )


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"2-D \(n, k\) array U"):
        LowRankUpdate(jnp.ones(3))
    with pytest.raises(ValueError, match="length n=3"):
        LowRankUpdate(jnp.ones((3, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="must be non-negative"):
        LowRankUpdate(jnp.ones((3, 2)), jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="needs a positive `diagonal`"):
        LowRankUpdate(jnp.ones((3, 2))).logdet()
    with pytest.raises(ValueError, match="needs a positive `diagonal`"):
        LowRankUpdate(jnp.ones((3, 2))).solve(jnp.ones(3))
    with pytest.raises(ValueError, match=r"b of shape \(3,\) or \(3, m\)"):
        LowRankUpdate(jnp.ones((3, 2)), jnp.ones(3)).solve(jnp.ones(4))
    with pytest.raises(TypeError, match="real"):
        LowRankUpdate(jnp.ones((3, 2), dtype=jnp.complex64))


# --- WoodburySolver: lx.linear_solve on a LowRankUpdate without densifying ----------------------


def _all_shapes(jaxpr):
    """Every intermediate shape of a jaxpr, sub-jaxprs (jit, custom rules, loops) included."""
    shapes = set()
    for eqn in jaxpr.eqns:
        shapes.update(tuple(var.aval.shape) for var in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes |= _all_shapes(inner)
    return shapes


@pytest.mark.parametrize("n,k", SHAPES)
def test_woodbury_solver_matches_dense_solve(n, k):
    # float64, condition number <~ 1e2: the Woodbury and dense solves agree to ~1e-14.
    u, d, dense, rng = _problem(n, k, seed=3)
    op = LowRankUpdate(jnp.asarray(u), jnp.asarray(d))
    b = rng.standard_normal(n)
    sol = lx.linear_solve(op, jnp.asarray(b), solver=WoodburySolver())
    np.testing.assert_allclose(sol.value, np.linalg.solve(dense, b), rtol=0, atol=1e-10)
    assert sol.result == lx.RESULTS.successful
    # The state can be reused for several right-hand sides.
    state = WoodburySolver().init(op, {})
    again = lx.linear_solve(op, jnp.asarray(2 * b), solver=WoodburySolver(), state=state)
    np.testing.assert_allclose(again.value, 2 * np.linalg.solve(dense, b), atol=1e-10)


def test_woodbury_solver_forms_no_n_by_n_matrix():
    n, k = 40, 3
    u, d, _, rng = _problem(n, k, seed=4)
    b = jnp.asarray(rng.standard_normal(n))

    def solve(u, d, b):
        return lx.linear_solve(LowRankUpdate(u, d), b, solver=WoodburySolver()).value

    woodbury = _all_shapes(jax.make_jaxpr(solve)(jnp.asarray(u), jnp.asarray(d), b).jaxpr)
    assert (k, k) in woodbury  # the capacitance matrix
    assert (n, n) not in woodbury
    # ... whereas lineax's default solver densifies it (the reason for WoodburySolver).
    default = _all_shapes(
        jax.make_jaxpr(lambda u, d, b: lx.linear_solve(LowRankUpdate(u, d), b).value)(
            jnp.asarray(u), jnp.asarray(d), b
        ).jaxpr
    )
    assert (n, n) in default


def test_woodbury_solver_gradients_match_dense():
    n, k = 7, 2
    u, d, _, rng = _problem(n, k, seed=5)
    b = jnp.asarray(rng.standard_normal(n))
    w = jnp.asarray(rng.standard_normal(n))

    def loss(u, d, b, solver):
        op = LowRankUpdate(u, d)
        return jnp.dot(w, lx.linear_solve(op, b, solver=solver).value)

    def dense_loss(u, d, b, _):
        return jnp.dot(w, jnp.linalg.solve(u @ u.T + jnp.diag(d), b))

    args = (jnp.asarray(u), jnp.asarray(d), b)
    got = jax.grad(loss, argnums=(0, 1, 2))(*args, WoodburySolver())
    ref = jax.grad(dense_loss, argnums=(0, 1, 2))(*args, None)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-10)
    jitted = jax.jit(lambda u, d, b: loss(u, d, b, WoodburySolver()))(*args)
    np.testing.assert_allclose(jitted, dense_loss(*args, None), atol=1e-10)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_woodbury_solver_refuses_other_operators():
    with pytest.raises(TypeError, match="LowRankUpdate"):
        lx.linear_solve(lx.MatrixLinearOperator(jnp.eye(3)), jnp.ones(3), solver=WoodburySolver())
    with pytest.raises(ValueError, match="positive `diagonal`"):
        lx.linear_solve(LowRankUpdate(jnp.ones((3, 1))), jnp.ones(3), solver=WoodburySolver())
