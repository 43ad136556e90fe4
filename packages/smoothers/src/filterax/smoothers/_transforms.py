r"""Ensemble-space linear algebra shared by the sequential smoothers.

Three pieces, all acting on ``N_e x N_e`` matrices only (nothing ``N_x x N_x`` is formed):

- `ensemble_transform`: the right-acting ``N_e x N_e`` matrix ``W`` of one filter analysis,
  ``X^a = W X^f``, extracted *exactly* by running the filter's own ``analysis`` on the
  augmented forecast ``[X^f, I_{N_e}]`` (the identity columns are carried along like extra
  state components that are never observed, so the analysis of the augmented ensemble is
  ``[W X^f, W]``).
- `psd_pinv`: the pseudo-inverse of a symmetric positive-semidefinite Gram matrix with a
  relative eigenvalue threshold, and a fixed-rank derivative that stays finite at repeated
  eigenvalues.
- `psd_sqrt`: the symmetric square root of a PSD matrix, with the Daleckii–Krein derivative
  (finite at repeated eigenvalues, see `filterax.filters._transforms`).

**Why custom derivatives.** Both matrix functions are ``F(M) = U f(\Lambda) U^T`` of an
``eigh``. Differentiating ``eigh`` directly divides by eigenvalue gaps, and the Gram matrices
of ensemble anomalies *always* have repeated eigenvalues (the eigenvalue ``0`` of the constant
vector ``1``, and ``0`` with multiplicity ``N_e - 1 - N_x`` when ``N_e > N_x + 1``). The
Fréchet derivative of ``F`` is

$$dF = U\,\big(D \circ (U^\top dM\, U)\big)\,U^\top,\qquad
D_{ij} = \frac{f(\lambda_i) - f(\lambda_j)}{\lambda_i - \lambda_j},\ D_{ii} = f'(\lambda_i),$$

and only these divided differences appear; they have closed forms below.

**References:** Daleckii & Krein (1965); Higham (2008), *Functions of Matrices*, Thm 3.11;
Golub & Pereyra (1973), *SIAM J. Numer. Anal.* 10 (derivative of a fixed-rank
pseudo-inverse).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["default_rcond", "ensemble_transform", "matmul", "psd_pinv", "psd_sqrt"]

_HIGHEST = jax.lax.Precision.HIGHEST


def matmul(a: Array, b: Array) -> Array:
    # Explicit precision: on GPUs the default may be TF32, far too coarse for covariances.
    return jnp.matmul(a, b, precision=_HIGHEST)


def _symmetrise(m: Array) -> Array:
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def default_rcond(n: int, dtype: Any) -> float:
    """The default relative eigenvalue threshold of `psd_pinv`: ``10 n eps(dtype)``.

    The eigenvalues of a Gram matrix ``F F^T`` computed in floating point carry an absolute
    error of about ``n eps lambda_max``, so eigenvalues below this are indistinguishable from
    zero (in singular values of ``F``: below ``sqrt(10 n eps) sigma_max``, ~1e-7 relative in
    float64 for ``n = 10``).
    """
    return 10.0 * n * float(np.finfo(jnp.dtype(dtype)).eps)


def _pinv_parts(m: Array, rcond: float) -> tuple[Array, Array, Array]:
    lam, u = jnp.linalg.eigh(_symmetrise(m), symmetrize_input=False)
    threshold = rcond * jnp.max(lam)
    keep = lam > threshold
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return u, keep, inv


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _pinv(m: Array, rcond: float) -> Array:
    u, _, inv = _pinv_parts(m, rcond)
    return matmul(u * inv[None, :], u.T)


@_pinv.defjvp
def _pinv_jvp(rcond: float, primals: tuple[Array], tangents: tuple[Array]):
    (m,), (dm,) = primals, tangents
    u, keep, inv = _pinv_parts(m, rcond)
    out = matmul(u * inv[None, :], u.T)
    # Fixed-rank divided differences of f(l) = 1/l on the kept eigenvalues, 0 on the rest:
    # kept-kept -1/(l_i l_j); kept-null 1/l_i^2 (null eigenvalues count as exactly 0);
    # null-null 0. These are the eigenbasis entries of Golub & Pereyra's
    # dA^+ = -A^+ dA A^+ + (A^+)^2 dA P_N + P_N dA (A^+)^2.
    ki, kj = keep[:, None], keep[None, :]
    fi, fj = inv[:, None], inv[None, :]
    both = ki & kj
    d = jnp.where(both, -fi * fj, jnp.where(ki, fi * fi, jnp.where(kj, fj * fj, 0.0)))
    inner = matmul(u.T, matmul(_symmetrise(dm), u))
    return out, matmul(u, matmul(d * inner, u.T))


def psd_pinv(m: Float[Array, "n n"], rcond: float | None = None) -> Float[Array, "n n"]:
    r"""Pseudo-inverse of a symmetric PSD matrix with a relative eigenvalue threshold.

    $$M^+ = U\,\mathrm{diag}\big(\lambda_i^{-1}\,[\lambda_i > \text{rcond}\,\lambda_{\max}]\big)\,
    U^\top.$$

    The derivative is that of a pseudo-inverse of fixed rank (Golub & Pereyra 1973), finite
    at repeated eigenvalues, so smoothers built on it can be differentiated.

    **Arguments:**

    - `m`: symmetric PSD ``(n, n)`` (symmetrised here).
    - `rcond`: relative threshold on the eigenvalues (static); ``None`` means
      `default_rcond` ``(n, dtype)``.

    **Returns:** ``M^+``, ``(n, n)``. A zero matrix gives zero.
    """
    if rcond is None:
        rcond = default_rcond(m.shape[-1], m.dtype)
    return _pinv(m, float(rcond))


def _sqrt_parts(m: Array) -> tuple[Array, Array, Array]:
    lam, u = jnp.linalg.eigh(_symmetrise(m), symmetrize_input=False)
    root = jnp.sqrt(jnp.maximum(lam, 0.0))
    # A floor for the derivative only: d sqrt(l) = 1/(2 sqrt(l)) is unbounded at l = 0.
    floor = 1e-12 * jnp.maximum(jnp.max(lam), jnp.finfo(lam.dtype).tiny)
    safe_root = jnp.sqrt(jnp.maximum(lam, floor))
    return u, root, safe_root


@jax.custom_jvp
def _sqrt(m: Array) -> Array:
    u, root, _ = _sqrt_parts(m)
    return matmul(u * root[None, :], u.T)


@_sqrt.defjvp
def _sqrt_jvp(primals: tuple[Array], tangents: tuple[Array]):
    (m,), (dm,) = primals, tangents
    u, root, safe_root = _sqrt_parts(m)
    out = matmul(u * root[None, :], u.T)
    # (sqrt(l_i) - sqrt(l_j)) / (l_i - l_j) = 1 / (sqrt(l_i) + sqrt(l_j)): no cancellation.
    d = 1.0 / (safe_root[:, None] + safe_root[None, :])
    inner = matmul(u.T, matmul(_symmetrise(dm), u))
    return out, matmul(u, matmul(d * inner, u.T))


def psd_sqrt(m: Float[Array, "n n"]) -> Float[Array, "n n"]:
    r"""The symmetric square root ``M^{1/2} = U \Lambda^{1/2} U^T`` of a PSD matrix.

    Negative round-off eigenvalues are clipped to zero. The derivative uses the divided
    differences ``1 / (sqrt(l_i) + sqrt(l_j))`` with the eigenvalues floored at
    ``1e-12 lambda_max`` (only in the derivative), so it is finite at repeated and at zero
    eigenvalues.

    **Arguments:**

    - `m`: symmetric PSD ``(n, n)`` (symmetrised here).

    **Returns:** ``M^{1/2}``, symmetric ``(n, n)``; if ``M 1 = 1`` then ``M^{1/2} 1 = 1``.
    """
    return _sqrt(m)


def apply_obs(obs_op: Any, x: Array) -> Array:
    """``obs_op(x)`` for a callable, an ``lx.AbstractLinearOperator`` (``.mv``) or a matrix."""
    if isinstance(obs_op, lx.AbstractLinearOperator):
        return obs_op.mv(x)
    if isinstance(obs_op, jax.Array | np.ndarray):
        return matmul(jnp.asarray(obs_op), x)
    return obs_op(x)


class _LeadingObs(eqx.Module):
    """Observe only the first ``n_x`` entries of an augmented state ``[x, w]``."""

    obs_op: Any
    n_x: int = eqx.field(static=True)

    def __call__(self, z: Array) -> Array:
        return apply_obs(self.obs_op, z[: self.n_x])


def ensemble_transform(
    filt: Any,
    key: PRNGKeyArray | None,
    forecast: Float[Array, "N_e N_x"],
    obs: Float[Array, " N_y"],
    obs_op: Any,
    obs_noise: Any,
    context: Mapping[str, Any] | None = None,
) -> Float[Array, "N_e N_e"]:
    r"""The ``N_e x N_e`` matrix ``W`` with ``filt.analysis(key, X^f, ...).particles = W X^f``.

    Every global ensemble Kalman analysis (ETKF, EnSRF, EnSRF_Serial, DEnKF, ESTKF,
    ETKF_Livings, EnKF_N, StochasticEnKF, `KalmanFilter.analysis`) is *linear in ensemble
    space*: the analysis is ``W X^f`` with ``W`` depending only on ``H(X^f)``, ``y``, ``R``
    and the key (Evensen & van Leeuwen 2000; Sakov & Oke 2008 for the DEnKF). Running the
    same analysis with the same key on the augmented ensemble

    $$\tilde X^f = [X^f,\ I_{N_e}] \in \mathbb R^{N_e \times (N_x + N_e)},$$

    with an observation operator that only looks at the first ``N_x`` columns (so
    ``H(\tilde X^f) = H(X^f)``), returns ``[W X^f, W I]``: the last ``N_e`` columns are
    ``W``, exactly (to round-off) and including any random draws of the filter (perturbed
    observations, random rotations), which depend only on the key and ``N_e, N_y``.

    **Arguments:**

    - `filt`: a global ensemble filter (localised filters have no single ``W``).
    - `key`: the analysis key the filter used (`cycle_keys` ``(key, k)[1]`` in `assimilate`).
    - `forecast`, `obs`, `obs_op`, `obs_noise`: as for ``filt.analysis``.
    - `context`: extra keyword arguments for ``filt.analysis``.

    **Returns:** ``W``, ``(N_e, N_e)``; ``W 1 = 1`` for mean-preserving filters.
    """
    n_e, n_x = forecast.shape
    identity = jnp.eye(n_e, dtype=forecast.dtype)
    augmented = jnp.concatenate([forecast, identity], axis=1)
    result = filt.analysis(
        key, augmented, obs, _LeadingObs(obs_op, n_x), obs_noise, **dict(context or {})
    )
    particles = jnp.asarray(result.particles)
    if particles.shape != augmented.shape:
        raise ValueError(
            f"{type(filt).__name__}.analysis returned particles of shape {particles.shape} for "
            f"a forecast of shape {augmented.shape}; the smoothers need an analysis that "
            "returns one updated member per forecast member."
        )
    return particles[:, n_x:].astype(forecast.dtype)
