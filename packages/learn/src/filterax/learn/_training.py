r"""Training loops: `fit` (params -> scalar loss) and `fit_windows` (online truncated windows).

`fit` is the plain optax loop for any differentiable loss of a parameter pytree (a loss of a
whole `filterax.filters.run`, a variational objective, ...): one compiled step, a fresh key per
step, progress through a callback, and it stops at the first non-finite loss or gradient.

`fit_windows` is the online loop of ROAD-EnKF (Chen, Sanz-Alonso & Willett 2023): chaos makes
gradients through long filter runs useless (issue 12: ``dNLL/dF`` through 1024 Lorenz-96 cycles
had sd 260 for mean -2.6), so the observation sequence is cut into windows of ``k`` cycles;
each window runs the filter from the previous window's final analysis (a constant: the
gradient is truncated at the window start), evaluates the loss on that window and takes ONE
optimiser step. ``k = 1`` is ROAD-EnKF's local gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree, Real

import filterax.filters as ff
import filterax.primitives as fxp

__all__ = [
    "STATUS_NONFINITE",
    "STATUS_OK",
    "STATUS_STOPPED",
    "FitResult",
    "Resumed",
    "TrainingProgress",
    "WindowFitResult",
    "fit",
    "fit_windows",
]

STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_STOPPED = 2

# `filterax.filters.run` gives `method.init` the key fold_in(key, 2**32 - 1) (its documented
# key schedule); `fit_windows` starts the first window the same way so that one window of all
# T cycles is exactly one `run`.
_INIT_FOLD = 2**32 - 1


class TrainingProgress(NamedTuple):
    """What the training loops pass to their `callback` after every step.

    - `step`: the step (window) index, from 0.
    - `n_steps`: the total number of steps (windows).
    - `loss`: the loss at the parameters before this step's update.
    - `grad_norm`: the global 2-norm of that loss's gradient.
    - `param_norm`: the global 2-norm of the trained (inexact array) parameters after the
      update.
    """

    step: int
    n_steps: int
    loss: float
    grad_norm: float
    param_norm: float


class FitResult(eqx.Module):
    """What `fit` returns.

    **Fields:**

    - `params`: the trained parameters (the last finite ones if training stopped on a
      non-finite loss or gradient).
    - `losses`: ``(n_steps,)`` the loss before each update (NaN for steps not taken).
    - `grad_norms`: ``(n_steps,)`` the global gradient norm of each step (NaN likewise).
    - `status`: ``0`` ok, ``1`` a non-finite loss or gradient (``throw=False``), ``2``
      stopped early by the callback.
    - `n_steps_done`: how many updates were applied.
    - `first_failure`: the step whose loss or gradient was non-finite, ``-1`` if none.
    """

    params: PyTree
    losses: Float[Array, " n_steps"]
    grad_norms: Float[Array, " n_steps"]
    status: int
    n_steps_done: int
    first_failure: int


class WindowFitResult(eqx.Module):
    """What `fit_windows` returns.

    **Fields:**

    - `params`: the parameters after the last window's update (the last finite ones if a
      window's loss or gradient was non-finite).
    - `trajectory`: the parameters after each window's update, stacked on a leading axis of
      length ``n_windows`` (the inexact array leaves; other leaves as in `params`), or
      ``None`` with ``save_trajectory=False``. Average its tail for Remark 2.4's parameter
      averaging (Bach, Baptista, Luk & Stuart 2025).
    - `losses`, `grad_norms`: ``(n_windows,)`` the window loss at the parameters the window
      was run with, and its gradient norm (NaN from a failing window on).
    - `state`: the filter state after the last successful window (continue with `Resumed`).
    - `status`: ``0`` ok, ``1`` a non-finite loss or gradient (from then on nothing is
      updated and the state stays frozen).
    - `first_failure`: the first failing window, ``-1`` if none.
    """

    params: PyTree
    trajectory: PyTree
    losses: Float[Array, " n_windows"]
    grad_norms: Float[Array, " n_windows"]
    state: PyTree
    status: Int[Array, ""]
    first_failure: Int[Array, ""]


class Resumed(fxp.AbstractCycledMethod):
    r"""A cycled method continued from a State it already produced (e.g. ``RunResult.state``).

    `filterax.filters.run` starts every run with ``method.init(key, initial, model)``, which
    for an ensemble filter takes an ``(N_e, N_x)`` ensemble and RESTARTS its post-processors
    (an `AdaptiveInflator` would forget its estimate). ``Resumed(method)`` takes the full
    State as its initial condition instead, and steps exactly as `method`:

    $$\text{Resumed.init}(\cdot, S, \cdot) = S,\qquad \text{Resumed.step} =
    \text{method.step},$$

    so ``run(Resumed(m), model, r1.state, y[k:], t[k:], t0=t[k-1], key=key2)`` continues
    ``r1 = run(m, model, X0, y[:k], t[:k], key=key1)``. The per-cycle keys of the second run
    derive from ``key2`` (cycles are numbered from 0 in every run). This is the hook
    `fit_windows` uses to carry the ensemble from window to window; it lives in
    ``filterax.learn`` because the driver has no public "continue from State" option.

    **Arguments:**

    - `method`: any `AbstractCycledMethod` (an `EnsembleFilter`, a Kalman filter's cycled
      form, ...). Analysis kernels are wrapped with `filterax.filters.as_cycled_method`.

    **Reference:** the carried ensemble of ROAD-EnKF (Chen, Sanz-Alonso & Willett 2023,
    Algorithm 1). Not in Bach, Baptista, Luk & Stuart (2025).
    """

    method: fxp.AbstractCycledMethod

    def __init__(self, method: Any):
        method = ff.as_cycled_method(method)
        if isinstance(method, Resumed):
            method = method.method
        self.method = method

    def init(self, key: PRNGKeyArray, initial: PyTree, model: fxp.AbstractModel) -> PyTree:
        """Return `initial`, the State to continue from (it must be a State of `method`)."""
        del key, model
        return initial

    def step(
        self,
        key: PRNGKeyArray,
        state: PyTree,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[PyTree, fxp.CycleInfo]:
        """`method.step` (for a presampled method: its draws from this cycle's key, the same
        numbers `run` would pre-draw)."""
        return self.method.step(key, state, model, t_prev, t, obs)


def _check_optimizer(optimizer: Any, owner: str) -> None:
    methods = (getattr(optimizer, "init", None), getattr(optimizer, "update", None))
    if not all(callable(m) for m in methods):
        raise TypeError(
            f"{owner}: optimizer must be an optax.GradientTransformation (e.g. "
            f"optax.adam(1e-2)); got {type(optimizer).__name__}."
        )


def _check_key(key: Any, owner: str) -> None:
    try:
        fxp.check_prng_key(key, "key")
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}: {err}") from err


def _split_params(params: PyTree, owner: str) -> tuple[PyTree, PyTree]:
    diff, static = eqx.partition(params, eqx.is_inexact_array)
    if not jax.tree_util.tree_leaves(diff):
        raise ValueError(
            f"{owner}: params has no floating-point array leaves to train. Pass the values to "
            "learn as JAX arrays, e.g. jnp.asarray(6.0) rather than the Python float 6.0."
        )
    return diff, static


def _tree_where(pred: Array, new: PyTree, old: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _loss_value(value: Any, owner: str) -> Array:
    value = jnp.asarray(value)
    if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"{owner}: the loss must return a floating-point scalar; got shape {value.shape} "
            f"and dtype {value.dtype}. Reduce it, e.g. with jnp.sum or jnp.mean."
        )
    return value


@eqx.filter_jit
def _fit_step(loss_fn, optimizer, diff, static, opt_state, key):
    def objective(d):
        return _loss_value(loss_fn(eqx.combine(d, static), key), "fit")

    loss, grads = jax.value_and_grad(objective)(diff)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, opt_state, diff)
    new_diff = eqx.apply_updates(diff, updates)
    # Never step on NaN: a failing step leaves parameters and optimiser state unchanged.
    new_diff = _tree_where(ok, new_diff, diff)
    new_opt_state = _tree_where(ok, new_opt_state, opt_state)
    return new_diff, new_opt_state, loss, grad_norm, optax.tree.norm(new_diff), ok


def fit(
    loss_fn: Callable[[PyTree, PRNGKeyArray], Real[ArrayLike, ""]],
    params: PyTree,
    optimizer: Any,
    n_steps: int,
    *,
    key: PRNGKeyArray,
    callback: Callable[[TrainingProgress], Any] | None = None,
    throw: bool = True,
) -> FitResult:
    r"""Minimise ``loss_fn(params, key)`` with an optax optimiser.

    $$\theta_{s+1} = \theta_s + \text{optimizer.update}\big(\nabla_\theta
    L(\theta_s, \kappa_s)\big),\qquad \kappa_s = \text{fold\_in}(\text{key}, s),\quad
    s = 0, \dots, n_{steps} - 1.$$

    Only the floating-point array leaves of `params` are trained (`eqx.partition` with
    `eqx.is_inexact_array`); the rest (static fields, integer arrays, functions) is passed
    through. Each step is one compiled program (`eqx.filter_jit`, traced once); the loop
    over steps runs in Python so that `callback` can report progress and training can stop.
    A step whose loss or gradient is not finite changes nothing and stops training: with
    ``throw=True`` a `FloatingPointError` names the step, otherwise the result has
    ``status = 1`` and the last finite parameters. Same key, same result.

    **Arguments:**

    - `loss_fn`: ``loss_fn(params, key) -> scalar``, differentiable in the array leaves of
      `params` (e.g. ``-sum(run(...).log_likelihood)``); `key` is the step's key (use it for
      Monte Carlo terms or stochastic filters, or ignore it).
    - `params`: any pytree / `eqx.Module` with floating-point array leaves.
    - `optimizer`: an ``optax.GradientTransformation`` (``optax.sgd(lr)`` is Bach et al.'s
      plain gradient descent; ``optax.adam(lr)`` is usually faster).
    - `n_steps`: the number of optimiser steps (Python int ``>= 1``).
    - `key`: a JAX PRNG key; step ``s`` gets ``jax.random.fold_in(key, s)``.
    - `callback`: ``callback(TrainingProgress)`` after each step (host side, e.g. to draw a
      progress bar); return ``True`` to stop early (``status = 2``).
    - `throw`: raise on a non-finite loss or gradient (default) instead of returning a status.

    **Returns:** a `FitResult`.

    **Reference:** plain gradient descent on the offline objective is what Bach, Baptista,
    Luk & Stuart (2025) ran (§3.3, eq. 2.5); this loop takes any optax optimiser.

    **Example:**

    ```python
    out = fit(lambda p, k: jnp.sum((p - 3.0) ** 2), jnp.zeros(2), optax.adam(0.1), 200,
              key=jax.random.key(0))
    out.params  # ~[3, 3]
    ```
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"fit: n_steps must be a positive Python int; got {n_steps!r}.")
    if not callable(loss_fn):
        raise TypeError(f"fit: loss_fn must be callable as loss_fn(params, key); got {loss_fn!r}.")
    _check_optimizer(optimizer, "fit")
    _check_key(key, "fit")
    n_steps = int(n_steps)
    diff, static = _split_params(params, "fit")
    opt_state = optimizer.init(diff)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(diff))
    losses = np.full(n_steps, np.nan, dtype=dtype)
    grad_norms = np.full(n_steps, np.nan, dtype=dtype)
    status, done, first_failure = STATUS_OK, 0, -1
    for step in range(n_steps):
        new_diff, new_opt_state, loss, grad_norm, param_norm, ok = _fit_step(
            loss_fn, optimizer, diff, static, opt_state, jax.random.fold_in(key, step)
        )
        losses[step], grad_norms[step] = float(loss), float(grad_norm)
        if not bool(ok):
            status, first_failure = STATUS_NONFINITE, step
            if throw:
                what = "loss" if not np.isfinite(losses[step]) else "gradient"
                raise FloatingPointError(
                    f"fit: the {what} became non-finite at step {step} (loss={losses[step]!r}, "
                    f"gradient norm={grad_norms[step]!r}); training stopped without applying it. "
                    "Lower the learning rate, train on shorter windows (fit_windows) or "
                    "reparameterise constrained parameters (SoftplusPositive / ExpPositive); "
                    "pass throw=False to get the last finite parameters in a FitResult."
                )
            break
        diff, opt_state, done = new_diff, new_opt_state, step + 1
        if callback is not None:
            stop = callback(
                TrainingProgress(step, n_steps, float(loss), float(grad_norm), float(param_norm))
            )
            if stop is True:
                status = STATUS_STOPPED
                break
    return FitResult(
        params=eqx.combine(diff, static),
        losses=jnp.asarray(losses),
        grad_norms=jnp.asarray(grad_norms),
        status=status,
        n_steps_done=done,
        first_failure=first_failure,
    )


