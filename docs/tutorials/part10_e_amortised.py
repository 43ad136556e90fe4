# %% [markdown]
# # 10.E Amortised and streaming inference
#
# An *amortised* filter pays for inference once, in training: a network learns, from many
# forecast/observation pairs, how to map them to an analysis, and afterwards each cycle is
# one forward pass. Here the filtering distribution is an ensemble,
# $q_\phi(x_t \mid y_{1:t}) = \frac1{N_e}\sum_i \delta\big(x_t - x^{a,(i)}_t\big)$, and the
# network does not replace the Kalman update: it *corrects* it. 10.10 trains that correction
# through the filter itself (every cycle differentiated, as in Part 8) on Lorenz-63 and
# scores it on held-out trajectories beside the ETKF it started from; 10.11 keeps training it
# on a stream of observations, window by window, with bounded memory.
#
# The setting is the leaderboard's `ETKF-10` on DAPPER's `lorenz63_sakov2012` (all three
# variables observed every 0.25 time units with $R = 2I$; $N_e = 10$, inflation 1.02, random
# rotation). The page runs a docs-size version of `bench/scripts/train_amortised.py`.

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)  # the page compares with exact references

N_E, INFLATION = 10, 1.02  # the leaderboard's ETKF-10 on L63 sakov2012
N_CYCLES = 1000  # docs size, every twin (training, held-out, stream): one shape, one program
BURN = 64  # the preset's burn-in (16 time units), not scored
N_STEPS, BATCH, WINDOW = 200, 8, 5  # offline: 200 Adam steps x 8 windows of 5 cycles (600 x 16
# in the bench script, on a 4000-cycle twin)
TRAIN, HELD_OUT, STREAM = 100, (200, 201, 202), 300  # twin seeds, as in the bench script

ssm = presets.lorenz63_sakov2012()
seeds = jnp.asarray((TRAIN, *HELD_OUT, STREAM))
# all five twins in one vmapped program: truth, observations, initial ensemble, filter key
twins = jax.vmap(lambda s: ssm.simulate(jax.random.key(s), N_CYCLES))(seeds)
X0s = jax.vmap(lambda s: ssm.initial_ensemble(jax.random.key(s + 1), N_E))(seeds)
run_keys = jax.vmap(lambda s: jax.random.key(s + 2))(seeds)


def with_network(net):
    """The cycled method around a correction network: ETKF base, inflation 1.02, rotation."""
    return ff.EnsembleFilter(
        fl.AmortisedAnalysis(ff.ETKF(), net),
        inflator=fxp.MultiplicativeInflator(INFLATION),
        rotate=True,
    )


@eqx.filter_jit  # ONE compiled program, reused for every network's weights
def evaluate(net, twins, X0s, run_keys):
    method = with_network(net)

    def one(xp, X0, key):
        r = ff.run(method, ssm, X0, xp.observations, xp.times, key=key, save="ensembles")
        s = r.scores(xp.truth, BURN)
        crps = fl.crps_loss(r, xp.truth, which="analysis", burn_in=BURN)
        return r.analyses, r.log_likelihood, s["rmse_a"], s["spread_a"], crps

    return jax.vmap(one)(twins, X0s, run_keys)


