"""The persistent compilation cache: a second run loads the cell's program from disk."""

import json
import os
import subprocess
import sys

import pytest

from filterax.bench._compile_cache import default_cache_dir, enable_compile_cache

CELL = ["--methods", "ETKF-10", "--benchmarks", "lorenz63_sakov2012", "--cycles", "80"]


def _run_cell(tmp_path, *flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("FILTERAX_BENCH_COMPILE_CACHE", None)
    cmd = [sys.executable, "-m", "filterax.bench", "run", *CELL, "--seeds", "0", "--force"]
    cmd += ["--no-render", "--no-progress", "--out", str(tmp_path / "out"), *flags]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
    cells = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    (cell,) = cells.values()
    return cell


def test_second_run_loads_the_compiled_cell_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = _run_cell(tmp_path, "--compile-cache", str(cache))
    assert not first["compile_cache_hit"]
    assert any(cache.iterdir()), "nothing was written to the cache directory"
    second = _run_cell(tmp_path, "--compile-cache", str(cache))
    assert second["compile_cache_hit"]
    # the cached program computes the same numbers
    assert second["rmse_a"] == first["rmse_a"]
    off = _run_cell(tmp_path, "--no-compile-cache")
    assert not off["compile_cache_hit"]


def test_cache_directory_defaults_and_switches(monkeypatch, tmp_path):
    monkeypatch.setenv("FILTERAX_BENCH_COMPILE_CACHE", "off")
    assert default_cache_dir() is None
    monkeypatch.setenv("FILTERAX_BENCH_COMPILE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FILTERAX_BENCH_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "filterax-bench" / "jax"
    assert enable_compile_cache(None) is None


def test_an_unusable_cache_directory_warns_and_runs_without(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="compilation cache disabled"):
        assert enable_compile_cache(blocker / "cache") is None


def test_quick_suite_cells_compile_without_host_callbacks():
    # JAX never stores a program with host callbacks (an eqx.error_if on traced values) in
    # its persistent cache, and each callback in a scan is a host round trip per cycle: the
    # quick suite's cells must have none (hyper-parameters known when the cell is built are
    # checked then; see filterax.primitives.assume_checked).
    import jax
    import jax.numpy as jnp

    from filterax.bench._runner import cell_function, plan_cells

    with_callbacks = []
    for plan in plan_cells(None, None, [0], suite="quick"):
        fn = jax.vmap(cell_function(plan.method, plan.benchmark, plan.n_cycles), in_axes=(0, None))
        if "callback" in str(jax.make_jaxpr(fn)(jnp.stack([jax.random.key(0)]), {})):
            with_callbacks.append(plan.key)
    assert not with_callbacks
