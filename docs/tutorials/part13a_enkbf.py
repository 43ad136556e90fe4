# %% [markdown]
# # 13.1 · The continuous-time EnKF (ensemble Kalman–Bucy filter)
#
# When observations arrive (nearly) continuously, the data are the increments of an
# observation *path* rather than point values (Part 13.A, tutorial 13.1):
#
# $$dX_t = f(X_t)\,dt + Q^{1/2}\,dW_t,\qquad dY_t = h(X_t)\,dt + R^{1/2}\,dV_t,$$
#
# with $Q$ and $R$ intensities (covariance per unit time). For a linear model ($f = Ax$,
# $h = Hx$) the exact filter is the Kalman–Bucy filter,
#
# $$d\bar x = A\bar x\,dt + P H^\top R^{-1}(dY - H\bar x\,dt),\qquad
# \dot P = AP + PA^\top + Q - PH^\top R^{-1}HP .$$
#
# The ensemble Kalman–Bucy filter (EnKBF) replaces $P H^\top$ by the ensemble cross
# covariance $P^{xh}$ and moves each member by an SDE, with gain $K = P^{xh}R^{-1}$:
#
# - stochastic (perturbed increments, the limit of the perturbed-observation EnKF):
#
# $$dx_i = f(x_i)\,dt + Q^{1/2} dW_i + K\,\big(dY - h(x_i)\,dt - R^{1/2} dV_i\big);$$
#
# - deterministic (Bergemann & Reich 2012, the limit of the square-root filters):
#
# $$dx_i = f(x_i)\,dt + \tfrac12 Q P^{-1}(x_i - \bar x)\,dt
# + K\,\big(dY - \tfrac12 (h(x_i) + \bar h)\,dt\big).$$
#
# `filterax.zoo.EnKBF` integrates either by Euler–Maruyama (diffrax) on the grid of the
# observation increments, as a cycled method of `filterax.filters.run` (every study below is
# one cycle, so its `init`/`step` are called directly); `ContinuousStateSpaceModel`
# simulates the truth and the increments. This page measures both limits: $dt \to 0$
# (deterministic variant, against a diffrax Kalman–Bucy reference) and $N_e \to \infty$
# (stochastic variant, Monte Carlo error).

# %%
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from filterax.zoo import ContinuousStateSpaceModel, EnKBF, coarsen_increments

jax.config.update("jax_enable_x64", True)

N_FINE = 64  # docs size: grid steps of the reference path over the one-unit horizon
SUBS = (8, 32)  # docs size: EnKBF grids (steps per unit time) for the dt study
SIZES = (8, 128)  # docs size: ensemble sizes for the N_e study
N_SEEDS = 16  # docs size: independent runs per ensemble size (vmapped)

# %% [markdown]
# The system: a damped rotation observed in its first component (so the Riccati solution is
# not diagonal), one cycle of length 1.

# %%
A = np.array([[-0.5, 1.0], [-1.0, -0.5]])
H = np.array([[1.0, 0.0]])
R, Q = 0.5, np.array([0.2, 0.1])  # intensities
M0, P0 = np.array([0.5, -0.3]), np.array([[0.6, 0.1], [0.1, 0.4]])
A_j = jnp.asarray(A)


def model(n_sub):
    return ContinuousStateSpaceModel(
        lambda x, t: A_j @ x,
        jnp.asarray(H),
        R,
        dt=1.0 / n_sub,
        dt_obs=1.0,
        x0_mean=jnp.asarray(M0),
        x0_cov=jnp.asarray(P0),
        process_noise=jnp.asarray(Q),
    )


xp = model(N_FINE).simulate(jax.random.key(3), 1)  # one truth, one observation path


def exact_ensemble(n_e, seed=0):
    """Members whose sample mean and covariance are exactly M0 and P0."""
    z = np.random.default_rng(seed).standard_normal((n_e, 2))
    z -= z.mean(0)
    z = np.linalg.solve(np.linalg.cholesky(z.T @ z / (n_e - 1)), z.T).T
    return jnp.asarray(M0 + z @ np.linalg.cholesky(P0).T)


