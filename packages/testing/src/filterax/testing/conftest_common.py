"""Common pytest configuration: import * from this module in a package's conftest.py."""

import itertools

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

__all__ = ["getkey"]


@pytest.fixture
def getkey():
    """A function returning a fresh, deterministic PRNG key on each call."""
    counter = itertools.count()
    base = jax.random.key(5678)

    def _getkey():
        return jax.random.fold_in(base, next(counter))

    return _getkey
