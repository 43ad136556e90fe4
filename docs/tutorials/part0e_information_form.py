# %% [markdown]
# # 0.9 · Information vs covariance form
#
# A Gaussian belief $\mathcal N(\mu, \Sigma)$ can be carried by its moments (the covariance
# form of the Kalman filter) or by its *natural parameters* (the information form):
#
# $$\Lambda = \Sigma^{-1},\qquad \eta = \Sigma^{-1}\mu .$$
#
# In natural parameters Bayes' rule for a linear-Gaussian observation $y_t = H x + \varepsilon$,
# $\varepsilon \sim \mathcal N(0, R)$, is an *addition* — the conjugate update:
#
# $$\eta_{t+1} = \eta_t + H^\top R^{-1} y_t,\qquad
# \Lambda_{t+1} = \Lambda_t + H^\top R^{-1} H .$$
#
# Each observation adds its information, so observations can be assimilated one at a time,
# in any order, or all at once, with the same result. The price is paid elsewhere: the mean
# needs a solve $\mu = \Lambda^{-1}\eta$, and the predict step
# $\Lambda^f = (M\Lambda^{-1}M^\top + Q)^{-1}$ needs the matrix inversion lemma.
# `filterax.filters.InformationFilter` is the Kalman filter in this form (Part 0.E, tutorial
# 0.9); it can keep a tridiagonal $\Lambda$ as an `lx.TridiagonalLinearOperator` with
# $O(N_x)$ storage. The page runs in float64 because it compares with exact references.

# %%
import itertools
import time

import jax
import jax.numpy as jnp
import lineax as lx
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp

jax.config.update("jax_enable_x64", True)

N_FIELD = 30  # docs size: grid points of the GMRF example (the sparsity figure)
N_CYCLES = 3  # docs size: observation cycles of that example (each point observed once)
N_BIG = 400  # docs size: grid points of the timing table
N_REPEAT = 3  # timed calls after compilation (the median is reported)

# %% [markdown]
# ## 0.9 Conjugate-update identities
#
# One update of a five-variable prior with three observations, in both forms. The
# information filter's new $(\eta, \Lambda)$ must be the old one plus
# $(H^\top R^{-1}y, H^\top R^{-1}H)$, and its mean and covariance must be the Kalman filter's.

# %%
rng = np.random.default_rng(0)
n, m = 5, 3
a = rng.standard_normal((n, n))
mean0, cov0 = jnp.asarray(rng.standard_normal(n)), jnp.asarray(a @ a.T / n + np.eye(n))
H = jnp.asarray(rng.standard_normal((m, n)))
r = jnp.asarray(rng.uniform(0.3, 1.5, m))  # R = diag(r)
y = jnp.asarray(rng.standard_normal(m))

inf, kf = ff.InformationFilter(), ff.KalmanFilter()


@jax.jit
def both_updates(y):
    prior = inf.init(mean0, cov0)
    post, ll_info = inf.update(prior, y, H, r)
    post_kf, ll_kf = kf.update(kf.init(mean0, cov0), y, H, r)
    return prior, post, ll_info, post_kf, ll_kf


prior, post, ll_info, post_kf, ll_kf = both_updates(y)
Rinv = jnp.diag(1.0 / r)
# The additive identities are exact algebra; only the float64 rounding of the sums remains.
assert jnp.allclose(post.precision, prior.precision + H.T @ Rinv @ H, rtol=0, atol=1e-12)
assert jnp.allclose(post.eta, prior.eta + H.T @ Rinv @ y, rtol=0, atol=1e-12)
# Moments: two different orders of the same algebra (a Cholesky solve vs the Kalman gain),
# on a problem with cond(Sigma) < 1e2: they agree to ~1e-14, 1e-10 leaves a wide margin.
assert jnp.allclose(post.mean, post_kf.mean, rtol=0, atol=1e-10)
assert jnp.allclose(post.cov, post_kf.cov, rtol=0, atol=1e-10)
assert jnp.allclose(ll_info, ll_kf, rtol=0, atol=1e-10)
print("posterior mean (information):", np.round(np.asarray(post.mean), 6))
print("posterior mean (covariance): ", np.round(np.asarray(post_kf.mean), 6))
print(f"log-likelihood: {float(ll_info):.10f} (information), {float(ll_kf):.10f} (covariance)")

