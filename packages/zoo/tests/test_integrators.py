"""Integrators and the shared time-stepping contract of every zoo system."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.zoo import (
    BrownianMotion,
    DoubleWell,
    KuramotoSivashinsky,
    LinearAdvection,
    LinearModel,
    Lorenz63,
    Lorenz96,
    Lorenz96TwoScale,
    OrnsteinUhlenbeck,
    Sinusoid,
    euler_step,
    rk4_step,
)

L63_X0 = np.array([1.509, -1.531, 25.46])


def _l96_state(n=40):
    return 8.0 + np.sin(np.arange(n))


# (id, model factory, initial state, observation interval): every system in the zoo.
SYSTEMS = [
    ("lorenz63", lambda: Lorenz63(), L63_X0, 0.25),
    ("lorenz96", lambda: Lorenz96(n=12), _l96_state(12), 0.1),
    (
        "lorenz96_two_scale",
        lambda: Lorenz96TwoScale(n_slow=4, n_fast=3),
        np.linspace(-1.0, 1.0, 16),
        0.02,
    ),
    (
        "kuramoto_sivashinsky",
        lambda: KuramotoSivashinsky(n=32, length=22.0, dt=0.25),
        np.cos(2 * np.pi * np.arange(32) / 32) + 0.1,
        1.0,
    ),
    (
        "linear_model",
        lambda: LinearModel(0.9 * np.eye(5) + 0.05 * np.ones((5, 5))),
        np.arange(5.0),
        3.0,
    ),
    ("linear_advection", lambda: LinearAdvection(n=8, speed=0.7), np.sin(np.arange(8.0)), 2.5),
    ("sinusoid", lambda: Sinusoid(frequency=1.3), np.array([1.0, 0.5]), 0.7),
    ("double_well", lambda: DoubleWell(), np.array([0.3, -0.5, 0.01]), 0.5),
    ("ornstein_uhlenbeck", lambda: OrnsteinUhlenbeck(theta=0.8, mu=0.5), np.ones(3), 0.4),
    ("brownian_motion", lambda: BrownianMotion(sigma=0.3), np.ones(3), 0.4),
]
IDS = [s[0] for s in SYSTEMS]


def _rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_rk4_step_is_the_degree_4_taylor_polynomial_on_linear_odes():
    # For dx/dt = lam x one RK4 step multiplies by 1 + z + z^2/2 + z^3/6 + z^4/24 (z = lam h):
    # an algebraic identity, so float64 round-off is the only error.
    lam, h = -1.7, 0.3
    z = lam * h
    got = rk4_step(lambda x, t: lam * x, jnp.array([2.0]), 0.0, h)
    want = 2.0 * (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24)
    assert float(got[0]) == pytest.approx(want, rel=1e-14)
    assert float(euler_step(lambda x, t: lam * x, jnp.array([2.0]), 0.0, h)[0]) == pytest.approx(
        2.0 * (1 + z), rel=1e-14
    )


def test_rk4_uses_the_stage_times_of_a_nonautonomous_field():
    # dx/dt = t^3 is integrated exactly by RK4 (Simpson's rule is exact for cubics).
    got = rk4_step(lambda x, t: jnp.full_like(x, t**3), jnp.array([0.0]), 1.0, 0.5)
    assert float(got[0]) == pytest.approx((1.5**4 - 1.0) / 4, rel=1e-14)


@pytest.mark.parametrize(
    "stepper, order, lo, hi",
    # Halving dt divides the global error by 2^p: 16 for RK4 and 2 for Euler. The windows
    # leave room for the higher-order terms still present at these step sizes.
    [(rk4_step, 4, 14.0, 18.0), (euler_step, 1, 1.8, 2.2)],
)
def test_order_of_convergence_on_lorenz63(stepper, order, lo, hi):
    model = Lorenz63()
    x0 = jnp.asarray(L63_X0)
    horizon = 0.5

    def solve(dt):
        n = round(horizon / dt)

        def body(x, i):
            return stepper(model.rhs, x, i * dt, dt), None

        return jax.lax.scan(body, x0, jnp.arange(n))[0]

    base = 0.01 if order == 4 else 1e-4
    reference = solve(base / 64) if order == 4 else solve(base / 32)
    err_coarse = float(jnp.linalg.norm(solve(base) - reference))
    err_fine = float(jnp.linalg.norm(solve(base / 2) - reference))
    assert lo < err_coarse / err_fine < hi


@pytest.mark.parametrize("name, make, x0, interval", SYSTEMS, ids=IDS)
def test_call_inside_jitted_scan_with_traced_times_matches_concrete_calls(name, make, x0, interval):
    # The StateSpaceModel/filters contract: model(x, t, t + dt_obs) with t traced in a scan.
    model = make()
    x0 = jnp.asarray(x0)
    n_windows = 3

    @jax.jit
    def scanned(x):
        def body(x, k):
            t = k * interval
            return model(x, t, t + interval), None

        return jax.lax.scan(body, x, jnp.arange(n_windows, dtype=x.dtype))[0]

    expected = x0
    for k in range(n_windows):
        expected = model(expected, k * interval, (k + 1) * interval)
    # Same steps in the same order; only XLA's fusion choices differ, hence 1e-10.
    np.testing.assert_allclose(scanned(x0), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name, make, x0, interval", SYSTEMS, ids=IDS)
def test_vmap_over_an_ensemble_matches_member_by_member(name, make, x0, interval):
    model = make()
    ensemble = jnp.asarray(x0)[None, :] + 0.1 * jnp.arange(4.0)[:, None]
    batched = jax.jit(jax.vmap(model, in_axes=(0, None, None)), static_argnums=(1, 2))(
        ensemble, 0.0, interval
    )
    for i in range(4):
        np.testing.assert_allclose(
            batched[i], model(ensemble[i], 0.0, interval), rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("name, make, x0, interval", SYSTEMS, ids=IDS)
def test_float32_states_stay_float32_and_agree_with_float64(name, make, x0, interval):
    model = make()
    x64 = jnp.asarray(x0, jnp.float64)
    out32 = model(x64.astype(jnp.float32), 0.0, interval)
    out64 = model(x64, 0.0, interval)
    assert out32.dtype == jnp.float32
    assert out64.dtype == jnp.float64
    # float32 round-off (~1e-7) amplified by at most a few dozen steps of the dynamics.
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, make, x0, interval", SYSTEMS, ids=IDS)
def test_step_and_integrate_agree_with_call(name, make, x0, interval):
    model = make()
    x0 = jnp.asarray(x0)
    n = 3
    np.testing.assert_allclose(
        model.step(x0, 0.0), model(x0, 0.0, model.dt), rtol=1e-12, atol=1e-12
    )
    if hasattr(model, "integrate"):
        np.testing.assert_allclose(
            model.integrate(x0, n), model(x0, 0.0, n * model.dt), rtol=1e-12, atol=1e-12
        )


# Systems whose state length is fixed by their configuration (the pointwise toy systems, e.g.
# DoubleWell and OU, accept any length by design and are left out).
FIXED_SIZE_SYSTEMS = [s for s in SYSTEMS if getattr(s[1](), "state_size", None) is not None]


@pytest.mark.parametrize(
    "name, make, x0, interval", FIXED_SIZE_SYSTEMS, ids=[s[0] for s in FIXED_SIZE_SYSTEMS]
)
def test_wrong_state_shape_raises_a_helpful_error(name, make, x0, interval):
    model = make()
    size = model.state_size
    with pytest.raises(ValueError, match="one state vector of shape"):
        model(jnp.zeros(size + 1), 0.0, interval)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Lorenz63(dt=0.0),
        lambda: Lorenz96(dt=-0.05),
        lambda: Lorenz96TwoScale(dt=0.0),
        lambda: KuramotoSivashinsky(dt=0.0),
        lambda: LinearModel(np.eye(2), dt=-1.0),
        lambda: LinearAdvection(dt=0.0),
        lambda: Sinusoid(dt=0.0),
        lambda: DoubleWell(dt=math.inf),
        lambda: OrnsteinUhlenbeck(dt=0.0),
        lambda: BrownianMotion(dt=-1.0),
    ],
)
def test_nonpositive_dt_raises(make):
    with pytest.raises(ValueError, match="dt"):
        make()


def test_integer_state_raises_type_error():
    # (Under the test suite's jaxtyping hook the annotation check fires first; both are
    # TypeErrors that say a float array is needed.)
    with pytest.raises(TypeError):
        Lorenz63()(jnp.array([1, 2, 3]), 0.0, 0.01)


def test_interval_that_is_not_a_whole_number_of_steps_raises():
    with pytest.raises(ValueError, match="whole number of model steps"):
        Lorenz63()(jnp.asarray(L63_X0), 0.0, 0.015)
    with pytest.raises(ValueError, match="whole number of model steps"):
        Lorenz63()(jnp.asarray(L63_X0), 1.0, 0.0)


def test_zero_interval_is_the_identity_concrete_and_traced():
    model = Lorenz96(n=8)
    x0 = jnp.asarray(_l96_state(8))
    np.testing.assert_array_equal(model(x0, 0.3, 0.3), x0)
    np.testing.assert_array_equal(jax.jit(model)(x0, 0.3, 0.3), x0)


def test_traced_interval_is_rounded_to_whole_steps():
    # 0.25 + 3e-4 is 25.03 steps of 0.01: the traced path rounds to 25 like the concrete one.
    model = Lorenz63()
    x0 = jnp.asarray(L63_X0)
    traced = jax.jit(model)(x0, 0.0, 0.25 + 3e-4)
    np.testing.assert_allclose(traced, model(x0, 0.0, 0.25), rtol=1e-12)


def test_grad_through_traced_time_scan_matches_concrete_path_and_finite_differences():
    # Reverse mode through the checkpointed while loop (traced t) and through the static
    # scan (concrete t) must give the same gradient, equal to central differences.
    model = Lorenz96(n=10)
    x0 = jnp.asarray(_l96_state(10))

    def loss_traced(x, forcing):
        m = Lorenz96(n=10, forcing=forcing)

        def body(x, k):
            t = 0.1 * k
            return m(x, t, t + 0.1), None

        x, _ = jax.lax.scan(body, x, jnp.arange(3.0))
        return jnp.sum(x**2)

    def loss_concrete(x, forcing):
        m = Lorenz96(n=10, forcing=forcing)
        for k in range(3):
            x = m(x, 0.1 * k, 0.1 * (k + 1))
        return jnp.sum(x**2)

    loss_concrete = jax.jit(loss_concrete)
    g_traced = jax.jit(jax.grad(loss_traced, argnums=(0, 1)))(x0, 8.0)
    g_concrete = jax.jit(jax.grad(loss_concrete, argnums=(0, 1)))(x0, 8.0)
    np.testing.assert_allclose(g_traced[0], g_concrete[0], rtol=1e-10)
    np.testing.assert_allclose(g_traced[1], g_concrete[1], rtol=1e-10)
    assert np.all(np.isfinite(g_traced[0]))
    # Central differences have O(eps^2) truncation and O(1e-16/eps) round-off: 1e-6 is ample.
    eps = 1e-6
    direction = jnp.asarray(np.random.default_rng(0).standard_normal(10))
    fd = (loss_concrete(x0 + eps * direction, 8.0) - loss_concrete(x0 - eps * direction, 8.0)) / (
        2 * eps
    )
    assert float(g_traced[0] @ direction) == pytest.approx(float(fd), rel=1e-6)
    fd_forcing = (loss_concrete(x0, 8.0 + eps) - loss_concrete(x0, 8.0 - eps)) / (2 * eps)
    assert float(g_traced[1]) == pytest.approx(float(fd_forcing), rel=1e-6)
    assert model.n == 10


def test_forward_mode_works_with_a_concrete_interval():
    # jacfwd (tangent-linear model) needs the static-length scan path; check it against jacrev.
    model = Lorenz63()
    x0 = jnp.asarray(L63_X0)
    jac_fwd = jax.jacfwd(lambda x: model(x, 0.0, 0.1))(x0)
    jac_rev = jax.jacrev(lambda x: model(x, 0.0, 0.1))(x0)
    np.testing.assert_allclose(jac_fwd, jac_rev, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make, x0",
    [
        (lambda s: Lorenz63(solver=s), L63_X0),
        (lambda s: Lorenz96(n=12, dt=0.01, solver=s), _l96_state(12)),
        (lambda s: DoubleWell(solver=s), np.array([0.3, -0.5])),
    ],
)
def test_diffrax_solver_agrees_with_rk4(make, x0):
    # Over 20 steps of dt the two schemes differ by their truncation errors, O(dt^4) for RK4
    # (measured 5e-6 relative on Lorenz-96 at dt=0.01 from this strongly forced state, 3e-7
    # on Lorenz-63, 6e-9 on the double well); 5e-5 leaves margin and still catches a wrong
    # step size or vector field, which give O(1e-2) or larger discrepancies.
    x0 = jnp.asarray(x0)
    rk4, tsit5 = make(None), make(diffrax.Tsit5())
    horizon = 20 * rk4.dt
    assert _rel_err(tsit5(x0, 0.0, horizon), rk4(x0, 0.0, horizon)) < 5e-5


def test_diffrax_path_step_integrate_and_traced_times():
    rk4, tsit5 = Lorenz63(), Lorenz63(solver=diffrax.Tsit5())
    x0 = jnp.asarray(L63_X0)

    @jax.jit
    def run(x):
        def body(x, k):
            t = k * 0.1
            return tsit5(x, t, t + 0.1), None

        return tsit5.step(x), tsit5.integrate(x, 4), jax.lax.scan(body, x, jnp.arange(2.0))[0]

    step, integrated, scanned = run(x0)
    assert _rel_err(step, rk4.step(x0)) < 5e-5
    assert _rel_err(integrated, rk4.integrate(x0, 4)) < 5e-5
    assert _rel_err(scanned, rk4(x0, 0.0, 0.2)) < 5e-5
