"""XLA CPU runtime settings the harness needs."""

from __future__ import annotations

import os

# jaxlib 0.10's CPU runtime can deadlock when two thunks of one program run batched LAPACK
# kernels (vmapped Cholesky / triangular solves, as in a seed x inflation grid) on its
# multi-threaded Eigen pool at the same time: every pool thread waits in ParallelBatchMap for
# work queued behind it (seen on 2-core machines; all threads parked in futex_wait, no CPU).
# Single-threaded Eigen avoids it; vmap parallelism over seeds and grid points is unaffected.
_FLAG = "--xla_cpu_multi_thread_eigen"


def ensure_xla_cpu_flags() -> None:
    """Add ``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` unless the user set it.

    Takes effect only if no JAX computation has run yet in this process (XLA reads the flags
    when the CPU backend starts), so it runs when `filterax.bench` is imported.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}=false".strip()


ensure_xla_cpu_flags()
