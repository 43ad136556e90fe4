# %% [markdown]
# # 2.C Localised filters: the LETKF, hard cutoffs, R- vs B-localisation
#
# With fewer members than state dimensions ($N_e < N_x$) the sample covariance is rank
# deficient and full of spurious long-range correlations. *Localisation* only lets an
# observation influence the state near it. The LETKF (Hunt, Kostelich & Szunyogh 2007) does
# it by running one small ETKF per grid point on the observations around it.
#
# The setting here is the Lorenz-96 geometry: $N_x = 40$ points on a ring, a periodic
# distance, $N_e = 10$ members (a random forecast ensemble: this page looks at single
# analyses; [Part 3.B](../part3_c_letkf_sweep/) cycles the LETKF).

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp

jax.config.update("jax_enable_x64", True)

N_X, N_E = 40, 10  # docs size
grid = jnp.arange(float(N_X))
ring = fxp.PeriodicDistance(float(N_X))
geometry = {"state_coords": grid, "obs_coords": grid, "distance": ring}
rng = np.random.default_rng(0)
# a smooth random forecast: correlated along the ring, as a real forecast would be
L_true = np.linalg.cholesky(
    np.asarray(fxp.localization_matrix(grid, grid, 4.0, distance=ring)) + 1e-6 * np.eye(N_X)
)
X = jnp.asarray(rng.normal(size=(N_E, N_X)) @ L_true.T)
y = jnp.asarray(rng.normal(size=N_X))
obs_op, R = fxp.IdentityObs(), fxp.isotropic_noise(1.0, N_X)

# %% [markdown]
# ## 2.6 LETKF (Hunt et al. 2007): R-localisation
#
# Each grid point $i$ gets an ETKF analysis from the observations $j$ within reach, each
# observation's precision multiplied by the taper weight $\rho_{ij} = \rho(d(x_i, y_j); c)$
# (R-localisation):
#
# $$\tilde C^{(i)} = (N_e - 1) I + Y'_{\mathcal L_i}\,\big(\rho_i \circ R^{-1}_{\mathcal L_i}\big)
# \,Y'^\top_{\mathcal L_i},\qquad x^a_{:,i} = \bar x_i + X'_{:,i}{}^\top w^{(i)}
# + W_a^{(i)} X'_{:,i},$$
#
# vmapped across the $N_x$ points. The local set $\mathcal L_i$ is cut **hard** at the taper's
# support (Gaspari–Cohn is non-zero out to $2c$). With $c = \infty$ every local analysis is
# the global one, so the LETKF equals the ETKF — the first check. The LETKF needs a diagonal
# $R$ (the taper weights individual observation errors).


# %%
@eqx.filter_jit
def letkf(filt, X, y):
    return filt.analysis(None, X, y, obs_op, R, **geometry)


global_etkf = eqx.filter_jit(ff.ETKF().analysis)(None, X, y, obs_op, R).particles
no_loc = letkf(ff.LETKF(radius=jnp.inf), X, y)
gap = float(jnp.max(jnp.abs(no_loc.particles - global_etkf)))
print(f"LETKF(radius=inf) vs ETKF: max member difference {gap:.1e}")
assert gap < 1e-10  # identical algebra, round-off only

try:
    ff.LETKF(radius=3.0).analysis(
        None, X, y, obs_op, fxp.dense_noise(jnp.eye(N_X) + 0.1), **geometry
    )
    raise AssertionError("a correlated R must be refused")
except ValueError as err:
    print("ValueError:", str(err)[:120], "...")

# %% [markdown]
# Per grid point, how many observations enter its analysis? With half of the sites observed
# (the others are NaN: missing) and $c = 3$ (support $2c = 6$), each point sees the observed
# sites closer than 6 grid units: 5 of them around an observed point (distances 0, 2, 4),
# 6 around a missing one (1, 3, 5). `LETKFInfo.n_local_obs` reports the count.

# %%
c = 3.0
y_half = y.at[1::2].set(jnp.nan)  # every other site missing
out = letkf(ff.LETKF(radius=c), X, y_half)
n_local = np.asarray(out.info.n_local_obs)
print("local observations per point:", n_local[:8], "...")
assert np.all(n_local[0::2] == 5) and np.all(n_local[1::2] == 6)  # GC is 0 at exactly 2c

weights = np.asarray(fxp.gaspari_cohn(jax.vmap(lambda b: ring(grid[20], b))(grid), c))
fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, constrained_layout=True)
ax0.bar(np.asarray(grid), weights, color="C0", width=0.8, label=r"taper $\rho_{20,j}$")
ax0.bar(np.asarray(grid)[1::2], weights[1::2], color="0.8", width=0.8, label="(missing obs)")
ax0.axvspan(20 - 2 * c, 20 + 2 * c, color="C0", alpha=0.08, label="support $2c$")
ax0.set_ylabel("weight for point 20")
ax0.legend(fontsize=8)
ax1.step(np.asarray(grid), n_local, where="mid", color="C1")
ax1.set_ylabel("local obs used")
ax1.set_xlabel("grid point $i$")
ax0.set_title("one local analysis per grid point")
plt.show()

