# %% [markdown]
# # 5.B–5.C Sampling (EKS) and parametric inversion (UKI, sigma points)
#
# EKI ([5.A](../part5_a_inversion/)) is an optimiser: run past algorithm time 1 its spread
# collapses. This page covers the two process families that keep a distribution instead: the
# ensemble Kalman sampler, whose members stay spread over the posterior for all time, and the
# unscented Kalman inversion, which carries a Gaussian $\mathcal N(m_n, C_n)$ through
# $2N_p + 1$ deterministic sigma points.
#
# The problem is a linear one with a known posterior: $N_p = 2$ parameters (so everything
# can be drawn), $N_y = 3$ data, $\Gamma = 0.25\,I$, prior $\mathcal N(0, I)$. Each run is
# one `lax.scan` of `process.update`, compiled once per process.

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.processes as fxproc

jax.config.update("jax_enable_x64", True)

N_P, N_Y, N_E = 2, 3, 50  # docs size
GAMMA = 0.25
G = np.array([[1.0, 0.5], [0.2, 1.0], [1.0, -0.6]])
theta_true = np.array([0.8, -0.4])
rng = np.random.default_rng(0)
y = G @ theta_true + np.sqrt(GAMMA) * rng.normal(size=N_Y)
m0, C0 = np.zeros(N_P), np.eye(N_P)
C_post = np.linalg.inv(G.T @ G / GAMMA + np.linalg.inv(C0))
m_post = C_post @ (G.T @ y / GAMMA + np.linalg.solve(C0, m0))
X0 = rng.normal(size=(N_E, N_P))  # prior draws
gamma_diag = jnp.full(N_Y, GAMMA)


@eqx.filter_jit
def run(process, initial, G, y, key, n_iter):
    """`n_iter` updates on theta -> G theta: particles, algorithm time, mean and covariance."""
    state = process.init(initial, y, gamma_diag, key=key)

    def record(state):
        return (
            process.particles(state),
            state.time,
            process.mean(state),
            process.covariance(state),
        )

    def body(state, _):
        state = process.update(state, process.particles(state) @ G.T)
        return state, record(state)

    final, history = jax.lax.scan(body, state, None, length=n_iter)
    first = jax.tree.map(lambda a: a[None], record(state))
    history = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, history)
    return history, final.status


def ellipse(mean, cov, n_std=2.0):
    vals, vecs = np.linalg.eigh(cov)
    angle = np.linspace(0, 2 * np.pi, 200)
    circle = n_std * vecs @ (np.sqrt(vals)[:, None] * np.stack([np.cos(angle), np.sin(angle)]))
    return mean[0] + circle[0], mean[1] + circle[1]


print("posterior mean", m_post.round(3), "\nposterior cov\n", C_post.round(4))

# %% [markdown]
# ## 5.6 EKS: the ensemble Kalman sampler (Garbuno-Iñigo, Hoffmann, Li & Stuart 2020)
#
# The EKS discretises interacting Langevin dynamics preconditioned by the ensemble
# covariance; the data term is EKI's, the prior enters as a drift, and noise with the
# ensemble covariance keeps the members apart:
#
# $$\theta^j_{n+1} = \theta^j_n + \Delta t\, C^{\theta G}_n\,\Gamma^{-1}\big(y - G(\theta^j_n)\big)
# - \Delta t\, C^{\theta\theta}_n C_0^{-1}(\theta^j_n - m_0)
# + \sqrt{2\Delta t\, C^{\theta\theta}_n}\,\xi^j_n,\qquad \xi^j_n \sim \mathcal N(0, I).$$
#
# (filterax's `EKS` treats the prior term implicitly and adds the finite-ensemble ALDI
# correction $\Delta t\,\frac{N_p+1}{J}(\theta^j_n - \bar\theta_n)$, which makes the
# posterior invariant for any $J > N_p + 1$.) The posterior is the stationary law: it is
# approached as $\Delta t \to 0$ and $N_e \to \infty$, and the spread does **not** collapse.
# The default step is `EKSStableScheduler`'s $\Delta t_n = 1/(\|D_n\|_F + \varepsilon)$
# (see [5.9](../part5_c_schedulers/)); here with $h = 0.1$ in its numerator. Against it,
# EKI with a fixed step: same start, same number of updates.