def _window_arrays(observations: Any, obs_times: Any, window: Any, owner: str):
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(
            f"{owner}: window must be a positive Python int (cycles per window; 1 is "
            f"ROAD-EnKF's local gradient); got {window!r}."
        )
    observations = jnp.asarray(observations)
    obs_times = jnp.asarray(obs_times)
    if observations.ndim != 2:
        raise ValueError(
            f"{owner}: observations must be a 2-D array (T, N_y); got shape {observations.shape}."
        )
    if obs_times.shape != (observations.shape[0],):
        raise ValueError(
            f"{owner}: obs_times must have shape (T,) = ({observations.shape[0]},), one time "
            f"per row of observations; got {obs_times.shape}."
        )
    n_times = observations.shape[0]
    usable = (n_times // int(window)) * int(window)
    if n_times % int(window) != 0:
        raise ValueError(
            f"{owner}: the {n_times} observation times do not split into windows of "
            f"{window} cycles. Pass T divisible by window, e.g. observations[:{usable}] and "
            f"obs_times[:{usable}]."
        )
    n_windows = n_times // int(window)
    obs_w = observations.reshape(n_windows, int(window), observations.shape[1])
    times_w = obs_times.reshape(n_windows, int(window))
    return obs_w, times_w


def _fit_windows_impl(
    build,
    loss,
    optimizer,
    diff,
    static,
    initial,
    obs_w,
    times_w,
    t0,
    key,
    callback,
    save,
    adjoint=None,
):
    n_windows = obs_w.shape[0]
    method0, model0 = build(eqx.combine(diff, static))
    key0 = jax.random.fold_in(key, 0)
    state0 = ff.as_cycled_method(method0).init(
        jax.random.fold_in(key0, _INIT_FOLD), initial, model0
    )
    state0 = jax.lax.stop_gradient(state0)
    t0 = jnp.asarray(t0, dtype=times_w.dtype)
    t_starts = jnp.concatenate([t0[None], times_w[:-1, -1]])

    def window_loss(d, state, obs, times, t_start, k):
        params = eqx.combine(d, static)
        method, model = build(params)
        result = ff.run(
            Resumed(method),
            model,
            state,
            obs,
            times,
            key=k,
            t0=t_start,
            throw=False,
            adjoint=adjoint,
        )
        value = _loss_value(loss(result, obs, params), "fit_windows")
        return value, result.state

    def body(carry, xs):
        d, opt_state, state, alive = carry
        w, obs, times, t_start = xs
        k = jax.random.fold_in(key, w)
        (value, new_state), grads = jax.value_and_grad(window_loss, has_aux=True)(
            d, jax.lax.stop_gradient(state), obs, times, t_start, k
        )
        grad_norm = optax.tree.norm(grads)
        ok = alive & jnp.isfinite(value) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, opt_state, d)
        new_d = _tree_where(ok, eqx.apply_updates(d, updates), d)
        new_opt_state = _tree_where(ok, new_opt_state, opt_state)
        new_state = _tree_where(ok, jax.lax.stop_gradient(new_state), state)
        nan = jnp.full_like(value, jnp.nan)
        value = jnp.where(alive, value, nan)
        grad_norm = jnp.where(alive, grad_norm, nan.astype(grad_norm.dtype))
        if callback is not None:
            jax.debug.callback(
                functools.partial(_report, callback),
                w,
                n_windows,
                value,
                grad_norm,
                optax.tree.norm(new_d),
                alive,
                ordered=True,
            )
        row = (value, grad_norm, ok, new_d if save else None)
        return (new_d, new_opt_state, new_state, ok), row

    carry0 = (diff, optimizer.init(diff), state0, jnp.asarray(True))
    xs = (jnp.arange(n_windows, dtype=jnp.int32), obs_w, times_w, t_starts)
    (d, _, state, alive), (losses, grad_norms, oks, trajectory) = jax.lax.scan(body, carry0, xs)
    failed = ~oks
    first_failure = jnp.where(jnp.any(failed), jnp.argmax(failed), -1).astype(jnp.int32)
    status = jnp.where(alive, STATUS_OK, STATUS_NONFINITE).astype(jnp.int32)
    return d, trajectory, losses, grad_norms, state, status, first_failure


