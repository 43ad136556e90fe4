# %% [markdown]
# # 8.A–8.B, 8.D Gradients through a filter: mechanics, stability, memory
#
# A filter run in filterax is one compiled `lax.scan` (`filterax.filters.run`), a pure
# function of its inputs, so `jax.grad` flows through the forecast, the analysis and the
# inflation of every cycle:
#
# $$X^a_t = \text{EnKF}\big(X^f_t = f_\theta(X^a_{t-1}),\ y_t\big),\qquad
# \mathcal L(\theta) = -\sum_t \log p(y_t \mid y_{1:t-1}, \theta).$$
#
# This page covers why that is useful (8.1), what changes for stochastic filters and why the
# deterministic square-root filters need care at repeated eigenvalues (8.2), the compiled
# `scan` + `vmap` + checkpointing idiom (8.3, 8.4), where to put `jax.checkpoint` and what it
# saves (8.8), and truncated gradients — ROAD-EnKF's local gradient — which are what make
# learning through long chaotic runs work at all (8.9).

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import Lorenz96, StateSpaceModel

jax.config.update("jax_enable_x64", True)

N_X, N_E, DT = 40, 20, 0.05
N_CYCLES = 256  # docs size: long enough for chaos to swamp the exact gradient (8.9)


def twin(key, n_cycles=N_CYCLES):
    """Truth with forcing F = 8 on the attractor, every state observed with R = I."""
    k_spin, k_sim, k_ens = jax.random.split(key, 3)
    dynamics = Lorenz96(n=N_X, forcing=8.0, dt=DT)
    x0 = dynamics(8.0 + jax.random.normal(k_spin, (N_X,)), 0.0, 20.0)  # spin-up
    ssm = StateSpaceModel(dynamics, fxp.IdentityObs(), 1.0, dt_obs=DT, x0_mean=x0, x0_cov=1e-6)
    xp = ssm.simulate(k_sim, n_cycles)
    return xp, xp.truth[0] + jax.random.normal(k_ens, (N_E, N_X))


def nll(forcing, observations, ensemble0, times, adjoint=None):
    """Negative log-likelihood of an ETKF run whose model has forcing `forcing`."""
    model = fxp.Model(Lorenz96(n=N_X, forcing=forcing, dt=DT), fxp.IdentityObs(), 1.0)
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.02))
    out = ff.run(method, model, ensemble0, observations, times, key=jax.random.key(0),
                 adjoint=adjoint, throw=False)  # fmt: skip
    return -jnp.sum(out.log_likelihood)


xp, ens0 = twin(jax.random.key(1))

# %% [markdown]
# ## 8.1 Why differentiable
#
# The predictive log-likelihood $\log p(y_t \mid y_{1:t-1})$ that every filter reports is a
# training signal for anything inside the run: dynamics parameters (Pattern A, 8.5), an
# observation operator (8.6), the filter's own inflation, localisation and $R$ (8.7). Here
# the model's forcing is $F = 7$ while the truth has $F = 8$; over a short window the
# derivative $\partial\mathcal L / \partial F$ is negative — increase $F$ — and `jax.grad`
# agrees with a central finite difference.

# %%
SHORT = 40
loss_short = eqx.filter_jit(lambda f: nll(f, xp.observations[:SHORT], ens0, xp.times[:SHORT]))
F = jnp.asarray(7.0)
g = jax.grad(loss_short)(F)
h = 1e-5
fd = (loss_short(F + h) - loss_short(F - h)) / (2 * h)
print(f"dL/dF: jax.grad {float(g):.6f}, central difference {float(fd):.6f}")
# float64, smooth deterministic filter: the O(h^2) truncation and the rounding of a sum of
# ~1e3 terms at h = 1e-5 stay below 1e-6 relative.
assert abs(g - fd) <= 1e-6 * abs(fd) and g < 0

# %% [markdown]
# ## 8.2 Stochastic vs deterministic filters under `grad`; repeated eigenvalues
#
# A perturbed-observation EnKF draws $\epsilon^{(j)} \sim \mathcal N(0, R)$ every cycle.
# With the key fixed the draws are fixed, the run is a smooth function of $\theta$ and
# `jax.grad` is the *reparameterised* gradient of that one realisation — unbiased for the
# expected loss over keys, with a variance you pay for. `packages/learn/tests/
# test_stochastic_gradient.py` checks both on a small linear twin (6 cycles, 6 members,
# inflation 1.5): over 4000 keys the pathwise gradient is $1.444 \pm 0.015$ and a central
# difference of the key-averaged loss with *independent* keys at each end $1.449 \pm 0.036$
# (agreement, so no bias), and at equal cost the pathwise standard error is 2.4× smaller (14×
# at $h = 0.05$). Unbiasedness needs a run that is smooth in $\theta$ for each key: a
# particle filter's discrete resampling is not, and its pathwise gradient drops the
# resampling term (biased; Part 10). The deterministic square-root filters
# have no such noise, but the ETKF's ensemble-space transform
# $T = (I + \tilde Y^\top \tilde Y)^{-1/2}$ has $N_e - N_y$ repeated eigenvalues $1$ when
# $N_y < N_e$: a naive `eigh` derivative divides by zero there. filterax's ETKF uses the
# rank-$N_y$ form of the spectrum, so its gradients stay finite — checked below with 4
# observed components and 20 members.

