# %% [markdown]
# # 0.A The filtering problem
#
# Data assimilation is Bayesian inference in a hidden Markov model. This page sets the
# language of every later tutorial: the joint density and its factorisation, the three target
# densities (filtering, smoothing, forecasting), the recursion that makes filtering
# sequential (0.1), and the conjugate Gaussian update written as an *addition* of natural
# parameters (0.2). Both are computed twice: by brute force on a grid, and by filterax's
# Kalman filter and RTS smoother, and the page checks that the two agree.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse

import filterax.filters as ff
import filterax.smoothers as fs

jax.config.update("jax_enable_x64", True)  # the page compares with exact references

N_T = 30  # docs size: number of observation times of the scalar example
N_GRID = 1201  # grid points of the brute-force densities

# %% [markdown]
# ## 0.1 The filtering problem from scratch
#
# A state $x_t$ evolves by a Markov transition and is seen only through noisy observations
# $y_t$. The joint density of states and observations factorises along the graph below,
#
# $$p(x_{0:T}, y_{1:T}) = p(x_0)\prod_{t=1}^{T} p(x_t \mid x_{t-1})\,p(y_t \mid x_t).$$
#
# Three conditional densities answer three questions:
#
# - **filtering** $p(x_t \mid y_{1:t})$: the state now, from the observations so far;
# - **smoothing** $p(x_t \mid y_{1:T})$ with $T > t$: the state then, using later observations too;
# - **forecasting** $p(x_{t+h} \mid y_{1:t})$: the state $h$ steps ahead.
#
# Filtering is sequential because of the Chapman–Kolmogorov (prediction) identity and Bayes'
# rule (analysis):
#
# $$p(x_t \mid y_{1:t-1}) = \int p(x_t \mid x_{t-1})\, p(x_{t-1} \mid y_{1:t-1})\,dx_{t-1},
# \qquad p(x_t \mid y_{1:t}) \propto p(y_t \mid x_t)\,p(x_t \mid y_{1:t-1}).$$
#
# The normalising constants of the analysis steps multiply to the evidence,
# $p(y_{1:T}) = \prod_t p(y_t \mid y_{1:t-1})$, the quantity every parameter-learning method
# of Parts 7–8 maximises.

# %%
fig, ax = plt.subplots(figsize=(7, 2.2))
for t in range(4):
    ax.add_patch(plt.Circle((2 * t, 1), 0.35, fc="white", ec="k"))
    ax.text(2 * t, 1, f"$x_{t}$", ha="center", va="center")
    if t:
        ax.add_patch(plt.Circle((2 * t, 0), 0.35, fc="0.8", ec="k"))
        ax.text(2 * t, 0, f"$y_{t}$", ha="center", va="center")
        ax.annotate("", (2 * t, 0.35), (2 * t, 0.65), arrowprops={"arrowstyle": "->"})
        ax.annotate("", (2 * t - 0.35, 1), (2 * t - 1.65, 1), arrowprops={"arrowstyle": "->"})
ax.text(7.2, 1, r"$\cdots$  $p(x_t \mid x_{t-1})$", va="center")
ax.text(7.2, 0, r"$\cdots$  $p(y_t \mid x_t)$ (shaded: observed)", va="center")
ax.set_xlim(-0.6, 11)
ax.set_ylim(-0.6, 1.6)
ax.set_aspect("equal")
ax.axis("off")
ax.set_title("The hidden Markov model of data assimilation")
plt.show()

# %% [markdown]
# A scalar linear-Gaussian example, $x_t = a x_{t-1} + \xi_t$, $y_t = x_t + \eta_t$, with
# $\xi_t \sim \mathcal N(0, q)$, $\eta_t \sim \mathcal N(0, r)$. On a grid the
# Chapman–Kolmogorov integral is a matrix–vector product with the transition kernel, and the
# analysis is a pointwise product, so the filter is two lines per step, for any model.

# %%
a, q, r = 0.9, 0.5, 1.0
m0, p0 = 0.0, 2.0
k_x0, k_xi, k_eta = jax.random.split(jax.random.key(0), 3)
xi = jnp.sqrt(q) * jax.random.normal(k_xi, (N_T,))
truth = [m0 + jnp.sqrt(p0) * jax.random.normal(k_x0)]
for t in range(N_T):
    truth.append(a * truth[-1] + xi[t])
truth = jnp.stack(truth[1:])  # x_1 .. x_T
ys = truth + jnp.sqrt(r) * jax.random.normal(k_eta, (N_T,))


def normal_pdf(x, mean, var):
    return jnp.exp(-0.5 * (x - mean) ** 2 / var) / jnp.sqrt(2 * jnp.pi * var)


grid = jnp.linspace(-12.0, 12.0, N_GRID)
dx = grid[1] - grid[0]
kernel = normal_pdf(grid[:, None], a * grid[None, :], q) * dx  # p(x_t | x_{t-1}) dx


