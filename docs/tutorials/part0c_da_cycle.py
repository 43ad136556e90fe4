# %% [markdown]
# # 0.C The forecast → analysis → inflate cycle
#
# An ensemble filter represents the filtering density of 0.A by $N_e$ samples, the rows of
# $X \in \mathbb{R}^{N_e \times N_x}$ (members first, filterax's convention), and cycles three
# steps: **forecast** (push every member through the dynamics), **analysis** (move the members
# towards the observation with a Kalman-type update built from their sample statistics) and
# **inflate** (widen the analysis ensemble to counteract the collapse that sampling error
# causes). 0.5 takes one cycle apart; 0.6 shows what a finite ensemble can and cannot
# represent.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)  # the page compares with exact references

N_E = 30  # docs size: members of the one-cycle example
N_CYCLES = 400  # cycles of the Lorenz-96 runs (scores over the last 200)

# %% [markdown]
# ## 0.5 Anatomy of one DA cycle
#
# The cycle structure, with the sample covariance that the analysis uses,
#
# $$X^f_t = \mathcal M(X^a_{t-1}) \;\to\; X^a_t = \text{analysis}(X^f_t, y_t) \;\to\;
# X^a_t \leftarrow \bar x^a_t + \lambda (X^a_t - \bar x^a_t),\qquad
# P_e = (N_e - 1)^{-1} (X - \bar X)^\top (X - \bar X).$$
#
# One cycle on Lorenz-63 (Sakov et al. 2012: all three variables observed every 0.25 time
# units with $R = 2I$), by hand with the public pieces: the model's `dynamics` vmapped over
# members, the ETKF's `analysis` kernel, and `inflate_multiplicative`.

# %%
ssm = presets.lorenz63_sakov2012()
twin = ssm.simulate(jax.random.key(0), 20)
t_prev, t_now = twin.times[8], twin.times[9]
# an ensemble around the truth at t_prev, as a filter would hold it after some cycles
X_prev = twin.truth[8] + jnp.sqrt(2.0) * jax.random.normal(jax.random.key(1), (N_E, 3))

LAMBDA = 1.3  # an exaggerated factor, to make the third panel visible


@jax.jit
def one_cycle(X_prev, y):
    X_f = jax.vmap(lambda x: ssm.dynamics(x, t_prev, t_now))(X_prev)  # forecast
    X_a = ff.ETKF().analysis(None, X_f, y, ssm.obs_op, ssm.obs_noise).particles  # analysis
    X_i = fxp.inflate_multiplicative(X_a, LAMBDA)  # inflate
    # the exact Kalman update of the forecast's Gaussian fit, computed independently
    exact = ff.KalmanFilter().analysis(None, X_f, y, ssm.obs_op, ssm.obs_noise).particles
    return X_f, X_a, X_i, exact


y = twin.observations[9]
X_f, X_a, X_i, exact = one_cycle(X_prev, y)

