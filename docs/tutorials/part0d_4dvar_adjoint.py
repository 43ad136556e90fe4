# %% [markdown]
# # 0.8 · 4D-Var with adjoints — and how a differentiable EnKF compares
#
# 4D-Var fits one model trajectory to all the observations of a window by choosing its
# initial state (Part 0.D, tutorial 0.8; tutorial 0.7 is the 3D-Var/Kalman duality). Over
# observation times $t = 1, \dots, T$, with $M_{1:t}$ the model from the window start to $t$:
#
# $$J(x_0) = \tfrac{1}{2}\|x_0 - x^b_0\|^2_{B^{-1}}
# + \sum_t \tfrac{1}{2}\|y_t - H_t M_{1:t} x_0\|^2_{R_t^{-1}}.$$
#
# `filterax.zoo.variational_analysis` minimises it by incremental Gauss–Newton in control
# variables ($x_0 = x^b_0 + Uv$, $B = UU^\top$): each step solves
# $(I + U^\top G^\top R^{-1} G U)\,\delta v = U^\top G^\top R^{-1} d - v$ by conjugate
# gradients, with the tangent-linear model $G$ from `jax.linearize` and the adjoint
# $G^\top$ from `jax.linear_transpose` (or the rows of $G$ from `jax.vjp`) — no hand-written
# adjoint. `Var4D` cycles it as DAPPER's `Var4D` does. This page checks the linear-model
# identity, shows that the adjoint *is* reverse-mode autodiff, and measures the cost of
# 4D-Var next to differentiating an ensemble Kalman filter.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
import filterax.smoothers as fs
from filterax.zoo import Lorenz96, background_sqrt, variational_analysis, variational_cost

jax.config.update("jax_enable_x64", True)

T_WIN = 6  # docs size: observation times in the window of the linear identity
L_WIN = 10  # docs size: window (observation intervals) of the cost/memory table
N_REPEAT = 5  # timed calls after compilation (the median is reported)

# %% [markdown]
# ## 0.8 4D-Var == the Kalman smoother at the window start (linear model)
#
# Over a window, strong-constraint 4D-Var on a linear model
# with prior $\mathcal N(x^b_0, B)$ at the window start is the Gaussian posterior of $x_0$
# given all the window's observations, i.e. the Kalman (Rauch–Tung–Striebel) smoother's
# estimate at the window start. The page builds the window map
# $x_0 \mapsto (H M_{1:t} x_0)_{t=1..T}$ as a `lax.scan`, minimises with
# `variational_analysis`, and compares with `KalmanFilter` + `filterax.smoothers.rts_smooth`.
# The smoother needs the window start as a filter time: it is added with an all-missing
# (NaN) observation and a model that does nothing over that first interval.

# %%
rng = np.random.default_rng(0)
N_X, N_Y = 6, 3
A = jnp.asarray(0.97 * np.linalg.qr(rng.standard_normal((N_X, N_X)))[0])  # a damped rotation
H = jnp.asarray(rng.standard_normal((N_Y, N_X)))
r = jnp.asarray(rng.uniform(0.3, 1.0, N_Y))  # R = diag(r)
xb = jnp.asarray(rng.standard_normal(N_X))
a = rng.standard_normal((N_X, N_X))
B = jnp.asarray(a @ a.T / N_X + 0.3 * np.eye(N_X))
ys = (
    jnp.asarray(rng.standard_normal((T_WIN, N_Y))).at[2, 0].set(jnp.nan)
)  # a missing entry: zero weight in both


def window(x0):
    def body(z, _):
        z = A @ z
        return z, H @ z

    return jax.lax.scan(body, x0, None, length=T_WIN)[1]


x4d = jax.jit(lambda y: variational_analysis(window, xb, background_sqrt(B), y, r).analysis)(ys)

# the smoother: window start at t = 0 (nothing observed), observations at t = 1..T
dyn = lambda x, t0, t1: jnp.where(t1 <= 0.0, x, A @ x)  # noqa: E731
ys_kf = jnp.concatenate([jnp.full((1, N_Y), jnp.nan), ys])
times_kf = jnp.arange(0.0, T_WIN + 1)
kfw = ff.KalmanFilter().filter(xb, B, ys_kf, times_kf, dyn, H, r, t0=-1.0)
smoothed = fs.rts_smooth(kfw, dyn, times_kf, t0=-1.0)
print("4D-Var analysis  ", np.round(np.asarray(x4d), 6))
print("RTS at the start ", np.round(np.asarray(smoothed.mean[0]), 6))
# identity in exact arithmetic; CG rtol 1e-10 on a Hessian of condition < 1e3: 1e-8
assert jnp.max(jnp.abs(x4d - smoothed.mean[0])) < 1e-8