def grid_filter(prior, ys):
    def step(density, y):
        predictive = kernel @ density  # Chapman-Kolmogorov
        joint = normal_pdf(y, grid, r) * predictive  # Bayes' numerator
        evidence = jnp.sum(joint) * dx  # p(y_t | y_{1:t-1})
        return joint / evidence, (joint / evidence, predictive, jnp.log(evidence))

    return jax.lax.scan(step, prior, ys)[1]


filt, pred, log_ev = grid_filter(normal_pdf(grid, m0, p0), ys)


def grid_smoother(filt, pred):
    """p(x_t | y_{1:T}) = p(x_t | y_{1:t}) int p(x_{t+1} | x_t) s_{t+1} / pred_{t+1} dx_{t+1}."""

    def step(smooth_next, fp):
        f_t, pred_next = fp
        ratio = jnp.where(pred_next > 1e-300, smooth_next / pred_next, 0.0)
        s = f_t * (kernel.T @ ratio)
        s = s / (jnp.sum(s) * dx)
        return s, s

    _, rest = jax.lax.scan(step, filt[-1], (filt[:-1], pred[1:]), reverse=True)
    return jnp.concatenate([rest, filt[-1:]])


smooth = grid_smoother(filt, pred)


def moments(density):
    mean = jnp.sum(grid * density, axis=-1) * dx
    var = jnp.sum((grid - mean[..., None]) ** 2 * density, axis=-1) * dx
    return mean, var


# %% [markdown]
# The same problem with filterax: `KalmanFilter().filter` runs the closed-form recursion
# (Part 0.B) and `rts_smooth` its backward pass. The grid quadrature of a Gaussian is
# accurate to far below $10^{-8}$ at this resolution, so the brute-force moments and the
# evidence must agree with the closed form to that tolerance.

# %%
times = jnp.arange(1.0, N_T + 1)
A, H = jnp.array([[a]]), jnp.eye(1)
kf = ff.KalmanFilter().filter(
    jnp.array([m0]), jnp.array([[p0]]), ys[:, None], times, A, H, r, process_noise=q
)
rts = fs.rts_smooth(kf, A, times)

f_mean, f_var = moments(filt)
s_mean, s_var = moments(smooth)
assert jnp.allclose(f_mean, kf.mean[:, 0], atol=1e-8), "grid filter != Kalman filter (mean)"
assert jnp.allclose(f_var, kf.cov[:, 0, 0], atol=1e-8), "grid filter != Kalman filter (var)"
assert jnp.allclose(s_mean, rts.mean[:, 0], atol=1e-8), "grid smoother != RTS (mean)"
assert jnp.allclose(s_var, rts.cov[:, 0, 0], atol=1e-8), "grid smoother != RTS (var)"
assert jnp.allclose(log_ev.sum(), kf.log_likelihood.sum(), atol=1e-8), "evidence differs"
# Using more data never increases the posterior variance of a linear-Gaussian model.
assert jnp.all(s_var <= f_var + 1e-12)
print(
    f"log evidence: grid {float(log_ev.sum()):.10f}, Kalman {float(kf.log_likelihood.sum()):.10f}"
)
print(f"max |grid - KF| filtering mean: {float(jnp.max(jnp.abs(f_mean - kf.mean[:, 0]))):.1e}")

# %% [markdown]
# The three targets at $t = 15$: the smoothing density (which also saw $y_{16:30}$) is the
# narrowest, the filtering density is wider, and the $h = 3$ forecast
# $p(x_{18} \mid y_{1:15})$, three Chapman–Kolmogorov steps without analysis, is the widest.

# %%
t, h = 14, 3  # row 14 is t = 15
forecast = filt[t]
for _ in range(h):
    forecast = kernel @ forecast
fc_mean, fc_var = moments(forecast)
assert s_var[t] < f_var[t] < fc_var  # smoothing < filtering < forecast uncertainty

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
ax0.plot(grid, filt[t], color="C0", label=r"filtering $p(x_{15} \mid y_{1:15})$")
ax0.plot(grid, smooth[t], color="C1", label=r"smoothing $p(x_{15} \mid y_{1:30})$")
ax0.plot(grid, forecast, color="C2", label=r"forecast $p(x_{18} \mid y_{1:15})$")
ax0.axvline(truth[t], color="k", ls=":", label="truth $x_{15}$")
ax0.set_xlim(-6, 6)
ax0.set_xlabel("$x$")
ax0.set_ylabel("density")
ax0.legend(fontsize=8)
ax1.plot(times, truth, "k-", lw=1, label="truth")
ax1.plot(times, ys, "o", color="0.6", ms=3, label="observations")
for mean, var, c, name in ((f_mean, f_var, "C0", "filter"), (s_mean, s_var, "C1", "smoother")):
    ax1.plot(times, mean, color=c, label=f"{name} mean")
    ax1.fill_between(times, mean - 2 * jnp.sqrt(var), mean + 2 * jnp.sqrt(var), color=c, alpha=0.2)
