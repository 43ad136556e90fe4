# %% [markdown]
# # 1.B–1.D Gain, innovation, likelihood and perturbations
#
# The second group of Layer-0 primitives turns ensemble statistics into an analysis: the
# ensemble Kalman gain (1.4), the innovation covariance as a structured operator (1.5), the
# Gaussian predictive log-likelihood that diagnostics and training use (1.6), and the
# perturbed observations of the stochastic EnKF (1.7). Observation-noise covariances $R$ are
# lineax operators; filterax picks the algebra from their structure.

# %%
import time

import jax
import jax.numpy as jnp
import lineax as lx
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse

import filterax.primitives as fxp

jax.config.update("jax_enable_x64", True)  # the page compares with exact references

N_E, N_X = 20, 40  # docs size: ensemble and state of the examples
N_PROFILE = 100  # independent draws averaged in the likelihood profile
N_PERT = 20_000  # perturbations drawn to check their covariance


def close(a, b, tol):
    return np.allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


key_x, key_r = jax.random.split(jax.random.key(0))
X = jax.random.normal(key_x, (N_E, N_X)).cumsum(axis=1) / 3  # correlated members
H = jnp.eye(N_X)[::2]  # observe every other component
Y = X @ H.T  # the observed ensemble H(X_j), (N_e, N_y)
n_y = Y.shape[1]
r = jax.random.uniform(key_r, (n_y,), minval=0.2, maxval=1.0)  # diagonal R: variances
lag = np.abs(np.arange(n_y)[:, None] - np.arange(n_y)[None, :])
R_toeplitz = 0.5 * 0.6**lag  # a stationary (Toeplitz) correlated R

# %% [markdown]
# ## 1.4 The ensemble Kalman gain
#
# $$K = C^{xH}(C^{HH} + R)^{-1}, \qquad C^{xH} = \tfrac{X'^\top Y'}{N_e - 1},\quad
# C^{HH} = \tfrac{Y'^\top Y'}{N_e - 1}.$$
#
# `kalman_gain(X, Y, R)` never forms an $N_y \times N_y$ inverse: with $R = LL^\top$ and
# $W = L^{-1} Y'^\top/\sqrt{N_e - 1}$ it applies the push-through identity
# $K = X'^\top (I + W^\top W)^{-1} W^\top L^{-1} / \sqrt{N_e - 1}$, an $N_e \times N_e$ solve.
# Checked against the textbook formula:

# %%
K = fxp.kalman_gain(X, Y, r)
C_xh = fxp.cross_covariance(X, Y)
C_hh = fxp.ensemble_covariance(Y, dense=True)
K_ref = C_xh @ np.linalg.inv(np.asarray(C_hh) + np.diag(np.asarray(r)))
assert close(K, K_ref, 1e-10)  # float64 round-off of two routes to the same matrix
K_dense = fxp.kalman_gain(X, Y, fxp.dense_noise(R_toeplitz))
assert close(K_dense, C_xh @ np.linalg.inv(np.asarray(C_hh) + R_toeplitz), 1e-10)
print("K shape", K.shape)

# %% [markdown]
# **Bessel's correction matters.** Both covariances carry the same $1/(N_e - 1)$, but $R$ does
# not, so normalising the anomalies by $N_e$ instead is not harmless: it is exactly the same as
# inflating $R$ by $N_e/(N_e-1)$ (5 % for $N_e = 20$), a systematically too small gain:

# %%
c = (N_E - 1) / N_E
K_biased = c * C_xh @ np.linalg.inv(c * np.asarray(C_hh) + np.diag(np.asarray(r)))
assert close(K_biased, fxp.kalman_gain(X, Y, r / c), 1e-10)
print(f"relative change of K with 1/N_e: {np.linalg.norm(K_biased - K) / np.linalg.norm(K):.3f}")

