# %% [markdown]
# # 11.A Structured observation noise: never densify $R$
#
# The ensemble Kalman analysis needs the innovation covariance
#
# $$S = C^{HH} + R,\qquad C^{HH} = A^\top A,\quad A = Y'/\sqrt{N_e - 1},$$
#
# a low-rank update (rank $\le N_e - 1$) of the noise covariance $R$. With $R = L L^\top$
# cheap to factor, the Woodbury identity and the determinant lemma solve with $S$ and take
# its log-determinant in $O(N_e^2 N_y + N_e^3)$ instead of the $O(N_y^3)$ of a dense
# factorisation, and never store an $N_y \times N_y$ matrix. The master list writes this
# with gaussx's structured operators; filterax does it with **lineax** operators and two
# registries in `filterax.primitives` (`noise_whitening`, `mask_noise`), which this page
# uses for a diagonal $R$ (11.1) and, extended in a few lines, for Toeplitz and Kronecker
# $R$ (11.2).

# %%
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp

jax.config.update("jax_enable_x64", True)

N_E = 20  # docs size: members of every example


def dense_free(compiled, n):
    """True when a compiled XLA program holds no (n, n) array anywhere."""
    text = compiled.as_text()
    return f"[{n},{n}]" not in text and f"{n},{n}]" not in text


# %% [markdown]
# ## 11.1 Diagonal $R$: the Woodbury gain, never densified
#
# With $R = D$ diagonal, $L = D^{1/2}$, $W = L^{-1} A^\top$ ($N_y \times N_e$):
#
# $$S^{-1} = L^{-\top}\big(I - W (I_{N_e} + W^\top W)^{-1} W^\top\big) L^{-1},\qquad
# \log|S| = \log|D| + \log|I_{N_e} + W^\top W|,$$
#
# and the gain $K = C^{xH} S^{-1} = B^\top (I + W^\top W)^{-1} W^\top L^{-1}$ only ever
# factorises the $N_e \times N_e$ capacitance matrix. `fxp.innovation_covariance` returns
# $S$ as a `fxp.LowRankUpdate` (a lineax operator); `fxp.WoodburySolver` is the lineax
# solver that keeps it structured. First the algebra, against dense numpy at $N_y = 300$:

# %%
rng = np.random.default_rng(0)
n_y = 300
Y = jnp.asarray(rng.normal(size=(N_E, n_y)))
X = jnp.asarray(rng.normal(size=(N_E, 50)))
r = jnp.asarray(rng.uniform(0.5, 2.0, size=n_y))
R = fxp.diagonal_noise(r)
b = jnp.asarray(rng.normal(size=n_y))

S = fxp.innovation_covariance(Y, R)
print(type(S).__name__, "| stored numbers:", sum(a.size for a in jax.tree.leaves(S)), "vs", n_y**2)
S_dense = np.cov(np.asarray(Y), rowvar=False) + np.diag(np.asarray(r))
x_wood = lx.linear_solve(S, b, solver=fxp.WoodburySolver()).value
K = fxp.kalman_gain(X, Y, R)
K_dense = (
    (np.asarray(X) - np.asarray(X).mean(0)).T
    @ (np.asarray(Y) - np.asarray(Y).mean(0))
    / (N_E - 1)
    @ np.linalg.inv(S_dense)
)
errors = {
    "solve": np.abs(x_wood - np.linalg.solve(S_dense, b)).max(),
    "logdet": abs(float(S.logdet()) - np.linalg.slogdet(S_dense)[1]),
    "gain": np.abs(K - K_dense).max(),
}
print({k: f"{v:.1e}" for k, v in errors.items()})
# the same numbers by two algebras: round-off only (S is O(10), its condition number O(10))
assert isinstance(S, fxp.LowRankUpdate) and all(v < 1e-9 for v in errors.values()), errors

# %% [markdown]
# **Cost.** Wall time of one solve with $S$ by Woodbury and by a dense Cholesky, as $N_y$
# grows (each compiled once; best of 2). The dense route stops at $N_y = 1000$: at
# $N_y = 40\,000$ the dense $S$ alone would take 12.8 GB.

