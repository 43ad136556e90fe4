r"""Analysis preparation shared by every ensemble filter in `filterax.filters`.

`prepare_analysis` validates the inputs of ``filter.analysis(key, forecast, obs, obs_op,
obs_noise)`` at trace time and returns an `AnalysisInputs` holding everything an ensemble Kalman
analysis starts from: forecast mean and anomalies, the observed ensemble and its anomalies, the
missing-observation mask, the innovation, the whitened quantities

$$S = Y' G^\top / \sqrt{N_e - 1}, \qquad \delta = G d, \qquad G^\top G = R^{-1},$$

and the forecast log-likelihood ``log N(d; 0, C^HH + R)``. Missing (NaN) observations follow
`filterax.primitives` (docs/conventions.md): their innovation entries and anomaly columns are
zero and their rows/columns of ``R`` are the identity's, so every downstream quantity equals
that of the observed subset and no NaN reaches arithmetic or gradients.

The whitening ``G`` is `filterax.primitives.noise_whitening` of the masked ``R``, chosen by the
operator's type (never densifying what need not be dense): diagonal ``G = diag(r^{-1/2})``;
dense ``G = L^{-1}`` (Cholesky, triangular solves); low-rank-plus-diagonal ``R = D + U U^T``
``G = (I + W W^T)^{-1/2} D^{-1/2}``, ``W = D^{-1/2} U``, through the gradient-safe spectral
function (a ``min(k, N_y)``-sized eigenproblem); any structure registered with
``noise_whitening.register``.

The observation operator may be anything `filterax.primitives.apply_obs` accepts: a callable
on ONE state, a lineax operator, or an ``(N_y, N_x)`` matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

import filterax.primitives as fxp

__all__ = [
    "AnalysisInputs",
    "check_obs_noise",
    "prepare_analysis",
    "require_diagonal_noise",
    "require_key",
]


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
    - `whitener`: the `fxp.Whitening` of the masked ``R`` (``G`` is its `whiten`).
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
    whitener: fxp.Whitening
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
    if not isinstance(forecast, jax.core.Tracer):
        # A concrete ensemble (a direct, eager call) is checked here; inside a run the driver
        # reports a non-finite forecast as status NONFINITE.
        fxp.check_parameter(
            forecast,
            f"{where}: `forecast`",
            allow_inf=False,
            hint="NaN marks a missing observation, not a missing state; the ensemble must be "
            "finite (a blown-up forecast needs a smaller time step or less inflation).",
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
    n_e, n_x = forecast.shape
    if observed is None:
        if isinstance(obs_op, jax.Array | np.ndarray):
            if jnp.ndim(obs_op) != 2 or jnp.shape(obs_op)[1] != n_x:
                raise ValueError(
                    f"{where}: an observation operator given as a matrix must have shape "
                    f"(N_y, N_x) = (N_y, {n_x}); got {jnp.shape(obs_op)}."
                )
        elif isinstance(obs_op, lx.AbstractLinearOperator):
            if obs_op.in_size() != n_x:
                raise ValueError(
                    f"{where}: the lineax observation operator takes vectors of size "
                    f"{obs_op.in_size()} but the state has N_x={n_x}; pass an operator of shape "
                    f"(N_y, {n_x})."
                )
        elif not callable(obs_op):
            raise TypeError(
                f"{where}: `obs_op` must be a callable mapping ONE state (N_x,) to its "
                "observation (N_y,) (e.g. filterax.primitives.IdentityObs()), a lineax operator "
                f"or an (N_y, N_x) matrix; got {type(obs_op).__name__}."
            )
        observed = jax.vmap(lambda x: fxp.apply_obs(obs_op, x))(forecast)
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


def check_obs_noise(
    obs_noise: fxp.NoiseLike, n_y: int, dtype: Any, name: str = "filter"
) -> lx.AbstractLinearOperator:
    r"""Validate an observation-noise argument and return it as an ``(N_y, N_y)`` operator.

    $$R \in \mathbb R^{N_y \times N_y},\ R = R^\top \succ 0 .$$

    `fxp.as_noise_operator` with messages that name the caller, plus the check that a
    `fxp.LowRankUpdate` has the positive diagonal the whitening needs.

    **Arguments:**

    - `obs_noise`: ``R`` in any form `fxp.as_noise_operator` accepts.
    - `n_y`: the number of observations (static int).
    - `dtype`: the ensemble dtype (array noise is cast to it).
    - `name`: the caller, used in error messages.

    **Returns:** the lineax operator.

    **Raises:** `ValueError` for a size mismatch or a low-rank ``R`` without a diagonal;
    `TypeError` for an unsupported type.

    **Reference:** DAPPER ``GaussRV(C=...)`` accepts the same forms.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.filters import check_obs_noise

        check_obs_noise(0.5, 3, jnp.float64, "my_filter")  # isotropic 0.5 I_3
        ```
    """
    try:
        noise = fxp.as_noise_operator(obs_noise, n_y, dtype=dtype)
    except ValueError as err:
        raise ValueError(
            f"{name}: `obs_noise` does not match the {n_y} observations: {err}"
        ) from err
    except TypeError as err:
        raise TypeError(f"{name}: bad `obs_noise`: {err}") from err
    if isinstance(noise, fxp.LowRankUpdate) and noise.diagonal is None:
        raise ValueError(
            f"{name}: low-rank observation noise needs a positive diagonal (U U^T alone is "
            "singular). Pass filterax.primitives.low_rank_noise(factor, diagonal)."
        )
    return noise


def prepare_analysis(
    forecast: Float[ArrayLike, "N_e N_x"],
    obs: Float[ArrayLike, " N_y"],
    obs_op: Any,
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
    - `obs_op`: the observation operator in any form `fxp.apply_obs` accepts: a callable (or
        `fxp.AbstractObsOperator`) acting on ONE state, a lineax operator or an ``(N_y, N_x)``
        matrix; vmapped over members. Ignored when `observed` is given.
    - `obs_noise`: ``R`` in any form `fxp.as_noise_operator` accepts (scalar variance,
        variances, covariance matrix, lineax operator, `fxp.LowRankUpdate`).
    - `name`: the caller's name, used in error messages (e.g. ``"ETKF.analysis"``).
    - `observed`: optional precomputed ``H(X)`` of shape ``(N_e, N_y)``.

    **Returns:** an `AnalysisInputs`.

    **Raises:** `ValueError` for a non-2-D forecast, ``N_e < 2``, non-1-D `obs`, an `obs_op`
    output or `obs_noise` inconsistent with `obs`; `TypeError` for non-float ensembles or an
    `obs_op` that is neither callable, a lineax operator nor a matrix.

    **Reference:** DAPPER ``EnKF_analysis`` preamble (``mu = mean(E)``, ``A = E - mu``,
    ``Eo = obs(E)``, ``Y = Eo - xo``, ``dy = y - xo``; whitening by ``R.sym_sqrt_inv``).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.filters import prepare_analysis

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
    noise_full = check_obs_noise(obs_noise, n_y, dtype, where)

    mean = jnp.mean(forecast, axis=0)
    anomalies = forecast - mean[None, :]
    mask = fxp.observation_mask(obs)
    obs_filled = fxp.fill_missing(obs, mask)
    obs_mean = jnp.mean(Y, axis=0)
    obs_anomalies = fxp.mask_anomalies(Y - obs_mean[None, :], mask)
    innovation = jnp.where(mask, obs_filled - obs_mean, jnp.zeros((), dtype))

    noise = fxp.mask_noise(noise_full, mask)
    whitener = fxp.noise_whitening(noise, dtype)
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


def require_no_context(context: Mapping[str, Any], name: str) -> None:
    """Raise a `TypeError` if a filter that takes no context keywords got some.

    A global filter has no use for coordinates or a localizer: accepting them silently would
    make e.g. ``EnsembleFilter(ETKF(), context={"localizer": ...})`` look localised when it
    is not.
    """
    if context:
        raise TypeError(
            f"{name} takes no context keywords, so {sorted(context)} would be ignored. "
            "Localise with LETKF (which takes its coordinates and distance from the model or "
            "from context), or pass the keywords to a filter whose analysis accepts them."
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
