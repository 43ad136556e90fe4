# %% [markdown]
# # 9.B Composing ensemble Kalman transformations with `optax.chain`
#
# The wrappers of [9.A](../part9_a_eki/) are ordinary `optax.GradientTransformation`s, so
# they compose with the rest of optax. Two things to keep in mind:
#
# - The **gradient slot is unused** by the ensemble transformations: whatever arrives in
#   `updates` is replaced by the ensemble step $\bar\theta_{\text{new}} - \theta$.
# - The **ensemble lives in the optimiser state** and moves by the process's own rule (its
#   scheduler picks $\Delta t$). Transformations *after* it in a chain (clipping, scaling)
#   change how fast the parameters follow the ensemble mean, not the ensemble.
#
# 9.4 (this page) chains EKI with masking by parameter name, gradient clipping and a
# warm-up schedule; [9.5](../part9_d_hybrid_sgd_eki/) trains a hybrid model, SGD on a neural
# network and EKI on physical parameters, with one `optax.multi_transform`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import filterax.processes as fxproc
from filterax.processes import optax as fxo

jax.config.update("jax_enable_x64", True)

# %% [markdown]
# ## 9.4 `optax.chain`: masking, clipping and scheduling on top of EKI
#
# The chain below, applied to a parameter dict `{"theta": ..., "offset": ...}`:
#
# 1. `optax.masked(eki, is_theta)`: EKI fits the leaves whose **name** starts with
#    `theta`; the forward model sees the other leaves as `optax.MaskedNode()` (it takes the
#    known offset from its closure);
# 2. `optax.masked(optax.set_to_zero(), not is_theta)`: the other leaves are frozen (a
#    masked-out leaf would otherwise pass its incoming gradient through);
# 3. `optax.clip_by_global_norm(0.25)`: $u \leftarrow u \min(1, 0.25/\|u\|)$;
# 4. `optax.scale_by_schedule(warmup)`: $u_n \leftarrow s(n)\,u_n$, a linear warm-up from
#    0.2 to 1 over 5 steps.
#
# So every step obeys $\|u_n\| \le 0.25\,s(n)$, the offset never moves, and, since the
# deterministic EKI still lands on algorithm time 1, its ensemble mean is still the
# Kalman posterior of the initial sample (as in 9.1); the clipped parameters reach it a
# few steps later. The problem is the linear one of 9.1 ($N_y = 8$, $N_p = 3$,
# $\Gamma = 0.1^2 I$) plus a known sensor offset.

# %%
N_Y, N_P, N_E = 8, 3, 30  # docs size
NOISE_STD, OFFSET = 0.1, 0.7
rng = np.random.default_rng(0)
G = rng.normal(size=(N_Y, N_P))
theta_true = np.array([1.0, -0.5, 0.3])
gamma = NOISE_STD**2
y = G @ theta_true + OFFSET + NOISE_STD * rng.normal(size=N_Y)


def forward(params):  # params["offset"] is an optax.MaskedNode here: use the known value
    return G @ params["theta"] + OFFSET


def is_theta(params):  # mask by parameter name
    return {name: name.startswith("theta") for name in params}


def is_frozen(params):
    return {name: not name.startswith("theta") for name in params}


MAX_NORM, N_STEPS = 0.25, 20
warmup = optax.linear_schedule(0.2, 1.0, transition_steps=5)
eki_tx = fxo.eki(
    forward,
    y,
    gamma,
    n_ensemble=N_E,
    key=jax.random.key(0),
    process=fxproc.EKI(stochastic=False),
)
tx = optax.chain(
    optax.masked(eki_tx, is_theta),
    optax.masked(optax.set_to_zero(), is_frozen),
    optax.clip_by_global_norm(MAX_NORM),
    optax.scale_by_schedule(warmup),
)
params0 = {"theta": jnp.zeros(N_P), "offset": jnp.asarray(OFFSET)}


@jax.jit
def chained_run(params):
    opt_state = tx.init(params)

    def body(carry, _):
        params, opt_state = carry
        grads = jax.tree.map(jnp.ones_like, params)  # arbitrary: EKI ignores, mask zeroes
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ensemble = opt_state[0].inner_state.process_state.ensemble
        return (params, opt_state), (params, updates, ensemble)

    initial = opt_state[0].inner_state.process_state.ensemble
    return initial, jax.lax.scan(body, (params, opt_state), None, length=N_STEPS)[1]


X0, (path, updates, ensembles) = chained_run(params0)
X0, ensembles, updates = np.asarray(X0), np.asarray(ensembles), jax.tree.map(np.asarray, updates)
theta_path = np.asarray(path["theta"])
norms = np.sqrt(np.sum(updates["theta"] ** 2, axis=1) + updates["offset"] ** 2)
bound = MAX_NORM * np.asarray(jax.vmap(warmup)(jnp.arange(N_STEPS, dtype=jnp.int32)))
for n in range(8):
    print(f"step {n + 1}: |u| = {norms[n]:.4f}  (bound {bound[n]:.4f})")

# clipping and warm-up on every step; optax evaluates the schedule on its int32 step
# counter, in float32, so the bound holds to float32 round-off (relative 1e-6)
assert np.all(norms <= bound * (1 + 1e-6))
assert np.all(np.asarray(path["offset"]) == OFFSET)  # the masked-out leaf never moves

# the ensemble does not see the clipping: its mean is the Kalman posterior of the initial
# sample (deterministic EKI, linear model; round-off tolerance as in 9.1) ...
m0, P0 = X0.mean(0), np.cov(X0.T)
K = P0 @ G.T @ np.linalg.inv(G @ P0 @ G.T + gamma * np.eye(N_Y))
m_kf = m0 + K @ (y - OFFSET - G @ m0)
assert np.max(np.abs(ensembles[-1].mean(0) - m_kf)) < 1e-10
# ... and the clipped parameters catch up with it (exactly: the last steps are unclipped)
assert np.max(np.abs(theta_path[-1] - m_kf)) < 1e-10
caught_up = int(np.argmax(np.max(np.abs(theta_path - m_kf), axis=1) < 1e-10)) + 1
print(f"parameters equal the ensemble mean from step {caught_up} on")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
steps = np.arange(N_STEPS + 1)
means = np.concatenate([X0.mean(0)[None], ensembles.mean(1)])
thetas = np.concatenate([np.zeros((1, N_P)), theta_path])
for i in range(N_P):
    ax0.plot(steps, means[:, i], "--", color=f"C{i}", lw=1)
    ax0.plot(steps, thetas[:, i], "o-", color=f"C{i}", ms=3, label=rf"$\theta_{i}$")
ax0.set_xlabel("optax step")
ax0.set_ylabel("parameter value")
ax0.set_title("solid: clipped parameters; dashed: EKI ensemble mean")
ax0.legend(fontsize=8)
ax1.bar(steps[1:], norms, color="C0", label=r"$\|u_n\|$")
ax1.plot(steps[1:], bound, "k_", ms=12, mew=2, label=r"$0.25\,s(n)$")
ax1.set_xlabel("optax step")
ax1.set_ylabel("update norm")
ax1.set_title("clip_by_global_norm + warm-up schedule")
ax1.legend(fontsize=8)
plt.show()