def _report(callback, w, n, loss, grad_norm, param_norm, alive):
    if bool(alive):
        callback(TrainingProgress(int(w), int(n), float(loss), float(grad_norm), float(param_norm)))


_fit_windows_jit = eqx.filter_jit(_fit_windows_impl)


def fit_windows(
    build: Callable[[PyTree], tuple[Any, fxp.AbstractModel]],
    loss: Callable[[ff.RunResult, Float[Array, "k N_y"], PyTree], Real[ArrayLike, ""]],
    params: PyTree,
    optimizer: Any,
    initial: PyTree,
    observations: Float[ArrayLike, "..."],
    obs_times: Real[ArrayLike, "..."],
    *,
    window: int,
    key: PRNGKeyArray,
    t0: Real[ArrayLike, ""] | None = None,
    callback: Callable[[TrainingProgress], Any] | None = None,
    throw: bool = True,
    save_trajectory: bool = True,
    adjoint: Any = None,
) -> WindowFitResult:
    r"""Online training on truncated windows of ``k`` cycles (ROAD-EnKF's loop).

    With windows ``W_w = \{wk, \dots, (w+1)k - 1\}``, ``w = 0, \dots, T/k - 1``:

    $$\big(\mathcal R_w, S_{w+1}\big) = \text{run}\big(\text{method}(\theta_w),
    \text{model}(\theta_w),\ \text{sg}(S_w),\ y_{W_w}\big),\qquad
    \theta_{w+1} = \theta_w + \text{optimizer.update}\big(\nabla_\theta
    \ell(\mathcal R_w, y_{W_w}, \theta_w)\big),$$

    ``sg`` the stop-gradient: the window starts from the previous window's final analysis
    state (``S_0 = method.init(initial)``), run with the parameters before the update, and
    the gradient does not reach back past the window start. ``k = 1`` is the local gradient
    of ROAD-EnKF; ``k = T`` is one gradient step on the whole run. The whole loop is ONE
    compiled `lax.scan` over windows (`filterax.filters.run` inside it, each window
    differentiated as `adjoint` says);
    a window whose loss or gradient is not finite updates nothing and freezes training (the
    rest of the rows are NaN), reported by `status` or, with ``throw=True``, a
    `FloatingPointError` naming the window.

    **Arguments:**

    - `build`: ``build(params) -> (method, model)``: the cycled method (e.g.
      ``EnsembleFilter(ETKF(), inflator=...)``) and model made from the current parameters
      (put the learnable values in with ``eqx.tree_at`` or by constructing them).
    - `loss`: ``loss(result, obs_window, params) -> scalar``: the window's loss from its
      `RunResult` (e.g. ``-jnp.sum(result.log_likelihood)``, the innovation NLL; or an MSE of
      ``result.forecast_mean`` mapped through the observation operator to ``obs_window``).
      The run is made with ``throw=False``: a failed run gives NaN rows, hence a NaN loss,
      which stops training.
    - `params`: pytree / `eqx.Module`; its floating-point array leaves are trained.
    - `optimizer`: an ``optax.GradientTransformation``.
    - `initial`: the method's initial condition for the first window (an ``(N_e, N_x)``
      ensemble for an `EnsembleFilter`).
    - `observations`, `obs_times`: ``(T, N_y)`` and ``(T,)``; ``T`` divisible by `window`.
    - `window`: ``k``, cycles per window (static Python int ``>= 1``).
    - `key`: window ``w`` runs with ``jax.random.fold_in(key, w)`` (and the first window's
      ``init`` with ``fold_in(fold_in(key, 0), 2**32 - 1)``, as `run` would).
    - `t0`: the time of `initial` (default: ``model.t0`` of ``build(params)``).
    - `callback`: ``callback(TrainingProgress)`` after each window (a host callback, ordered;
      leave it ``None`` to `jax.vmap` the loop).
    - `throw`: raise on a non-finite window loss or gradient (default).
    - `save_trajectory`: stack the parameters after every window (default ``True``).
    - `adjoint`: how each window's run is differentiated (`filterax.filters.run`'s
      ``adjoint=``): the full tape by default; `filterax.filters.CheckpointAdjoint()` or
      `TwoLevelCheckpointAdjoint()` bound the memory of long windows (same gradient).

    **Returns:** a `WindowFitResult`.

    **Reference:** Chen, Sanz-Alonso & Willett (2023), *Reduced-order autodifferentiable
    ensemble Kalman filters*, Inverse Problems 39 (truncated backpropagation, Algorithm 1).
    Bach, Baptista, Luk & Stuart (2025) back-propagate through whole runs (their online
    objective, eq. 2.6, is one analysis step with the previous state fixed, i.e. ``k = 1``
    with one optimiser step where they take 100, §3.3.3).

    **Example:**

    ```python
    def build(F):
        return ff.EnsembleFilter(ff.ETKF()), eqx.tree_at(lambda m: m.dynamics.forcing, ssm, F)

    out = fit_windows(build, lambda r, y, p: -jnp.mean(r.log_likelihood), jnp.asarray(6.0),
                      optax.adam(0.05), X0, xp.observations, xp.times, window=10,
                      key=jax.random.key(0))
    ```
    """
    owner = "fit_windows"
    if not callable(build) or not callable(loss):
        raise TypeError(
            f"{owner}: build must be callable as build(params) -> (method, model) and loss as "
            "loss(result, obs_window, params) -> scalar."
        )
    _check_optimizer(optimizer, owner)
    _check_key(key, owner)
    obs_w, times_w = _window_arrays(observations, obs_times, window, owner)
    diff, static = _split_params(params, owner)
    if t0 is None:
        _, model0 = build(params)
        t0 = model0.t0 if isinstance(model0, fxp.AbstractModel) else 0.0
    d, trajectory, losses, grad_norms, state, status, first_failure = _fit_windows_jit(
        build,
        loss,
        optimizer,
        diff,
        static,
        initial,
        obs_w,
        times_w,
        t0,
        key,
        callback,
        bool(save_trajectory),
        ff.check_adjoint(adjoint, owner),
    )
    if save_trajectory:
        trajectory = eqx.combine(trajectory, static)
    else:
        trajectory = None
    result = WindowFitResult(
        params=eqx.combine(d, static),
        trajectory=trajectory,
        losses=losses,
        grad_norms=grad_norms,
        state=state,
        status=status,
        first_failure=first_failure,
    )
    if throw:
        concrete = fxp.concrete_value(status)
        if concrete is None:
            result = eqx.error_if(
                result,
                status != STATUS_OK,
                "fit_windows: a window's loss or gradient became non-finite; training stopped "
                "there. Re-run with throw=False: result.first_failure is the window, "
                "result.params the last finite parameters.",
            )
        elif int(concrete) != STATUS_OK:
            w = int(first_failure)
            raise FloatingPointError(
                f"fit_windows: the loss or gradient of window {w} (cycles {w * int(window)}.."
                f"{(w + 1) * int(window) - 1}) became non-finite (loss={float(losses[w])!r}, "
                f"gradient norm={float(grad_norms[w])!r}); nothing was updated from there on. "
                "Lower the learning rate, use shorter windows, or reparameterise constrained "
                "parameters (SoftplusPositive / ExpPositive); pass throw=False to get the last "
                "finite parameters and result.first_failure."
            )
    return result
