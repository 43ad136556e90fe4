"""The 1-D heat equation, the backward heat problem and Darcy against exact solutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.zoo import Darcy1D, HeatEquation1D, HeatInverse1D, presets


@pytest.mark.parametrize("k", [1, 3, 7])
def test_heat_equation_sine_modes_decay_exactly(k):
    # sin(k pi x_j) is an eigenvector of the discrete Laplacian: the flow multiplies it by
    # exp(-kappa lambda_k t) to round-off (1e-12), and lambda_k = (k pi)^2 + O(h^2): the
    # continuous decay exp(-kappa (k pi)^2 t) is matched to (k pi h)^2 / 12 relative.
    model = HeatEquation1D(n=63, diffusivity=0.1)
    x = model.grid
    u0 = jnp.sin(k * jnp.pi * x)
    t = 0.3
    u = model(u0, 0.0, t)
    lam = 4.0 * 64**2 * np.sin(k * np.pi / 128) ** 2
    np.testing.assert_allclose(u, np.exp(-0.1 * lam * t) * u0, rtol=0, atol=1e-12)
    continuous = np.exp(-0.1 * (k * np.pi) ** 2 * t)
    h = 1.0 / 64
    rel = 0.1 * t * (k * np.pi) ** 4 * h**2 / 12 * 1.5  # |d decay| with 50% margin
    assert abs(float(u[10] / u0[10]) - continuous) <= rel * continuous + 1e-14


def test_heat_flow_is_a_semigroup_matches_rhs_and_is_differentiable():
    model = HeatEquation1D(n=15, diffusivity=0.2)
    u0 = jnp.linspace(-1.0, 1.0, 15) ** 2
    np.testing.assert_allclose(
        model(model(u0, 0.0, 0.1), 0.1, 0.25), model(u0, 0.0, 0.25), rtol=0, atol=1e-13
    )
    # d/dt of the flow at t = 0 is the finite-difference right-hand side (central
    # difference in t with step 1e-6: error ~ 1e-12 * |u'''|, so 1e-5 relative).
    eps = 1e-6
    dudt = (model(u0, 0.0, eps) - model(u0, 0.0, -eps)) / (2 * eps)
    np.testing.assert_allclose(dudt, model.rhs(u0), rtol=1e-5, atol=1e-6)
    # The diffusivity is dynamic: d u(t)/d kappa = t * Laplacian u(t) for the exact flow.
    grad = jax.jacfwd(lambda kap: HeatEquation1D(n=15, diffusivity=kap)(u0, 0.0, 0.1))(0.2)
    u_t = model(u0, 0.0, 0.1)
    np.testing.assert_allclose(grad, 0.1 * model.rhs(u_t) / 0.2, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="diffusivity"):
        HeatEquation1D(diffusivity=-1.0)
    with pytest.raises(ValueError, match="n >= 2"):
        HeatEquation1D(n=1)


def test_heat_inverse_forward_is_the_exact_solution_at_the_sensors():
    # The closed form against the heat equation's exact semi-discrete flow on a fine grid
    # (n = 999, h = 1e-3): the decay rate's error kappa t (k pi)^4 h^2 / 12 is at most
    # ~2e-4 relative (k = 8, t = 0.05) on terms of size <= 0.1, hence 1e-5 absolute.
    g = presets.heat1d_initial_condition()
    theta = jnp.linspace(1.0, -1.0, 8)
    fine = HeatEquation1D(n=999, diffusivity=0.1)
    u0 = g.initial_condition(theta, fine.grid)
    index = np.round(np.asarray(g.sensors) * 1000).astype(int) - 1
    rows = [np.asarray(fine(u0, 0.0, t))[index] for t in np.asarray(g.times)]
    np.testing.assert_allclose(g(theta), np.concatenate(rows), rtol=0, atol=1e-5)
    np.testing.assert_allclose(g(theta), g.matrix() @ theta, rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="inside"):
        HeatInverse1D(jnp.array([0.0, 0.5]), jnp.array([0.1]), n_modes=2)
    with pytest.raises(ValueError, match="times"):
        HeatInverse1D(jnp.array([0.5]), jnp.array([-0.1]), n_modes=2)


def test_darcy_constant_permeability_has_the_closed_form():
    # kappa = exp(c) constant: u = x (1 - x) / (2 kappa), which the scheme reproduces exactly
    # at the nodes (second differences of a quadratic are exact): round-off only, 1e-12.
    g = presets.darcy1d_kl()
    x = np.asarray(g.nodes)
    np.testing.assert_allclose(g(jnp.zeros(8)), x * (1 - x) / 2, rtol=0, atol=1e-12)
    const = Darcy1D(jnp.ones((1, 64)), (0, 20, 40, 62))
    x = np.array([1, 21, 41, 63]) / 64
    np.testing.assert_allclose(
        const(jnp.array([0.7])), x * (1 - x) / (2 * np.exp(0.7)), rtol=1e-12, atol=0
    )
    with pytest.raises(ValueError, match="obs_index"):
        Darcy1D(jnp.ones((1, 8)), (7,))


def test_darcy_variable_permeability_matches_the_integral_solution():
    # For -(kappa u')' = 1, u(0) = u(1) = 0: u(x) = int_0^x (c - s) / kappa(s) ds with c
    # fixed by u(1) = 0. Midpoint quadrature on the same cells is exactly what the scheme's
    # flux form computes to O(h^2); 128 cells and a smooth kappa: 2e-5 relative.
    g = presets.darcy1d_kl()
    theta = jnp.array([0.8, -0.5, 0.3, 0.0, 0.2, -0.1, 0.0, 0.1])
    n = g.modes.shape[1]
    kappa = np.exp(np.asarray(theta @ g.modes))
    s = (np.arange(n) + 0.5) / n
    c = np.sum(s / kappa) / np.sum(1 / kappa)
    u = np.concatenate([[0.0], np.cumsum((c - s) / kappa / n)])
    u_nodes = u[1:-1][np.asarray(g.obs_index)]
    np.testing.assert_allclose(g(theta), u_nodes, rtol=2e-5, atol=0)


def test_heat1d_preset_simulates(getkey):
    ssm = presets.heat1d_sensors()
    xp = ssm.simulate(getkey(), 20)
    assert xp.truth.shape == (20, 63) and xp.observations.shape == (20, 4)
    # Observations are the truth at the sensors plus N(0, 0.01) noise (4 x 20 draws: 5 sd).
    resid = np.asarray(xp.observations - xp.truth[:, np.array([12, 25, 37, 50])]).ravel()
    assert abs(resid.var() - 0.01) < 5 * 0.01 * np.sqrt(2 / resid.size)
