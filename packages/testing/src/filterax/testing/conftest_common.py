"""Common pytest configuration: import * from this module in a package's conftest.py."""

import itertools

import jax
import pytest

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
