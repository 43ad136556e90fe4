r"""Square-root transform algebra shared by the deterministic ensemble filters.

Every deterministic square-root filter ends in the same place: an ``N_e x N_e`` transform
``T`` with ``T T^T = (I + S S^T)^{-1}`` applied to the forecast anomalies, where
``S = Y' R^{-1/2 T} / sqrt(N_e - 1)`` are the whitened, normalised observed anomalies. The
symmetric choice ``T = (I + S S^T)^{-1/2}`` (Hunt et al. 2007) is a matrix function of a
symmetric positive-semidefinite Gram matrix, and computing it by `jnp.linalg.eigh` breaks
reverse-mode autodiff: the eigenvector derivative contains ``1 / (lambda_i - lambda_j)``, and
``S S^T`` *always* has repeated eigenvalues (``0`` with multiplicity ``N_e - rank(S)`` as soon as
``N_y < N_e - 1``, the ensemble is rank deficient, or observations are missing).

**The gradient-safe design used here.** A matrix function ``F(M) = U f(Lambda) U^T`` has a
perfectly regular Fréchet derivative even at repeated eigenvalues (Daleckii & Krein 1965):

$$dF = U\,\big(D \circ (U^\top dM\, U)\big)\,U^\top, \qquad
D_{ij} = \frac{f(\lambda_i) - f(\lambda_j)}{\lambda_i - \lambda_j}\ (\lambda_i \ne \lambda_j),
\quad D_{ii} = f'(\lambda_i).$$

Only the *eigenvalue divided differences* appear, never ``1 / (lambda_i - lambda_j)`` on its
own. `symmetric_matrix_function` is a `jax.custom_jvp` that returns exactly this derivative,
and for the two functions the filters need the divided differences have closed forms with no
cancellation (write ``a = sqrt(1 + lambda)``):

- ``f(l) = (1 + l)^{-1/2}``: ``D_ij = -1 / (a_i a_j (a_i + a_j))``;
- ``g(l) = ((1 + l)^{-1/2} - 1) / l = -1 / (a (1 + a))`` (the "push-through" function):
  ``D_ij = (1 + a_i + a_j) / ((a_i + a_j) a_i (1 + a_i) a_j (1 + a_j))``.

Both are smooth and bounded for ``l >= 0``, so the JVP (and by transposition the VJP) is finite
and exact for any PSD input, degenerate or not. The **rank-N_y spectrum trick** then chooses the
smaller Gram matrix: for ``N_y < N_e``,

$$(I_{N_e} + S S^\top)^{-1/2} = I_{N_e} + S\, g(S^\top S)\, S^\top,$$

an ``N_y x N_y`` eigenproblem (identity valid for any ``S``: with the thin SVD ``S = U s V^T``
both sides equal ``I + U [(1 + s^2)^{-1/2} - 1] U^T``), and for ``N_y >= N_e`` the
``N_e x N_e`` matrix ``f(S S^T)`` directly. First derivatives are exact; second derivatives
differentiate through `eigh` inside the JVP rule and are not guaranteed at repeated eigenvalues.

Alternatives considered: Newton–Schulz / Denman–Beavers iterations for the *derivative*
(iteration count depends on the conditioning, and need an unrolled loop to differentiate; the
value of ``f`` may still be computed by a coupled Newton–Schulz loop, ``method="newton"``,
with the derivative from the rule above), and a
Cholesky-based root (gradient-safe but not symmetric, so it is not Hunt's ETKF and it rotates
the ensemble).

**References:** Daleckii & Krein (1965), *Integration and differentiation of functions of
Hermitian operators*; Higham (2008), *Functions of Matrices*, Thm 3.11; Hunt, Kostelich &
Szunyogh (2007), *Physica D* 230; Nerger et al. (2012), *MWR* 140; Livings, Dance & Nichols
(2008), *Physica D* 237.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

_HIGHEST = lax.Precision.HIGHEST

SpectralKind = Literal["inv_sqrt", "inv_sqrt_push"]


def matmul(a: Array, b: Array) -> Array:
    # Explicit precision: on GPUs the default may be TF32, far too coarse for covariances.
    return jnp.matmul(a, b, precision=_HIGHEST)


def _values(kind: str, lam: Array) -> Array:
    # f and g are analytic on lambda > -1; the clamp only keeps round-off in a near-singular
    # Gram matrix from ever reaching the branch point (inputs are PSD, so it is inactive).
    a = jnp.sqrt(1.0 + jnp.maximum(lam, -0.5))
    if kind == "inv_sqrt":
        return 1.0 / a
    if kind == "inv_sqrt_push":
        return -1.0 / (a * (1.0 + a))
    raise ValueError(f"unknown spectral function kind {kind!r}.")


def _divided_differences(kind: str, lam: Array) -> Array:
    # f and g are analytic on lambda > -1; the clamp only keeps round-off in a near-singular
    # Gram matrix from ever reaching the branch point (inputs are PSD, so it is inactive).
    a = jnp.sqrt(1.0 + jnp.maximum(lam, -0.5))
    ai, aj = a[:, None], a[None, :]
    if kind == "inv_sqrt":
        return -1.0 / (ai * aj * (ai + aj))
    if kind == "inv_sqrt_push":
        return (1.0 + ai + aj) / ((ai + aj) * ai * (1.0 + ai) * aj * (1.0 + aj))
    raise ValueError(f"unknown spectral function kind {kind!r}.")


def _symmetrise(m: Array) -> Array:
    return 0.5 * (m + m.T)


def _newton_schulz_inv_sqrt(m: Array) -> Array:
    # Coupled Newton-Schulz iteration (Higham 2008, eq. (6.35), stable unlike the uncoupled
    # one for condition numbers > ~2.4) for A^{1/2}, A^{-1/2} with A = alpha^2 (I + M):
    #   P = (3I - Z Y)/2,  Y <- Y P,  Z <- P Z,  Y_0 = A, Z_0 = I.
    # With b = ||M||_F >= lambda_max(M) (M is PSD) and alpha^2 = 2 / (2 + b) the spectrum of A
    # lies in [2/(2+b), 2(1+b)/(2+b)], inside (0, 2), where the iteration converges (any b;
    # quadratically once ||I - Z Y|| < 1; about log_{2.25}(b) + 4 steps). Stop once
    # max|I - Z Y| <= sqrt(eps) and take one last Z-step: error ~ 0.75 (sqrt(eps))^2 < eps.
    # Three batched matmuls a step: for small matrices far cheaper on CPU than LAPACK syevd,
    # whose per-matrix cost dominates batched `eigh` (LETKF: one N_e x N_e matrix per point).
    n = m.shape[-1]
    dtype = m.dtype
    eye = jnp.eye(n, dtype=dtype)
    m = _symmetrise(m)
    b = jnp.sqrt(jnp.sum(m * m))
    alpha2 = 2.0 / (2.0 + b)
    a = alpha2 * (eye + m)
    stop = math.sqrt(float(jnp.finfo(dtype).eps))

    def error(w: Array) -> Array:
        return jnp.max(jnp.abs(w - eye))

    def cond(state):
        _, _, w, k = state
        # NaN input: the comparison is False and the loop ends (NaN propagates to the output).
        return (error(w) > stop) & (k < _NEWTON_MAX_STEPS)

    def body(state):
        y, z, w, k = state
        p = 1.5 * eye - 0.5 * w
        y, z = matmul(y, p), matmul(p, z)
        return y, z, matmul(z, y), k + 1

    _, z, w, _ = lax.while_loop(cond, body, (a, eye, a, jnp.zeros((), jnp.int32)))
    z = matmul(1.5 * eye - 0.5 * w, z)
    return jnp.sqrt(alpha2) * _symmetrise(z)


# Enough for b up to ~1e20 (the smallest eigenvalue of A grows by ~2.25 a step).
_NEWTON_MAX_STEPS = 80

SpectralMethod = Literal["eigh", "newton"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _spectral(kind: str, method: str, m: Array) -> Array:
    if method == "newton":
        if kind != "inv_sqrt":
            raise ValueError(f"method='newton' supports kind='inv_sqrt' only; got {kind!r}.")
        return _newton_schulz_inv_sqrt(m)
    lam, u = jnp.linalg.eigh(_symmetrise(m), symmetrize_input=False)
    return matmul(u * _values(kind, lam)[None, :], u.T)


@_spectral.defjvp
def _spectral_jvp(kind: str, method: str, primals: tuple[Array], tangents: tuple[Array]):
    # Whatever computed the primal, the derivative is Daleckii-Krein's from one eigh: the
    # Newton-Schulz loop (a while_loop) is never differentiated, so it is gradient-safe.
    del method
    (m,), (dm,) = primals, tangents
    lam, u = jnp.linalg.eigh(_symmetrise(m), symmetrize_input=False)
    out = matmul(u * _values(kind, lam)[None, :], u.T)
    inner = matmul(u.T, matmul(_symmetrise(dm), u))
    dout = matmul(u, matmul(_divided_differences(kind, lam) * inner, u.T))
    return out, dout


def symmetric_matrix_function(
    m: Float[Array, "n n"], kind: SpectralKind = "inv_sqrt", method: SpectralMethod = "eigh"
) -> Float[Array, "n n"]:
    r"""A gradient-safe function of a symmetric positive-semidefinite matrix.

    $$F(M) = U f(\Lambda) U^\top, \quad M = U \Lambda U^\top,$$

    with ``f(l) = (1 + l)^{-1/2}`` (`kind="inv_sqrt"`) or
    ``g(l) = ((1 + l)^{-1/2} - 1) / l`` (`kind="inv_sqrt_push"`, continuous at ``l = 0``
    where ``g = -1/2``). The derivative is the Daleckii–Krein formula with closed-form divided
    differences (see the module docstring), so it is finite and exact even when ``M`` has
    repeated eigenvalues; a plain `eigh` gives NaN there.

    **Arguments:**

    - `m`: a symmetric PSD matrix (it is symmetrised; the functions are analytic for
        eigenvalues > -1, so round-off below zero is harmless).
    - `kind`: which function (static).
    - `method`: how the value is computed (static): ``"eigh"`` (default), or ``"newton"``
        (``kind="inv_sqrt"`` only): a coupled Newton–Schulz iteration run to round-off
        (``lax.while_loop``, three matmuls a step, about ``log(||M||) + 4`` steps), much faster
        than a batched `eigh` of many small matrices on CPU. Derivatives are the same
        eigh-based Daleckii–Krein JVP for both methods (the loop is never differentiated).

    **Returns:** ``F(M)``, same shape.

    **Reference:** Daleckii & Krein (1965); Higham (2008), *Functions of Matrices*, Thm 3.11.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.filters._transforms import symmetric_matrix_function

        m = jnp.zeros((3, 3))  # triple eigenvalue 0: eigh's own gradient is NaN here
        jax.grad(lambda t: symmetric_matrix_function(t * m + t * jnp.eye(3)).sum())(1.0)
        ```
    """
    return _spectral(kind, method, m)


def sqrt_transform(S: Float[Array, "N_e m"]) -> Float[Array, "N_e N_e"]:
    r"""The symmetric square-root transform ``T = (I + S S^T)^{-1/2}`` by the rank-N_y trick.

    $$T = \begin{cases} I + S\, g(S^\top S)\, S^\top & m < N_e \\
    f(S S^\top) & m \ge N_e \end{cases}$$

    with ``f``, ``g`` as in `symmetric_matrix_function`. Eigen-work is on the smaller of the
    two Gram matrices, ``min(m, N_e)^3``, and gradients are finite at repeated singular values.

    **Arguments:**

    - `S`: whitened normalised observed anomalies, shape ``(N_e, m)``.

    **Returns:** the symmetric ``(N_e, N_e)`` transform. If the rows of ``S`` sum to zero
    (anomalies) then ``T 1 = 1``, so ``T`` preserves the ensemble mean.

    **Reference:** Hunt, Kostelich & Szunyogh (2007), eq. (24); DAPPER ``EnKF_analysis``
    (``upd_a="Sqrt"``, ``'svd'`` branch): ``T = (V * d**(-0.5)) @ V.T * sqrt(N1)``.
    """
    n_e, m = S.shape
    if m < n_e:
        core = symmetric_matrix_function(matmul(S.T, S), "inv_sqrt_push")
        return jnp.eye(n_e, dtype=S.dtype) + matmul(S, matmul(core, S.T))
    return symmetric_matrix_function(matmul(S, S.T), "inv_sqrt")


def apply_transform(
    mean: Float[Array, " N_x"],
    anomalies: Float[Array, "N_e N_x"],
    weights: Float[Array, " N_e"],
    transform: Float[Array, "N_e N_e"],
) -> Float[Array, "N_e N_x"]:
    r"""Assemble an analysis ensemble from mean weights and an anomaly transform.

    $$X^a = \mathbf 1 (\bar x + X'^\top w / \sqrt{N_e - 1})^\top + T X'.$$

    **Arguments:**

    - `mean`: forecast mean ``(N_x,)``; `anomalies`: unnormalised forecast anomalies ``X'``.
    - `weights`: mean-update weights ``w`` in normalised ensemble space.
    - `transform`: the anomaly transform ``T``.

    **Returns:** the ``(N_e, N_x)`` analysis ensemble.

    **Reference:** DAPPER ``EnKF_analysis``: ``E = mu + w @ A + T @ A``.
    """
    n_e = anomalies.shape[0]
    mean_a = mean + matmul(weights, anomalies) / math.sqrt(n_e - 1)
    return mean_a[None, :] + matmul(transform, anomalies)


def full_transform(
    weights: Float[Array, " N_e"], transform: Float[Array, "N_e N_e"]
) -> Float[Array, "N_e N_e"]:
    r"""The right-acting ensemble transform ``E`` with ``X^a = E X^f`` (rows are members).

    $$E = \tfrac1{N_e}\mathbf 1\mathbf 1^\top
    + \big(T + \mathbf 1 w^\top/\sqrt{N_e-1}\big)\,\Pi, \qquad \Pi = I - \tfrac1{N_e}\mathbf 1
    \mathbf 1^\top.$$

    Smoothers apply the same ``E`` to lagged ensembles (the EnKS / "ensemble transform" view).
    """
    n_e = transform.shape[0]
    dtype = transform.dtype
    ones = jnp.full((n_e, n_e), 1.0 / n_e, dtype=dtype)
    centring = jnp.eye(n_e, dtype=dtype) - ones
    per_member = transform + jnp.ones((n_e, 1), dtype) * weights[None, :] / math.sqrt(n_e - 1)
    return ones + matmul(per_member, centring)


def mean_preserving_basis(n: int, dtype) -> Float[Array, "n n_minus_1"]:
    r"""Nerger's projection ``Omega``: ``n - 1`` orthonormal columns orthogonal to ``1``.

    $$\Omega_{ij} = \delta_{ij} - \frac{1}{n}\frac{1}{1/\sqrt n + 1}\ (i < n), \qquad
    \Omega_{nj} = -\frac1{\sqrt n}.$$

    It is the Householder reflection that maps ``e_n`` to ``-1/sqrt(n)`` with its last column
    dropped, so ``Omega^T Omega = I_{n-1}``, ``Omega^T 1 = 0`` and
    ``Omega Omega^T = I - 1 1^T / n``.

    **Reference:** Nerger, Janjić, Schröter & Hiller (2012), *MWR* 140, eq. (10).
    """
    c = 1.0 / (n * (1.0 / math.sqrt(n) + 1.0))
    top = jnp.eye(n - 1, dtype=dtype) - c
    bottom = jnp.full((1, n - 1), -1.0 / math.sqrt(n), dtype=dtype)
    return jnp.concatenate([top, bottom], axis=0)


def random_mean_preserving_rotation(key: PRNGKeyArray, n: int, dtype) -> Float[Array, "n n"]:
    r"""A Haar-random orthogonal ``n x n`` matrix ``Theta`` with ``Theta 1 = 1``.

    $$\Theta = \tfrac1n \mathbf 1 \mathbf 1^\top + \Omega\, Q\, \Omega^\top, \qquad
    Q \sim \mathrm{Haar}(O(n-1)).$$

    **Reference:** Livings, Dance & Nichols (2008); DAPPER ``genOG_1`` (``V @ block_diag(1, Q)
    @ V.T`` with ``V`` a basis whose first vector is ``1/sqrt(n)``).
    """
    omega = mean_preserving_basis(n, dtype)
    q = jax.random.orthogonal(key, n - 1, dtype=dtype)
    return jnp.full((n, n), 1.0 / n, dtype=dtype) + matmul(omega, matmul(q, omega.T))


class TransformInfo(eqx.Module):
    r"""Diagnostics returned (as ``Analysis.info``) by every deterministic square-root filter.

    **Fields:**

    - `weights`: the mean-update weights ``w`` (``x^a = x^f + X'^T w / sqrt(N_e - 1)``).
    - `transform`: the anomaly transform ``T`` (``X'^a = T X'``), ``(N_e, N_e)``.
    - `ensemble_transform`: ``E`` with ``X^a = E X^f`` (see `full_transform`); smoothers apply
        it to lagged ensembles.
    - `innovation`: ``d = y - mean H(X^f)`` (0 at missing entries).
    - `n_obs`: the number of observed (non-NaN) entries.
    """

    weights: Float[Array, " N_e"]
    transform: Float[Array, "N_e N_e"]
    ensemble_transform: Float[Array, "N_e N_e"]
    innovation: Float[Array, " N_y"]
    n_obs: Array
