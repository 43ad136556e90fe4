"""Common pytest configuration: import * from this module in a package's conftest.py."""

import itertools
import os
import re

# A pytest-xdist worker ("gw<i>") runs on one CPU of its own, chosen before JAX starts its
# backend (XLA sizes its thread pools from the affinity). XLA's CPU runtime (jax 0.10) can
# hang in jitted gradients of batched linear algebra when its pools span the cores two workers
# share; one core per worker is the workaround that held (docs/failure_modes.md).
_worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
if _worker is not None and hasattr(os, "sched_setaffinity"):
    _cpus = sorted(os.sched_getaffinity(0))
    if len(_cpus) > 1:
        os.sched_setaffinity(0, {_cpus[int(_worker.group(1)) % len(_cpus)]})

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

__all__ = ["getkey", "release_compiled_programs"]


@pytest.fixture
def getkey():
    """A function returning a fresh, deterministic PRNG key on each call."""
    counter = itertools.count()
    base = jax.random.key(5678)

    def _getkey():
        return jax.random.fold_in(base, next(counter))

    return _getkey


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    A long test session compiles thousands of programs; keeping every executable alive grew
    the process until XLA's CPU compiler crashed (a segmentation fault in
    ``backend_compile_and_load`` late in the filters suite). Modules rarely share programs, so
    clearing between modules costs little.
    """
    yield
    jax.clear_caches()
