r"""The four-dimensional ensemble Kalman filter (4D-EnKF) of Hunt et al. (2004).

Observations made at several times inside a window of `lag` observation cycles are assimilated
at once, through the ensemble *trajectories*: between two analyses the ensemble is only
forecast, and at each observation time ``t_j`` of the window the forecast members are observed,
``Y_j = H(X(t_j))``. With ``G_j^\top G_j = R_j^{-1}`` (whitening, missing entries zero-weighted)
the whitened, normalised observed anomalies and innovations of time ``j`` are

$$S_j = (Y_j - \bar Y_j)\, G_j^\top / \sqrt{N_e - 1},\qquad \delta_j = G_j (y_j - \bar y_j),$$

and stacking them over the window, ``S = [S_1, \dots, S_L]``, ``\delta = [\delta_1; \dots;
\delta_L]``, one ETKF transform is computed in ensemble space at the window end ``t_L``:

$$T = (I_{N_e} + S S^\top)^{-1/2},\qquad w = T^2 S\delta,\qquad
X^a(t_L) = \mathbf 1\big(\bar x(t_L) + X'(t_L)^\top w/\sqrt{N_e-1}\big)^\top + T X'(t_L).$$

Because the stacked ``S`` enters only through ``S S^\top = \sum_j S_j S_j^\top`` and
``S\delta = \sum_j S_j\delta_j``, the State carries these running sums (``O(N_e^2)`` whatever
the lag and ``N_y``): assimilating the window's observations in any order gives the same
weights. The ensemble-space weights ``(w, T)`` are valid at any time of the window (Hunt et al.
2004, §2): applied to the ensemble at the window start they give the smoothed window-start
estimate, which the method reports too. For a linear perfect model the analysis at the window
end has the mean and covariance of the sequential ETKF (the ensemble-space posterior does not
depend on how the observations are grouped).

**Reference:** B. R. Hunt, E. Kalnay, E. J. Kostelich, E. Ott, D. J. Patil, T. Sauer,
I. Szunyogh, J. A. Yorke & A. V. Zimin (2004), "Four-dimensional ensemble Kalman filtering",
*Tellus A* 56, 273-277; the ETKF transform of Hunt, Kostelich & Szunyogh (2007), *Physica D*
230. DAPPER has no 4D-EnKF; its ``EnKF("Sqrt", N)`` is the ``lag=1`` case.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

import filterax.primitives as fxp
from filterax.primitives import matmul

__all__ = ["EnKF4D", "EnKF4DDiagnostics", "EnKF4DState"]

_MODES = ("4d", "3d")
_LOG_2PI = math.log(2.0 * math.pi)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class _WindowSums(eqx.Module):
    """Running sums of one window's whitened observation terms (see the module docstring)."""

    gram: Float[Array, "N_e N_e"]  # sum_j S_j S_j^T
    projection: Float[Array, " N_e"]  # sum_j S_j delta_j
    misfit: Float[Array, ""]  # sum_j |delta_j|^2
    logdet_noise: Float[Array, ""]  # sum_j log|R_j| over the observed entries
    n_obs: Float[Array, ""]  # observed entries so far

    @classmethod
    def zeros(cls, n_e: int, dtype: Any) -> _WindowSums:
        z = jnp.zeros((), dtype)
        return cls(jnp.zeros((n_e, n_e), dtype), jnp.zeros((n_e,), dtype), z, z, z)

    def __add__(self, other: _WindowSums) -> _WindowSums:
        return jax.tree_util.tree_map(jnp.add, self, other)


def _time_terms(
    observed: Float[Array, "N_e N_y"], obs: Float[Array, " N_y"], noise: lx.AbstractLinearOperator
) -> _WindowSums:
    """The whitened terms of one observation time (NaN entries of `obs` zero-weighted)."""
    n_e = observed.shape[0]
    dtype = observed.dtype
    mask = fxp.observation_mask(obs)
    obs_mean = jnp.mean(observed, axis=0)
    anomalies = fxp.mask_anomalies(observed - obs_mean[None, :], mask)
    innovation = jnp.where(mask, fxp.fill_missing(obs, mask) - obs_mean, jnp.zeros((), dtype))
    whitener = fxp.noise_whitening(fxp.mask_noise(noise, mask), dtype)
    S = whitener.rows(anomalies) / math.sqrt(n_e - 1)
    delta = whitener.vector(innovation)
    return _WindowSums(
        gram=matmul(S, S.T),
        projection=matmul(S, delta),
        misfit=jnp.sum(delta**2),
        logdet_noise=jnp.asarray(whitener.logdet(), dtype),
        n_obs=jnp.sum(mask).astype(dtype),
    )


