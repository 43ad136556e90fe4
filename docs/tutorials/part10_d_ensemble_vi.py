# %% [markdown]
# # 10.D Ensemble VI: EKS and optimal-transport filters
#
# An ensemble is a variational family: the empirical measure
# $q = \frac1N\sum_j \delta_{x_j}$ of $N$ equally weighted members. Two ways of moving it
# towards a posterior $\pi$ without ever writing a parametric density:
#
# - **10.8, as a gradient flow.** The ensemble Kalman sampler (EKS, Garbuno-Iñigo, Hoffmann,
#   Li & Stuart 2020) is a mean-field (ensemble-covariance preconditioned) Langevin dynamics
#   whose invariant measure is $\pi$: run it and the members *sample* the posterior, where EKI
#   collapses to a point.
# - **10.9, as a transport.** Reich's ensemble transform (2013) turns importance weights
#   $w_k \propto p(y\mid x_k)$ into an optimal-transport coupling $P$ between the weighted and
#   the uniform ensemble and moves the members by $X^a = N P^\top X^f$: a deterministic,
#   (entropically) differentiable resampling (Corenflos et al. 2021). Its second-order cousin,
#   the NETF (Tödter & Ahrens 2015), matches the importance mean and covariance exactly and
#   localises like the LETKF.
#
# Setups: a 2-parameter linear-Gaussian inverse problem (exact posterior known) for the EKS; a
# 1-d ensemble with a sign-blind observation $y = x^2 + \eta$ (a bimodal posterior) for the
# transport; a 3-d nonlinear observation for the NETF moment identity; Lorenz-96
# (`lorenz96_sakov2008`, 40 sites, $N = 20$, a short 200-cycle run) for LNETF vs LETKF.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp
import filterax.processes as fxproc
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)

# %% [markdown]
# ## 10.8 EKS as ensemble VI: a Langevin flow whose invariant law is the posterior
#
# For $y = G\theta + \eta$, $\eta\sim\mathcal N(0,\Gamma)$, prior $\mathcal N(m_0, C_0)$, the
# EKS moves every member by
#
# $$d\theta_j = -C(\Theta)\,\nabla_\theta \Phi_R(\theta_j)\,dt
#   + \frac{N_p + 1}{N}(\theta_j - \bar\theta)\,dt + \sqrt{2\,C(\Theta)}\,dW_j,
#   \qquad \Phi_R = \tfrac12|\Gamma^{-1/2}(y - G\theta)|^2 + \tfrac12|C_0^{-1/2}(\theta - m_0)|^2,$$
#
# with the gradient replaced by the derivative-free $C^{\theta G}\Gamma^{-1}(G\theta_j - y)$.
# In the mean-field limit its Fokker–Planck equation is a Wasserstein gradient flow of
# $\mathrm{KL}(q\,\|\,\pi)$ preconditioned by $C(q)$, so $\pi$ is invariant and (for linear $G$)
# the flow is ergodic: after a transient the members are posterior samples, and time averages
# recover the posterior moments. EKI is the same flow *without* the prior drift, the
# finite-$N$ correction and the noise: it minimises the misfit and (linear $G$) its covariance
# decays like $1/t$.
#
# `calibrate(process, G, X0, y, Γ, key=..., n_iterations=...)` runs both as one compiled
# `lax.scan`; `history.parameters` keeps every ensemble. The EKS step is
# `EKSStableScheduler(0.1)` (a tenth of the default, so the $O(\Delta t)$ bias is small); EKI a
# fixed $\Delta t = 0.1$.

# %%
N_P, N_Y, N_E_EKS, N_ITER = 2, 4, 50, 400  # docs size
GAMMA = 0.3
rng = np.random.default_rng(3)
G = rng.normal(size=(N_Y, N_P))
theta_true = np.array([0.7, -0.5])
y_inv = G @ theta_true + np.sqrt(GAMMA) * rng.normal(size=N_Y)
m0, C0 = np.zeros(N_P), np.eye(N_P)
C_post = np.linalg.inv(G.T @ G / GAMMA + np.linalg.inv(C0))
m_post = C_post @ (G.T @ y_inv / GAMMA + np.linalg.solve(C0, m0))
X0 = jnp.asarray(rng.normal(size=(N_E_EKS, N_P)))  # prior draws
G_j = jnp.asarray(G)


