"""EnKF_N against a numpy transcription of DAPPER's ``EnKF_N`` (dual and primal forms) and
against the behaviour the finite-size filter is designed for (no inflation to tune).

DAPPER stops its Newton iteration at ``|dl1| < 1e-4`` (its default ``xtol``) with an
approximate second derivative, so its answer is only accurate to ~1e-4; the transcription is
therefore also run to convergence (``xtol = ytol = 1e-14``), and that is compared at 1e-9.
"""

import importlib.util
import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
from filterax.filters._enkf_n import enkf_n_inflation


def _load_helpers():
    # --import-mode=importlib keeps tests/ off sys.path; load helpers.py under a unique name.
    name = "filterax_filters_tests_helpers"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("helpers.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = _load_helpers()

TOL64 = 1e-9


# --- numpy transcription of DAPPER 1.x (dapper/da_methods/ensemble.py, tools/linalg.py) -------


def svd0(A):
    M, N = A.shape
    return np.linalg.svd(A, full_matrices=M > N)


def pad0(x, N):
    out = np.zeros(N)
    out[: len(x)] = x
    return out


def newton_m(fun, deriv, x0, is_inverted=False, conf=1.0, xtol=1e-4, ytol=1e-7, itermax=100):
    itr = 0
    dx = np.inf
    Jx = fun(x0)

    def norm(x):
        return np.sqrt(np.sum(x**2))

    while ytol < norm(Jx) and xtol < norm(dx) and itr < itermax:
        Dx = deriv(x0)
        if is_inverted:
            dx = Dx @ Jx
        elif isinstance(Dx, float):
            dx = Jx / Dx
        else:
            dx = np.linalg.solve(Dx, Jx)
        dx *= conf
        x0 = x0 - dx
        Jx = fun(x0)
        itr += 1
    return x0


def hyperprior_coeffs(s, N, xN=1, g=0):
    N1 = N - 1
    eN = (N + 1) / N
    cL = (N + g) / N1
    prior_mode = eN / cL
    diagonal = pad0(s**2, N) + N1
    I_KH = np.mean(diagonal ** (-1)) * N1
    mc = np.sqrt(prior_mode**I_KH)
    eN /= mc
    cL *= mc
    eN *= xN
    cL *= xN
    return eN, cL


def sym_sqrt_inv(R):
    lam, V = np.linalg.eigh(R)
    return (V * lam**-0.5) @ V.T


def dapper_enkf_n(E, Eo, R, y, xN=1.0, g=0, dual=True, xtol=1e-4, ytol=1e-7, itermax=100):
    """One analysis of DAPPER's ``EnKF_N`` (``Hess=False``, no ``infl``/``rot``)."""
    N, N1 = len(E), len(E) - 1
    mu = np.mean(E, 0)
    A = E - mu
    xo = np.mean(Eo, 0)
    Y = Eo - xo
    dy = y - xo
    Rm12 = sym_sqrt_inv(R)
    Rinv = np.linalg.inv(R)
    V, s, UT = svd0(Y @ Rm12.T)
    du = UT @ (dy @ Rm12.T)

    def dgn_N(l1):
        return pad0((l1 * s) ** 2, N) + N1

    eN, cL = hyperprior_coeffs(s, N, xN, g)
    if dual:

        def pad_rk(arr):
            return pad0(arr, min(N, len(y)))

        def dgn_rk(l1):
            return pad_rk((l1 * s) ** 2) + N1

        def Jp(l1):
            return (
                -2 * l1 * np.sum(pad_rk(s**2) * du**2 / dgn_rk(l1) ** 2)
                + -2 * eN / l1**3
                + 2 * cL / l1
            )

        def Jpp(l1):
            return (
                8 * l1**2 * np.sum(pad_rk(s**4) * du**2 / dgn_rk(l1) ** 3)
                + 6 * eN / l1**4
                + -2 * cL / l1**2
            )

        l1 = newton_m(Jp, Jpp, 1.0, xtol=xtol, ytol=ytol, itermax=itermax)
    else:

        def za(w):
            return N1 * cL / (eN + w @ w)

        def Jp(w):
            return -Y @ Rinv @ (dy - w @ Y) + w * za(w)

        def nvrs(w):
            return (V * (pad0(s**2, N) + za(w)) ** -1.0) @ V.T

        wa = newton_m(
            Jp, nvrs, np.zeros(N), is_inverted=True, xtol=xtol, ytol=ytol, itermax=itermax
        )
        l1 = np.sqrt(N1 / za(wa))

    A = A * l1
    Y = Y * l1
    Pw = (V * dgn_N(l1) ** (-1.0)) @ V.T
    w = dy @ Rinv @ Y.T @ Pw
    T = (V * dgn_N(l1) ** (-0.5)) @ V.T * np.sqrt(N1)
    return mu + w @ A + T @ A, l1


TIGHT = dict(xtol=1e-14, ytol=1e-14, itermax=1000)


@eqx.filter_jit
def _enkf_n(filt, X, y, obs_op, noise):
    return filt.analysis(None, X, y, obs_op, noise)


def _run(problem, xN=1.0, g=0, noise=None, obs=None):
    return _enkf_n(
        ff.EnKF_N(xN=xN, g=g),
        jnp.asarray(problem.forecast),
        jnp.asarray(problem.obs if obs is None else obs),
        problem.obs_op,
        problem.obs_noise() if noise is None else noise,
    )


# N_y < N_e, N_y > N_e; diagonal and correlated R; DAPPER's xN (1 and 2) and g.
CASES = [
    (10, 6, 4, "diagonal", 1.0, 0),
    (10, 6, 15, "diagonal", 2.0, 0),
    (8, 12, 5, "dense", 1.0, 1),
    (6, 9, 20, "dense", 1.5, 0),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_dapper_enkf_n(case):
    n_e, n_x, n_y, noise, xN, g = case
    problem = helpers.make_linear_problem(n_y + 100 * n_e, n_e, n_x, n_y, noise=noise)
    E, H, R, y = problem.forecast, problem.H, problem.noise_cov, problem.obs
    out = _run(problem, xN=xN, g=g)

    # The dual Newton of DAPPER, run to convergence: same cost, same hyperprior, same update.
    expected, l1 = dapper_enkf_n(E, E @ H.T, R, y, xN=xN, g=g, **TIGHT)
    np.testing.assert_allclose(out.info.inflation, l1, rtol=TOL64)
    np.testing.assert_allclose(out.particles, expected, atol=TOL64, rtol=0)
    np.testing.assert_allclose(out.log_likelihood, problem.reference().log_likelihood, atol=TOL64)

    # DAPPER with its own tolerances: it stops once |dl1| < 1e-4, and its Jpp drops a term
    # (linear, not quadratic, convergence), so its l1 is only good to ~1e-4.
    expected_dflt, l1_dflt = dapper_enkf_n(E, E @ H.T, R, y, xN=xN, g=g)
    np.testing.assert_allclose(out.info.inflation, l1_dflt, rtol=1e-4)
    np.testing.assert_allclose(out.particles, expected_dflt, atol=1e-3)

    # DAPPER's primal form (its default) reaches the same stationary point.
    _, l1_primal = dapper_enkf_n(E, E @ H.T, R, y, xN=xN, g=g, dual=False, **TIGHT)
    np.testing.assert_allclose(out.info.inflation, l1_primal, rtol=1e-8)


def test_inflation_reacts_to_the_innovation():
    # Same ensemble, innovations scaled up: the estimated inflation grows (a forecast that
    # misses the observations by more than its spread gets inflated), and a tiny innovation
    # gives deflation below the prior mode's neighbourhood of 1.
    problem = helpers.make_linear_problem(3, 12, 10, 10, noise="diagonal")
    y_mean = problem.forecast.mean(0) @ problem.H.T
    direction = problem.obs - y_mean
    l1 = [
        float(_run(problem, obs=y_mean + scale * direction).info.inflation)
        for scale in (0.0, 1.0, 3.0, 10.0)
    ]
    assert all(a < b for a, b in zip(l1, l1[1:], strict=False)), l1
    assert l1[0] < 1.0 < l1[-1]


def test_no_inflation_without_information():
    # R -> infinity: the mode correction makes l1 -> 1 (no update and no inflation).
    problem = helpers.make_linear_problem(4, 10, 6, 8)
    out = _run(problem, noise=1e12 * jnp.asarray(problem.noise_diag))
    np.testing.assert_allclose(out.info.inflation, 1.0, atol=1e-6)
    np.testing.assert_allclose(out.particles, problem.forecast, atol=1e-5)


def test_nan_obs_equal_observed_subset():
    problem = helpers.make_linear_problem(5, 9, 7, 8, noise="dense", missing=(2, 6))
    keep = ~np.isnan(problem.obs)
    sub = problem.subset(keep)
    full_out = _run(problem)
    sub_out = _run(sub)
    np.testing.assert_allclose(full_out.particles, sub_out.particles, atol=TOL64, rtol=0)
    np.testing.assert_allclose(full_out.info.inflation, sub_out.info.inflation, rtol=TOL64)
    np.testing.assert_allclose(full_out.log_likelihood, sub_out.log_likelihood, atol=TOL64)


def test_all_observations_missing_leaves_forecast_unchanged():
    # No information: l1 = 1 exactly (mode-corrected hyperprior), no update.
    problem = helpers.make_linear_problem(11, 8, 6, 5)
    out = _run(problem, obs=np.full(5, np.nan))
    np.testing.assert_allclose(out.info.inflation, 1.0, atol=1e-12)
    np.testing.assert_allclose(out.particles, problem.forecast, atol=1e-12)


def test_ensemble_transform_reproduces_particles():
    problem = helpers.make_linear_problem(6, 7, 9, 5)
    out = _run(problem)
    np.testing.assert_allclose(
        out.info.ensemble_transform @ problem.forecast, out.particles, atol=TOL64
    )


@pytest.mark.parametrize("n_y", [4, 12])
def test_gradients_match_finite_differences(n_y):
    # d/dxN and d/d(noise scale) of a smooth function of the analysis, through the implicit
    # differentiation of the inflation root: central differences, h = 1e-5 (error ~1e-9).
    problem = helpers.make_linear_problem(7 + n_y, 8, 6, n_y, missing=(1,))

    @jax.jit
    def loss(xN, scale):
        out = ff.EnKF_N(xN=xN).analysis(
            None,
            jnp.asarray(problem.forecast),
            jnp.asarray(problem.obs),
            problem.obs_op,
            problem.obs_noise(scale),
        )
        return jnp.sum(out.particles**2) + out.info.inflation

    g_xN, g_scale = jax.grad(loss, argnums=(0, 1))(1.3, 0.8)
    fd_xN = helpers.central_difference(lambda v: loss(v, 0.8), 1.3)
    fd_scale = helpers.central_difference(lambda v: loss(1.3, v), 0.8)
    assert np.isfinite(g_xN) and np.isfinite(g_scale)
    np.testing.assert_allclose(g_xN, fd_xN, rtol=1e-6)
    np.testing.assert_allclose(g_scale, fd_scale, rtol=1e-6)


def test_inflation_gradient_wrt_observations():
    # The implicit-function gradient of l1 itself w.r.t. the observation vector.
    problem = helpers.make_linear_problem(8, 9, 6, 5)
    X = jnp.asarray(problem.forecast)

    def l1(y):
        Y = X @ jnp.asarray(problem.H).T
        r = jnp.asarray(problem.noise_diag)
        S = (Y - Y.mean(0)[None, :]) / jnp.sqrt(r)[None, :] / jnp.sqrt(X.shape[0] - 1.0)
        delta = (y - Y.mean(0)) / jnp.sqrt(r)
        return enkf_n_inflation(S, delta)

    y0 = jnp.asarray(problem.obs)
    grad = jax.grad(l1)(y0)
    direction = jnp.linspace(-1.0, 1.0, y0.size)
    h = 1e-6
    fd = (l1(y0 + h * direction) - l1(y0 - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.dot(grad, direction), fd, rtol=1e-6)


def test_vmap_over_xN():
    problem = helpers.make_linear_problem(9, 8, 6, 6)
    xNs = jnp.array([0.5, 1.0, 2.0, 4.0])
    batched = jax.vmap(lambda v: _run(problem, xN=v).info.inflation)(xNs)
    single = [float(_run(problem, xN=float(v)).info.inflation) for v in xNs]
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    # A more certain hyperprior (larger xN) pulls l1 towards its prior mode (~1).
    assert np.all(np.diff(np.abs(np.log(np.asarray(batched)))) < 0)


def test_float32():
    problem = helpers.make_linear_problem(10, 8, 6, 6)
    ref = _run(problem)
    out = ff.EnKF_N().analysis(
        None,
        jnp.asarray(problem.forecast, jnp.float32),
        jnp.asarray(problem.obs, jnp.float32),
        problem.obs_op,
        problem.obs_noise(dtype=jnp.float32),
    )
    assert out.particles.dtype == jnp.float32
    # float32 round-off through the root finder and the transform (values O(1)).
    np.testing.assert_allclose(out.particles, ref.particles, atol=1e-4)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="xN"):
        ff.EnKF_N(xN=0.0)
    with pytest.raises(ValueError, match="g"):
        ff.EnKF_N(g=-1)


def _l96_twin(filt, n_cycles=400, n_e=20, seed=0):
    """Lorenz-96 (40 sites, F = 8, dt = 0.05), all sites observed every step with R = I;
    returns the time-mean analysis RMSE over the last half. No inflation anywhere."""
    from filterax.zoo import Lorenz96

    model = Lorenz96(n=40)
    step = jax.vmap(model, in_axes=(0, None, None))
    key = jax.random.key(seed)
    k_truth, k_obs, k_ens = jax.random.split(key, 3)
    truth0 = model(8.0 + jax.random.normal(k_truth, (40,)), 0.0, 5.0)  # onto the attractor
    ens0 = truth0[None, :] + jax.random.normal(k_ens, (n_e, 40))
    obs_noise = jax.random.normal(k_obs, (n_cycles, 40))

    def cycle(carry, noise):
        truth, ens = carry
        truth = model(truth, 0.0, 0.05)
        ens = step(ens, 0.0, 0.05)
        out = filt.analysis(None, ens, truth + noise, lambda x: x, 1.0)
        err = jnp.sqrt(jnp.mean((out.particles.mean(0) - truth) ** 2))
        return (truth, out.particles), err

    _, errors = jax.lax.scan(cycle, (truth0, ens0), obs_noise)
    return float(jnp.mean(errors[n_cycles // 2 :]))


def test_lorenz96_needs_no_inflation():
    # Published (DAPPER, L96 sakov2008, N = 20, no inflation): EnKF-N 0.24, EnKF-N xN=2 0.19
    # (../shared/REFERENCES.md). This short twin (400 cycles, seed 0; seeds 0-2 give
    # 0.25-0.27 and 0.17-0.20) must land near them, while an uninflated ETKF with the same
    # ensemble does worse (it loses track: 0.37-3.6 over seeds 0-2).
    rmse_n = _l96_twin(ff.EnKF_N())
    rmse_n2 = _l96_twin(ff.EnKF_N(xN=2.0))
    rmse_etkf = _l96_twin(ff.ETKF())
    assert rmse_n < 0.32, rmse_n
    assert rmse_n2 < 0.25, rmse_n2
    assert rmse_etkf > 1.3 * rmse_n, (rmse_etkf, rmse_n)
