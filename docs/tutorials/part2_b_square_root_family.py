# %% [markdown]
# # 2.B The deterministic square-root family
#
# The square-root filters update the mean with the Kalman gain and transform the anomalies
# deterministically, so on a linear-Gaussian problem their analysis mean **and** covariance
# are the Kalman ones of the forecast's sample statistics — to round-off, not statistically.
# This page checks that identity for each of them and shows where they differ: the
# transform (so the individual members), the cost, and what structure of $R$ they accept.
#
# Notation: $X^f$ is the $(N_e, N_x)$ forecast ensemble, $X'$ its anomalies, $Y'$ the observed
# anomalies, $d = y - \overline{H(X^f)}$ the innovation. The problem is the one of
# [2.A](../part2_a_stochastic_enkf/): $N_x = 6$, $N_y = 4$, diagonal $R$, $N_e = 20$.

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp

jax.config.update("jax_enable_x64", True)

N_X, N_Y, N_E = 6, 4, 20  # docs size
rng = np.random.default_rng(0)
H = rng.normal(size=(N_Y, N_X))
r_var = np.array([0.5, 1.0, 1.5, 2.0])
R = fxp.diagonal_noise(jnp.asarray(r_var))
A = rng.normal(size=(N_X, N_X))
P_true = A @ A.T / N_X + np.eye(N_X)
y = jnp.asarray(rng.normal(size=N_Y))
X = jnp.asarray(rng.normal(size=(N_E, N_X)) @ np.linalg.cholesky(P_true).T + 1.0)
obs_op = fxp.LinearObs(jnp.asarray(H))

# the exact reference, in numpy: Kalman analysis of the sample mean and covariance
m, P = np.asarray(X).mean(0), np.cov(np.asarray(X), rowvar=False)
S_inn = H @ P @ H.T + np.diag(r_var)
K = P @ H.T @ np.linalg.inv(S_inn)
mean_kf, cov_kf = m + K @ (np.asarray(y) - H @ m), (np.eye(N_X) - K @ H) @ P

FILTERS = {
    "ETKF": ff.ETKF(),
    "EnSRF": ff.EnSRF(),
    "EnSRF_Serial": ff.EnSRF_Serial(),
    "ESTKF": ff.ESTKF(),
    "DEnKF": ff.DEnKF(),
}


@eqx.filter_jit  # all five analyses in one compiled program
def analyses(X, y):
    return {name: f.analysis(None, X, y, obs_op, R).particles for name, f in FILTERS.items()}


particles = analyses(X, y)
errors = {}
for name, Xa in particles.items():
    Xa = np.asarray(Xa)
    errors[name] = (
        np.abs(Xa.mean(0) - mean_kf).max(),
        np.abs(np.cov(Xa, rowvar=False) - cov_kf).max(),
    )
    print(f"{name:13s} |mean - KF| = {errors[name][0]:.1e}   |cov - KF| = {errors[name][1]:.1e}")

# %% [markdown]
# ## 2.2 ETKF (Bishop et al. 2001; Hunt et al. 2007)
#
# The ensemble transform works in the $N_e$-dimensional ensemble space. With the transform
# precision
#
# $$\tilde C = (N_e - 1) I + Y' R^{-1} Y'^\top,\qquad W_a = \sqrt{(N_e - 1)\,\tilde C^{-1}}
# \ \text{(symmetric root)},\qquad X'^a = W_a X',$$
#
# and the mean weights $w = \tilde C^{-1} Y' R^{-1} d$. The symmetric root is the transform
# closest to the identity and keeps $W_a \mathbf 1 = \mathbf 1$, so the mean is preserved.
#
# **The rank-$N_y$ spectrum trick.** $Y' R^{-1} Y'^\top$ has rank at most $N_y$, so when
# $N_y < N_e$ the matrix $\tilde C$ has $N_e - N_y$ eigenvalues exactly equal to $N_e - 1$.
# An `eigh` of $\tilde C$ has no unique eigenvectors there and its derivative divides by zero.
# filterax instead applies any function $g$ of $\tilde C$ through the $N_y$-dimensional
# eigenproblem of the small Gram matrix:
#
# $$g(\tilde C)\,v = g(N_e - 1)\,v + U_y\,\mathrm{diag}(g_\Delta)\,U_y^\top v,$$
#
# with $U_y$ the $N_y$ non-trivial eigenvectors and $g_\Delta$ the change of $g$ on them. The
# next cell shows the degenerate spectrum and checks that gradients through the ETKF are
# finite right there.

