"""Kuramoto–Sivashinsky: ETD-RK4 against a numpy re-implementation and a fine RK4 solve."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.zoo import KuramotoSivashinsky, rk4_step


def _numpy_etdrk4(u, n, length, h, n_steps):
    """kursiv.m (Kassam & Trefethen 2005) in numpy: complex FFT, full-circle contour of 32
    points — a different code path from the package's rfft / half-circle implementation."""
    k = np.concatenate([np.arange(0, n // 2), [0], np.arange(-n // 2 + 1, 0)]) * (
        2 * np.pi / length
    )
    lin = k**2 - k**4
    e, e2 = np.exp(h * lin), np.exp(h * lin / 2)
    m = 32
    r = np.exp(2j * np.pi * (np.arange(1, m + 1) - 0.5) / m)
    lr = h * lin[:, None] + r[None, :]
    q = h * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = h * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, axis=1))
    f2 = h * np.real(np.mean((2 + lr + np.exp(lr) * (-2 + lr)) / lr**3, axis=1))
    f3 = h * np.real(np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, axis=1))
    g = -0.5j * k

    def nonlinear(v):
        return g * np.fft.fft(np.real(np.fft.ifft(v)) ** 2)

    v = np.fft.fft(u)
    for _ in range(n_steps):
        nv = nonlinear(v)
        a = e2 * v + q * nv
        na = nonlinear(a)
        b = e2 * v + q * na
        nb = nonlinear(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlinear(c)
        v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
    return np.real(np.fft.ifft(v))


def test_agrees_with_numpy_kassam_trefethen_reimplementation():
    model = KuramotoSivashinsky(n=64, length=22.0, dt=0.25)
    u0 = np.asarray(model.initial_condition())
    got = model(jnp.asarray(u0), 0.0, 10.0)  # 40 steps
    want = _numpy_etdrk4(u0, 64, 22.0, 0.25, 40)
    # Same scheme, different FFTs and contour bookkeeping: differences are round-off (~1e-14)
    # amplified by at most e^{10 * 0.05} over 10 time units; 1e-10 is a loose bound.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_etdrk4_converges_to_a_fine_rk4_solution_of_the_rhs():
    # An independent check of the scheme against the PDE: RK4 on the semi-discrete rhs with
    # step 1e-3 (stable: |h lambda_max| = 1e-3 * 336 < 2.8; halving it changes the result by
    # 2e-13) is the reference over 2 time units.
    u0 = KuramotoSivashinsky(n=32, length=22.0, dt=0.05).initial_condition()
    rhs = KuramotoSivashinsky(n=32, length=22.0).rhs
    fine_dt = 1e-3

    def body(u, i):
        return rk4_step(rhs, u, i * fine_dt, fine_dt), None

    reference, _ = jax.lax.scan(body, u0, jnp.arange(2000))
    scale = float(jnp.max(jnp.abs(reference)))

    def error(dt):
        etd = KuramotoSivashinsky(n=32, length=22.0, dt=dt)(u0, 0.0, 2.0)
        return float(jnp.max(jnp.abs(etd - reference))) / scale

    coarse, fine = error(0.05), error(0.025)
    # Measured 5.7e-7 at dt=0.05 (Kassam & Trefethen's Fig. 4 magnitude); a wrong
    # coefficient or sign gives O(1e-2).
    assert coarse < 5e-6
    # Fourth order: halving dt divides the error by 16 asymptotically (measured 10.3 in this
    # pre-asymptotic range); a second-order slip would give ~4.
    assert coarse / fine > 8.0


def test_spatial_mean_is_conserved_to_roundoff():
    model = KuramotoSivashinsky(n=64, length=22.0, dt=0.25)
    u0 = jnp.asarray(np.random.default_rng(0).standard_normal(64)) * 0.5
    u0 = u0 - u0.mean() + 0.3
    u = model(u0, 0.0, 100.0)  # 400 steps
    # The k=0 mode is multiplied by exactly 1 and receives exactly 0 nonlinear forcing; only
    # FFT round-off (~1e-16 per step) can move the mean.
    assert abs(float(u.mean()) - 0.3) < 1e-12
    assert float(jnp.std(u)) > 0.5  # the field itself did evolve (not a trivial pass)


def test_stays_bounded_with_typical_amplitude_after_spinup():
    model = KuramotoSivashinsky()  # n=128, L=32 pi, dt=0.5: Bocquet & Farchi (2019)
    u = model(model.initial_condition(), 0.0, 300.0)  # 600 ETD-RK4 steps of spin-up
    amplitudes = []
    for k in range(4):
        u = model(u, 300.0 + 25.0 * k, 300.0 + 25.0 * (k + 1))
        amplitudes.append(float(jnp.max(jnp.abs(u))))
    # On the attractor |u| stays below ~3 for L = 32 pi (Kassam & Trefethen, Fig. 5) and the
    # dynamics neither blows up nor decays to a steady state.
    assert all(1.5 < a < 4.0 for a in amplitudes)


def test_float32_runs_in_float32_and_tracks_float64_briefly():
    model = KuramotoSivashinsky(n=64, length=22.0, dt=0.25)
    u0 = model.initial_condition()
    u64 = model(u0, 0.0, 5.0)
    u32 = model(u0.astype(jnp.float32), 0.0, 5.0)
    assert u32.dtype == jnp.float32
    # float32 round-off (6e-8) grows little over 20 steps of a weakly unstable flow.
    np.testing.assert_allclose(u32, u64, atol=1e-4)


def test_grid_and_initial_condition_follow_kassam_trefethen():
    model = KuramotoSivashinsky()
    x = np.asarray(model.grid)
    assert x.shape == (128,)
    assert x[-1] == pytest.approx(32 * math.pi)
    assert x[1] - x[0] == pytest.approx(32 * math.pi / 128)
    np.testing.assert_allclose(
        model.initial_condition(), np.cos(x / 16) * (1 + np.sin(x / 16)), atol=1e-14
    )


def test_grad_through_a_few_steps_is_finite_and_matches_finite_differences():
    model = KuramotoSivashinsky(n=32, length=22.0, dt=0.25)
    u0 = model.initial_condition()

    @jax.jit
    def loss(u):
        return jnp.sum(model(u, 0.0, 1.0) ** 3)

    grad = jax.grad(loss)(u0)
    direction = jnp.asarray(np.random.default_rng(4).standard_normal(32))
    eps = 1e-6
    fd = (loss(u0 + eps * direction) - loss(u0 - eps * direction)) / (2 * eps)
    # Central differences in float64: O(eps^2) truncation, far below the 1e-6 tolerance.
    assert float(grad @ direction) == pytest.approx(float(fd), rel=1e-6)


@pytest.mark.parametrize("n", [2, 63])
def test_needs_an_even_number_of_points_at_least_four(n):
    with pytest.raises(ValueError, match="even number of grid points"):
        KuramotoSivashinsky(n=n)


def test_rejects_nonpositive_length_and_wrong_state():
    with pytest.raises(ValueError, match="length"):
        KuramotoSivashinsky(length=0.0)
    with pytest.raises(ValueError, match="one state vector"):
        KuramotoSivashinsky(n=16, length=22.0)(jnp.zeros(32), 0.0, 0.5)
