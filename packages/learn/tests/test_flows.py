"""Conditional coupling flows, the EnKF normaliser and fit_conditional_flow, against
independent references: change of variables with slogdet(jacfwd), numpy Gaussian
conditioning, the grid posterior of the x^2 problem."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from filterax.learn import (
    AffineCoupling,
    ConditionalFlow,
    RationalQuadraticSplineCoupling,
    conditional_flow,
    enkf_normaliser,
    fit_conditional_flow,
)

KINDS = ("spline", "affine")


def _randomise(flow, key, scale=0.4):
    """Perturb every trainable leaf, so the layers are far from the identity."""
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    leaves, tdef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        leaf + scale * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return eqx.combine(jax.tree_util.tree_unflatten(tdef, leaves), static)


def _normaliser(key, n_x, n_y):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (40, n_x))
    y = x[:, :n_y] ** 2 + jax.random.normal(k2, (40, n_y)) + 0.5 * jax.random.normal(k3, (1, 1))
    return enkf_normaliser(x, y)


def _flow(key, kind, n_x, n_y):
    k1, k2, k3 = jax.random.split(key, 3)
    flow = conditional_flow(k1, n_x, n_y, n_layers=2, kind=kind, width=8, normaliser=True)
    flow = _randomise(flow, k2)
    return eqx.tree_at(lambda f: f.layers[0], flow, _normaliser(k3, n_x, n_y))


# Points inside [-4, 4], at the spline interval's edges and beyond (identity region).
X_POINTS = jnp.array([[0.3, -1.2, 2.0], [4.0, -4.0, 0.0], [5.5, -0.7, -6.0]])


@pytest.mark.parametrize(("kind", "n_x"), [("spline", 2), ("affine", 1)])
def test_inverse_of_forward_and_logdet_against_slogdet(getkey, kind, n_x):
    n_y = 2
    flow = _flow(getkey(), kind, n_x, n_y)
    y = jnp.array([0.5, -0.1])

    @eqx.filter_jit
    def quantities(flow, x):
        z, ld_inv = flow.inverse(x, y)
        x_back, ld_fwd = flow.forward(z, y)
        jac_inv = jax.jacfwd(lambda v: flow.inverse(v, y)[0])(x)
        jac_fwd = jax.jacfwd(lambda v: flow.forward(v, y)[0])(z)
        return z, ld_inv, x_back, ld_fwd, jac_inv, jac_fwd, flow.log_prob(x, y)

    for x in X_POINTS[:, :n_x]:
        z, ld_inv, x_back, ld_fwd, jac_inv, jac_fwd, log_prob = quantities(flow, x)
        # float64 round trip through 3 couplings + a triangular solve: ~1e-13 observed.
        np.testing.assert_allclose(x_back, x, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ld_inv + ld_fwd, 0.0, atol=1e-10)
        # Change of variables: log|det| of the Jacobian computed by forward-mode AD.
        np.testing.assert_allclose(ld_inv, jnp.linalg.slogdet(jac_inv)[1], atol=1e-8)
        np.testing.assert_allclose(ld_fwd, jnp.linalg.slogdet(jac_fwd)[1], atol=1e-8)
        # log_prob is log N(z; 0, I) + log|det dz/dx| (scipy's normal, slogdet of jacfwd).
        ref = scipy.stats.norm.logpdf(np.asarray(z)).sum() + jnp.linalg.slogdet(jac_inv)[1]
        np.testing.assert_allclose(log_prob, ref, rtol=1e-12)


def test_untrained_couplings_are_the_identity(getkey):
    flows = [conditional_flow(getkey(), 3, 2, n_layers=2, kind=kind, width=8) for kind in KINDS]
    z, y = jnp.array([0.1, -3.0, 7.0]), jnp.array([2.0, -1.0])
    for x, ld in eqx.filter_jit(lambda fs: [f.forward(z, y) for f in fs])(flows):
        np.testing.assert_array_equal(x, z)  # zero last layer => exactly the identity
        # log of the spline's unit derivative: 0 up to one rounding of log(num) - 2 log(den)
        np.testing.assert_allclose(ld, 0.0, atol=1e-14)


def test_normaliser_only_flow_is_the_gaussian_conditional(getkey):
    """With only the EnKF layer, log p(x | y) is the Gaussian conditional of the sample
    moments (numpy re-derivation, scipy's multivariate normal)."""
    k1, k2 = jax.random.split(getkey())
    xy = np.asarray(jax.random.normal(k1, (60, 4))) @ np.asarray(jax.random.normal(k2, (4, 4)))
    x, y = xy[:, :3], xy[:, 3:]
    norm = eqx.filter_jit(lambda a, b: enkf_normaliser(a, b, jitter=0.0))(x, y)
    cov = np.cov(xy.T)
    gain = cov[:3, 3:] @ np.linalg.inv(cov[3:, 3:])
    cond = cov[:3, :3] - gain @ cov[3:, :3]
    np.testing.assert_allclose(norm.gain, gain, rtol=1e-10)
    np.testing.assert_allclose(norm.chol @ norm.chol.T, cond, rtol=1e-10, atol=1e-12)
    flow = ConditionalFlow([norm])
    x0, y0 = x[0], y[0]
    mean = x.mean(0) + gain @ (y0 - y.mean(0))
    ref = scipy.stats.multivariate_normal(mean, cond).logpdf(x0)
    np.testing.assert_allclose(eqx.filter_jit(flow.log_prob)(x0, y0), ref, rtol=1e-10)


def test_normaliser_with_obs_noise_has_the_stochastic_enkf_gain(getkey):
    x = np.asarray(jax.random.normal(getkey(), (30, 3)))
    hx = np.stack([x[:, 0] ** 2, np.sin(x[:, 1])], axis=1)
    r = np.array([0.3, 0.8])
    norm = eqx.filter_jit(enkf_normaliser)(x, hx, r)
    c = np.cov(np.concatenate([x, hx], 1).T)
    gain = c[:3, 3:] @ np.linalg.inv(c[3:, 3:] + np.diag(r))
    np.testing.assert_allclose(norm.gain, gain, rtol=1e-10)
    np.testing.assert_allclose(norm.y_scale, np.sqrt(np.diag(c[3:, 3:]) + r), rtol=1e-12)


def test_spline_is_monotone_and_the_identity_outside_the_interval(getkey):
    layer = _randomise(
        RationalQuadraticSplineCoupling(getkey(), [True], 1, n_bins=6), getkey(), 1.0
    )
    y = jnp.array([0.7])
    grid = jnp.sort(jnp.concatenate([jnp.linspace(-6.0, 6.0, 2001), jnp.array([-4.0, 4.0])]))
    out, ld = eqx.filter_jit(jax.vmap(lambda v: layer.forward(v[None], y)))(grid)
    out = out[:, 0]
    assert bool(jnp.all(jnp.diff(out) > 0))
    outside = jnp.abs(grid) > 4.0
    np.testing.assert_array_equal(out[outside], grid[outside])
    np.testing.assert_array_equal(ld[outside], 0.0)
    assert float(jnp.max(jnp.abs(out[~outside] - grid[~outside]))) > 1e-2  # not the identity
    # C^1 at the edges: boundary derivatives are 1, so the log-derivative is 0 there.
    np.testing.assert_allclose(ld[jnp.abs(grid) == 4.0], 0.0, atol=1e-12)


def test_gradients_are_finite_at_the_interval_edges(getkey):
    flow = _flow(getkey(), "spline", 2, 1)
    y = jnp.array([0.2])

    def nll(f, x):
        return -f.log_prob(x, y)

    @eqx.filter_jit
    def grads(f, x):
        return eqx.filter_grad(nll)(f, x), jax.grad(lambda v: nll(f, v))(x)

    for x in (jnp.array([4.0, -4.0]), jnp.array([-4.0, 9.0]), jnp.array([4.0 + 1e-12, 0.0])):
        z = eqx.filter_jit(flow.forward)(x, y)[0]  # a point whose latent hits the edge, too
        for point in (x, z):
            leaves = jax.tree_util.tree_leaves(eqx.filter(grads(flow, point), eqx.is_inexact_array))
            assert leaves and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def test_bad_arguments_fail_early(getkey):
    with pytest.raises(ValueError, match="transform"):
        AffineCoupling(getkey(), [False, False], 1)
    with pytest.raises(ValueError, match="N_y >= 1"):
        AffineCoupling(getkey(), [True], 0)
    with pytest.raises(ValueError, match="kind"):
        conditional_flow(getkey(), 2, 1, kind="maf")
    with pytest.raises(TypeError, match="AbstractConditionalBijection"):
        ConditionalFlow([jnp.eye(2)])
    flow = conditional_flow(getkey(), 2, 1)
    with pytest.raises(ValueError, match="batch_size"):
        fit_conditional_flow(
            flow, jnp.zeros((5, 2)), jnp.zeros((5, 1)), optax.adam(1e-2), 3, batch_size=9
        )
    with pytest.raises(ValueError, match="n_steps"):
        fit_conditional_flow(flow, jnp.zeros((5, 2)), jnp.zeros((5, 1)), optax.adam(1e-2), -1)


def _w1_to_grid(samples, grid, cdf):
    """W1 = ∫ |F_N(x) - F(x)| dx on the grid (1-d Wasserstein-1)."""
    emp = np.searchsorted(np.sort(np.asarray(samples)), grid, side="right") / len(samples)
    return float(np.trapezoid(np.abs(emp - cdf), grid))


def test_flow_beats_the_enkf_on_the_squared_observation(getkey):
    """x ~ N(0,1), y = x^2 + N(0, 0.5^2), y* = 1: the EnKF gain is ~0 (prior returned), the
    posterior is bimodal; the flow must be 3x closer in W1 to the grid posterior (the bench
    script bench/scripts/flow_static.py reaches ~10x with more samples and steps)."""
    n, sigma, y_star = 800, 0.5, 1.0
    k1, k2 = jax.random.split(jax.random.key(11))
    x = jax.random.normal(k1, (n, 1))
    y = x**2 + sigma * jax.random.normal(k2, (n, 1))
    norm = enkf_normaliser(x, y)
    flow = conditional_flow(getkey(), 1, 1, n_layers=1, width=16, normaliser=True)
    flow = eqx.tree_at(lambda f: f.layers[0], flow, norm)
    fit0 = fit_conditional_flow(flow, x, y, optax.adam(1e-2), 0)
    assert fit0.losses.shape == (0,)
    assert bool(eqx.tree_equal(fit0.flow, flow))  # zero steps change nothing
    fit = eqx.filter_jit(lambda f: fit_conditional_flow(f, x, y, optax.adam(1e-2), 250))(flow)
    # the EnKF layer is held fixed; the coupling moves and the NLL drops
    assert bool(eqx.tree_equal(fit.flow.layers[0], flow.layers[0]))
    assert float(fit.losses[-1]) < float(fit.losses[0]) - 0.1
    z = jax.vmap(lambda a, b: fit.flow.inverse(a, b)[0])(x, y)
    flow_post = jax.vmap(lambda zi: fit.flow.forward(zi, jnp.array([y_star]))[0])(z)[:, 0]
    enkf_post = (x + (y_star - y) @ norm.gain.T)[:, 0]
    grid = np.linspace(-5.0, 5.0, 4001)
    dens = np.exp(-0.5 * grid**2 - 0.5 * ((y_star - grid**2) / sigma) ** 2)
    cdf = np.cumsum(dens)
    cdf /= cdf[-1]
    w_flow, w_enkf = _w1_to_grid(flow_post, grid, cdf), _w1_to_grid(enkf_post, grid, cdf)
    assert w_flow < w_enkf / 3, (w_flow, w_enkf)
