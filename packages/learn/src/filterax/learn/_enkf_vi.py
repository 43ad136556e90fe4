r"""The EnKF with learnable inflation and localisation of Bach, Baptista, Luk & Stuart (2025).

App. A.6 of the paper, with the conventions of the authors' code (``loss_surface_96.ipynb``,
``ks_surface.py``; `VI_REPRODUCTION.md` §1.3, §1.4, §3(c)): per analysis time

$$A = E^f - m^f\mathbf 1^\top,\quad A_\lambda = \lambda A,\quad
P = L(\ell)\circ\tfrac{A_\lambda A_\lambda^\top}{N-1} + \Sigma,\quad
K = PH^\top(HPH^\top + \Gamma)^{-1},$$

$$m^a = m^f + K(y - Hm^f),\qquad A^a = (I - KH)^{1/2}A_\lambda,\qquad
E^a = m^a\mathbf 1^\top + A^a,$$

with ``L(l)_ik = exp(-(d_ik / l)^2)`` on the (periodic) grid distance, and the per-cycle
variational cost (paper eq. 2.5 with the Gaussian projection of §2.3)

$$J_j = \mathrm{KL}\big(\mathcal N(m^a, \mathrm{LW}(C^a))\,\|\,
\mathcal N(m^f, \mathrm{LW}(C^f + \Sigma))\big) - \mathbb E\log\mathcal N(y_j; Hv, \Gamma),
\qquad \mathrm{LW}(C) = (1-\gamma)C + \gamma\tfrac{\operatorname{tr}C}{d}I.$$
"""

from __future__ import annotations

import math
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, Int, PRNGKeyArray, Real, ScalarLike

import filterax.primitives as fxp

__all__ = [
    "LikelihoodMode",
    "SquareRoot",
    "VariationalEnKF",
    "VariationalEnKFState",
    "VICycleTerms",
    "enkf_localization",
]

LikelihoodMode = Literal["gaussian_projection", "members", "analytic"]
SquareRoot = Literal["symmetric", "modified_gain"]
_LIKELIHOODS = ("gaussian_projection", "members", "analytic")
_ROOTS = ("symmetric", "modified_gain")

#: Per-cycle codes in `VICycleTerms.code`.
CODE_OK = 0
CODE_INVALID_PARAMETERS = 1
CODE_ASYMMETRIC_ROOT = 2

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _sym(m: Array) -> Array:
    return 0.5 * (m + m.T)


def _shrink(cov: Array, gamma: Array) -> Array:
    d = cov.shape[0]
    level = jnp.trace(cov) / d
    return (1.0 - gamma) * cov + (gamma * level) * jnp.eye(d, dtype=cov.dtype)


def enkf_localization(
    distances: Real[Array, "N_x N_x"], radius: ScalarLike
) -> Float[Array, "N_x N_x"]:
    r"""The localisation matrix of the authors' code, ``L_ik = exp(-(d_ik / l)^2)``.

    $$L(\ell)_{ik} = \exp\!\big(-(d_{ik}/\ell)^2\big)$$

    This is `filterax.primitives.gaussian_taper` with radius ``l / sqrt(2)``. The paper (App.
    A.6) writes ``exp(-d^2 / l)``; the radii of its Figs 5–6 use the code's convention, which
    this function follows (`VI_REPRODUCTION.md` §1.3).

    **Arguments:**

    - `distances`: ``(N_x, N_x)`` grid distances (periodic ``min(|i-k|, N_x-|i-k|)`` in the
      paper's experiments).
    - `radius`: ``l > 0`` (dynamic: differentiable, vmappable). Concrete values ``<= 0`` are
      refused here; traced ones are the caller's responsibility (`VariationalEnKF` turns them
      into a status).

    **Returns:** the ``(N_x, N_x)`` weights in ``(0, 1]``.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), App. A.6; the authors' code.
    """
    fxp.check_parameter(
        radius,
        "enkf_localization(radius=...)",
        low=0.0,
        low_open=True,
        allow_inf=False,
        traced=False,
    )
    with fxp.assume_checked():
        return fxp.gaussian_taper(distances, jnp.asarray(radius) / math.sqrt(2.0))


