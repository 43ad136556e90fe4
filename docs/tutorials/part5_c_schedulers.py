# %% [markdown]
# # 5.E Schedulers: how big a step in algorithm time
#
# Every ensemble Kalman process asks its scheduler for the next step $\Delta t_n$ (the
# inverse of the noise inflation $\Delta t_n^{-1}\Gamma$ in the EKI update of
# [5.1](../part5_a_inversion/)). `filterax.processes` ships the three of
# EnsembleKalmanProcesses.jl:
#
# | scheduler | step | default of |
# |---|---|---|
# | `FixedScheduler(dt)` | $\Delta t_n = \text{const}$ | `TEKI`, `GNKI`, `SparseInversion`, `UKI` |
# | `DataMisfitController()` | from the current misfit, capped to land on $T = 1$ | `EKI`, `ETKI` |
# | `EKSStableScheduler(h)` | $\Delta t_n = h / (\lVert D_n \rVert_F + \delta)$ | `EKS` |
#
# The page runs the same EKI on the same problem with each of them through the `calibrate`
# driver (one compiled `lax.scan` per run) and compares the trajectories, then checks what
# the data-misfit controller does once algorithm time 1 is reached. The problem: a linear
# $G$ with $N_p = 4$, $N_y = 8$, small noise $\Gamma = 0.01\,I$ (so the controller needs
# several steps), $N_e = 50$ members drawn from $\mathcal N(0, I)$.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.processes as fxproc

jax.config.update("jax_enable_x64", True)

N_P, N_Y, N_E, N_ITER = 4, 8, 50, 12  # docs size
GAMMA = 0.01
rng = np.random.default_rng(0)
A = rng.normal(size=(N_Y, N_P))
theta_true = np.array([1.0, -0.5, 0.8, 0.3])
y = A @ theta_true + np.sqrt(GAMMA) * rng.normal(size=N_Y)
X0 = rng.normal(size=(N_E, N_P))
A_j = jnp.asarray(A)


def forward(theta):
    return A_j @ theta


SCHEDULERS = {
    "FixedScheduler(0.25)": fxproc.FixedScheduler(0.25),
    "DataMisfitController()": fxproc.DataMisfitController(),
    "EKSStableScheduler(1.0)": fxproc.EKSStableScheduler(),
}
COLOURS = dict(zip(SCHEDULERS, ("C0", "C1", "C2"), strict=True))
results = {
    name: fxproc.calibrate(
        fxproc.EKI(scheduler=scheduler),
        forward,
        X0,
        y,
        GAMMA,
        key=jax.random.key(1),
        n_iterations=N_ITER,
    )
    for name, scheduler in SCHEDULERS.items()
}
for name, res in results.items():
    h = res.history
    print(
        f"{name:24s} T = {float(h.time[-1]):6.3f}  misfit {float(h.misfit_mean[0]):8.2f}"
        f" -> {float(h.misfit_mean[-1]):6.2f}"
    )

# %% [markdown]
# ## 5.9 The scheduler zoo: fixed, data-misfit controller, EKS-stable
#
# - **Fixed**: $\Delta t_n = \text{const}$. Simple; $1/\Delta t$ steps reach $T = 1$.
# - **Data-misfit controller** (Iglesias & Yang 2021): with the per-member misfits
#   $\Phi_j = \tfrac12\|\Gamma^{-1/2}(G(\theta_j) - y)\|^2$ and $N_y$ data,
#
# $$\Delta t_n = \min\Big(\max\Big(\frac{N_y}{2\,\overline{\Phi}},\;
# \sqrt{\frac{N_y}{2\,\mathrm{Var}(\Phi)}}\Big),\; 1 - t_n\Big):$$
#
#   small steps while the ensemble is far from the data, larger as it fits them, and the
#   last step lands **exactly** on $T = 1$, where stochastic EKI approximates the posterior.
# - **EKS-stable** (Garbuno-Iñigo et al. 2020): a step inversely proportional to the size of
#   the ensemble's data coupling, written in the curriculum as
#
# $$\Delta t_n = \frac{h}{\mathrm{trace}(C^{GG}_n) + \delta},$$
#
#   so that the explicit update cannot blow the ensemble up; as the ensemble contracts the
#   step grows. filterax (like EnsembleKalmanProcesses.jl) measures that size with the
#   Frobenius norm of the matrix that multiplies the anomalies in the EKS/EKI update,
#   $\Delta t_n = h/(\lVert D_n\rVert_F + \delta)$ with
#   $D_{kj} = \tfrac1J\langle G(\theta_k) - \bar G,\, \Gamma^{-1}(G(\theta_j) - y)\rangle$.
#
# Each claim is checked on the recorded histories (`CalibrationHistory.dt`, `.time`,
# `.outputs`):

# %%
h_fix = results["FixedScheduler(0.25)"].history
h_dmc = results["DataMisfitController()"].history
h_eks = results["EKSStableScheduler(1.0)"].history
for h in (h_fix, h_dmc, h_eks):
    assert np.all(np.isfinite(np.asarray(h.parameters)))
    assert h.misfit_mean[-1] < 0.1 * h.misfit_mean[0]  # all three fit the data

assert np.all(np.asarray(h_fix.dt) == 0.25) and float(h_fix.time[-1]) == 0.25 * N_ITER
assert float(h_dmc.time[-1]) == 1.0  # lands on T = 1 bit-exactly
n_dmc = int(np.argmax(np.asarray(h_dmc.time) >= 1.0))  # iterations to reach T = 1
print("DMC steps:", np.asarray(h_dmc.dt).round(4))
# the steps grow as the misfit falls (the last one is capped to land on 1)
assert np.all(np.diff(np.asarray(h_dmc.dt)[: n_dmc - 1]) > 0)