@jax.jit
def kalman_bucy(increments):
    """The Kalman–Bucy mean and covariance at t = 1 by diffrax (Tsit5, 4 steps per grid
    interval), the observation path linear between grid points."""
    h = 1.0 / N_FINE
    a, hm, qm = jnp.asarray(A), jnp.asarray(H), jnp.diag(jnp.asarray(Q))

    def vf(t, y, rate):
        m, p = y
        gain = p @ hm.T / R
        dp = a @ p + p @ a.T + qm - gain @ hm @ p
        return a @ m + gain @ (rate - hm @ m), 0.5 * (dp + dp.T)

    def interval(y, inputs):
        t0, dy = inputs
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf), diffrax.Tsit5(), t0, t0 + h, h / 4, y, args=dy / h
        )
        return jax.tree_util.tree_map(lambda leaf: leaf[0], sol.ys), None

    t0s = h * jnp.arange(N_FINE)
    y0 = (jnp.asarray(M0), jnp.asarray(P0))
    return jax.lax.scan(interval, y0, (t0s, increments.reshape(N_FINE, 1)))[0]


m_ref, p_ref = kalman_bucy(xp.increments[0])


def moments(ensemble):
    mean = jnp.mean(ensemble, axis=-2)
    anom = ensemble - mean[..., None, :]
    return mean, jnp.einsum("...ei,...ej->...ij", anom, anom) / (ensemble.shape[-2] - 1)


def one_cycle(method, model, ensemble0, increments, key):
    """One cycle (t = 0 -> 1) of the cycled method: what `filterax.filters.run` does per
    cycle, called directly (one cycle needs none of the driver's bookkeeping)."""
    state = method.init(key, ensemble0, model)
    state, _ = method.step(key, state, model, jnp.asarray(0.0), jnp.asarray(1.0), increments)
    return state  # the analysis ensemble at t = 1


# %% [markdown]
# ## 13.1 Convergence in $dt$ (deterministic EnKBF)
#
# Started from an ensemble with exactly the prior's mean and covariance, the deterministic
# EnKBF's mean and covariance on a linear model *are* an Euler scheme of the Kalman–Bucy
# equations (no sampling error at all), so their error is the time-discretisation error,
# first order in $dt$ for this additive-noise problem. The filters see the same observation
# path, summed onto coarser grids with `coarsen_increments`.