# %% [markdown]
# **Sequential = batch, in any order.** With a diagonal $R$ the observations are independent
# pieces of information. Assimilating the three components one by one (the others marked
# missing with NaN, so they carry no information) in each of the $3! = 6$ orders gives the
# batch $(\eta, \Lambda)$, and the one-at-a-time log-likelihoods sum to the batch one (the
# chain rule $\log p(y) = \sum_i \log p(y_i \mid y_{<i})$):

# %%
orders = jnp.asarray(list(itertools.permutations(range(m))))  # (6, 3)


@jax.jit
def one_at_a_time(orders):
    def sequence(order):
        def assimilate_one(carry, i):
            state, total = carry
            only_i = jnp.where(jnp.arange(m) == i, y, jnp.nan)  # observe component i only
            state, ll = inf.update(state, only_i, H, r)
            return (state, total + ll), None

        return jax.lax.scan(assimilate_one, (prior, 0.0), order)[0]

    return jax.vmap(sequence)(orders)


states, totals = one_at_a_time(orders)
gaps = jnp.maximum(
    jnp.max(jnp.abs(states.eta - post.eta), axis=1),
    jnp.maximum(
        jnp.max(jnp.abs(states.precision - post.precision), axis=(1, 2)),
        jnp.abs(totals - ll_info),
    ),
)
for order, gap in zip(orders.tolist(), gaps.tolist(), strict=True):
    print(f"order {order}: max difference to the batch update {gap:.1e}")
assert float(gaps.max()) < 1e-10  # additions in another order: round-off only

# %% [markdown]
# ## 0.9 Sparsity of $\Lambda$, density of $\Sigma$
#
# The information form wins when $\Lambda$ is *sparse* and $\Sigma$ is not. The classic case
# is a Gaussian Markov random field (GMRF) prior: a field on a line in which each point
# talks only to its neighbours has a tridiagonal precision,
#
# $$\Lambda_0 = \kappa\,(\alpha I + D^\top D),\qquad (D x)_i = x_{i+1} - x_i,$$
#
# while its covariance $\Sigma_0 = \Lambda_0^{-1}$ is dense (every point is correlated with
# every other one). Point observations $H = e_i^\top$ add to the diagonal only, and a static
# field ($M = I$, no process noise) keeps $\Lambda$ tridiagonal forever. Below, `N_FIELD`
# points, a different third of them observed at each of `N_CYCLES` cycles (NaN elsewhere),
# run through `filterax.filters.run` with `InformationFilter(structure="tridiagonal")` and
# with the dense `KalmanFilter`.

# %%
KAPPA, ALPHA = 10.0, 0.01
main = KAPPA * (ALPHA + jnp.full(N_FIELD, 2.0).at[0].set(1.0).at[-1].set(1.0))
off = jnp.full(N_FIELD - 1, -KAPPA)
prior_lambda = lx.TridiagonalLinearOperator(main, off, off)
Sigma0 = jnp.linalg.inv(prior_lambda.as_matrix())

grid = jnp.linspace(0.0, 1.0, N_FIELD)
field = jnp.sin(2 * jnp.pi * grid) + 0.5 * jnp.cos(5 * jnp.pi * grid)  # the truth
R_FIELD = 0.5
noise = jnp.sqrt(R_FIELD) * jax.random.normal(jax.random.key(1), (N_CYCLES, N_FIELD))
observed = (jnp.arange(N_FIELD)[None, :] + jnp.arange(N_CYCLES)[:, None]) % 3 == 0
ys_field = jnp.where(observed, field[None, :] + noise, jnp.nan)
static = fxp.Model(dynamics=lambda x, t0, t1: x, obs_op=jnp.eye(N_FIELD), obs_noise=R_FIELD)
times = jnp.arange(1.0, N_CYCLES + 1)

