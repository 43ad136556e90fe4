"""EnVar (hybrid 3D/4D ensemble-variational) against numpy closed forms and the ETKF.

Tolerances: the control-variable normal equations are solved by CG with rtol = atol = 1e-12
(float64); their condition number is at most 1 + |G|^2 (eigenvalues >= 1), here < 1e3, so the
solution error is < 1e-9 relative. Closed forms are compared at 1e-8.

Test cost is XLA compilation: the hyper-parameters (weights, scalar B_c, inflation) are passed
as arrays and the linear dynamics as a module holding its matrix, so tests with the same
configuration share one compiled program (same shapes: N_x = 6, N_e = 5, N_y = 4 for the
linear problems; one 6-cycle L96 twin, one configuration with rotation for its EnVar runs).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import EnVar, Lorenz96, Var3D

TOL = 1e-8
CG = {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    # These tests run tiny programs whose cost is all XLA compilation: skip XLA's optimisation
    # passes (same semantics; round-off at most reassociated, far below the 1e-8 tolerance).
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _w(value):
    # A weakly typed array: a traced leaf (one compiled program for every value) that keeps
    # a float32 run in float32.
    return jnp.asarray(value)


def _gc(d, c):
    # Gaspari & Cohn (1999) eq. 4.10, re-derived in numpy.
    z = np.abs(d) / c
    out = np.zeros_like(z)
    a = z <= 1
    b = (z > 1) & (z <= 2)
    za, zb = z[a], z[b]
    out[a] = -0.25 * za**5 + 0.5 * za**4 + 0.625 * za**3 - 5 / 3 * za**2 + 1
    out[b] = zb**5 / 12 - 0.5 * zb**4 + 0.625 * zb**3 + 5 / 3 * zb**2 - 5 * zb + 4 - 2 / (3 * zb)
    return out


def _problem(seed=0, n_x=6, n_e=5, n_y=4):
    rng = np.random.default_rng(seed)
    A = np.eye(n_x) + 0.1 * rng.standard_normal((n_x, n_x))
    H = rng.standard_normal((n_y, n_x))
    r = 0.3 + rng.random(n_y)
    Q = rng.standard_normal((n_x, n_x))
    B_c = Q @ Q.T / n_x + 0.5 * np.eye(n_x)
    E0 = rng.standard_normal((n_e, n_x))
    coords = np.arange(n_x, dtype=float)
    return A, H, r, B_c, E0, coords


class _Linear(eqx.Module):
    # x -> A x; the matrix is an array leaf, so problems of one shape share a compiled program.
    matrix: jax.Array

    def __call__(self, x, t0, t1):
        return self.matrix @ x


def _model(A, H, r, coords=None):
    return fxp.Model(
        dynamics=_Linear(jnp.asarray(A)),
        obs_op=jnp.asarray(H),
        obs_noise=jnp.asarray(r),
        state_coords=None if coords is None else jnp.asarray(coords),
        distance=None,
    )


@eqx.filter_jit
def _one_cycle(method, model, E0, y):
    state = method.init(jax.random.key(0), jnp.asarray(E0), model)
    return method.step(jax.random.key(1), state, model, jnp.asarray(0.0), jnp.asarray(1.0), y)


def _hybrid_B(X, B_c, beta_c, beta_e, L):
    # X: (N_e, N_x) anomalies of the forecast ensemble
    P = X.T @ X / (X.shape[0] - 1)
    return beta_c * B_c + beta_e * L * P


def test_beta_e_zero_is_3dvar():
    A, H, r, B_c, E0, _ = _problem(0)
    y = np.array([0.5, -1.0, 2.0, 0.3])
    method = EnVar(ff.ETKF(), jnp.asarray(B_c), beta_c=_w(0.7), beta_e=_w(0.0), **CG)
    _, info = _one_cycle(method, _model(A, H, r), E0, jnp.asarray(y))
    xb = (E0 @ A.T).mean(0)
    B = 0.7 * B_c
    R = np.diag(r)
    xa = xb + B @ H.T @ np.linalg.solve(H @ B @ H.T + R, y - H @ xb)
    np.testing.assert_allclose(info.analysis_mean, xa, rtol=TOL, atol=TOL)


def test_cycled_beta_e_zero_equals_var3d_with_scaled_b():
    # Cross-check against Var3D on one cycled problem (linear dynamics, nonlinear H, missing
    # entries): with beta_e = 0 EnVar's background is the forecast mean of an ensemble
    # re-centred on the last analysis, i.e. A x_a exactly, and its single linearisation of H at
    # that mean is Var3D's (n_iter=1) with B = beta_c B_c. Both solve the same normal
    # equations by CG (rtol 1e-12 here, 1e-10 in Var3D), whose eigenvalues are >= 1 and < 1e3:
    # means and log-likelihoods agree to 1e-8 (6 cycles, |A| ~ 1, no error growth to speak of).
    A, H, r, B_c, E0, _ = _problem(3)
    H_j = jnp.asarray(H)

    def obs_op(x):
        return H_j @ x + 0.1 * jnp.sin(x[:4])

    model = fxp.Model(
        dynamics=lambda x, t0, t1: jnp.asarray(A) @ x, obs_op=obs_op, obs_noise=jnp.asarray(r)
    )
    ys = np.random.default_rng(7).standard_normal((6, 4))
    ys[2, 1] = np.nan
    ys[4, :3] = np.nan
    times = jnp.arange(1.0, 7.0)
    envar = EnVar(ff.ETKF(), jnp.asarray(B_c), beta_c=0.7, beta_e=0.0, **CG)
    out = ff.run(envar, model, jnp.asarray(E0), jnp.asarray(ys), times, key=jax.random.key(0))
    ref = ff.run(
        Var3D(0.7 * jnp.asarray(B_c)),
        model,
        jnp.asarray(E0).mean(0),
        jnp.asarray(ys),
        times,
        key=jax.random.key(0),
    )
    np.testing.assert_allclose(out.analysis_mean, ref.analysis_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.forecast_mean, ref.forecast_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=TOL, atol=TOL)
    assert int(out.status) == 0 and int(ref.status) == 0
    # not a vacuous identity: the analyses moved away from the forecasts
    assert float(jnp.max(jnp.abs(out.analysis_mean - out.forecast_mean))) > 0.1


def test_beta_c_zero_without_localisation_is_ensemble_kalman_mean():
    # (Same configuration and shapes as the 3D-Var test: the same compiled program.)
    A, H, r, B_c, E0, _ = _problem(1)
    y = np.array([0.1, 0.4, -0.7, 1.2])
    method = EnVar(ff.ETKF(), jnp.asarray(B_c), beta_c=_w(0.0), beta_e=_w(1.0), **CG)
    _, info = _one_cycle(method, _model(A, H, r), E0, jnp.asarray(y))
    Ef = E0 @ A.T
    xb = Ef.mean(0)
    X = Ef - xb
    P = X.T @ X / (X.shape[0] - 1)
    xa = xb + P @ H.T @ np.linalg.solve(H @ P @ H.T + np.diag(r), y - H @ xb)
    np.testing.assert_allclose(info.analysis_mean, xa, rtol=TOL, atol=TOL)


def test_hybrid_localised_3d_matches_closed_form_and_log_likelihood():
    # General hybrid B with a Gaspari-Cohn-localised ensemble part, a dense R and a missing
    # observation: x_a = x_b + B H^T (H B H^T + R)^{-1} d over the observed rows, and the
    # log-likelihood log N(d; 0, H B H^T + R).
    A, H, r, B_c, E0, coords = _problem(2)
    rng = np.random.default_rng(5)
    W = rng.standard_normal((4, 4))
    R = W @ W.T / 4 + np.diag(r)
    y = np.array([0.3, np.nan, -0.4, 1.1])
    model = fxp.Model(
        dynamics=_Linear(jnp.asarray(A)),
        obs_op=jnp.asarray(H),
        obs_noise=jnp.asarray(R),
        state_coords=jnp.asarray(coords),
    )
    method = EnVar(
        ff.ETKF(), jnp.asarray(B_c), beta_c=_w(0.4), beta_e=_w(0.9), localization_radius=2.0, **CG
    )
    _, info = _one_cycle(method, model, E0, jnp.asarray(y))
    Ef = E0 @ A.T
    xb = Ef.mean(0)
    L = _gc(coords[:, None] - coords[None, :], 2.0)
    B = _hybrid_B(Ef - xb, B_c, 0.4, 0.9, L)
    keep = ~np.isnan(y)
    Ho, Ro, d = H[keep], R[np.ix_(keep, keep)], (y - H @ xb)[keep]
    S = Ho @ B @ Ho.T + Ro
    xa = xb + B @ Ho.T @ np.linalg.solve(S, d)
    np.testing.assert_allclose(info.analysis_mean, xa, rtol=TOL, atol=TOL)
    loglik = -0.5 * (
        keep.sum() * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + d @ np.linalg.solve(S, d)
    )
    np.testing.assert_allclose(info.log_likelihood, loglik, rtol=TOL)


LAG = 3


def _run_window(method, model, E0, ys):
    return ff.run(
        method,
        model,
        jnp.asarray(E0),
        jnp.asarray(ys),
        jnp.arange(1.0, LAG + 1),
        key=jax.random.key(0),
    )


@pytest.mark.parametrize("beta_c, radius", [(0.0, None), (0.5, 2.5)])
def test_4d_envar_linear_model_matches_4d_kalman_mean(beta_c, radius):
    # 4D-EnVar over lag = 3 cycles of a linear model: the increment at the window's end is
    # B_{end, window} H^T (H B_window H^T + R)^{-1} d, with the ensemble part's covariances
    # between times from the ensemble trajectories and the static part constant in time.
    A, H, r, B_c, E0, coords = _problem(3)
    rng = np.random.default_rng(7)
    ys = rng.standard_normal((LAG, 4))
    method = EnVar(
        ff.ETKF(),
        jnp.asarray(B_c),
        beta_c=_w(beta_c),
        beta_e=_w(1.0),
        localization_radius=radius,
        lag=LAG,
        **CG,
    )
    out = _run_window(method, _model(A, H, r, coords), E0, ys)
    traj = [E0 @ np.linalg.matrix_power(A, j + 1).T for j in range(LAG)]
    means = [E.mean(0) for E in traj]
    anoms = [E - m for E, m in zip(traj, means, strict=True)]
    L = np.ones((6, 6)) if radius is None else _gc(coords[:, None] - coords[None, :], radius)
    n_e = E0.shape[0]
    blocks = [
        [beta_c * B_c + L * (anoms[j].T @ anoms[k]) / (n_e - 1) for k in range(LAG)]
        for j in range(LAG)
    ]
    B = np.block(blocks)
    Hw = np.kron(np.eye(LAG), H)
    Rw = np.diag(np.tile(r, LAG))
    d = np.concatenate([ys[j] - H @ means[j] for j in range(LAG)])
    inc = B @ Hw.T @ np.linalg.solve(Hw @ B @ Hw.T + Rw, d)
    np.testing.assert_allclose(out.analysis_mean[-1], means[-1] + inc[-6:], rtol=TOL, atol=TOL)
    # inside the window there is no analysis yet: the rows are the forecasts
    np.testing.assert_allclose(out.analysis_mean[:2], np.stack(means[:2]), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out.diagnostics.analysed, [False, False, True])


def _np_etkf(A, H, r, ys, E):
    """Sequential symmetric-square-root ETKF (numpy, Hunt et al. 2007 eqs. 20-24)."""
    n_e = E.shape[0]
    for y in ys:
        E = E @ A.T
        x = E.mean(0)
        X = E - x
        Y = E @ H.T
        Yp = Y - Y.mean(0)
        Rinv = np.diag(1.0 / r)
        C = (n_e - 1) * np.eye(n_e) + Yp @ Rinv @ Yp.T
        vals, vecs = np.linalg.eigh(C)
        Pw = vecs @ np.diag(1 / vals) @ vecs.T
        W = vecs @ np.diag(np.sqrt((n_e - 1) / vals)) @ vecs.T
        w = Pw @ Yp @ Rinv @ (y - Y.mean(0))
        E = x + w @ X + W @ X
    return E


def test_4d_window_ensemble_equals_sequential_etkf_for_linear_perfect_model():
    # Hunt et al. (2004): for a linear perfect model the 4D-ETKF analysis at the window end
    # equals the sequential ETKF's (mean and covariance), so EnVar(beta_c=0, lag=3) after
    # one window == ETKF after three cycles (numpy), to round-off (1e-9). (The EnVar run is
    # the compiled program of the beta_c = 0 case above.)
    A, H, r, B_c, E0, coords = _problem(4)
    ys = np.random.default_rng(8).standard_normal((LAG, 4))
    model = _model(A, H, r, coords)
    method = EnVar(ff.ETKF(), jnp.asarray(B_c), beta_c=_w(0.0), beta_e=_w(1.0), lag=LAG, **CG)
    out = _run_window(method, model, E0, ys)
    ref = _np_etkf(A, H, r, ys, E0)
    np.testing.assert_allclose(out.analysis_mean[-1], ref.mean(0), rtol=1e-9, atol=1e-9)
    cov = np.cov(np.asarray(out.state.ensemble), rowvar=False)
    cov_ref = np.cov(ref, rowvar=False)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-9, atol=1e-9)


# --- one nonlinear twin (L96, N_x = 10, N_e = 8, 6 cycles) shared by the cycled tests ------

N_T = 6
INFL = fxp.MultiplicativeInflator(1.05)


def _np_l96_step(x, dt=0.05, forcing=8.0):
    # One RK4 step of Lorenz (1996), re-derived in numpy (the model's own scheme and dt).
    def rhs(v):
        return (np.roll(v, -1) - np.roll(v, 2)) * np.roll(v, 1) - v + forcing

    k1 = rhs(x)
    k2 = rhs(x + 0.5 * dt * k1)
    k3 = rhs(x + 0.5 * dt * k2)
    k4 = rhs(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.fixture(scope="module")
def l96_twin():
    # The truth, observations and initial ensemble in numpy (no compiled programs).
    n_x, n_e = 10, 8
    model = fxp.Model(dynamics=Lorenz96(n_x), obs_op=jnp.eye(n_x), obs_noise=1.0)
    rng = np.random.default_rng(3)
    x = 8.0 + rng.standard_normal(n_x)
    truth = []
    for _ in range(N_T):
        x = _np_l96_step(x)
        truth.append(x)
    truth = np.array(truth)
    ys = jnp.asarray(truth + rng.standard_normal(truth.shape))
    E0 = jnp.asarray(truth[0][None, :] + rng.standard_normal((n_e, n_x)))
    times = 0.05 * jnp.arange(1, N_T + 1)
    return model, E0, ys, times, jnp.asarray(truth)


def _envar(beta_c, beta_e, static_cov, **kw):
    # The cycled L96 configuration: betas and B_c as arrays, CG at 1e-12 (float64).
    return EnVar(ff.ETKF(), _w(static_cov), beta_c=beta_c, beta_e=beta_e, inflator=INFL, **kw, **CG)


def _cycle(method, twin, key=0, dtype=None):
    model, E0, ys, times, _ = twin
    if dtype is not None:
        E0 = E0.astype(dtype)
    return ff.run(method, model, E0, ys, times, key=jax.random.key(key), throw=False)


def test_cycled_beta_c_zero_equals_etkf_run(l96_twin):
    # The whole cycled run (nonlinear L96, inflation, rotation): with beta_c = 0 and no
    # localisation the hybrid mean is the ETKF mean, so re-centring changes nothing and the
    # run equals the ETKF's (means, log-likelihoods) to the CG tolerance.
    method = _envar(_w(0.0), _w(1.0), 1.0, rotate=True)
    out = _cycle(method, l96_twin, key=9)
    ref = _cycle(ff.EnsembleFilter(ff.ETKF(), inflator=INFL, rotate=True), l96_twin, key=9)
    np.testing.assert_allclose(out.analysis_mean, ref.analysis_mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=1e-8)
    assert int(out.status) == 0 and int(ref.status) == 0


def test_hybrid_improves_on_the_prior_and_same_key_same_run(l96_twin):
    model, E0, ys, times, truth = l96_twin
    method = EnVar(
        ff.ETKF(),
        3.0,
        beta_c=0.05,
        beta_e=1.0,
        localization_radius=4.0,
        inflator=INFL,
        rotate=True,
    )
    model = fxp.Model(
        model.dynamics,
        model.obs_op,
        model.obs_noise,
        state_coords=jnp.arange(10.0),
        distance=fxp.PeriodicDistance(10.0),
    )
    twin = (model, E0, ys, times, truth)
    a = _cycle(method, twin, key=1)
    b = _cycle(method, twin, key=1)
    c = _cycle(method, twin, key=2)
    assert int(a.status) == 0
    np.testing.assert_array_equal(a.analysis_mean, b.analysis_mean)
    assert not np.array_equal(a.analysis_mean, c.analysis_mean)
    rmse_a = float(jnp.mean(fxp.rmse(a.analysis_mean[2:], truth[2:])))
    # observation error std is 1: an analysis that uses the observations beats them
    assert rmse_a < 0.8, rmse_a


def test_jit_vmap_grad_over_beta_and_traced_bad_beta_status(l96_twin):
    # The plain run is the compiled program of test_cycled_beta_c_zero_equals_etkf_run (the
    # rotation is fixed by the key, so the run is a deterministic function of beta_c); jit,
    # vmap and grad are ONE more program: jit(vmap(value_and_grad)) over beta_c.
    truth = l96_twin[4]

    def score(beta_c, beta_e):
        out = _cycle(_envar(beta_c, beta_e, 2.0, rotate=True), l96_twin)
        return jnp.mean((out.analysis_mean - truth) ** 2), out.status

    b_c, b_e = _w(0.1), _w(0.8)
    plain, status = score(b_c, b_e)
    assert int(status) == 0
    value_and_grad = jax.value_and_grad(lambda c: score(c, b_e), has_aux=True)
    (swept, status), grads = jax.jit(jax.vmap(value_and_grad))(jnp.array([0.1, -0.1, jnp.nan]))
    # a traced negative or NaN weight is a failed run (status 1), never a plausible number
    np.testing.assert_array_equal(status, [0, 1, 1])
    np.testing.assert_allclose(swept[0], plain, rtol=1e-9)
    h = 1e-5
    fd = (score(b_c + h, b_e)[0] - score(b_c - h, b_e)[0]) / (2 * h)
    # central difference error O(h^2) ~ 1e-10 relative, CG error ~1e-12: 1e-5 is generous
    assert grads[0] != 0
    np.testing.assert_allclose(grads[0], fd, rtol=1e-5)


def test_float32():
    # The 4D linear window (the float64 run is the compiled program of the beta_c = 0 case of
    # test_4d_envar_linear_model_matches_4d_kalman_mean); float32 CG cannot reach 1e-12, so
    # the float32 run uses EnVar's default tolerance (1e-6).
    A, H, r, B_c, E0, coords = _problem(3)
    ys = np.random.default_rng(9).standard_normal((LAG, 4))
    model = _model(A, H, r, coords)
    kw = {"beta_c": _w(0.0), "beta_e": _w(1.0), "lag": LAG}
    out64 = _run_window(EnVar(ff.ETKF(), jnp.asarray(B_c), **kw, **CG), model, E0, ys)
    model32 = eqx.tree_at(lambda m: m.obs_op, model, model.obs_op.astype(jnp.float32))
    out32 = _run_window(
        EnVar(ff.ETKF(), jnp.asarray(B_c, jnp.float32), **kw), model32, E0.astype(np.float32), ys
    )
    assert out32.analysis_mean.dtype == jnp.float32
    assert int(out32.status) == 0
    # float32 round-off (1e-7) and the CG tolerance (1e-6) through 3 cycles of a
    # well-conditioned linear problem: far below 1e-3, while a dtype bug is O(1)
    np.testing.assert_allclose(out32.analysis_mean, out64.analysis_mean, atol=1e-3)


def test_bad_input():
    B = jnp.eye(3)
    with pytest.raises(ValueError, match="beta_c must be a finite number >= 0"):
        EnVar(ff.ETKF(), B, beta_c=-0.1)
    with pytest.raises(ValueError, match="beta_e must be a finite number >= 0"):
        EnVar(ff.ETKF(), B, beta_e=float("nan"))
    with pytest.raises(ValueError, match="beta_c = beta_e = 0"):
        EnVar(ff.ETKF(), B, beta_c=0.0, beta_e=0.0)
    with pytest.raises(ValueError, match="singular"):
        EnVar(ff.ETKF(), jnp.diag(jnp.array([1.0, 1.0, 0.0])))
    with pytest.raises(ValueError, match="singular"):
        v = jnp.ones((3, 1))
        EnVar(ff.ETKF(), v @ v.T)
    with pytest.raises(ValueError, match="non-finite"):
        EnVar(ff.ETKF(), B.at[0, 1].set(jnp.nan))
    with pytest.raises(ValueError, match="variance <= 0"):
        EnVar(ff.ETKF(), jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="lag must be"):
        EnVar(ff.ETKF(), B, lag=0)
    with pytest.raises(ValueError, match="localization_radius"):
        EnVar(ff.ETKF(), B, localization_radius=-1.0)
    with pytest.raises(TypeError, match="kernel"):
        EnVar(object(), B)
    with pytest.raises(TypeError, match="stateless"):
        EnVar(ff.ETKF(), B, inflator=fxp.AdaptiveInflator())
    A, H, r, B_c, E0, _ = _problem(0)
    model = _model(A, H, r)
    with pytest.raises(ValueError, match="static_cov must be an"):
        EnVar(ff.ETKF(), jnp.eye(3)).init(jax.random.key(0), jnp.asarray(E0), model)
    with pytest.raises(ValueError, match="state_coords"):
        EnVar(ff.ETKF(), 1.0, localization_radius=2.0).init(
            jax.random.key(0), jnp.asarray(E0), model
        )
    with pytest.raises(ValueError, match="N_e >= 2"):
        EnVar(ff.ETKF(), 1.0).init(jax.random.key(0), jnp.asarray(E0[:1]), model)