# %%
sparse = fxp.Model(Lorenz96(n=N_X, forcing=F, dt=DT), fxp.LinearObs(jnp.eye(N_X)[::10]), 1.0)


@eqx.filter_jit
def sparse_grad(forcing, kernel, key):
    def loss(f):
        model = eqx.tree_at(lambda m: m.dynamics.forcing, sparse, f)
        out = ff.run(ff.EnsembleFilter(kernel, inflator=fxp.MultiplicativeInflator(1.05)),
                     model, ens0, xp.observations[:SHORT, ::10], xp.times[:SHORT], key=key,
                     throw=False)  # fmt: skip
        return -jnp.sum(out.log_likelihood)

    return jax.grad(loss)(forcing)


keys = jax.random.split(jax.random.key(7), 8)
g_etkf = jax.vmap(lambda k: sparse_grad(F, ff.ETKF(), k))(keys[:2])
g_enkf = jax.vmap(lambda k: sparse_grad(F, ff.StochasticEnKF(), k))(keys)
print(
    "ETKF (N_y = 4 < N_e = 20): dL/dF =",
    np.round(np.asarray(g_etkf[:3]), 3),
    "(same for every key)",
)
print(f"stochastic EnKF over 8 keys: mean {float(g_enkf.mean()):.2f}, sd {float(g_enkf.std()):.2f}")
assert np.all(np.isfinite(g_etkf)) and np.ptp(np.asarray(g_etkf)) < 1e-9 * abs(float(g_etkf[0]))
assert np.all(np.isfinite(g_enkf)) and float(g_enkf.std()) > 0  # a key-dependent estimate

# %% [markdown]
# ## 8.3–8.4 The idiom: one `scan`, `vmap` outside, checkpointing inside
#
# `run` is one `lax.scan` wrapped in `eqx.filter_jit`: the gradient of a whole run, and of a
# batch of runs under `jax.vmap` (above: eight keys in one program), is one compiled program.
# The carry has one dtype: observations are cast to the state's floating dtype and integer
# observation times to a floating one, so `run` also accepts integer times and float32
# observations beside a float64 ensemble (8.4). What the backward pass stores is one
# option, `adjoint=`:
#
# | adjoint | gradient | stored for the backward pass |
# |---|---|---|
# | `FullAdjoint()` (default) | exact | every cycle's intermediates, $O(T\,N_e N_x)$ and more |
# | `CheckpointAdjoint()` | exact | the state of every cycle + one cycle |
# | `TwoLevelCheckpointAdjoint()` | exact | $\approx 2\sqrt T$ states + one cycle |
# | `TruncatedAdjoint(window=k)` | cut every $k$ cycles | as the full tape |

# %%
int_times = jnp.arange(1, SHORT + 1)  # integer times, dt_obs = 1 time unit of a map
A = 0.95 * jnp.eye(3)
linear = fxp.Model(lambda x, t0, t1: A @ x, fxp.IdentityObs(), 0.5)
ys32 = jnp.ones((SHORT, 3), dtype=jnp.float32)
g_lin = jax.grad(
    lambda s: (
        -ff.run(
            ff.ETKF(),
            linear,
            s * jnp.ones((N_E, 3)) + jnp.eye(N_E, 3),
            ys32,
            int_times,
            key=jax.random.key(0),
        ).log_likelihood.sum()
    )  # fmt: skip
)(1.0)
print("integer times, float32 observations, float64 ensemble: dL/ds =", float(g_lin))
assert np.isfinite(g_lin)

# %% [markdown]
# ## 8.8 `jax.checkpoint` placement: memory under reverse mode
#
# Checkpointing trades recomputation for memory. On the scan *body* (`CheckpointAdjoint`)
# the backward pass stores each cycle's state and replays one cycle at a time; on *segments
# of the scan* as well (`TwoLevelCheckpointAdjoint`, the $\sqrt T$ schedule of Chen et al.
# 2016) it stores one state per segment and replays a segment at a time. XLA reports the
# temporary memory of each compiled gradient program; the forward values and the exact
# gradients are the same for all three.