# %% [markdown]
# ## 10.10 Amortised filter — a neural correction trained through the assimilation
#
# **The map.** A base analysis kernel (the ETKF) turns the forecast ensemble $X^f$ and the
# observation $y$ into $X^b = \mathrm{base}(X^f, y)$; a network $f_\phi$ adds a correction:
#
# $$X^a = \mathrm{base}(X^f, y) + f_\phi(X^f, X^b).$$
#
# The network never sees $y$ directly: the base analysis already carries it with the right
# weight (and handles any observation operator or missing data), so $f_\phi$ only has to learn
# what the Gaussian update misses — the non-Gaussian curvature of Lorenz-63 and the sampling
# error of 10 members. Its last layer is zero at initialisation, so **the untrained amortised
# filter is exactly the base filter**: training starts from a filter that works.
#
# **Permutation equivariance.** Members are exchangeable, so relabelling them must relabel the
# corrections and nothing else. `EquivariantEnsembleNet` is a deep-sets network: with
# $u_i = \big(x^f_i / s_x,\ (x^f_i - \bar x^f)/s_a,\ (x^b_i - x^f_i)/s_a\big)$,
#
# $$f_\phi(X^f, X^b)_i = s_\text{out}\,\rho\Big(u_i,\ \varphi(u_i),\
# \tfrac1{N_e}\textstyle\sum_j \varphi(u_j)\Big),\qquad
# f_\phi(PX^f, PX^b) = P\,f_\phi(X^f, X^b)$$
#
# for every permutation matrix $P$ — the pooled mean is the only place members meet, and a
# mean does not care about order. With the ETKF's symmetric square root (itself equivariant),
# the whole analysis map is.
#
# **The loss.** In a twin experiment the truth $x^\dagger$ is known. `fit_amortised` draws
# $B$ window starts $s_b$ at random on a training trajectory, runs the filter for $k$ cycles
# from the base filter's ensemble at $s_b - 1$ (a constant: the gradient is truncated at the
# window start) and scores every analysis ensemble with the fair CRPS,
#
# $$L(\phi) = \frac1B \sum_{b=1}^B \frac1{k N_x} \sum_{t=s_b}^{s_b+k-1}\sum_{j=1}^{N_x}
# \Big[\frac1{N_e}\sum_i \big|x^{a,(i)}_{t,j}(\phi) - x^\dagger_{t,j}\big|
# - \frac1{2N_e(N_e-1)}\sum_{i,l}\big|x^{a,(i)}_{t,j}(\phi) - x^{a,(l)}_{t,j}(\phi)\big|\Big].$$
#
# A proper score of the whole ensemble: it rewards an accurate mean *and* an honest spread,
# where an MSE of the mean would let the network collapse the ensemble (which then diverges).
# The master list's "encoder ELBO" would need the density of the network-pushed ensemble,
# which it does not have; the CRPS needs none (a departure from Bach et al. 2025, whose VI
# objectives are for maps with tractable densities — [8.E](../part8_e_loss_zoo/) compares
# the losses).
#
# **Training.** The untrained amortised filter on all five twins gives the base filter's
# ensembles (it *is* the base filter, checked below); those on the training twin (seed 100;
# no held-out trajectory is ever seen) are the window starts. Then 200 Adam steps, each on 8
# random windows of 5 cycles, one compiled step. A step's loss depends on which windows it
# drew, so the curve is noisy; its running mean shows the trend.

# %%
net0 = fl.EquivariantEnsembleNet(
    3, 32, 1, key=jax.random.key(0), state_scale=10.0, anomaly_scale=1.0, output_scale=0.1
)  # the leaderboard's architecture: dense deep sets over the 3 Lorenz-63 variables
base_out = evaluate(net0, twins, X0s, run_keys)  # == the base ETKF-10 (checked below)
reference = base_out[0][0]  # (T, N_e, N_x): the base analyses on the training twin
train = jax.tree.map(lambda a: a[0], twins)
fit = fl.fit_amortised(
    with_network(net0),
    ssm,
    reference,
    train.truth,
    train.observations,
    train.times,
    optimizer=optax.adam(1e-3),
    n_steps=N_STEPS,
    window=WINDOW,
    batch=BATCH,
    key=jax.random.key(103),
)
assert fit.status == 0 and fit.n_steps_done == N_STEPS
losses = np.asarray(fit.losses)
block = 40
early, late = losses[:block].mean(), losses[-block:].mean()
print(f"window CRPS: mean of the first {block} steps {early:.4f}, of the last {block} {late:.4f}")

fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
ax.plot(losses, color="C1", alpha=0.3, label="per step (8 random windows)")
running = np.convolve(losses, np.ones(block) / block, mode="valid")
ax.plot(np.arange(block - 1, N_STEPS), running, color="C1", label=f"running mean ({block} steps)")
ax.axhline(early, color="k", ls=":", label=f"mean of the first {block} steps")
ax.set_xlabel("Adam step")
ax.set_ylabel("fair CRPS of the analyses")
ax.set_title("fit_amortised on the training twin (L63, $N_e = 10$)")
ax.legend()
plt.show()
# The same key draws the same windows, so this is a deterministic number: observed 0.306 ->
# 0.288 (6 %). That is of the order of the step-to-step noise: at docs size training moves
# the loss a little, not a lot (the bench script's 600 x 16 windows get further). Asserted:
# every step's loss finite and the late mean not worse than the early one beyond that noise.
assert np.all(np.isfinite(np.asarray(fit.losses))) and late < 1.05 * early

# %% [markdown]
# **Untrained = base, and equivariance, checked.** One compiled function forecasts a real
# ensemble (cycle 200 of a held-out twin) and analyses it with the base ETKF, with the
# untrained amortised kernel, and with the trained one on the members in two orders. Every
# cycle of a run is forecast → inflate → analyse → rotate with the same keys, so an analysis
# bit-identical to the ETKF's makes the whole untrained run bit-identical to the ETKF-10 run
# (the unit tests check whole runs): the ETKF row of the table below *is* the untrained
# amortised filter, and one compiled `evaluate` scores every set of weights.