# %% [markdown]
# **The adjoint is the reverse-mode derivative.** The gradient of the 4D-Var cost in $x_0$ is
# the classic adjoint sum $\nabla J = B^{-1}(x_0 - x^b_0) - \sum_t M_{1:t}^\top H^\top
# R^{-1}(y_t - H M_{1:t} x_0)$, one backward sweep through the window. `jax.grad` of the cost
# produces exactly that sweep; written out by hand for the linear model (missing entries
# zero-weighted) it agrees to round-off:

# %%
U = background_sqrt(B)


def j4d(x0):
    return variational_cost(window, xb, U, ys, r, jnp.linalg.solve(U.as_matrix(), x0 - xb))


x_probe = xb + 0.3


@jax.jit
def hand_adjoint(x0):
    mask = ~jnp.isnan(ys)
    resid = jnp.where(mask, jnp.nan_to_num(ys) - window(x0), 0.0) / r  # R^{-1}(y - H M x0)
    grad = jnp.linalg.solve(B, x0 - xb)
    for t in range(T_WIN):
        grad -= jnp.linalg.matrix_power(A, t + 1).T @ H.T @ resid[t]
    return grad


autodiff = jax.jit(jax.grad(j4d))(x_probe)
adjoint = hand_adjoint(x_probe)
print("max |jax.grad - hand-written adjoint| =", float(jnp.max(jnp.abs(autodiff - adjoint))))
assert jnp.allclose(autodiff, adjoint, atol=1e-10)  # same sums in another order: round-off

# %% [markdown]
# ## 0.8 Cost, memory and Jacobian access: 4D-Var vs a differentiable EnKF
#
# Both need derivatives, of different things:
#
# - 4D-Var needs $\partial J / \partial x_0$ — the adjoint (transposed Jacobian) of the
#   model along the window — at every Gauss–Newton iteration of every analysis.
# - The EnKF needs no model Jacobian to assimilate: the ensemble's anomalies estimate the
#   covariances ($Y \approx H M X$). Differentiating *through* the filter (Part 8) gives
#   gradients of a run's loss with respect to its parameters — here the inflation factor —
#   by reverse-mode autodiff through the whole cycle `lax.scan` of `filterax.filters.run`.
#
# Measured on Lorenz-96 ($N_x = 40$, every component observed every $0.05$ with $R = I$), over
# a window of `L_WIN` observation intervals: the 4D-Var gradient (`jax.grad` of the cost),
# one full 4D-Var analysis (3 Gauss–Newton iterations, CG inside, tangent-linear model by
# `jax.linearize`), and the gradient of an ETKF run's ($N_e = 20$) summed log-likelihood
# with respect to its inflation factor. Time is the median of `N_REPEAT`
# calls after compilation; memory is the temporary buffer size XLA reports for the compiled
# program (`memory_analysis()`); both are measured on the machine that built this page and
# are not asserted.

# %%
l96 = Lorenz96(40)
R96 = 1.0
N_E = 20


@jax.jit
def l96_twin(key):
    k0, k1, k2, k3 = jax.random.split(key, 4)
    x0 = l96.integrate(8.0 + jax.random.normal(k0, (40,)), 500)  # onto the attractor
    traj = jax.lax.scan(lambda z, _: (l96.integrate(z, 1),) * 2, x0, None, length=L_WIN)[1]
    ys = traj + jnp.sqrt(R96) * jax.random.normal(k1, traj.shape)
    xb = x0 + jax.random.normal(k2, (40,))  # background: truth + N(0, I)
    return x0, ys, xb, xb + jax.random.normal(k3, (N_E, 40))


x0_true, ys96, xb96, ens96 = l96_twin(jax.random.key(3))
U96 = background_sqrt(jnp.ones(40))  # B = I, the error of this background
model96 = fxp.Model(dynamics=l96, obs_op=fxp.IdentityObs(), obs_noise=R96)
times96 = 0.05 * jnp.arange(1, L_WIN + 1)


