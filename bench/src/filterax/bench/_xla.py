"""XLA CPU runtime settings the harness needs."""

from __future__ import annotations

import os

# jaxlib 0.10's batched CPU LAPACK kernels (Cholesky, eigh, triangular solves over a vmapped
# batch) split the batch over XLA's intra-op thread pool and block until the pieces finish
# (ParallelBatchMap). When as many such kernels run concurrently as the pool has threads,
# every pool thread waits for work queued behind it and the process hangs with no CPU use
# (seen on 2-core machines with seed x inflation grids of ETKF-40; the pool is sized from the
# CPU count). jaxlib >= 0.11 compiles that path out. Until then, a pool of at least
# MIN_POOL_THREADS threads (PJRT_NPROC, read when the CPU backend starts) keeps a spare
# thread for the queued pieces; the idle extra threads cost nothing measurable.
MIN_POOL_THREADS = 8


def ensure_cpu_thread_pool() -> None:
    """Set ``PJRT_NPROC`` to `MIN_POOL_THREADS` on machines with fewer CPUs, unless set.

    Takes effect only if no JAX computation has run yet in this process (the CPU backend
    reads it when it starts), so it runs when `filterax.bench` is imported.
    """
    if "PJRT_NPROC" in os.environ or "NPROC" in os.environ:
        return
    if (os.cpu_count() or 1) < MIN_POOL_THREADS:
        os.environ["PJRT_NPROC"] = str(MIN_POOL_THREADS)


ensure_cpu_thread_pool()