mean, cov = fxp.ensemble_mean, lambda X: fxp.ensemble_covariance(X, dense=True)
# The ETKF analysis is the exact Kalman update of the forecast's Gaussian fit (the
# observation operator is the identity here); KalmanFilter.analysis computes that update
# independently, by a square-root Kalman filter; float64 round-off only.
assert jnp.allclose(mean(X_a), mean(exact), atol=1e-9)
assert jnp.allclose(cov(X_a), cov(exact), atol=1e-9)
# Inflation keeps the mean and multiplies the covariance by lambda^2 exactly.
assert jnp.allclose(mean(X_i), mean(X_a), atol=1e-12)
assert jnp.allclose(cov(X_i), LAMBDA**2 * cov(X_a), atol=1e-10)
# The analysis shrinks the spread (trace of P_e) and pulls the mean towards y.
assert jnp.trace(cov(X_a)) < jnp.trace(cov(X_f))
for name, X in (("prior", X_prev), ("forecast", X_f), ("analysis", X_a), ("inflated", X_i)):
    err = float(jnp.linalg.norm(mean(X) - twin.truth[9 if name != "prior" else 8]))
    print(f"{name:9s} |mean - truth| = {err:5.2f}   trace P_e = {float(jnp.trace(cov(X))):7.2f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharex=True, sharey=True, constrained_layout=True)
panels = (
    ("forecast $X^f$ (prior cloud)", X_f, "C0"),
    ("analysis $X^a$ (posterior cloud)", X_a, "C1"),
    (rf"inflated $\lambda = {LAMBDA}$", X_i, "C2"),
)
for ax, (title, X, color) in zip(axes, panels, strict=True):
    ax.plot(X_f[:, 0], X_f[:, 2], ".", color="0.8", label="forecast members")
    ax.plot(X[:, 0], X[:, 2], ".", color=color, label="members")
    ax.plot(*mean(X)[::2], "o", color=color, mec="k", label="ensemble mean")
    ax.plot(twin.truth[9, 0], twin.truth[9, 2], "k*", ms=12, label="truth")
    ax.plot(y[0], y[2], "kx", ms=10, label="observation $y$")
    ax.set_title(title)
    ax.set_xlabel("$x$")
axes[0].set_ylabel("$z$")
axes[0].legend(fontsize=7, loc="lower left")
plt.show()

# %% [markdown]
# **Why each step exists.** The forecast carries information forward in time (and lets the
# dynamics build the cross-variable correlations the analysis exploits). The analysis is
# Bayes' rule under a Gaussian approximation. Inflation is there because the analysis is
# built from the same finite sample it updates: sampling error makes the gain overconfident,
# the spread shrinks below the real error, the filter stops listening to the observations
# and loses the truth. On Lorenz-96 (40 variables, every one observed, $R = I$) with
# $N_e = 16$ members, the ETKF without inflation diverges; with 5 % anomaly inflation it
# tracks the truth:

# %%
l96 = presets.lorenz96_sakov2008()
twin96 = l96.simulate(jax.random.key(0), N_CYCLES)
ens0 = l96.initial_ensemble(jax.random.key(1), 16)
runs = {}
for lam in (1.0, 1.05):
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(lam))
    out = ff.run(method, l96, ens0, twin96.observations, twin96.times, key=jax.random.key(2))
    runs[lam] = out
    scores = out.scores(twin96.truth, N_CYCLES // 2)
    print(
        f"lambda = {lam}: rmse.a {float(scores['rmse_a']):.3f}  spread.a "
        f"{float(scores['spread_a']):.3f}"
    )
no_infl, infl = (runs[lam].scores(twin96.truth, N_CYCLES // 2) for lam in (1.0, 1.05))
# Measured 4.65 vs 0.26: without inflation the error is of the order of the climatological
# spread (3.6); with it the error matches DAPPER's ~0.2-0.3 for this ensemble size.
assert float(no_infl["rmse_a"]) > 2.0
assert float(infl["rmse_a"]) < 0.4

fig, ax = plt.subplots(figsize=(8, 3.2), constrained_layout=True)
for lam, color in ((1.0, "C3"), (1.05, "C0")):
    err = jnp.sqrt(jnp.mean((runs[lam].analysis_mean - twin96.truth) ** 2, axis=1))
    ax.semilogy(twin96.times, err, color=color, label=rf"rmse.a, $\lambda = {lam}$")
    ax.semilogy(twin96.times, runs[lam].analysis_spread, color=color, ls=":", label="spread.a")
ax.set_xlabel("time")
ax.set_ylabel("analysis error / spread")
ax.legend(fontsize=8, ncols=2)
plt.show()

# %% [markdown]
# Without inflation the spread (dotted) stays small while the error grows: the filter is
# confident and wrong. Part 1.F covers the inflation primitives, Part 6 how to tune them.
#
# ## 0.6 Why ensembles?
#
# The ensemble replaces $P$ by the sample covariance
# $P_e = (N_e - 1)^{-1} (X - \bar X)^\top (X - \bar X)$, whose rank is at most $N_e - 1$: the
# anomalies are $N_e$ vectors that sum to zero. Below, members are drawn from a known
# $\mathcal N(0, P)$ on a ring of 40 points (Gaussian correlations of length 3) and the
# eigenvalues of $P_e$ are compared with those of $P$ as $N_e$ grows.

# %%
n_x = 40
grid = jnp.arange(n_x, dtype=float)
dist = fxp.pairwise_distances(grid, grid, fxp.PeriodicDistance(float(n_x)))
P_true = jnp.exp(-0.5 * (dist / 3.0) ** 2) + 1e-3 * jnp.eye(n_x)
chol = jnp.linalg.cholesky(P_true)
true_eigs = np.linalg.eigvalsh(np.asarray(P_true))[::-1]

fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
ax.semilogy(np.arange(1, n_x + 1), true_eigs, "k-", lw=2, label="true $P$")
draws = np.asarray(jax.random.normal(jax.random.key(10), (160, n_x)) @ chol.T)
for i, n_e in enumerate((5, 10, 20, 40, 160)):
    P_e = np.asarray(fxp.ensemble_covariance(draws[:n_e], dense=True))
    eigs = np.linalg.eigvalsh(P_e)[::-1]
    rank = int(np.linalg.matrix_rank(P_e))
    assert rank == min(n_e - 1, n_x), (n_e, rank)  # rank(P_e) = min(N_e - 1, N_x)
    ax.semilogy(
        np.arange(1, n_x + 1),
        np.maximum(eigs, 1e-17),
        "o-",
        ms=3,
        color=f"C{i}",
        label=f"$N_e = {n_e}$ (rank {rank})",
    )
ax.set_ylim(1e-17, 1e2)
ax.set_xlabel("eigenvalue index")
ax.set_ylabel("eigenvalue")
ax.set_title("Spectrum of the sample covariance vs $N_e$")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Small ensembles overestimate the leading eigenvalues and have exactly $N_x - N_e + 1$ zero
# eigenvalues (round-off, $\sim 10^{-16}$, on the log scale). A direction $u$ with $P_e u = 0$
# is invisible to the filter: every analysis increment
# $\bar x^a - \bar x^f = P_e H^\top S^{-1} v$ lies in the range of $P_e$, so the error along
# $u$ is never corrected, whatever the observations say. With $N_e = 10$ and every point
# observed:

# %%
N_E_SMALL = 10
X = jax.random.normal(jax.random.key(3), (N_E_SMALL, n_x)) @ chol.T
x_true = chol @ jax.random.normal(jax.random.key(4), (n_x,))
y40 = x_true + jax.random.normal(jax.random.key(5), (n_x,))
X_a = jax.jit(ff.ETKF().analysis)(None, X, y40, fxp.IdentityObs(), 1.0).particles
increment = fxp.ensemble_mean(X_a) - fxp.ensemble_mean(X)

_, s, vt = jnp.linalg.svd(fxp.ensemble_anomalies(X))
null_dirs = vt[N_E_SMALL - 1 :]  # the N_x - N_e + 1 directions with zero sample variance
u = null_dirs[0]
# float64: the projection is round-off (~1e-15) against an increment of norm ~3
assert jnp.max(jnp.abs(null_dirs @ increment)) < 1e-10
err_f = x_true - fxp.ensemble_mean(X)
print(
    f"|increment| = {float(jnp.linalg.norm(increment)):.2f}; "
    f"its component along the null space: {float(jnp.linalg.norm(null_dirs @ increment)):.1e}"
)
print(
    f"share of the forecast error in the null space: "
    f"{float(jnp.linalg.norm(null_dirs @ err_f) / jnp.linalg.norm(err_f)):.0%} (never corrected)"
)

fig, ax = plt.subplots(figsize=(8, 3), constrained_layout=True)
ax.plot(grid, increment, "C0-", label=r"analysis increment $\bar x^a - \bar x^f$")
ax.plot(grid, err_f, "k:", label=r"forecast error $x - \bar x^f$")
ax.plot(grid, 3 * u, "C3-", alpha=0.7, label="a null direction $u$ of $P_e$ (scaled)")
ax.set_xlabel("grid point")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **When an ensemble beats the parametric filter.** The Kalman filter of 0.B stores and
# updates the dense $N_x \times N_x$ covariance: $O(N_x^2)$ memory, $O(N_x^3)$ per forecast
# (and it needs the tangent-linear model $M$). The ensemble stores $N_e N_x$ numbers, runs
# the (nonlinear) model $N_e$ times and its analysis costs $O(N_e^2 N_y)$. Measured here, one
# analysis with every other point observed ($R = I$, $N_e = 20$, jit-compiled, best of 2):


# %%
def best_time(fn, *args, repeat=2):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


kf = ff.KalmanFilter()
kf_update = jax.jit(lambda state, y, H: kf.update(state, y, H, 1.0)[0])
etkf = jax.jit(lambda X, y, H: ff.ETKF().analysis(None, X, y, fxp.LinearObs(H), 1.0).particles)
print(f"{'N_x':>6s} {'Kalman update [ms]':>19s} {'ETKF analysis [ms]':>19s}")
rows = []
for n in (100, 600):
    H = jnp.eye(n)[::2]
    state = kf.init(jnp.zeros(n), jnp.eye(n))
    Xn = jax.random.normal(jax.random.key(n), (20, n))
    yn = jnp.zeros(n // 2)
    rows.append((n, best_time(kf_update, state, yn, H), best_time(etkf, Xn, yn, H)))
    print(f"{n:6d} {1e3 * rows[-1][1]:19.2f} {1e3 * rows[-1][2]:19.2f}")

# %% [markdown]
# The Kalman update's cost grows roughly with the cube of $N_x$ (here with $N_y = N_x/2$) and
# the ensemble analysis only linearly (the timings are taken on a shared machine, so only
# their growth is checked: the Kalman update must grow faster than the ETKF analysis from 100
# to 600 variables). Add that the forecast of $P$ needs the tangent-linear model and its
# adjoint, and the ensemble wins whenever $N_x$ is large or the model is nonlinear; the price
# is the rank deficit above, which localisation (1.E) and inflation (1.F) repair.

# %%
(_, kf_small, en_small), (_, kf_large, en_large) = rows
assert kf_large / kf_small > en_large / en_small