# %%
trained = fit.params  # the trained METHOD; its kernel holds the trained network
T_CHECK = 200
held = jax.tree.map(lambda a: a[1], twins)
perm = jnp.asarray(np.random.default_rng(0).permutation(N_E))


@eqx.filter_jit
def checks(untrained, kernel, X_prev, t_prev, t, y):
    Xf = fxp.forecast_ensemble(ssm, jax.random.key(0), X_prev, t_prev, t)

    def analyse(k, X):
        return k.analysis(None, X, y, ssm.obs_op, ssm.obs_noise).particles

    Xb = analyse(ff.ETKF(), Xf)
    return (
        Xb,
        analyse(untrained, Xf),
        kernel.network(Xf, Xb),
        kernel.network(Xf[perm], Xb[perm]),
        analyse(kernel, Xf),
        analyse(kernel, Xf[perm]),
    )


Xb, Xa0, delta, delta_p, Xa, Xa_p = checks(
    fl.AmortisedAnalysis(ff.ETKF(), net0),
    trained.kernel,
    base_out[0][1, T_CHECK - 1],
    held.times[T_CHECK - 1],
    held.times[T_CHECK],
    held.observations[T_CHECK],
)
err_base = float(jnp.max(jnp.abs(Xa0 - Xb)))
err_net = float(jnp.max(jnp.abs(delta_p - delta[perm])))
err_map = float(jnp.max(jnp.abs(Xa_p - Xa[perm])))
print(f"untrained amortised analysis - ETKF analysis: {err_base:.1e}")
print(f"trained correction: max |f| = {float(jnp.max(jnp.abs(delta))):.3f}")
print(f"f(PX^f, PX^b) - P f(X^f, X^b) = {err_net:.1e};  X^a(PX^f) - P X^a(X^f) = {err_map:.1e}")
assert err_base == 0.0  # the zero last layer adds an exact 0.0: bit-identical
assert float(jnp.max(jnp.abs(delta))) > 1e-3  # a non-trivial correction, else nothing is tested
# the network: a permutation only reorders the terms of the pooled mean, round-off (1e-12);
# the ETKF's symmetric square root of a permuted matrix: round-off times its conditioning (1e-10)
assert err_net < 1e-12 and err_map < 1e-10

# %% [markdown]
# **Held-out evaluation.** Three trajectories the training never saw (seeds 200–202), the
# same initial ensembles and filter keys for both filters, scored after the burn-in: the
# analysis RMSE against the truth (mean ± sd over the seeds), the ensemble spread and the
# analysis CRPS (lower is better for RMSE and CRPS).

# %%
trained_out = evaluate(trained.kernel.network, twins, X0s, run_keys)
held_rows = slice(1, 1 + len(HELD_OUT))


def table_row(name, out):
    rmse, spread, crps = (np.asarray(out[i][held_rows]) for i in (2, 3, 4))
    mean_sd = f"{rmse.mean():.3f} ± {rmse.std():.3f}"
    print(f"{name:22s} {mean_sd:>13s} {spread.mean():9.3f} {crps.mean():8.3f}")
    return rmse


def table(rows):
    print(f"held-out L63 sakov2012, N_e = {N_E}, {N_CYCLES - BURN} scored cycles x 3 seeds")
    print(f"{'method':22s} {'rmse.a':>13s} {'spread.a':>9s} {'crps.a':>8s}")
    return {name: table_row(name, out) for name, out in rows.items()}


rmse = table({"ETKF-10 (base)": base_out, "Amortised (offline)": trained_out})
# Docs size proves no gain (see below); it asserts that training left a healthy filter: a
# diverged L63 filter has rmse.a ~ 5-8, a working one ~ 0.5-0.7.
assert np.all(rmse["Amortised (offline)"] < 1.0)
assert abs(rmse["Amortised (offline)"].mean() - rmse["ETKF-10 (base)"].mean()) < 0.1

