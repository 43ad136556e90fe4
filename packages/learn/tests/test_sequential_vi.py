"""Sequential VI (filterax.learn._sequential_vi): the recursive ELBO and its Gaussian maximiser
against a numpy Kalman update, scipy densities and the identity ELBO = log p(y) - KL(q||post).
float64 (the conftest enables x64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import multivariate_normal

import filterax.learn as fl
import filterax.primitives as fxp


def problem(seed=0, n=4, p=3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    prior_cov = a @ a.T + 0.5 * np.eye(n)
    b = rng.normal(size=(p, p))
    R = b @ b.T + 0.3 * np.eye(p)
    return rng, rng.normal(size=n), prior_cov, rng.normal(size=(p, n)), R, rng.normal(size=p)


def np_kalman(m, C, H, R, y):
    """The covariance (gain) form of the Kalman update: independent of the information form
    the closed-form solver uses."""
    S = H @ C @ H.T + R
    K = C @ H.T @ np.linalg.inv(S)
    post_cov = (np.eye(len(m)) - K @ H) @ C
    return m + K @ (y - H @ m), 0.5 * (post_cov + post_cov.T), S


def np_kl(m1, C1, m2, C2):
    n = len(m1)
    iC2 = np.linalg.inv(C2)
    d = m2 - m1
    return 0.5 * (
        np.trace(iC2 @ C1) + d @ iC2 @ d - n + np.linalg.slogdet(C2)[1] - np.linalg.slogdet(C1)[1]
    )


def test_closed_form_maximiser_is_the_kalman_update_and_elbo_is_the_log_evidence():
    _, m, C, H, R, y = problem()
    fit = fl.fit_gaussian_elbo(m, C, y, jnp.asarray(H), jnp.asarray(R))
    mk, Ck, S = np_kalman(m, C, H, R, y)
    # Two algebraically different float64 routes to the same posterior (information form
    # with Cholesky vs gain form with inv) on well-conditioned 4x4 matrices: 1e-8 relative
    # is ~1e6 times the round-off and far below any modelling difference.
    np.testing.assert_allclose(np.asarray(fit.mean), mk, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(fit.cov), Ck, rtol=1e-8, atol=1e-10)
    evidence = multivariate_normal(H @ m, S).logpdf(y)
    # ELBO = log p(y) - KL(q || posterior) = log p(y) at the posterior: round-off only.
    assert abs(float(fit.elbo) - evidence) < 1e-10
    elbo = fl.recursive_elbo(mk, Ck, m, C, y, jnp.asarray(H), jnp.asarray(R))
    assert abs(float(elbo) - evidence) < 1e-10


def test_elbo_gap_is_the_kl_to_the_posterior_and_its_gradient_vanishes_at_kalman():
    rng, m, C, H, R, y = problem(1)
    mk, Ck, S = np_kalman(m, C, H, R, y)
    evidence = multivariate_normal(H @ m, S).logpdf(y)
    for _ in range(3):
        q_m = mk + 0.3 * rng.normal(size=4)
        a = rng.normal(size=(4, 4))
        q_C = a @ a.T + 0.2 * np.eye(4)
        elbo = fl.recursive_elbo(q_m, q_C, m, C, y, jnp.asarray(H), jnp.asarray(R))
        # ELBO(q) = log p(y) - KL(q || p(x|y)), every term by an independent numpy/scipy
        # formula: round-off of O(10) numbers, 1e-9.
        assert abs(float(elbo) - (evidence - np_kl(q_m, q_C, mk, Ck))) < 1e-9
    L = np.linalg.cholesky(Ck)
    g_m, g_L = jax.grad(fl.gaussian_elbo, argnums=(0, 1))(
        jnp.asarray(mk), jnp.asarray(L), m, C, y, jnp.asarray(H), jnp.asarray(R)
    )
    # Stationary point: the gradient is round-off (entries of the inputs are O(1)).
    assert np.max(np.abs(np.asarray(g_m))) < 1e-9
    assert np.max(np.abs(np.tril(np.asarray(g_L)))) < 1e-9


def test_gradient_solver_reaches_the_kalman_update():
    _, m, C, H, R, y = problem(2, n=3, p=2)
    fit = fl.fit_gaussian_elbo(
        m,
        C,
        y,
        jnp.asarray(H),
        jnp.asarray(R),
        solver="gradient",
        optimizer=optax.lbfgs(),
        n_steps=60,
    )
    mk, Ck, _ = np_kalman(m, C, H, R, y)
    # L-BFGS on a smooth, strictly concave 9-parameter problem converges to round-off; the
    # 1e-8 bound is what the issue asks of the Gaussian maximiser.
    np.testing.assert_allclose(np.asarray(fit.mean), mk, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(np.asarray(fit.cov), Ck, rtol=1e-8, atol=1e-8)
    assert bool(fit.finite)
    assert np.all(np.diff(np.asarray(fit.history))[:5] >= -1e-12)  # ascent


def test_missing_observations_have_zero_weight():
    _, m, C, H, R, y = problem(3)
    y_nan = y.copy()
    y_nan[1] = np.nan
    keep = [0, 2]
    Rd = np.diag(np.diag(R))  # diagonal R: dropping a row is exactly "not observed"
    fit = fl.fit_gaussian_elbo(m, C, y_nan, jnp.asarray(H), fxp.diagonal_noise(np.diag(R)))
    mk, Ck, S = np_kalman(m, C, H[keep], Rd[np.ix_(keep, keep)], y[keep])
    # Same 1e-8 argument as the full-observation test.
    np.testing.assert_allclose(np.asarray(fit.mean), mk, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(fit.cov), Ck, rtol=1e-8, atol=1e-10)
    assert abs(float(fit.elbo) - multivariate_normal(H[keep] @ m, S).logpdf(y[keep])) < 1e-10
    g = jax.grad(fl.gaussian_elbo)(
        jnp.asarray(m), jnp.eye(4), m, C, y_nan, jnp.asarray(H), jnp.diag(jnp.asarray(np.diag(R)))
    )
    assert np.all(np.isfinite(np.asarray(g)))


def test_monte_carlo_elbo_is_unbiased_for_the_analytic_one(getkey):
    rng, m, C, H, R, y = problem(4)
    q_m = m + 0.2 * rng.normal(size=4)
    Lq = np.linalg.cholesky(0.5 * C)
    h = lambda x: jnp.asarray(H) @ x  # noqa: E731  (a callable: the MC path)
    analytic = fl.gaussian_elbo(q_m, Lq, m, C, y, jnp.asarray(H), jnp.asarray(R))
    keys = jax.random.split(getkey(), 400)
    estimates = np.asarray(
        jax.vmap(
            lambda k: fl.gaussian_elbo(q_m, Lq, m, C, y, h, jnp.asarray(R), key=k, n_samples=16)
        )(keys)
    )
    se = estimates.std(ddof=1) / np.sqrt(len(estimates))
    # Unbiased estimator: the mean of 400 independent estimates is within 4 standard errors
    # (a false alarm has probability ~6e-5).
    assert abs(estimates.mean() - float(analytic)) < 4 * se
    # The same key gives the same estimate (explicit randomness).
    k = getkey()
    e1 = fl.gaussian_elbo(q_m, Lq, m, C, y, h, jnp.asarray(R), key=k)
    e2 = fl.gaussian_elbo(q_m, Lq, m, C, y, h, jnp.asarray(R), key=k)
    assert float(e1) == float(e2)


def test_monte_carlo_gradient_fit_on_a_nonlinear_operator(getkey):
    # h(x) = (x_0, x_1 + 0.1 x_0^2): mildly nonlinear. Reference: the exact posterior's mean
    # and covariance by quadrature on an 801 x 801 grid (independent of any VI code).
    _, m, C, _, R, y = problem(5, n=2, p=2)
    h = lambda x: jnp.stack([x[0], x[1] + 0.1 * x[0] ** 2])  # noqa: E731
    key = getkey()
    fit = fl.fit_gaussian_elbo(
        m,
        C,
        y,
        h,
        jnp.asarray(R),
        key=key,
        n_steps=400,
        n_samples=64,
        optimizer=optax.adam(optax.cosine_decay_schedule(5e-2, 400)),
    )
    prior_elbo = fl.gaussian_elbo(m, np.linalg.cholesky(C), m, C, y, h, jnp.asarray(R), key=key)
    assert float(fit.elbo) > float(prior_elbo) + 1.0
    g = np.linspace(-8.0, 8.0, 801)
    pts = np.stack([np.repeat(g, g.size), np.tile(g, g.size)], -1)
    resid = np.stack([y[0] - pts[:, 0], y[1] - pts[:, 1] - 0.1 * pts[:, 0] ** 2], -1)
    logp = multivariate_normal(m, C).logpdf(pts) + multivariate_normal(np.zeros(2), R).logpdf(resid)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    post_mean = w @ pts
    post_cov = (pts - post_mean).T @ ((pts - post_mean) * w[:, None])
    # The best Gaussian differs from the (slightly non-Gaussian) posterior, and the iterate
    # keeps some MC noise (64 samples; the cosine schedule damps it): both ~1e-2 here
    # (measured 5e-3 for the mean with 2000 steps), so 0.05 on O(1) moments.
    np.testing.assert_allclose(np.asarray(fit.mean), post_mean, atol=0.05)
    np.testing.assert_allclose(np.asarray(fit.cov), post_cov, atol=0.05)


def test_jit_vmap_and_float32():
    _, m, C, H, R, y = problem(6)
    batched = jax.jit(jax.vmap(lambda yy: fl.fit_gaussian_elbo(m, C, yy, jnp.asarray(H), R).mean))
    ys = np.stack([y, y + 1.0])
    out = np.asarray(batched(ys))
    for i in range(2):
        np.testing.assert_allclose(out[i], np_kalman(m, C, H, R, ys[i])[0], rtol=1e-8, atol=1e-10)
    f32 = [np.asarray(x, np.float32) for x in (m, C, y)]
    fit = fl.fit_gaussian_elbo(
        f32[0], f32[1], f32[2], jnp.asarray(H, jnp.float32), R.astype(np.float32)
    )
    assert fit.mean.dtype == jnp.float32
    # float32 round-off on O(10)-conditioned 4x4 algebra: 1e-4 relative.
    np.testing.assert_allclose(
        np.asarray(fit.mean), np_kalman(m, C, H, R, y)[0], rtol=1e-4, atol=1e-4
    )


def test_bad_inputs_raise_and_non_finite_fits_are_flagged():
    _, m, C, H, R, y = problem(7)
    h = lambda x: jnp.asarray(H) @ x  # noqa: E731
    with pytest.raises(ValueError, match="monte_carlo"):
        fl.gaussian_elbo(m, np.eye(4), m, C, y, h, R, method="analytic")
    with pytest.raises(ValueError, match="key"):
        fl.gaussian_elbo(m, np.eye(4), m, C, y, h, R)
    # ValueError from the function; jaxtyping's TypeCheckError when the tests check types.
    with pytest.raises((ValueError, TypeError), match="chol"):
        fl.gaussian_elbo(m, np.eye(3), m, C, y, jnp.asarray(H), R)
    with pytest.raises(ValueError, match="closed_form"):
        fl.fit_gaussian_elbo(m, C, y, h, R, solver="closed_form", key=jax.random.key(0))
    bad = -np.eye(4)  # not positive definite: the Cholesky is NaN
    fit = fl.fit_gaussian_elbo(m, bad, y, jnp.asarray(H), R, throw=False)
    assert not bool(fit.finite)
    with pytest.raises(Exception, match="not finite"):
        fl.fit_gaussian_elbo(m, bad, y, jnp.asarray(H), R)
