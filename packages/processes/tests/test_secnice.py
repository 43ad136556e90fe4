"""`SECNice` against a NumPy re-derivation of EnsembleKalmanProcesses.jl's ``sec_nice``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.processes as fpr
from filterax.processes._localizers import correlation_std


def numpy_corr_std(r: float, n_ensemble: float) -> float:
    """Std of tanh(Z), Z ~ N(artanh r, 1/(J-3)), by a dense trapezoid (not Gauss-Hermite)."""
    sigma = 1.0 / np.sqrt(max(n_ensemble - 3.0, 1.0))
    z = np.linspace(-12.0, 12.0, 24001)
    density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    values = np.tanh(np.arctanh(r) + sigma * z)
    m1 = np.trapezoid(values * density, z)
    m2 = np.trapezoid(values**2 * density, z)
    return float(np.sqrt(max(m2 - m1**2, 0.0)))


def numpy_sec_nice(corr: np.ndarray, n_ensemble: float, delta: float) -> np.ndarray:
    """EKP's ``sec_nice`` on the u-G block, written as its loops (returns the weights)."""
    bound = 1.0 - 1e3 * np.finfo(np.float64).eps
    r = np.clip(corr, -bound, bound)
    stds = np.vectorize(lambda x: numpy_corr_std(x, n_ensemble))(r)
    tol = delta * np.sqrt(np.sum(stds**2))
    gamma_min = 10
    for gamma in range(2, 11, 2):
        if np.linalg.norm(r ** (gamma + 1) - r) > tol:
            gamma_min = gamma
            break
    update, previous = r**gamma_min, r ** (gamma_min - 2)
    for alpha in np.linspace(1.0, 0.0, 10):
        interp = ((1 - alpha) * previous + alpha * update) * r
        if np.linalg.norm(interp - r) < tol:
            return (1 - alpha) * previous + alpha * update
    return np.ones_like(r)


def sample_correlations(seed: int, n_e: int, n_p: int = 4, n_y: int = 6) -> np.ndarray:
    """Parameter-data sample correlations of a partly correlated Gaussian ensemble."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_e, n_p))
    g = 0.8 * u @ rng.standard_normal((n_p, n_y)) / np.sqrt(n_p) + rng.standard_normal((n_e, n_y))
    return np.corrcoef(u, g, rowvar=False)[:n_p, n_p:]


@pytest.mark.parametrize("n_ensemble", [6, 10, 50])
def test_correlation_std_matches_quadrature(n_ensemble):
    # Gauss-Hermite (64 nodes) vs a 24001-point trapezoid: both exact to ~1e-10 here.
    rs = [-0.9, -0.3, 0.0, 0.2, 0.75, 0.99]
    got = np.asarray(correlation_std(jnp.asarray(rs), jnp.asarray(float(n_ensemble))))
    expected = [numpy_corr_std(r, n_ensemble) for r in rs]
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12)


def test_correlation_std_matches_monte_carlo():
    # EKP's own estimate: sample in Fisher space, map back, take the std (Monte Carlo error of
    # a std from 4e5 draws is ~0.1 %; 1 % tolerance).
    rng = np.random.default_rng(0)
    for r, n in [(0.5, 8), (-0.2, 20)]:
        draws = np.tanh(rng.normal(np.arctanh(r), 1 / np.sqrt(n - 3), 400_000))
        got = float(correlation_std(jnp.asarray(r), jnp.asarray(float(n))))
        assert got == pytest.approx(draws.std(), rel=1e-2)


@pytest.mark.parametrize("n_e", [5, 15, 200])
@pytest.mark.parametrize("delta", [0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_weights_match_numpy_rederivation(n_e, delta, seed):
    corr = sample_correlations(seed, n_e)
    expected = numpy_sec_nice(corr, float(n_e), delta)
    got = fpr.SECNice(delta).weights(jnp.asarray(corr), jnp.asarray(float(n_e)))
    # Same discrete choices of (gamma, alpha), then the same arithmetic: round-off only.
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-12)


def test_weights_shrink_noise_with_few_members_and_vanish_with_many():
    # Pure-noise correlations from 6 members: sampling error dominates, so SECNice shrinks.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 12))
    noise_corr = jnp.asarray(np.corrcoef(x, rowvar=False)[:4, 4:])
    w = np.asarray(fpr.SECNice().weights(noise_corr, jnp.asarray(6.0)))
    assert np.all(np.abs(w) <= 1.0) and w.mean() < 0.9
    # With (effectively) infinitely many members there is no sampling error: no correction.
    w_many = np.asarray(fpr.SECNice().weights(noise_corr, jnp.asarray(1e12)))
    np.testing.assert_allclose(w_many, 1.0, atol=1e-12)


def test_eki_with_secnice_equals_eki_with_its_weights_as_a_taper(getkey):
    # The localiser only supplies Schur weights for C^{theta g}: the same update results from
    # a TaperLocalizer holding the weights SECNice computes from the same ensemble.
    key = getkey()
    x = jax.random.normal(key, (8, 3))
    a = jax.random.normal(getkey(), (5, 3))
    g = x @ a.T + 0.3 * jax.random.normal(getkey(), (8, 5))
    y = jnp.ones(5)
    sched = fpr.FixedScheduler(0.5)
    eki = fpr.EKI(scheduler=sched, localizer=fpr.SECNice())
    state = eki.init(x, y, 0.1, key=key)
    corr = np.corrcoef(np.asarray(x), np.asarray(g), rowvar=False)[:3, 3:]
    taper = jnp.asarray(numpy_sec_nice(corr, 8.0, 1.0))
    tapered = fpr.EKI(scheduler=sched, localizer=fpr.TaperLocalizer(taper))
    new = jax.jit(eki.update)(state, g)
    ref = tapered.update(tapered.init(x, y, 0.1, key=key), g)
    np.testing.assert_allclose(np.asarray(new.ensemble), np.asarray(ref.ensemble), atol=1e-10)
    # and SECNice did change the update (the weights are not all one here)
    plain = fpr.EKI(scheduler=sched)
    unloc = plain.update(plain.init(x, y, 0.1, key=key), g)
    assert not np.allclose(np.asarray(new.ensemble), np.asarray(unloc.ensemble), atol=1e-6)


def test_delta_is_sweepable_under_vmap():
    # `delta` is a dynamic field: vmap over it compiles once.
    corr = jnp.asarray(sample_correlations(0, 8))
    deltas = jnp.asarray([0.5, 1.0, 2.0])
    w = jax.vmap(lambda d: fpr.SECNice(d).weights(corr, jnp.asarray(8.0)))(deltas)
    for i, d in enumerate([0.5, 1.0, 2.0]):
        np.testing.assert_allclose(
            np.asarray(w[i]), numpy_sec_nice(np.asarray(corr), 8.0, d), rtol=1e-10, atol=1e-12
        )
