r"""Rauch–Tung–Striebel smoothers: the ensemble RTS, its square-root variant and the exact RTS.

The backward pass of the Rauch–Tung–Striebel smoother needs only the filter's forecast and
analysis distributions, not the observations:

$$x^s_k = x^a_k + G_k (x^s_{k+1} - x^f_{k+1}),\qquad
P^s_k = P^a_k + G_k (P^s_{k+1} - P^f_{k+1}) G_k^\top,\qquad
G_k = P^a_k M_k^\top (P^f_{k+1})^{-1},$$

with ``M_k`` the transition from ``t_k`` to ``t_{k+1}``. For ensembles, with ``A`` the
analysis anomalies at ``k`` and ``F`` the forecast anomalies at ``k + 1`` (rows = members),
the ensemble cross-covariance ``A^T F / (N_e - 1)`` stands in for ``P^a M^T`` and the gain
acts on rows in its *dual* (ensemble-space) form (Raanes 2016):

$$d\, G_k^\top = d\, F^\top (F F^\top)^+ A ,$$

an ``N_e x N_e`` pseudo-inverse instead of an ``N_x x N_x`` inverse.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.primitives import matmul, pinv_psd, sqrt_psd

from ._base import (
    AbstractEnsembleSmoother,
    build_result,
    check_context,
    check_history,
    is_localised,
    valid_cycles,
    where_rows,
)
from ._result import SmootherResult

__all__ = ["EnsembleRTS", "EnsembleSqrtSmoother", "GaussianSmoothResult", "rts_smooth"]


def _check_rcond(rcond: Any) -> None:
    if rcond is not None and not (isinstance(rcond, float | int) and 0 <= rcond < 1):
        raise ValueError(
            f"rcond must be None (the default 10 N_e eps) or a float in [0, 1); got {rcond!r}."
        )


def _decorr_field(owner: str) -> Any:
    # Checked by the converter whenever the smoother is built: a concrete value (Python or
    # array) at once, a traced one (a smoother built under vmap/grad over decorr) when the
    # program runs; it used to check Python numbers only, so decorr=jnp.asarray(-1.0) or a
    # vmapped sweep with a bad member smoothed silently.
    return eqx.field(
        default=1.0,
        converter=fxp.parameter_converter(
            f"{owner}.decorr",
            low=0.0,
            low_open=True,
            high=1.0,
            hint="(DAPPER's DeCorr: 1 = no damping of the smoother gain.)",
        ),
    )


def check_regression_filter(filt: Any, context: Any, where: str) -> None:
    """The RTS smoothers need to know the run's filter, and refuse localised ones."""
    if filt is None:
        raise ValueError(
            f"{where} needs the filter that made the history (filt=..., e.g. ETKF()): its "
            "forecast-analysis regression is only right after a global filter and is refused "
            "after a localised one (LETKF), so it must know which. observations, obs_op, "
            "obs_noise and key may stay None."
        )
    if is_localised(filt, check_context(context)):
        raise ValueError(
            f"{where} cannot smooth the run of a localised filter ({type(filt).__name__}): "
            "every grid point has its own analysis transform, so the ensemble-space "
            "regression mixes them and the backward pass is unstable (measured on Lorenz-96, "
            "LETKF N=20: rmse.s 0.88 against the filter's 0.22; Lorenz-63: 1e12 and more). "
            "Use EnKS() or FixedLagSmoother(lag): their smooth(filt, history, observations, "
            "obs_op, obs_noise, key=key, context=context, rotate=rotate) replays the "
            "filter's local transforms (a local EnKS; rmse.s 0.13 on the same run)."
        )
    if not callable(getattr(filt, "analysis", None)):
        raise TypeError(
            "filt must be the sequential filter of the run (with an analysis(key, forecast, "
            f"obs, obs_op, obs_noise, **context) method); got {type(filt).__name__}."
        )


def _backward_inputs(history: ff.AssimilationResult) -> tuple[Array, Array, Array]:
    valid = valid_cycles(history)
    # Frozen rows become zeros: then F = 0, the pseudo-inverse is 0 and the increment is 0,
    # so no NaN enters the arithmetic (or its gradient).
    analyses = where_rows(valid, history.ensembles, 0.0)
    forecasts = where_rows(valid, history.forecast_ensembles, 0.0)
    return analyses, forecasts, valid


