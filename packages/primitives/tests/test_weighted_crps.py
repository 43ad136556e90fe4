"""`weighted_crps` against independent NumPy references (float64).

Tolerances: the sorted O(N log N) form and the O(N^2) double sum differ only by summation
order, so they agree to round-off (rtol 1e-12); gradients are checked against central
differences with step 1e-6 (truncation error ~1e-12, round-off ~1e-10: atol 1e-7).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives import crps_ensemble, weighted_crps


def _double_sum(ensemble, weights, truth, fair=False):
    """Sum_i W_i |x_i - y| - 1/2 Sum_ij W_i W_j |x_i - x_j| (fair: / (1 - Sum W^2))."""
    w = weights / weights.sum()
    skill = np.einsum("i,ik->k", w, np.abs(ensemble - truth))
    pairs = np.einsum("i,j,ijk->k", w, w, np.abs(ensemble[:, None] - ensemble[None, :]))
    return skill - 0.5 * pairs / ((1 - np.sum(w * w)) if fair else 1.0)


def _integral(members, w, y):
    """Exact integral of (F_w(z) - 1{y <= z})^2 dz for one variable."""
    points = np.sort(np.append(members, y))
    total = 0.0
    for left, right in zip(points[:-1], points[1:], strict=True):
        cdf = np.sum(w[members <= left]) / np.sum(w)
        total += (cdf - float(y <= left)) ** 2 * (right - left)
    return total


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    ensemble = rng.standard_normal((13, 5)) * 1.7 + 0.3
    weights = rng.gamma(0.5, size=13)
    truth = rng.standard_normal(5)
    return ensemble, weights, truth


@pytest.mark.parametrize("fair", [False, True])
def test_equal_weights_reproduce_crps_ensemble(case, fair):
    ensemble, _, truth = case
    x, y = jnp.asarray(ensemble), jnp.asarray(truth)
    got = weighted_crps(x, jnp.zeros(13), y, fair=fair)
    np.testing.assert_allclose(got, crps_ensemble(x, y, fair=fair), rtol=1e-12, atol=1e-12)
    # unnormalised equal weights (log = 7) and raw weights give the same
    np.testing.assert_allclose(
        weighted_crps(x, jnp.full(13, 2.5), y, log=False, fair=fair), got, rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("fair", [False, True])
def test_matches_double_sum(case, fair):
    ensemble, weights, truth = case
    weights[4] = 0.0  # a zero weight (-inf log-weight) member
    with np.errstate(divide="ignore"):
        log_w = np.log(weights) + 3.0
    got = weighted_crps(jnp.asarray(ensemble), jnp.asarray(log_w), jnp.asarray(truth), fair=fair)
    expected = _double_sum(ensemble, weights, truth, fair)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    raw = weighted_crps(
        jnp.asarray(ensemble), jnp.asarray(weights), jnp.asarray(truth), log=False, fair=fair
    )
    np.testing.assert_allclose(raw, expected, rtol=1e-12, atol=1e-13)


def test_matches_integral_definition_and_duplicates(case):
    ensemble, weights, truth = case
    got = weighted_crps(jnp.asarray(ensemble), jnp.asarray(np.log(weights)), jnp.asarray(truth))
    expected = [_integral(ensemble[:, k], weights, truth[k]) for k in range(5)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # Integer weights = an unweighted ensemble with repeated members (weights 2:1 on a, b).
    a, b = ensemble[0], ensemble[1]
    np.testing.assert_allclose(
        weighted_crps(jnp.stack([a, b]), jnp.log(jnp.array([2.0, 1.0])), jnp.asarray(truth)),
        crps_ensemble(jnp.stack([a, a, b]), jnp.asarray(truth)),
        rtol=1e-12,
    )


def test_gradients_match_finite_differences(case):
    ensemble, weights, truth = case
    x, lw, y = jnp.asarray(ensemble), jnp.asarray(np.log(weights)), jnp.asarray(truth)

    def total(x, lw, y):
        return jnp.sum(weighted_crps(x, lw, y, fair=True))

    grads = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(x, lw, y)
    eps = 1e-6
    for arg, grad in zip((0, 1, 2), grads, strict=True):
        assert bool(jnp.all(jnp.isfinite(grad)))
        base = [np.asarray(v) for v in (x, lw, y)]
        flat = base[arg].reshape(-1)
        for j in (0, flat.size // 2, flat.size - 1):
            up, down = [b.copy() for b in base], [b.copy() for b in base]
            up[arg].reshape(-1)[j] += eps
            down[arg].reshape(-1)[j] -= eps
            numeric = (
                float(total(*map(jnp.asarray, up))) - float(total(*map(jnp.asarray, down)))
            ) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grad).reshape(-1)[j], numeric, atol=1e-7)


def test_degenerate_and_bad_input(case):
    ensemble, _, truth = case
    x, y = jnp.asarray(ensemble), jnp.asarray(truth)
    one = jnp.full(13, -jnp.inf).at[2].set(0.0)
    # one member carries all the weight: the CRPS of a point mass, |x_2 - y| ...
    np.testing.assert_allclose(weighted_crps(x, one, y), np.abs(ensemble[2] - truth), rtol=1e-12)
    # ... and the fair score of a single effective member is undefined: NaN, never a number
    assert bool(jnp.all(jnp.isnan(weighted_crps(x, one, y, fair=True))))
    # shape errors: our ValueError, or jaxtyping's TypeCheckError (a TypeError) when the
    # annotations are checked at run time (the test configuration)
    for bad in ((x, jnp.zeros(12), y), (x[0], jnp.zeros(13), y), (x, jnp.zeros(13), y[:3])):
        with pytest.raises((ValueError, TypeError)):
            weighted_crps(*bad)
    with pytest.raises(ValueError, match="non-negative|>= 0"):
        weighted_crps(x, -jnp.ones(13), y, log=False)
