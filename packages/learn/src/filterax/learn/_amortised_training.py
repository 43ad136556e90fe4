r"""`fit_amortised`: train an amortised analysis network on short windows of a twin experiment.

Each optimiser step draws a batch of window starts ``s`` on the training trajectory, runs the
filter (through `filterax.filters.run`) for ``k`` cycles from the *reference* ensemble at
``s - 1`` (the base filter's analysis there, a constant: the gradient is truncated at the
window start, as in `fit_windows`) and scores the analysis ensembles against the truth with the
fair ensemble CRPS. Random windows from a stored reference run decorrelate the batch (the
sequential windows of `fit_windows` see one stretch of the attractor per step); `fit_windows`
is the loop to continue training online on a stream (master list 10.11).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real

import filterax.filters as ff
import filterax.primitives as fxp

from ._losses import crps_loss
from ._training import FitResult, TrainingProgress, fit

__all__ = ["fit_amortised"]


def _default_trainable(method: Any) -> Any:
    return method.kernel.network


def fit_amortised(
    method: fxp.AbstractCycledMethod,
    model: fxp.AbstractModel,
    reference: Float[ArrayLike, "T N_e N_x"],
    truth: Float[ArrayLike, "T N_x"],
    observations: Float[ArrayLike, "T N_y"],
    obs_times: Real[ArrayLike, " T"],
    *,
    optimizer: Any,
    n_steps: int,
    window: int,
    batch: int,
    key: PRNGKeyArray,
    trainable: Callable[[Any], PyTree] = _default_trainable,
    starts: Any = None,
    callback: Callable[[TrainingProgress], Any] | None = None,
    throw: bool = True,
) -> FitResult:
    r"""Train the network of an amortised filter on random windows of a twin experiment.

    With window starts ``s_b \sim \mathcal U\{1, \dots, T - k\}`` (``b = 1..B``, fresh each
    step) and ``X^{a}_{s:s+k}(\theta)`` the analysis ensembles of
    ``run(method(\theta), model, reference[s-1], y_{s:s+k})``:

    $$L(\theta) = \frac1B \sum_b \frac1{k N_x} \sum_{t=s_b}^{s_b+k-1}\sum_{j}
    \mathrm{CRPS}_\text{fair}\big(\{x^{a,(i)}_{t,j}(\theta)\}_i,\ x^\dagger_{t,j}\big),$$

    minimised with `fit` (one compiled step; a non-finite loss or gradient stops training).

    Why the CRPS against the truth: in a twin experiment the truth is known, and the fair CRPS
    is a proper score of the whole analysis ensemble — it rewards an accurate mean AND a
    calibrated spread, where an MSE of the mean would let the network collapse the ensemble
    (which then diverges). The innovation NLL (`innovation_nll`) needs no truth but scores the
    FORECAST, reaching the analysis only through the next cycle; it is the loss to continue
    training on observations alone (`fit_windows`).

    **Arguments:**

    - `method`: the cycled method to train, e.g. ``EnsembleFilter(AmortisedAnalysis(ETKF(),
      net), inflator=...)``.
    - `model`: the state-space model it runs with.
    - `reference`: ``(T, N_e, N_x)`` the ensembles to start windows from: row ``s - 1`` is
      the state before cycle ``s`` (e.g. ``run(base, ..., save="ensembles").analyses`` of the
      base filter on the same trajectory).
    - `truth`, `observations`, `obs_times`: ``(T, N_x)``, ``(T, N_y)``, ``(T,)`` the twin.
    - `optimizer`: an ``optax.GradientTransformation``.
    - `n_steps`: optimiser steps; `window`: ``k`` cycles per window; `batch`: ``B`` random
      windows per step (Python ints ``>= 1``; ``k < T``; `batch` is ignored with `starts`).
    - `key`: step ``s`` uses ``fold_in(key, s)`` for its window starts and filter keys.
    - `trainable`: ``trainable(method) -> pytree`` selecting what is trained (default: the
      network of an `EnsembleFilter`'s `AmortisedAnalysis` kernel, ``method.kernel.network``).
    - `starts`: ``None`` (default: ``B`` random starts per step) or a fixed 1-D array of
      window starts in ``[1, T - k]`` used at every step (full-batch training on fixed
      windows: a deterministic objective, e.g. to check that training lowers it).
    - `callback`, `throw`: as for `fit`.

    **Returns:** a `FitResult` whose `params` is the trained METHOD.

    **Reference:** the offline objective of Bach, Baptista, Luk & Stuart (2025, eq. 2.5)
    sums over the whole trajectory with the KL / log-likelihood terms; here the loss is the
    CRPS (Gneiting & Raftery 2007) over truncated windows (Chen, Sanz-Alonso & Willett 2023)
    — a departure made because a network-pushed ensemble has no tractable density.
    """
    owner = "fit_amortised"
    for name, value, low in (("n_steps", n_steps, 1), ("window", window, 1), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{owner}: {name} must be a Python int >= {low}; got {value!r}.")
    if not isinstance(model, fxp.AbstractModel):
        raise TypeError(f"{owner}: model must be an AbstractModel; got {type(model).__name__}.")
    reference = jnp.asarray(reference)
    truth = jnp.asarray(truth)
    observations = jnp.asarray(observations)
    obs_times = jnp.asarray(obs_times)
    if observations.ndim != 2:
        raise ValueError(f"{owner}: observations must be (T, N_y); got {observations.shape}.")
    n_times = observations.shape[0]
    if obs_times.shape != (n_times,):
        raise ValueError(f"{owner}: obs_times must be (T,) = ({n_times},); got {obs_times.shape}.")
    if truth.ndim != 2 or truth.shape[0] != n_times:
        raise ValueError(f"{owner}: truth must be (T, N_x) with T={n_times}; got {truth.shape}.")
    if reference.ndim != 3 or reference.shape[0] != n_times or reference.shape[2] != truth.shape[1]:
        raise ValueError(
            f"{owner}: reference must be (T, N_e, N_x) = ({n_times}, N_e, {truth.shape[1]}), "
            "the base filter's analysis ensembles (run(..., save='ensembles').analyses); got "
            f"{reference.shape}."
        )
    if window >= n_times:
        raise ValueError(
            f"{owner}: window={window} leaves no window start in a run of T={n_times} cycles; "
            f"pass window < T (windows start at cycles 1..T-window)."
        )
    if starts is not None:
        starts = jnp.asarray(starts)
        concrete = fxp.concrete_value(starts)
        if starts.ndim != 1 or starts.shape[0] < 1 or not jnp.issubdtype(starts.dtype, jnp.integer):
            raise ValueError(
                f"{owner}: starts must be a non-empty 1-D integer array of window starts; got "
                f"shape {starts.shape} and dtype {starts.dtype}."
            )
        if concrete is not None and (concrete.min() < 1 or concrete.max() > n_times - window):
            raise ValueError(
                f"{owner}: window starts must lie in [1, T - window] = [1, {n_times - window}]; "
                f"got min {concrete.min()}, max {concrete.max()}."
            )
    try:
        network = trainable(method)
    except AttributeError as err:
        raise TypeError(
            f"{owner}: trainable(method) failed ({err}). The default expects "
            "EnsembleFilter(AmortisedAnalysis(base, network), ...); pass trainable=... to "
            "select the parameters of another method."
        ) from err

    def loss_fn(net: PyTree, step_key: PRNGKeyArray) -> Array:
        trained = eqx.tree_at(trainable, method, net)
        k_start, k_run = jax.random.split(step_key)
        if starts is None:
            step_starts = jax.random.randint(k_start, (batch,), 1, n_times - window + 1)
        else:
            step_starts = starts

        def one(s: Array, k: PRNGKeyArray) -> Array:
            def cut(x: Array) -> Array:
                return jax.lax.dynamic_slice_in_dim(x, s, window)

            result = ff.run(
                trained,
                model,
                jax.lax.stop_gradient(reference[s - 1]),
                cut(observations),
                cut(obs_times),
                key=k,
                t0=obs_times[s - 1],
                save="ensembles",
                throw=False,
            )
            return crps_loss(result, cut(truth), which="analysis")

        keys = jax.random.split(k_run, step_starts.shape[0])
        return jnp.mean(jax.vmap(one)(step_starts, keys))

    out = fit(loss_fn, network, optimizer, n_steps, key=key, callback=callback, throw=throw)
    return FitResult(
        params=eqx.tree_at(trainable, method, out.params),
        losses=out.losses,
        grad_norms=out.grad_norms,
        status=out.status,
        n_steps_done=out.n_steps_done,
        first_failure=out.first_failure,
    )
