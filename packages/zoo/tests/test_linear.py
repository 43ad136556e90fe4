"""LinearModel (with the VI-paper random stable matrix) and LinearAdvection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.zoo import LinearAdvection, LinearModel, random_process_covariance


def test_random_stable_is_symmetric_with_the_papers_spectral_radius(getkey):
    key = getkey()
    model = LinearModel.random_stable(key, n=40)
    a = np.asarray(model.matrix)
    assert a.shape == (40, 40)
    np.testing.assert_array_equal(a, a.T)
    radius = np.max(np.abs(np.linalg.eigvalsh(a)))
    # Independent recomputation of the recipe (Bach et al. 2025, §3.2) with numpy:
    # A = W' / (lambda_max + 1/10) since rescaling all eigenvalues is a scalar division.
    w = np.asarray(jax.random.normal(key, (40, 40)))
    w_sym = 0.5 * (w + w.T)
    lam_max = np.max(np.abs(np.linalg.eigvalsh(w_sym)))
    np.testing.assert_allclose(a, w_sym / (lam_max + 0.1), atol=1e-12)
    assert radius == pytest.approx(lam_max / (lam_max + 0.1), rel=1e-12)
    assert radius < 1.0


def test_random_stable_is_reproducible_and_seed_dependent(getkey):
    key = getkey()
    a1 = LinearModel.random_stable(key).matrix
    a2 = LinearModel.random_stable(key).matrix
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, LinearModel.random_stable(getkey()).matrix)


def test_random_stable_model_decays_to_zero(getkey):
    model = LinearModel.random_stable(getkey(), n=40)
    x = model(jnp.ones(40), 0.0, 200.0)
    # Spectral radius lam/(lam + 0.1) with lam ~ 2 sqrt(40/2) ~ 9: ~0.989^200 ~ 0.1 at most.
    assert float(jnp.linalg.norm(x)) < 0.5 * float(jnp.linalg.norm(jnp.ones(40)))


def test_linear_model_applies_the_matrix_once_per_step():
    a = np.array([[0.9, 0.2], [-0.1, 0.8]])
    model = LinearModel(a)
    x0 = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(
        model(x0, 0.0, 5.0), np.linalg.matrix_power(a, 5) @ np.asarray(x0), rtol=1e-14
    )
    np.testing.assert_allclose(model.step(x0), a @ np.asarray(x0), rtol=1e-15)
    # dt scales model time: with dt=0.5, the interval [0, 1.5] is three applications.
    np.testing.assert_allclose(
        LinearModel(a, dt=0.5)(x0, 0.0, 1.5),
        np.linalg.matrix_power(a, 3) @ np.asarray(x0),
        rtol=1e-14,
    )


def test_linear_model_is_differentiable_in_the_matrix():
    # d/dA of sum(A @ A @ x) is known in closed form: 1 (A x)^T + A^T 1 x^T.
    a = jnp.array([[0.5, 0.1], [0.2, 0.3]])
    x = jnp.array([1.0, 2.0])
    grad = jax.grad(lambda m: jnp.sum(LinearModel(m)(x, 0.0, 2.0)))(a)
    ones = jnp.ones(2)
    want = jnp.outer(ones, a @ x) + jnp.outer(a.T @ ones, x)
    np.testing.assert_allclose(grad, want, rtol=1e-14)


@pytest.mark.parametrize("bad", [np.ones((2, 3)), np.ones(4), np.ones((2, 2, 2))])
def test_linear_model_rejects_non_square_matrices(bad):
    with pytest.raises(ValueError, match="square"):
        LinearModel(bad)


def test_random_process_covariance_is_the_papers_spd_matrix(getkey):
    key = getkey()
    sigma = np.asarray(random_process_covariance(key, n=40))
    np.testing.assert_allclose(sigma, sigma.T, atol=1e-14)
    # Q Q^T is PSD, so every eigenvalue is at least the 1/10 jitter.
    assert np.min(np.linalg.eigvalsh(sigma)) >= 0.1 - 1e-10
    q = 0.5 * np.asarray(jax.random.normal(key, (40, 40)))
    np.testing.assert_allclose(sigma, q @ q.T + 0.1 * np.eye(40), atol=1e-12)


def test_advection_by_whole_cells_is_an_exact_roll():
    model = LinearAdvection(n=12)  # unit spacing, speed 1: one cell per unit time
    u = jnp.asarray(np.random.default_rng(0).standard_normal(12))
    # Only FFT round-off separates the spectral shift from the index permutation.
    np.testing.assert_allclose(model(u, 0.0, 5.0), jnp.roll(u, 5), atol=1e-13)
    np.testing.assert_allclose(model.step(u), jnp.roll(u, 1), atol=1e-13)
    np.testing.assert_allclose(
        LinearAdvection(n=12, speed=-2.0)(u, 1.0, 2.0), jnp.roll(u, -2), atol=1e-13
    )


def test_advection_of_a_band_limited_signal_is_exact_for_any_shift():
    n, length, speed = 32, 2 * np.pi, 0.37
    x = length * np.arange(n) / n
    model = LinearAdvection(n=n, speed=speed, length=length)
    u0 = jnp.asarray(np.sin(3 * x) + 0.5 * np.cos(5 * x))
    t = 1.234
    want = np.sin(3 * (x - speed * t)) + 0.5 * np.cos(5 * (x - speed * t))
    np.testing.assert_allclose(model(u0, 0.0, t), want, atol=1e-13)
    # rhs = -c u_x exactly for a band-limited signal.
    du = -speed * (3 * np.cos(3 * x) - 2.5 * np.sin(5 * x))
    np.testing.assert_allclose(model.rhs(u0), du, atol=1e-12)


def test_advection_works_with_traced_times_and_is_differentiable_in_speed():
    n = 16
    x = 2 * np.pi * np.arange(n) / n
    u0 = jnp.asarray(np.sin(x))
    model = LinearAdvection(n=n, length=2 * np.pi)

    @jax.jit
    def final(speed, t0, t1):
        return LinearAdvection(n=n, speed=speed, length=2 * np.pi)(u0, t0, t1)

    np.testing.assert_allclose(final(0.5, 0.2, 1.2), np.sin(x - 0.5), atol=1e-13)
    # d/dc sin(x - c t) = -t cos(x - c t).
    grad = jax.grad(lambda c: final(c, 0.0, 2.0)[3])(0.5)
    assert float(grad) == pytest.approx(-2.0 * np.cos(x[3] - 1.0), rel=1e-10)
    assert model.state_size == n


def test_advection_rejects_bad_configuration():
    with pytest.raises(ValueError, match="n >= 2"):
        LinearAdvection(n=1)
    with pytest.raises(ValueError, match="length"):
        LinearAdvection(n=8, length=-1.0)
    with pytest.raises(ValueError, match="one state vector"):
        LinearAdvection(n=8)(jnp.zeros(9), 0.0, 1.0)
