"""Seconds per assimilation cycle of filterax filters vs DAPPER 1.8.1 (filters issue §5).

Each case is ONE experiment (one seed, no vmap), statistics on (forecast/analysis mean, spread
and log-likelihood stacked every cycle by ``assimilate(save="stats")``), compiled once, then
timed over ``--cycles`` cycles as the best of ``--repeats`` runs. DAPPER's numbers
(../shared/REFERENCES.md) are numpy, one thread, statistics OFF — the comparison is
conservative for filterax.

Every filter runs in its default configuration (what a user gets): for the LETKF that is
``selection="all"`` (every observation a candidate, ``L = N_y = 40 >= N_e``) and the
Newton–Schulz ``N_e x N_e`` transforms (``transform_method="newton"``);
``--letkf-transform eigh`` times the batched-LAPACK alternative. The machine's core count and
load average are printed with the results (timings on a shared machine are only comparable
back to back).

    uv run python bench/scripts/filters_speed.py [--cycles 2000] [--repeats 3] [--json out.json]
        [--cases "L96 LETKF N=20"] [--letkf-transform newton|eigh]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import filterax.filters as fxf
import filterax.primitives as fxp
from filterax.zoo import presets

DAPPER_MS = {"L96 ETKF N=20": 1.1, "L96 LETKF N=20": 9.0, "L63 ETKF N=10": 2.6}


def _case(name, letkf_transform=None):
    if name == "L96 ETKF N=20":
        model, filt, n_e, ctx = presets.lorenz96_sakov2008(), fxf.ETKF(), 20, None
        infl = 1.04
    elif name == "L96 LETKF N=20":
        model, n_e, infl = presets.lorenz96_sakov2008(), 20, 1.04
        options = {} if letkf_transform is None else {"transform_method": letkf_transform}
        filt = fxf.LETKF(
            radius=fxp.dapper_radius_to_gc_halfwidth(4.0),
            distance=lambda a, b: fxp.periodic(a, b, 40.0),
            **options,
        )
        coords = jnp.arange(40.0)[:, None]
        ctx = {"state_coords": coords, "obs_coords": coords}
    elif name == "L63 ETKF N=10":
        model, filt, n_e, ctx, infl = presets.lorenz63_sakov2012(), fxf.ETKF(), 10, None, 1.02
    else:
        raise ValueError(name)
    return model, filt, n_e, ctx, infl


def measure(name, n_cycles, repeats, letkf_transform=None):
    model, filt, n_e, ctx, infl = _case(name, letkf_transform)
    twin = model.simulate(jax.random.key(0), n_cycles)
    ens0 = model.initial_ensemble(jax.random.key(1), n_e)

    @jax.jit
    def run(key, ens0, obs, times):
        res = fxf.assimilate(
            filt,
            model.dynamics,
            model.obs_op,
            model.obs_noise,
            ens0,
            obs,
            times,
            key=key,
            inflator=fxp.MultiplicativeInflator(infl),
            rotate=False,
            save="stats",
            throw=False,
            context=ctx,
        )
        return res.analysis_mean, res.analysis_spread, res.log_likelihood

    args = (jax.random.key(2), ens0, twin.observations, twin.times)
    t0 = time.perf_counter()
    jax.block_until_ready(run(*args))
    compile_s = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(run(*args))
        best = min(best, time.perf_counter() - t0)
    rmse = float(np.mean(np.asarray(fxp.rmse(out[0], twin.truth))[model.burn_in_cycles :]))
    return {
        "case": name,
        "ms_per_cycle": 1e3 * best / n_cycles,
        "dapper_ms_per_cycle": DAPPER_MS[name],
        "speedup": DAPPER_MS[name] / (1e3 * best / n_cycles),
        "compile_s": compile_s,
        "rmse_a": rmse,
        "n_cycles": n_cycles,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--cases", nargs="+", default=list(DAPPER_MS), choices=list(DAPPER_MS), metavar="CASE"
    )
    parser.add_argument("--letkf-transform", choices=("newton", "eigh"), default=None)
    args = parser.parse_args(argv)
    rows = [measure(name, args.cycles, args.repeats, args.letkf_transform) for name in args.cases]
    device = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"device: {device}, jax {jax.__version__}, {args.cycles} cycles, best of {args.repeats}")
    print(f"cpus: {os.cpu_count()}, load average (1, 5, 15 min): {load}")
    print(f"{'case':18s} {'ms/cycle':>9s} {'DAPPER':>7s} {'speed-up':>9s} {'compile s':>9s} rmse.a")
    for r in rows:
        print(
            f"{r['case']:18s} {r['ms_per_cycle']:9.4f} {r['dapper_ms_per_cycle']:7.1f} "
            f"{r['speedup']:8.1f}x {r['compile_s']:9.2f} {r['rmse_a']:.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device,
                    "jax": jax.__version__,
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(),
                    "rows": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
