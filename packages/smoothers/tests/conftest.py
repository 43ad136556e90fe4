import gc

import jax
import pytest

from filterax.testing.conftest_common import *  # noqa: F403


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    # Every compiled XLA program holds memory mappings; run in one process, the whole suite
    # would exceed vm.max_map_count (65530 on Linux) and LLVM then fails to compile ("Cannot
    # allocate memory", or a segfault). Programs are not shared between modules: drop them.
    yield
    jax.clear_caches()
    gc.collect()
