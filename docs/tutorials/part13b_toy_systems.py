# %% [markdown]
# # 13.3 · The toy dynamical systems of `filterax.zoo`
#
# The benchmarking fixtures of the library (Part 13.B, tutorial 13.3): every system is an
# `AbstractDynamics` — `model(x, t0, t1)` advances ONE state from `t0` to `t1`,
# `model.step(x, t)` makes one step of its `dt` — so any filter, smoother or twin experiment
# takes any of them. Wrap one in `StochasticDynamics(model, noise)` for additive process
# noise drawn once per call. Each section shows a short trajectory (or a Hovmöller plot:
# time down, space across) and asserts one property the system is known for.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from filterax.zoo import (
    BrownianMotion,
    DoubleWell,
    HeatEquation1D,
    KuramotoSivashinsky,
    LinearAdvection,
    Lorenz63,
    Lorenz96,
    Lorenz96TwoScale,
    OrnsteinUhlenbeck,
    Sinusoid,
    StochasticDynamics,
)

jax.config.update("jax_enable_x64", True)

N_STEPS = 1500  # docs size: steps of the chaotic trajectories
N_PATHS = 200  # docs size: sample paths of the stochastic processes


def trajectory(step, x0, n, dt=None):
    """``n`` steps of ``step(x, t)`` (one lax.scan, compiled once per system)."""

    @jax.jit
    def run(x0):
        def body(x, k):
            x = step(x, k * (dt or 0.0))
            return x, x

        return jax.lax.scan(body, x0, jnp.arange(n))[1]

    return run(x0)


# %% [markdown]
# ## Lorenz-63
#
# $$\dot x = \sigma(y - x),\quad \dot y = x(\rho - z) - y,\quad \dot z = xy - \beta z,\qquad
# (\sigma, \rho, \beta) = (10, 28, 8/3),$$
#
# integrated by RK4 with $dt = 0.01$. The butterfly: two lobes visited at irregular times.
# Asserted: the trajectory stays on the bounded attractor and keeps switching lobes.

# %%
l63 = Lorenz63()
traj63 = trajectory(l63.step, jnp.array([1.0, 1.0, 1.0]), 4 * N_STEPS)[500:]
switches = int(jnp.sum(jnp.diff(jnp.sign(traj63[:, 0])) != 0))
assert float(jnp.max(jnp.abs(traj63))) < 60 and switches > 10, switches
fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
ax.plot(traj63[:, 0], traj63[:, 2], color="C0", lw=0.4)
ax.set_xlabel("$x$")
ax.set_ylabel("$z$")
ax.set_title(f"Lorenz-63: {switches} lobe switches in {traj63.shape[0] * l63.dt:.0f} time units")
plt.show()

# %% [markdown]
# ## Lorenz-96
#
# $$\frac{dx_i}{dt} = (x_{i+1} - x_{i-2})\,x_{i-1} - x_i + F,\qquad i = 1..40,\ F = 8,$$
#
# periodic in $i$, RK4 with $dt = 0.05$: waves travelling westward (towards lower $i$).
# Asserted: the climatological mean is close to the known $\approx 2.3$ for $F = 8$.

# %%
l96 = Lorenz96(40)
x0 = 8.0 + 0.01 * jax.random.normal(jax.random.key(0), (40,))
traj96 = trajectory(l96.step, x0, N_STEPS)[300:]
mean96 = float(jnp.mean(traj96))
print(f"Lorenz-96 time-space mean {mean96:.2f}, std {float(jnp.std(traj96)):.2f}")
assert 1.8 < mean96 < 2.8
fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
im = ax.imshow(traj96[:200], aspect="auto", cmap="RdBu_r", extent=[0, 40, 200 * l96.dt, 0])
ax.set_xlabel("site $i$")
ax.set_ylabel("time")
fig.colorbar(im, ax=ax, label="$x_i$")
ax.set_title("Lorenz-96 (Hovmöller)")
plt.show()

