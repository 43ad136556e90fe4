"""iEnKS parity with DAPPER 1.8.1 (rmse.a on L63 sakov2012 / L96 sakov2008) and seconds per cycle.

Scores: seeds vmapped in one compiled program, keys as in `filterax.bench` (seed ``s``:
truth ``fold_in(key(s), 0)``, initial ensemble ``fold_in(key(s), 1)``, run
``fold_in(key(s), 2)``), time means after each preset's burn-in, reported as mean ± std over
seeds. Targets (../shared/REFERENCES.md, DAPPER): L63 iEnKS Sqrt Lag 1 N=10 infl 1.02 rot:
rmse.a 0.31; L96 iEnKS Sqrt N=40 infl 1.01 rot: 0.17.

Speed: ONE experiment (no vmap) per case, compiled once, then the best of ``--repeats`` timed
runs with `jax.block_until_ready`, on whatever JAX device is default (CPU here). DAPPER's
numbers are numpy, one thread, statistics off: L63 iEnKS ~28 ms/cycle, L96 iEnKS N=20
~6 ms/cycle. float64 throughout (as DAPPER).

    uv run --package filterax-bench python bench/scripts/ienks_parity.py \
        [--l63-cycles 5000] [--l96-cycles 2000] [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import filterax.primitives as fxp  # noqa: E402
from filterax.smoothers import iEnKS  # noqa: E402
from filterax.zoo import presets  # noqa: E402

# (name, preset, N_e, inflation, DAPPER rmse.a, DAPPER ms/cycle or None)
SCORE_CASES = [
    ("L63 iEnKS Sqrt Lag1 N=10 infl1.02 rot", presets.lorenz63_sakov2012, 10, 1.02, 0.31),
    ("L96 iEnKS Sqrt Lag1 N=40 infl1.01 rot", presets.lorenz96_sakov2008, 40, 1.01, 0.17),
]
# DAPPER ms/cycle: ../shared/REFERENCES.md "Speed of the reference implementation" (DAPPER 1.8.1,
# numpy, 1 thread, statistics off; L63 iEnKS, L96 iEnKS N=20) -- published figures, not re-measured
# here (DAPPER is not installed in this workspace).
SPEED_CASES = [
    ("L63 iEnKS N=10", presets.lorenz63_sakov2012, 10, 1.02, 28.0),
    ("L96 iEnKS N=20", presets.lorenz96_sakov2008, 20, 1.04, 6.0),
    ("L96 iEnKS N=40", presets.lorenz96_sakov2008, 40, 1.01, None),
]


def _experiment(ssm, n_e, infl, n_cycles):
    smoother = iEnKS(lag=1, n_iter=10, variant="sqrt")

    def one_seed(key):
        xp = ssm.simulate(jax.random.fold_in(key, 0), n_cycles)
        ens0 = ssm.initial_ensemble(jax.random.fold_in(key, 1), n_e)
        res = smoother.run(
            ssm.dynamics,
            ssm.obs_op,
            ssm.obs_noise,
            ens0,
            xp.observations,
            xp.times,
            key=jax.random.fold_in(key, 2),
            inflator=fxp.MultiplicativeInflator(infl),
            rotate=True,
            throw=False,
        )
        scores = res.scores(xp.truth, ssm.burn_in_cycles)
        scores["status"] = res.status
        scores["iterations"] = jnp.mean(res.iterations.astype(jnp.float64))
        return scores

    return one_seed


def score(name, make, n_e, infl, target, n_cycles, n_seeds):
    ssm = make()
    keys = jnp.stack([jax.random.key(s) for s in range(n_seeds)])
    fn = jax.jit(jax.vmap(_experiment(ssm, n_e, infl, n_cycles)))
    t = time.perf_counter()
    out = jax.device_get(fn(keys))
    wall = time.perf_counter() - t
    row = {"case": name, "n_cycles": n_cycles, "burn_in_cycles": ssm.burn_in_cycles}
    for k in ("rmse_a", "rmse_s", "rmse_f", "spread_a", "spread_s"):
        v = np.asarray(out[k])
        row[k] = float(v.mean())
        row[k + "_std"] = float(v.std(ddof=1)) if n_seeds > 1 else 0.0
        row[k + "_seeds"] = v.tolist()
    row["status"] = np.asarray(out["status"]).tolist()
    row["mean_iterations"] = float(np.mean(out["iterations"]))
    row["dapper_rmse_a"] = target
    row["wall_s_incl_compile"] = wall
    return row


def speed(name, make, n_e, infl, dapper_ms, n_cycles, repeats):
    ssm = make()
    xp = ssm.simulate(jax.random.key(0), n_cycles)
    ens0 = ssm.initial_ensemble(jax.random.key(1), n_e)
    smoother = iEnKS(lag=1, n_iter=10, variant="sqrt")

    @jax.jit
    def run(key, ens0, obs, times):
        res = smoother.run(
            ssm.dynamics,
            ssm.obs_op,
            ssm.obs_noise,
            ens0,
            obs,
            times,
            key=key,
            inflator=fxp.MultiplicativeInflator(infl),
            rotate=True,
            throw=False,
        )
        return res.analysis_mean, res.smoothed_mean, res.analysis_spread

    args = (jax.random.key(2), ens0, xp.observations, xp.times)
    t = time.perf_counter()
    jax.block_until_ready(run(*args))
    compile_s = time.perf_counter() - t
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(*args))
        best = min(best, time.perf_counter() - t)
    ms = 1e3 * best / n_cycles
    return {
        "case": name,
        "n_cycles": n_cycles,
        "ms_per_cycle": ms,
        "dapper_ms_per_cycle": dapper_ms,
        "speedup": None if dapper_ms is None else dapper_ms / ms,
        "compile_plus_first_run_s": compile_s,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l63-cycles", type=int, default=5000)
    parser.add_argument("--l96-cycles", type=int, default=2000)
    parser.add_argument("--speed-cycles", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"device: {device}, {os.cpu_count()} CPUs, load avg {load}, jax {jax.__version__}")

    scores = []
    for (name, make, n_e, infl, target), n_cycles in zip(
        SCORE_CASES, (args.l63_cycles, args.l96_cycles), strict=True
    ):
        row = score(name, make, n_e, infl, target, n_cycles, args.seeds)
        scores.append(row)
        print(
            f"{name}: {n_cycles} cycles x {args.seeds} seeds: rmse.a {row['rmse_a']:.3f} ± "
            f"{row['rmse_a_std']:.3f} (DAPPER {target}), rmse.s {row['rmse_s']:.3f} ± "
            f"{row['rmse_s_std']:.3f}, rmse.f {row['rmse_f']:.3f}, spread.a "
            f"{row['spread_a']:.3f}, status {row['status']}, "
            f"wall {row['wall_s_incl_compile']:.0f}s",
            flush=True,
        )
    speeds = []
    for name, make, n_e, infl, dapper_ms in SPEED_CASES:
        row = speed(name, make, n_e, infl, dapper_ms, args.speed_cycles, args.repeats)
        speeds.append(row)
        ref = "" if dapper_ms is None else f" (DAPPER ~{dapper_ms} ms, x{row['speedup']:.1f})"
        print(
            f"{name}: {row['ms_per_cycle']:.3f} ms/cycle{ref}, compile+1st run "
            f"{row['compile_plus_first_run_s']:.1f}s",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device, "load_avg": load, "scores": scores, "speed": speeds},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