# %% [markdown]
# ## 2.7 Hard cutoff vs taper only: far observations must not matter
#
# An observation beyond the cutoff is **excluded**, not merely down-weighted: changing it
# leaves the analysis at grid point $i$ bit-for-bit unchanged. That matters for tapers
# without compact support (a Gaussian taper is positive everywhere): without a cutoff every
# observation leaks into every point. The check changes the observations farther than 12
# grid units from point 0 — beyond the Gaspari–Cohn support $2c = 6$ and where the Gaussian
# weight $e^{-d^2/(2c^2)}$ is below the cutoff $10^{-3}$ — and compares point 0's members.

# %%
far = np.asarray(jax.vmap(lambda b: ring(grid[0], b))(grid)) > 12.0
y_far = jnp.where(jnp.asarray(far), y + 5.0, y)
cases = {
    "Gaspari-Cohn (support 2c)": ff.LETKF(radius=c),
    "Gaussian taper, no cutoff": ff.LETKF(radius=c, taper=fxp.gaussian_taper),
    "Gaussian taper, cutoff 1e-3": ff.LETKF(radius=c, taper=fxp.gaussian_taper, cutoff=1e-3),
}
change = {}
for name, filt in cases.items():
    a, b = letkf(filt, X, y).particles, letkf(filt, X, y_far).particles
    change[name] = float(jnp.max(jnp.abs(a[:, 0] - b[:, 0])))
    print(f"{name:28s}: point 0 moved by {change[name]:.1e}")
assert change["Gaspari-Cohn (support 2c)"] == 0.0  # excluded: exactly invariant
assert change["Gaussian taper, cutoff 1e-3"] == 0.0
assert change["Gaussian taper, no cutoff"] > 0.0  # tiny weights still leak in

# %% [markdown]
# ## R- vs B-localisation (Sakov & Bertino 2011)
#
# B-localisation tapers the *covariance* (Schur product $\rho \circ P$, `fxp.localize`), as a
# stochastic EnKF or a serial EnSRF would; R-localisation (the LETKF) tapers the observation
# *precision*. For a single observation of site $h$ with forecast variance $\sigma_h^2$, error
# variance $r$ and innovation $d$, the mean increments at point $i$ are
#
# $$\Delta\bar x_i^{B} = \frac{\rho_i\, P_{ih}}{\sigma_h^2 + r}\, d,\qquad
# \Delta\bar x_i^{R} = \frac{\rho_i\, P_{ih}}{\rho_i\,\sigma_h^2 + r}\, d :$$
#
# identical at the observed site ($\rho = 1$), and R-localisation's increment decays more
# slowly (its denominator shrinks with $\rho$). Both vanish beyond the support. The cell
# computes B-localisation from the public primitives and R-localisation with the LETKF, and
# checks both against these closed forms.

# %%
h = 20
obs1 = fxp.IndexObs([h])
y1 = jnp.asarray([2.0])
r1 = 0.5
R1 = fxp.isotropic_noise(r1, 1)
Xn = np.asarray(X)
P = np.cov(Xn, rowvar=False)
d = float(y1[0] - Xn[:, h].mean())
rho = np.asarray(fxp.localization_matrix(grid, grid[h : h + 1], c, distance=ring))[:, 0]

# B-localisation: K = (rho o P) H^T (H (rho o P) H^T + R)^{-1}
P_loc = np.asarray(
    fxp.localize(jnp.asarray(P), fxp.localization_matrix(grid, grid, c, distance=ring))
)
inc_B = P_loc[:, h] / (P_loc[h, h] + r1) * d
one_obs = eqx.filter_jit(ff.LETKF(radius=c).analysis)
Xa = one_obs(None, X, y1, obs1, R1, state_coords=grid, obs_coords=grid[h : h + 1], distance=ring)
inc_R = np.asarray(Xa.particles).mean(0) - Xn.mean(0)
inc_none = P[:, h] / (P[h, h] + r1) * d
assert np.abs(inc_B - rho * P[:, h] / (P[h, h] + r1) * d).max() < 1e-12
assert np.abs(inc_R - rho * P[:, h] / (rho * P[h, h] + r1) * d).max() < 1e-10
assert abs(inc_R[h] - inc_B[h]) < 1e-10  # the same at the observed site
print("increment at the observed site:", inc_R[h], "| B- and R-localisation agree there")

fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
ax.plot(np.asarray(grid), inc_none, "o-", color="0.6", ms=3, label="no localisation")
ax.plot(np.asarray(grid), inc_B, "s-", color="C0", ms=3, label="B-localisation (Schur on P)")
ax.plot(np.asarray(grid), inc_R, "^-", color="C1", ms=3, label="R-localisation (LETKF)")
ax.axvline(h, color="k", ls=":", lw=0.8)
ax.set_xlabel("grid point $i$")
ax.set_ylabel(r"mean increment $\Delta \bar x_i$")
ax.set_title(f"one observation at site {h}, Gaspari-Cohn half-width c = {c:g}")
ax.legend(fontsize=8)
plt.show()
