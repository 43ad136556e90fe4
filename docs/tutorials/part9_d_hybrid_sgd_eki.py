# %% [markdown]
# # 9.C Hybrid SGD + EKI in one optax optimiser
#
# The wrappers of [9.A](../part9_a_eki/) are ordinary `optax.GradientTransformation`s, so
# they compose with the rest of optax ([9.B](../part9_c_optax_chain/): `optax.chain`). Two
# things to keep in mind:
#
# - The **gradient slot is unused** by the ensemble transformations: whatever arrives in
#   `updates` is replaced by the ensemble step $\bar\theta_{\text{new}} - \theta$.
# - The **ensemble lives in the optimiser state** and moves by the process's own rule (its
#   scheduler picks $\Delta t$). Transformations *after* it in a chain (clipping, scaling)
#   change how fast the parameters follow the ensemble mean, not the ensemble.
#
# This page trains a hybrid model, SGD on a neural network and EKI on physical parameters,
# with one `optax.multi_transform`.

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
# ## 9.5 Hybrid pipeline: SGD on a network, EKI on the physics, one optimiser
#
# A hybrid model: a known physical law with unknown parameters plus an unknown closure
# term learned by a small neural network,
#
# $$y_i = \underbrace{a\,e^{-k t_i}}_{\text{physics}(a, k)} +
# \underbrace{g(u_i)}_{\text{closure}} + \varepsilon_i,\qquad
# g \approx \mathrm{MLP}_w,\qquad \varepsilon_i \sim \mathcal N(0, 0.05^2),$$
#
# where $u_i$ is a measured covariate. One `optax.multi_transform` labels each leaf:
# `adam` (SGD) on the network weights $w$, driven by the gradient of the mean-squared loss,
# and `eki` on $(\log a, \log k)$, driven by the ensemble. The EKI forward model needs the
# current weights: `update(..., net=params["net"])` passes them through (`multi_transform`
# forwards extra keyword arguments to every branch; `adam` ignores them). The gradient is
# only taken **with respect to the network**: the physics never needs to be differentiable,
# which is the point of putting EKI on it (a black-box solver would do). EKI uses a
# `FixedScheduler`, so it keeps stepping for as long as training runs, instead of stopping at
# algorithm time 1 as the default controller does. This is Pattern A/B of Part 8 with the
# physical parameters estimated derivative-free.

# %%
N_OBS, HIDDEN, N_TRAIN = 60, 8, 600  # docs size
K_TRUE, A_TRUE, EPS = 1.3, 2.0, 0.05
rng = np.random.default_rng(1)
t_obs = np.sort(rng.uniform(0.0, 2.0, N_OBS))
u_obs = rng.uniform(-1.0, 1.0, N_OBS)


def closure_true(u):
    return 0.5 * np.tanh(3.0 * u)


y_h = A_TRUE * np.exp(-K_TRUE * t_obs) + closure_true(u_obs) + EPS * rng.normal(size=N_OBS)


def mlp(w, u):
    return jnp.tanh(u[:, None] * w["w1"] + w["b1"]) @ w["w2"]


def physics(phys):
    return jnp.exp(phys["log_a"]) * jnp.exp(-jnp.exp(phys["log_k"]) * t_obs)


def eki_forward(view, net):  # view["net"] is a MaskedNode: the weights come as `net=`
    return physics(view["physics"]) + mlp(net, u_obs)


def net_loss(net, phys):  # differentiated with respect to the network only
    return jnp.mean((physics(phys) + mlp(net, u_obs) - y_h) ** 2)


k1, k2 = jax.random.split(jax.random.key(2))
hybrid0 = {
    "physics": {"log_a": jnp.asarray(0.0), "log_k": jnp.asarray(0.0)},
    "net": {
        "w1": 0.5 * jax.random.normal(k1, (HIDDEN,)),
        "b1": jnp.zeros(HIDDEN),
        "w2": 0.1 * jax.random.normal(k2, (HIDDEN,)),
    },
}
labels = jax.tree.map(lambda _: "sgd", hybrid0)
labels["physics"] = {"log_a": "eki", "log_k": "eki"}
per_leaf = optax.multi_transform(
    {
        "sgd": optax.adam(0.02),
        "eki": fxo.eki(
            eki_forward,
            y_h,
            EPS**2,
            n_ensemble=20,
            key=jax.random.key(3),
            init_std=0.5,
            process=fxproc.EKI(scheduler=fxproc.FixedScheduler(0.1)),
        ),
    },
    labels,
)
hybrid_tx = optax.chain(optax.clip_by_global_norm(1.0), per_leaf)