# %%


@jax.jit
def woodbury_solve(Y, r, b):
    return fxp.innovation_covariance(Y, fxp.diagonal_noise(r)).solve(b)


@jax.jit
def dense_solve(Y, r, b):
    A = (Y - Y.mean(0)) / jnp.sqrt(N_E - 1.0)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(A.T @ A + jnp.diag(r)), b)


def best_time(f, *args):
    jax.block_until_ready(f(*args))  # compile
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


SIZES = [250, 500, 1000, 4000, 40000]
saved_args = {}
timing = {"Woodbury": {}, "dense Cholesky": {}}
for n in SIZES:
    args = (
        jnp.asarray(rng.normal(size=(N_E, n))),
        jnp.asarray(rng.uniform(0.5, 2, n)),
        jnp.asarray(rng.normal(size=n)),
    )
    timing["Woodbury"][n] = best_time(woodbury_solve, *args)
    saved_args[n] = args
    if n <= 1000:
        timing["dense Cholesky"][n] = best_time(dense_solve, *args)
        gap = np.abs(woodbury_solve(*args) - dense_solve(*args)).max()
        assert gap < 1e-9, (n, gap)
for name, t_n in timing.items():
    print(f"{name:15s}", "  ".join(f"N_y={n}: {1e3 * t:.2f} ms" for n, t in t_n.items()))

# the compiled Woodbury program at N_y = 40 000 holds no N_y x N_y array
big = jax.jit(woodbury_solve).lower(*args).compile()
assert dense_free(big, 40000)
# and the check does see a dense matrix where there is one
assert not dense_free(jax.jit(dense_solve).lower(*saved_args[1000]).compile(), 1000)

fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
for (name, t_n), color in zip(timing.items(), ("C0", "C3"), strict=True):
    ax.loglog(list(t_n), [1e3 * t for t in t_n.values()], "o-", color=color, label=name)
ax.set_xlabel("$N_y$")
ax.set_ylabel("one solve with $S$ (ms)")
ax.set_title(f"$S = C^{{HH}} + R$, diagonal $R$, $N_e$ = {N_E}")
ax.legend()
plt.show()

# %% [markdown]
# The Woodbury route scales linearly in $N_y$ and the dense one cubically; at $N_y = 1000$
# the dense factorisation is already slower by two orders of magnitude. Every filter in
# `filterax.filters` analyses through the same factorisation, so an ETKF analysis with
# $N_y = 40\,000$ diagonal observations compiles without a dense $N_y \times N_y$ array:

# %%
N_BIG = 40000
Xb = jnp.asarray(rng.normal(size=(N_E, N_BIG)))
yb = jnp.asarray(rng.normal(size=N_BIG))
Rb = fxp.diagonal_noise(jnp.full(N_BIG, 0.5))
etkf_big = (
    jax.jit(lambda X, y: ff.ETKF().analysis(None, X, y, fxp.IdentityObs(), Rb).particles)
    .lower(Xb, yb)
    .compile()
)
assert dense_free(etkf_big, N_BIG)
print("ETKF analysis, N_y = 40 000, diagonal R: no dense (N_y, N_y) array in the program")

