"""The climatological statistics of a benchmark, shared by the reference methods.

Climatology, optimal interpolation, 3D-Var and the static part of EnVar all need the mean and
covariance of the benchmark model's invariant measure. They come from one long free run
(`filterax.zoo.StateSpaceModel.climatology`) with a key of its own, independent of every scoring
seed (DAPPER estimates them from the truth being scored, which flatters short experiments), and
are computed once per benchmark, run length and dtype in a process.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["CLIMATOLOGY_SEED", "climatology_statistics"]

# Far from every scoring seed (benchmarks score seeds 0, 1, 2, ...).
CLIMATOLOGY_SEED = 2**31 - 1


def climatology_statistics(benchmark: Any, n_cycles: int | None = None) -> tuple[Any, Any]:
    """``(mean (N_x,), cov (N_x, N_x))`` of `benchmark`'s model from a free run of `n_cycles`
    observation times (default: `filterax.zoo.StateSpaceModel.climatology`'s, ten published
    experiments and at least 10 000), keyed by `CLIMATOLOGY_SEED`; cached per benchmark name,
    run length and the current default float dtype."""
    dtype = str(jnp.dtype(jnp.result_type(float)))
    return _cached(benchmark.name, n_cycles, dtype, benchmark)


@functools.lru_cache(maxsize=32)
def _cached(name: str, n_cycles: int | None, dtype: str, benchmark: Any) -> tuple[Any, Any]:
    del name, dtype  # cache keys only
    return benchmark.ssm.climatology(jax.random.key(CLIMATOLOGY_SEED), n_cycles)