@jax.jit
def train(params):
    def body(carry, _):
        params, opt_state = carry
        loss, g_net = jax.value_and_grad(net_loss)(params["net"], params["physics"])
        grads = {"physics": jax.tree.map(jnp.zeros_like, params["physics"]), "net": g_net}
        updates, opt_state = hybrid_tx.update(grads, opt_state, params, net=params["net"])
        params = optax.apply_updates(params, updates)
        eki_state = opt_state[1].inner_states["eki"].inner_state  # chain -> multi_transform
        ensemble = eki_state.process_state.ensemble
        return (params, opt_state), (loss, ensemble)

    carry = (params, hybrid_tx.init(params))
    return jax.lax.scan(body, carry, None, length=N_TRAIN)


(trained, _), (losses, phys_ensembles) = train(hybrid0)
losses = np.asarray(losses)
k_ens = np.exp(np.asarray(phys_ensembles)[:, :, 1])  # flattened order: log_a, log_k
k_hat = float(np.exp(trained["physics"]["log_k"]))
a_hat = float(np.exp(trained["physics"]["log_a"]))
final_loss = float(net_loss(trained["net"], trained["physics"]))
print(f"k = {k_hat:.3f} (true {K_TRUE}), a = {a_hat:.3f} (true {A_TRUE})")
print(f"final mean-squared residual {final_loss:.5f} vs noise variance {EPS**2:.5f}")

# the fit reaches the noise level (a residual mean square below EPS^2 x 1.2; the network can
# over-fit slightly, hence no lower bound) ...
assert final_loss < 1.2 * EPS**2 and losses[-1] < 0.01 * losses[0]
# ... and the physical parameters are recovered to within 2.5 standard errors. The standard
# errors, from the linearised least-squares problem with a free constant in the closure:
# 0.06 for k, 0.03 for a (60 points, noise 0.05)
assert abs(k_hat - K_TRUE) < 2.5 * 0.06 and abs(a_hat - A_TRUE) < 2.5 * 0.03
# the learned closure matches the true one up to the constant the physics cannot see
u_grid = np.linspace(-1.0, 1.0, 101)
g_learned = np.asarray(mlp(trained["net"], jnp.asarray(u_grid)))
shift = np.mean(g_learned - closure_true(u_grid))
assert np.max(np.abs(g_learned - shift - closure_true(u_grid))) < 0.15

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
axes[0].semilogy(losses, color="C0")
axes[0].axhline(EPS**2, color="0.5", ls=":", label=r"noise variance $\sigma^2$")
axes[0].set_xlabel("optax step")
axes[0].set_ylabel("mean-squared residual")
axes[0].legend(fontsize=8)
axes[0].set_title("one optimiser: adam + EKI")
lo, hi = np.percentile(k_ens, [5, 95], axis=1)
axes[1].fill_between(np.arange(N_TRAIN), lo, hi, color="C1", alpha=0.3, label="EKI ensemble 5-95%")
axes[1].plot(k_ens.mean(1), color="C1", label="ensemble mean")
axes[1].axhline(K_TRUE, color="k", ls="--", label="true $k$")
axes[1].set_xlabel("optax step")
axes[1].set_ylabel("decay rate $k$")
axes[1].set_ylim(0.5, 2.5)
axes[1].legend(fontsize=8)
axes[2].plot(u_grid, closure_true(u_grid), "k--", label="true closure $g(u)$")
axes[2].plot(u_grid, g_learned - shift, color="C2", label="MLP (constant removed)")
axes[2].set_xlabel("covariate $u$")
axes[2].set_ylabel("closure")
axes[2].legend(fontsize=8)
plt.show()

# %% [markdown]
# Note the middle panel: with a fixed $\Delta t = 0.1$ the EKI ensemble is iterated far past
# algorithm time 1 (to 60 here) and collapses onto its mean. In a training loop that is
# what is wanted (a derivative-free optimiser), but the spread is then a convergence
# indicator, not a posterior uncertainty of $(a, k)$: put `fxo.eks` (9.2) in the `eki` slot
# for that.