# %% [markdown]
# ## Two-scale Lorenz-96
#
# $$\frac{dX_k}{dt} = (X_{k+1} - X_{k-2})X_{k-1} - X_k + F - \frac{hc}{b}\sum_{j} Y_{j,k},
# \qquad \frac{dY_{j,k}}{dt} = -cb\,Y_{j+1,k}(Y_{j+2,k} - Y_{j-1,k}) - c\,Y_{j,k}
# + \frac{hc}{b} X_k,$$
#
# 36 slow and 360 fast variables ($F = 10$, $h = 1$, $c = b = 10$; RK4, $dt = 0.005$): the
# standard test of model error from unresolved scales. Asserted: the fast variables are an
# order of magnitude smaller than the slow ones ($b = 10$).

# %%
l2 = Lorenz96TwoScale()
state0 = jnp.concatenate([10.0 + jax.random.normal(jax.random.key(1), (36,)), jnp.zeros(360)])
state0 = state0.at[36].set(0.1)
traj2 = trajectory(l2.step, state0, 2 * N_STEPS)[1000:]
slow, fast = jax.vmap(l2.split)(traj2)
ratio = float(jnp.std(slow) / jnp.std(fast))
print(f"std(X) / std(Y) = {ratio:.1f}")
assert ratio > 3.0
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
ax0.imshow(slow, aspect="auto", cmap="RdBu_r", extent=[0, 36, slow.shape[0] * l2.dt, 0])
ax0.set_xlabel("slow index $k$")
ax0.set_ylabel("time")
ax0.set_title("slow $X_k$")
ax1.imshow(
    fast.reshape(fast.shape[0], -1)[:, :120],
    aspect="auto",
    cmap="RdBu_r",
    extent=[0, 120, fast.shape[0] * l2.dt, 0],
)
ax1.set_xlabel("fast index $kJ + j$ (first 12 sectors)")
ax1.set_title("fast $Y_{j,k}$")
plt.show()

# %% [markdown]
# ## Kuramoto–Sivashinsky
#
# $$u_t + u u_x + u_{xx} + u_{xxxx} = 0,\qquad x \in [0, 32\pi)\ \text{periodic},$$
#
# 128 Fourier modes, ETD-RK4 with $dt = 0.5$ (Kassam & Trefethen 2005): spatio-temporal
# chaos from a smooth initial condition. Asserted: the spatial mean (the $k = 0$ mode) is
# conserved, exactly up to round-off.

# %%
ks = KuramotoSivashinsky()
u0 = ks.initial_condition()
trajks = trajectory(ks.step, u0, 400)
drift = float(jnp.max(jnp.abs(jnp.mean(trajks, axis=1) - jnp.mean(u0))))
print(f"max drift of the spatial mean: {drift:.1e}")
assert drift < 1e-10
fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
im = ax.imshow(
    trajks, aspect="auto", cmap="RdBu_r", extent=[0, float(ks.length), trajks.shape[0] * ks.dt, 0]
)
ax.set_xlabel("$x$")
ax.set_ylabel("time")
fig.colorbar(im, ax=ax, label="$u$")
ax.set_title("Kuramoto–Sivashinsky (Hovmöller)")
plt.show()

# %% [markdown]
# ## Sinusoid
#
# $$\dot q = \omega p,\quad \dot p = -\omega q,$$
#
# an exact rotation: neutrally stable, the simplest moving target. Asserted: the norm is
# preserved to round-off.

# %%
sinus = Sinusoid(frequency=2.0)
trajs = trajectory(sinus.step, jnp.array([1.0, 0.0]), 300, dt=sinus.dt)
assert float(jnp.max(jnp.abs(jnp.linalg.norm(trajs, axis=1) - 1.0))) < 1e-12
times_s = sinus.dt * jnp.arange(1, 301)
fig, ax = plt.subplots(figsize=(7, 2.8), constrained_layout=True)
ax.plot(times_s, trajs[:, 0], color="C0", label="$q$")
ax.plot(times_s, trajs[:, 1], color="C1", label="$p$")
ax.set_xlabel("time")
ax.set_ylabel("state")
ax.legend(fontsize=8)
ax.set_title(r"Sinusoid, $\omega = 2$")
plt.show()

