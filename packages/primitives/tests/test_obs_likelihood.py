"""`GaussianObsLikelihood` against scipy's multivariate normal on the observed entries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import filterax.primitives as fxp


def _noises(rng, n):
    a = rng.normal(size=(n, n))
    dense = a @ a.T + n * np.eye(n)
    u = rng.normal(size=(n, 2))
    d = rng.uniform(0.5, 2.0, size=n)
    return {
        "scalar": (0.7, 0.7 * np.eye(n)),
        "diagonal": (d, np.diag(d)),
        "dense": (dense, dense),
        "low_rank": (fxp.low_rank_noise(u, d), u @ u.T + np.diag(d)),
    }


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "dense", "low_rank"])
def test_log_density_matches_scipy_on_observed_entries(kind):
    rng = np.random.default_rng(3)
    n = 5
    noise, dense = _noises(rng, n)[kind]
    y = rng.normal(size=n)
    y[[1, 3]] = np.nan
    obs = ~np.isnan(y)
    preds = rng.normal(size=(4, n))
    lik = fxp.GaussianObsLikelihood.build(jnp.asarray(y), noise)
    # Reference: the marginal density of the observed entries (rows/columns of R dropped).
    ref = [multivariate_normal(p[obs], dense[np.ix_(obs, obs)]).logpdf(y[obs]) for p in preds]
    # float64 round-off only (dense Cholesky / Woodbury vs scipy's eigh): 1e-10 relative.
    np.testing.assert_allclose(lik.log_density_rows(jnp.asarray(preds)), ref, rtol=1e-10)
    np.testing.assert_allclose(lik.log_density(jnp.asarray(preds[0])), ref[0], rtol=1e-10)
    assert float(lik.n_obs) == 3.0


def test_expected_log_density_is_the_gaussian_expectation():
    # E_{v ~ N(m, LL^T)} log N(y; Hv, R) = log N(y; Hm, R) - ½ tr(R_o^{-1} H_o C H_o^T).
    rng = np.random.default_rng(4)
    nx, ny = 4, 3
    H = rng.normal(size=(ny, nx))
    L = np.tril(rng.normal(size=(nx, nx))) + 2 * np.eye(nx)
    m = rng.normal(size=nx)
    R = np.diag([0.5, 1.5, 2.0])
    y = np.array([0.3, np.nan, -1.0])
    obs = ~np.isnan(y)
    lik = fxp.GaussianObsLikelihood.build(jnp.asarray(y), jnp.asarray(R))
    got = lik.expected_log_density(jnp.asarray(H @ m), jnp.asarray(H), jnp.asarray(L))
    Ho, Ro = H[obs], R[np.ix_(obs, obs)]
    ref = multivariate_normal(Ho @ m, Ro).logpdf(y[obs]) - 0.5 * np.trace(
        np.linalg.solve(Ro, Ho @ L @ L.T @ Ho.T)
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_jit_vmap_grad_and_no_nan_from_missing_entries():
    y = jnp.array([1.0, jnp.nan, 2.0])

    @jax.jit
    def f(p):
        return fxp.GaussianObsLikelihood.build(y, 2.0).log_density(p)

    g = jax.grad(f)(jnp.zeros(3))
    assert np.all(np.isfinite(g)) and float(g[1]) == 0.0
    vals = jax.vmap(f)(jnp.zeros((2, 3)))
    assert vals.shape == (2,) and np.all(np.isfinite(vals))


def test_wrong_prediction_length_is_refused():
    lik = fxp.GaussianObsLikelihood.build(jnp.ones(3), 1.0)
    with pytest.raises(ValueError, match="h\\(x\\) of this observation"):
        lik.log_density(jnp.ones(4))
