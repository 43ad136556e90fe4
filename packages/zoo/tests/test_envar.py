"""EnVar (hybrid 3D/4D ensemble-variational) against numpy closed forms and the ETKF.

Tolerances: the control-variable normal equations are solved by CG with rtol = atol = 1e-12
(float64); their condition number is at most 1 + |G|^2 (eigenvalues >= 1), here < 1e3, so the
solution error is < 1e-9 relative. Closed forms are compared at 1e-8.
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


def _model(A, H, r, coords=None):
    A_j = jnp.asarray(A)
    return fxp.Model(
        dynamics=lambda x, t0, t1: A_j @ x,
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
    method = EnVar(ff.ETKF(), jnp.asarray(B_c), beta_c=0.7, beta_e=0.0, **CG)
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
    A, H, r, B_c, E0, _ = _problem(1)
    y = np.array([0.1, 0.4, -0.7, 1.2])
    method = EnVar(ff.ETKF(), jnp.asarray(B_c), beta_c=0.0, beta_e=1.0, **CG)
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
        dynamics=lambda x, t0, t1: jnp.asarray(A) @ x,
        obs_op=jnp.asarray(H),
        obs_noise=jnp.asarray(R),
        state_coords=jnp.asarray(coords),
    )
    method = EnVar(
        ff.ETKF(), jnp.asarray(B_c), beta_c=0.4, beta_e=0.9, localization_radius=2.0, **CG
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


@pytest.mark.parametrize("beta_c, radius", [(0.0, None), (0.5, 2.5)])
def test_4d_envar_linear_model_matches_4d_kalman_mean(beta_c, radius):
    # 4D-EnVar over lag = 3 cycles of a linear model: the increment at the window's end is
    # B_{end, window} H^T (H B_window H^T + R)^{-1} d, with the ensemble part's covariances
    # between times from the ensemble trajectories and the static part constant in time.
    lag = 3
    A, H, r, B_c, E0, coords = _problem(3)
    rng = np.random.default_rng(7)
    ys = rng.standard_normal((lag, 4))
    method = EnVar(
        ff.ETKF(),
        jnp.asarray(B_c),
        beta_c=beta_c,
        beta_e=1.0,
        localization_radius=radius,
        lag=lag,
        **CG,
    )
    out = ff.run(
        method,
        _model(A, H, r, coords),
        jnp.asarray(E0),
        ys,
        jnp.arange(1.0, lag + 1),
        key=jax.random.key(0),
    )
    traj = [E0 @ np.linalg.matrix_power(A, j + 1).T for j in range(lag)]
    means = [E.mean(0) for E in traj]
    anoms = [E - m for E, m in zip(traj, means, strict=True)]
    L = np.ones((6, 6)) if radius is None else _gc(coords[:, None] - coords[None, :], radius)
    n_e = E0.shape[0]
    blocks = [
        [beta_c * B_c + L * (anoms[j].T @ anoms[k]) / (n_e - 1) for k in range(lag)]
        for j in range(lag)
    ]
    B = np.block(blocks)
    Hw = np.kron(np.eye(lag), H)
    Rw = np.diag(np.tile(r, lag))
    d = np.concatenate([ys[j] - H @ means[j] for j in range(lag)])
    inc = B @ Hw.T @ np.linalg.solve(Hw @ B @ Hw.T + Rw, d)
    np.testing.assert_allclose(out.analysis_mean[-1], means[-1] + inc[-6:], rtol=TOL, atol=TOL)
    # inside the window there is no analysis yet: the rows are the forecasts
    np.testing.assert_allclose(out.analysis_mean[:2], np.stack(means[:2]), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out.diagnostics.analysed, [False, False, True])


def test_4d_window_ensemble_equals_sequential_etkf_for_linear_perfect_model():
    # Hunt et al. (2004): for a linear perfect model the 4D-ETKF analysis at the window end
    # equals the sequential ETKF's (mean and covariance), so EnVar(beta_c=0, lag=2) after
    # one window == ETKF after two cycles, to round-off (1e-9).
    A, H, r, B_c, E0, _ = _problem(4)
    ys = np.random.default_rng(8).standard_normal((2, 4))
    model = _model(A, H, r)
    method = EnVar(ff.ETKF(), jnp.asarray(B_c), beta_c=0.0, beta_e=1.0, lag=2, **CG)
    times = jnp.array([1.0, 2.0])
    out = ff.run(method, model, jnp.asarray(E0), ys, times, key=jax.random.key(0))
    ref = ff.run(ff.ETKF(), model, jnp.asarray(E0), ys, times, key=jax.random.key(0))
    np.testing.assert_allclose(out.analysis_mean[-1], ref.analysis_mean[-1], rtol=1e-9, atol=1e-9)
    cov = np.cov(np.asarray(out.state.ensemble), rowvar=False)
    cov_ref = np.cov(np.asarray(ref.state.particles), rowvar=False)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def l96_twin():
    n_x, n_e, n_t = 10, 8, 15
    l96 = Lorenz96(n_x)
    model = fxp.Model(dynamics=l96, obs_op=jnp.eye(n_x), obs_noise=1.0)
    x0 = 8.0 + jax.random.normal(jax.random.key(3), (n_x,))

    def advance(x, t):
        x = l96(x, t, t + 0.05)
        return x, x

    _, truth = jax.jit(lambda x: jax.lax.scan(advance, x, 0.05 * jnp.arange(n_t)))(x0)
    ys = truth + jax.random.normal(jax.random.key(4), truth.shape)
    E0 = truth[0][None, :] + jax.random.normal(jax.random.key(5), (n_e, n_x))
    times = 0.05 * jnp.arange(1, n_t + 1)
    return model, E0, ys, times, truth


def test_cycled_beta_c_zero_equals_etkf_run(l96_twin):
    # The whole cycled run (nonlinear L96, inflation, rotation): with beta_c = 0 and no
    # localisation the hybrid mean is the ETKF mean, so re-centring changes nothing and the
    # run equals the ETKF's (means, log-likelihoods) to the CG tolerance.
    model, E0, ys, times, _ = l96_twin
    infl = fxp.MultiplicativeInflator(1.05)
    method = EnVar(ff.ETKF(), 1.0, beta_c=0.0, beta_e=1.0, inflator=infl, rotate=True, **CG)
    out = ff.run(method, model, E0, ys, times, key=jax.random.key(9))
    ref = ff.run(
        ff.EnsembleFilter(ff.ETKF(), inflator=infl, rotate=True),
        model,
        E0,
        ys,
        times,
        key=jax.random.key(9),
    )
    np.testing.assert_allclose(out.analysis_mean, ref.analysis_mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=1e-8)
    assert int(out.status) == 0


def test_hybrid_improves_on_the_prior_and_same_key_same_run(l96_twin):
    model, E0, ys, times, truth = l96_twin
    method = EnVar(
        ff.ETKF(),
        3.0,
        beta_c=0.05,
        beta_e=1.0,
        localization_radius=4.0,
        inflator=fxp.MultiplicativeInflator(1.05),
        rotate=True,
    )
    model = fxp.Model(
        model.dynamics,
        model.obs_op,
        model.obs_noise,
        state_coords=jnp.arange(10.0),
        distance=fxp.PeriodicDistance(10.0),
    )
    a = ff.run(method, model, E0, ys, times, key=jax.random.key(1))
    b = ff.run(method, model, E0, ys, times, key=jax.random.key(1))
    c = ff.run(method, model, E0, ys, times, key=jax.random.key(2))
    np.testing.assert_array_equal(a.analysis_mean, b.analysis_mean)
    assert not np.array_equal(a.analysis_mean, c.analysis_mean)
    rmse_a = float(jnp.mean(fxp.rmse(a.analysis_mean[5:], truth[5:])))
    # observation error std is 1: an analysis that uses the observations beats them
    assert rmse_a < 0.8


def test_jit_vmap_grad_over_beta_and_traced_bad_beta_status(l96_twin):
    model, E0, ys, times, truth = l96_twin

    def score(beta_c, beta_e):
        method = EnVar(ff.ETKF(), 2.0, beta_c=beta_c, beta_e=beta_e, **CG)
        out = ff.run(method, model, E0, ys[:4], times[:4], key=jax.random.key(0), throw=False)
        return jnp.mean((out.analysis_mean - truth[:4]) ** 2), out.status

    b_c, b_e = jnp.asarray(0.1), jnp.asarray(0.8)
    jitted = eqx.filter_jit(score)
    # a traced negative or NaN weight is a failed run (status 1), never a plausible number
    swept, status = jax.vmap(score, in_axes=(0, None))(jnp.array([0.1, -0.1, jnp.nan]), b_e)
    np.testing.assert_array_equal(status, [0, 1, 1])
    np.testing.assert_allclose(swept[0], jitted(b_c, b_e)[0], rtol=1e-9)
    grad = jax.grad(lambda c: score(c, b_e)[0])(b_c)
    h = 1e-5
    fd = (jitted(b_c + h, b_e)[0] - jitted(b_c - h, b_e)[0]) / (2 * h)
    # central difference error O(h^2) ~ 1e-10 relative, CG error ~1e-12: 1e-5 is generous
    assert grad != 0
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_float32(l96_twin):
    model, E0, ys, times, _ = l96_twin
    method = EnVar(
        ff.ETKF(), 2.0, beta_c=0.1, beta_e=1.0, inflator=fxp.MultiplicativeInflator(1.05)
    )
    out64 = ff.run(method, model, E0, ys[:5], times[:5], key=jax.random.key(0))
    out32 = ff.run(method, model, E0.astype(jnp.float32), ys[:5], times[:5], key=jax.random.key(0))
    assert out32.analysis_mean.dtype == jnp.float32
    # 5 chaotic cycles amplify float32 round-off (1e-7) by far less than 1e4 here
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