# %% [markdown]
# **How big is the gain?** Small. With the bench script's full size (600 steps of 16 windows
# on a 4000-cycle training twin; held-out seeds 200–202, 5000 cycles each) the amortised
# filter reaches rmse.a 0.557 ± 0.005 against the ETKF's 0.572 ± 0.025 (CRPS 0.329 against
# 0.347): about 3 %, with a smaller spread across seeds. On the leaderboard's own seeds 0–2
# the trained `Amortised-ETKF-10` scores 0.572 ± 0.003 against `ETKF-10`'s 0.574 ± 0.011 —
# within seed noise. At the docs size above (200 steps, 1000-cycle twins), the difference
# between the two rows is of the order of the seed-to-seed noise of a 1000-cycle Lorenz-63
# run, in either direction: read the table as "training kept a working filter", not as a
# ranking. A 10-member ETKF on fully observed Lorenz-63 is already near its floor (DAPPER's
# tuned ETKF-10 scores ≈ 0.57 too); the network's room is the non-Gaussian part of the
# analysis error, which is small here. Where the base is poorly tuned or the ensemble tiny
# (the unit test's $N_e = 5$ without inflation halves the training CRPS), there is more to
# learn.

# %% [markdown]
# ### The same on Lorenz-96: a stencil network on the LETKF
#
# On `lorenz96_sakov2008` (40 sites, all observed every 0.05 time units, $R = I$) the base is
# the leaderboard's `LETKF-10` ($N_e = 10$, inflation 1.04, DAPPER loc_rad 6, no rotation)
# and the network is `EquivariantEnsembleNet(40, 24, 1, radius=2, ...)` in *stencil* mode:
# one small network sees the features of sites $s-2..s+2$ and is shared by the 40 sites, so
# the correction is translation-equivariant on the ring as well as permutation-equivariant
# over members, and has 2 545 weights whatever $N_x$. The LETKF localises *through* the
# wrapper, so its geometry goes in the driver's context:
#
# ```python
# method = ff.EnsembleFilter(
#     fl.AmortisedAnalysis(ff.LETKF(radius=fxp.dapper_radius_to_gc_halfwidth(6.0)), net),
#     inflator=fxp.MultiplicativeInflator(1.04),
#     context=fxp.geometry_context(ssm),
# )
# ```
#
# Training is `bench/scripts/train_amortised.py --system l96` (too slow for this page: a
# 40-site LETKF differentiated through 40-cycle windows): 200 Adam steps of 2 random windows
# of 40 cycles on a 3000-cycle training twin (keys 100–103), 136 s on a shared core. Three
# findings, on held-out twins (seeds 200–202, 3000 cycles, scored after the 400-cycle
# burn-in), base `LETKF-10` rmse.a 0.2030 ± 0.0013, spread 0.240, CRPS 0.1005:
#
# - **A per-member correction learns to shrink the ensemble.** The LETKF-10 is
#   over-dispersed (spread 0.24 for an error of 0.20), so a sharper ensemble scores a better
#   CRPS *over a window*. Cycled, the sharper ensemble removes the base filter's
#   spread–error feedback (a spread that grows with the error raises the gain) and the filter
#   can lose the truth: with windows of 5 or 10 cycles, 1 and 3 of the 3 held-out seeds
#   diverged (rmse.a 3.6); with windows of 40 it stayed on track on the held-out seeds
#   (0.2007 ± 0.0061, spread 0.198, CRPS 0.1005 — no better) but diverged on leaderboard
#   seed 0, and a larger learning rate or more steps made it worse (0.21).
# - **The shipped row corrects the mean only.** `Amortised-LETKF-10` averages the network's
#   output over the members (`filterax.bench._methods_amortised.MeanCorrection`), so the
#   analysis keeps the LETKF's anomalies and moves their mean: stable, but it does not beat its
#   base either — rmse.a 0.2036 ± 0.0006, spread 0.240, CRPS 0.1010 on the held-out twins;
#   on the leaderboard's seeds 0–1 (5000 cycles) 0.2000 ± 0.0021 / CRPS 0.0990 against
#   `LETKF-10`'s 0.1985 ± 0.0014 / 0.0981, at 5× the cost per cycle (2.7 against 0.5 ms).
# - **Why so little to learn.** A fully observed L96 with $R = I$ every 0.05 time units is
#   close to linear-Gaussian between observations, and the tuned LETKF-10 is near its floor
#   (DAPPER: 0.20); the "sampling error of $N_e = 10$" that a network could correct is
#   already tamed by localisation. The equivariant stencil and the training loop are the
#   reusable part; the gain needs a harder setting (sparser or nonlinear observations, fewer
#   members, no localisation).