# %% [markdown]
# **Cost by structure of $R$** ($N_e = 20$, jit-compiled, best of 3 on a shared machine):
# a diagonal $R$ is whitened elementwise ($O(N_e^2 N_y)$); a dense (here Toeplitz) $R$ needs
# one $O(N_y^3)$ Cholesky and triangular solves for the whitening, then the same small
# solve; the textbook formula inverts the $N_y \times N_y$ matrix $C^{HH} + R$, also
# $O(N_y^3)$. A Toeplitz $R$ has no cheaper route in filterax yet (no Toeplitz operator: it is
# handled as dense), so the two dense rows are of the same order.


# %%
def best_ms(fn, *args):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


n_big = 1000
Xb = jax.random.normal(jax.random.key(1), (N_E, n_big))
Yb = Xb[:, : n_big // 2]
rb = jnp.full(n_big // 2, 0.5)
lag_b = np.abs(np.arange(n_big // 2)[:, None] - np.arange(n_big // 2)[None, :])
Rb = jnp.asarray(0.5 * 0.6**lag_b)
gain = jax.jit(fxp.kalman_gain)
textbook = jax.jit(
    lambda X, Y, R: (
        fxp.cross_covariance(X, Y) @ jnp.linalg.inv(fxp.ensemble_covariance(Y, dense=True) + R)
    )
)
table = {
    "diagonal R, kalman_gain": best_ms(gain, Xb, Yb, rb),
    "dense (Toeplitz) R, kalman_gain": best_ms(gain, Xb, Yb, fxp.dense_noise(Rb)),
    "dense R, textbook inverse": best_ms(textbook, Xb, Yb, Rb),
}
assert close(gain(Xb, Yb, fxp.dense_noise(Rb)), textbook(Xb, Yb, Rb), 1e-8)
print(f"N_x = {n_big}, N_y = {n_big // 2}, N_e = {N_E}")
for name, ms in table.items():
    print(f"  {name:34s} {ms:9.2f} ms")
# only the robust ordering is asserted (shared machine): the diagonal path is the cheapest
assert table["diagonal R, kalman_gain"] < table["dense R, textbook inverse"]

# %% [markdown]
# ## 1.5 Innovation covariance and structural dispatch
#
# $$S = C^{HH} + R, \qquad v = y - \overline{H(X)}.$$
#
# `innovation_covariance(Y, R)` returns $S$ as a lineax operator whose type follows $R$:
# a low-rank update over a diagonal $R$ stays a `LowRankUpdate` (the ensemble factor with
# $N_e$ columns next to the diagonal), a low-rank-plus-diagonal $R$ (e.g. a few correlated
# error modes) appends its factor, and a dense $R$ gives a dense, PSD-tagged matrix operator.
# Solves and log-determinants then take the cheap route where one exists (1.3).

# %%
U_r = 0.3 * jax.random.normal(jax.random.key(2), (n_y, 3))
structures = {
    "diagonal": r,
    "low rank + diagonal": fxp.low_rank_noise(U_r, r),
    "dense (Toeplitz)": fxp.dense_noise(R_toeplitz),
}
print(f"{'R':22s} {'S operator':24s} {'factor columns':>15s}")
for name, R in structures.items():
    S = fxp.innovation_covariance(Y, R)
    R_dense = fxp.as_noise_operator(R, n_y).as_matrix()
    assert close(S.as_matrix(), C_hh + R_dense, 1e-12)  # exact: the same sum
    cols = S.factor.shape[1] if isinstance(S, fxp.LowRankUpdate) else "-"
    print(f"{name:22s} {type(S).__name__:24s} {cols!s:>15s}")
S_diag = fxp.innovation_covariance(Y, r)
assert isinstance(S_diag, fxp.LowRankUpdate) and S_diag.factor.shape[1] == N_E
S_dense_op = fxp.innovation_covariance(Y, structures["dense (Toeplitz)"])
assert isinstance(S_dense_op, lx.MatrixLinearOperator) and lx.is_positive_semidefinite(S_dense_op)

# %% [markdown]
# ## 1.6 Predictive log-likelihood as the universal training signal
#
# $$\log p(y \mid \text{forecast}) = -\tfrac{1}{2}\bigl[N_y \log 2\pi + \log|S|
# + v^\top S^{-1} v\bigr].$$
#
# `log_likelihood(Y, y, R)` evaluates it with the determinant lemma and Woodbury;
# `innovation_statistics` packages $v$, $S$, $v^\top S^{-1} v$, $\log|S|$, the number of
# observed entries and $\log p$ as an `InnovationStatistics` for diagnostics (Part 7). Checked
# against a dense multivariate normal, for a missing (NaN) entry, and for its gradient,
# $\nabla_y \log p = -S^{-1}v$:

# %%
x_true = jax.random.normal(jax.random.key(3), (N_X,)).cumsum() / 3
y = H @ x_true + jnp.sqrt(r) * jax.random.normal(jax.random.key(4), (n_y,))
S_dense = np.asarray(C_hh) + np.diag(np.asarray(r))
v = y - Y.mean(axis=0)
ref = jax.scipy.stats.multivariate_normal.logpdf(y, Y.mean(axis=0), S_dense)
stats = fxp.innovation_statistics(Y, y, r)
assert close(fxp.log_likelihood(Y, y, r), ref, 1e-10)
assert close(stats.log_likelihood, ref, 1e-10)
assert close(stats.mahalanobis, v @ np.linalg.solve(S_dense, v), 1e-10)
assert close(stats.logdet, np.linalg.slogdet(S_dense)[1], 1e-10)
grad_y = jax.grad(fxp.log_likelihood, argnums=1)(Y, y, r)
assert close(grad_y, -np.linalg.solve(S_dense, v), 1e-10)

# a missing entry: exactly the likelihood of the observed subset, gradient zero there
y_miss = y.at[3].set(jnp.nan)
keep = np.arange(n_y) != 3
ref_sub = jax.scipy.stats.multivariate_normal.logpdf(
    y[keep], Y.mean(axis=0)[keep], S_dense[np.ix_(keep, keep)]
)
assert close(fxp.log_likelihood(Y, y_miss, r), ref_sub, 1e-10)
g_miss = jax.grad(fxp.log_likelihood, argnums=1)(Y, y_miss, r)
assert np.all(np.isfinite(g_miss)) and g_miss[3] == 0.0
print(
    f"log p = {float(stats.log_likelihood):.4f}, v'S^-1 v / n_obs = "
    f"{float(stats.mahalanobis / stats.n_obs):.3f}, n_obs = {int(stats.n_obs)}"
)

# %% [markdown]
# As a training signal: the log-likelihood of the observations, as a function of an assumed
# observation-error variance $\sigma^2$, averaged over independent forecast ensembles and
# observations generated with the true $\sigma^2 = 0.5$, peaks near the truth (the
# ensemble's own sampling error biases it a little). Its gradient in $\sigma^2$ is what
# Part 8 follows.

# %%
TRUE_VAR = 0.5
n_small = 10
P_small = np.exp(-0.5 * (lag[:n_small, :n_small] / 2.0) ** 2) + 1e-6 * np.eye(n_small)
chol_s = jnp.asarray(np.linalg.cholesky(P_small))


def one_draw(key, var):
    k1, k2, k3 = jax.random.split(key, 3)
    ens = jax.random.normal(k1, (N_E, n_small)) @ chol_s.T
    truth = chol_s @ jax.random.normal(k2, (n_small,))
    obs = truth + jnp.sqrt(TRUE_VAR) * jax.random.normal(k3, (n_small,))
    return fxp.log_likelihood(ens, obs, var * jnp.ones(n_small))


keys = jax.random.split(jax.random.key(5), N_PROFILE)
variances = jnp.linspace(0.1, 1.5, 29)


def mean_loglik(var):
    return jax.vmap(one_draw, in_axes=(0, None))(keys, var).mean()


profile, dprofile = jax.jit(jax.vmap(jax.value_and_grad(mean_loglik)))(variances)
best = float(variances[jnp.argmax(profile)])
# 100 draws of 10 observations: the maximiser scatters by ~0.1 around the truth
assert abs(best - TRUE_VAR) < 0.2, best
# the gradient (jax.grad through log_likelihood) points towards the maximum
assert dprofile[variances < best - 0.1].min() > 0 > dprofile[variances > best + 0.1].max()

fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
ax.plot(variances, profile, "C0-", label="mean log-likelihood")
ax.axvline(TRUE_VAR, color="k", ls=":", label=r"true $\sigma^2$")
ax.axvline(best, color="C0", ls="--", label=f"maximiser {best:.2f}")
ax.set_xlabel(r"assumed observation-error variance $\sigma^2$")
ax.set_ylabel(r"$\log p(y \mid$ forecast$)$")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 1.7 Perturbed observations and R-aware sampling
#
# The stochastic EnKF assimilates a perturbed copy of the observation per member,
#
# $$y^{(j)} = y + \epsilon^{(j)}, \qquad \epsilon^{(j)} \sim \mathcal N(0, R),$$
#
# drawn as $\epsilon^{(j)} = L z^{(j)}$ with a square root $LL^\top = R$ chosen by structure:
# for a diagonal $R$ the elementwise fast path $\epsilon^{(j)}_k = z^{(j)}_k \sqrt{R_{kk}}$,
# for a dense $R$ its Cholesky factor. The same key gives bit-identical draws, and
# `center=True` removes the sample mean (DAPPER's `mean0`).

# %%
y2 = jnp.zeros(2)
R_diag = jnp.array([1.0, 0.25])
R_corr = jnp.array([[1.0, 0.8], [0.8, 1.0]])
key = jax.random.key(6)
eps_diag = fxp.perturbed_observations(key, y2, R_diag, N_PERT)
eps_corr = fxp.perturbed_observations(key, y2, fxp.dense_noise(R_corr), N_PERT)
again = fxp.perturbed_observations(key, y2, fxp.dense_noise(R_corr), N_PERT)
assert np.array_equal(np.asarray(eps_corr), np.asarray(again))  # same key, same bits
centred = fxp.perturbed_observations(key, y2, fxp.dense_noise(R_corr), N_E, center=True)
assert close(centred.mean(axis=0), 0.0, 1e-12)
# Monte Carlo: entries of a sample covariance of 20 000 draws scatter by ~sqrt(2/N) ~ 0.01
for eps, R in ((eps_diag, jnp.diag(R_diag)), (eps_corr, R_corr)):
    assert np.abs(np.cov(np.asarray(eps).T) - np.asarray(R)).max() < 0.05
# the diagonal fast path and a dense R with the same diagonal draw the same numbers
eps_dense_diag = fxp.perturbed_observations(key, y2, fxp.dense_noise(jnp.diag(R_diag)), 5)
assert close(eps_dense_diag, eps_diag[:5], 1e-12)
# a missing observation stays missing
assert np.all(np.isnan(fxp.perturbed_observations(key, jnp.array([0.0, jnp.nan]), R_diag, 3)[:, 1]))


# %%
def ellipse(ax, cov, **kw):
    vals, vecs = np.linalg.eigh(np.asarray(cov))
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    ax.add_patch(
        Ellipse((0, 0), 4 * np.sqrt(vals[1]), 4 * np.sqrt(vals[0]), angle=angle, fill=False, **kw)
    )


fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True, constrained_layout=True)
for ax, (title, eps, R, color) in zip(
    axes,
    (
        ("diagonal $R$ (fast path)", eps_diag, jnp.diag(R_diag), "C0"),
        ("dense $R$ (Cholesky)", eps_corr, R_corr, "C1"),
    ),
    strict=True,
):
    ax.plot(eps[:2000, 0], eps[:2000, 1], ".", ms=2, color=color, alpha=0.4, label="draws")
    ellipse(ax, R, color="k", lw=1.5, label=r"$2\sigma$ of $R$")
    ellipse(
        ax,
        np.cov(np.asarray(eps).T),
        color=color,
        ls="--",
        lw=1.5,
        label=r"$2\sigma$ of sample cov.",
    )
    ax.set_title(title)
    ax.set_xlabel(r"$\epsilon_1$")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
axes[0].set_ylabel(r"$\epsilon_2$")
plt.show()