def window96(x0):  # x0 -> H M_{1:t} x0, t = 1..L (H = I)
    return jax.lax.scan(lambda z, _: (l96.integrate(z, 1),) * 2, x0, None, length=L_WIN)[1]


def grad_4dvar(v, y):
    return jax.grad(lambda v: variational_cost(window96, xb96, U96, y, R96, v))(v)


def analysis_4dvar(y):
    return variational_analysis(window96, xb96, U96, y, R96, n_iter=3).analysis


def enkf_loglik(factor, y):
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(factor))
    out = ff.run(method, model96, ens96, y, times96, key=jax.random.key(7), throw=False)
    return jnp.sum(out.log_likelihood)


def measure(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    value = jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(N_REPEAT):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return value, compile_s, float(np.median(runs)), compiled.memory_analysis().temp_size_in_bytes


rows = {
    "4D-Var gradient (adjoint)": measure(grad_4dvar, jnp.zeros(40), ys96),
    "4D-Var analysis (3 GN)": measure(analysis_4dvar, ys96),
    "ETKF gradient (through run)": measure(jax.grad(enkf_loglik), 1.02, ys96),
}
print(f"N_x = 40, window L = {L_WIN}, N_e = {N_E}")
print(f"{'what is computed':29s} {'compile [s]':>11s} {'run [ms]':>9s} {'XLA temp [KiB]':>15s}")
for name, (_, compile_s, run_s, temp) in rows.items():
    print(f"{name:29s} {compile_s:11.2f} {1e3 * run_s:9.2f} {temp / 1024:15.1f}")

# %% [markdown]
# The analysis beats the background, and the gradients are finite (sanity checks: the page
# claims nothing about their values). The background error is $\mathcal N(0, I)$, and
# the window has $L = 10$ fully observed times, so a 4D-Var analysis that did not reduce the
# error well below 1 would be broken.

# %%
x_a = rows["4D-Var analysis (3 GN)"][0]
err_b = float(jnp.sqrt(jnp.mean((xb96 - x0_true) ** 2)))
err_a = float(jnp.sqrt(jnp.mean((x_a - x0_true) ** 2)))
print(f"window-start RMSE: background {err_b:.3f}, 4D-Var analysis {err_a:.3f}")
assert err_a < 0.5 * err_b
assert jnp.isfinite(rows["ETKF gradient (through run)"][0])
assert jnp.all(jnp.isfinite(rows["4D-Var gradient (adjoint)"][0]))

# %% [markdown]
# What each method needs and keeps:
#
# | | 4D-Var (adjoint) | differentiable EnKF |
# |---|---|---|
# | to *assimilate* | model adjoint $M^\top$, every Gauss–Newton step | none: $N_e$ forward runs |
# | to *learn* (gradient of a run) | a second-order adjoint | reverse mode through the `lax.scan` |
# | memory of a reverse sweep | the trajectory, $O(L\,N_x)$ | the ensembles, $O(L\,N_e N_x)$ |
# | Jacobian access | `jax.linearize`, `jax.linear_transpose` | none: anomalies, $Y \approx HMX$ |
# | rank of the background | full (a static $B$, through $U$) | $N_e - 1$ (localise to lift it) |
#
# The measured numbers of the table above, side by side:

# %%
colours = ["C0", "C1", "C2"]
names = list(rows)
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 3.4), constrained_layout=True)
ax0.barh(names, [1e3 * rows[n][2] for n in names], color=colours)
ax0.set_xlabel("time after compile [ms]")
ax0.set_xscale("log")
ax1.barh(names, [rows[n][3] / 1024 for n in names], color=colours)
ax1.set_xlabel("XLA temporary memory [KiB]")
ax1.set_xscale("log")
ax1.set_yticks([])
fig.suptitle(f"Lorenz-96, $N_x = 40$, window of {L_WIN} observation intervals, $N_e = {N_E}$")
plt.show()

# %% [markdown]
# Where to go next: Part 0.E (the information form of the same Gaussian algebra), Part 13.C
# (EnVar: a static $B$ and the ensemble covariance in one variational cost), and the cycled
# `filterax.zoo.Var3D` / `Var4D` rows on the leaderboard (`filterax-bench run`).