# %%
N_ITER = 400
# alpha = 0.1: a tenth of the default step, to make the O(dt) bias small
eks = fxproc.EKS(
    jnp.asarray(m0), jnp.asarray(C0), scheduler=fxproc.EKSStableScheduler(jnp.asarray(0.1))
)
(ens_eks, t_eks, mean_eks, cov_eks), st = run(eks, X0, G, y, jax.random.key(1), N_ITER)
eki = fxproc.EKI(scheduler=fxproc.FixedScheduler(jnp.asarray(0.1)))
(ens_eki, t_eki, _, cov_eki), st2 = run(eki, X0, G, y, jax.random.key(1), N_ITER)
assert int(st) == int(st2) == fxproc.ProcessState.OK
ens_eks, t_eks, cov_eks, t_eki, cov_eki = map(np.asarray, (ens_eks, t_eks, cov_eks, t_eki, cov_eki))
spread_post = np.sqrt(np.trace(C_post))
spread_eks = np.sqrt(np.trace(cov_eks, axis1=1, axis2=2))
spread_eki = np.sqrt(np.trace(cov_eki, axis1=1, axis2=2))

# posterior statistics from the second half of the run, pooled over members and iterations
tail = ens_eks[N_ITER // 2 :].reshape(-1, N_P)
err_mean = np.abs(tail.mean(0) - m_post).max() / np.sqrt(C_post.diagonal()).min()
err_cov = np.abs(np.cov(tail, rowvar=False) - C_post).max() / np.abs(C_post).max()
print(
    f"EKS, iterations {N_ITER // 2}-{N_ITER} (algorithm time {t_eks[N_ITER // 2]:.1f}-"
    f"{t_eks[-1]:.1f}): |mean - m_post| = {err_mean:.2f} posterior std, "
    f"|cov - C_post| = {err_cov:.0%} of max|C_post|"
)
print(
    f"spread at the end: EKS {spread_eks[-1]:.3f}, EKI {spread_eki[-1]:.3f}, "
    f"posterior {spread_post:.3f}"
)
# Monte Carlo with 50 correlated members + O(dt) bias: a quarter of a posterior std on the
# mean, 25% on the covariance
assert err_mean < 0.25 and err_cov < 0.25
# ergodic: the EKS spread stays at the posterior's over the whole second half
assert np.all(np.abs(spread_eks[N_ITER // 2 :] / spread_post - 1) < 0.3)
assert spread_eki[-1] < 0.25 * spread_post  # EKI past T = 1 collapses

fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
axes[0].plot(t_eks[1:], spread_eks[1:], color="C2", label="EKS")
axes[0].plot(t_eki[1:], spread_eki[1:], color="C0", label="EKI (fixed dt = 0.1)")
axes[0].axhline(spread_post, color="k", ls=":", label="posterior")
axes[0].set_xscale("log")
axes[0].set_yscale("log")
axes[0].set_xlabel("algorithm time")
axes[0].set_ylabel(r"spread $\sqrt{\mathrm{tr}\,C^{\theta\theta}}$")
axes[0].set_title("EKS keeps the posterior spread, EKI collapses")
axes[0].legend()
axes[1].scatter(*ens_eks[-1].T, s=10, color="C2", label="EKS, final")
axes[1].scatter(*np.asarray(ens_eki[-1]).T, s=10, color="C0", label="EKI, final")
axes[1].plot(*ellipse(m_post, C_post), "k-", lw=1, label="posterior 2-sigma")
axes[1].set_xlabel(r"$\theta_1$")
axes[1].set_ylabel(r"$\theta_2$")
axes[1].legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 5.7 UKI: unscented Kalman inversion (Huang, Schneider & Stuart 2022)
#
# UKI carries a Gaussian, not an ensemble. Each iteration predicts
# $\hat m = m_n$, $\hat C = C_n + \Delta t\,\Sigma_\omega$, evaluates $G$ at the $2N_p + 1$
# sigma points of $\mathcal N(\hat m, \hat C)$,
#
# $$\{\theta_k\} = \Big\{\hat m,\ \hat m \pm \big(\sqrt{(N_p + \kappa)\,\hat C}\big)_i\Big\},
# \quad i = 1, \dots, N_p,$$
#
# and updates mean and covariance in closed form from the quadrature moments
# (no random perturbations):
#
# $$m_{n+1} = \hat m + C^{\theta G}(C^{GG} + \Delta t^{-1}\Sigma_\nu)^{-1}(y - \hat g),\qquad
# C_{n+1} = \hat C - C^{\theta G}(C^{GG} + \Delta t^{-1}\Sigma_\nu)^{-1}C^{G\theta}.$$
#
# With `impose_prior=True` the prior enters through the augmented system of TEKI and, for a
# linear $G$, the fixed point at $\Delta t = 1$ is **exactly** the posterior, reached
# geometrically (rate 1/2) — the exact second-moment match of the linear-Gaussian limit.

# %%
uki = fxproc.UKI(jnp.asarray(m0), jnp.asarray(C0), impose_prior=True)
(pts_uki, _, mean_uki, cov_uki), st = run(uki, None, G, y, jax.random.key(1), 60)
assert int(st) == fxproc.ProcessState.OK
pts_uki, mean_uki, cov_uki = map(np.asarray, (pts_uki, mean_uki, cov_uki))
err_m = np.abs(mean_uki - m_post).max(axis=1)
err_c = np.abs(cov_uki - C_post).max(axis=(1, 2))
print(f"UKI: {pts_uki.shape[1]} sigma points per iteration")
print("|C_n - C_post| at n = 1, 5, 10, 20, 60:", [f"{err_c[n]:.1e}" for n in (1, 5, 10, 20, 60)])
assert pts_uki.shape[1] == 2 * N_P + 1
# geometric convergence to the exact posterior; after 60 halvings only round-off is left
assert err_m[-1] < 1e-10 and err_c[-1] < 1e-10
assert err_c[20] < 1e-4 < err_c[5]

fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
for n, colour in ((0, "C7"), (1, "C0"), (3, "C1"), (60, "C3")):
    # the sigma points evaluated at update n + 1 and the Gaussian they were drawn from
    centre = pts_uki[n][0]
    spread_pts = pts_uki[n] - centre
    cov_pred = spread_pts[1 : N_P + 1].T @ spread_pts[1 : N_P + 1] / (N_P)  # (N_p + lambda) = N_p
    ax.plot(*ellipse(centre, cov_pred, 1.0), color=colour, lw=1)
    ax.scatter(*pts_uki[n].T, color=colour, s=25, label=f"sigma points, iteration {n}")
ax.plot(*ellipse(m_post, C_post, 1.0), "k:", lw=1.5, label="posterior 1-sigma")
ax.set_xlabel(r"$\theta_1$")
ax.set_ylabel(r"$\theta_2$")
ax.set_title("UKI: the sigma-point cloud contracts onto the posterior")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 5.8 Sigma-point utilities
#
# `sigma_points(mean, cov, alpha, beta, kappa)` returns the $2N_p + 1$ symmetric points and
# their mean and covariance weights (Julier & Uhlmann 2004), with
# $\lambda = \alpha^2(N_p + \kappa) - N_p$ and $L L^\top = C$:
#
# $$x_0 = m,\quad x_{\pm i} = m \pm \sqrt{N_p + \lambda}\,L_{:,i},\qquad
# w^m_0 = \frac{\lambda}{N_p + \lambda},\quad w^c_0 = w^m_0 + 1 - \alpha^2 + \beta,\quad
# w_{\pm i} = \frac{1}{2(N_p + \lambda)}.$$
#
# The weighted mean and covariance of the points reproduce $m$ and $C$ exactly, so any
# affine map is propagated exactly; the same function serves the unscented filters of
# [Part 2](../part2_e_parametric/). The sanity check below reconstructs both moments for a
# 3-D Gaussian at several $\alpha$, then pushes the points through a nonlinear map
# (polar to Cartesian) and compares with a Monte Carlo reference.

# %%
m3 = np.array([1.0, -2.0, 0.5])
A3 = rng.normal(size=(3, 3))
C3 = A3 @ A3.T + 0.5 * np.eye(3)
for alpha in (None, 1.0, 0.5, 0.1):
    x, wm, wc = fxproc.sigma_points(jnp.asarray(m3), jnp.asarray(C3), alpha)
    x, wm, wc = map(np.asarray, (x, wm, wc))
    mean_rec = wm @ x
    cov_rec = (wc[:, None] * (x - mean_rec)).T @ (x - mean_rec)
    assert x.shape == (7, 3) and abs(wm.sum() - 1) < 1e-12
    # an identity of finite sums: round-off (with alpha = 0.1 the weights are ~1e2)
    assert np.abs(mean_rec - m3).max() < 1e-10 and np.abs(cov_rec - C3).max() < 1e-10, alpha
    # an affine map is propagated exactly
    B, c = rng.normal(size=(2, 3)), rng.normal(size=2)
    z = x @ B.T + c
    cov_z = (wc[:, None] * (z - wm @ z)).T @ (z - wm @ z)
    assert np.abs(wm @ z - (B @ m3 + c)).max() < 1e-10
    assert np.abs(cov_z - B @ C3 @ B.T).max() < 1e-10
print("mean and covariance reconstructed to round-off for alpha = default, 1, 0.5, 0.1")

# the modified transform of UKI: mean weights (1, 0, ..., 0), the mean is the central point
_, wm_mod, _ = fxproc.sigma_points(jnp.asarray(m3), jnp.asarray(C3), modified=True)
assert float(wm_mod[0]) == 1.0 and float(jnp.abs(wm_mod[1:]).max()) == 0.0

# a nonlinear map: (range, bearing) -> (x, y), the classic unscented-transform example
m_polar = np.array([1.0, np.pi / 2])
C_polar = np.diag([0.02**2, 0.35**2])


def to_xy(p):
    return np.stack([p[..., 0] * np.cos(p[..., 1]), p[..., 0] * np.sin(p[..., 1])], axis=-1)


x, wm, wc = map(np.asarray, fxproc.sigma_points(jnp.asarray(m_polar), jnp.asarray(C_polar)))
z = to_xy(x)
mean_ut = wm @ z
cov_ut = (wc[:, None] * (z - mean_ut)).T @ (z - mean_ut)
samples = to_xy(rng.multivariate_normal(m_polar, C_polar, size=20_000))
mean_mc, cov_mc = samples.mean(0), np.cov(samples, rowvar=False)
mean_lin = to_xy(m_polar)  # linearisation keeps the mean on the arc
print(
    f"y-mean: Monte Carlo {mean_mc[1]:.4f}, unscented {mean_ut[1]:.4f}, "
    f"linearised {mean_lin[1]:.4f}"
)
# the unscented mean captures the curvature (MC standard error ~ 0.0002)
assert abs(mean_ut[1] - mean_mc[1]) < 0.2 * abs(mean_lin[1] - mean_mc[1])

fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
ax.scatter(*samples[:3000].T, s=2, color="0.75", label="Monte Carlo")
ax.scatter(*z.T, color="C3", s=30, zorder=3, label="sigma points (mapped)")
ax.plot(*ellipse(mean_mc, cov_mc), "k-", lw=1, label="Monte Carlo 2-sigma")
ax.plot(*ellipse(mean_ut, cov_ut), "C3--", lw=1.5, label="unscented 2-sigma")
ax.plot(*mean_lin, "C0x", ms=10, label="linearised mean")
ax.plot(*mean_ut, "C3o", ms=6, mfc="none", label="unscented mean")
ax.set_xlabel("x")
ax.set_ylabel("y")
ax.set_title("unscented transform of (range, bearing) -> (x, y)")
ax.legend(fontsize=8)
plt.show()