def _centre(x: Array) -> tuple[Array, Array]:
    mean = jnp.mean(x, axis=0)
    return mean, x - mean[None, :]


def _rts_backward(
    analyses: Array, forecasts: Array, valid: Array, step: Any
) -> Float[Array, "T N_e N_x"]:
    if analyses.shape[0] == 1:
        return analyses

    def body(smoothed_next, inputs):
        smoothed = step(smoothed_next, *inputs)
        return smoothed, smoothed

    _, rows = jax.lax.scan(
        body, analyses[-1], (analyses[:-1], forecasts[1:], valid[1:]), reverse=True
    )
    return jnp.concatenate([rows, analyses[-1:]], axis=0)


class _AbstractRegressionSmoother(AbstractEnsembleSmoother):
    """Shared by the RTS smoothers: a reverse scan of `backward_step` over the stored
    forecast/analysis pairs, with the pseudo-inverse threshold `rcond` and gain factor
    `decorr` (fields declared by the concrete classes)."""

    rcond: eqx.AbstractVar[float | None]
    decorr: eqx.AbstractVar[float | Array]

    def __check_init__(self) -> None:
        _check_rcond(self.rcond)

    @abc.abstractmethod
    def backward_step(
        self,
        smoothed_next: Float[Array, "N_e N_x"],
        analysis: Float[Array, "N_e N_x"],
        forecast_next: Float[Array, "N_e N_x"],
        valid_next: Any,
    ) -> Float[Array, "N_e N_x"]:
        """One step ``X^s_k`` from ``X^s_{k+1}``, ``X^a_k``, ``X^f_{k+1}``."""

    def smooth(
        self,
        filt: Any,
        history: ff.AssimilationResult,
        observations: Float[ArrayLike, "T N_y"] | None,
        obs_op: Any,
        obs_noise: Any,
        *,
        key: PRNGKeyArray | None = None,
        context: Mapping[str, Any] | None = None,
        save_ensembles: bool = False,
        rotate: bool = False,
        check_replay: bool = True,
    ) -> SmootherResult:
        """Smooth `history` backwards. `filt` (the run's filter) is required and must be a
        global filter; `observations`, `obs_op`, `obs_noise`, `key`, `rotate` and
        `check_replay` are not used (the regression pairs the stored members; nothing is
        replayed) and may be ``None``; `context` is only looked at for a ``localizer``."""
        del observations, obs_op, obs_noise, key, rotate, check_replay
        check_regression_filter(filt, context, f"{type(self).__name__}.smooth")
        check_history(history)
        return _smooth_rts(self, history, bool(save_ensembles))


