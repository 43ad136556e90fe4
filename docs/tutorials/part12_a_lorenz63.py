# %% [markdown]
# # 12.A (1) Lorenz-63: ETKF, EnSRF and LETKF on the standard benchmark
#
# The three-variable Lorenz (1963) system is the first benchmark every DA method meets:
#
# $$\dot x = \sigma(y - x),\qquad \dot y = x(\rho - z) - y,\qquad \dot z = xy - \beta z,
# \qquad (\sigma, \rho, \beta) = (10, 28, 8/3).$$
#
# The setup is Sakov, Oliver & Bertino (2012) as DAPPER runs it
# (`presets.lorenz63_sakov2012`): RK4 with $\delta t = 0.01$, all three variables observed
# every $\Delta t = 0.25$ (25 steps: strongly nonlinear between observations) with
# $R = 2I$, burn-in 16 time units. Three square-root filters with $N_e = 10$, the same
# multiplicative inflation 1.02 and random rotation (DAPPER's `infl=1.02, rot=True`):
#
# - **ETKF** (Hunt et al. 2007): one transform in ensemble space,
#   $X'^a = X'^f\,[(N_e - 1)\,\tilde C^{-1}]^{1/2}$ with
#   $\tilde C = (N_e - 1) I + Y'^\top R^{-1} Y'$;
# - **EnSRF** (Whitaker & Hamill 2002): the Kalman gain $K$ for the mean and the reduced gain
#   $\tilde K = P H^\top L_C^{-\top}(L_C + L_R)^{-1}$ for the anomalies (same mean and
#   covariance as the ETKF, different members);
# - **LETKF** (Hunt et al. 2007): one ETKF per state variable $i$ with the observations
#   tapered by $\rho_{ij} = \mathrm{GC}(d(i, j)/c)$, i.e. the local $R^{-1}$ multiplied by
#   $\rho_{ij}$. Lorenz-63 has no spatial structure: with $c = \infty$ every local analysis
#   is the global one, and any finite $c$ only throws away cross-variable information.
#
# The figure is the analysis RMSE against time across the filters, the scores are checked
# against DAPPER's published value.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)

N_CYCLES = 1000  # docs size: DAPPER's KObs=1000; the leaderboard's quick suite runs 5000
N_E = 10
ssm = presets.lorenz63_sakov2012()
published = dict(ssm.published_rmse)
print(ssm.name, "| burn-in cycles:", ssm.burn_in_cycles)
print("DAPPER:", {k: published[k] for k in ("Climatology", "Var3D", "ETKF N=10 infl=1.02 rot")})

# the index of each variable as a coordinate, for the LETKF's distances
coords = jnp.arange(3.0)[:, None]
geometry = {"state_coords": coords, "obs_coords": coords}
inflator = fxp.MultiplicativeInflator(1.02)
RADII = jnp.array([jnp.inf, 1.0])  # Gaspari-Cohn half-widths c (in index units)


@jax.jit  # the twin experiment and every filter: one compiled program
def experiment(key):
    twin = ssm.simulate(jax.random.fold_in(key, 0), N_CYCLES)
    ens0 = ssm.initial_ensemble(jax.random.fold_in(key, 1), N_E)
    run_key = jax.random.fold_in(key, 2)  # the same cycle keys (rotations) for every filter

    def cycled(kernel, context=None):
        method = ff.EnsembleFilter(kernel, inflator=inflator, rotate=True, context=context)
        out = ff.run(method, ssm, ens0, twin.observations, twin.times, key=run_key)
        return out.analysis_mean, out.analysis_spread

    letkf = jax.vmap(lambda c: cycled(ff.LETKF(radius=c), geometry))(RADII)
    runs = {
        "ETKF": cycled(ff.ETKF()),
        "EnSRF": cycled(ff.EnSRF()),
        "LETKF, c = inf": jax.tree.map(lambda a: a[0], letkf),
        "LETKF, c = 1": jax.tree.map(lambda a: a[1], letkf),
    }
    return twin.truth, twin.times, runs