def forward(theta):  # G on ONE parameter vector; calibrate vmaps it
    return G_j @ theta


eks = fxproc.EKS(jnp.asarray(m0), jnp.asarray(C0), scheduler=fxproc.EKSStableScheduler(0.1))
eki = fxproc.EKI(scheduler=fxproc.FixedScheduler(0.1))
res_eks = fxproc.calibrate(
    eks, forward, X0, jnp.asarray(y_inv), GAMMA, key=jax.random.key(1), n_iterations=N_ITER
)
res_eki = fxproc.calibrate(
    eki, forward, X0, jnp.asarray(y_inv), GAMMA, key=jax.random.key(1), n_iterations=N_ITER
)
ens_eks = np.asarray(res_eks.history.parameters)  # (N_ITER + 1, N_e, N_p)
ens_eki = np.asarray(res_eki.history.parameters)
t_eks, t_eki = np.asarray(res_eks.history.time), np.asarray(res_eki.history.time)


def spread(ens):  # sqrt(tr C) per iteration
    return np.sqrt(np.array([np.trace(np.cov(e, rowvar=False)) for e in ens]))


spread_eks, spread_eki = spread(ens_eks), spread(ens_eki)
spread_post = np.sqrt(np.trace(C_post))
tail = ens_eks[N_ITER // 2 :].reshape(-1, N_P)  # second half, pooled over members and steps
err_mean = np.max(np.abs(tail.mean(0) - m_post) / np.sqrt(np.diag(C_post)))
err_cov = np.max(np.abs(np.cov(tail, rowvar=False) - C_post)) / np.max(np.abs(C_post))
print(f"posterior mean {m_post.round(3)}, EKS time average {tail.mean(0).round(3)}")
print(f"|mean error| = {err_mean:.2f} posterior std; |cov error| = {err_cov:.0%} of max|C_post|")
print(
    f"final spread: EKS {spread_eks[-1]:.3f}, EKI {spread_eki[-1]:.3f}, posterior {spread_post:.3f}"
)
# Monte-Carlo tolerances: 50 members x 200 strongly autocorrelated steps (a few hundred
# effective samples) plus the O(dt) discretisation bias -> a quarter of a posterior std on the
# mean, 25 % on the covariance (the same budget as page 5.B).
assert err_mean < 0.25 and err_cov < 0.25
# no collapse: over the whole second half the EKS spread stays within 30 % of the posterior's
assert np.all(np.abs(spread_eks[N_ITER // 2 :] / spread_post - 1) < 0.3)
assert spread_eki[-1] < 0.25 * spread_post  # EKI, an optimiser, collapses past time 1

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
axes[0].loglog(t_eks[1:], spread_eks[1:], color="C2", label="EKS")
axes[0].loglog(t_eki[1:], spread_eki[1:], color="C0", label="EKI (dt = 0.1)")
axes[0].axhline(spread_post, color="k", ls=":", label="posterior")
axes[0].set_xlabel("algorithm time")
axes[0].set_ylabel(r"spread $\sqrt{\mathrm{tr}\,C^{\theta\theta}}$")
axes[0].set_title("EKS samples (spread = posterior's), EKI collapses")
axes[0].legend()
ang = np.linspace(0, 2 * np.pi, 200)
vals, vecs = np.linalg.eigh(C_post)
ell = m_post[:, None] + 2 * vecs @ (np.sqrt(vals)[:, None] * np.stack([np.cos(ang), np.sin(ang)]))
axes[1].scatter(*tail[::40].T, s=4, color="C2", alpha=0.4, label="EKS samples (2nd half)")
axes[1].scatter(*ens_eki[-1].T, s=10, color="C0", label="EKI, final")
axes[1].plot(*ell, "k-", lw=1, label="exact posterior, 2 sigma")
axes[1].set_xlabel(r"$\theta_1$")
axes[1].set_ylabel(r"$\theta_2$")
axes[1].legend(fontsize=8)

# %% [markdown]
# ## 10.9 Reich's ensemble transform: importance weights → an OT coupling → new members
#
# A forecast ensemble $x_1,\dots,x_N$ and an observation give importance weights
# $w_k \propto p(y\mid x_k)$. A particle filter would resample at random; Reich's ensemble
# transform particle filter (ETPF) instead finds the coupling $P$ ($N\times N$, rows summing
# to $w$, columns to $1/N$) that moves the weighted ensemble onto an equally weighted one at
# least squared-distance cost, and replaces each member by its barycentric image:
#
# $$P = \arg\min_{P\mathbf 1 = w,\ P^\top\mathbf 1 = \mathbf 1/N}
#   \sum_{k,j} P_{kj}|x_k - x_j|^2 - \varepsilon H(P),\qquad x^a_j = N\sum_k P_{kj}\,x_k,
#   \quad X^a = N P^\top X^f.$$
#
# Reich solves the linear programme ($\varepsilon = 0$); filterax adds entropy and solves by
# log-domain Sinkhorn (`sinkhorn_coupling`, with $\varepsilon$-scaling) so the map is smooth.
# Because $P\mathbf 1 = w$ holds to round-off (each Sinkhorn sweep ends on the rows),
# $\frac1N\sum_j x^a_j = \sum_k w_k x_k$: **the transported mean is the weighted mean
# exactly**, for every $\varepsilon$.
#
# The example: $N = 60$ members from $\mathcal N(0, 1.5^2)$ in 1-d, observed through the
# sign-blind $h(x) = x^2$ with $y = 2.5$, $R = 0.5$: the weights, and the posterior, are bimodal
# at $\pm\sqrt{2.5}$. `ETPF(epsilon).analysis` does all of it; the same coupling is rebuilt from
# `member_log_likelihoods`, `squared_distance_cost` and `sinkhorn_coupling` to show the pieces
# (ETPF's $\varepsilon$ is relative to the mean squared distance between members).

# %%
N_PF, Y_SQ, R_SQ = 60, 2.5, 0.5
x_f = jnp.sort(1.5 * jax.random.normal(jax.random.key(10), (N_PF,)))[:, None]  # sorted 1-d


def square(x):  # h(x) = x^2 on ONE state
    return x**2


y_sq = jnp.array([Y_SQ])
EPS = 0.01  # relative: 1 % of the mean squared distance
N_SWEEPS = 2000  # enough for a column residual ~1e-10 at this epsilon
etpf = fl.ETPF(epsilon=EPS, n_iter=N_SWEEPS)


@jax.jit  # one compiled program for the whole step
def transform(x_f, y):
    out = etpf.analysis(None, x_f, y, square, R_SQ)
    # the same, piece by piece
    inputs = ff.prepare_analysis(x_f, y, square, R_SQ)
    log_lik = fl.member_log_likelihoods(inputs)  # log N(y; h(x_k), R)
    log_w = log_lik - jax.nn.logsumexp(log_lik)
    cost = fl.squared_distance_cost(x_f, x_f)
    P = fl.sinkhorn_coupling(
        cost / cost.mean(),  # ETPF's relative epsilon
        log_w,
        jnp.full(N_PF, -jnp.log(N_PF)),
        EPS,
        n_iter=N_SWEEPS,
        epsilon_scaling=0.9,
    )
    return out, log_w, P, N_PF * P.T @ x_f  # X^a = N P^T X^f


out, log_w, P, x_a = transform(x_f, y_sq)
w = jnp.exp(log_w)
weighted_mean = w @ x_f
print(f"ESS = {float(out.info.ess):.1f} of {N_PF}; Sinkhorn column residual ", end="")
print(f"{float(out.info.marginal_error):.1e}")
print(
    f"transported mean {float(x_a.mean()):+.15f}\nweighted mean    {float(weighted_mean[0]):+.15f}"
)
# the pieces ARE the ETPF: same weights, same coupling, same particles (round-off)
assert np.allclose(out.info.log_weights, log_w, atol=1e-12)
assert np.allclose(out.info.coupling, P, atol=1e-12)
assert np.allclose(out.particles, x_a, atol=1e-10)
# row marginal exact (last half-sweep), column marginal to the Sinkhorn residual
assert np.allclose(P.sum(1), w, atol=1e-14) and float(out.info.marginal_error) < 1e-8
# the transported mean IS the weighted mean, to round-off
assert abs(float(x_a.mean() - weighted_mean[0])) < 1e-13
# and the result is bimodal like the posterior: the weighted mass in the gap |x| < 0.8
# between the modes is a few %, so only ~N x that many new members may land there (+1 for
# the column that straddles the two modes), against half of the forecast members
gap_f, gap_a = np.abs(np.asarray(x_f[:, 0])) < 0.8, np.abs(np.asarray(x_a[:, 0])) < 0.8
gap_mass = float(np.sum(np.asarray(w)[gap_f]))
print(f"members in the gap |x| < 0.8: forecast {gap_f.sum()}, transported {gap_a.sum()} ", end="")
print(f"(weighted mass there {gap_mass:.3f})")
assert gap_f.sum() > N_PF // 3 and gap_a.sum() <= np.ceil(N_PF * gap_mass) + 1

# %% [markdown]
# The coupling (left) is, in 1-d with sorted members, the monotone rearrangement: a
# staircase near the diagonal. Members near 0 (where $x^2$ is far from 2.5) carry no weight,
# so their rows are empty; every column (a new member) takes its mass from the heavy rows,
# and the members crowd into the two modes (right).

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
im = axes[0].imshow(np.asarray(P) * N_PF, cmap="viridis", origin="upper")
axes[0].set_xlabel("new member j (sorted)")
axes[0].set_ylabel("forecast member k (sorted)")
axes[0].set_title(r"coupling $N P_{kj}$ ($\varepsilon$ = 0.01)")
fig.colorbar(im, ax=axes[0], shrink=0.8)
xs = np.linspace(-4.5, 4.5, 400)
prior_pdf = np.exp(-0.5 * (xs / 1.5) ** 2)
post_pdf = prior_pdf * np.exp(-0.5 * (xs**2 - Y_SQ) ** 2 / R_SQ)
post_pdf /= np.trapezoid(post_pdf, xs)
axes[1].plot(xs, post_pdf, "k-", label="exact posterior (density)")
axes[1].plot(np.asarray(x_f[:, 0]), np.full(N_PF, -0.05), "|", color="0.5", ms=12, label="forecast")
axes[1].vlines(np.asarray(x_f[:, 0]), 0, 2 * np.asarray(w), color="C1", label="weights (x2)")
axes[1].plot(
    np.asarray(x_a[:, 0]), np.full(N_PF, -0.15), "|", color="C3", ms=12, label="ETPF $X^a$"
)
axes[1].set_xlabel("x")
axes[1].set_title(r"weights $\to$ transported members")
axes[1].legend(fontsize=8, loc="upper right")

# %% [markdown]
# **The entropic blur.** With $\varepsilon > 0$ the coupling is spread out, every new member is
# an average over more forecast members, and the cloud shrinks towards the mean by
# $O(\varepsilon)$ (the mean stays exact). `ot_resample(log_w, X, epsilon=...)` is the same
# transform as a stand-alone function; its spread against $\varepsilon$ (relative units):

# %%
eps_grid = np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
# epsilon is a dynamic argument: one compiled program, vmapped over the grid
resampled = jax.jit(jax.vmap(lambda e: fl.ot_resample(log_w, x_f, epsilon=e, n_iter=N_SWEEPS)))(
    eps_grid
)
spreads = np.array([float(jnp.std(r)) for r in resampled])
means = np.array([float(jnp.mean(r)) for r in resampled])
weighted_std = float(jnp.sqrt(w @ (x_f[:, 0] - weighted_mean[0]) ** 2))
print("epsilon :", eps_grid)
print("spread  :", spreads.round(3), f" (weighted std {weighted_std:.3f})")
assert np.all(np.diff(spreads) < 0)  # strictly shrinking with epsilon
assert np.max(np.abs(means - float(weighted_mean[0]))) < 1e-13  # mean exact at every epsilon
# at the smallest epsilon the spread is the weighted one up to the OT (not entropic) loss of
# a deterministic transform: within 5 %
assert abs(spreads[0] / weighted_std - 1) < 0.05
assert spreads[-1] < 0.5 * weighted_std  # at the largest epsilon the cloud has visibly collapsed

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
axes[0].semilogx(eps_grid, spreads, "o-", color="C3", label="OT-resampled spread")
axes[0].axhline(weighted_std, color="k", ls=":", label="weighted (importance) std")
axes[0].set_xlabel(r"$\varepsilon$ (relative to the mean squared distance)")
axes[0].set_ylabel("std of the new members")
axes[0].set_title("entropic blur: spread shrinks with $\\varepsilon$")
axes[0].legend(fontsize=8)
for e, r, c in zip(
    eps_grid[[0, 3, 5]], np.asarray(resampled)[[0, 3, 5]], ("C3", "C4", "C5"), strict=True
):
    axes[1].hist(r[:, 0], bins=np.linspace(-3, 3, 61), alpha=0.6, color=c, label=f"eps = {e:g}")
axes[1].set_xlabel("x")
axes[1].set_title("new members for three $\\varepsilon$")
axes[1].legend(fontsize=8)

# %% [markdown]
# ## `ot_resample` vs systematic resampling: a gradient through resampling
#
# Random resampling picks indices: the resampled cloud is a piecewise-constant function of
# the weights, so a statistic of it has zero derivative almost everywhere and jumps in
# between, and members are duplicated. The OT transform is a smooth function of the weights
# (and of the particles). Take the likelihood centre $\theta$ ($y = \theta$, $h(x) = x^2$) as
# a parameter and the statistic $s(\theta) = \frac1N\sum_j \tilde x_j^2$ of the resampled
# members (a second moment: the *mean* would be exact for OT and trivially smooth). Its
# `jax.grad` through `ot_resample` is checked against central differences; through
# `systematic_resample` (fixed key) the gradient is 0 while $s$ moves in jumps.

# %%
EPS_R = 0.05


def loglik_theta(theta, x):
    return -0.5 * (x[:, 0] ** 2 - theta) ** 2 / R_SQ


@jax.jit
def s_ot(theta):
    xr = fl.ot_resample(loglik_theta(theta, x_f), x_f, epsilon=EPS_R, n_iter=300)
    return jnp.mean(xr**2)


@jax.jit
def s_sys(theta):
    idx = fl.systematic_resample(jax.random.key(5), loglik_theta(theta, x_f), N_PF)
    return jnp.mean(x_f[idx] ** 2)


theta0, h = 2.5, 1e-5
thetas = np.linspace(2.0, 3.0, 101)
# one vmapped evaluation for the curve and the two central-difference points
s_ot_v, s_sys_v = jax.jit(jax.vmap(lambda t: (s_ot(t), s_sys(t))))(
    np.concatenate([thetas, [theta0 - h, theta0 + h]])
)
fd_ot = float(s_ot_v[-1] - s_ot_v[-2]) / (2 * h)
s_ot_v, s_sys_v = s_ot_v[:-2], s_sys_v[:-2]
g_ot = float(jax.grad(s_ot)(theta0))
g_sys = float(jax.grad(s_sys)(theta0))
print(f"OT:         grad {g_ot:.8f}, central difference {fd_ot:.8f}")
print(f"systematic: grad {g_sys}")
# float64, h = 1e-5 on an O(1) smooth function: truncation ~h^2, round-off ~1e-16/h = 1e-11
assert np.isfinite(g_ot) and abs(g_ot - fd_ot) < 1e-6 * max(1.0, abs(fd_ot))
assert g_ot > 0.1  # a useful signal: moving the likelihood out moves the members out
assert g_sys == 0.0  # index selection carries no derivative

x_ot = np.asarray(fl.ot_resample(log_w, x_f, epsilon=EPS_R, n_iter=300))[:, 0]
idx_sys = np.asarray(fl.systematic_resample(jax.random.key(5), log_w, N_PF))
n_unique_ot = len(np.unique(x_ot.round(12)))
n_unique_sys = len(np.unique(idx_sys))
print(f"distinct members after resampling: OT {n_unique_ot}, systematic {n_unique_sys} of {N_PF}")
assert n_unique_ot == N_PF  # no duplicates
assert n_unique_sys < N_PF // 2  # systematic: most survivors are copies (ESS above)

fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
ax.plot(thetas, s_sys_v, color="C0", label="systematic resampling (fixed key)")
ax.plot(thetas, s_ot_v, color="C3", label=f"ot_resample (eps = {EPS_R})")
ax.plot(
    thetas,
    float(s_ot_v[50]) + g_ot * (thetas - theta0),
    "k:",
    label=r"tangent from jax.grad at $\theta$ = 2.5",
)
ax.set_xlabel(r"likelihood centre $\theta$")
ax.set_ylabel(r"$s(\theta) = $ mean of $\tilde x^2$")
ax.set_title("a statistic of the resampled cloud")
ax.legend(fontsize=8)

# %% [markdown]
# ## NETF: second-order exact, and localised (LNETF)
#
# The nonlinear ensemble transform filter keeps the importance weights but replaces the
# transport by a square-root transform that matches two moments:
#
# $$\bar x^a = \sum_k w_k x^f_k,\qquad X'^a = W^\top X'^f,\qquad
#   W = \sqrt{N-1}\,[\mathrm{diag}(w) - ww^\top]^{1/2}\,\Omega,$$
#
# ($\Omega$ a random mean-preserving rotation), so the analysis sample mean and covariance
# ARE the importance mean $\sum_k w_k x_k$ and covariance
# $\sum_k w_k (x_k - \bar x^a)(x_k - \bar x^a)^\top$ — to round-off, for any likelihood.
# Checked on a 3-d ensemble with a nonlinear observation ($\sin$ of the first component, the
# product of the other two):

# %%
X3 = jax.random.normal(jax.random.key(20), (40, 3))


def h3(x):
    return jnp.stack([jnp.sin(x[0]), x[1] * x[2]])


y3 = jnp.array([0.5, 0.3])
netf_out = jax.jit(lambda k, X, y: fl.NETF().analysis(k, X, y, h3, 0.2))(jax.random.key(21), X3, y3)
w3 = jnp.exp(netf_out.info.log_weights)
m_imp = w3 @ X3
C_imp = (X3 - m_imp).T @ (w3[:, None] * (X3 - m_imp))
Xa = netf_out.particles
err_m = float(jnp.max(jnp.abs(Xa.mean(0) - m_imp)))
err_c = float(jnp.max(jnp.abs(jnp.cov(Xa, rowvar=False) - C_imp)))
print(f"ESS {float(netf_out.info.ess):.1f} of 40; |mean - importance mean| = {err_m:.1e}, ", end="")
print(f"|cov - importance cov| = {err_c:.1e}")
assert err_m < 1e-10 and err_c < 1e-10  # exact identities; O(1) entries, float64 eigh

# %% [markdown]
# **LNETF on Lorenz-96.** Weights degenerate in high dimension, so the NETF is localised
# like the LETKF: one NETF per grid point with the R-localised likelihood (Gaspari–Cohn
# taper), the same $\Omega$ everywhere. Against the LETKF at the same $N = 20$ on
# `lorenz96_sakov2008` (40 sites, all observed every 0.05, $R = I$), with the bench's tuning
# (LETKF: DAPPER `loc_rad` 4, inflation 1.04; LNETF: `loc_rad` 2, inflation 1.05). A docs-size
# run: 200 cycles from the preset's near-rest start, scored over the last 100.

# %%
l96 = presets.lorenz96_sakov2008()
N_E96, N_CYC, BURN = 20, 200, 100
k_sim, k_ens, k_run = jax.random.split(jax.random.key(30), 3)
xp = l96.simulate(k_sim, N_CYC)
X0_96 = l96.initial_ensemble(k_ens, N_E96)
methods = {
    "LETKF": ff.EnsembleFilter(
        ff.LETKF(radius=fxp.dapper_radius_to_gc_halfwidth(4.0)),
        inflator=fxp.MultiplicativeInflator(1.04),
    ),
    "LNETF": ff.EnsembleFilter(
        fl.LNETF(radius=fxp.dapper_radius_to_gc_halfwidth(2.0)),
        inflator=fxp.MultiplicativeInflator(1.05),
    ),
}
scores96, rmse_t = {}, {}
for name, method in methods.items():
    r = ff.run(method, l96, X0_96, xp.observations, xp.times, key=k_run)
    scores96[name] = r.scores(xp.truth, BURN)
    rmse_t[name] = np.sqrt(
        np.mean((np.asarray(r.analysis_mean) - np.asarray(xp.truth)) ** 2, axis=-1)
    )
    print(
        f"{name}: rmse.a {float(scores96[name]['rmse_a']):.3f}, "
        f"spread.a {float(scores96[name]['spread_a']):.3f}"
    )
r_letkf, r_lnetf = (float(scores96[k]["rmse_a"]) for k in ("LETKF", "LNETF"))
# both track: well below the observation error std (1) and the climatological spread (~3.6)
assert r_letkf < 0.5 and r_lnetf < 0.5
# the honest comparison: on this Gaussian-friendly, densely observed problem the particle-type
# LNETF does not beat the LETKF (bench, 1000 cycles x 3 seeds: 0.246 vs 0.212); here too it is
# behind, by less than 40 % (fixed seeds: a deterministic check)
assert r_letkf < r_lnetf < 1.4 * r_letkf

# %% [markdown]
# On this densely observed problem the forecast errors are close to Gaussian, which is where
# the LETKF is optimal; the LNETF pays for its non-Gaussian weights with Monte-Carlo noise.
# The bench (`bench/scripts/etpf_lnetf.py`, 1000 cycles after a 400-cycle burn-in, 3 seeds)
# measured rmse.a **LNETF 0.246 ± 0.001 vs LETKF 0.212 ± 0.003** at $N = 20$; the short run
# above (printed) gives the same ordering at docs size. Over long runs the LNETF needs more
# inflation: at 1.05 both tested seeds lose the truth within 3000 cycles, so the leaderboard
# row `LNETF-20` uses 1.08 (5000 cycles, 3 seeds: **0.271 ± 0.003**, against 0.200 for
# `LETKF-10`). The ETPF is not cycled here; on chaotic Lorenz-63 it needs both its
# rejuvenation and a little inflation (jitter 0.1 loses the truth; jitter 0.3 with inflation
# 1.02 tracks): the leaderboard row `ETPF-100` scores **0.55 ± 0.06** on `lorenz63_sakov2012`
# (5000 cycles, seeds 0, 1), behind the bootstrap PF's 0.377 at the same $N$.

# %%
fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
for name, c in (("LETKF", "C0"), ("LNETF", "C3")):
    ax.semilogy(np.asarray(xp.times), rmse_t[name], color=c, lw=1, label=name)
ax.axvspan(float(xp.times[0]), float(xp.times[BURN]), color="0.9", label="not scored")
ax.set_xlabel("time")
ax.set_ylabel("analysis rmse")
ax.set_title("Lorenz-96 (40 sites), N = 20")
ax.legend(fontsize=8)