class EnsembleRTS(_AbstractRegressionSmoother):
    r"""The ensemble Rauch–Tung–Striebel smoother (Raanes 2016), in dual form.

    A backward pass over the saved forecast and analysis ensembles:

    $$X^s_k = X^a_k + (X^s_{k+1} - X^f_{k+1})\, G_k^\top,\qquad
    D\, G_k^\top = D\, F^\top (F F^\top)^+ A,$$

    with ``A`` the anomalies of ``X^a_k``, ``F`` those of ``X^f_{k+1}`` and ``(F F^T)^+``
    the ``N_e x N_e`` pseudo-inverse (`filterax.primitives.pinv_psd`): eigenvalues of
    ``F F^T`` below ``rcond * lambda_max`` count as zero (default ``rcond = 10 N_e eps``, i.e.
    singular values of ``F`` below ~``sqrt(10 N_e eps)`` of the largest; the constant vector
    ``1`` is always in the null space). Starting from ``X^s_{T-1} = X^a_{T-1}``; one reverse
    `lax.scan`.

    It needs no observations or key (`smooth` ignores `observations`, `obs_op`,
    `obs_noise`, `key`; they may be ``None``), but it needs `filt`, the run's filter: the
    regression is right only after a *global* filter. On a linear deterministic model with
    ``rank(F) = N_e - 1`` (so ``N_e - 1 <= N_x``) it equals the `EnKS` of a square-root
    filter; with an exact ensemble (``N_e > N_x``) its mean and covariance are the RTS
    smoother's. With model noise or nonlinear dynamics it differs from the EnKS (it uses the
    forecast–analysis regression instead of the filter's transforms).

    Localised filters (`LETKF`, any `filterax.primitives.AbstractLocalFilter`, or a filter
    given a ``localizer``) are refused with a `ValueError`: their analysis has one transform
    per grid point, the ensemble-space regression mixes them, and the backward pass is
    unstable (measured, LETKF N=20 on Lorenz-96: rmse.s 0.88 against the filter's 0.22, and
    a regression localised per grid point is no better). Smooth those runs with the `EnKS`
    or `FixedLagSmoother`, which replay the local transforms (a local EnKS).

    Frozen (non-finite) cycles are skipped (no increment crosses them); their rows stay NaN.

    Inflation: the regression uses the *stored* (inflated) ensembles, so with
    ``decorr = 1`` a multiplicative inflation ``lambda`` per cycle amplifies the influence of
    the observation ``j`` cycles later by about ``lambda^j`` relative to the `EnKS` (measured
    on Lorenz-96, ETKF N=20, inflation 1.04: rmse_s 0.37 vs the filter's 0.17): the
    regression also carries the inflation's expansion of the anomalies back in time. DAPPER
    damps this with ``DeCorr < 1``, a factor on the gain: `decorr` here (a tuning parameter;
    no single value makes an inflated EnRTS equal to the EnKS).

    !!! warning

        Over long inflated runs the backward recursion can blow up (measured: Lorenz-96,
        ETKF N=20, inflation 1.05, rotation, 300 cycles, float32: rmse_s 15 against the
        filter's 0.20 and the EnKS's 0.10). Use the `EnKS` / `FixedLagSmoother` after an
        inflated run; use the RTS smoothers for runs of global filters without inflation
        (or with a tuned ``decorr < 1``).

    **Arguments:**

    - `rcond`: relative eigenvalue threshold of the pseudo-inverse (static), ``None`` for
      the default.
    - `decorr`: factor ``c`` in ``(0, 1]`` multiplying the smoother gain ``G_k`` (DAPPER's
      ``DeCorr``; ``1`` = the plain EnRTS). Dynamic: it can be vmapped / differentiated.

    **Reference:** P. N. Raanes (2016), "On the ensemble Rauch-Tung-Striebel smoother and its
    equivalence to the ensemble Kalman smoother", *QJRMS* 142, 1259-1264; H. E. Rauch,
    F. Tung & C. T. Striebel (1965), *AIAA J.* 3, 1445-1450. DAPPER equivalent:
    ``dapper.da_methods.ensemble.EnRTS(upd_a, N, DeCorr=1)`` (DAPPER uses ``tinv`` on ``F``,
    a truncated-SVD pseudo-inverse).

    **Example:**

    ```python
    history = assimilate(ETKF(), ..., save="forecast_and_analysis")
    out = EnsembleRTS().smooth(ETKF(), history, None, None, None, key=None)
    ```
    """

    rcond: float | None = eqx.field(default=None, static=True)
    decorr: float | Array = _decorr_field("EnsembleRTS")

    def backward_step(
        self,
        smoothed_next: Float[Array, "N_e N_x"],
        analysis: Float[Array, "N_e N_x"],
        forecast_next: Float[Array, "N_e N_x"],
        valid_next: Any,
    ) -> Float[Array, "N_e N_x"]:
        """One step ``X^s_k`` from ``X^s_{k+1}``, ``X^a_k``, ``X^f_{k+1}``."""
        _, a = _centre(analysis)
        _, f = _centre(forecast_next)
        d = jnp.where(valid_next, smoothed_next - forecast_next, 0.0)
        gram_pinv = pinv_psd(matmul(f, f.T), self.rcond)
        coefficients = matmul(matmul(d, f.T), gram_pinv)
        return analysis + self.decorr * matmul(coefficients, a)