# %% [markdown]
# ## 11.2 Toeplitz and Kronecker $R$: spatially correlated observation noise
#
# Errors of neighbouring pixels of an image, or of consecutive soundings along a satellite
# track, are correlated. A stationary exponential correlation along a line is a **Toeplitz**
# matrix, and on a grid the separable product of two of them is a **Kronecker** product:
#
# $$R^{(1)}_{ij} = \sigma^2 \rho^{|i - j|},\qquad R = R^{(a)} \otimes R^{(b)} .$$
#
# Neither is diagonal or low rank, so by default filterax treats them as dense (a Cholesky
# of $R$, $O(N_y^3)$). Both have cheap exact square roots: the exponential (AR(1))
# Toeplitz matrix has a *bidiagonal* inverse Cholesky factor,
#
# $$(L^{-1} x)_0 = \frac{x_0}{\sigma},\qquad
# (L^{-1} x)_i = \frac{x_i - \rho\,x_{i-1}}{\sigma\sqrt{1 - \rho^2}},\qquad
# \log|R| = N \log\sigma^2 + (N - 1)\log(1 - \rho^2),$$
#
# and $L = L^{(a)} \otimes L^{(b)}$ is a root of the Kronecker product, applied as
# $L^{-1}\,\mathrm{vec}(X) = \mathrm{vec}\big(L^{(a)\,-1} X L^{(b)\,-\top}\big)$: $O(N_y)$
# for both. The library's extension point is a root class (`fxp.AbstractNoiseRoot`: solve,
# transpose solve, apply, log-determinant) registered for the operator type with
# `fxp.noise_whitening.register`; every filter, gain and likelihood then uses it. The two
# lineax operators and their roots:

# %%


def _along0(x, fn):
    """Apply fn to x viewed as (n, everything else), keeping x's shape."""
    flat = x.reshape(x.shape[0], -1)
    return fn(flat).reshape(x.shape)


class AR1Toeplitz(lx.AbstractLinearOperator):
    """R_ij = variance * rho**|i - j| (stationary exponential correlation), never stored."""

    variance: jax.Array
    rho: jax.Array
    n: int = eqx.field(static=True)

    def mv(self, x):  # O(n): R x = variance * (forward + backward recursions - x)
        def recursion(c, xi):
            c = self.rho * c + xi
            return c, c

        zero = jnp.zeros((), x.dtype)
        forward = jax.lax.scan(recursion, zero, x)[1]
        backward = jax.lax.scan(recursion, zero, x[::-1])[1][::-1]
        return self.variance * (forward + backward - x)

    def as_matrix(self):
        i = jnp.arange(self.n)
        return self.variance * self.rho ** jnp.abs(i[:, None] - i[None, :])

    def transpose(self):
        return self

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.n,), jnp.result_type(self.variance))

    def out_structure(self):
        return self.in_structure()


class Kronecker(lx.AbstractLinearOperator):
    """R = a (x) b for two AR1Toeplitz factors: separable correlation on an n_a x n_b grid."""

    a: AR1Toeplitz
    b: AR1Toeplitz

    def mv(self, x):  # vec(A X B^T) for X the row-major (n_a, n_b) image of x
        X = x.reshape(self.a.n, self.b.n)
        X = jax.vmap(self.a.mv, in_axes=1, out_axes=1)(X)
        return jax.vmap(self.b.mv)(X).reshape(-1)

    def as_matrix(self):
        return jnp.kron(self.a.as_matrix(), self.b.as_matrix())

    def transpose(self):
        return self

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.a.n * self.b.n,), jnp.result_type(self.a.variance))

    def out_structure(self):
        return self.in_structure()


class AR1Root(fxp.AbstractNoiseRoot):
    """L with L L^T = AR1Toeplitz(variance, rho, n); L^{-1} is bidiagonal."""

    variance: jax.Array
    rho: jax.Array
    n: int = eqx.field(static=True)

    @property
    def size(self):
        return self.n

    def _scale(self, dtype):  # diag of the bidiagonal factor: sigma, then sigma sqrt(1-rho^2)
        sigma = jnp.sqrt(self.variance).astype(dtype)
        tail = sigma * jnp.sqrt(1.0 - self.rho**2)
        return jnp.concatenate([sigma[None], jnp.full((self.n - 1,), tail, dtype)])[:, None]

    def solve(self, x):  # L^{-1} x along axis 0
        def f(z):
            prev = jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]])
            return (z - self.rho * prev) / self._scale(z.dtype)

        return _along0(x, f)

    def solve_transpose(self, x):  # L^{-T} x = B^T D^{-1} x, B unit lower bidiagonal
        def f(z):
            z = z / self._scale(z.dtype)
            return z - self.rho * jnp.concatenate([z[1:], jnp.zeros_like(z[:1])])

        return _along0(x, f)

    def mv(self, x):  # L x: the AR(1) recursion y_i = rho y_{i-1} + d_i x_i
        def f(z):
            def step(c, zi):
                c = self.rho * c + zi
                return c, c

            return jax.lax.scan(step, jnp.zeros_like(z[0]), z * self._scale(z.dtype))[1]

        return _along0(x, f)

    def white(self, x):
        return jnp.moveaxis(self.solve(jnp.moveaxis(x, -1, 0)), 0, -1)

    def logdet(self):
        return self.n * jnp.log(self.variance) + (self.n - 1) * jnp.log1p(-(self.rho**2))