# %% [markdown]
# ## Double well
#
# $$dx = 4x(1 - x^2)\,dt + \kappa\,dW,$$
#
# the gradient flow of $V(x) = x^4 - 2x^2$ with noise (Miller, Carter & Blue 1999): two
# stable states $\pm 1$ and rare transitions — bimodal, non-Gaussian posteriors. Asserted:
# the deterministic flow matches its closed form $x(t)^2 = 1/(1 + (x_0^{-2} - 1)e^{-8t})$
# (RK4 error $\ll 10^{-6}$), and the noisy path visits both wells.

# %%
well = DoubleWell()
x_det = well(jnp.array([0.1]), 0.0, 1.0)
closed = 1.0 / jnp.sqrt(1.0 + (1.0 / 0.1**2 - 1.0) * jnp.exp(-8.0))
assert abs(float(x_det[0] - closed)) < 1e-6
DT_W, KAPPA = 0.05, 0.75
noisy_well = StochasticDynamics(well, noise=KAPPA**2 * DT_W)
keys = jax.random.split(jax.random.key(2), 4000)
pathw = jax.jit(
    lambda x0: jax.lax.scan(
        lambda x, kt: (noisy_well(x, kt[1] * DT_W, (kt[1] + 1) * DT_W, key=kt[0]),) * 2,
        x0,
        (keys, jnp.arange(4000.0)),
    )[1]
)(jnp.array([1.0]))
assert float(pathw.min()) < -0.5 and float(pathw.max()) > 0.5
fig, ax = plt.subplots(figsize=(7, 2.8), constrained_layout=True)
ax.plot(DT_W * jnp.arange(1, 4001), pathw[:, 0], color="C0", lw=0.5)
ax.axhline(1, color="0.5", ls=":")
ax.axhline(-1, color="0.5", ls=":")
ax.set_xlabel("time")
ax.set_ylabel("$x$")
ax.set_title(rf"Double well, $\kappa = {KAPPA}$")
plt.show()

# %% [markdown]
# ## Ornstein–Uhlenbeck and Brownian motion
#
# $$dx = \theta(\mu - x)\,dt + \sigma\,dW,\qquad dx = \sigma\,dW,$$
#
# the linear-Gaussian processes with exact transitions: `StochasticDynamics(model)` without a
# noise argument draws the exact conditional variance, $\sigma^2(1 - e^{-2\theta\tau})/(2\theta)$
# for OU and $\sigma^2\tau$ for Brownian motion. Asserted: the variance of `N_PATHS` sample paths
# at $t = 5$ matches the exact one within Monte Carlo error (30%: the relative standard
# error of a variance from 200 samples is 10%).

# %%
ou, bm = OrnsteinUhlenbeck(theta=0.5, mu=1.0, sigma=0.8), BrownianMotion(sigma=0.5)
DT_P, N_P = 0.05, 100  # 100 steps to t = 5


def paths(model):
    noisy = StochasticDynamics(model)

    def path(key):
        ks = jax.random.split(key, N_P)
        return jax.lax.scan(
            lambda x, kt: (noisy(x, kt[1] * DT_P, (kt[1] + 1) * DT_P, key=kt[0]),) * 2,
            jnp.zeros(1),
            (ks, jnp.arange(float(N_P))),
        )[1][:, 0]

    return jax.jit(jax.vmap(path))(jax.random.split(jax.random.key(3), N_PATHS))