class EnsembleSqrtSmoother(_AbstractRegressionSmoother):
    r"""A deterministic square-root RTS smoother: RTS mean, exact RTS covariance.

    Backward pass over the saved ensembles with ``A``, ``F``, ``S`` the anomalies of
    ``X^a_k``, ``X^f_{k+1}`` and ``X^s_{k+1}``:

    $$\bar x^s_k = \bar x^a_k + (\bar x^s_{k+1} - \bar x^f_{k+1})\, F^\top (F F^\top)^+ A,$$

    $$A^s_k = \Lambda^{1/2} A,\qquad
    \Lambda = (I - \Pi) + K_e S^\top S K_e^\top,\qquad K_e = (F F^\top)^+ F,\quad
    \Pi = K_e F^\top ,$$

    so the smoothed sample covariance is exactly the RTS one,
    ``A^T Lambda A / (N_e - 1) = P^a + G (P^s_{k+1} - P^f_{k+1}) G^T`` with the dual gain of
    `EnsembleRTS` (``A^T Pi A`` is ``G P^f G^T``). ``Lambda 1 = 1`` (``1`` is in the null
    space of ``F F^T``), so the symmetric root keeps the anomalies centred; ``Lambda`` is PSD
    by construction. Unlike `EnsembleRTS`, the anomaly update is deterministic and does not
    depend on the members' pairing across times, so it matches the RTS covariance also with
    model noise. The pseudo-inverse is `pinv_psd` (threshold as in `EnsembleRTS`); the
    square root is `sqrt_psd`: eigendecomposition with negative round-off clipped to zero and
    a Daleckii–Krein derivative, finite at the repeated eigenvalue ``1`` of ``I - Pi``.

    It needs no observations or key (`smooth` ignores them; they may be ``None``), but
    `filt` must be given, and localised filters are refused, as for `EnsembleRTS`.
    The inflation remark of `EnsembleRTS` applies (same gain): with ``decorr = c`` the gain
    is ``c G_k`` and ``Lambda = I - c^2 Pi + c^2 K_e S^T S K_e^T`` (PSD for ``c <= 1``).

    **Arguments:**

    - `rcond`: relative eigenvalue threshold of the pseudo-inverse (static).
    - `decorr`: gain factor in ``(0, 1]`` as in `EnsembleRTS`.

    **Reference:** P. N. Raanes (2016), *QJRMS* 142, 1259-1264 (dual gain);
    H. E. Rauch, F. Tung & C. T. Striebel (1965), *AIAA J.* 3; the square-root anomaly
    update follows the symmetric square-root filters (Hunt, Kostelich & Szunyogh 2007,
    *Physica D* 230). DAPPER has no equivalent.

    **Example:**

    ```python
    out = EnsembleSqrtSmoother().smooth(ETKF(), history, None, None, None, key=None)
    ```
    """

    rcond: float | None = eqx.field(default=None, static=True)
    decorr: float | Array = _decorr_field("EnsembleSqrtSmoother")

    def backward_step(
        self,
        smoothed_next: Float[Array, "N_e N_x"],
        analysis: Float[Array, "N_e N_x"],
        forecast_next: Float[Array, "N_e N_x"],
        valid_next: Any,
    ) -> Float[Array, "N_e N_x"]:
        """One step ``X^s_k`` from ``X^s_{k+1}``, ``X^a_k``, ``X^f_{k+1}``."""
        n_e = analysis.shape[0]
        mean_a, a = _centre(analysis)
        mean_f, f = _centre(forecast_next)
        mean_s, s = _centre(jnp.where(valid_next, smoothed_next, forecast_next))
        gram = matmul(f, f.T)
        gram_pinv = pinv_psd(gram, self.rcond)
        c = jnp.asarray(self.decorr, a.dtype)
        mean = mean_a + c * matmul(matmul(matmul(f, mean_s - mean_f), gram_pinv), a)
        z = matmul(gram_pinv, matmul(f, s.T))  # K_e S^T
        projector = matmul(gram_pinv, gram)
        lam = jnp.eye(n_e, dtype=a.dtype) - c**2 * (projector - matmul(z, z.T))
        anomalies = matmul(sqrt_psd(lam), a)
        anomalies = anomalies - jnp.mean(anomalies, axis=0)[None, :]
        return mean[None, :] + anomalies


