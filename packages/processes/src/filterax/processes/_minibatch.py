"""Mini-batched observations: a series of observation subsets cycled over iterations.

Large data sets (many time windows, many stations) are often assimilated a subset at a time:
iteration ``n`` of the process updates with batch ``b(n)`` only, and one epoch visits every
batch once. This is EnsembleKalmanProcesses.jl's ``ObservationSeries`` with a
``FixedMinibatcher`` (``shuffle=False``) or ``RandomFixedSizeMinibatcher`` (``shuffle=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from filterax.primitives import (
    LowRankUpdate,
    NoiseLike,
    dense_noise,
    noise_structure,
)

from ._checks import check_key, check_obs, checked_obs_noise

__all__ = ["MiniBatcher"]


def _restrict_noise(op: lx.AbstractLinearOperator, idx: np.ndarray) -> lx.AbstractLinearOperator:
    # Keep the structure: a diagonal stays diagonal, low-rank stays low-rank, so batch updates
    # cost what a full update with the same structure would.
    structure = noise_structure(op)
    dtype = op.in_structure().dtype
    if structure == "diagonal":
        return lx.DiagonalLinearOperator(jnp.asarray(lx.diagonal(op), dtype=dtype)[idx])
    if structure == "low_rank":
        assert isinstance(op, LowRankUpdate)
        diag = None if op.diagonal is None else op.diagonal[idx]
        return LowRankUpdate(op.factor[idx], diag)
    return dense_noise(op.as_matrix()[np.ix_(idx, idx)])


class MiniBatcher(eqx.Module):
    r"""Cycles through subsets of one observation vector, one subset per process iteration.

    Batch ``k`` is the index set ``I_k``: observations ``y[I_k]`` with noise ``Gamma[I_k, I_k]``
    and forward outputs ``G(theta)[I_k]``. Iteration ``n`` (0-based) uses batch
    ``b(n) = perm_e[n mod N_b]`` with epoch ``e = n // N_b``: ``perm_e`` is ``0, 1, ...,
    N_b - 1`` for ``shuffle=False``, and a fresh random permutation per epoch (from
    ``fold_in(key, e)``) for ``shuffle=True``. Pure in ``n``, so usable inside ``lax.scan``.

    **Arguments:**

    - `obs`: the full observation vector, shape ``(N_y,)``.
    - `obs_noise`: its noise covariance (any form `as_noise_operator` accepts); each batch keeps
        its structure (diagonal / low-rank / dense).
    - `batches`: ``N_b`` index sequences of equal length ``n_b`` (a compiled loop needs one
        shape; split into equal parts, e.g. ``np.split(np.arange(N_y), N_b)``).
    - `shuffle`: random order within each epoch (needs `key`).
    - `key`: PRNG key for the shuffled order.

    **Reference:** EnsembleKalmanProcesses.jl ``ObservationSeries``, ``FixedMinibatcher``,
    ``RandomFixedSizeMinibatcher``; Kovachki & Stuart (2019), *Ensemble Kalman inversion: a
    derivative-free technique for machine learning tasks*, Inverse Problems 35.

    !!! Example

        ```python
        import jax, numpy as np
        from filterax.processes import MiniBatcher

        y = np.arange(12.0)
        batcher = MiniBatcher(y, 0.1, np.split(np.arange(12), 3))
        [int(batcher.batch_index(n)) for n in range(6)]   # [0, 1, 2, 0, 1, 2]
        idx, y_b, noise_b = batcher.batch(4)              # y_b = y[4:8]
        ```
    """

    indices: Int[Array, "N_b n_b"]
    obs: Float[Array, "N_b n_b"]
    obs_noise: Any
    key: PRNGKeyArray | None
    n_obs: int = eqx.field(static=True)
    shuffle: bool = eqx.field(static=True)

    def __init__(
        self,
        obs: Real[ArrayLike, " N_y"],
        obs_noise: NoiseLike,
        batches: Sequence[Any] | Int[ArrayLike, "N_b n_b"],
        *,
        shuffle: bool = False,
        key: PRNGKeyArray | None = None,
    ):
        obs = jnp.asarray(obs)
        if obs.ndim != 1:
            raise ValueError(f"MiniBatcher(obs=...) must be 1-D (N_y,); got shape {obs.shape}.")
        if not jnp.issubdtype(obs.dtype, jnp.floating):
            obs = obs.astype(float)
        check_obs(obs, "MiniBatcher(obs=...)")
        n_obs = obs.shape[0]
        try:
            rows = [np.asarray(b).reshape(-1) for b in batches]
        except (TypeError, ValueError) as e:
            raise TypeError(
                "MiniBatcher(batches=...) must be a sequence of integer index sequences."
            ) from e
        for row in rows:
            # Float or boolean indices used to be cast to int silently (0.5 -> 0, True -> 1).
            if row.size and not np.issubdtype(row.dtype, np.integer):
                raise TypeError(
                    "MiniBatcher(batches=...) must hold integer indices into obs; got a batch "
                    f"of dtype {row.dtype} ({row.tolist()[:4]}...). Pass index arrays, e.g. "
                    "np.split(np.arange(N_y), n_batches) (for a boolean mask use "
                    "np.flatnonzero(mask))."
                )
        index_rows = [row.astype(np.int64) for row in rows]
        if not index_rows:
            raise ValueError("MiniBatcher(batches=...) needs at least one batch.")
        sizes = {len(b) for b in index_rows}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(
                f"MiniBatcher: every batch must have the same non-zero length (a compiled loop "
                f"needs one shape); got lengths {[len(b) for b in index_rows]}. Split the "
                "observations into equal parts, e.g. np.split(np.arange(N_y), n_batches)."
            )
        idx = np.stack(index_rows)
        if idx.min() < 0 or idx.max() >= n_obs:
            raise ValueError(
                f"MiniBatcher: batch indices must lie in [0, {n_obs}); got range "
                f"[{idx.min()}, {idx.max()}]."
            )
        if shuffle and key is None:
            raise ValueError("MiniBatcher(shuffle=True) needs key=jax.random.key(...).")
        if key is not None:
            check_key(key, "MiniBatcher(key=...)")
        noise = checked_obs_noise(
            obs_noise, n_obs, dtype=obs.dtype, name="MiniBatcher(obs_noise=...)"
        )
        noises = [_restrict_noise(noise, row) for row in idx]
        self.indices = jnp.asarray(idx)
        self.obs = obs[self.indices]
        # One operator whose every array leaf carries a leading batch axis; indexed in `batch`.
        self.obs_noise = jax.tree.map(lambda *leaves: jnp.stack(leaves), *noises)
        self.key = key
        self.n_obs = n_obs
        self.shuffle = bool(shuffle)

    @property
    def n_batches(self) -> int:
        """``N_b``, the number of batches (iterations per epoch)."""
        return self.indices.shape[0]

    @property
    def batch_size(self) -> int:
        """``n_b``, the number of observations in each batch."""
        return self.indices.shape[1]

    def batch_index(self, iteration: Int[ArrayLike, ""]) -> Int[Array, ""]:
        """The batch ``b(n)`` used at 0-based iteration ``n`` (traceable)."""
        iteration = jnp.asarray(iteration)
        epoch, position = jnp.divmod(iteration, self.n_batches)
        if not self.shuffle:
            return position
        assert self.key is not None
        perm = jax.random.permutation(jax.random.fold_in(self.key, epoch), self.n_batches)
        return perm[position]

    def batch(
        self, iteration: Int[ArrayLike, ""]
    ) -> tuple[Int[Array, " n_b"], Float[Array, " n_b"], lx.AbstractLinearOperator]:
        """``(indices, obs, obs_noise)`` of the batch used at iteration ``n`` (traceable)."""
        b = self.batch_index(iteration)
        noise = jax.tree.map(lambda leaf: leaf[b], self.obs_noise)
        return self.indices[b], self.obs[b], noise
