r"""How `run` differentiates a run: the adjoint (reverse-mode) strategies of the driver.

A cycled run is one `lax.scan` over ``T`` cycles. Reverse-mode differentiation of a scan
stores every cycle's intermediate values (the *tape*) and replays them backwards: memory grows
like ``T`` times one cycle's residuals, which for an ensemble filter (``N_e x N_x`` members,
the integrator's stages, the analysis' factorisations) is large. The strategies, chosen with
``run(..., adjoint=...)`` as in diffrax's ``diffeqsolve(..., adjoint=...)``:

| strategy | gradient | memory (carries + cycle residuals) | compute |
|---|---|---|---|
| `FullAdjoint` | exact | ``T`` cycles' residuals | 1 forward + 1 backward |
| `CheckpointAdjoint` | exact | ``T`` carries + 1 cycle's residuals | + 1 forward |
| `TwoLevelCheckpointAdjoint` | exact | ``~2 sqrt(T)`` carries + 1 cycle's | + 2 forwards |
| `TruncatedAdjoint` | truncated every ``k`` cycles | as full (or per-cycle checkpoint) | as full |

The three exact strategies give the same gradient up to round-off (they recompute the same
operations); `TruncatedAdjoint` stops the gradient through the carried state every
``window`` cycles (truncated back-propagation through time), which is what makes gradients of
long *chaotic* runs usable: the exact gradient of a 1000-cycle Lorenz-96 run is dominated by
the exponential growth of perturbations and its sign changes from key to key, while windows of
10–200 cycles give consistent descent directions. ``window=1`` is the local gradient of
ROAD-EnKF (Chen, Sanz-Alonso & Willett 2023).

**References:** Griewank & Walther (2000), *ACM TOMS* 26 (checkpointing, revolve); Chen, Xu,
Zhang & Guestrin (2016), arXiv:1604.06174 (``sqrt(T)`` two-level checkpointing); Williams &
Peng (1990), *Neural Computation* 2 (truncated BPTT); Chen, Sanz-Alonso & Willett (2023),
*SIAM/ASA JUQ* (ROAD-EnKF).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

__all__ = [
    "AbstractAdjoint",
    "AbstractFlatAdjoint",
    "CheckpointAdjoint",
    "FullAdjoint",
    "TruncatedAdjoint",
    "TwoLevelCheckpointAdjoint",
]


def _check_positive_int(value: Any, name: str, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a Python int >= 1; got {value!r}.")


class AbstractAdjoint(eqx.Module):
    """How `filterax.filters.run` builds the backward pass of its cycle loop.

    An adjoint transforms the driver's per-cycle function (``wrap_cycle``: e.g. checkpoint
    it, or cut the gradient through the carried state) and may ask for the cycles to be
    grouped into segments (``segment_size``) whose scan is itself checkpointed
    (``checkpoint_segments``). The forward values never change: every strategy runs the
    same operations with the same keys, so results are identical and only the gradients'
    memory, compute (and, for `TruncatedAdjoint`, value) differ.
    """

    @abc.abstractmethod
    def wrap_cycle(self, cycle: Callable, step_of: Callable[[Any], Any]) -> Callable:
        """The cycle function ``(carry, inputs) -> (carry, rows)`` the driver scans;
        ``step_of(inputs)`` is the cycle's index ``k``."""

    @abc.abstractmethod
    def segment_size(self, n_cycles: int) -> int | None:
        """Cycles per checkpointed segment, or ``None`` for one flat scan."""

    @property
    @abc.abstractmethod
    def checkpoint_segments(self) -> bool:
        """Whether each segment's scan is rematerialised on the backward pass."""


class AbstractFlatAdjoint(AbstractAdjoint):
    """An adjoint over one flat scan of the cycles (no segments): only `wrap_cycle` to
    write."""

    def segment_size(self, n_cycles: int) -> None:
        del n_cycles
        return None

    @property
    def checkpoint_segments(self) -> bool:
        return False


class FullAdjoint(AbstractFlatAdjoint):
    """Store the whole tape: the fastest backward pass, memory ``O(T)`` cycles' residuals.

    The default; right for short runs and for forward-only use (no gradient, no cost).
    """

    def wrap_cycle(self, cycle: Callable, step_of: Callable[[Any], Any]) -> Callable:
        del step_of
        return cycle


class CheckpointAdjoint(AbstractFlatAdjoint):
    """`jax.checkpoint` on every cycle: store only the carried state of each cycle and
    recompute one cycle's intermediates during the backward pass.

    Memory ``O(T)`` *states* (an ensemble is much smaller than a cycle's residuals: the
    integrator's stages, the analysis' factorisations), one extra forward pass. Exact.
    """

    def wrap_cycle(self, cycle: Callable, step_of: Callable[[Any], Any]) -> Callable:
        del step_of
        return jax.checkpoint(cycle, prevent_cse=False)