tri = ff.InformationFilter(structure="tridiagonal")
state0 = tri.init_information(jnp.zeros(N_FIELD), prior_lambda)
out_tri = ff.run(tri, static, state0, ys_field, times, key=jax.random.key(0), save="ensembles")
out_kf = ff.run(
    ff.KalmanFilter(),
    static,
    (jnp.zeros(N_FIELD), Sigma0),
    ys_field,
    times,
    key=jax.random.key(0),
    save="ensembles",
)

last = jax.tree_util.tree_map(lambda leaf: leaf[-1], out_tri.analyses)
Lambda_T, Sigma_T = last.precision_matrix(), out_kf.analyses.cov[-1]
print(
    "precision kept as",
    type(out_tri.analyses.precision).__name__,
    "with diagonals of shape",
    out_tri.analyses.precision.diagonal.shape,
)
print(
    "max |mean_info - mean_KF| =",
    float(jnp.max(jnp.abs(out_tri.analysis_mean - out_kf.analysis_mean))),
)
print("max |Lambda^-1 - Sigma_KF| =", float(jnp.max(jnp.abs(jnp.linalg.inv(Lambda_T) - Sigma_T))))

# the information filter is the Kalman filter (same beliefs to round-off; the issue's bound)
assert isinstance(out_tri.analyses.precision, lx.TridiagonalLinearOperator)
assert jnp.max(jnp.abs(out_tri.analysis_mean - out_kf.analysis_mean)) < 1e-9
assert jnp.max(jnp.abs(out_tri.log_likelihood - out_kf.log_likelihood)) < 1e-9
assert jnp.max(jnp.abs(jnp.linalg.inv(Lambda_T) - Sigma_T)) < 1e-9
# ... and the sparsity claim: Lambda has 3 N - 2 non-zeros, Sigma none that vanish
band = jnp.abs(jnp.arange(N_FIELD)[:, None] - jnp.arange(N_FIELD)[None, :]) <= 1
assert jnp.all(Lambda_T[~band] == 0.0)
# correlations decay geometrically along the chain (ratio ~0.6 per point here), so even the
# two ends stay correlated: no entry of Sigma is zero, the smallest is ~1e-6
print(f"smallest |Sigma_ij| = {float(jnp.min(jnp.abs(Sigma_T))):.1e}")
assert float(jnp.min(jnp.abs(Sigma_T))) > 1e-8

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), constrained_layout=True)
vmax = float(jnp.max(jnp.abs(Lambda_T)))
vmin = float(jnp.log10(jnp.min(jnp.abs(Sigma_T))))
axes[0].imshow(jnp.log10(jnp.abs(Lambda_T) + 1e-30), cmap="magma", vmin=vmin, vmax=np.log10(vmax))
axes[0].set_title(r"$\log_{10}|\Lambda|$ (tridiagonal)")
im = axes[1].imshow(jnp.log10(jnp.abs(Sigma_T)), cmap="magma", vmin=vmin, vmax=np.log10(vmax))
axes[1].set_title(r"$\log_{10}|\Sigma| = \log_{10}|\Lambda^{-1}|$ (dense)")
fig.colorbar(im, ax=axes[:2], shrink=0.8)
for ax in axes[:2]:
    ax.set_xlabel("grid index $j$")
    ax.set_ylabel("grid index $i$")
