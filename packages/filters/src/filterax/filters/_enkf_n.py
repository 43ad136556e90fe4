r"""The finite-size ensemble Kalman filter EnKF-N (Bocquet 2011), in DAPPER's dual form.

The EnKF-N treats the forecast covariance ``B`` as unknown, integrates it out under a Jeffreys
hyperprior, and so estimates the inflation the ensemble needs at every cycle. In the *dual*
form (Bocquet, Raanes & Hannart 2015, §3) the analysis is an ETKF of the forecast whose
anomalies are inflated by a factor ``l1`` minimising the scalar cost

$$\mathcal D(l_1) = \sum_i \frac{\tilde d_i^2}{l_1^2 s_i^2 + N_e - 1}
+ \frac{\varepsilon_N}{l_1^2} + c_L \log l_1^2,$$

with ``s_i`` the singular values of ``Y' R^{-1/2}`` and ``\tilde d`` the whitened innovation
in their left-singular basis. ``\varepsilon_N = (N_e + 1)/N_e`` and ``c_L = (N_e + g)/(N_e - 1)``
are DAPPER's hyperprior coefficients, corrected towards a mode ``l_1 = 1`` as ``R \to \infty``
(Bocquet et al. 2015, eq. 36) and both multiplied by the prior-certainty factor ``xN``
(Raanes, Bocquet & Carrassi 2019, §2.1).

**Root finding inside jit.** With ``u = l_1^2`` and ``\lambda_i, p_i`` the non-zero
eigenvalues of ``S S^T`` (``S = Y' R^{-1/2} / \sqrt{N_e-1}``) and ``p_i = (v_i^\top S\delta)^2``,
the stationarity condition ``l_1 \mathcal D'(l_1) / 2 = 0`` reads

$$\varphi(u) = c_L - \frac{\varepsilon_N}{u} - \frac{u}{N_e - 1}\sum_i
\frac{p_i}{(1 + u\lambda_i)^2} = 0 .$$

``\varphi < 0`` for ``u \le \varepsilon_N / c_L`` (so every root lies above the prior mode)
and ``\varphi > 0`` for ``u \ge 2 (\varepsilon_N + \sum_i p_i / ((N_e - 1)\lambda_i^2)) / c_L``,
which brackets every root. A safeguarded Newton iteration in ``t = \log l_1`` (Newton steps,
bisection whenever a step leaves the bracket or does not halve; Press et al., *Numerical
Recipes*, ``rtsafe``) started at ``l_1 = 1`` — DAPPER's starting point — runs inside `jit` as a
`lax.while_loop` until the step is at round-off level (at most 200 iterations, enough from any
bracket; usually < 10). When the dual cost has a single stationary point (the usual case)
this is DAPPER's answer; DAPPER iterates Newton to ``|dl_1| < 10^{-4}``, this to round-off.

**Gradients.** The iteration runs under `lax.stop_gradient`; the returned ``t`` is the root
plus the implicit-function correction ``-(\varphi - \mathrm{sg}(\varphi)) /
\mathrm{sg}(\varphi')``, which has value zero and derivative ``-\partial_\theta\varphi /
\varphi'`` (implicit function theorem). ``\varphi`` and the hyperprior's
``\mathrm{tr}((I + S S^\top)^{-1})`` are evaluated by Cholesky solves on the smaller Gram
matrix (no eigenvectors), and the ETKF transform by the gradient-safe spectral function
`filterax.primitives.symmetric_matrix_function`, so gradients with respect to the forecast,
the observations, ``R`` and ``xN`` are finite.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

import filterax.primitives as fxp

from ._common import AnalysisInputs
from ._etkf import etkf_weights_and_transform
from ._transform_filter import AbstractTransformFilter
from ._transforms import matmul

__all__ = ["EnKF_N", "EnKFNInfo", "enkf_n_hyperprior", "enkf_n_inflation"]

# Iteration cap of the safeguarded Newton: the bracket in log l1 is at most a few hundred wide
# and a bisection step is taken whenever Newton does not halve the step, so 200 iterations
# reach float64 round-off from any bracket; typically Newton converges in < 10.
_MAX_ITER = 200


def _trace_inverse_spd(m: Float[Array, "n n"]) -> Scalar:
    # tr(M^{-1}) = ||L^{-1}||_F^2 with M = L L^T: differentiable, no eigenvectors.
    chol = jnp.linalg.cholesky(m)
    eye = jnp.eye(m.shape[0], dtype=m.dtype)
    inv_chol = jsl.solve_triangular(chol, eye, lower=True)
    return jnp.sum(inv_chol * inv_chol)


def _trace_inverse_gain(S: Float[Array, "N_e m"]) -> Scalar:
    r"""``tr((I_{N_e} + S S^T)^{-1})`` on the smaller Gram matrix."""
    n_e, m = S.shape
    if m < n_e:
        # The N_e - m extra eigenvalues of S S^T are 0 and contribute 1 each.
        small = jnp.eye(m, dtype=S.dtype) + matmul(S.T, S)
        return (n_e - m) + _trace_inverse_spd(small)
    return _trace_inverse_spd(jnp.eye(n_e, dtype=S.dtype) + matmul(S, S.T))


def enkf_n_hyperprior(S: Float[Array, "N_e m"], xN: Any = 1.0, g: int = 0) -> tuple[Scalar, Scalar]:
    r"""DAPPER's EnKF-N hyperprior coefficients ``(eN, cL)``, mode-corrected and boosted by `xN`.

    $$\varepsilon_N = \frac{N_e+1}{N_e},\quad c_L = \frac{N_e+g}{N_e-1},\quad
    I_{KH} = \frac1{N_e}\operatorname{tr}(I + S S^\top)^{-1},\quad
    m_c = \Big(\frac{\varepsilon_N}{c_L}\Big)^{I_{KH}/2},$$

    $$\varepsilon_N \leftarrow x_N\,\varepsilon_N / m_c, \qquad c_L \leftarrow x_N\, c_L\, m_c.$$

    ``I_{KH}`` is DAPPER's ``mean((pad0(s**2, N) + N1)**-1) * N1`` written without the SVD
    (``s^2 = (N_e - 1) \lambda`` with ``\lambda`` the eigenvalues of ``S S^T``).

    **Arguments:**

    - `S`: whitened normalised observed anomalies ``Y' R^{-1/2} / sqrt(N_e - 1)``.
    - `xN`: the hyperprior certainty factor (DAPPER's ``xN``; 1 is fully agnostic).
    - `g`: DAPPER's ``g`` (nullity correction of ``c_L``, default 0).

    **Returns:** ``(eN, cL)``.

    **Reference:** Bocquet, Raanes & Hannart (2015), *NPG* 22, eq. (36); DAPPER
    ``hyperprior_coeffs(s, N, xN, g)``.
    """
    n_e = S.shape[0]
    n1 = n_e - 1
    eN = (n_e + 1) / n_e
    cL = (n_e + g) / n1
    prior_mode = eN / cL
    i_kh = _trace_inverse_gain(S) / n_e
    mc = jnp.sqrt(prior_mode**i_kh)
    return xN * eN / mc, xN * cL * mc


def _stationarity(
    u: Array, lam: Array, p: Array, eN: Array, cL: Array, n1: int
) -> tuple[Array, Array]:
    """``phi(t)`` and ``dphi/dt`` of the dual cost, with ``u = exp(2 t)`` (spectral form)."""
    one_plus = 1.0 + u * lam
    phi = cL - eN / u - u * jnp.sum(p / one_plus**2) / n1
    dphi = 2.0 * eN / u - 2.0 * u * jnp.sum(p * (1.0 - u * lam) / one_plus**3) / n1
    return phi, dphi


def _spectral_data(S: Array, delta: Array) -> tuple[Array, Array, Array]:
    """Eigenvalues ``lambda`` of the smaller Gram matrix, ``p = (v^T S delta)^2`` and
    ``q = p / lambda^2`` (0 where ``lambda = 0``).

    ``q`` is formed without squaring ``lambda``: with a huge ``R`` (observations switched off)
    ``lambda`` is ~``1/R``, and ``lambda^2`` underflows to 0 long before ``p / lambda^2`` does
    (float32 at ``R = 1e20``, float64 at ``R = 1e200``), which made ``0 / 0`` a NaN bracket.
    """
    n_e, m = S.shape
    if m < n_e:
        lam, vecs = jnp.linalg.eigh(matmul(S.T, S))
        coeff = matmul(vecs.T, delta)
        lam = jnp.maximum(lam, 0.0)
        positive = lam > 0
        q = jnp.where(positive, coeff**2 / jnp.where(positive, lam, 1.0), 0.0)
        return lam, lam * coeff**2, q
    lam, vecs = jnp.linalg.eigh(matmul(S, S.T))
    coeff = matmul(vecs.T, matmul(S, delta))
    lam = jnp.maximum(lam, 0.0)
    positive = lam > 0
    q = jnp.where(positive, (coeff / jnp.where(positive, lam, 1.0)) ** 2, 0.0)
    return lam, coeff**2, q


def _drop_null_directions(lam: Array, p: Array, q: Array) -> tuple[Array, Array, Array]:
    """Zero ``p`` and ``q`` on directions whose ``lambda`` is round-off (``<= eps max lambda
    size``): exactly, ``p = lambda (u^T delta)^2 = 0`` there, but in float32 with a small
    ``R`` the round-off ``lambda`` and ``p`` of the anomalies' null direction are large
    enough to move the root (``R = 1e-8`` gave ``l1 = 2.8`` against float64's 1.23)."""
    dtype = lam.dtype
    tiny = jnp.finfo(dtype).eps * jnp.maximum(jnp.max(lam), jnp.finfo(dtype).tiny) * lam.size
    significant = lam > tiny
    return lam, jnp.where(significant, p, 0.0), jnp.where(significant, q, 0.0)


def _solve_log_inflation(lam: Array, p: Array, q: Array, eN: Array, cL: Array, n1: int) -> Array:
    """Bracketed safeguarded Newton (``rtsafe``) for the root ``t = log l1`` of ``phi``."""
    dtype = lam.dtype
    tiny = jnp.finfo(dtype).eps * jnp.maximum(jnp.max(lam), jnp.finfo(dtype).tiny) * lam.size
    significant = lam > tiny
    # Directions with (numerically) zero lambda carry p ~ lambda |delta|^2 ~ 0: dropped from
    # the bound; if that ever made phi(hi) < 0 the answer is clamped at the bracket's end.
    ratio = jnp.where(significant, q, 0.0)
    u_lo = eN / cL
    u_hi = 2.0 * (eN + jnp.sum(ratio) / n1) / cL
    t_lo = 0.5 * jnp.log(u_lo)
    t_hi = 0.5 * jnp.log(jnp.maximum(u_hi, 2.0 * u_lo))
    t0 = jnp.clip(jnp.zeros((), dtype), t_lo, t_hi)

    tol = 4.0 * jnp.finfo(dtype).eps

    def body(carry):
        lo, hi, t, dx, dx_old, it = carry
        phi, dphi = _stationarity(jnp.exp(2.0 * t), lam, p, eN, cL, n1)
        lo = jnp.where(phi < 0, t, lo)
        hi = jnp.where(phi > 0, t, hi)
        newton_outside = ((t - hi) * dphi - phi) * ((t - lo) * dphi - phi) >= 0
        too_slow = jnp.abs(2.0 * phi) > jnp.abs(dx_old * dphi)
        bisect = newton_outside | too_slow | (dphi == 0)
        safe_dphi = jnp.where(dphi == 0, 1.0, dphi)
        step = jnp.where(bisect, 0.5 * (hi - lo), phi / safe_dphi)
        t_new = jnp.where(bisect, lo + step, t - step)
        step = jnp.where(phi == 0, 0.0, step)
        t_new = jnp.where(phi == 0, t, t_new)
        return lo, hi, t_new, step, dx, it + 1

    def keep_going(carry):
        _, _, t, dx, _, it = carry
        return (it < _MAX_ITER) & (jnp.abs(dx) > tol * jnp.maximum(1.0, jnp.abs(t)))

    width = t_hi - t_lo
    init = (t_lo, t_hi, t0, width, width, jnp.zeros((), jnp.int32))
    # Not differentiated (all inputs are stop_gradient-ed; see enkf_n_inflation), so an
    # early-exit while_loop is fine.
    _, _, t, _, _, _ = lax.while_loop(keep_going, body, init)
    return t


def _stationarity_differentiable(t: Array, S: Array, delta: Array, eN: Array, cL: Array) -> Array:
    r"""``phi(t)`` without eigenvectors: ``u ||(I + u S S^T)^{-1} S delta||^2`` by Cholesky."""
    n_e, m = S.shape
    u = jnp.exp(2.0 * t)
    if m < n_e:
        gram = matmul(S.T, S)
        chol = jnp.linalg.cholesky(jnp.eye(m, dtype=S.dtype) + u * gram)
        z = jsl.cho_solve((chol, True), delta)
        quad = jnp.dot(z, matmul(gram, z))
    else:
        chol = jnp.linalg.cholesky(jnp.eye(n_e, dtype=S.dtype) + u * matmul(S, S.T))
        z = jsl.cho_solve((chol, True), matmul(S, delta))
        quad = jnp.dot(z, z)
    return cL - eN / u - u * quad / (n_e - 1)


def enkf_n_inflation(
    S: Float[Array, "N_e m"], delta: Float[Array, " m"], xN: Any = 1.0, g: int = 0
) -> Scalar:
    r"""The EnKF-N (dual form) inflation factor ``l1`` for one analysis.

    Minimises DAPPER's dual cost (module docstring) over ``l_1 > 0``; the analysis is then the
    ETKF of the forecast with anomalies (and ``S``) multiplied by ``l_1``.

    **Arguments:**

    - `S`: whitened normalised observed anomalies ``Y' R^{-1/2} / sqrt(N_e - 1)`` (zero columns
        at missing observations).
    - `delta`: the whitened innovation ``R^{-1/2} (y - mean H(X))`` (zero where missing).
    - `xN`, `g`: hyperprior parameters, see `enkf_n_hyperprior`.

    **Returns:** the scalar inflation factor ``l1``; differentiable (implicit function theorem).

    **Reference:** Bocquet (2011), *NPG* 18; Bocquet, Raanes & Hannart (2015), *NPG* 22;
    DAPPER ``EnKF_N(dual=True)`` (``l1 = Newton_m(Jp, Jpp, 1.0)``) and ``effective_N``.
    """
    n1 = S.shape[0] - 1
    eN, cL = enkf_n_hyperprior(S, xN, g)
    lam, p, q = _drop_null_directions(
        *_spectral_data(lax.stop_gradient(S), lax.stop_gradient(delta))
    )
    t_root = _solve_log_inflation(lam, p, q, lax.stop_gradient(eN), lax.stop_gradient(cL), n1)
    t_root = lax.stop_gradient(t_root)
    phi = _stationarity_differentiable(t_root, S, delta, eN, cL)
    _, dphi = _stationarity(
        jnp.exp(2.0 * t_root), lam, p, lax.stop_gradient(eN), lax.stop_gradient(cL), n1
    )
    # Implicit-function correction: zero value, derivative -d(phi)/d(theta) / phi'(t). A
    # non-finite phi (the Cholesky of I + u S S^T failing in float32 at a tiny R) must not
    # turn the root into NaN: then the value stays the root's (without a gradient correction).
    good = (dphi > 0) & jnp.isfinite(phi)
    phi = jnp.where(good, phi, 0.0)
    correction = (phi - lax.stop_gradient(phi)) / jnp.where(good, dphi, 1.0)
    t = t_root - jnp.where(good, correction, 0.0)
    return jnp.exp(t)


class EnKFNInfo(eqx.Module):
    r"""Diagnostics returned (as ``Analysis.info``) by `EnKF_N`.

    **Fields:**

    - `inflation`: the estimated prior inflation factor ``l1`` (DAPPER ``stats.infl``).
    - `weights`, `transform`: the ensemble-space update, *including* the inflation:
        ``X^a = 1 (x + X'^T w / sqrt(N_e - 1))^T + T X'`` (``w = l1 w_ETKF``, ``T = l1 T_ETKF``).
    - `ensemble_transform`: ``E`` with ``X^a = E X^f`` (smoothers apply it to lagged ensembles).
    - `innovation`: ``d = y - mean H(X^f)`` (0 at missing entries).
    - `n_obs`: the number of observed (non-NaN) entries.
    """

    inflation: Float[Array, ""]
    weights: Float[Array, " N_e"]
    transform: Float[Array, "N_e N_e"]
    ensemble_transform: Float[Array, "N_e N_e"]
    innovation: Float[Array, " N_y"]
    n_obs: Int[Array, ""]


class EnKF_N(AbstractTransformFilter):
    r"""The finite-size ensemble Kalman filter EnKF-N (Bocquet 2011), dual form, inflation-free.

    Each analysis estimates an inflation factor ``l_1`` from the innovation (see the module
    docstring for the dual cost and how it is minimised inside `jit`), inflates the forecast
    anomalies by it, and applies the symmetric-square-root ETKF:

    $$S_1 = l_1 S,\quad T = (I + S_1 S_1^\top)^{-1/2},\quad
    w = (I + S_1 S_1^\top)^{-1} S_1 \delta,\quad
    X^a = \mathbf 1\big(\bar x + l_1 X'^\top w/\sqrt{N_e-1}\big)^\top + l_1 T X'.$$

    No tuned inflation is needed (on Lorenz-96 it matches a well-tuned ETKF); with
    ``R \to \infty`` it returns ``l_1 \to 1`` (no update, no inflation). ``xN > 1`` trusts the
    ensemble more (less adaptive inflation), suitable for less chaotic or deterministic systems;
    ``xN = 2`` is the Lorenz-96 setting of Raanes et al. (2019).

    The adaptive inflation corrects *sampling* error under a perfect model. With model error
    (process noise) it is not enough: on the Bach et al. (2025) 40-d linear model with every
    other component observed EnKF-N N=20 diverges (rmse.a 10.7 vs ETKF-20 infl 1.05: 3.7),
    while with all components observed it beats the ETKF (2.07 vs 2.11). Add an ``inflator``
    in `assimilate` (e.g. `RTPS`) on such problems (Bocquet, Raanes & Hannart 2015 treat
    model error within EnKF-N).

    **Arguments:**

    - `xN`: hyperprior certainty factor (DAPPER ``xN``, dynamic so it can be swept or
        differentiated; default 1.0).
    - `g`: DAPPER's ``g`` (static int, default 0).

    `analysis(key, forecast, obs, obs_op, obs_noise, **context)` (from
    `AbstractTransformFilter`): `key` is unused (may be ``None``), `context` is ignored; `obs_op`
    is a callable, a lineax operator or a matrix. Any structure of ``R`` is supported
    (`filterax.primitives.noise_whitening`); NaN observations are skipped exactly.

    **Returns** (of `analysis`): `fxp.Analysis(particles, log_likelihood, info)` with
    ``log_likelihood = log N(d; 0, C^HH + R)`` on the (uninflated) forecast and ``info`` an
    `EnKFNInfo`.

    **Reference:** Bocquet (2011), *Ensemble Kalman filtering without the intrinsic need for
    inflation*, NPG 18; Bocquet, Raanes & Hannart (2015), *Expanding the validity of the
    ensemble Kalman filter without the intrinsic need for inflation*, NPG 22; Raanes, Bocquet &
    Carrassi (2019), *Adaptive covariance inflation in the EnKF by Gaussian scale mixtures*,
    QJRMS 145. DAPPER: ``EnKF_N(N, dual=True, xN=xN, g=g)`` (``Hess=False``). DAPPER's default
    ``dual=False`` (primal, Newton in ``w``) reaches the same stationary point; only the dual is
    implemented here.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import EnKF_N

        X = jax.random.normal(jax.random.key(0), (20, 40))
        out = EnKF_N(xN=2.0).analysis(None, X, jnp.ones(40), fxp.IdentityObs(), 1.0)
        out.info.inflation  # the adaptive inflation factor l1
        ```
    """

    xN: Float[ArrayLike, ""] = eqx.field(
        default=1.0,
        converter=fxp.parameter_converter(
            "EnKF_N(xN=...)",
            low=0.0,
            low_open=True,
            allow_inf=False,
            hint="1 = fully agnostic hyperprior, 2 = DAPPER's Lorenz-96 setting.",
        ),
    )
    g: int = eqx.field(static=True, default=0)
    info_type: ClassVar[type] = EnKFNInfo

    def __check_init__(self) -> None:
        if not isinstance(self.g, int) or isinstance(self.g, bool) or self.g < 0:
            raise ValueError(
                f"EnKF_N(g=...) must be a non-negative Python int (DAPPER's nullity "
                f"correction, usually 0); got {self.g!r}."
            )
        if jnp.ndim(self.xN) != 0:
            raise ValueError(f"EnKF_N(xN=...) must be a scalar; got shape {jnp.shape(self.xN)}.")

    def weights_and_transform(
        self, inputs: AnalysisInputs, key: PRNGKeyArray | None
    ) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"], dict[str, Any]]:
        """The dual-form inflation ``l1`` (`enkf_n_inflation`), then the ETKF of ``l1 S``.

        Returns ``(l1 w, l1 T, {"inflation": l1})``.
        """
        del key
        S = inputs.whitened_anomalies
        delta = inputs.whitened_innovation
        xN = jnp.asarray(self.xN, dtype=inputs.dtype)
        l1 = enkf_n_inflation(S, delta, xN, self.g)
        weights, transform = etkf_weights_and_transform(l1 * S, delta)
        return l1 * weights, l1 * transform, {"inflation": l1}