@eqx.filter_jit
def _smooth_rts(smoother: Any, history: ff.AssimilationResult, save_ensembles: bool):
    analyses, forecasts, valid = _backward_inputs(history)
    smoothed = _rts_backward(analyses, forecasts, valid, smoother.backward_step)
    return build_result(history, smoothed, save_ensembles)


class GaussianSmoothResult(eqx.Module):
    """What `rts_smooth` returns: the smoothed Gaussian at every observation time.

    **Fields:**

    - `mean`: ``(T, N_x)`` smoothed means.
    - `cov`: ``(T, N_x, N_x)`` smoothed covariances.
    - `status`: ``0`` ok; the filter run's status when it failed (``1`` non-finite, ``3``
      invalid times, ``4`` invalid noise; its NaN rows make every smoothed row NaN); ``3``
      for traced `obs_times` that are not finite and increasing (nothing is integrated);
      ``1`` for a NaN/inf smoothed row otherwise (``2``, diverged, is passed on). ``None``
      for a result built by hand.
    - `first_failure`: the first failing row (``-1`` if none), ``None`` with `status`.
    """

    mean: Float[Array, "T N_x"]
    cov: Float[Array, "T N_x N_x"]
    status: Int[Array, ""] | None = None
    first_failure: Int[Array, ""] | None = None


def _transition_jacobian(dynamics: Any, x: Array, t0: Any, t1: Any) -> Array:
    if isinstance(dynamics, lx.AbstractLinearOperator):
        return jnp.asarray(dynamics.as_matrix()).astype(x.dtype)
    if isinstance(dynamics, jax.Array | np.ndarray):
        return jnp.asarray(dynamics).astype(x.dtype)
    # Reverse mode: the zoo's stepped models support forward mode only for a static number
    # of steps, and the interval is traced inside the scan.
    return jax.jacrev(lambda z: jnp.asarray(dynamics(z, t0, t1)).astype(x.dtype))(x)