ax1.set_xlabel("time $t$")
ax1.set_ylabel("$x_t$")
ax1.legend(fontsize=8, ncols=2)
plt.show()

# %% [markdown]
# ## 0.2 Sequential Bayesian inference as natural-form addition
#
# For a Gaussian written in natural (information) form, precision $\Lambda = \Sigma^{-1}$ and
# information vector $\eta = \Sigma^{-1}\mu$, conditioning on a linear-Gaussian observation
# $y_t = H_t x + \varepsilon_t$, $\varepsilon_t \sim \mathcal N(0, R_t)$, is an addition:
#
# $$\eta_{t+1} = \eta_t + H_t^\top R_t^{-1} y_t, \qquad
# \Lambda_{t+1} = \Lambda_t + H_t^\top R_t^{-1} H_t.$$
#
# Addition is commutative and associative, so without dynamics (a static parameter) the
# posterior is the same whether the observations are assimilated all at once (batch), one by
# one (sequential: a Kalman update per observation) or in any order. Below, a 2-D parameter is
# observed through six scalar projections $H_t \in \mathbb R^{1\times 2}$ with different noise
# levels.

# %%
N_OBS = 6
k_h, k_r, k_x, k_y, k_perm = jax.random.split(jax.random.key(1), 5)
mu0, Sigma0 = jnp.zeros(2), jnp.array([[4.0, 1.0], [1.0, 2.0]])
x_true = jnp.array([1.5, -1.0])
Hs = jax.random.normal(k_h, (N_OBS, 1, 2))
Rs = jax.random.uniform(k_r, (N_OBS,), minval=0.2, maxval=2.0)
obs = jnp.einsum("tij,j->ti", Hs, x_true) + jnp.sqrt(Rs)[:, None] * jax.random.normal(
    k_y, (N_OBS, 1)
)

# batch: add every observation's natural parameters to the prior's
Lam = jnp.linalg.inv(Sigma0) + sum(Hs[t].T @ Hs[t] / Rs[t] for t in range(N_OBS))
eta = jnp.linalg.solve(Sigma0, mu0) + sum(Hs[t].T @ obs[t] / Rs[t] for t in range(N_OBS))
batch_mean, batch_cov = jnp.linalg.solve(Lam, eta), jnp.linalg.inv(Lam)

kf = ff.KalmanFilter()


def sequential(order):
    state, path = kf.init(mu0, Sigma0), [kf.init(mu0, Sigma0)]
    for t in order:
        state, _ = kf.update(state, obs[t], Hs[t], Rs[t])  # covariance-form Kalman update
        path.append(state)
    return path


orders = {
    "in time order": list(range(N_OBS)),
    "reversed": list(range(N_OBS))[::-1],
    "random order": [int(i) for i in jax.random.permutation(k_perm, N_OBS)],
}
paths = {name: sequential(order) for name, order in orders.items()}
# Six well-conditioned 2x2 updates in float64: the forms differ only by round-off (~1e-15).
for name, path in paths.items():
    assert jnp.allclose(path[-1].mean, batch_mean, atol=1e-10), name
    assert jnp.allclose(path[-1].cov, batch_cov, atol=1e-10), name
print("batch posterior mean", batch_mean, "== sequential, in every order")

# %% [markdown]
# The posterior ellipses (two standard deviations) after each observation, for two orders:
# the intermediate beliefs differ, the final one is the batch posterior.


# %%
def ellipse(ax, mean, cov, **kw):
    vals, vecs = np.linalg.eigh(np.asarray(cov))
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    w, h = 4 * np.sqrt(vals[1]), 4 * np.sqrt(vals[0])
    ax.add_patch(Ellipse(np.asarray(mean), w, h, angle=angle, fill=False, **kw))


fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True, constrained_layout=True)
for ax, (name, color) in zip(axes, (("in time order", "C0"), ("reversed", "C1")), strict=True):
    for k, state in enumerate(paths[name]):
        ellipse(ax, state.mean, state.cov, color=color, alpha=0.25 + 0.75 * k / N_OBS)
    ellipse(ax, batch_mean, batch_cov, color="k", ls="--", lw=1.5)
    ax.plot(*x_true, "k*", ms=10, label="true parameter")
    ax.plot([], [], color=color, label=f"sequential, {name}")
    ax.plot([], [], "k--", label="batch posterior")
    ax.set_xlim(-5, 5)
    ax.set_ylim(-4, 4)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% [markdown]
# With dynamics between observations the order is fixed by time, but the same identity is why
# observations *at one time* can be assimilated serially (the `EnSRF_Serial` filter of Part 2)
# and why the information filter (0.9) is cheap when $\Lambda$ is sparse.
