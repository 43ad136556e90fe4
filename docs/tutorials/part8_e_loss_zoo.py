# %% [markdown]
# # 8.E The loss zoo: pick your gradient signal
#
# A differentiable filter is trained by back-propagating a *loss on what the run produced*
# through `filterax.filters.run`. `filterax.learn` ships five such losses, each a plain
# function of the `RunResult` (and the observations or truth it is scored against):
#
# | loss | function | needs the truth? | scores |
# |---|---|---|---|
# | innovation NLL | `innovation_nll` | no | the Gaussian predictive density of each $y_t$ |
# | MSE | `observation_mse` | no | the forecast mean against the observations |
# | CRPS | `crps_loss` | yes (or observations) | the forecast ensemble, component by component |
# | energy score | `energy_score_loss` | yes (or observations) | the forecast ensemble, jointly |
# | spread–skill | `spread_skill_loss` | yes | calibration only: spread against error |
#
# This page runs all five on the *same* runs, differentiates each with respect to one
# filter parameter — the multiplicative inflation factor $\lambda$ — and asks where each
# loss puts its minimum and what that minimum buys in accuracy and calibration.

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp
from filterax.zoo import Lorenz96, StateSpaceModel

jax.config.update("jax_enable_x64", True)

# docs size: 6 independent windows of 30 cycles, a 17-point inflation grid
N_X, N_E = 10, 11  # Lorenz-96 on a ring of 10, full-rank ensemble
N_WINDOWS, WINDOW, BURN_IN = 6, 30, 8
DT = 0.05
GRID = jnp.linspace(1.0, 1.4, 17)
l96 = Lorenz96(n=N_X, forcing=8.0)


def rk4_step(x, t0, t1):
    """One RK4 step of Lorenz-96 per observation window (dt_obs = DT)."""
    k1 = l96.rhs(x)
    k2 = l96.rhs(x + 0.5 * DT * k1)
    k3 = l96.rhs(x + 0.5 * DT * k2)
    k4 = l96.rhs(x + DT * k3)
    return x + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


# The truth has process noise that the filter's model does not know about: the
# classic reason an ensemble needs inflation.
truth_model = StateSpaceModel(
    rk4_step,
    jnp.eye(N_X)[::2],  # every other site observed
    0.5,  # R = 0.5 I
    dt_obs=DT,
    x0_mean=jnp.full(N_X, 8.0).at[0].add(0.01),
    x0_cov=1.0,
    process_noise=0.05,
)
filter_model = eqx.tree_at(
    lambda m: m.process_noise, truth_model, None, is_leaf=lambda x: x is None
)
obs_op = filter_model.obs_op

# one long truth, cut into independent windows after a spin-up of 100 cycles
spin = 100
twin = truth_model.simulate(jax.random.key(0), spin + N_WINDOWS * WINDOW)
starts = spin + WINDOW * np.arange(N_WINDOWS)
rows = starts[:, None] + np.arange(WINDOW)[None, :]
obs, truth = twin.observations[rows], twin.truth[rows]
times = DT * jnp.arange(1, WINDOW + 1)  # the model is autonomous: every window from t0 = 0
# each window starts from the truth plus N(0, 0.5^2 I) perturbations; the first BURN_IN
# cycles (the filter forgetting that start) are not scored
ens0 = twin.truth[starts - 1][:, None, :] + 0.5 * jax.random.normal(
    jax.random.key(1), (N_WINDOWS, N_E, N_X)
)
print("windows:", obs.shape, "truth:", truth.shape, "initial ensembles:", ens0.shape)

# %% [markdown]
# ## 8.10 NLL vs MSE vs CRPS vs spread–skill — pick your gradient signal
#
# Over the scored cycles $t$ of a run, with $\bar x^f_t$ the forecast mean, $v_t$ the
# innovation, $\sigma_t$ the ensemble spread and $\mathrm{err}_t$ the error of the mean,
#
# $$\mathcal L_\mathrm{NLL} = \sum_t -\log p(y_t \mid \bar x^f_t),\qquad
# \mathcal L_\mathrm{MSE} = \sum_t \|v_t\|^2,\qquad
# \mathcal L_\mathrm{CRPS} = \sum_t \mathrm{CRPS}(\mathrm{ens}_t, y_t),\qquad
# \mathcal L_\mathrm{SS} = \sum_t (\sigma_t - \mathrm{err}_t)^2 .$$
#
# What the library computes (see the docstrings for the exact forms): the NLL is the run's own
# Gaussian predictive density $\mathcal N(y_t;\ \overline{H(X^f_t)},\ C^{HH}_t + R)$ per
# observed entry; the MSE is the mean of $\|y_t - H\bar x^f_t\|^2$; the CRPS is the fair
# ensemble CRPS
#
# $$\mathrm{CRPS}(\{z^{(i)}\}, y) = \frac1{N_e}\sum_i |z^{(i)} - y|
# - \frac1{2N_e(N_e - 1)}\sum_{i,l} |z^{(i)} - z^{(l)}|,$$
#
# here of the forecast members against the truth; the energy score is its multivariate
# version with Euclidean norms; and the spread–skill loss is the squared log ratio
# $\big(\tfrac12\log\frac{c\sum_t\sigma_t^2}{\sum_t\mathrm{err}_t^2}\big)^2$,
# $c = (N_e + 1)/N_e$, zero exactly at calibration (the master list's
# $\sum_t(\sigma_t - \mathrm{err}_t)^2$ is not scale free and rewards a collapsed ensemble on
# a well-predicted cycle).
#
# **One program.** A function of $\lambda$ runs the ETKF on the six windows (a `vmap`), scores
# them with the five losses (the window mean), and `jax.jacrev` differentiates all five
# through `run` at once; a `vmap` over the grid of $\lambda$ makes the whole sweep one
# compiled program. The windows are **short** on purpose: through long chaotic runs the
# gradient of a loss explodes ([8.A, §8.9](../part8_a_gradients_adjoints/)); for longer
# records pass `adjoint=ff.TruncatedAdjoint(window=k)` to `run`.