axes[2].plot(grid, field, "k-", lw=1.5, label="truth")
axes[2].plot(grid, ys_field[-1], "o", color="0.6", ms=4, label="last observations")
axes[2].plot(grid, out_tri.analysis_mean[-1], "-", color="C0", label="information filter")
axes[2].plot(grid, out_kf.analysis_mean[-1], "--", color="C1", label="Kalman filter")
axes[2].set_xlabel("position")
axes[2].set_ylabel("field")
axes[2].legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 0.9 When each form wins
#
# Per cycle, with $N_x$ states and $N_y$ observations (dense algebra unless stated):
#
# | step | covariance form ($\mu, \Sigma$) | information form ($\eta, \Lambda$) |
# |---|---|---|
# | update | $O(N_y^3 + N_x^2 N_y)$: a solve with $S = H\Sigma H^\top + R$ | add $H^\top R^{-1} H$ |
# | predict | $O(N_x^3)$: $M\Sigma M^\top + Q$ | $O(N_x^3)$: $M^{-1}$, the inversion lemma |
# | the mean | free | a solve with $\Lambda$: $O(N_x^3)$ dense, $O(N_x)$ tridiagonal |
# | storage | $N_x^2$ (dense even for a GMRF) | $N_x^2$, or $3N_x - 2$ for a tridiagonal $\Lambda$ |
# | no prior information ($\Sigma = \infty$) | not representable | $\Lambda = 0$ is fine |
# | a singular $R$ or degenerate $\Sigma$ | fine | $R^{-1}$, $\Lambda$ must exist |
#
# Measured on the GMRF problem at `N_BIG` grid points with a quarter of them observed:
# the cost of one update and of reading the mean off the belief, in the three
# representations (time: median of `N_REPEAT` calls after compilation, on the machine that
# built this page; not asserted).

# %%
mainB = KAPPA * (ALPHA + jnp.full(N_BIG, 2.0).at[0].set(1.0).at[-1].set(1.0))
offB = jnp.full(N_BIG - 1, -KAPPA)
lambda_big = lx.TridiagonalLinearOperator(mainB, offB, offB)
sigma_big = jnp.linalg.inv(lambda_big.as_matrix())
HB = jnp.eye(N_BIG)
yB = jnp.where(jnp.arange(N_BIG) % 4 == 0, 1.0, jnp.nan)  # a quarter observed

beliefs = {
    "covariance (KalmanFilter)": (kf, kf.init(jnp.zeros(N_BIG), sigma_big)),
    "information, dense": (inf, inf.init_information(jnp.zeros(N_BIG), lambda_big.as_matrix())),
    "information, tridiagonal": (tri, tri.init_information(jnp.zeros(N_BIG), lambda_big)),
}


def timed(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    value = jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(N_REPEAT):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return value, float(np.median(runs))


table, means = {}, {}
for name, (filt, belief) in beliefs.items():
    updated, t_update = timed(lambda s, y, f=filt: f.update(s, y, HB, R_FIELD)[0], belief, yB)
    means[name], t_mean = timed(lambda s: s.mean, updated)
    storage = sum(leaf.size for leaf in jax.tree_util.tree_leaves(updated))
    table[name] = (storage, t_update, t_mean)

print(f"N_x = {N_BIG}, N_y = {N_BIG // 4}")
print(f"{'belief':27s} {'floats stored':>13s} {'update [ms]':>12s} {'mean [ms]':>10s}")
for name, (storage, t_update, t_mean) in table.items():
    print(f"{name:27s} {storage:13d} {1e3 * t_update:12.2f} {1e3 * t_mean:10.2f}")
ref = means["covariance (KalmanFilter)"]
for name, mean in means.items():  # all three are the same posterior (cond(Lambda) ~ 1e4)
    assert jnp.max(jnp.abs(mean - ref)) < 1e-8, name

# %% [markdown]
# The round trip between the forms is an $O(N_x^3)$ inversion either way
# ($\Sigma = \Lambda^{-1}$, $\Lambda = \Sigma^{-1}$), and it destroys structure: the
# tridiagonal $\Lambda$ above turns into a dense $\Sigma$. So pick the form once, by where the
# structure is: a sparse or banded precision (GMRF priors, smoothing splines, static fields
# observed point by point, many observations per cycle with a diagonal $R$) → information
# form; a low-rank or ensemble covariance, cheap forecasts of $\Sigma$, few observations per
# cycle → covariance form (and, in high dimension, the ensemble filters of Part 2).