# %%
N_TWINS = 3
twins = [twin(jax.random.key(10 + i)) for i in range(N_TWINS)]
obs_batch = jnp.stack([x.observations for x, _ in twins])
ens_batch = jnp.stack([e for _, e in twins])
times = twins[0][0].times  # the same observation times for every twin


def gradient_program(adjoint):
    """dL/dF at F for every twin (vmapped): one compiled program per adjoint."""

    def one(obs, ens):
        return jax.grad(lambda f: nll(f, obs, ens, times, adjoint))(F)

    return jax.jit(jax.vmap(one)).lower(obs_batch, ens_batch).compile()


STRATEGIES = {
    "full tape": ff.FullAdjoint(),
    "per-cycle checkpoint": ff.CheckpointAdjoint(),
    "two-level √T": ff.TwoLevelCheckpointAdjoint(),
}
memory, grads = {}, {}
for name, adjoint in STRATEGIES.items():
    compiled = gradient_program(adjoint)
    memory[name] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    grads[name] = np.asarray(compiled(obs_batch, ens_batch))
for name in STRATEGIES:
    print(f"{name:22s} {memory[name]:8.2f} MiB   dL/dF = {grads[name]}")
ref = grads["full tape"]
# Recomputation replays identical float64 operations: gradients agree to round-off.
assert all(np.allclose(g, ref, rtol=1e-10, atol=0) for g in grads.values())
assert memory["two-level √T"] * 10 < memory["full tape"]

fig, ax = plt.subplots(figsize=(6, 2.6))
ax.barh(list(memory), list(memory.values()), color=["C0", "C1", "C2"])
ax.set_xscale("log")
ax.set_xlabel("temporary memory of the gradient program (MiB, log scale)")
ax.set_title(f"L96, N_x = {N_X}, N_e = {N_E}, T = {N_CYCLES} cycles, {N_TWINS} twins")
plt.tight_layout()
plt.show()

# %% [markdown]
# At 1024 cycles and 40 members the two-level program needs about 200x less than the tape
# (`bench/scripts/adjoint_memory.py` measures 256–4096 cycles, with times).
#
# ## 8.9 ROAD-EnKF: truncated (local) gradients
#
# Look at the gradients above: over a long chaotic run the exact gradient is useless. A
# change of $F$ perturbs the trajectory, the perturbation grows like $e^{\lambda_1 t}$, and
# $\partial\mathcal L/\partial F$ grows with it, with a sign that depends on the
# realisation. Truncated back-propagation stops the gradient through the carried ensemble
# every $k$ cycles (`TruncatedAdjoint(window=k)`); $k = 1$ is the local gradient of
# ROAD-EnKF (Chen, Sanz-Alonso & Willett 2023), each cycle's likelihood differentiated
# through that cycle's forecast alone. Below: $\partial\mathcal L/\partial F$ at $F = 7$
# (truth 8) over the same twins.

# %%
table = {
    "k = 1": np.asarray(gradient_program(ff.TruncatedAdjoint(window=1))(obs_batch, ens_batch)),
    "k = 25": np.asarray(gradient_program(ff.TruncatedAdjoint(window=25))(obs_batch, ens_batch)),
    f"exact (k = T = {N_CYCLES})": ref,
}
for label, values in table.items():
    print(f"{label:17s}", "  ".join(f"{v: .3e}" for v in values))
# Truncated windows: every twin points the right way (dL/dF < 0: increase F) ...
assert np.all(table["k = 1"] < 0) and np.all(table["k = 25"] < 0)
# ... while the exact gradients are orders of magnitude larger and scattered over orders of
# magnitude (their values even change with XLA's optimisation level: round-off, amplified).
assert np.max(np.abs(ref)) > 100 * np.max(np.abs(table["k = 25"]))
assert np.max(np.abs(ref)) > 10 * np.min(np.abs(ref))

fig, ax = plt.subplots(figsize=(6, 3))
for i in range(N_TWINS):
    ax.plot(list(table), [abs(table[w][i]) for w in table], "o-", label=f"twin {i}")
ax.set_yscale("log")
ax.set_ylabel("|dL/dF| at F = 7")
ax.set_xlabel("truncation window")
ax.set_title("Exact gradients of long chaotic runs explode")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Truncation changes *which* gradient you follow — the sum of window-local sensitivities,
# not the sensitivity of the whole run — and that is the one that descends towards $F = 8$.
# An online training loop that carries the ensemble from window to window and takes one
# optimiser step per window (memory independent of $T$) is in `filterax.learn`.