# %%
LOSSES = ("NLL", "MSE", "CRPS", "energy score", "spread-skill")


def window_scores(inflation, x0, y, x_true):
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(inflation))
    out = ff.run(
        method,
        filter_model,
        x0,
        y,
        times,
        key=jax.random.key(2),
        t0=0.0,
        save="forecast_and_analysis",
    )
    losses = {
        "NLL": fl.innovation_nll(out, observations=y, normalize=True, burn_in=BURN_IN),
        "MSE": fl.observation_mse(out, y, obs_op, burn_in=BURN_IN),
        "CRPS": fl.crps_loss(out, x_true, burn_in=BURN_IN),
        "energy score": fl.energy_score_loss(out, x_true, burn_in=BURN_IN),
        "spread-skill": fl.spread_skill_loss(
            out, x_true, which="forecast", ensemble_size=N_E, burn_in=BURN_IN
        ),
    }
    scored = slice(BURN_IN, None)
    diagnostics = {  # mean squares, turned into RMSEs after the window mean
        "mse_f": jnp.mean((out.forecast_mean[scored] - x_true[scored]) ** 2),
        "mse_a": jnp.mean((out.analysis_mean[scored] - x_true[scored]) ** 2),
        "var_f": jnp.mean(out.forecast_spread[scored] ** 2),
    }
    return losses, diagnostics


def mean_scores(inflation):
    per_window = jax.vmap(window_scores, in_axes=(None, 0, 0, 0))(inflation, ens0, obs, truth)
    losses, diagnostics = jax.tree_util.tree_map(jnp.mean, per_window)
    return losses, (losses, diagnostics)  # differentiate the losses; carry both out


@jax.jit
def sweep(grid):
    def one(inflation):
        grads, (losses, diagnostics) = jax.jacrev(mean_scores, has_aux=True)(inflation)
        return losses, grads, diagnostics

    return jax.vmap(one)(grid)


losses, grads, diagnostics = jax.tree_util.tree_map(np.asarray, sweep(GRID))
grid = np.asarray(GRID)
rmse_f = np.sqrt(diagnostics["mse_f"])
rmse_a = np.sqrt(diagnostics["mse_a"])
# spread / skill with the finite-ensemble factor: 1 for a calibrated ensemble
ratio = np.sqrt((N_E + 1) / N_E * diagnostics["var_f"]) / rmse_f
argmin = {name: int(np.argmin(losses[name])) for name in LOSSES}
for name in LOSSES:
    print(f"{name:13s} minimum at lambda = {grid[argmin[name]]:.3f}")

# %% [markdown]
# **The gradients.** Each panel is one loss over $\lambda$ with the `jax.grad` tangents drawn
# at every grid point (black). All five agree on the *sign* away from the optimum, and all
# are asymmetric — too little inflation costs far more than the same excess — but not
# equally: the asymmetry is printed below the figure (rise of the loss from its minimum to
# $\lambda = 1$, divided by its rise to $\lambda = 1.4$).

# %%
colors = {name: f"C{i}" for i, name in enumerate(LOSSES)}
fig, axes = plt.subplots(1, len(LOSSES), figsize=(15, 3.2), constrained_layout=True)
half = 0.4 * (grid[1] - grid[0])
for ax, name in zip(axes, LOSSES, strict=True):
    value, slope = losses[name], grads[name]
    ax.plot(grid, value, "o-", ms=3, color=colors[name])
    for x, v, g in zip(grid, value, slope, strict=True):
        ax.plot([x - half, x + half], [v - half * g, v + half * g], color="k", lw=1)
    ax.axvline(grid[argmin[name]], color=colors[name], ls=":")
    ax.set_title(name)
    ax.set_xlabel(r"inflation $\lambda$")
