"""LETKF grid points split over a `jax.sharding.Mesh` equal the single-device analysis.

pytest's process has already initialised JAX with one CPU device, so the check runs in a fresh
interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (4 virtual CPU
devices). The child prints a JSON report; the assertions are made here.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh

import filterax.filters as ff

CHILD = textwrap.dedent(
    """
    import functools, json
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh
    import filterax.primitives as fxp
    import filterax.filters as ff

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    n_e, n_x = 8, 42  # 42 is not a multiple of 4: the grid is padded and trimmed
    grid = jnp.arange(n_x, dtype=jnp.float64)
    sites = grid[::2]
    X = jnp.asarray(2.0 + rng.standard_normal((n_e, n_x)))
    y = np.asarray(rng.standard_normal(len(sites)))
    y[5] = np.nan
    y = jnp.asarray(y)
    distance = functools.partial(fxp.periodic, period=float(n_x))
    devices = np.array(jax.devices())
    meshes = {
        "none": (None, None),
        "1d": (Mesh(devices, ("grid",)), None),
        "2d": (Mesh(devices.reshape(2, 2), ("a", "b")), None),
        "2d_one_axis": (Mesh(devices.reshape(2, 2), ("a", "b")), "b"),
    }

    def make(radius, mesh, axis):
        return ff.LETKF(radius=radius, distance=distance, max_local_obs=9, chunk_size=5,
                        mesh=mesh, mesh_axis=axis)

    def analysis(radius, mesh, axis):
        out = make(radius, mesh, axis).analysis(
            None, X, y, lambda x: x[::2], 1.0, state_coords=grid, obs_coords=sites)
        return out.particles, out.info.n_local_obs

    results = {}
    for name, (mesh, axis) in meshes.items():
        run = jax.jit(functools.partial(analysis, mesh=mesh, axis=axis))
        particles, n_local = run(3.0)
        # Gradients through shard_map: checked on the 1-D mesh (same code path for the rest).
        grad = None
        if name in ("none", "1d"):
            grad = jax.jit(jax.grad(lambda r: jnp.sum(run(r)[0] ** 2)))(3.0)
        results[name] = (particles, n_local, grad)
    ref_particles, ref_n_local, ref_grad = results.pop("none")
    report = {}
    for name, (particles, n_local, grad) in results.items():
        report[name] = dict(
            particles=float(jnp.max(jnp.abs(particles - ref_particles))),
            n_local=bool(jnp.all(n_local == ref_n_local)),
            grad=None if grad is None else float(abs(grad - ref_grad)),
            grad_value=float(ref_grad),
            n_devices=len(particles.sharding.device_set),
            changed=float(jnp.max(jnp.abs(ref_particles - X))),
        )
    print("REPORT" + json.dumps(report))
    """
)


def test_sharded_letkf_equals_single_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")][-1]
    report = json.loads(line[len("REPORT") :])
    assert set(report) == {"1d", "2d", "2d_one_axis"}
    assert report["1d"]["grad"] is not None
    for name, entry in report.items():
        # The same local analyses run on each device: identical up to float64 round-off
        # (XLA may fuse the sharded program differently).
        assert entry["particles"] < 1e-12, (name, entry)
        assert entry["n_local"], name
        if entry["grad"] is not None:
            assert entry["grad"] < 1e-9 * max(1.0, abs(entry["grad_value"])), (name, entry)
        assert entry["n_devices"] in (2, 4), (name, entry)
        assert entry["changed"] > 1e-2, name  # the analysis did something


def test_mesh_axis_must_exist():
    mesh = Mesh(jax.devices()[:1], ("grid",))
    with pytest.raises(ValueError, match="mesh_axis"):
        ff.LETKF(radius=1.0, mesh=mesh, mesh_axis="x")
    with pytest.raises(TypeError, match="Mesh"):
        ff.LETKF(radius=1.0, mesh="grid")


def test_single_device_mesh_equals_no_mesh():
    # In-process: a 1-device mesh goes through shard_map and must change nothing.
    mesh = Mesh(jax.devices()[:1], ("grid",))
    grid = jnp.arange(12.0)
    X = jax.random.normal(jax.random.key(0), (5, 12))
    y = jax.random.normal(jax.random.key(1), (12,))
    kw = dict(radius=2.0, max_local_obs=5, chunk_size=4)

    @jax.jit
    def run_both(X, y):
        return [
            ff.LETKF(**kw, mesh=m)
            .analysis(None, X, y, lambda x: x, 1.0, state_coords=grid, obs_coords=grid)
            .particles
            for m in (None, mesh)
        ]

    ref, out = run_both(X, y)
    assert jnp.max(jnp.abs(out - ref)) < 1e-12
    assert jnp.max(jnp.abs(ref - X)) > 1e-2