# %% [markdown]
# ## 10.11 Streaming amortised inference — online updates without retraining
#
# Deployed, the filter sees an unending stream of observations and no truth. `fit_windows`
# keeps the trained network learning on it, ROAD-EnKF style: cut the stream into windows
# $W_w$ of $k$ cycles; each window runs the filter from the previous window's final ensemble
# $S_w$ (a constant: the gradient stops at the window start) with the current weights, then
# takes one optimiser step on that window's innovation negative log-likelihood,
#
# $$\big(\mathcal R_w, S_{w+1}\big) = \mathrm{run}\big(\phi_w,\ \mathrm{sg}(S_w),\ y_{W_w}\big),
# \qquad \phi_{w+1} = \phi_w + \mathrm{Adam}_\eta\big(\nabla_\phi \ell_w(\phi_w)\big),$$
#
# $$\ell_w(\phi) = -\sum_{t \in W_w}\log\mathcal N\big(y_t;\ H\bar x^f_t(\phi),\
# H P^f_t(\phi) H^\top + R\big).$$
#
# The loss needs only observations. The analysis of cycle $t$ reaches it through the forecast
# of cycle $t + 1$, so a window needs $k \ge 2$ (here $k = 5$, as in training). Memory is
# bounded whatever the stream's length: one window's tape, the carried ensemble (the
# "recurrent state" of the filter) and Adam's moments — the whole loop is one compiled
# `lax.scan`. The step is small (Adam, $\eta = 10^{-4}$), so the offline weights are refined,
# not relearned.

# %%
stream = jax.tree.map(lambda a: a[-1], twins)  # seed 300: a new trajectory


def build(net):
    return with_network(net), ssm


online = fl.fit_windows(
    build,
    lambda result, obs_window, net: fl.innovation_nll(result),
    trained.kernel.network,
    optax.adam(1e-4),
    X0s[-1],
    stream.observations,
    stream.times,
    window=WINDOW,
    key=jax.random.key(302),
)
assert int(online.status) == 0
n_windows = N_CYCLES // WINDOW
flat = jax.vmap(lambda tree: ravel_pytree(tree)[0])
theta0 = ravel_pytree(eqx.filter(trained.kernel.network, eqx.is_array))[0]
drift = np.asarray(
    jnp.linalg.norm(flat(eqx.filter(online.trajectory, eqx.is_array)) - theta0, axis=1)
) / float(jnp.linalg.norm(theta0))
frozen_nll = -np.asarray(trained_out[1][-1]).reshape(n_windows, WINDOW).sum(1)

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
w = np.arange(n_windows)
smooth = 20
for values, c, name in (
    (frozen_nll, "C1", "offline weights, frozen"),
    (np.asarray(online.losses), "C2", "continued online"),
):
    ax0.plot(w, values, color=c, alpha=0.25)
    ax0.plot(
        w[smooth - 1 :],
        np.convolve(values, np.ones(smooth) / smooth, mode="valid"),
        color=c,
        label=f"{name} ({smooth}-window mean)",
    )
ax0.set_xlabel("window (5 cycles)")
ax0.set_ylabel("innovation NLL of the window")
ax0.set_title("the stream (seed 300)")
ax0.legend(fontsize=8)
ax1.plot(w, drift, color="C2")
ax1.set_xlabel("window (5 cycles)")
ax1.set_ylabel(r"$\|\phi_w - \phi_0\| / \|\phi_0\|$")
ax1.set_title("weights drift from the offline network")
plt.show()

continued_out = evaluate(online.params, twins, X0s, run_keys)
rmse = table(
    {"ETKF-10 (base)": base_out, "Amortised (offline)": trained_out,
     "Amortised (+online)": continued_out}
)  # fmt: skip
print(f"weights moved by {100 * drift[-1]:.2f} % of their norm over {n_windows} windows")
assert 0.0 < drift[-1] < 0.05  # updated, but refined rather than relearned
assert np.all(rmse["Amortised (+online)"] < 1.0)  # still a healthy filter

# %% [markdown]
# The two NLL curves differ in their filter keys (the frozen run is one `run` with one key,
# the online loop draws a key per window), so window by window they are not paired; their
# running means are the comparison. They overlap except for one burst of the frozen run (a
# few cycles where its ensemble lost track of the truth, which another key sequence need not
# reproduce — not evidence for the online weights). Online learning at this rate is a slow
# drift of the weights (about 1 % of their norm over 1000 cycles), and its effect on the
# held-out scores is within seed noise at docs size. At full size (a 4000-cycle stream) the
# bench script measures rmse.a 0.554 ± 0.001 and CRPS 0.327 after the continuation, against
# 0.557 / 0.329 before it and 0.572 / 0.347 for the ETKF — a further gain of the same small
# order. What the loop buys is the *mechanism*: adaptation to the data actually arriving,
# with constant memory and no truth, from weights that were already good.
