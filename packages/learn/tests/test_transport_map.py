"""The transport-map objective (eq. 2.8, sign corrected) and the affine transport map."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filterax.primitives as fxp
from filterax.learn import AffineTransportMap, transport_map_loss

NX, NY = 3, 2


def _problem():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((NX, NX))
    cov = w @ w.T + 0.5 * np.eye(NX)
    mean = rng.standard_normal(NX)
    h = rng.standard_normal((NY, NX))
    g = np.diag([0.3, 0.8])
    y = rng.standard_normal(NY)
    return mean, cov, h, g, y


def _moment_matched_points(mean, cov):
    # m +- sqrt(n) L e_i: their sample mean is m and (1/N) sum (v - m)(v - m)^T = L L^T = C,
    # so the sample average of any quadratic function of v IS its expectation under N(m, C).
    chol = np.linalg.cholesky(cov)
    cols = math.sqrt(NX) * chol.T
    return np.concatenate([mean + cols, mean - cols])


def _gaussian_kl_loss(gain, transform, mean, cov, h, g, y):
    """The Gaussian VI loss of the pushforward N(m_a, B C B^T), in closed form (independent
    of transport_map_loss: KL by fxp.gaussian_kl, the expected log-likelihood analytically)."""
    m_a = mean + gain @ (y - h @ mean)
    c_a = transform @ cov @ transform.T
    kl = fxp.gaussian_kl(m_a, c_a, mean, cov)
    g_inv = jnp.linalg.inv(g)
    r = y - h @ m_a
    exp_loglik = (
        -0.5 * r @ g_inv @ r
        - 0.5 * jnp.trace(g_inv @ h @ c_a @ h.T)
        - 0.5 * NY * math.log(2 * math.pi)
        - 0.5 * jnp.linalg.slogdet(g)[1]
    )
    return kl - exp_loglik


def _tmap(gain, transform, mean, h):
    return AffineTransportMap(
        center=jnp.asarray(mean), gain=gain, transform=transform, obs_matrix=jnp.asarray(h)
    )


def test_loss_equals_gaussian_kl_loss_up_to_a_constant_with_equal_gradients():
    mean, cov, h, g, y = _problem()
    v = _moment_matched_points(mean, cov)
    rng = np.random.default_rng(1)
    gain = jnp.asarray(0.3 * rng.standard_normal((NX, NY)))
    transform = jnp.asarray(np.eye(NX) + 0.2 * rng.standard_normal((NX, NX)))

    def tm_loss(params):
        return transport_map_loss(
            None,
            _tmap(*params, mean, h),
            v,
            y,
            jnp.asarray(h),
            jnp.asarray(g),
            reference=(mean, cov),
        )

    def kl_loss(params):
        return _gaussian_kl_loss(*params, mean, cov, jnp.asarray(h), jnp.asarray(g), y)

    # The constant: the forecast entropy 1/2 log det(2 pi e C).
    const = 0.5 * (NX * math.log(2 * math.pi * math.e) + np.linalg.slogdet(cov)[1])
    np.testing.assert_allclose(
        tm_loss((gain, transform)) - kl_loss((gain, transform)), const, rtol=1e-12
    )
    g_tm = jax.grad(tm_loss)((gain, transform))
    g_kl = jax.grad(kl_loss)((gain, transform))
    # Exact identity (moment-matched points): only round-off differs; 1e-8 relative (issue).
    for a, b in zip(g_tm, g_kl, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8 * float(jnp.max(jnp.abs(b))))


def test_log_det_matches_slogdet_of_jacfwd_and_the_generic_path():
    mean, cov, h, g, y = _problem()
    rng = np.random.default_rng(2)
    tm = _tmap(
        jnp.asarray(rng.standard_normal((NX, NY))),
        jnp.asarray(rng.standard_normal((NX, NX))),
        mean,
        h,
    )
    v = jnp.asarray(rng.standard_normal(NX))
    expected = jnp.linalg.slogdet(jax.jacfwd(lambda x: tm(x, jnp.asarray(y)))(v))[1]
    np.testing.assert_allclose(tm.log_det_jacobian(v, jnp.asarray(y)), expected, rtol=1e-12)
    samples = jnp.asarray(rng.standard_normal((7, NX)))
    analytic = transport_map_loss(None, tm, samples, y, jnp.asarray(h), jnp.asarray(g))
    generic = transport_map_loss(
        lambda p, x, yy: p(x, yy), tm, samples, y, jnp.asarray(h), jnp.asarray(g)
    )
    np.testing.assert_allclose(analytic, generic, rtol=1e-12)


def test_nonlinear_map_with_numpy_loss():
    mean, cov, h, g, y = _problem()
    rng = np.random.default_rng(3)
    w = 0.5 * rng.standard_normal((NX, NX))
    samples = rng.standard_normal((5, NX))

    def map_fn(p, v, yy):
        del yy
        return v + jnp.tanh(p @ v)

    loss = transport_map_loss(
        map_fn, jnp.asarray(w), samples, y, jnp.asarray(h), jnp.asarray(g), reference=(mean, cov)
    )
    # numpy: the Jacobian I + diag(1 - tanh^2(Wv)) W by hand, densities written out.
    ci, gi = np.linalg.inv(cov), np.linalg.inv(g)
    total = 0.0
    for v in samples:
        x = v + np.tanh(w @ v)
        jac = np.eye(NX) + np.diag(1 - np.tanh(w @ v) ** 2) @ w
        log_ref = -0.5 * (x - mean) @ ci @ (x - mean) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
        r = y - h @ x
        log_lik = -0.5 * r @ gi @ r - 0.5 * np.linalg.slogdet(2 * np.pi * g)[1]
        total += -(log_ref + np.linalg.slogdet(jac)[1] + log_lik)
    # Same formula, different order of operations: 1e-12 relative.
    np.testing.assert_allclose(loss, total / len(samples), rtol=1e-12)


def test_optimum_is_the_kalman_update():
    mean, cov, h, g, y = _problem()
    v = _moment_matched_points(mean, cov)

    # K enters only through K (y - H m): one observation fixes that vector, not K. Several
    # observations with linearly independent innovations (3 > N_y = 2) identify K.
    ys = np.stack([y, y + np.array([1.0, -0.5]), y - np.array([0.3, 1.2])])

    def loss(params):
        tm = _tmap(*params, mean, h)
        return sum(
            transport_map_loss(
                None, tm, v, yy, jnp.asarray(h), jnp.asarray(g), reference=(mean, cov)
            )
            for yy in ys
        )

    opt = optax.lbfgs()
    params = (jnp.zeros((NX, NY)), jnp.eye(NX))
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def run(params):
        def body(carry, _):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=200)
        return params

    gain, transform = run(params)
    k_ss = cov @ h.T @ np.linalg.inv(h @ cov @ h.T + g)
    post = (np.eye(NX) - k_ss @ h) @ cov
    # A smooth convex problem in K and in B C B^T (the loss depends on B only through it):
    # L-BFGS reaches the optimum to ~1e-10; 1e-6 leaves margin for the flat rotation
    # directions of B.
    np.testing.assert_allclose(gain, k_ss, atol=1e-6)
    np.testing.assert_allclose(transform @ cov @ transform.T, post, atol=1e-6)


def test_sign_of_the_log_det_penalises_collapse():
    mean, cov, h, g, y = _problem()
    v = _moment_matched_points(mean, cov)

    def loss_at(scale):
        tm = _tmap(jnp.zeros((NX, NY)), scale * jnp.eye(NX), mean, h)
        return transport_map_loss(
            None, tm, v, y, jnp.asarray(h), jnp.asarray(g), reference=(mean, cov)
        )

    # With the paper's (typo) sign a collapsing map (det -> 0) would drive J to -inf.
    assert loss_at(1e-6) > loss_at(1e-3) > loss_at(0.5)
    assert loss_at(0.0) == np.inf


def test_default_reference_is_the_shrunk_sample_fit():
    mean, cov, h, g, y = _problem()
    rng = np.random.default_rng(4)
    samples = rng.standard_normal((6, NX)) @ np.linalg.cholesky(cov).T + mean
    tm = _tmap(jnp.zeros((NX, NY)), jnp.eye(NX), mean, h)
    m = samples.mean(0)
    c = np.cov(samples.T)
    c = 0.9 * c + 0.1 * np.trace(c) / NX * np.eye(NX)
    a = transport_map_loss(None, tm, samples, y, jnp.asarray(h), jnp.asarray(g))
    b = transport_map_loss(None, tm, samples, y, jnp.asarray(h), jnp.asarray(g), reference=(m, c))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_bad_shapes_raise():
    mean, cov, h, g, y = _problem()
    # jaxtyping (runtime checking on in the tests) or __check_init__ refuses the shape.
    with pytest.raises((ValueError, TypeError), match="gain"):
        AffineTransportMap(
            center=jnp.zeros(NX),
            gain=jnp.zeros((NY, NX)),
            transform=jnp.eye(NX),
            obs_matrix=jnp.asarray(h),
        )
    tm = _tmap(jnp.zeros((NX, NY)), jnp.eye(NX), mean, h)
    samples = np.zeros((4, NX))
    with pytest.raises(ValueError, match="reference"):
        transport_map_loss(
            None, tm, samples, y, jnp.asarray(h), jnp.asarray(g), reference=(mean, np.eye(2))
        )
    with pytest.raises(ValueError, match="N_x"):
        transport_map_loss(lambda p, v, yy: v[:2], None, samples, y, jnp.asarray(h), jnp.asarray(g))
    with pytest.raises(TypeError, match="callable"):
        transport_map_loss(None, jnp.eye(NX), samples, y, jnp.asarray(h), jnp.asarray(g))