# %%
err_dt_m, err_dt_p = [], []
for n_sub in SUBS:
    incs = coarsen_increments(xp.increments, 1, N_FINE // n_sub)
    ensemble = eqx.filter_jit(one_cycle)(
        EnKBF("deterministic"), model(n_sub), exact_ensemble(5), incs[0], jax.random.key(0)
    )
    mean, cov = moments(ensemble)
    err_dt_m.append(float(jnp.max(jnp.abs(mean - m_ref))))
    err_dt_p.append(float(jnp.max(jnp.abs(cov - p_ref))))


def slope(x, err):
    return float(np.polyfit(np.log(x), np.log(err), 1)[0])


dts = 1.0 / np.array(SUBS)
slope_dt_m, slope_dt_p = slope(dts, err_dt_m), slope(dts, err_dt_p)
print(
    f"errors vs dt: mean {np.round(err_dt_m, 5)} (slope {slope_dt_m:.2f}), "
    f"cov {np.round(err_dt_p, 5)} (slope {slope_dt_p:.2f})"
)
# Euler–Maruyama, strong order 1 here; one path, so the fitted slope is not exactly 1: the
# bounds [0.75, 1.3] are those of the library's test. The absolute errors confirm that the
# limit is the Kalman–Bucy filter (P ~ 0.3).
assert 0.75 < slope_dt_m < 1.3 and 0.75 < slope_dt_p < 1.3
assert err_dt_m[-1] < 0.03 and err_dt_p[-1] < 0.01

# %% [markdown]
# ## 13.1 Convergence in $N_e$ (stochastic EnKBF)
#
# The stochastic variant has Monte Carlo error. Against its own $N_e \to \infty$ limit at the
# same $dt$ — the Euler scheme of the mean-field equations
# $m \leftarrow m + dt\,Am + K(dY - Hm\,dt)$,
# $P \leftarrow (I + dt(A - KH))P(\cdot)^\top + dt\,Q + dt\,K R K^\top$ — the error decays
# like $N_e^{-1/2}$. Each ensemble size is run for `N_SEEDS` seeds at once (`jax.vmap` of
# `run`), with a random initial ensemble from the prior.

# %%
N_SUB_NE = SUBS[0]
m_lim, p_lim = M0.copy(), P0.copy()
for dy in np.asarray(coarsen_increments(xp.increments, 1, N_FINE // N_SUB_NE)).ravel():
    gain = p_lim @ H.T / R
    step = np.eye(2) + (A - gain @ H) / N_SUB_NE
    m_lim = m_lim + A @ m_lim / N_SUB_NE + gain @ (dy - H @ m_lim / N_SUB_NE)
    p_lim = step @ p_lim @ step.T + (np.diag(Q) + R * gain @ gain.T) / N_SUB_NE

model_ne = model(N_SUB_NE)
incs_ne = coarsen_increments(xp.increments, 1, N_FINE // N_SUB_NE)
err_ne_m, err_ne_p = [], []
for n_e in SIZES:

    def one(key, n_e=n_e):
        ens0 = model_ne.initial_ensemble(jax.random.fold_in(key, 1), n_e)
        return one_cycle(EnKBF("stochastic"), model_ne, ens0, incs_ne[0], key)

    keys = jax.random.split(jax.random.key(5), N_SEEDS)
    mean, cov = moments(eqx.filter_jit(jax.vmap(one))(keys))
    err_ne_m.append(float(jnp.sqrt(jnp.mean((mean - m_lim) ** 2))))
    err_ne_p.append(float(jnp.sqrt(jnp.mean((cov - p_lim) ** 2))))
slope_ne_m, slope_ne_p = slope(SIZES, err_ne_m), slope(SIZES, err_ne_p)
print(
    f"RMS errors vs N_e: mean {np.round(err_ne_m, 4)} (slope {slope_ne_m:.2f}), "
    f"cov {np.round(err_ne_p, 4)} (slope {slope_ne_p:.2f})"
)
# RMS over 16 draws is uncertain by ~18%, i.e. +-0.1 on a slope over a factor 16 in N_e:
# the slopes must lie in [-0.75, -0.3] around the -1/2 of Monte Carlo (the test's bounds).
assert -0.75 < slope_ne_m < -0.3 and -0.75 < slope_ne_p < -0.3

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
ax0.loglog(dts, err_dt_m, "o-", color="C0", label=f"mean (slope {slope_dt_m:.2f})")
ax0.loglog(dts, err_dt_p, "s-", color="C1", label=f"covariance (slope {slope_dt_p:.2f})")
ax0.loglog(dts, err_dt_m[0] * (dts / dts[0]), ":", color="0.5", label="slope 1")
ax0.set_xlabel("time step $dt$")
ax0.set_ylabel("max error vs Kalman–Bucy at $t = 1$")
ax0.set_title("deterministic EnKBF, $N_e = 5$")
ax0.legend(fontsize=8)
ax1.loglog(SIZES, err_ne_m, "o-", color="C0", label=f"mean (slope {slope_ne_m:.2f})")
ax1.loglog(SIZES, err_ne_p, "s-", color="C1", label=f"covariance (slope {slope_ne_p:.2f})")
ax1.loglog(
    SIZES, err_ne_m[0] * (np.array(SIZES) / SIZES[0]) ** -0.5, ":", color="0.5", label="slope −1/2"
)
ax1.set_xlabel("ensemble size $N_e$")
ax1.set_ylabel("RMS error vs mean-field limit")
ax1.set_title(f"stochastic EnKBF, $dt = 1/{N_SUB_NE}$, {N_SEEDS} seeds")
ax1.legend(fontsize=8)
plt.show()

# %% [markdown]
# Both limits are the Kalman–Bucy filter: the deterministic EnKBF is exact in $N_e$ for a
# linear model (its moments obey the Euler–Riccati scheme) and first order in $dt$; the
# stochastic one adds Monte Carlo error $O(N_e^{-1/2})$. For nonlinear models neither is
# exact, as for every ensemble Kalman filter. Tutorial 13.2 is the other way of using
# observation times: the 4D-EnKF.
