"""3D-Var and the control-variable solver against independent numpy references."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.zoo import (
    Var3D,
    background_sqrt,
    variational_analysis,
    variational_cost,
    variational_increment,
)


def drive(method, model, initial, observations, times, t0=0.0):
    """The cycled-method loop of filterax.filters.run (zoo's tests cannot import filters)."""
    state = method.init(jax.random.key(0), initial, model)
    prev = jnp.concatenate([jnp.array([t0]), times[:-1]])

    def body(state, xs):
        t_prev, t, y = xs
        state, info = method.step(jax.random.key(0), state, model, t_prev, t, y)
        return state, info

    return jax.lax.scan(body, state, (prev, times, observations))


# One compiled program per (method, model, shapes): tests compile a run once, not op by op.
drive_jit = eqx.filter_jit(drive)


def _spd(rng, n, scale=1.0):
    a = rng.standard_normal((n, n))
    return scale * (a @ a.T / n + 0.5 * np.eye(n))


def numpy_kf_linear(A, H, R, xb0, P0, ys, B_static=None, xB=1.0):
    """Kalman filter (or, with B_static, the 3D-Var recursion with gain from xB*B)."""
    x, P = xb0.copy(), P0.copy()
    out = []
    for y in ys:
        x = A @ x
        P = A @ P @ A.T
        Pf = xB * B_static if B_static is not None else P
        m = ~np.isnan(y)
        Hm, ym, Rm = H[m], y[m], R[np.ix_(m, m)]
        K = Pf @ Hm.T @ np.linalg.inv(Hm @ Pf @ Hm.T + Rm)
        x = x + K @ (ym - Hm @ x)
        P = (np.eye(len(x)) - K @ Hm) @ Pf
        out.append((x.copy(), P.copy()))
    return out


def test_var3d_equals_kalman_analysis_with_b_equal_pf():
    # One cycle: 3D-Var with B = P^f is the Kalman analysis (an algebraic identity; CG with
    # rtol 1e-10 on a matrix with eigenvalues >= 1, so 1e-8 is loose by two orders).
    rng = np.random.default_rng(0)
    n, m = 5, 3
    A = np.eye(n) + 0.1 * rng.standard_normal((n, n))
    H = rng.standard_normal((m, n))
    R = _spd(rng, m, 0.5)
    Pa0 = _spd(rng, n)
    Pf = A @ Pa0 @ A.T
    x0 = rng.standard_normal(n)
    y = rng.standard_normal(m)
    ((xa, Pa),) = numpy_kf_linear(A, H, R, x0, Pa0, [y])
    model = fxp.Model(lambda x, a, b: jnp.asarray(A) @ x, jnp.asarray(H), jnp.asarray(R))
    _, info = drive_jit(
        Var3D(jnp.asarray(Pf)), model, jnp.asarray(x0), jnp.asarray(y[None]), jnp.ones(1)
    )
    np.testing.assert_allclose(info.analysis_mean[0], xa, rtol=0, atol=1e-8)
    np.testing.assert_allclose(info.forecast_mean[0], A @ x0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(info.analysis_spread[0], np.sqrt(np.mean(np.diag(Pa))), atol=1e-8)
    # log N(y; H xf, H Pf H^T + R), dense numpy
    S = H @ Pf @ H.T + R
    d = y - H @ A @ x0
    ll = -0.5 * (m * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + d @ np.linalg.solve(S, d))
    np.testing.assert_allclose(info.log_likelihood[0], ll, atol=1e-8)


def test_var3d_cycled_with_missing_obs_and_xb():
    # Several cycles of the static-gain recursion, with NaN entries (zero weight) and xB.
    rng = np.random.default_rng(1)
    n, m, T = 4, 4, 6
    A = 0.9 * np.eye(n) + 0.05 * rng.standard_normal((n, n))
    H = np.eye(m)
    R = np.diag(rng.uniform(0.5, 2.0, m))
    B = _spd(rng, n)
    ys = rng.standard_normal((T, m))
    ys[1, 2] = np.nan
    ys[3, :3] = np.nan
    x0 = rng.standard_normal(n)
    ref = numpy_kf_linear(A, H, R, x0, np.eye(n), ys, B_static=B, xB=0.3)
    model = fxp.Model(
        lambda x, a, b: jnp.asarray(A) @ x, fxp.IdentityObs(), jnp.diag(jnp.asarray(R))
    )
    _, info = drive_jit(
        Var3D(jnp.asarray(B), xB=0.3),
        model,
        jnp.asarray(x0),
        jnp.asarray(ys),
        jnp.arange(1.0, T + 1),
    )
    np.testing.assert_allclose(info.analysis_mean, np.stack([r[0] for r in ref]), atol=1e-8)
    spreads = [np.sqrt(np.mean(np.diag(r[1]))) for r in ref]
    np.testing.assert_allclose(info.analysis_spread, spreads, atol=1e-8)
    assert not np.any(np.isnan(np.asarray(info.innovation)))


def test_minimisation_equals_closed_form_normal_equations():
    # Nonlinear-free check of the solver: 2 observation times, a linear map G, dense normal
    # equations in numpy (B^{-1} + G^T R^{-1} G) dx = G^T R^{-1} d.
    rng = np.random.default_rng(2)
    n, m = 6, 3
    G = rng.standard_normal((2, m, n))
    B = _spd(rng, n)
    R = 0.7
    xb = rng.standard_normal(n)
    y = rng.standard_normal((2, m))
    U = background_sqrt(jnp.asarray(B))

    def forward(x):
        return jnp.einsum("tmn,n->tm", jnp.asarray(G), x)

    @jax.jit
    def solve_and_grad(y):
        res = variational_analysis(forward, jnp.asarray(xb), U, y, R)
        g = jax.grad(lambda v: variational_cost(forward, jnp.asarray(xb), U, y, R, v))
        return res, g(res.control)

    res, g = solve_and_grad(jnp.asarray(y))
    Gs = G.reshape(2 * m, n)
    lhs = np.linalg.inv(B) + Gs.T @ Gs / R
    rhs = Gs.T @ (y.reshape(-1) - Gs @ xb) / R
    np.testing.assert_allclose(res.analysis, xb + np.linalg.solve(lhs, rhs), atol=1e-8)
    assert bool(res.converged) and int(res.iterations) == 1
    # gradient of the cost at the minimiser is zero (1e-8: CG residual 1e-10 relative)
    assert float(jnp.max(jnp.abs(g))) < 1e-8


def test_gauss_newton_nonlinear_converges_to_minimiser():
    # Nonlinear H: the GN fixed point has zero cost gradient (checked by jax.grad, independent
    # of the solver's linear algebra).
    B = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    U = background_sqrt(B)

    def fwd(x):
        return jnp.stack([x[:1] ** 3 + x[1:], jnp.sin(x[:1])])  # (2 times, 1 obs)

    y = jnp.array([[2.0], [0.5]])

    @jax.jit
    def solve(y):  # one program: the full run, the cost gradient there, the wtol run
        res = variational_analysis(fwd, jnp.ones(2), U, y, 0.1, n_iter=20)
        g = jax.grad(lambda v: variational_cost(fwd, jnp.ones(2), U, y, 0.1, v))(res.control)
        res2 = variational_analysis(fwd, jnp.ones(2), U, y, 0.1, n_iter=20, wtol=1e-12)
        return res, g, res2

    res, g, res2 = solve(y)
    # Gauss-Newton converges linearly on a problem with a nonzero residual (measured: 1e-7
    # after 20 iterations, 1e-3 after 2): 1e-6 fails if the iteration stalls or is wrong.
    assert float(jnp.max(jnp.abs(g))) < 1e-6
    # wtol stops early and reports fewer iterations
    assert int(res2.iterations) < 20
    np.testing.assert_allclose(res2.analysis, res.analysis, atol=1e-6)


def test_increment_matches_blue_and_rev_jacobian_equals_fwd():
    U = lx.DiagonalLinearOperator(jnp.full(3, 2.0))
    rng = np.random.default_rng(3)
    M = jnp.asarray(rng.standard_normal((3, 3)))

    @jax.jit
    def solve(d, y):  # one program for the three solves
        inc = variational_increment(lambda dx: dx[None], U, d, 1.0)
        kw = {"n_iter": 4}
        a = variational_analysis(lambda x: jnp.tanh(M @ x)[None], jnp.zeros(3), U, y, 0.5, **kw)
        b = variational_analysis(
            lambda x: jnp.tanh(M @ x)[None], jnp.zeros(3), U, y, 0.5, jacobian="rev", **kw
        )
        return inc, a, b

    (dv, steps, ok), a, b = solve(jnp.ones((1, 3)), jnp.asarray(rng.standard_normal((1, 3))))
    np.testing.assert_allclose(U.mv(dv), 0.8 * jnp.ones(3), atol=1e-10)  # B/(B+R) d = 4/5
    assert bool(ok) and int(steps) >= 1
    np.testing.assert_allclose(a.analysis, b.analysis, atol=1e-10)


def test_large_nx_circulant_b_matrix_free():
    # N_x = 1e4, circulant B given by its FFT square root (matrix-free), identity H, linear
    # dynamics; against the closed-form analysis in Fourier space. No N_x x N_x array appears
    # in the program (checked on the jaxpr).
    n = 10_000
    k = np.fft.rfftfreq(n) * n
    spec = 1.0 / (1.0 + (k / 50.0) ** 2)  # eigenvalues of B (a smooth correlation)
    spec_j = jnp.asarray(spec)

    def sqrt_b(v):
        return jnp.fft.irfft(jnp.sqrt(spec_j) * jnp.fft.rfft(v), n=n)

    U = lx.FunctionLinearOperator(sqrt_b, jax.ShapeDtypeStruct((n,), jnp.float64), lx.symmetric_tag)
    model = fxp.Model(lambda x, a, b: 0.95 * x, fxp.IdentityObs(), 0.5)
    method = Var3D(B_sqrt=U, spread=False)
    rng = np.random.default_rng(4)
    ys = rng.standard_normal((3, n))
    x0 = rng.standard_normal(n)
    run = jax.jit(lambda y: drive(method, model, jnp.asarray(x0), y, jnp.arange(1.0, 4.0)))
    jaxpr = jax.make_jaxpr(
        lambda y: drive(method, model, jnp.asarray(x0), y, jnp.arange(1.0, 4.0))
    )(jnp.asarray(ys))
    for eqn in jaxpr.jaxpr.eqns:
        for var in eqn.outvars:
            assert np.prod(getattr(var.aval, "shape", ())) < n * 100, (eqn.primitive, var.aval)
    _, info = run(jnp.asarray(ys))
    xs = []
    x = x0.copy()
    for y in ys:
        x = 0.95 * x
        x = x + np.fft.irfft(spec / (spec + 0.5) * np.fft.rfft(y - x), n=n)
        xs.append(x)
    # 1e-7: CG stops at a 1e-10 relative residual; the analysis has norm ~1e2.
    np.testing.assert_allclose(info.analysis_mean, np.stack(xs), atol=1e-7)
    assert bool(jnp.all(info.diagnostics.converged))


def test_jit_vmap_grad():
    rng = np.random.default_rng(5)
    n = 3
    B = jnp.asarray(_spd(rng, n))
    model = fxp.Model(lambda x, a, b: 0.9 * x, fxp.IdentityObs(), 1.0)
    ys = jnp.asarray(rng.standard_normal((4, n)))
    times = jnp.arange(1.0, 5.0)

    def last(xb, ys):
        _, info = drive(Var3D(B, xB=xb, spread=False), model, jnp.zeros(n), ys, times)
        return info.analysis_mean[-1]

    last_analysis = jax.jit(last)

    @jax.jit
    def transformed(xbs, ys):  # vmap and both gradients in one compiled program
        batch = jax.vmap(last, in_axes=(0, None))(xbs, ys)
        gx, g = jax.grad(lambda xb, ys: jnp.sum(last(xb, ys)), argnums=(0, 1))(xbs[0], ys)
        return batch, g, gx

    eager = last_analysis(0.5, ys)
    batch, g, gx = transformed(jnp.array([0.5, 2.0]), ys)
    np.testing.assert_allclose(batch[0], eager, atol=1e-12)
    np.testing.assert_allclose(batch[1], last_analysis(2.0, ys), atol=1e-12)
    # the analysis is linear in the observations: grad == finite difference (exact for linear)
    e = jnp.zeros_like(ys).at[2, 1].set(1.0)
    fd = jnp.sum(last_analysis(0.5, ys + e)) - jnp.sum(eager)
    np.testing.assert_allclose(g[2, 1], fd, atol=1e-8)
    assert np.isfinite(gx) and gx != 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"B": jnp.array([[1.0, 1.0], [1.0, 1.0]])}, "singular"),
        ({"B": jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]])}, "NaN"),
        ({"B": jnp.array([1.0, -1.0])}, "finite and > 0"),
        ({"B": jnp.ones((2, 3))}, "matrix"),
        ({"B": jnp.eye(2), "xB": 0.0}, "xB"),
        ({"B": jnp.eye(2), "xB": -1.0}, "xB"),
        ({"B": jnp.eye(2), "xB": float("nan")}, "xB"),
        ({}, "exactly one"),
        ({"B": jnp.eye(2), "B_sqrt": jnp.eye(2)}, "exactly one"),
        ({"B": jnp.eye(2), "n_iter": 0}, "n_iter"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Var3D(**kwargs)


def test_bad_input_at_trace_time():
    model = fxp.Model(lambda x, a, b: x, fxp.IdentityObs(), 1.0)
    with pytest.raises(ValueError, match="N_x"):
        Var3D(jnp.eye(2)).init(jax.random.key(0), jnp.zeros(3), model)
    with pytest.raises(ValueError, match="not an ensemble|state vector"):
        Var3D(jnp.eye(2)).init(jax.random.key(0), jnp.zeros((4, 2)), model)
    with pytest.raises(ValueError, match="no observation"):
        variational_analysis(
            lambda x: x[None],
            jnp.zeros(2),
            background_sqrt(jnp.ones(2)),
            jnp.full((1, 2), jnp.nan),
            1.0,
        )
    with pytest.raises(ValueError, match="shape"):
        variational_analysis(
            lambda x: x[None], jnp.zeros(2), background_sqrt(jnp.ones(3)), jnp.ones((1, 2)), 1.0
        )
    # a traced NaN xB raises at run time instead of a plausible NaN analysis
    method = Var3D(jnp.eye(2))
    state = method.init(jax.random.key(0), jnp.zeros(2), model)

    def go(xb):
        m = Var3D(jnp.eye(2), xB=xb)
        t0, t1 = jnp.asarray(0.0), jnp.asarray(1.0)
        return m.step(jax.random.key(0), state, model, t0, t1, jnp.ones(2))[1].analysis_mean

    with pytest.raises(Exception, match="xB"):
        jax.jit(go)(jnp.nan)


def test_rank_deficient_b_through_sqrt():
    # A rank-1 B is refused as B but fine as its square root: the increment stays in range(U).
    u = jnp.array([[1.0], [2.0]])
    with pytest.raises(ValueError, match="singular"):
        Var3D(u @ u.T)
    res = jax.jit(
        lambda y: variational_analysis(
            lambda x: x[None], jnp.zeros(2), background_sqrt(B_sqrt=u), y, 1.0
        )
    )(jnp.ones((1, 2)))
    # closed form: x = u (1 + u^T u)^{-1} u^T y
    np.testing.assert_allclose(res.analysis, (u @ (u.T @ jnp.ones(2)) / 6.0), atol=1e-10)
