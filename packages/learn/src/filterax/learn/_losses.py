r"""Training losses on what a run produces (tutorial master list 8.E, "loss zoo").

Each loss is a plain function of a `filterax.filters.RunResult` (and the observations or the
truth it is scored against), usable directly as ``jax.grad(lambda theta: loss(run(...)))``:

- `innovation_nll`: the run's own negative log-likelihood rows, ``-sum_k log p(y_k | y_<k)``;
- `observation_mse`: mean squared error of the predicted observations;
- `crps_loss`: the ensemble CRPS (fair or standard), state or observation space;
- `energy_score_loss`: the multivariate energy score (fair or standard);
- `spread_skill_loss`: the squared log spread-skill ratio.

Shared conventions:

- ``burn_in`` (a Python int) drops the first cycles; the rest are scored.
- NaN (or inf) entries of the observations / truth are *missing*: zero weight, and they are
  replaced before any arithmetic so that neither the value nor the gradient sees them.
  Averages are over the observed entries only.
- A failed run is never scored as a plausible number: if any scored cycle of the run is
  non-finite (or the run's inputs were invalid: ``cycle_status`` 1, 3 or 4), the loss is NaN,
  whatever the masking would have hidden. With ``check=True`` a non-finite loss raises inside
  `jit` (`eqx.error_if`) with a message pointing at ``result.first_failure``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

import filterax.filters as ff
import filterax.primitives as fxp

from ._energy_score import energy_score

__all__ = [
    "crps_loss",
    "energy_score_loss",
    "innovation_nll",
    "observation_mse",
    "spread_skill_loss",
]

# Cycle status codes whose rows are NaN (non-finite cycle, invalid times, invalid noise).
_FAILED_STATUSES = (ff.RunResult.NONFINITE, ff.RunResult.INVALID_TIMES, ff.RunResult.INVALID_NOISE)
_WHICH = ("forecast", "analysis")


def _check_result(result: Any, owner: str) -> ff.RunResult:
    if not isinstance(result, ff.RunResult):
        raise TypeError(
            f"{owner}: the first argument must be the RunResult of filterax.filters.run; got "
            f"{type(result).__name__}."
        )
    return result


def _check_burn_in(burn_in: Any, n_times: int, owner: str) -> int:
    if isinstance(burn_in, bool) or not isinstance(burn_in, int | np.integer):
        raise TypeError(
            f"{owner}: burn_in must be a Python int (a number of cycles); got "
            f"{type(burn_in).__name__}."
        )
    if not 0 <= int(burn_in) < n_times:
        raise ValueError(
            f"{owner}: burn_in must satisfy 0 <= burn_in < T = {n_times} (the number of "
            f"cycles of the run), so that at least one cycle is scored; got {burn_in}."
        )
    return int(burn_in)


def _check_which(which: Any, owner: str) -> None:
    if which not in _WHICH:
        raise ValueError(f"{owner}: which must be one of {_WHICH}; got {which!r}.")


def _check_target(target: Any, shape: tuple[int, ...], what: str, owner: str) -> Array:
    target = jnp.asarray(target)
    if target.shape != shape:
        raise ValueError(
            f"{owner}: {what} must have shape {shape} (one row per cycle of the run); got "
            f"{target.shape}."
        )
    if not jnp.issubdtype(target.dtype, jnp.floating):
        raise TypeError(f"{owner}: {what} must be a floating array; got dtype {target.dtype}.")
    return target


def _require_some_observed(mask: Array, what: str, owner: str) -> None:
    value = fxp.concrete_value(mask)
    if value is not None and not np.any(value):
        raise ValueError(
            f"{owner}: every entry of {what} after the burn-in is missing (NaN), so there is "
            "nothing to score. Lower burn_in or pass observations with finite entries."
        )


def _failed(result: ff.RunResult, burn_in: int) -> Array:
    status = result.cycle_status[burn_in:]
    failed = jnp.zeros(status.shape, bool)
    for code in _FAILED_STATUSES:
        failed = failed | (status == code)
    return jnp.any(failed)


def _finalise(loss: Array, result: ff.RunResult | None, burn_in: int, check: bool, owner: str):
    if result is not None:
        loss = jnp.where(_failed(result, burn_in), jnp.asarray(jnp.nan, loss.dtype), loss)
    if check:
        loss = eqx.error_if(
            loss,
            ~jnp.isfinite(loss),
            f"{owner}: the loss is not finite. Either the run failed (re-run with throw=False "
            "and read result.status, result.first_failure and result.cycle_status: a failed "
            "cycle makes every loss NaN) or the scored quantities overflowed.",
        )
    return loss


def _masked_mean(values: Array, mask: Array) -> Array:
    total = jnp.sum(jnp.where(mask, values, jnp.zeros((), values.dtype)))
    count = jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)
    return total / count


def _fill(target: Array) -> tuple[Array, Array]:
    mask = jnp.isfinite(target)
    return jnp.where(mask, target, jnp.zeros((), target.dtype)), mask


def _ensembles(result: ff.RunResult, which: str, owner: str) -> Array:
    ens = result.forecasts if which == "forecast" else result.analyses
    if ens is None:
        need = "forecast_and_analysis" if which == "forecast" else "ensembles"
        raise ValueError(
            f"{owner}(which={which!r}) needs the run's {which} ensembles; run with "
            f"save={need!r} (or 'forecast_and_analysis')."
        )
    if not isinstance(ens, jax.Array) or ens.ndim != 3:
        raise TypeError(
            f"{owner} scores ensembles (T, N_e, N_x); the run saved a {type(ens).__name__} per "
            "cycle (a Gaussian or weighted-particle method). Use innovation_nll or "
            "observation_mse for such methods."
        )
    return ens


def _observed_members(ens: Array, obs_op: Any) -> Array:
    return jax.vmap(jax.vmap(lambda x: fxp.apply_obs(obs_op, x)))(ens)


def _verified_ensembles(
    result: ff.RunResult, target: Any, obs_op: Any, which: str, burn_in: int, owner: str
) -> tuple[Array, Array]:
    ens = _ensembles(result, which, owner)
    if obs_op is not None:
        ens = _observed_members(ens, obs_op)
    what = "the observations" if obs_op is not None else "the truth"
    target = _check_target(target, (ens.shape[0], ens.shape[2]), what, owner)
    return ens[burn_in:], target[burn_in:].astype(ens.dtype)


def innovation_nll(
    result: ff.RunResult,
    *,
    observations: Float[ArrayLike, "T N_y"] | None = None,
    normalize: bool = False,
    burn_in: int = 0,
    check: bool = False,
) -> Float[Array, ""]:
    r"""Innovation negative log-likelihood: the run's own ``-log p(y_k | y_<k)`` rows.

    $$\mathcal L_\mathrm{NLL} = -\sum_{k = k_0}^{T-1} \log p(y_k \mid y_{<k}),\qquad
    \text{or}\quad \mathcal L_\mathrm{NLL} / \textstyle\sum_{k \ge k_0} n_{\mathrm{obs},k}
    \ \text{with}\ \texttt{normalize=True},$$

    where each row is what the method estimates (an ensemble filter: the Gaussian predictive
    ``N(y; mean H(X^f), C^{HH} + R)``, `filterax.primitives.log_likelihood`; a Kalman filter:
    the exact ``N(y; H m^f, H P^f H^T + R)``). Missing observations were already given zero
    weight by the run (they do not enter the row); ``normalize=True`` divides by the number of
    observed scalar entries after the burn-in, so losses of runs with different numbers of
    observations are comparable.

    **Arguments:**

    - `result`: the `RunResult` of `filterax.filters.run`.
    - `observations`: ``(T, N_y)`` the run's observations (NaN where missing); required only
      with ``normalize=True``.
    - `normalize`: divide by the number of observed entries (per-observation NLL).
    - `burn_in`: number of leading cycles not scored.
    - `check`: raise (`eqx.error_if`) if the loss is not finite.

    **Returns:** the scalar loss; NaN if a scored cycle failed (see the module docstring).

    **Reference:** the maximum-likelihood "Pattern A" of differentiable DA (master list 8.C
    and 8.E; Chen, Sanz-Alonso & Willett 2023, ROAD-EnKF, train on the same Gaussian
    predictive likelihood). Bach, Baptista, Luk & Stuart (2025) use the *analysis*
    expected log-likelihood plus a KL instead (their eq. 2.5); this is the forecast-side
    evidence.
    """
    owner = "innovation_nll"
    result = _check_result(result, owner)
    burn_in = _check_burn_in(burn_in, result.log_likelihood.shape[0], owner)
    rows = result.log_likelihood[burn_in:]
    loss = -jnp.sum(rows)
    if normalize:
        if observations is None:
            raise ValueError(
                f"{owner}(normalize=True) needs observations=... (the (T, N_y) array the run "
                "assimilated) to count the observed entries."
            )
        obs = jnp.asarray(observations)
        if obs.ndim != 2 or obs.shape[0] != result.log_likelihood.shape[0]:
            raise ValueError(
                f"{owner}: observations must have shape (T, N_y) with T = "
                f"{result.log_likelihood.shape[0]}; got {obs.shape}."
            )
        mask = jnp.isfinite(obs[burn_in:])
        _require_some_observed(mask, "observations", owner)
        loss = loss / jnp.maximum(jnp.sum(mask), 1).astype(loss.dtype)
    return _finalise(loss, result, burn_in, check, owner)


def observation_mse(
    result: ff.RunResult,
    observations: Float[ArrayLike, "T N_y"],
    obs_op: Any,
    *,
    which: str = "forecast",
    of: str = "mean",
    burn_in: int = 0,
    check: bool = False,
) -> Float[Array, ""]:
    r"""Mean squared error of the predicted observations against the observations.

    $$\mathcal L_\mathrm{MSE} = \frac{\sum_{k \ge k_0}\sum_j m_{kj}\,(y_{kj} - \hat y_{kj})^2}
    {\sum_{k \ge k_0}\sum_j m_{kj}},\qquad
    \hat y_k = \begin{cases} H(\bar x_k) & \texttt{of="mean"}\\
    \frac1{N_e}\sum_i H(x_k^{(i)}) & \texttt{of="members"}\end{cases}$$

    with $m_{kj} = 1$ where $y_{kj}$ is observed. ``of="mean"`` needs only the saved mean rows
    (``save="stats"`` suffices, any method); ``of="members"`` needs the saved ensembles and is
    the predicted observation an ensemble filter itself uses (it differs from ``of="mean"``
    only for nonlinear ``H``).

    **Arguments:**

    - `result`: the `RunResult` of `filterax.filters.run`.
    - `observations`: ``(T, N_y)``, NaN where missing.
    - `obs_op`: the observation operator (``model.obs_op``), any form
      `filterax.primitives.apply_obs` accepts.
    - `which`: ``"forecast"`` (default: the forecast skill, a training signal that cannot be
      gamed by fitting the observation) or ``"analysis"``.
    - `of`: ``"mean"`` or ``"members"`` (above).
    - `burn_in`: number of leading cycles not scored.
    - `check`: raise (`eqx.error_if`) if the loss is not finite.

    **Returns:** the scalar loss (observation units squared); NaN if a scored cycle failed.

    **Reference:** master list 8.E ("MSE: sum_t ||v_t||^2"); a squared-error loss as in
    Chen, Sanz-Alonso & Willett (2023).
    """
    owner = "observation_mse"
    result = _check_result(result, owner)
    _check_which(which, owner)
    if of not in ("mean", "members"):
        raise ValueError(f"{owner}: of must be 'mean' or 'members'; got {of!r}.")
    n_times = result.forecast_mean.shape[0]
    burn_in = _check_burn_in(burn_in, n_times, owner)
    if of == "mean":
        means = result.forecast_mean if which == "forecast" else result.analysis_mean
        predicted = jax.vmap(lambda x: fxp.apply_obs(obs_op, x))(means)
    else:
        predicted = jnp.mean(_observed_members(_ensembles(result, which, owner), obs_op), axis=1)
    obs = _check_target(observations, predicted.shape, "observations", owner)
    obs, mask = _fill(obs[burn_in:].astype(predicted.dtype))
    _require_some_observed(mask, "observations", owner)
    loss = _masked_mean(jnp.square(obs - predicted[burn_in:]), mask)
    return _finalise(loss, result, burn_in, check, owner)


def crps_loss(
    result: ff.RunResult,
    target: Float[ArrayLike, "T N"],
    *,
    obs_op: Any = None,
    which: str = "forecast",
    fair: bool = True,
    burn_in: int = 0,
    check: bool = False,
) -> Float[Array, ""]:
    r"""Mean ensemble CRPS of the run's saved ensembles (state or observation space).

    $$\mathcal L_\mathrm{CRPS} = \frac{1}{\sum m_{kj}}\sum_{k \ge k_0}\sum_j m_{kj}\Big[
    \frac1{N_e}\sum_i |z^{(i)}_{kj} - y_{kj}| - \frac{1}{2 N_e D}\sum_{i,l}
    |z^{(i)}_{kj} - z^{(l)}_{kj}|\Big],\quad D = \begin{cases}N_e - 1 & \text{fair}\\
    N_e & \text{standard}\end{cases}$$

    with $z^{(i)}_k = x^{(i)}_k$ against the truth (``obs_op=None``) or
    $z^{(i)}_k = H(x^{(i)}_k)$ against the observations. Each term is
    `filterax.primitives.crps_ensemble` (the sorted $O(N_e \log N_e)$ form, differentiable
    almost everywhere: its gradient is the sign pattern of the pair sum). The fair form
    (default) is unbiased for the CRPS of the distribution the members sample, so it does not
    reward a small ensemble for being under-dispersed.

    Against observations no observation noise is added to the members: the score compares
    the predicted *noise-free* observation with a noisy one, so even the true filter has a
    CRPS above that of a noise-aware forecast; it is still a proper training signal for the
    state estimate, but do not read its value as calibration.

    **Arguments:**

    - `result`: a `RunResult` with the ensembles saved (``save="forecast_and_analysis"``
      for ``which="forecast"``; ``"ensembles"`` suffices for ``"analysis"``).
    - `target`: ``(T, N_x)`` truth (``obs_op=None``) or ``(T, N_y)`` observations; NaN
      entries are missing (zero weight).
    - `obs_op`: the observation operator to verify in observation space, or ``None``.
    - `which`: ``"forecast"`` or ``"analysis"`` ensembles.
    - `fair`: Ferro's unbiased normalisation ``N_e(N_e - 1)`` (default) or ``N_e^2``.
    - `burn_in`, `check`: as for every loss here.

    **Returns:** the scalar mean CRPS; NaN if a scored cycle failed.

    **Reference:** Gneiting & Raftery (2007), *JASA* 102, eq. 21 (kernel form); Ferro (2014),
    *QJRMS* 140 (fair CRPS).
    """
    owner = "crps_loss"
    result = _check_result(result, owner)
    _check_which(which, owner)
    burn_in = _check_burn_in(burn_in, result.forecast_mean.shape[0], owner)
    ens, target = _verified_ensembles(result, target, obs_op, which, burn_in, owner)
    if fair and ens.shape[1] < 2:
        raise ValueError(f"{owner}(fair=True) needs at least 2 members; got {ens.shape[1]}.")
    filled, mask = _fill(target)
    _require_some_observed(mask, "the target", owner)
    scores = jax.vmap(lambda e, y: fxp.crps_ensemble(e, y, fair=fair))(ens, filled)
    loss = _masked_mean(scores, mask)
    return _finalise(loss, result, burn_in, check, owner)


def energy_score_loss(
    result: ff.RunResult,
    target: Float[ArrayLike, "T N"],
    *,
    obs_op: Any = None,
    which: str = "forecast",
    fair: bool = True,
    burn_in: int = 0,
    check: bool = False,
) -> Float[Array, ""]:
    r"""Time-mean energy score of the run's saved ensembles (state or observation space).

    $$\mathcal L_\mathrm{ES} = \frac{1}{|\mathcal K|}\sum_{k \in \mathcal K}
    \mathrm{ES}(\{z^{(i)}_k\}, y_k),$$

    with `energy_score` per cycle (missing components of $y_k$ dropped from its norms) and
    $\mathcal K$ the scored cycles ($k \ge k_0$) with at least one observed component.
    $z^{(i)}_k$ are the members (against the truth, ``obs_op=None``) or $H(x^{(i)}_k)$
    (against observations; no observation noise added, see `crps_loss`).

    **Arguments:** as `crps_loss`.

    **Returns:** the scalar mean energy score; NaN if a scored cycle failed.

    **Reference:** Gneiting & Raftery (2007), *JASA* 102, eq. 22; Gneiting, Stanberry, Grimit,
    Held & Johnson (2008), *TEST* 17 (ensemble estimator).
    """
    owner = "energy_score_loss"
    result = _check_result(result, owner)
    _check_which(which, owner)
    burn_in = _check_burn_in(burn_in, result.forecast_mean.shape[0], owner)
    ens, target = _verified_ensembles(result, target, obs_op, which, burn_in, owner)
    if fair and ens.shape[1] < 2:
        raise ValueError(f"{owner}(fair=True) needs at least 2 members; got {ens.shape[1]}.")
    scored = jnp.any(jnp.isfinite(target), axis=1)
    _require_some_observed(scored, "the target", owner)
    scores = jax.vmap(lambda e, y: energy_score(e, y, fair=fair))(ens, target)
    loss = _masked_mean(scores, scored)
    return _finalise(loss, result, burn_in, check, owner)


def spread_skill_loss(
    result: ff.RunResult,
    truth: Float[ArrayLike, "T N_x"],
    *,
    which: str = "analysis",
    ensemble_size: int | None = None,
    burn_in: int = 0,
    check: bool = False,
) -> Float[Array, ""]:
    r"""Squared log spread-skill ratio of a run against the truth.

    $$\mathcal L_\mathrm{SS} = \Big(\log\frac{\bar\sigma}{\bar\varepsilon}\Big)^2
    = \Big(\tfrac12 \log \frac{c\,\sum_{k} \sigma_k^2}{\sum_{k}\varepsilon_k^2}\Big)^2,\qquad
    \varepsilon_k^2 = \frac{\sum_i m_{ki}(\bar x_{ki} - x^\dagger_{ki})^2}{\sum_i m_{ki}},$$

    over the scored cycles (``k >= burn_in`` with some finite truth), with $\sigma_k$ the
    run's spread row (DAPPER's ``rmv``, $\sqrt{\overline{\mathrm{var}}}$) and
    $c = (N_e + 1)/N_e$ when `ensemble_size` is given (else 1).

    Why this form: (i) the log makes over- and under-dispersion by the same factor cost the
    same, and it is scale free; (ii) it is zero exactly at calibration, where a reliable
    ensemble has $E[\varepsilon^2] = (1 + 1/N_e) E[\sigma^2]$ (Fortin et al. 2014: pass
    `ensemble_size` to target that relation rather than $\sigma = \varepsilon$); (iii) the
    ratio is taken of *time-summed* squares, not per cycle, because one cycle's squared
    error is a single noisy draw whose log is biased. It measures calibration only, not
    accuracy: combine it with an accuracy loss (`observation_mse`, `crps_loss`) when training.

    **Arguments:**

    - `result`: the `RunResult` of an ensemble method (any ``save``).
    - `truth`: ``(T, N_x)`` the true states (NaN entries are left out of the error).
    - `which`: ``"analysis"`` (default) or ``"forecast"`` rows.
    - `ensemble_size`: ``N_e`` for the finite-ensemble correction, or ``None``.
    - `burn_in`, `check`: as for every loss here.

    **Returns:** the scalar loss; NaN if a scored cycle failed.

    **Reference:** master list 8.E (which writes $\sum_t(\sigma_t - \mathrm{err}_t)^2$; the
    log-ratio form above is our choice, for the reasons given); Fortin, Abaza, Anctil &
    Turcotte (2014), *J. Hydrometeor.* 15 (the $(N_e+1)/N_e$ factor);
    `filterax.primitives.spread_skill_ratio` is the same ratio without the square of squares.
    """
    owner = "spread_skill_loss"
    result = _check_result(result, owner)
    _check_which(which, owner)
    if ensemble_size is not None and (
        isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1
    ):
        raise ValueError(
            f"{owner}: ensemble_size must be a positive int N_e; got {ensemble_size!r}."
        )
    means = result.analysis_mean if which == "analysis" else result.forecast_mean
    spread = result.analysis_spread if which == "analysis" else result.forecast_spread
    burn_in = _check_burn_in(burn_in, means.shape[0], owner)
    truth = _check_target(truth, means.shape, "truth", owner).astype(means.dtype)
    truth, mask = _fill(truth[burn_in:])
    means, spread = means[burn_in:], spread[burn_in:]
    scored = jnp.any(mask, axis=1)
    _require_some_observed(scored, "truth", owner)
    sq = jnp.where(mask, jnp.square(means - truth), jnp.zeros((), means.dtype))
    err2 = jnp.sum(sq, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1).astype(means.dtype)
    zero = jnp.zeros((), means.dtype)
    skill2 = jnp.sum(jnp.where(scored, err2, zero))
    spread2 = jnp.sum(jnp.where(scored, jnp.square(spread), zero))
    if ensemble_size is not None:
        spread2 = spread2 * (ensemble_size + 1) / ensemble_size
    loss = jnp.square(0.5 * (jnp.log(spread2) - jnp.log(skill2)))
    return _finalise(loss, result, burn_in, check, owner)