class TwoLevelCheckpointAdjoint(AbstractAdjoint):
    r"""Two-level (``\sqrt T``) checkpointing: segments of ``s`` cycles, each segment
    checkpointed as a whole and each cycle inside it checkpointed too.

    The forward pass stores the state at the start of each of the ``ceil(T/s)`` segments;
    the backward pass replays one segment at a time (storing its ``s`` states) and each
    cycle once more. With ``s = ceil(sqrt(T))`` (the default) memory is ``O(sqrt T)``
    states plus one cycle's residuals, for two extra forward passes. Exact.

    **Arguments:**

    - `segment_length`: cycles per segment (a Python int ``>= 1``); ``None`` (default)
      chooses ``ceil(sqrt(T))``. The last segment is padded with empty cycles (no
      observation, a zero-length window) that change nothing.
    """

    segment_length: int | None = eqx.field(default=None, static=True)

    def __check_init__(self) -> None:
        if self.segment_length is not None:
            _check_positive_int(self.segment_length, "segment_length", "TwoLevelCheckpointAdjoint")

    def wrap_cycle(self, cycle: Callable, step_of: Callable[[Any], Any]) -> Callable:
        del step_of
        return jax.checkpoint(cycle, prevent_cse=False)

    def segment_size(self, n_cycles: int) -> int:
        if self.segment_length is not None:
            return min(self.segment_length, max(n_cycles, 1))
        return max(1, math.ceil(math.sqrt(n_cycles)))

    @property
    def checkpoint_segments(self) -> bool:
        return True


class TruncatedAdjoint(AbstractFlatAdjoint):
    r"""Truncated back-propagation through time: the gradient through the carried state
    is cut every `window` cycles.

    With the state ``S_k`` carried into cycle ``k``, cycles ``k = w, 2w, 3w, ...`` start
    from ``\operatorname{stop\_gradient}(S_k)``: a loss on cycle ``j`` is differentiated
    through the parameters' use in cycles ``w\lfloor j/w \rfloor .. j`` only. The forward
    values are unchanged. ``window >= T`` is the exact (full) gradient; ``window = 1`` is
    the local gradient of ROAD-EnKF (Chen, Sanz-Alonso & Willett 2023), each cycle's loss
    differentiated through that cycle's forecast and analysis alone.

    Why: the exact gradient of a long chaotic run grows like ``e^{\lambda_1 T}`` and is
    useless for training (its sign changes with the key); windows short compared with the
    predictability time give consistent descent directions (see the tutorial "8.C Adjoint
    strategies"). For an online training loop that carries the ensemble across windows and
    takes an optimiser step per window, see ``filterax.learn``.

    **Arguments:**

    - `window`: cycles per truncation window (a Python int ``>= 1``).
    - `checkpoint`: also `jax.checkpoint` each cycle (memory as `CheckpointAdjoint`).
    """

    window: int = eqx.field(static=True)
    checkpoint: bool = eqx.field(default=False, static=True)

    def __check_init__(self) -> None:
        _check_positive_int(self.window, "window", "TruncatedAdjoint")
        if not isinstance(self.checkpoint, bool):
            raise TypeError(
                f"TruncatedAdjoint: checkpoint must be a bool; got {self.checkpoint!r}."
            )

    def wrap_cycle(self, cycle: Callable, step_of: Callable[[Any], Any]) -> Callable:
        window = self.window
        inner = jax.checkpoint(cycle, prevent_cse=False) if self.checkpoint else cycle

        def truncated(carry: PyTree, inputs: Any) -> tuple[PyTree, Any]:
            step = step_of(inputs)
            cut = (step > 0) & (step % window == 0)
            stopped = jax.lax.stop_gradient(carry)
            carry = jax.tree_util.tree_map(
                lambda s, c: jnp.where(cut, s, c) if eqx.is_inexact_array(c) else c,
                stopped,
                carry,
            )
            return inner(carry, inputs)

        return truncated


def check_adjoint(adjoint: Any, owner: str) -> AbstractAdjoint:
    """``adjoint`` if it is an `AbstractAdjoint` (``None`` means `FullAdjoint`), else a
    `TypeError` naming the choices."""
    if adjoint is None:
        return FullAdjoint()
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            f"{owner}: adjoint must be one of FullAdjoint(), CheckpointAdjoint(), "
            "TwoLevelCheckpointAdjoint(segment_length=None) or TruncatedAdjoint(window=k) "
            f"(filterax.filters); got {type(adjoint).__name__}."
        )
    return adjoint