class KroneckerRoot(fxp.AbstractNoiseRoot):
    """L = L_a (x) L_b: each operation acts on the two axes of the (n_a, n_b) image."""

    a: AR1Root
    b: AR1Root

    @property
    def size(self):
        return self.a.n * self.b.n

    def _both(self, x, fa, fb):
        X = x.reshape(self.a.n, self.b.n, -1)
        X = fa(X)
        X = jnp.moveaxis(fb(jnp.moveaxis(X, 1, 0)), 0, 1)
        return X.reshape(x.shape)

    def solve(self, x):
        return self._both(x, self.a.solve, self.b.solve)

    def solve_transpose(self, x):
        return self._both(x, self.a.solve_transpose, self.b.solve_transpose)

    def mv(self, x):
        return self._both(x, self.a.mv, self.b.mv)

    def white(self, x):
        return jnp.moveaxis(self.solve(jnp.moveaxis(x, -1, 0)), 0, -1)

    def logdet(self):
        return self.b.n * self.a.logdet() + self.a.n * self.b.logdet()


def _root(op):
    return AR1Root(op.variance, op.rho, op.n)


@fxp.noise_whitening.register(AR1Toeplitz)
def _(op, dtype=None):
    return fxp.Whitening.build(_root(op))


@fxp.noise_whitening.register(Kronecker)
def _(op, dtype=None):
    return fxp.Whitening.build(KroneckerRoot(_root(op.a), _root(op.b)))


# Missing observations would need R restricted to the observed entries, which is no longer
# Toeplitz / Kronecker: refuse them at run time instead of densifying silently.
@fxp.mask_noise.register(AR1Toeplitz)
@fxp.mask_noise.register(Kronecker)
def _(noise, mask):
    return eqx.error_if(noise, ~jnp.all(mask), "this structured R takes no NaN observations")


for op_type in (AR1Toeplitz, Kronecker):  # lineax's structural queries
    lx.is_diagonal.register(op_type)(lambda op: False)
    lx.is_symmetric.register(op_type)(lambda op: True)
    lx.is_positive_semidefinite.register(op_type)(lambda op: True)

# %% [markdown]
# **Checks against the dense matrices** on a 60-point track and a $12 \times 10$ grid: the
# operator's matrix-free product, the whitening $G$ ($G^\top G = R^{-1}$), the
# log-determinant, and a whole ETKF analysis (and its likelihood) with the structured $R$
# against the same analysis with `fxp.dense_noise(R.as_matrix())`.

# %%
track = AR1Toeplitz(jnp.asarray(0.8), jnp.asarray(0.6), 60)
image = Kronecker(
    AR1Toeplitz(jnp.asarray(1.0), jnp.asarray(0.7), 12),
    AR1Toeplitz(jnp.asarray(0.5), jnp.asarray(0.5), 10),
)


@jax.jit
def etkf(X, y, R):
    out = ff.ETKF().analysis(None, X, y, fxp.IdentityObs(), R)
    return out.particles, out.log_likelihood