axes[0].set_ylabel("loss (window mean); black: jax.grad tangents")
plt.show()

asymmetry = {}
for name in LOSSES:
    low = losses[name].min()
    asymmetry[name] = (losses[name][0] - low) / (losses[name][-1] - low)
    print(f"{name:13s} rise to lambda = 1 / rise to lambda = 1.4: {asymmetry[name]:.1f}")

# %% [markdown]
# The checks behind the figure: every loss and every gradient is finite; every loss has an
# interior minimum on the grid; every gradient is negative at $\lambda = 1$ (no inflation)
# and positive at $\lambda = 1.4$; and away from each minimum the `jax.grad` value has the
# sign of the finite difference of the loss profile (a coarse step of 0.025, so only its sign
# is compared).

# %%
fd = {name: np.gradient(losses[name], grid) for name in LOSSES}
for name in LOSSES:
    i = argmin[name]
    assert np.all(np.isfinite(losses[name])) and np.all(np.isfinite(grads[name])), name
    assert 0 < i < len(grid) - 1, (name, grid[i])  # an interior minimum
    assert grads[name][0] < 0 < grads[name][-1], name
    far = np.abs(np.arange(len(grid)) - i) >= 3  # >= 0.075 from the minimum
    assert np.all(np.sign(grads[name][far]) == np.sign(fd[name][far])), name
print("gradients: finite, downhill and consistent with finite differences")
# under-inflation is the costly side for every loss; the NLL and the MSE (scored through
# the observations) are flatter on the over-inflated side than the ensemble scores CRPS
# and energy score (measured: ~5 and ~3.5 against ~2.4; the margin is wide)
assert all(value > 1.5 for value in asymmetry.values()), asymmetry
assert min(asymmetry["NLL"], asymmetry["MSE"]) > max(asymmetry["CRPS"], asymmetry["energy score"])

# %% [markdown]
# **Calibration vs accuracy.** The table reads each loss's optimal $\lambda$ off the sweep
# and reports what the filter achieves there: the forecast and analysis RMSE against the
# truth (accuracy) and the forecast spread/skill ratio
# $\sqrt{(1 + 1/N_e)\,\overline{\sigma^2}}/\mathrm{RMSE}^f$ (calibration: 1 is
# calibrated, below 1 over-confident). The last row is the RMSE-optimal $\lambda$ on the
# same grid, which no loss without the truth can see.

# %%
rows_table = {name: argmin[name] for name in LOSSES}
rows_table["(best forecast RMSE)"] = int(np.argmin(rmse_f))
print(f"{'loss minimised':22s} {'lambda':>7s} {'RMSE_f':>7s} {'RMSE_a':>7s} {'spread/skill':>12s}")
for name, i in rows_table.items():
    print(f"{name:22s} {grid[i]:7.3f} {rmse_f[i]:7.3f} {rmse_a[i]:7.3f} {ratio[i]:12.2f}")

best = rmse_f.min()
i_ss = argmin["spread-skill"]
# The spread-skill loss finds calibration: its ratio is the closest to 1 on the grid
# (the ratio moves by ~0.1 per grid step, so within 0.1 of 1).
assert abs(ratio[i_ss] - 1) <= np.abs(ratio - 1).min() + 1e-12 and abs(ratio[i_ss] - 1) < 0.1
# Every loss's optimum is a good filter: within 10 % of the best forecast RMSE on the grid
# (the window-mean losses are estimates from 6 x 22 scored cycles, so their minima could
# scatter by a grid step or two around the RMSE optimum, a few per cent of RMSE).
for name in LOSSES:
    assert rmse_f[argmin[name]] <= 1.10 * best, (name, rmse_f[argmin[name]], best)
# No inflation is far worse than any loss's choice: the signal every loss carries.
assert rmse_f[0] > 1.2 * best

# %% [markdown]
# **Reading the table.** On this problem (an ensemble whose only defect is unmodelled
# process noise) the five losses agree: they put the minimum at the same grid point, which
# is also the RMSE-optimal one and nearly calibrated. The choice between them is therefore
# about what they need and how their gradients behave, not about where they lead:
#
# - the **NLL** and the **MSE** need only the observations, so they are the losses for
#   training on real data; the NLL also sees the spread (through $C^{HH}$), the MSE only the
#   mean. Both are flat on the over-inflated side: a gradient step from a too-large
#   $\lambda$ is small;
# - the **CRPS** and the **energy score** need a verifying truth (or score noisy
#   observations against noise-free members, see `crps_loss`) and give the most symmetric
#   minimum: they reward accuracy and calibration together;
# - the **spread–skill** loss is zero at calibration whatever the accuracy: a
#   *regulariser* next to an accuracy loss, never a training loss on its own (a filter
#   with a bad mean and a matching spread scores zero).
#
# Where the losses *do* disagree — a biased model, a rank-deficient ensemble — the same
# sweep, with the same five lines, measures by how much.