def _window_log_likelihood(sums: _WindowSums) -> Float[Array, ""]:
    r"""``log N(d; 0, Y'Y'^T/(N_e-1) + R)`` of the stacked window, in ensemble space:
    ``|I + S^T S| = |I + S S^T|`` and ``δ^T (I + S^T S)^{-1} δ = |δ|^2 - b^T (I + S S^T)^{-1} b``
    with ``b = S δ`` (Woodbury)."""
    dtype = sums.gram.dtype
    a = jnp.eye(sums.gram.shape[0], dtype=dtype) + sums.gram
    logdet_a = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(a))))
    operator = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    solved = lx.linear_solve(operator, sums.projection, lx.Cholesky(), throw=False).value
    quad = sums.misfit - jnp.dot(sums.projection, solved)
    return -0.5 * (sums.n_obs * _LOG_2PI + sums.logdet_noise + logdet_a + quad)


def _transform_ensemble(
    ensemble: Float[Array, "N_e N_x"], weights: Float[Array, " N_e"], transform: Array
) -> Float[Array, "N_e N_x"]:
    n_e = ensemble.shape[0]
    mean = jnp.mean(ensemble, axis=0)
    anomalies = ensemble - mean[None, :]
    mean_a = mean + matmul(weights, anomalies) / math.sqrt(n_e - 1)
    return mean_a[None, :] + matmul(transform, anomalies)


class EnKF4DState(eqx.Module):
    """The state of an `EnKF4D` between cycles.

    **Fields:**

    - `ensemble`: ``(N_e, N_x)`` the ensemble at the last observation time: the (post-processed)
      analysis after a window end, the forecast trajectory inside a window.
    - `window_start`: ``(N_e, N_x)`` the ensemble at the start of the current window (the last
      analysis), to which the window's weights give the smoothed estimate.
    - `start_time`: the time of `window_start`.
    - `sums`: the running ensemble-space sums of the window's whitened observed anomalies and
      innovations (``sum_j S_j S_j^T``, ``sum_j S_j delta_j``, ...); zero with ``mode="3d"``.
    - `log_likelihood`: the log-likelihood of the window's observations so far.
    - `buffer`: ``(lag, N_y)`` the window's raw observations (``mode="3d"`` only, else
      ``None``): the 3D shortcut observes them with the window-end ensemble.
    - `position`: how many cycles of the current window are done (``0 .. lag - 1``).
    """

    ensemble: Float[Array, "N_e N_x"]
    window_start: Float[Array, "N_e N_x"]
    start_time: Real[Array, ""]
    sums: _WindowSums
    log_likelihood: Float[Array, ""]
    buffer: Float[Array, "lag N_y"] | None
    position: Int[Array, ""]


class EnKF4DDiagnostics(eqx.Module):
    """What `EnKF4D` reports per cycle besides the driver's rows (stacked by
    `filterax.filters.run` in `RunResult.diagnostics`).

    **Fields:**

    - `analysed`: ``True`` on the cycles that end a window (an analysis was made); on the
      others the driver's analysis row is the forecast.
    - `window_start`: the time of the window's start.
    - `smoothed_mean`, `smoothed_spread`: on an analysis cycle, the smoothed estimate at the
      window start (its ensemble transformed by the window's weights: conditioned on the
      window's observations; not post-processed); on the other cycles the window-start
      ensemble's mean and spread (no observation of the window assimilated yet).
    - `n_window_obs`: the number of observed entries in the window so far (on an analysis
      cycle: the whole window; ``0`` means the analysis was the identity).
    """

    analysed: Bool[Array, ""]
    window_start: Real[Array, ""]
    smoothed_mean: Float[Array, " N_x"]
    smoothed_spread: Float[Array, ""]
    n_window_obs: Float[Array, ""]