p_ou, p_bm = paths(ou), paths(bm)
var_ou = float(ou.exact_noise_variance(0.0, 5.0))  # from x0 = 0: the variance at t = 5
var_bm = float(bm.exact_noise_variance(0.0, 5.0))
print(
    f"variance at t = 5: OU {float(jnp.var(p_ou[:, -1])):.3f} (exact {var_ou:.3f}), "
    f"Brownian {float(jnp.var(p_bm[:, -1])):.3f} (exact {var_bm:.3f})"
)
assert abs(float(jnp.var(p_ou[:, -1])) / var_ou - 1) < 0.3
assert abs(float(jnp.var(p_bm[:, -1])) / var_bm - 1) < 0.3
tp = DT_P * jnp.arange(1, N_P + 1)
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True, sharey=True)
ax0.plot(tp, p_ou[:20].T, color="C0", lw=0.5)
mean_ou = jax.vmap(lambda t: ou(jnp.zeros(1), 0.0, t)[0])(tp)
sd_ou = jnp.sqrt(jax.vmap(lambda t: ou.exact_noise_variance(0.0, t))(tp))
sd_bm = jnp.sqrt(jax.vmap(lambda t: bm.exact_noise_variance(0.0, t))(tp))
ax0.plot(tp, mean_ou, "k-", lw=1.2, label="exact mean ± 2 sd")
ax0.plot(tp, mean_ou + 2 * sd_ou, "k--", lw=0.8)
ax0.plot(tp, mean_ou - 2 * sd_ou, "k--", lw=0.8)
ax0.set_title(r"Ornstein–Uhlenbeck, $\theta = 0.5$, $\mu = 1$")
ax0.set_xlabel("time")
ax0.set_ylabel("$x$")
ax0.legend(fontsize=8)
ax1.plot(tp, p_bm[:20].T, color="C1", lw=0.5)
ax1.plot(tp, 2 * sd_bm, "k--", lw=0.8)
ax1.plot(tp, -2 * sd_bm, "k--", lw=0.8)
ax1.set_title(r"Brownian motion, $\sigma = 0.5$")
ax1.set_xlabel("time")
plt.show()

# %% [markdown]
# ## Linear advection
#
# $$u_t + c\,u_x = 0\quad\text{(periodic)},\qquad u(x, t_1) = u(x - c(t_1 - t_0), t_0),$$
#
# solved exactly by a spectral shift (DAPPER's `LA`). Asserted: a shift by a whole number of
# cells is `jnp.roll`, to FFT round-off.

# %%
adv = LinearAdvection(n=100)
bump = jnp.exp(-0.02 * (jnp.arange(100.0) - 30.0) ** 2)
assert float(jnp.max(jnp.abs(adv(bump, 0.0, 25.0) - jnp.roll(bump, 25)))) < 1e-10
traj_adv = jax.vmap(lambda t: adv(bump, 0.0, t))(jnp.arange(0.0, 120.0))
fig, ax = plt.subplots(figsize=(7, 3.2), constrained_layout=True)
ax.imshow(traj_adv, aspect="auto", cmap="viridis", extent=[0, 100, 120, 0])
ax.set_xlabel("grid cell")
ax.set_ylabel("time")
ax.set_title("Linear advection, $c = 1$ cell per unit time (Hovmöller)")
plt.show()

# %% [markdown]
# ## 1-D heat equation
#
# $$u_t = \kappa\,u_{xx},\quad u(0, t) = u(L, t) = 0,\qquad
# \lambda_k = \frac{4}{h^2}\sin^2\!\Big(\frac{k\pi h}{2L}\Big),$$
#
# on 63 interior points, solved exactly in the discrete sine basis (the case study of
# tutorial 12.3). Asserted: the first mode decays exactly like $e^{-\kappa\lambda_1 t}$, and
# $\lambda_1 = \pi^2 + O(h^2)$.

# %%
heat = HeatEquation1D(n=63)
mode1 = jnp.sin(jnp.pi * heat.grid)
lam1 = float(heat.eigenvalues()[0])
assert float(jnp.max(jnp.abs(heat(mode1, 0.0, 2.0) - jnp.exp(-0.1 * lam1 * 2.0) * mode1))) < 1e-12
assert abs(lam1 - np.pi**2) < 1e-2  # O(h^2) = O(1/64^2) relative
u_init = jnp.where(jnp.abs(heat.grid - 0.35) < 0.1, 1.0, 0.0) + 0.5 * jnp.sin(
    3 * jnp.pi * heat.grid
)
fig, ax = plt.subplots(figsize=(7, 3.2), constrained_layout=True)
for t, colour in zip([0.0, 0.02, 0.1, 0.3, 1.0], ["C0", "C1", "C2", "C3", "C4"], strict=True):
    ax.plot(heat.grid, heat(u_init, 0.0, t), color=colour, label=f"t = {t}")
ax.set_xlabel("position $x$")
ax.set_ylabel("$u$")
ax.legend(fontsize=8)
ax.set_title(r"1-D heat equation, $\kappa = 0.1$")
plt.show()