# %%
Yp = (np.asarray(X) @ H.T) - (np.asarray(X) @ H.T).mean(0)
C_tilde = (N_E - 1) * np.eye(N_E) + Yp @ np.diag(1 / r_var) @ Yp.T
eigenvalues = np.linalg.eigvalsh(C_tilde)
n_trivial = int(np.sum(np.isclose(eigenvalues, N_E - 1, rtol=0, atol=1e-9)))
print(
    f"{n_trivial} of {N_E} eigenvalues equal N_e - 1 = {N_E - 1}; the others:", eigenvalues[-N_Y:]
)
assert n_trivial == N_E - N_Y  # rank-N_y update of (N_e - 1) I


def loss(X, y):
    return jnp.sum(ff.ETKF().analysis(None, X, y, obs_op, R).particles ** 2)


gx, gy = jax.grad(loss, argnums=(0, 1))(X, y)
assert jnp.all(jnp.isfinite(gx)) and jnp.all(jnp.isfinite(gy))  # no 0/0 at the repeated ones
print("finite gradients at the repeated eigenvalues:", bool(jnp.all(jnp.isfinite(gx))))

fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
ax.plot(np.arange(1, N_E + 1), eigenvalues, "o", color="C0")
ax.axhline(N_E - 1, color="0.5", ls=":", label="$N_e - 1$")
ax.set_xlabel("eigenvalue index")
ax.set_ylabel(r"eigenvalue of $\tilde C$")
ax.set_yscale("log")
ax.set_title(f"spectrum of the ETKF transform precision ($N_e$={N_E}, $N_y$={N_Y})")
ax.legend()
plt.show()

# %% [markdown]
# The ETKF's analysis equals the Kalman analysis of the sample statistics. The tolerance
# 1e-10 is round-off for these O(1) numbers in float64 (observed: ~1e-15).

# %%
assert errors["ETKF"][0] < 1e-10 and errors["ETKF"][1] < 1e-10, errors["ETKF"]

# %% [markdown]
# ## 2.3 EnSRF, batch form (Whitaker & Hamill 2002)
#
# The mean is updated with the Kalman gain and the anomalies with a *reduced* gain
# $\tilde K$ (left-multiplication in state space):
#
# $$\bar x^a = \bar x^f + K d,\qquad x'^a_j = x'_j - \tilde K\, y'_j,\qquad
# \tilde K = P H^\top L_C^{-\top}(L_C + L_R)^{-1},$$
#
# with $L_C$, $L_R$ the Cholesky factors of $HPH^\top + R$ and $R$. Tippett et al. (2003, §3)
# show that in batch mode it is the ETKF up to an orthogonal rotation of the anomalies: same
# mean and covariance, different members.

# %%
assert errors["EnSRF"][0] < 1e-10 and errors["EnSRF"][1] < 1e-10, errors["EnSRF"]
member_gap = float(jnp.max(jnp.abs(particles["EnSRF"] - particles["ETKF"])))
print(f"max |EnSRF member - ETKF member| = {member_gap:.3f}")
assert member_gap > 1e-3  # a different square root: the members differ

# %% [markdown]
# ## 2.4 Serial EnSRF (scalar observations, Potter's scheme)
#
# Observations are processed one at a time, each with a scalar gain and the square-root
# factor $\alpha_j$; no matrix factorisation is needed:
#
# $$k_j = \frac{P H_j^\top}{H_j P H_j^\top + R_{jj}},\qquad
# \alpha_j = \Big(1 + \sqrt{\tfrac{R_{jj}}{H_j P H_j^\top + R_{jj}}}\Big)^{-1},\qquad
# X' \leftarrow X' - \alpha_j\, y'_j k_j^\top .$$
#
# Serial processing is only valid for independent errors: `EnSRF_Serial` requires a
# **diagonal** $R$ and refuses anything else with a message that names the alternatives.