worst = {}
for name, R_op in (("Toeplitz track", track), ("Kronecker grid", image)):
    n = R_op.in_size()
    R_mat = np.asarray(R_op.as_matrix())
    v = rng.normal(size=n)
    wh = fxp.noise_whitening(R_op)
    G = np.asarray(wh.whiten(jnp.eye(n)))  # rows of I times G^T: G^T itself
    Xn = jnp.asarray(rng.normal(size=(N_E, n)))
    yn = jnp.asarray(rng.normal(size=n))
    parts, loglik = etkf(Xn, yn, R_op)
    parts_d, loglik_d = etkf(Xn, yn, fxp.dense_noise(jnp.asarray(R_mat)))
    worst[name] = {
        "mv": np.abs(np.asarray(R_op.mv(jnp.asarray(v))) - R_mat @ v).max(),
        "G^T G = R^-1": np.abs(G @ G.T - np.linalg.inv(R_mat)).max(),
        "logdet": abs(float(wh.logdet()) - np.linalg.slogdet(R_mat)[1]),
        "ETKF members": float(jnp.abs(parts - parts_d).max()),
        "log-likelihood": abs(float(loglik - loglik_d)),
    }
    print(f"{name:15s}", {k: f"{e:.1e}" for k, e in worst[name].items()})
    # exact algebra both ways: float64 round-off on O(1)-O(100) numbers (observed ~1e-13)
    assert all(e < 1e-8 for e in worst[name].values()), worst[name]

# %% [markdown]
# **At scale.** A $200 \times 200$ image, $N_y = 40\,000$ correlated observations: the dense
# $R$ would take 12.8 GB and its Cholesky $\sim 2 \times 10^{13}$ flops. With the Kronecker
# root the ETKF analysis compiles with no $N_y \times N_y$ array, and a correlated noise
# field is drawn as $L z$ in $O(N_y)$:

# %%
grid_op = Kronecker(
    AR1Toeplitz(jnp.asarray(1.0), jnp.asarray(0.9), 200),
    AR1Toeplitz(jnp.asarray(1.0), jnp.asarray(0.9), 200),
)
n_big = grid_op.in_size()
compiled = (
    jax.jit(lambda X, y: etkf(X, y, grid_op))
    .lower(jnp.zeros((N_E, n_big)), jnp.zeros(n_big))
    .compile()
)
assert dense_free(compiled, n_big)
root = fxp.noise_whitening(grid_op).root
field = np.asarray(root.mv(jax.random.normal(jax.random.key(0), (n_big,)))).reshape(200, 200)
print(f"ETKF analysis with Kronecker R, N_y = {n_big}: no dense (N_y, N_y) array in the program")

fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
axes[0].imshow(np.asarray(track.as_matrix()), cmap="magma")
axes[0].set_title("Toeplitz $R$ (60-point track)")
axes[0].set_xlabel("observation $j$")
axes[0].set_ylabel("observation $i$")
axes[1].imshow(np.asarray(image.as_matrix()), cmap="magma")
axes[1].set_title(r"Kronecker $R^{(a)} \otimes R^{(b)}$ (12 x 10 grid)")
axes[1].set_xlabel("observation $j$")
axes[1].set_ylabel("observation $i$")
im = axes[2].imshow(field, cmap="RdBu_r")
axes[2].set_title(r"one draw $L z$ on the 200 x 200 grid ($\rho$ = 0.9)")
axes[2].set_xlabel("pixel column")
axes[2].set_ylabel("pixel row")
fig.colorbar(im, ax=axes[2])
plt.show()

# %% [markdown]
# **What to take away.**
#
# | $R$ structure | how to pass it | cost of the analysis | stored |
# |---|---|---|---|
# | diagonal | `fxp.diagonal_noise(r)` | $O(N_e^2 N_y + N_e^3)$ | $N_y$ |
# | diagonal + rank $k$ | `fxp.low_rank_noise(U, d)` | $O((N_e + k)^2 N_y)$ | $(k + 1) N_y$ |
# | Toeplitz / Kronecker | lineax operator + registered root | $O(N_e^2 N_y + N_e^3)$ | 3–6 scalars|
# | dense | `fxp.dense_noise(C)` | $O(N_y^3)$ once | $N_y^2$ |
#
# The registered structure keeps missing observations out (the `mask_noise` rule above
# raises on NaN), and `LETKF` / `EnSRF_Serial` still require a diagonal $R$ (they localise
# or process observations one by one).