class VariationalEnKFState(eqx.Module):
    """The state of a `VariationalEnKF`: the ``(N_e, N_x)`` analysis ensemble."""

    ensemble: Float[Array, "N_e N_x"]


class VICycleTerms(eqx.Module):
    """The per-cycle terms of the variational cost, `CycleInfo.diagnostics` of
    `VariationalEnKF`.

    **Fields:**

    - `kl`: ``KL(N(m^a, LW(C^a)) || N(m^f, LW(C^f + Sigma)))`` (0 on a cycle with no
      observed entry).
    - `expected_nll`: ``-E log N(y; H v, Gamma)`` (0 on a cycle with no observed entry).
    - `code`: ``0`` ok, ``1`` invalid (traced) inflation/radius, ``2`` the symmetric square
      root was asked for but ``I - KH`` is not symmetric (integer: it survives the driver's
      NaN rows).
    """

    kl: Float[Array, ""]
    expected_nll: Float[Array, ""]
    code: Int[Array, ""]


def _check_choice(value: Any, options: tuple[str, ...], name: str) -> None:
    if value not in options:
        raise ValueError(f"VariationalEnKF({name}=...) must be one of {options}; got {value!r}.")


class VariationalEnKF(fxp.AbstractCycledMethod):
    r"""EnKF with learnable inflation ``lambda`` and localisation radius ``l`` (App. A.6),
    whose per-cycle variational cost is reported as `CycleInfo.diagnostics`.

    A cycled method (`filterax.filters.run` drives it). Each cycle forecasts every member
    deterministically with ``model.dynamics`` (the model's process noise ``Sigma`` is NOT
    sampled into the members: it enters the covariances, as in the authors' code), then

    $$P = L(\ell)\circ\tfrac{\lambda^2 AA^\top}{N-1} + \Sigma,\quad
    K = PH^\top(HPH^\top+\Gamma)^{-1},\quad m^a = m^f + K(y - Hm^f),\quad
    A^a = R\,\lambda A,$$

    with the anomaly root ``R``:

    - ``square_root="symmetric"`` (the authors' code): ``R = (I - KH)^{1/2}``, the symmetric
      root. ``I - KH = (I + P H^T Gamma^{-1} H)^{-1}`` is symmetric positive definite only
      when ``P`` and ``H^T Gamma^{-1} H`` commute, e.g. ``H = I`` and ``Gamma = gamma I`` (every
      configuration of the paper). A cycle where it is not symmetric (to ``10 sqrt(eps)``
      relative) is reported as not finite (`VICycleTerms.code` 2): use the next option.
    - ``square_root="modified_gain"`` (any linear ``H``): ``R = I - \tilde K H`` with
      Andrews' (1968) modified gain ``\tilde K = P H^T S^{-1/2}(S^{1/2} + \Gamma^{1/2})^{-1}``,
      ``S = HPH^T + \Gamma`` (symmetric roots), so that ``R P R^T = (I - KH)P`` exactly. With
      ``H = I``, ``Gamma = gamma I`` it equals the symmetric root (everything commutes);
      otherwise it is a different (valid) square root of the same covariance update, not the
      paper's formula.

    Both roots differentiate safely: the matrix square roots use
    `filterax.primitives.sqrt_psd`, whose derivative (Daleckii–Krein) is finite at the
    repeated eigenvalues that a plain ``eigh``/``sqrtm`` turns into NaN (large ``l``:
    ``L ~ 11^T`` and rank-``(N-1)`` anomalies; `VI_REPRODUCTION.md` pitfall 3).

    The cost terms of cycle ``j`` (`VICycleTerms`): the KL above between the shrunk Gaussian
    projections (Ledoit–Wolf target ``(tr C / d) I``, ``gamma = shrinkage``; no ``lambda``
    and no localisation in the forecast reference) and the expected negative log-likelihood
    (full Gaussian constant, over the observed entries):

    - ``likelihood="gaussian_projection"`` (the code's choice, default):
      ``-(1/S) sum_s log N(y; h(v_s), Gamma)``, ``v_s = m^a + chol(LW(C^a)) eps_s`` with
      ``S = n_samples`` draws from the cycle key (reparameterised: differentiable);
    - ``likelihood="members"`` (the paper's formula): ``-(1/N) sum_n log N(y; h(E^a_n), Gamma)``;
    - ``likelihood="analytic"`` (beyond the paper, no Monte Carlo): the exact expectation
      under ``N(m^a, LW(C^a))`` for linear ``H``,
      ``-log N(y; Hm^a, Gamma) + tr(Gamma^{-1} H LW(C^a) H^T) / 2``.

    ``H`` is the Jacobian of ``model.obs_op`` at the forecast mean (exact for linear
    operators). Missing observations (NaN entries) get zero weight; a cycle with none
    observed keeps the forecast (no inflation) and costs 0 (the code's non-observation
    steps). Localisation distances come from ``model.state_coords`` / ``model.distance`` when
    the model has them, else the periodic index distance ``min(|i-k|, N_x-|i-k|)``.

    **Arguments:**

    - `inflation`: ``lambda > 0`` (dynamic; multiplies the anomalies once, so the covariance
      by ``lambda^2``).
    - `radius`: ``l > 0`` (dynamic), see `enkf_localization`.
    - `shrinkage`: ``gamma`` in ``[0, 1]``, default 0.1 (the authors').
    - `n_samples`: Monte Carlo draws of the Gaussian-projection likelihood (static, default
      10, the authors').
    - `likelihood`: ``"gaussian_projection"``, ``"members"`` or ``"analytic"`` (static).
    - `square_root`: ``"symmetric"`` or ``"modified_gain"`` (static).

    Concrete ``lambda <= 0`` or ``l <= 0`` (or NaN/inf) raise `ValueError` here; traced bad
    values (under `vmap`/`grad`) make every cycle non-finite (the driver's status) with
    `VICycleTerms.code` 1, never a number.

    **Departures from the paper** (all follow the authors' code, `VI_REPRODUCTION.md` §1.3,
    §3(c), pitfall 6): A.6g applies ``lambda`` twice — here the anomalies are inflated once;
    the paper's localisation ``exp(-d^2/l)`` is the code's ``exp(-(d/l)^2)``; the paper's
    shrinkage target ``I`` is the code's ``(tr C/d) I``; ``Sigma`` is added to the forecast
    covariance and the KL reference; the likelihood samples come from the Gaussian projection
    (the code), not the members (the paper), unless `likelihood="members"`.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), *Learning optimal filters using
    variational inference*, §2.3, §3.5, App. A.3 and A.6, eq. (2.5). Andrews (1968), *AIAA J.*
    6 (the modified gain). DAPPER equivalent: none (DAPPER's EnKF uses Gaspari–Cohn localisation
    in the LETKF; no global B-localised square-root filter).

    !!! Example

        ```python
        import jax
        import filterax.filters as ff
        from filterax.learn import VariationalEnKF
        from filterax.zoo import presets

        ssm = presets.lorenz96_bach2025()
        xp = ssm.simulate(jax.random.key(0), 50)
        out = ff.run(VariationalEnKF(inflation=1.1, radius=5.0), ssm,
                     ssm.initial_ensemble(jax.random.key(1), 10), xp.observations, xp.times,
                     key=jax.random.key(2))
        cost = (out.diagnostics.kl + out.diagnostics.expected_nll).sum()
        ```
    """

    inflation: Any = eqx.field(converter=fxp.as_float_parameter)
    radius: Any = eqx.field(converter=fxp.as_float_parameter)
    shrinkage: Any = eqx.field(default=0.1, converter=fxp.as_float_parameter)
    n_samples: int = eqx.field(default=10, static=True)
    likelihood: str = eqx.field(default="gaussian_projection", static=True)
    square_root: str = eqx.field(default="symmetric", static=True)

    def __check_init__(self) -> None:
        for name in ("inflation", "radius"):
            fxp.check_parameter(
                getattr(self, name),
                f"VariationalEnKF({name}=...)",
                low=0.0,
                low_open=True,
                allow_inf=False,
                hint="Pass a positive number (gradient descent: optimise its log).",
                traced=False,
            )
            if jnp.ndim(getattr(self, name)) != 0:
                raise ValueError(
                    f"VariationalEnKF({name}=...) must be a scalar; got shape "
                    f"{jnp.shape(getattr(self, name))}. For a grid, jax.vmap over it (see "
                    "vi_cost_surface)."
                )
        fxp.check_parameter(
            self.shrinkage, "VariationalEnKF(shrinkage=...)", low=0.0, high=1.0, traced=False
        )
        if (
            isinstance(self.n_samples, bool)
            or not isinstance(self.n_samples, int)
            or (self.n_samples < 1)
        ):
            raise ValueError(
                f"VariationalEnKF(n_samples=...) must be a positive int; got {self.n_samples!r}."
            )
        _check_choice(self.likelihood, _LIKELIHOODS, "likelihood")
        _check_choice(self.square_root, _ROOTS, "square_root")

    def init(
        self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel
    ) -> VariationalEnKFState:
        """The state before the first cycle: the ``(N_e, N_x)`` initial ensemble."""
        del key
        fxp.check_ensemble(initial, "VariationalEnKF initial ensemble")
        ensemble = jnp.asarray(initial)
        if not jnp.issubdtype(ensemble.dtype, jnp.floating):
            ensemble = ensemble.astype(jnp.result_type(float))
        if isinstance(model.dynamics, fxp.AbstractStochasticDynamics):
            raise TypeError(
                "VariationalEnKF forecasts each member deterministically (Sigma enters the "
                "covariances, as in Bach et al. 2025); pass deterministic dynamics and put the "
                "model error in model.process_noise."
            )
        return VariationalEnKFState(ensemble)

    def _distances(self, model: fxp.AbstractModel, n: int, dtype: Any) -> Array:
        coords = model.state_coords
        if coords is None:
            idx = jnp.arange(n, dtype=dtype)
            diff = jnp.abs(idx[:, None] - idx[None, :])
            return jnp.minimum(diff, n - diff)
        distance = model.distance if model.distance is not None else fxp.euclidean
        return fxp.pairwise_distances(coords, coords, distance).astype(dtype)

    def step(
        self,
        key: PRNGKeyArray,
        state: VariationalEnKFState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[VariationalEnKFState, fxp.CycleInfo]:
        """One forecast–analysis cycle and its variational cost terms."""
        ensemble = state.ensemble
        n_e, n_x = ensemble.shape
        dtype = ensemble.dtype
        forecast = jax.vmap(model.dynamics, in_axes=(0, None, None))(ensemble, t_prev, t)
        forecast = forecast.astype(dtype)
        n_y = obs.shape[0]
        obs = obs.astype(dtype)

        lam = jnp.asarray(self.inflation, dtype)
        ell = jnp.asarray(self.radius, dtype)
        gamma = jnp.asarray(self.shrinkage, dtype)
        params_ok = (lam > 0) & (ell > 0) & jnp.isfinite(lam) & jnp.isfinite(ell)
        # Double where: the invalid branch computes with harmless values (no NaN gradients).
        lam = jnp.where(params_ok, lam, jnp.ones_like(lam))
        ell = jnp.where(params_ok, ell, jnp.ones_like(ell))

        mask = fxp.observation_mask(obs)
        any_obs = jnp.any(mask)
        y = jnp.where(mask, obs, 0.0)
        maskf = mask.astype(dtype)

        gamma_op = fxp.mask_noise(fxp.as_noise_operator(model.obs_noise, n_y), mask)
        obs_cov = _sym(gamma_op.as_matrix().astype(dtype))
        sigma = (
            jnp.zeros((n_x, n_x), dtype)
            if model.process_noise is None
            else fxp.as_noise_operator(model.process_noise, n_x).as_matrix().astype(dtype)
        )

        def observe(x):
            return fxp.apply_obs(model.obs_op, x).astype(dtype)

        m_f = jnp.mean(forecast, axis=0)
        anomalies = forecast - m_f[None, :]
        cov_f = _mm(anomalies.T, anomalies) / (n_e - 1)
        ref_cov = _shrink(cov_f + sigma, gamma)

        hx_f = jax.vmap(observe)(forecast)
        innovation = obs - jnp.mean(hx_f, axis=0)
        h_mat = jax.jacfwd(observe)(m_f) * maskf[:, None]
        residual = jnp.where(mask, y - observe(m_f), 0.0)

        lam_eff = jnp.where(any_obs, lam, jnp.ones_like(lam))
        a_lam = lam_eff * anomalies
        loc = enkf_localization(self._distances(model, n_x, dtype), ell)
        p_cov = _sym(loc * (_mm(a_lam.T, a_lam) / (n_e - 1)) + sigma)
        ph = _mm(p_cov, h_mat.T)
        s_cov = _sym(_mm(h_mat, ph) + obs_cov)
        s_chol = jnp.linalg.cholesky(s_cov)
        gain = jsl.cho_solve((s_chol, True), ph.T).T
        m_a = m_f + _mm(gain, residual)

        eye = jnp.eye(n_x, dtype=dtype)
        root_ok = jnp.asarray(True)
        if self.square_root == "symmetric":
            reducer = eye - _mm(gain, h_mat)
            scale = jnp.maximum(jnp.max(jnp.abs(reducer)), 1.0)
            tol = 10.0 * math.sqrt(float(jnp.finfo(dtype).eps))
            root_ok = jnp.max(jnp.abs(reducer - reducer.T)) <= tol * scale
            root = fxp.sqrt_psd(_sym(reducer))
        else:
            s_half = fxp.sqrt_psd(s_cov)
            g_half = fxp.sqrt_psd(obs_cov)
            # K~ = P H^T S^{-1/2} (S^{1/2} + Gamma^{1/2})^{-1}; both factors symmetric.
            right = jnp.linalg.solve(s_half + g_half, jnp.linalg.solve(s_half, ph.T))
            root = eye - _mm(right.T, h_mat)
        a_a = _mm(a_lam, root.T)
        analysis = m_a[None, :] + a_a

        cov_a = _shrink(_mm(a_a.T, a_a) / (n_e - 1), gamma)
        kl = fxp.gaussian_kl(m_a, cov_a, m_f, ref_cov)

        g_chol = jnp.linalg.cholesky(obs_cov)
        n_obs = jnp.sum(maskf)
        half_logdet = jnp.sum(jnp.log(jnp.diagonal(g_chol)))
        const = 0.5 * n_obs * math.log(2.0 * math.pi) + half_logdet

        def nll(hx):
            r = jnp.where(mask, y - hx, 0.0)
            z = jsl.solve_triangular(g_chol, r, lower=True)
            return 0.5 * jnp.sum(z * z) + const

        if self.likelihood == "members":
            expected_nll = jnp.mean(jax.vmap(nll)(jax.vmap(observe)(analysis)))
        elif self.likelihood == "gaussian_projection":
            eps = jax.random.normal(key, (self.n_samples, n_x), dtype)
            samples = m_a[None, :] + _mm(eps, jnp.linalg.cholesky(cov_a).T)
            expected_nll = jnp.mean(jax.vmap(nll)(jax.vmap(observe)(samples)))
        else:
            w = jsl.solve_triangular(g_chol, h_mat, lower=True)
            trace = jnp.sum(w * _mm(w, cov_a))
            expected_nll = nll(observe(m_a)) + 0.5 * trace

        zero = jnp.zeros((), dtype)
        kl = jnp.where(any_obs, kl, zero)
        expected_nll = jnp.where(any_obs, expected_nll, zero)
        code = jnp.where(
            params_ok, jnp.where(root_ok, CODE_OK, CODE_ASYMMETRIC_ROOT), CODE_INVALID_PARAMETERS
        ).astype(jnp.int32)

        # Predictive log p(y | y_<k) of the localised Gaussian forecast N(H m^f, S).
        z = jsl.solve_triangular(s_chol, residual, lower=True)
        # Missing entries are decoupled unit blocks of S: they add log(1) = 0 to log|S|.
        log_lik = (
            -0.5 * jnp.sum(z * z)
            - jnp.sum(jnp.log(jnp.diagonal(s_chol)))
            - 0.5 * n_obs * math.log(2.0 * math.pi)
        )

        finite = fxp.is_finite(analysis, kl, expected_nll) & (code == CODE_OK)
        info = fxp.CycleInfo(
            forecast_mean=m_f,
            forecast_spread=fxp.rms_spread(forecast),
            analysis_mean=jnp.mean(analysis, axis=0),
            analysis_spread=fxp.rms_spread(analysis),
            log_likelihood=log_lik,
            innovation=innovation,
            finite=finite,
            forecast=forecast,
            analysis=analysis,
            diagnostics=VICycleTerms(kl=kl, expected_nll=expected_nll, code=code),
        )
        return VariationalEnKFState(analysis), info
