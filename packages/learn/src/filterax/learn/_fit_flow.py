r"""`fit_conditional_flow`: maximum likelihood for a conditional flow as ONE `lax.scan`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._enkf_normaliser import EnKFNormaliser
from ._flows import ConditionalFlow

__all__ = ["FlowFit", "fit_conditional_flow", "flow_nll", "trainable_spec"]


class FlowFit(eqx.Module):
    """What `fit_conditional_flow` returns.

    **Fields:** `flow` (the fitted `ConditionalFlow`), `losses` (``(n_steps,)`` the mean NLL
    before each step), `opt_state` (the optimiser state after the last step: pass it back to
    warm-start the next fit).
    """

    flow: ConditionalFlow
    losses: Float[Array, " n_steps"]
    opt_state: PyTree


def trainable_spec(flow: ConditionalFlow) -> PyTree:
    """The filter spec of a flow's trainable leaves: every inexact array except those of
    `EnKFNormaliser` layers (closed-form, never trained)."""
    if not isinstance(flow, ConditionalFlow):
        raise TypeError(f"flow must be a ConditionalFlow; got {type(flow).__name__}.")
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, flow)
    frozen = tuple(
        jax.tree_util.tree_map(lambda _: False, s) if isinstance(layer, EnKFNormaliser) else s
        for layer, s in zip(flow.layers, spec.layers, strict=True)
    )
    return eqx.tree_at(lambda f: f.layers, spec, frozen)


def flow_nll(
    flow: ConditionalFlow, x: Float[ArrayLike, "N N_x"], y: Float[ArrayLike, "N N_y"]
) -> Float[Array, ""]:
    r"""The mean negative log-likelihood ``-(1/N) Σ_i log p_θ(x_i | y_i)``."""
    return -jnp.mean(jax.vmap(flow.log_prob)(jnp.asarray(x), jnp.asarray(y)))


def fit_conditional_flow(
    flow: ConditionalFlow,
    x: Float[ArrayLike, "N N_x"],
    y: Float[ArrayLike, "N N_y"],
    optimiser: optax.GradientTransformation,
    n_steps: int,
    *,
    key: PRNGKeyArray | None = None,
    batch_size: int | None = None,
    opt_state: PyTree = None,
) -> FlowFit:
    r"""Fit ``p_θ(x | y)`` to joint samples by maximum likelihood: ``n_steps`` optax steps.

    $$θ \leftarrow θ - \text{optimiser}\big(\nabla_θ\, \tfrac1B \textstyle\sum_{i \in
    \text{batch}} -\log p_θ(x_i \mid y_i)\big)$$

    as one fixed-length `lax.scan` (usable inside `jit`, `vmap` and a filter's compiled cycle;
    the conditional-flow filter calls it every cycle, warm-started). `EnKFNormaliser` layers
    are held fixed (`trainable_spec`). A step whose loss or gradient is not finite is skipped
    (the parameters and optimiser state stay as they were), so one bad batch cannot poison
    the flow.

    **Arguments:**

    - `flow`: the `ConditionalFlow` to start from.
    - `x`, `y`: ``(N, N_x)`` and ``(N, N_y)`` joint samples.
    - `optimiser`: an optax `GradientTransformation` (e.g. ``optax.adam(3e-3)``).
    - `n_steps`: the number of steps (static int ``>= 0``; 0 returns `flow` unchanged).
    - `key`: draws the minibatches (needed only with `batch_size`).
    - `batch_size`: ``None`` for full-batch steps (deterministic), else the minibatch size
      (drawn without replacement each step).
    - `opt_state`: an optimiser state to continue from (``None``: ``optimiser.init``).

    **Returns:** a `FlowFit` (fitted flow, the loss before each step, the optimiser state).

    **Reference:** Papamakarios et al. (2021), *JMLR* 22, §2.3 (forward-KL fitting).
    """
    if not isinstance(flow, ConditionalFlow):
        raise TypeError(f"flow must be a ConditionalFlow; got {type(flow).__name__}.")
    if not (isinstance(n_steps, int) and n_steps >= 0):
        raise ValueError(f"n_steps must be a Python int >= 0; got {n_steps!r}.")
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must be 2-D arrays (N, N_x) and (N, N_y) with the same N; got shapes "
            f"{x.shape} and {y.shape}."
        )
    n = x.shape[0]
    if batch_size is not None:
        if not (isinstance(batch_size, int) and 1 <= batch_size <= n):
            raise ValueError(f"batch_size must be an int in [1, {n}] or None; got {batch_size!r}.")
        if key is None:
            raise ValueError("batch_size needs a key to draw the minibatches: pass key=...")
    spec = trainable_spec(flow)
    params, static = eqx.partition(flow, spec)
    if opt_state is None:
        opt_state = optimiser.init(params)

    def loss_fn(p: PyTree, xb: Array, yb: Array) -> Array:
        return flow_nll(eqx.combine(p, static), xb, yb)

    def body(carry: tuple[PyTree, PyTree], step_key: Any) -> tuple[tuple[PyTree, PyTree], Array]:
        p, s = carry
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = jax.random.choice(step_key, n, (batch_size,), replace=False)
            xb, yb = x[idx], y[idx]
        loss, grads = eqx.filter_value_and_grad(loss_fn)(p, xb, yb)
        updates, s_new = optimiser.update(grads, s, p)
        p_new = eqx.apply_updates(p, updates)
        ok = jnp.isfinite(loss)
        for g in jax.tree_util.tree_leaves(grads):
            ok = ok & jnp.all(jnp.isfinite(g))
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        p_next = jax.tree_util.tree_map(keep, p_new, p)
        s_next = jax.tree_util.tree_map(lambda a, b: keep(a, b) if eqx.is_array(a) else a, s_new, s)
        return (p_next, s_next), loss

    keys = (
        jax.random.split(key, n_steps) if key is not None else jnp.zeros((n_steps, 2), jnp.uint32)
    )
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), keys, length=n_steps)
    return FlowFit(eqx.combine(params, static), jnp.asarray(losses, x.dtype), opt_state)