# the EKS-stable step recomputed from the recorded forward evaluations
G_out = np.asarray(h_eks.outputs)  # (iterations, N_e, N_y)
anomalies = G_out - G_out.mean(axis=1, keepdims=True)
D = np.einsum("nky,njy->nkj", anomalies, (G_out - y) / GAMMA) / N_E
dt_expected = 1.0 / (np.linalg.norm(D, axis=(1, 2)) + 1e-8)
err = np.abs(np.asarray(h_eks.dt) - dt_expected).max() / dt_expected.max()
print(f"EKS-stable dt vs 1 / (||D||_F + eps) from the outputs: relative error {err:.1e}")
assert err < 1e-10  # the same formula in float64

fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
it = np.arange(N_ITER + 1)
for name, res in results.items():
    h = res.history
    axes[0].plot(it, np.asarray(h.time), "o-", ms=3, color=COLOURS[name], label=name)
    axes[1].semilogy(it[1:], np.asarray(h.dt), "o-", ms=3, color=COLOURS[name], label=name)
    axes[2].semilogy(it[1:], np.asarray(h.misfit_mean), "o-", ms=3, color=COLOURS[name])
axes[0].axhline(1.0, color="0.5", ls=":")
axes[0].set_ylabel("algorithm time $t_n$")
axes[1].set_ylabel(r"step $\Delta t_n$ (0 not shown)")
axes[2].set_ylabel(r"mean misfit $\overline{\Phi}$")
axes[2].axhline(N_Y / 2, color="0.5", ls=":", label=r"$N_y/2$ (noise level)")
axes[2].legend()
for ax in axes:
    ax.set_xlabel("iteration")
axes[0].legend(fontsize=8)
fig.suptitle("EKI with three schedulers: convergence trajectories")
plt.show()

# %% [markdown]
# ## 5.10 The data-misfit controller past algorithm time 1
#
# What should an EKI update do when it is called again after $T = 1$ has been reached (a
# user loop that runs a fixed number of iterations, or `calibrate(n_iterations=...)`)? With
# the default `on_terminate="stop"`, the controller returns $\Delta t = 0$ from then on:
# the update is the identity — no division by $1 - t_n = 0$, no NaN, and the state is
# flagged `converged`. This is the behaviour the library's regression test
# `test_eki_update_is_finite_after_algo_time_one` pins down. `on_terminate="continue"`
# keeps stepping with the uncapped $q_n$, and `"continue_fixed"` with the last step.
#
# $$\Delta t_n = \begin{cases} \min(q_n,\ 1 - t_n) & t_n < 1 \\
# 0 & t_n \ge 1 \ (\texttt{"stop"}) \end{cases}$$

# %%
dt = np.asarray(h_dmc.dt)
time = np.asarray(h_dmc.time)
print(" n   t_n      dt_n")
for n in range(N_ITER):
    print(f"{n:2d}  {time[n]:.4f}   {dt[n]:.4f}")
params = np.asarray(h_dmc.parameters)
assert np.all(dt[n_dmc:] == 0.0) and np.all(time[n_dmc:] == 1.0)
assert np.all(params[n_dmc:] == params[n_dmc])  # identity updates: the ensemble is frozen
assert np.all(np.isfinite(params))
assert bool(results["DataMisfitController()"].state.converged)

# the scheduler alone, called at and past T = 1 and with a perfect fit (all misfits 0)
phi = jnp.asarray(rng.chisquare(N_Y, size=N_E) / 2)
for on_terminate in ("stop", "continue", "continue_fixed"):
    dmc = fxproc.DataMisfitController(on_terminate=on_terminate)
    s = dmc.init()
    dt0, s = dmc.step(s, phi, time=jnp.asarray(0.7), n_obs=N_Y)
    assert float(dt0) <= 0.3 + 1e-15
    steps = []
    for t in (1.0, 1.5):
        step, s = dmc.step(s, phi, time=jnp.asarray(t), n_obs=N_Y)
        steps.append(float(step))
    assert all(np.isfinite(steps)) and min(steps) >= 0.0
    print(
        f"on_terminate={on_terminate!r:17s} dt at t=0.7: {float(dt0):.3f}, "
        f"at t=1.0 and 1.5: {steps}"
    )
    if on_terminate == "stop":
        assert steps == [0.0, 0.0]
    if on_terminate == "continue_fixed":
        assert steps[0] == steps[1] == float(dt0)

# a perfect fit: zero mean and variance make q infinite; the step is capped to 1 - t
dmc = fxproc.DataMisfitController()
step, _ = dmc.step(dmc.init(), jnp.zeros(N_E), time=jnp.asarray(0.25), n_obs=N_Y)
assert float(step) == 0.75
print("all misfits 0 at t = 0.25: dt =", float(step))

fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
ax.step(np.arange(N_ITER), dt, where="post", color="C1", label=r"$\Delta t_n$")
ax.plot(np.arange(N_ITER + 1), time, "o-", ms=3, color="C3", label="$t_n$")
ax.axvline(n_dmc, color="0.5", ls=":", label=f"T = 1 reached (iteration {n_dmc})")
ax.set_xlabel("iteration")
ax.set_ylabel("algorithm time / step")
ax.set_title('DataMisfitController(on_terminate="stop") past T = 1')
ax.legend()
plt.show()
