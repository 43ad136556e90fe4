r"""Analysis preparation shared by every ensemble filter in `filterax.filters`.

`prepare_analysis` validates the inputs of ``filter.analysis(key, forecast, obs, obs_op,
obs_noise)`` at trace time and returns an `AnalysisInputs` holding everything an ensemble Kalman
analysis starts from: forecast mean and anomalies, the observed ensemble and its anomalies, the
missing-observation mask, the innovation, the whitened quantities

$$S = Y' G^\top / \sqrt{N_e - 1}, \qquad \delta = G d, \qquad G^\top G = R^{-1},$$

and the forecast log-likelihood ``log N(d; 0, C^HH + R)``. Missing (NaN) observations follow
`filterax.primitives` (DESIGN.md §2): their innovation entries and anomaly columns are zero and
their rows/columns of ``R`` are the identity's, so every downstream quantity equals that of the
observed subset and no NaN reaches arithmetic or gradients.

The whitening ``G`` depends on the structure of ``R`` (never densifying what need not be dense):

- diagonal ``R = diag(r)``: ``G = diag(r^{-1/2})``;
- dense ``R = L L^T`` (Cholesky): ``G = L^{-1}`` (triangular solves);
- low-rank-plus-diagonal ``R = D + U U^T``: ``G = (I + W W^T)^{-1/2} D^{-1/2}`` with
  ``W = D^{-1/2} U``, computed as ``I + W g(W^T W) W^T`` through the gradient-safe spectral
  function of `_transforms` (a ``k x k`` eigenproblem, ``k`` the rank of ``U``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

import filterax.primitives as fxp

from ._transforms import (
    TransformInfo,
    apply_transform,
    full_transform,
    matmul,
    symmetric_matrix_function,
)

__all__ = [
    "AnalysisInputs",
    "Whitener",
    "finish_transform_analysis",
    "prepare_analysis",
    "require_diagonal_noise",
    "require_key",
]


class Whitener(eqx.Module):
    r"""A square whitening operator ``G`` with ``G^T G = R^{-1}`` for a (masked) noise ``R``.

    Apply with `rows` (to each row of an ``(m, N_y)`` array: ``Z G^T``) or `vector`
    (``G v``). Built by `prepare_analysis`; see the module docstring for the per-structure
    choice of ``G``. At missing entries ``G`` acts as the identity and does not mix them with
    observed entries, so zeroed anomalies and innovations stay zero.

    **Fields:**

    - `structure`: ``"diagonal"``, ``"low_rank"`` or ``"dense"`` (static).
    - `inv_sqrt_diag`: ``r^{-1/2}`` (diagonal) or ``D^{-1/2}`` (low rank), else ``None``.
    - `chol`: the lower Cholesky factor of ``R`` (dense), else ``None``.
    - `factor`, `core`: ``W`` and ``g(W^T W)`` (low rank), else ``None``.
    """

    structure: str = eqx.field(static=True)
    inv_sqrt_diag: Array | None = None
    chol: Array | None = None
    factor: Array | None = None
    core: Array | None = None

    def rows(self, z: Float[Array, "m N_y"]) -> Float[Array, "m N_y"]:
        """``Z G^T``: whiten every row of ``z``."""
        if self.structure == "dense":
            return jsl.solve_triangular(self.chol, z.T, lower=True).T
        z = z * self.inv_sqrt_diag[None, :]
        if self.structure == "diagonal":
            return z
        # G^T = D^{-1/2} (I + W core W^T); the middle factor is symmetric.
        return z + matmul(matmul(z, self.factor), matmul(self.core, self.factor.T))

    def vector(self, v: Float[Array, " N_y"]) -> Float[Array, " N_y"]:
        """``G v``: whiten one vector."""
        if self.structure == "dense":
            return jsl.solve_triangular(self.chol, v, lower=True)
        if self.structure == "diagonal":
            return v * self.inv_sqrt_diag
        # G = (I + W core W^T) D^{-1/2}.
        z = v * self.inv_sqrt_diag
        return z + matmul(self.factor, matmul(self.core, matmul(self.factor.T, z)))


def _build_whitener(noise: lx.AbstractLinearOperator, dtype: Any) -> Whitener:
    structure = fxp.noise_structure(noise)
    if structure == "diagonal":
        d = jnp.asarray(lx.diagonal(noise), dtype=dtype)
        return Whitener("diagonal", inv_sqrt_diag=1.0 / jnp.sqrt(d))
    if structure == "low_rank":
        assert isinstance(noise, fxp.LowRankUpdate)
        inv_sqrt = 1.0 / jnp.sqrt(jnp.asarray(noise.diagonal, dtype=dtype))
        w = jnp.asarray(noise.factor, dtype=dtype) * inv_sqrt[:, None]
        n, k = w.shape
        if k < n:
            core = symmetric_matrix_function(matmul(w.T, w), "inv_sqrt_push")
            return Whitener("low_rank", inv_sqrt_diag=inv_sqrt, factor=w, core=core)
        # k >= n: the n x n form (I + W W^T)^{-1/2} is the smaller eigenproblem.
        core = symmetric_matrix_function(matmul(w, w.T), "inv_sqrt") - jnp.eye(n, dtype=dtype)
        return Whitener(
            "low_rank", inv_sqrt_diag=inv_sqrt, factor=jnp.eye(n, dtype=dtype), core=core
        )
    matrix = jnp.asarray(noise.as_matrix(), dtype=dtype)
    return Whitener("dense", chol=jnp.linalg.cholesky(matrix))


class AnalysisInputs(eqx.Module):
    r"""Everything an ensemble Kalman analysis starts from (built by `prepare_analysis`).

    With ``X'`` the forecast anomalies, ``Y = H(X)`` the observed ensemble, ``d = y - mean(Y)``
    and ``G^T G = R^{-1}``:

    $$S = Y' G^\top / \sqrt{N_e - 1}, \qquad \delta = G d, \qquad
    Y' R^{-1} Y'^\top / (N_e - 1) = S S^\top, \qquad Y' R^{-1} d / \sqrt{N_e - 1} = S\delta.$$

    **Fields:**

    - `forecast_mean`: ``x^f`` mean, ``(N_x,)``.
    - `anomalies`: ``X' = X - mean`` (unnormalised), ``(N_e, N_x)``.
    - `observed`: ``Y = H(X_j)``, ``(N_e, N_y)`` (raw, not masked).
    - `obs_mean`: ``mean(Y)``, ``(N_y,)``.
    - `obs_anomalies`: ``Y'`` (unnormalised) with zero columns at missing entries.
    - `mask`: ``True`` where observed.
    - `innovation`: ``d``, zero at missing entries.
    - `noise`: ``R`` as a lineax operator of the user's structure, masked (`fxp.mask_noise`).
    - `whitener`: the `Whitener` ``G`` of the masked ``R``.
    - `whitened_anomalies`: ``S``, ``(N_e, N_y)``, zero columns at missing entries.
    - `whitened_innovation`: ``delta``, ``(N_y,)``, zero at missing entries.
    - `log_likelihood`: ``log N(d; 0, C^HH + R)`` over the observed entries (`fxp.log_likelihood`).
    - `noise_structure`: ``"diagonal"``, ``"low_rank"`` or ``"dense"`` (static).

    Properties `n_ensemble`, `n_state`, `n_obs_total` (static ints) and `n_obs` (traced count).
    """

    forecast_mean: Float[Array, " N_x"]
    anomalies: Float[Array, "N_e N_x"]
    observed: Float[Array, "N_e N_y"]
    obs_mean: Float[Array, " N_y"]
    obs_anomalies: Float[Array, "N_e N_y"]
    mask: Bool[Array, " N_y"]
    innovation: Float[Array, " N_y"]
    noise: lx.AbstractLinearOperator
    whitener: Whitener
    whitened_anomalies: Float[Array, "N_e N_y"]
    whitened_innovation: Float[Array, " N_y"]
    log_likelihood: Float[Array, ""]
    noise_structure: str = eqx.field(static=True)

    @property
    def n_ensemble(self) -> int:
        return self.anomalies.shape[0]

    @property
    def n_state(self) -> int:
        return self.anomalies.shape[1]

    @property
    def n_obs_total(self) -> int:
        return self.observed.shape[1]

    @property
    def n_obs(self) -> Int[Array, ""]:
        return jnp.sum(self.mask)

    @property
    def dtype(self) -> Any:
        return self.anomalies.dtype


def _check_forecast(forecast: Any, where: str) -> Array:
    shape = jnp.shape(forecast)
    if len(shape) != 2:
        raise ValueError(
            f"{where}: `forecast` must be a 2-D ensemble of shape (N_e, N_x) with members "
            f"along axis 0; got shape {shape}. Stack members with jnp.stack(members); for a "
            "single state with a covariance use KalmanFilter."
        )
    if shape[0] < 2:
        raise ValueError(
            f"{where}: the forecast has N_e={shape[0]} member(s); ensemble filters need at "
            "least 2 (anomalies are normalised by N_e - 1). Pass a larger ensemble, or use "
            "KalmanFilter for a mean/covariance description."
        )
    if shape[1] < 1:
        raise ValueError(f"{where}: the forecast has N_x=0 state components.")
    dtype = jnp.result_type(forecast)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{where}: `forecast` must be a real floating-point array (float32 or float64); "
            f"got dtype {dtype}. Cast it with .astype(jnp.float32) or .astype(jnp.float64)."
        )
    return jnp.asarray(forecast)


def _check_obs(obs: Any, where: str, dtype: Any) -> Array:
    if obs is None:
        raise ValueError(f"{where}: `obs` is required (use NaN entries for missing values).")
    shape = jnp.shape(obs)
    if len(shape) != 1:
        raise ValueError(
            f"{where}: `obs` must be a 1-D observation vector of shape (N_y,); got shape "
            f"{shape}. Assimilate one observation time per call (the assimilate loop scans "
            "over time)."
        )
    return jnp.asarray(obs).astype(dtype)


def _observe(forecast: Array, obs_op: Any, observed: Any, where: str, n_y: int) -> Array:
    n_e = forecast.shape[0]
    if observed is None:
        if not callable(obs_op):
            raise TypeError(
                f"{where}: `obs_op` must be a callable mapping ONE state (N_x,) to its "
                f"observation (N_y,) (e.g. filterax.primitives.IdentityObs()); got "
                f"{type(obs_op).__name__}."
            )
        observed = jax.vmap(obs_op)(forecast)
    shape = jnp.shape(observed)
    if len(shape) != 2 or shape[0] != n_e:
        raise ValueError(
            f"{where}: the observed ensemble H(X) must have shape (N_e, N_y) = ({n_e}, N_y); "
            f"got {shape}. `obs_op` must map ONE state of shape (N_x,) to a 1-D vector (N_y,); "
            "the filter vmaps it over members."
        )
    if shape[1] != n_y:
        raise ValueError(
            f"{where}: `obs_op` returns N_y={shape[1]} observations per member but `obs` has "
            f"length {n_y}. Pass an observation vector matching the observation operator."
        )
    return jnp.asarray(observed).astype(forecast.dtype)


def _as_noise(obs_noise: Any, n_y: int, dtype: Any, where: str) -> lx.AbstractLinearOperator:
    try:
        noise = fxp.as_noise_operator(obs_noise, n_y, dtype=dtype)
    except ValueError as err:
        raise ValueError(
            f"{where}: `obs_noise` does not match the {n_y} observations: {err}"
        ) from err
    except TypeError as err:
        raise TypeError(f"{where}: bad `obs_noise`: {err}") from err
    if isinstance(noise, fxp.LowRankUpdate) and noise.diagonal is None:
        raise ValueError(
            f"{where}: low-rank observation noise needs a positive diagonal (U U^T alone is "
            "singular). Pass filterax.primitives.low_rank_noise(factor, diagonal)."
        )
    return noise


def prepare_analysis(
    forecast: Float[ArrayLike, "N_e N_x"],
    obs: Float[ArrayLike, " N_y"],
    obs_op: Callable[..., Any] | None,
    obs_noise: Any,
    *,
    name: str = "filter",
    observed: Float[ArrayLike, "N_e N_y"] | None = None,
) -> AnalysisInputs:
    r"""Validate analysis inputs and compute the quantities every ensemble filter needs.

    $$\bar x = \tfrac1{N_e}\textstyle\sum_j x_j,\ X' = X - \bar x,\ Y = H(X),\
    d = y - \bar y,\ S = Y' G^\top/\sqrt{N_e-1},\ \delta = G d,\ G^\top G = R^{-1},$$
    $$\log p(y) = \log \mathcal N(d;\, 0,\, C^{HH} + R).$$

    All checks look only at shapes and dtypes, so they raise at trace time under `jit`.

    **Arguments:**

    - `forecast`: the forecast ensemble ``(N_e, N_x)``, ``N_e >= 2``, float32 or float64 (this
        dtype is used throughout: `obs`, ``Y`` and array noise are cast to it).
    - `obs`: the observation vector ``(N_y,)``, NaN where missing.
    - `obs_op`: a callable (or `fxp.AbstractObsOperator`) acting on ONE state; vmapped over
        members. Ignored when `observed` is given.
    - `obs_noise`: ``R`` in any form `fxp.as_noise_operator` accepts (scalar variance,
        variances, covariance matrix, lineax operator, `fxp.LowRankUpdate`).
    - `name`: the caller's name, used in error messages (e.g. ``"ETKF.analysis"``).
    - `observed`: optional precomputed ``H(X)`` of shape ``(N_e, N_y)``.

    **Returns:** an `AnalysisInputs`.

    **Raises:** `ValueError` for a non-2-D forecast, ``N_e < 2``, non-1-D `obs`, an `obs_op`
    output or `obs_noise` inconsistent with `obs`; `TypeError` for non-float ensembles or a
    non-callable `obs_op`.

    **Reference:** DAPPER ``EnKF_analysis`` preamble (``mu = mean(E)``, ``A = E - mu``,
    ``Eo = obs(E)``, ``Y = Eo - xo``, ``dy = y - xo``; whitening by ``R.sym_sqrt_inv``).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.filters._common import prepare_analysis

        X = jax.random.normal(jax.random.key(0), (10, 4))
        inputs = prepare_analysis(X, jnp.array([0.1, jnp.nan]), lambda x: x[:2], 0.5)
        inputs.whitened_anomalies.shape, inputs.n_obs  # (10, 2), 1
        ```
    """
    where = name
    forecast = _check_forecast(forecast, where)
    dtype = forecast.dtype
    obs = _check_obs(obs, where, dtype)
    n_e = forecast.shape[0]
    n_y = obs.shape[0]
    Y = _observe(forecast, obs_op, observed, where, n_y)
    noise_full = _as_noise(obs_noise, n_y, dtype, where)

    mean = jnp.mean(forecast, axis=0)
    anomalies = forecast - mean[None, :]
    mask = fxp.observation_mask(obs)
    obs_filled = fxp.fill_missing(obs, mask)
    obs_mean = jnp.mean(Y, axis=0)
    obs_anomalies = fxp.mask_anomalies(Y - obs_mean[None, :], mask)
    innovation = jnp.where(mask, obs_filled - obs_mean, jnp.zeros((), dtype))

    noise = fxp.mask_noise(noise_full, mask)
    whitener = _build_whitener(noise, dtype)
    whitened_anomalies = whitener.rows(obs_anomalies) / math.sqrt(n_e - 1)
    whitened_innovation = whitener.vector(innovation)
    loglik = jnp.asarray(fxp.log_likelihood(Y, obs, noise_full), dtype=dtype)

    return AnalysisInputs(
        forecast_mean=mean,
        anomalies=anomalies,
        observed=Y,
        obs_mean=obs_mean,
        obs_anomalies=obs_anomalies,
        mask=mask,
        innovation=innovation,
        noise=noise,
        whitener=whitener,
        whitened_anomalies=whitened_anomalies,
        whitened_innovation=whitened_innovation,
        log_likelihood=loglik,
        noise_structure=fxp.noise_structure(noise_full),
    )


def require_key(key: PRNGKeyArray | None, name: str) -> PRNGKeyArray:
    """Raise a `ValueError` naming the filter if a stochastic analysis got ``key=None``."""
    if key is None:
        raise ValueError(
            f"{name} is stochastic and needs a PRNG key: pass key=jax.random.key(seed) "
            "(the assimilate loop derives one per window with jax.random.fold_in)."
        )
    return key


def require_diagonal_noise(inputs: AnalysisInputs, name: str, alternatives: str) -> None:
    """Raise a `ValueError` unless the observation noise is diagonal (static check)."""
    if inputs.noise_structure != "diagonal":
        raise ValueError(
            f"{name} needs a diagonal observation-noise covariance R (uncorrelated "
            f"observation errors); got {inputs.noise_structure} R. Use {alternatives}, which "
            "support correlated R by whitening."
        )


def finish_transform_analysis(
    inputs: AnalysisInputs,
    weights: Float[Array, " N_e"],
    transform: Float[Array, "N_e N_e"],
) -> fxp.Analysis:
    r"""Build the `fxp.Analysis` of an ensemble-transform filter from ``(w, T)``.

    $$X^a = \mathbf 1(\bar x + X'^\top w/\sqrt{N_e-1})^\top + T X',$$

    with ``info`` a `TransformInfo` (weights, transform, the full ensemble transform ``E`` with
    ``X^a = E X^f``, the innovation and the observed count).
    """
    particles = apply_transform(inputs.forecast_mean, inputs.anomalies, weights, transform)
    info = TransformInfo(
        weights=weights,
        transform=transform,
        ensemble_transform=full_transform(weights, transform),
        innovation=inputs.innovation,
        n_obs=inputs.n_obs,
    )
    return fxp.Analysis(particles, inputs.log_likelihood, info)