def rts_smooth(
    result: ff.KalmanResult,
    dynamics: Any,
    obs_times: Real[ArrayLike, " T"],
    *,
    t0: Real[ArrayLike, ""] = 0.0,
    process_noise: Any = None,
) -> GaussianSmoothResult:
    r"""The Rauch–Tung–Striebel smoother: exact backward pass on a Kalman filter run.

    $$G_k = P^a_k M_k^\top (P^f_{k+1})^{-1},\quad
    x^s_k = x^a_k + G_k (x^s_{k+1} - x^f_{k+1}),\quad
    P^s_k = P^a_k + G_k (P^s_{k+1} - P^f_{k+1}) G_k^\top ,$$

    from ``x^s_{T-1} = x^a_{T-1}``, ``P^s_{T-1} = P^a_{T-1}``, one reverse `lax.scan`.
    ``G_k^T = (P^f_{k+1})^{-1} M_k P^a_k`` comes from a linear solve, never an inverse. The
    forecast moments ``x^f_{k+1}``, ``P^f_{k+1}`` are read from `result` (they already hold
    the process noise and any inflation the filter applied). ``M_k`` is the Jacobian of
    ``dynamics(., t_k, t_{k+1})`` at the analysis mean ``x^a_k`` (a matrix or lineax operator
    is used as is; a callable is differentiated with `jax.jacrev`): exact for linear models,
    the extended RTS smoother otherwise.

    **Arguments:**

    - `result`: the `KalmanResult` of ``KalmanFilter().filter(...)`` (or `ExtendedKF`,
      `SquareRootKF`) with ``save_cov="full"``.
    - `dynamics`: the dynamics given to the filter (a deterministic callable
      ``dynamics(x, t0, t1)``, an ``(N_x, N_x)`` matrix or a lineax operator).
    - `obs_times`: ``(T,)`` the observation times of the run.
    - `t0`, `process_noise`: accepted so that the keywords of ``filter(...)`` can be passed
      on unchanged; not needed by the backward pass (it starts at ``t_0`` of the first
      observation, and ``Q`` is already in ``P^f``).

    **Returns:** a `GaussianSmoothResult` ``(mean (T, N_x), cov (T, N_x, N_x))``.

    **Reference:** H. E. Rauch, F. Tung & C. T. Striebel (1965), "Maximum likelihood
    estimates of linear dynamic systems", *AIAA J.* 3, 1445-1450. DAPPER equivalent:
    ``dapper.da_methods.extended.ExtRTS``.

    **Example:**

    ```python
    kf = KalmanFilter().filter(m0, P0, ys, times, A, H, R)
    smoothed = rts_smooth(kf, A, times)
    smoothed.mean, smoothed.cov
    ```
    """
    del process_noise
    if not isinstance(result, ff.KalmanResult):
        raise TypeError(
            "result must be the KalmanResult of KalmanFilter().filter(...); got "
            f"{type(result).__name__}."
        )
    if jnp.ndim(result.cov) != 3 or jnp.ndim(result.forecast_cov) != 3:
        raise ValueError(
            "rts_smooth needs the full (T, N_x, N_x) covariances: run the filter with "
            "save_cov='full'."
        )
    n_times, n_x = result.mean.shape
    if n_times < 1:
        raise ValueError("result is empty (T = 0): there is nothing to smooth.")
    for name in ("mean", "cov", "forecast_mean", "forecast_cov"):
        dtype = jnp.result_type(getattr(result, name))
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"result.{name} must be floating point; got dtype {dtype}. Pass the KalmanResult "
                "that KalmanFilter().filter(...) returned."
            )
    if jnp.ndim(t0) != 0:
        raise ValueError(f"t0 must be a scalar time; got shape {jnp.shape(t0)}.")
    obs_times = jnp.asarray(obs_times)
    if obs_times.shape != (n_times,):
        raise ValueError(
            f"obs_times must have shape (T,) = ({n_times},), one time per row of result; got "
            f"{obs_times.shape}."
        )
    # The Jacobians integrate the dynamics between these times: NaN or decreasing times used
    # to give a plausible but wrong smoother, an infinite one never returned.
    # concrete times (as filterax.filters.run); traced ones get status 3 (`_rts_smooth`)
    ff.check_times(obs_times, t0, "rts_smooth")
    _check_kalman_rows_finite(result)
    if isinstance(dynamics, fxp.AbstractStochasticDynamics):
        raise TypeError(
            "this dynamics draws its own noise (an AbstractStochasticDynamics). Pass its "
            "deterministic part (e.g. StochasticDynamics.dynamics), as given to the Kalman filter."
        )
    return _rts_smooth(result, dynamics, obs_times, t0)


def _kalman_rows_valid(result: ff.KalmanResult) -> Array:
    """Rows the filter assimilated (status OK or DIVERGED); every row of a hand-built result."""
    if result.cycle_status is None:
        return jnp.ones(result.mean.shape[0], dtype=bool)
    status = result.cycle_status
    return (status == ff.KalmanResult.OK) | (status == ff.KalmanResult.DIVERGED)


def _check_kalman_rows_finite(result: ff.KalmanResult) -> None:
    """Refuse a concrete result with a NaN/inf entry in a row its status calls assimilated
    (changed after the run or built by hand); traced ones get status 1 (`_rts_smooth`)."""
    valid = fxp.concrete_value(_kalman_rows_valid(result))
    if valid is None:
        return
    for name in ("mean", "cov", "forecast_mean", "forecast_cov"):
        values = fxp.concrete_value(getattr(result, name))
        if values is None:
            continue
        rows = ~np.all(np.isfinite(values.reshape(values.shape[0], -1)), axis=1) & valid
        if rows.any():
            k = int(np.argmax(rows))
            raise ValueError(
                f"rts_smooth: result.{name} has a non-finite entry in row {k}, which the "
                "filter's cycle_status calls assimilated: the result was changed after the "
                "run or built by hand. Pass the KalmanResult that KalmanFilter().filter(...) "
                "returned."
            )


