r"""Nonlinear ensemble transform filters: `NETF` and the localised `LNETF` (Tödter & Ahrens 2015).

Both transform the forecast so that the analysis ensemble has exactly the importance-weighted
(particle-filter) mean and covariance:

$$\bar x^a = X^{f\top} w, \qquad X'^a = W^\top X'^f, \qquad
  W = \sqrt{N_e - 1}\,\big[\operatorname{diag}(w) - w w^\top\big]^{1/2}\,\Omega,$$

with ``w`` the normalised likelihood weights and ``Omega`` a mean-preserving random rotation
(``Omega 1 = 1``) or the identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import filterax.primitives as fxp
from filterax.filters import AnalysisInputs, prepare_analysis

from ._etpf import (
    _check_jitter_key,
    fail_if_no_weight,
    log_evidence,
    member_log_likelihoods,
    rejuvenate,
    whitened_residuals,
)

__all__ = ["LNETF", "NETF", "NETFInfo", "netf_transform"]

_LNETF_CONTEXT = ("state_coords", "obs_coords", "distance")


def netf_transform(
    log_weights: Float[Array, " N_e"], rotation: Float[Array, "N_e N_e"] | None = None
) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"]]:
    r"""The NETF mean weights and anomaly transform from normalised log-weights.

    $$w = \exp(\log w), \qquad
      W = \sqrt{N_e - 1}\,\big[\operatorname{diag}(w) - w w^\top\big]^{1/2}\,\Omega,$$

    the symmetric PSD square root by `filterax.primitives.sqrt_psd` (finite derivative at the
    zero eigenvalue that ``diag(w) - w w^T`` always has, eigenvector ``1``). An ensemble with
    mean ``X^T w`` and anomalies ``W^T X'`` has sample
    covariance (``1/(N_e - 1)``) ``X'^T (diag(w) - w w^T) X' = sum_k w_k (x_k - x^a)(x_k -
    x^a)^T``, the importance covariance, and mean exactly ``X^T w`` (``[.]^{1/2} 1 = 0`` and
    ``Omega 1 = 1``).

    Tödter & Ahrens write ``sqrt(N_e)`` with the ``1/N_e`` covariance estimator; filterax's
    sample covariance uses ``1/(N_e - 1)``, hence ``sqrt(N_e - 1)`` here (the same identity).

    **Arguments:** `log_weights` normalised, ``(N_e,)``; `rotation` ``Omega`` (``None``: identity).

    **Returns:** ``(w, W)``.
    """
    w = jnp.exp(log_weights)
    n_e = w.shape[0]
    a = jnp.diag(w) - w[:, None] * w[None, :]
    transform = math.sqrt(n_e - 1) * fxp.sqrt_psd(a)
    if rotation is not None:
        transform = fxp.matmul(transform, rotation)
    # [.]^{1/2} 1 = 0 holds only to the eigensolver's accuracy (~sqrt(eps) on the null
    # direction); centring the columns makes W 1 = 0, so the mean is exact to round-off, and
    # changes the covariance only by the square of that error.
    transform = transform - jnp.mean(transform, axis=1, keepdims=True)
    return w, transform


class NETFInfo(eqx.Module):
    r"""Diagnostics returned (as ``Analysis.info``) by `NETF` and `LNETF`.

    **Fields:**

    - `log_weights`: the normalised GLOBAL importance log-weights ``(N_e,)``.
    - `ess`: their effective sample size ``1 / sum_k w_k^2``.
    - `local_ess`: per state component, the effective sample size of the local weights
      ``(N_x,)`` (every entry ``ess`` for `NETF`).
    - `innovation`: ``d = y - mean H(X^f)`` (0 at missing entries).
    """

    log_weights: Float[Array, " N_e"]
    ess: Float[Array, ""]
    local_ess: Float[Array, " N_x"]
    innovation: Float[Array, " N_y"]


def _rotation(
    key: PRNGKeyArray | None, rotate: bool, n_e: int, dtype: Any, name: str
) -> Array | None:
    if not rotate:
        return None
    if key is None:
        raise ValueError(
            f"{name}: rotate=True draws a random mean-preserving rotation and needs a PRNG key: "
            "pass key=jax.random.key(seed), or build the filter with rotate=False (Omega = I)."
        )
    # A key of its own, so jitter (the other random draw) is independent of it.
    return fxp.random_rotation(jax.random.fold_in(key, 0), n_e, dtype)


def _finish(
    key: PRNGKeyArray | None,
    inputs: AnalysisInputs,
    analysis: Array,
    log_lik: Array,
    log_w: Array,
    ok: Array,
    local_ess: Array,
    jitter: Any,
) -> fxp.Analysis:
    dtype = inputs.dtype
    k_jitter = None if key is None else jax.random.fold_in(key, 1)
    analysis = rejuvenate(k_jitter, analysis, inputs.anomalies, jnp.asarray(jitter, dtype))
    analysis = jnp.where(ok, analysis, jnp.nan)
    evidence = jnp.where(ok, log_evidence(log_lik), -jnp.inf)
    info = NETFInfo(
        log_weights=log_w,
        ess=1.0 / jnp.sum(jnp.exp(2.0 * log_w)),
        local_ess=local_ess,
        innovation=inputs.innovation,
    )
    return fxp.Analysis(analysis, evidence, info)


def _check_fields(owner: str, jitter: Any) -> None:
    if jnp.ndim(jitter) != 0:
        raise ValueError(f"{owner}(jitter=...) must be a scalar.")


class NETF(fxp.AbstractSequentialFilter):
    r"""The (global) nonlinear ensemble transform filter (Tödter & Ahrens 2015).

    With importance weights ``w_k ∝ p(y | x^f_k)`` (Gaussian likelihood; NaN observations get
    zero weight) and `netf_transform`:

    $$\bar x^a = \sum_k w_k x^f_k, \qquad X^a = \mathbf 1 \bar x^{a\top} + W^\top X'^f, \qquad
      W = \sqrt{N_e - 1}\,[\operatorname{diag}(w) - w w^\top]^{1/2}\,\Omega .$$

    The analysis sample mean and covariance equal the particle filter's weighted mean and
    covariance exactly (second-order exact, "a second-order exact ensemble square root filter");
    for Gaussian forecasts and a linear ``H`` they converge to the Kalman moments as ``N_e``
    grows (Monte Carlo), with no Gaussian assumption on the likelihood. ``Omega`` is a random
    mean-preserving rotation (`fxp.random_rotation`; Tödter & Ahrens' Ω, which spreads the
    surviving weight over all members) with `rotate=True` (default; needs a key), else ``I``.

    **Arguments:**

    - `rotate`: draw ``Omega`` at random each analysis (static bool, default ``True``).
    - `jitter`: rejuvenation noise ``N(0, jitter^2 P^f)`` added after the transform (dynamic,
      default 0; see `ETPF`).

    `analysis(key, forecast, obs, obs_op, obs_noise)`; ``log_likelihood`` is the particle
    estimate ``log (1/N_e) sum_k p(y | x^f_k)``; with no finite weight the analysis is NaN and
    ``log_likelihood = -inf`` (a non-finite cycle for the driver).

    **Returns** (of `analysis`): `fxp.Analysis(particles, log_likelihood, info)`, ``info`` a
    `NETFInfo`.

    **Reference:** Tödter & Ahrens (2015), *A second-order exact ensemble square root filter for
    nonlinear data assimilation*, MWR 143, 1347–1367, eqs. (9)–(13). Not in DAPPER.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.learn import NETF

        X = jax.random.normal(jax.random.key(0), (30, 3))
        out = NETF().analysis(jax.random.key(1), X, jnp.ones(3), fxp.IdentityObs(), 1.0)
        ```
    """

    rotate: bool = eqx.field(static=True, default=True)
    jitter: Float[ArrayLike, ""] = eqx.field(
        default=0.0,
        converter=fxp.parameter_converter(
            "NETF(jitter=...)", low=0.0, hint="A rejuvenation scale >= 0 (0 disables it)."
        ),
    )

    def __check_init__(self) -> None:
        _check_fields("NETF", self.jitter)

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[ArrayLike, "N_e N_x"],
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> fxp.Analysis:
        """Weights, then the second-order exact transform (see the class docstring)."""
        name = "NETF.analysis"
        if context:
            raise TypeError(
                f"{name} takes no context keywords, so {sorted(context)} would be ignored; "
                "localise with LNETF(radius=...)."
            )
        _check_jitter_key(self.jitter, key, name)
        inputs = prepare_analysis(forecast, obs, obs_op, obs_noise, name=name)
        omega = _rotation(key, self.rotate, inputs.n_ensemble, inputs.dtype, name)
        log_lik = member_log_likelihoods(inputs)
        log_w, ok = fail_if_no_weight(log_lik)
        w, transform = netf_transform(log_w, omega)
        members = inputs.anomalies + inputs.forecast_mean[None, :]
        mean = fxp.matmul(w, members)
        analysis = mean[None, :] + fxp.matmul(transform.T, inputs.anomalies)
        ess = 1.0 / jnp.sum(w**2)
        local_ess = jnp.full((inputs.n_state,), ess)
        return _finish(key, inputs, analysis, log_lik, log_w, ok, local_ess, self.jitter)


def _as_coords(value: Any, name: str, size: int, what: str) -> Array:
    if value is None:
        raise ValueError(
            f"LNETF.analysis needs `{name}`, the coordinates of the {what}: pass it as a keyword "
            "(context) argument (filt.analysis(key, X, y, obs_op, R, state_coords=(N_x, D), "
            "obs_coords=(N_y, D))) or run EnsembleFilter(LNETF(...)) on a model that carries "
            "its geometry (the filterax.zoo presets do)."
        )
    value = jnp.asarray(value)
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim != 2 or value.shape[0] != size:
        raise ValueError(
            f"LNETF.analysis: `{name}` must have shape ({size}, D) (or ({size},) in 1-D), one row "
            f"per {what}; got shape {jnp.shape(value)}."
        )
    return value


class LNETF(fxp.AbstractLocalFilter):
    r"""The localised nonlinear ensemble transform filter (Tödter & Ahrens 2015, §3).

    One NETF analysis per state component ``i`` (grid point), with weights from the
    R-localised likelihood, exactly as the LETKF localises (the local ``R^{-1}`` multiplied by
    the taper ``rho_ij = taper(dist(s_i, o_j), radius)``):

    $$\log w^{(i)}_k = -\tfrac12 \sum_j \rho_{ij}\, \frac{(y_j - H(x_k)_j)^2}{R_{jj}} + c_i,
      \qquad x^a_{k,i} = \sum_l w^{(i)}_l x^f_{l,i} + \big(W^{(i)\top} X'^f_{:,i}\big)_k,$$

    ``W^{(i)} = sqrt(N_e - 1) [diag(w^(i)) - w^(i) w^(i)T]^{1/2} Omega`` (`netf_transform`),
    the SAME rotation ``Omega`` at every point (so neighbouring points stay consistent, as in
    Tödter & Ahrens). All ``N_x`` local log-weights are one ``(N_e, N_y) x (N_y, N_x)`` product
    of the squared whitened residuals and the taper matrix; the per-point square roots
    (an ``N_e x N_e`` ``eigh`` each) are `jax.vmap`-ed, in chunks of `chunk_size` points
    (``lax.map(..., batch_size=chunk_size)``). With ``radius = inf`` every local weight is the
    global one and the LNETF is the `NETF` (same key, same ``Omega``).

    **Arguments:**

    - `radius`: the taper length scale (dynamic). For the default `fxp.gaspari_cohn` the
      GC half-width (support ``2 radius``); DAPPER's ``loc_rad`` converts with
      `fxp.dapper_radius_to_gc_halfwidth`. ``jnp.inf`` disables localisation.
    - `taper`: ``taper(d, radius)`` (static), default `fxp.gaspari_cohn`.
    - `distance`: single-pair distance (static); ``None``: the model's (context), else
      `fxp.euclidean`.
    - `rotate`: random ``Omega`` (static bool, default ``True``; needs a key) or ``I``.
    - `jitter`: rejuvenation ``N(0, jitter^2 P^f)`` (dynamic, default 0).
    - `chunk_size`: grid points per vmapped batch (static; ``None``: all at once).

    `analysis(key, forecast, obs, obs_op, obs_noise, *, state_coords, obs_coords, distance=None)`;
    ``R`` must be diagonal (the taper weights individual observation errors). The geometry
    comes from the model when run by ``run(EnsembleFilter(LNETF(...)), model, ...)``.
    ``log_likelihood`` is the GLOBAL particle estimate ``log (1/N_e) sum_k p(y | x^f_k)``.

    **Returns** (of `analysis`): `fxp.Analysis(particles, log_likelihood, info)`, ``info`` a
    `NETFInfo` (with the per-point effective sample sizes).

    **Reference:** Tödter & Ahrens (2015), *MWR* 143, §3 (localisation as in the LETKF, Hunt
    et al. 2007). Not in DAPPER (its ``LETKF`` is the Gaussian counterpart).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.learn import LNETF

        grid = jnp.arange(40.0)
        X = jax.random.normal(jax.random.key(0), (20, 40))
        out = LNETF(radius=5.0).analysis(
            jax.random.key(1), X, jnp.zeros(40), fxp.IdentityObs(), 1.0, state_coords=grid,
            obs_coords=grid, distance=fxp.PeriodicDistance(40.0))
        ```
    """

    radius: Float[ArrayLike, ""] = eqx.field(
        converter=fxp.parameter_converter(
            "LNETF(radius=...)",
            low=0.0,
            low_open=True,
            hint="It is the taper length scale (GC half-width; jnp.inf for no localisation).",
        )
    )
    taper: Callable[..., Array] = eqx.field(static=True, default=fxp.gaspari_cohn)
    distance: Callable[..., Array] | None = eqx.field(static=True, default=None)
    rotate: bool = eqx.field(static=True, default=True)
    jitter: Float[ArrayLike, ""] = eqx.field(
        default=0.0,
        converter=fxp.parameter_converter(
            "LNETF(jitter=...)", low=0.0, hint="A rejuvenation scale >= 0 (0 disables it)."
        ),
    )
    chunk_size: int | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        _check_fields("LNETF", self.jitter)
        if jnp.ndim(self.radius) != 0:
            raise ValueError("LNETF(radius=...) must be a scalar (vmap over filters to sweep).")
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int)
            or isinstance(self.chunk_size, bool)
            or self.chunk_size < 1
        ):
            raise ValueError(
                f"LNETF(chunk_size=...) must be a positive int or None; got {self.chunk_size!r}."
            )

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[ArrayLike, "N_e N_x"],
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> fxp.Analysis:
        """One NETF per grid point from the tapered likelihood (see the class docstring)."""
        name = "LNETF.analysis"
        unknown = sorted(set(context) - set(_LNETF_CONTEXT))
        if unknown:
            raise ValueError(
                f"{name} got unexpected context {unknown}; it accepts {list(_LNETF_CONTEXT)}."
            )
        _check_jitter_key(self.jitter, key, name)
        inputs = prepare_analysis(forecast, obs, obs_op, obs_noise, name=name)
        if inputs.noise_structure != "diagonal":
            raise ValueError(
                f"{name} needs a diagonal observation-noise covariance R (the taper weights "
                f"individual observation errors); got {inputs.noise_structure} R. Use NETF or "
                "ETPF (global analyses, any R)."
            )
        dtype = inputs.dtype
        n_e, n_x, n_y = inputs.n_ensemble, inputs.n_state, inputs.n_obs_total
        state_coords = _as_coords(context.get("state_coords"), "state_coords", n_x, "grid point")
        obs_coords = _as_coords(context.get("obs_coords"), "obs_coords", n_y, "observation")
        if state_coords.shape[1] != obs_coords.shape[1]:
            raise ValueError(
                f"{name}: state_coords has D={state_coords.shape[1]} columns but obs_coords "
                f"has D={obs_coords.shape[1]}; both must use the same coordinates."
            )
        distance = self.distance if self.distance is not None else context.get("distance")
        if distance is None:
            distance = fxp.euclidean
        elif not callable(distance):
            raise TypeError(
                f"{name}: `distance` must be a single-pair distance(a, b) -> scalar (e.g. "
                f"fxp.PeriodicDistance(40.0)); got {type(distance).__name__}."
            )
        omega = _rotation(key, self.rotate, n_e, dtype, name)
        log_lik = member_log_likelihoods(inputs)
        log_w, ok = fail_if_no_weight(log_lik)
        coord_dtype = jnp.result_type(dtype, state_coords.dtype, obs_coords.dtype)
        with fxp.assume_checked():  # the radius was checked by the field's converter
            rho = fxp.localization_matrix(
                state_coords.astype(coord_dtype),
                obs_coords.astype(coord_dtype),
                jnp.asarray(self.radius, coord_dtype),
                self.taper,
                distance,
            ).astype(dtype)
        # R-localisation: the local -2 log-likelihood is sum_j rho_ij r_kj^2 (r whitened,
        # 0 at missing entries), for all points at once.
        squared = whitened_residuals(inputs) ** 2
        local_log_lik = -0.5 * fxp.matmul(squared, rho.T)  # (N_e, N_x)
        # An all -inf local column cannot occur where the global weights exist (rho <= 1);
        # the global flag `ok` covers the failure.
        local_log_lik = jnp.where(ok, local_log_lik, 0.0)
        members = inputs.anomalies + inputs.forecast_mean[None, :]

        def point(column: tuple[Array, Array, Array]) -> tuple[Array, Array]:
            ll, x, anomaly = column
            lw = ll - jax.nn.logsumexp(ll)
            w, transform = netf_transform(lw, omega)
            return jnp.dot(w, x) + fxp.matmul(transform.T, anomaly), 1.0 / jnp.sum(w**2)

        columns = (local_log_lik.T, members.T, inputs.anomalies.T)
        if self.chunk_size is None:
            updated, local_ess = jax.vmap(point)(columns)
        else:
            updated, local_ess = lax.map(point, columns, batch_size=self.chunk_size)
        return _finish(key, inputs, updated.T, log_lik, log_w, ok, local_ess, self.jitter)