truth, times, runs = experiment(jax.random.key(0))
truth = np.asarray(truth)
burn = ssm.burn_in_cycles
NAMES = ("ETKF", "EnSRF", "LETKF, c = inf", "LETKF, c = 1")
err_t, rmse_a, spread_a = {}, {}, {}
for name in NAMES:
    mean, spread = (np.asarray(a) for a in runs[name])
    err_t[name] = np.sqrt(np.mean((mean - truth) ** 2, axis=1))
    rmse_a[name] = float(err_t[name][burn:].mean())
    spread_a[name] = float(spread[burn:].mean())
print(f"{'filter':15s} {'rmse.a':>7s} {'spread.a':>9s}")
for name in NAMES:
    print(f"{name:15s} {rmse_a[name]:7.3f} {spread_a[name]:9.3f}")

# %% [markdown]
# What the page asserts:
#
# - **LETKF with $c = \infty$ is the ETKF** analysis by analysis (asserted to round-off in
#   [2.C](../part2_c_localised/)). Over the cycled run the two trajectories separate only
#   through round-off amplified by the chaos, so their scores agree statistically, not to
#   the digit: asserted within 10 % of each other.
# - ETKF, EnSRF and LETKF($\infty$) score at DAPPER's published level for this setup (ETKF
#   $N=10$, infl 1.02, rot: rmse.a = 0.60), far below the climatology (7.6) and 3D-Var
#   (1.04): asserted in the band 0.45–0.75. One 1000-cycle run is a noisy estimate: with
#   $N_e = 10$ and inflation 1.02 a run occasionally loses track of the truth for a while,
#   which lifts its time mean (five other seeds, measured when this page was written: ETKF
#   0.54–1.19, EnSRF 0.55–0.61). The page's seed has no such episode; the leaderboard
#   averages 5000 cycles over several seeds.
# - Localising a three-variable system discards cross-variable information: $c = 1$ (each
#   variable sees its neighbours with weight 0.21 and nothing beyond) is worse than the
#   global filters on this seed (asserted; on a seed where a global filter loses track it
#   can be the better one, being more damped).

# %%
assert abs(rmse_a["LETKF, c = inf"] / rmse_a["ETKF"] - 1) < 0.1
for name in ("ETKF", "EnSRF", "LETKF, c = inf"):
    assert 0.45 < rmse_a[name] < 0.75, (name, rmse_a[name])
global_worst = max(rmse_a[n] for n in ("ETKF", "EnSRF", "LETKF, c = inf"))
assert rmse_a["LETKF, c = 1"] > 1.1 * global_worst

fig, ax = plt.subplots(figsize=(9, 4), constrained_layout=True)
t = np.asarray(times)
window = 20  # a 5-time-unit running mean: the per-cycle error is very noisy
kernel = np.ones(window) / window
for colour, name in zip(("C0", "C1", "C2", "C3"), NAMES, strict=True):
    smooth = np.convolve(err_t[name], kernel, mode="valid")
    label = f"{name} (rmse.a {rmse_a[name]:.2f})"
    ax.semilogy(t[window - 1 :], smooth, color=colour, lw=1.2, label=label)
ref = published["ETKF N=10 infl=1.02 rot"]
ax.axhline(ref, color="k", ls="--", lw=0.8, label=f"DAPPER ETKF N=10: {ref}")
ax.axhline(published["Var3D"], color="0.5", ls=":", lw=0.8, label="DAPPER 3D-Var: 1.04")
ax.axvline(t[burn], color="0.6", lw=0.8)
ax.set_xlabel("time")
ax.set_ylabel(f"analysis RMSE ({window}-cycle running mean)")
ax.set_title(f"Lorenz-63 (Sakov 2012 setup), $N_e$ = {N_E}, infl 1.02, rotation")
ax.set_ylim(0.15, 4.0)  # room for the legend above the curves
ax.legend(fontsize=8, ncols=2, loc="upper right")
plt.show()