# %%
assert errors["EnSRF_Serial"][0] < 1e-10 and errors["EnSRF_Serial"][1] < 1e-10
R_dense = fxp.dense_noise(jnp.asarray(np.diag(r_var) + 0.2))
try:
    ff.EnSRF_Serial().analysis(None, X, y, obs_op, R_dense)
    raise AssertionError("a correlated R must be refused")
except ValueError as err:
    print("ValueError:", str(err)[:160], "...")

# %% [markdown]
# ## 2.5 ESTKF (Nerger et al. 2012)
#
# The error-subspace transform filter solves the ETKF's problem in the $(N_e - 1)$-dimensional
# subspace orthogonal to $\mathbf 1$, through the projection
# $L \in \mathbb R^{N_e \times (N_e - 1)}$ (a Householder matrix, orthonormal columns
# $\perp \mathbf 1$):
#
# $$A^{-1} = (N_e - 1) I_{N_e - 1} + L^\top Y' R^{-1} Y'^\top L,\qquad
# X'^a = L\, \big[(N_e - 1) A\big]^{1/2} L^\top X' .$$
#
# Since $L L^\top = I - \mathbf 1 \mathbf 1^\top / N_e$ and the anomalies sum to zero, it *is*
# the symmetric ETKF, with an eigenproblem one dimension smaller.

# %%
estkf_gap = float(jnp.max(jnp.abs(particles["ESTKF"] - particles["ETKF"])))
print(f"max |ESTKF member - ETKF member| = {estkf_gap:.1e}")
assert estkf_gap < 1e-10  # the same transform, member by member (round-off)

# %% [markdown]
# ## The DEnKF (Sakov & Oke 2008), for comparison
#
# The deterministic EnKF updates the anomalies with *half* the gain,
# $X'^a = X' - \tfrac12 Y' K^\top$. That is not an exact square root: its covariance is the
# Kalman one plus $\tfrac14 K H P H^\top K^\top$, a built-in inflation.

# %%
cov_denkf = np.cov(np.asarray(particles["DEnKF"]), rowvar=False)
excess = cov_kf + 0.25 * K @ H @ P @ H.T @ K.T
assert errors["DEnKF"][0] < 1e-10  # the mean is the Kalman mean
assert np.abs(cov_denkf - excess).max() < 1e-10  # (I - KH)P + K HPH^T K^T / 4, exactly
print(
    "DEnKF covariance = Kalman + K H P H^T K^T / 4 (max deviation "
    f"{np.abs(cov_denkf - excess).max():.1e})"
)

# %% [markdown]
# ## Same statistics, different members
#
# The covariance ellipses (2-sigma, components 0 and 1) of the exact Kalman analysis and of the
# ETKF, EnSRF and serial EnSRF ensembles coincide; the members (dots) do not. The DEnKF's
# ellipse is slightly larger.


# %%
def ellipse(mean, cov, n=200):
    t = np.linspace(0, 2 * np.pi, n)
    return mean[:, None] + 2 * np.linalg.cholesky(cov) @ np.stack([np.cos(t), np.sin(t)])


fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
ij = [0, 1]
e = ellipse(m[ij], P[np.ix_(ij, ij)])
ax.plot(*e, color="0.6", ls="--", label="forecast")
e = ellipse(mean_kf[ij], cov_kf[np.ix_(ij, ij)])
ax.plot(*e, color="k", lw=3, alpha=0.3, label="Kalman analysis")
for c, name in zip(
    ("C0", "C1", "C2", "C3"), ("ETKF", "EnSRF", "EnSRF_Serial", "DEnKF"), strict=True
):
    Xa = np.asarray(particles[name])
    ax.plot(Xa[:, 0], Xa[:, 1], ".", color=c, ms=5)
    e = ellipse(Xa.mean(0)[ij], np.cov(Xa[:, ij], rowvar=False))
    ax.plot(*e, color=c, lw=1, label=name)
ax.set_xlabel("$x_0$")
ax.set_ylabel("$x_1$")
ax.legend(fontsize=8)
ax.set_title("2-sigma ellipses and members")
plt.show()
