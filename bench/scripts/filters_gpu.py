"""Accelerator benchmarks of issue 4 §5: LETKF at large N_x and vmapped L96 ETKF throughput.

1. One LETKF analysis on a 1-D periodic grid with ``N_x = 2**nx_log2`` points, every point
   observed (``R = I``), ``N_e`` members and ``L = 11`` local observations per point
   (Gaspari–Cohn half-width 2.75 grid units: support ``|d| < 5.5``, i.e. the 11 nearest
   points), 1-D window selection, local analyses chunked. Target on one H100: <= 40 ms per
   analysis at ``N_x = 2**22``, ``N_e = 32``.
2. A vmapped batch of independent Lorenz-96 ETKF (N=20) experiments (``assimilate`` vmapped
   over keys, statistics on): cycles per second summed over the batch. Target on one H100:
   >= 200k cycles/s for a batch of 64.

Timings are after compilation, with ``block_until_ready``, best of ``--repeats``. Defaults
are the issue's sizes on a GPU and small smoke sizes on CPU (CI has no GPU; the numbers there
only show the script runs).

    uv run --package filterax-bench python bench/scripts/filters_gpu.py [--nx-log2 22]
        [--members 32] [--batch 64] [--cycles 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp

import filterax.filters as fxf
import filterax.primitives as fxp
from filterax.zoo import presets


def _best_of(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def letkf_large_grid(nx_log2: int, n_e: int, chunk_log2: int, repeats: int, dtype) -> dict:
    n_x = 2**nx_log2
    grid = jnp.arange(n_x, dtype=dtype)
    filt = fxf.LETKF(
        radius=2.75,
        distance=functools.partial(fxp.periodic, period=float(n_x)),
        max_local_obs=11,
        selection="window",
        chunk_size=min(2**chunk_log2, n_x),
    )
    key_x, key_y = jax.random.split(jax.random.key(0))
    forecast = jax.random.normal(key_x, (n_e, n_x), dtype)
    obs = jax.random.normal(key_y, (n_x,), dtype)

    @jax.jit
    def analysis(forecast, obs):
        out = filt.analysis(
            None, forecast, obs, fxp.IdentityObs(), 1.0, state_coords=grid, obs_coords=grid
        )
        return out.particles

    seconds = _best_of(lambda: analysis(forecast, obs), repeats)
    return {"N_x": n_x, "N_e": n_e, "local_obs": 11, "ms_per_analysis": 1e3 * seconds}


def l96_etkf_batch(batch: int, n_cycles: int, repeats: int) -> dict:
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), n_cycles)
    ens0 = ssm.initial_ensemble(jax.random.key(1), 20)

    @jax.jit
    def run(keys):
        def one(key):
            return fxf.assimilate(
                fxf.ETKF(),
                ssm.dynamics,
                ssm.obs_op,
                ssm.obs_noise,
                ens0,
                xp.observations,
                xp.times,
                key=key,
                inflator=fxp.MultiplicativeInflator(1.04),
                rotate=True,
                throw=False,
            ).scores(xp.truth, 0)["rmse_a"]

        return jax.vmap(one)(keys)

    keys = jax.random.split(jax.random.key(2), batch)
    seconds = _best_of(lambda: run(keys), repeats)
    return {
        "batch": batch,
        "cycles": n_cycles,
        "cycles_per_second": batch * n_cycles / seconds,
        "seconds": seconds,
    }


def main(argv=None) -> None:
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nx-log2", type=int, default=22 if gpu else 14)
    parser.add_argument("--chunk-log2", type=int, default=18 if gpu else 12)
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64 if gpu else 4)
    parser.add_argument("--cycles", type=int, default=2000 if gpu else 100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", args.float64)
    dtype = jnp.float64 if args.float64 else jnp.float32
    device = jax.devices()[0]
    print(f"device: {device.platform} ({getattr(device, 'device_kind', '')}), {dtype.__name__}")
    letkf = letkf_large_grid(args.nx_log2, args.members, args.chunk_log2, args.repeats, dtype)
    print(
        f"LETKF N_x=2^{args.nx_log2} N_e={letkf['N_e']} L=11: "
        f"{letkf['ms_per_analysis']:.2f} ms/analysis (target <= 40 ms on one H100 at 2^22)"
    )
    etkf = l96_etkf_batch(args.batch, args.cycles, args.repeats)
    print(
        f"L96 ETKF N=20 x {etkf['batch']} vmapped experiments: "
        f"{etkf['cycles_per_second']:.0f} cycles/s (target >= 200k on one H100 for 64)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "letkf": letkf, "l96_etkf_batch": etkf}, f, indent=2)


if __name__ == "__main__":
    main()