def _smooth_status(
    result: ff.KalmanResult, times_ok: Array, mean: Array, cov: Array
) -> tuple[Array, Array]:
    """``(status, first_failure)`` of a `GaussianSmoothResult` (see its fields)."""
    ok, nonfinite = ff.KalmanResult.OK, ff.KalmanResult.NONFINITE
    diverged, invalid_times = ff.KalmanResult.DIVERGED, ff.KalmanResult.INVALID_TIMES
    status_in = jnp.asarray(ok if result.status is None else result.status, jnp.int32)
    first_in = jnp.asarray(-1 if result.first_failure is None else result.first_failure, jnp.int32)
    failed_in = (status_in != ok) & (status_in != diverged)
    # A smoothed row that is not finite, or a traced input row the filter calls assimilated
    # with a NaN/inf entry (the eager check sees only concrete ones).
    inputs_finite = jnp.ones(mean.shape[0], dtype=bool)
    for x in (result.mean, result.cov, result.forecast_mean, result.forecast_cov):
        inputs_finite &= jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
    broken = ~(
        jnp.all(jnp.isfinite(mean), axis=-1)
        & jnp.all(jnp.isfinite(cov), axis=(-2, -1))
        & (inputs_finite | ~_kalman_rows_valid(result))
    )
    status = jnp.where(
        ~times_ok,
        invalid_times,
        jnp.where(failed_in, status_in, jnp.where(jnp.any(broken), nonfinite, status_in)),
    ).astype(jnp.int32)
    first_failure = jnp.where(
        ~times_ok,
        0,
        jnp.where(
            failed_in | ~jnp.any(broken),
            first_in,
            jnp.where(
                (first_in >= 0) & (first_in < jnp.argmax(broken)), first_in, jnp.argmax(broken)
            ),
        ),
    ).astype(jnp.int32)
    return status, first_failure


@eqx.filter_jit
def _rts_smooth(
    result: ff.KalmanResult, dynamics: Any, obs_times: Array, t0: Any
) -> GaussianSmoothResult:
    # Traced times (under jit/vmap/grad) are checked here: invalid ones integrate nothing
    # (an infinite interval would be an unbounded number of integrator steps) and give
    # status 3 with NaN rows, as in filterax.filters.run.
    t0 = jnp.asarray(t0)
    times_ok = (
        jnp.all(jnp.isfinite(obs_times))
        & jnp.isfinite(t0)
        & jnp.all(obs_times[1:] > obs_times[:-1])
        & (obs_times[0] >= t0)
    )
    obs_times = jnp.where(times_ok, obs_times, jnp.zeros_like(obs_times))
    mean_a, cov_a = result.mean, result.cov
    if mean_a.shape[0] == 1:
        status, first_failure = _smooth_status(result, times_ok, mean_a, cov_a)
        return GaussianSmoothResult(mean_a, cov_a, status, first_failure)

    def step(carry, inputs):
        mean_next, cov_next = carry
        mean, cov, mean_f, cov_f, t_a, t_b = inputs
        jac = _transition_jacobian(dynamics, mean, t_a, t_b)
        gain_t = jnp.linalg.solve(cov_f, matmul(jac, cov))  # G^T = (P^f)^{-1} M P^a
        mean_s = mean + matmul(gain_t.T, mean_next - mean_f)
        cov_s = cov + matmul(gain_t.T, matmul(cov_next - cov_f, gain_t))
        cov_s = 0.5 * (cov_s + cov_s.T)
        return (mean_s, cov_s), (mean_s, cov_s)

    inputs = (
        mean_a[:-1],
        cov_a[:-1],
        result.forecast_mean[1:],
        result.forecast_cov[1:],
        obs_times[:-1],
        obs_times[1:],
    )
    _, (means, covs) = jax.lax.scan(step, (mean_a[-1], cov_a[-1]), inputs, reverse=True)
    mean = jnp.where(times_ok, jnp.concatenate([means, mean_a[-1:]]), jnp.nan)
    cov = jnp.where(times_ok, jnp.concatenate([covs, cov_a[-1:]]), jnp.nan)
    status, first_failure = _smooth_status(result, times_ok, mean, cov)
    return GaussianSmoothResult(mean, cov, status, first_failure)
