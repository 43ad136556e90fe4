"""sinkhorn_coupling and ot_resample against scipy's linear programme and exact identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from filterax.learn import ot_resample, sinkhorn_coupling, squared_distance_cost


def _problem(n=5, m=6, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2))
    a, b = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, m)
    cost = np.sum((x[:, None] - y[None]) ** 2, axis=-1)
    return cost, a / a.sum(), b / b.sum()


def _exact_ot(cost, a, b):
    """The unregularised OT linear programme, solved by HiGHS."""
    n, m = cost.shape
    a_eq = np.vstack([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.r_[a, b], bounds=(0, None), method="highs")
    assert res.status == 0
    return res.x.reshape(n, m), res.fun


def test_squared_distance_cost_matches_numpy():
    cost, _, _ = _problem()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(6, 2))
    np.testing.assert_allclose(squared_distance_cost(x, y), cost, rtol=1e-14)


def test_sinkhorn_marginals():
    cost, a, b = _problem()
    P = sinkhorn_coupling(cost, np.log(a), np.log(b), 0.5, n_iter=300)
    # rows: the last half-step enforces them, so round-off only
    np.testing.assert_allclose(P.sum(axis=1), a, atol=1e-14)
    # columns: Sinkhorn converges linearly; at epsilon = 0.5 (cost ~ 1-10) 300 sweeps are far
    # past the 1e-12 level
    np.testing.assert_allclose(P.sum(axis=0), b, atol=1e-12)
    assert np.all(np.asarray(P) >= 0.0)


def test_sinkhorn_tol_freezes_at_the_converged_coupling():
    cost, a, b = _problem(seed=1)
    full = sinkhorn_coupling(cost, np.log(a), np.log(b), 0.5, n_iter=300)
    early = sinkhorn_coupling(cost, np.log(a), np.log(b), 0.5, n_iter=300, tol=1e-6)
    # frozen once the column error is < 1e-6: the coupling differs from the converged one by
    # at most the order of that error, and is not identical (it did stop early)
    assert 0.0 < np.max(np.abs(early - full)) < 1e-5


def test_sinkhorn_small_epsilon_approaches_the_linear_programme():
    cost, a, b = _problem()
    p_star, ot_star = _exact_ot(cost, a, b)
    eps = 1e-4 * cost.max()
    P = np.asarray(
        sinkhorn_coupling(cost, np.log(a), np.log(b), eps, n_iter=3000, epsilon_scaling=0.95)
    )
    gap = float(np.sum(P * cost) - ot_star)
    # 0 <= <P_eps, C> - OT <= eps (log N + log M) (Peyré & Cuturi 2019, Prop. 4.1, entropies of
    # the marginals bound the entropy of P); 1e-12 slack for round-off and the last sweep
    assert -1e-12 <= gap <= eps * np.log(cost.size) + 1e-12
    # and the coupling itself is the LP's optimal vertex (unique for this generic cost)
    np.testing.assert_allclose(P, p_star, atol=1e-3)


def test_sinkhorn_zero_weight_rows_and_bad_input():
    cost, a, b = _problem()
    log_a = np.log(a)
    log_a[1] = -np.inf
    log_a = log_a - np.log(np.sum(np.exp(log_a)))
    P = sinkhorn_coupling(cost, log_a, np.log(b), 0.5, n_iter=300)
    assert np.all(np.asarray(P[1]) == 0.0)
    np.testing.assert_allclose(P.sum(axis=0), b, atol=1e-10)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_coupling(cost, np.log(a), np.log(b), 0.0)
    with pytest.raises(ValueError, match="n_iter"):
        sinkhorn_coupling(cost, np.log(a), np.log(b), 0.5, n_iter=0)
    with pytest.raises(ValueError, match="epsilon_scaling"):
        sinkhorn_coupling(cost, np.log(a), np.log(b), 0.5, epsilon_scaling=1.5)


def test_ot_resample_mean_is_the_weighted_mean_and_differentiable():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 3))
    logw = -0.5 * np.sum((x - 0.7) ** 2, axis=1) / 0.5
    w = np.exp(logw - logw.max())
    w /= w.sum()
    xr = ot_resample(logw, x, epsilon=0.05)
    # P 1 = w to round-off, hence (1/N) sum_j N (P^T x)_j = sum_i w_i x_i
    np.testing.assert_allclose(np.mean(xr, axis=0), w @ x, atol=1e-13)
    # each new particle is a convex combination: inside the cloud's bounding box
    assert np.all(np.asarray(xr) >= x.min(0) - 1e-9) and np.all(np.asarray(xr) <= x.max(0) + 1e-9)

    @jax.jit
    def loss(lw, pts):
        return jnp.sum(jnp.sin(ot_resample(lw, pts, epsilon=0.05, n_iter=60)))

    g_w, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(logw), jnp.asarray(x))
    assert np.all(np.isfinite(g_w)) and np.all(np.isfinite(g_x))
    # unrolled derivative = derivative of the computed map: central differences agree to
    # O(h^2) ~ 1e-8 (relative)
    direction = rng.normal(size=logw.shape)
    h = 1e-4
    fd = (loss(logw + h * direction, x) - loss(logw - h * direction, x)) / (2 * h)
    np.testing.assert_allclose(jnp.dot(g_w, direction), fd, rtol=1e-6)


def test_ot_resample_small_epsilon_is_the_lp_transform():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 2))
    logw = rng.normal(size=8)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    cost = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
    p_star, _ = _exact_ot(cost, w, np.full(8, 1 / 8))
    xr = ot_resample(logw, x, epsilon=1e-3, n_iter=3000, epsilon_scaling=0.95)
    # Reich's (2013) exact ETPF transform N P*^T x. For a unique optimal vertex the entropic
    # coupling converges to it exponentially fast in 1/epsilon: at 1e-3 of the mean squared
    # distance it agrees to ~1e-13 here; 1e-8 leaves room for other BLAS orderings
    np.testing.assert_allclose(xr, 8 * p_star.T @ x, atol=1e-8)


def test_ot_resample_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2 particles"):
        ot_resample(np.zeros(1), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="epsilon"):
        ot_resample(np.zeros(3), np.zeros((3, 2)), epsilon=-1.0)
