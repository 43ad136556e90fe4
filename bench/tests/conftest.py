import os

import pytest

from filterax.testing.conftest_common import *  # noqa: F403

# The CLI's persistent compilation cache defaults to the user's cache directory: tests that
# call the CLI must not write there (test_compile_cache.py points it at a temporary one).
os.environ.setdefault("FILTERAX_BENCH_COMPILE_CACHE", "off")


@pytest.fixture
def registry_snapshot():
    """Restore the registries after a test that registers things."""
    # Imported here: conftest_common configures JAX (x64) before filterax.bench is imported.
    from filterax.bench import _registry

    _registry.ensure_builtins()  # snapshot the built-ins too
    saved = (
        dict(_registry._BENCHMARKS),
        dict(_registry._METHODS),
        dict(_registry._SUITES),
        dict(_registry._PENDING_TUNED),
    )
    yield
    for reg, old in zip(
        (
            _registry._BENCHMARKS,
            _registry._METHODS,
            _registry._SUITES,
            _registry._PENDING_TUNED,
        ),
        saved,
        strict=True,
    ):
        reg.clear()
        reg.update(old)