class EnKF4D(fxp.AbstractCycledMethod):
    r"""The 4D-EnKF (Hunt et al. 2004): one ETKF analysis per window of `lag` observation times.

    The observations of ``lag`` consecutive cycles (times ``t_1 < \dots < t_L``) are
    assimilated together at the window end, using the forecast ensemble *trajectory* to
    observe each one at its own time (module docstring):

    $$S = [S_1,\dots,S_L],\quad \delta = [\delta_1;\dots;\delta_L],\quad
    T = (I + S S^\top)^{-1/2},\quad w = T^2 S\delta,$$

    $$X^a(t_L) = \mathbf 1\big(\bar x^f(t_L) + X'^f(t_L)^\top w/\sqrt{N_e-1}\big)^\top
    + T X'^f(t_L),$$

    then post-processed as DAPPER does (inflation, then the random rotation). The same
    ``(w, T)`` applied to the window-start ensemble is the smoothed window-start estimate
    (`EnKF4DDiagnostics.smoothed_mean`). For a linear perfect model the window-end mean and
    covariance equal those of the sequential ETKF; ``lag=1`` is the ETKF.

    It is a cycled method (`filterax.primitives.AbstractCycledMethod`) run by
    `filterax.filters.run`; the analysis happens on cycles ``lag - 1, 2 lag - 1, ...``
    (counted from the start of the run). **What the driver's rows report:** the forecast
    row is the ensemble forecast at ``t_k``; the analysis row is the analysis on a window's
    last cycle and the forecast (the best estimate that uses only observations before the
    window) on the others. The log-likelihood row is ``log p(y_k | y_{<k})`` of the
    ensemble-space Gaussian (``mode="4d"``: conditioned on the window's earlier observations
    through the running sums, so the rows sum to the log evidence); ``mode="3d"`` reports the
    whole window's ``log p(y_{window} | y_{<window})`` on its analysis cycle and ``0``
    elsewhere. Observations of a last, incomplete window are not assimilated (their rows are
    forecasts). NaN entries of an observation are not observed (zero weight, shapes unchanged);
    a window without any observed entry gives the identity analysis (``n_window_obs = 0``):
    `check_observations` refuses such windows before a run.

    **Arguments:**

    - `lag`: the window length ``L`` in observation cycles, a Python int ``>= 1`` (static).
    - `inflator`: ``None`` or a stateless `filterax.primitives.AbstractInflator`
      (`MultiplicativeInflator`, `RTPS`, ...) applied to the window-end analysis (its
      ``forecast`` argument is the window-end forecast); dynamic, so `jax.grad` and `jax.vmap`
      reach its factor.
    - `rotate`: DAPPER's random mean-preserving rotation after the inflation (static).
    - `mode`: ``"4d"`` (default; the 4D-EnKF) or ``"3d"``: the shortcut Hunt et al. compare
      against, which treats all of the window's observations as if made at the window end
      (``Y_j = H(X^f(t_L))`` for every ``j``) — what an ETKF that gathers a window's data
      at the analysis time does.

    **Initial condition** (the ``initial`` of `run`): an ``(N_e, N_x)`` ensemble at ``t0``.

    Keys: cycle ``k``'s key is split in four (forecast, analysis, inflation, rotation) as
    `filterax.filters.EnsembleFilter` does, so ``lag=1`` reproduces
    ``EnsembleFilter(ETKF(), inflator, rotate)`` member for member.

    **Reference:** Hunt et al. (2004), *Tellus A* 56, 273-277, eqs. (4)-(8) (full citation:
    module docstring); Hunt, Kostelich & Szunyogh (2007), *Physica D* 230, §2.3 (the ETKF
    transform). DAPPER: no 4D-EnKF; ``EnKF("Sqrt", N, infl, rot)`` is the ``lag=1`` case.

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    import filterax.primitives as fxp
    from filterax.zoo import EnKF4D, presets

    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 400)
    method = EnKF4D(lag=4, inflator=fxp.MultiplicativeInflator(1.04), rotate=True)
    out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(1), 20),
                 xp.observations, xp.times, key=jax.random.key(2))
    out.diagnostics.analysed        # True every 4th cycle
    out.diagnostics.smoothed_mean   # window-start estimates on those cycles
    ```
    """

    lag: int = eqx.field(default=1, static=True)
    inflator: Any = None
    rotate: bool = eqx.field(default=False, static=True)
    mode: str = eqx.field(default="4d", static=True)

    def __check_init__(self) -> None:
        if not _is_int(self.lag) or self.lag < 1:
            raise ValueError(
                f"EnKF4D: lag must be a Python int >= 1 (the number of observation cycles per "
                f"window; lag=1 is the ETKF); got {self.lag!r}."
            )
        if self.inflator is not None and (not isinstance(self.inflator, fxp.AbstractInflator)):
            raise TypeError(
                "EnKF4D: inflator must be None or a stateless AbstractInflator (e.g. "
                "filterax.primitives.MultiplicativeInflator(1.04), RTPS(0.5)); got "
                f"{type(self.inflator).__name__}. The stateful AdaptiveInflator estimates its "
                "factor from one time's innovation and is not supported."
            )
        if not isinstance(self.rotate, bool):
            raise TypeError(f"EnKF4D: rotate must be a Python bool; got {self.rotate!r}.")
        if self.mode not in _MODES:
            raise ValueError(
                f'EnKF4D: mode must be "4d" (the 4D-EnKF) or "3d" (observations treated as '
                f"valid at the window end); got {self.mode!r}."
            )

    def check_observations(self, observations: Float[ArrayLike, "T N_y"]) -> None:
        """Raise a `ValueError` if a complete window of concrete `observations` has no observed
        (non-NaN) entry at all.

        Inside `filterax.filters.run` the observations are traced, so such a window cannot be
        refused there: its analysis is the identity (no information, ``w = 0``, ``T = I``) and
        `EnKF4DDiagnostics.n_window_obs` is ``0``. Call this before a run to be told instead.
        """
        obs = np.asarray(observations, dtype=np.float64)
        if obs.ndim != 2:
            raise ValueError(
                f"EnKF4D.check_observations: observations must be (T, N_y); got {obs.shape}."
            )
        n_windows = obs.shape[0] // self.lag
        observed = ~np.isnan(obs[: n_windows * self.lag]).reshape(n_windows, -1)
        empty = np.flatnonzero(~observed.any(axis=1))
        if empty.size:
            i = int(empty[0])
            raise ValueError(
                f"EnKF4D(lag={self.lag}): window {i} (observation rows {i * self.lag} to "
                f"{(i + 1) * self.lag - 1}) has no observed entry (every value is NaN), so its "
                "analysis would change nothing. Remove those rows, choose a lag whose windows "
                "all contain observations, or accept the identity analysis there."
            )

    def init(
        self, key: PRNGKeyArray, initial: Real[ArrayLike, "..."], model: fxp.AbstractModel
    ) -> EnKF4DState:
        """The initial ensemble as the first window's start (checked: 2-D, ``N_e >= 2``,
        floating point, finite when concrete)."""
        del key
        ensemble = jnp.asarray(initial)
        if ensemble.ndim != 2:
            raise ValueError(
                f"EnKF4D: the initial ensemble must be a 2-D array (N_e, N_x) with members on "
                f"the first axis; got shape {ensemble.shape}. Stack the members with jnp.stack."
            )
        if ensemble.shape[0] < 2:
            raise ValueError(
                f"EnKF4D: the initial ensemble has N_e={ensemble.shape[0]} member(s); the "
                "ensemble transform needs N_e >= 2. Draw more (ssm.initial_ensemble(key, 20))."
            )
        if not jnp.issubdtype(ensemble.dtype, jnp.floating):
            raise TypeError(
                f"EnKF4D: the initial ensemble must be floating point; got dtype "
                f"{ensemble.dtype}. Cast it with .astype(jnp.float64) or .astype(jnp.float32)."
            )
        if not isinstance(ensemble, jax.core.Tracer):
            fxp.check_parameter(
                ensemble,
                "EnKF4D: the initial ensemble",
                allow_inf=False,
                hint="NaN marks a missing observation, never a missing state: pass a finite "
                "ensemble.",
            )
        n_e, dtype = ensemble.shape[0], ensemble.dtype
        buffer = None
        if self.mode == "3d":
            n_y = jax.eval_shape(lambda e: fxp.observe_ensemble(model, e), ensemble).shape[1]
            buffer = jnp.full((self.lag, n_y), jnp.nan, dtype)
        return EnKF4DState(
            ensemble=ensemble,
            window_start=ensemble,
            start_time=jnp.zeros((), jnp.result_type(float)),
            sums=_WindowSums.zeros(n_e, dtype),
            log_likelihood=jnp.zeros((), dtype),
            buffer=buffer,
            position=jnp.asarray(0, jnp.int32),
        )

    def step(
        self,
        key: PRNGKeyArray,
        state: EnKF4DState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[EnKF4DState, fxp.CycleInfo]:
        """Forecast to ``t``, add the time's observation to the window, and on the window's
        last cycle make the analysis (see the class docstring)."""
        k_fc, _, k_infl, k_rot = jax.random.split(key, 4)
        ensemble = state.ensemble
        n_e, dtype = ensemble.shape[0], ensemble.dtype
        forecast = fxp.forecast_ensemble(model, k_fc, ensemble, t_prev, t).astype(dtype)
        if forecast.shape != ensemble.shape:
            raise ValueError(
                f"EnKF4D: dynamics(x, t0, t1) must return a state of shape {ensemble.shape[1:]} "
                f"(like one member); it returned shape {forecast.shape[1:]}."
            )
        obs = jnp.asarray(obs).astype(dtype)
        observed = fxp.observe_ensemble(model, forecast).astype(dtype)
        if observed.shape[1:] != obs.shape:
            raise ValueError(
                f"EnKF4D: obs_op maps one member to shape {observed.shape[1:]}, but the "
                f"observations have N_y={obs.shape[0]} entries per time. Pass observations with "
                "one column per entry of obs_op(x), or the matching observation operator."
            )
        try:
            noise = fxp.as_noise_operator(model.obs_noise, obs.shape[0], dtype=dtype)
        except (TypeError, ValueError) as err:
            raise type(err)(f"EnKF4D: model.obs_noise: {err}") from None
        innovation = obs - jnp.mean(observed, axis=0)
        position = state.position
        start_time = jnp.where(position == 0, t_prev, state.start_time).astype(
            state.start_time.dtype
        )

        buffer = state.buffer
        if self.mode == "4d":
            sums = state.sums + _time_terms(observed, obs, noise)
            joint = _window_log_likelihood(sums)
            row_loglik = joint - state.log_likelihood
        else:
            buffer = buffer.at[position].set(obs)
            sums = state.sums
            joint = state.log_likelihood
            row_loglik = jnp.zeros((), dtype)

        def analysis(_: None) -> tuple[Array, ...]:
            window = sums
            loglik = row_loglik
            if self.mode == "3d":
                terms = jax.vmap(lambda y: _time_terms(observed, y, noise))(buffer)
                window = jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), terms)
                loglik = _window_log_likelihood(window)
            transform = fxp.inverse_sqrt_one_plus(window.gram)
            weights = matmul(transform, matmul(transform, window.projection))
            updated = _transform_ensemble(forecast, weights, transform)
            smoothed = _transform_ensemble(state.window_start, weights, transform)
            if self.inflator is not None:
                updated = self.inflator(updated, forecast, key=k_infl)
            if self.rotate:
                updated = fxp.rotate_ensemble(k_rot, updated)
            return (
                updated,
                jnp.mean(smoothed, axis=0),
                fxp.rms_spread(smoothed),
                loglik,
                window.n_obs,
            )

        def no_analysis(_: None) -> tuple[Array, ...]:
            start = state.window_start
            return (
                forecast,
                jnp.mean(start, axis=0),
                fxp.rms_spread(start),
                row_loglik,
                sums.n_obs,
            )

        analyse = position == self.lag - 1
        updated, smoothed_mean, smoothed_spread, row_loglik, n_window_obs = lax.cond(
            analyse, analysis, no_analysis, None
        )

        def pick(new: Any, old: Any) -> Any:
            return jax.tree_util.tree_map(lambda a, b: jnp.where(analyse, a, b), new, old)

        new_state = EnKF4DState(
            ensemble=updated,
            window_start=pick(updated, state.window_start),
            start_time=pick(jnp.asarray(t, start_time.dtype), start_time),
            sums=pick(_WindowSums.zeros(n_e, dtype), sums),
            log_likelihood=pick(jnp.zeros((), dtype), joint),
            buffer=buffer,
            position=jnp.where(analyse, 0, position + 1).astype(jnp.int32),
        )
        row_loglik = jnp.asarray(row_loglik, dtype)
        info = fxp.CycleInfo(
            forecast_mean=jnp.mean(forecast, axis=0),
            forecast_spread=fxp.rms_spread(forecast),
            analysis_mean=jnp.mean(updated, axis=0),
            analysis_spread=fxp.rms_spread(updated),
            log_likelihood=row_loglik,
            innovation=innovation,
            finite=fxp.is_finite(forecast, updated, row_loglik),
            forecast=forecast,
            analysis=updated,
            diagnostics=EnKF4DDiagnostics(
                analysed=analyse,
                window_start=start_time,
                smoothed_mean=smoothed_mean,
                smoothed_spread=smoothed_spread,
                n_window_obs=n_window_obs,
            ),
        )
        return new_state, info
