"""Particle-filter parity with DAPPER (rmse.a on L63 sakov2012 / L96 bocquet2010) and speed.

Cases (DAPPER's own benchmark comments; ../shared/REFERENCES.md):

- L63 sakov2012: ``PartFilt(N=100, reg=2.4, NER=0.3)`` 0.38, ``PartFilt(N=800, reg=0.9,
  NER=0.2)`` 0.28, ``OptPF(N=100, Qs=2, reg=0.7, NER=0.3)`` (no published number).
- L96 bocquet2010 (N_x = 10, F = 8, RK4 dt 0.05, observed every step at every other
  component, R = 1.5 I — DAPPER's scalar ``Obs['noise'] = 1.5`` is a variance — no model
  noise; `filterax.zoo.presets.lorenz96_bocquet2010`):
  ``PartFilt(N=100, NER=0.2, reg=1.3)`` 0.36 (REFERENCES: 0.43), ``PartFilt(N=800, NER=0.2,
  reg=0.8)`` 0.25 (0.29), ``OptPF(N=100, NER=0.2, reg=1.0, Qs=0.3)`` 0.37 (0.44),
  ``OptPF(N=800, NER=0.2, reg=0.6, Qs=0.1)`` 0.25 (0.28).

`BootstrapPF(ess_threshold=NER, reg=reg)` is ``PartFilt``; `OptimalProposalPF(qs=Qs, ...)` is
``OptPF`` (the model has no process noise, so the proposal kernel is DAPPER's ``Qs`` term
alone, as in DAPPER). Seeds are vmapped in one compiled program (seed ``s``: truth
``fold_in(key(s), 0)``, particles ``fold_in(key(s), 1)``, run ``fold_in(key(s), 2)``); scores
are time means after the preset's burn-in, mean ± std and median over seeds (a particle filter
on a deterministic model occasionally collapses for a while -- ESS ~ 1 -- and such a seed
dominates the mean; DAPPER's figures are single seeds). Seconds per cycle: one
seed, compiled once, best of ``--repeats`` timed runs (CPU unless a GPU is the default).

The same rows are registered in the leaderboard (`filterax-bench run --suite nongaussian`);
this script adds the median over seeds. Side-by-side speed against DAPPER itself:
``bench/scripts/dapper_speed.py --filters PartFilt-L63-800 ...``.

    uv run --package filterax-bench python bench/scripts/pf_parity.py \
        [--cycles 2000] [--seeds 3] [--json out.json]
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

import filterax.filters as ff  # noqa: E402
from filterax.learn import BootstrapPF, OptimalProposalPF  # noqa: E402
from filterax.zoo import presets  # noqa: E402

# (label, preset, method, N, DAPPER rmse.a or None)
CASES = [
    ("L63 PartFilt N=100 reg2.4 NER0.3", presets.lorenz63_sakov2012,
     BootstrapPF(ess_threshold=0.3, reg=2.4), 100, 0.38),
    ("L63 PartFilt N=800 reg0.9 NER0.2", presets.lorenz63_sakov2012,
     BootstrapPF(ess_threshold=0.2, reg=0.9), 800, 0.28),
    ("L63 OptPF N=100 Qs2 reg0.7 NER0.3", presets.lorenz63_sakov2012,
     OptimalProposalPF(qs=2.0, ess_threshold=0.3, reg=0.7), 100, None),
    ("L96b PartFilt N=100 reg1.3 NER0.2", presets.lorenz96_bocquet2010,
     BootstrapPF(ess_threshold=0.2, reg=1.3), 100, 0.36),
    ("L96b PartFilt N=800 reg0.8 NER0.2", presets.lorenz96_bocquet2010,
     BootstrapPF(ess_threshold=0.2, reg=0.8), 800, 0.25),
    ("L96b OptPF N=100 Qs0.3 reg1.0 NER0.2", presets.lorenz96_bocquet2010,
     OptimalProposalPF(qs=0.3, ess_threshold=0.2, reg=1.0), 100, 0.37),
    ("L96b OptPF N=800 Qs0.1 reg0.6 NER0.2", presets.lorenz96_bocquet2010,
     OptimalProposalPF(qs=0.1, ess_threshold=0.2, reg=0.6), 800, 0.25),
]  # fmt: skip


def _experiment(ssm, method, n, n_cycles):
    def one_seed(key):
        xp = ssm.simulate(jax.random.fold_in(key, 0), n_cycles)
        x0 = ssm.initial_ensemble(jax.random.fold_in(key, 1), n)
        out = ff.run(
            method, ssm, x0, xp.observations, xp.times, key=jax.random.fold_in(key, 2),
            throw=False,
        )  # fmt: skip
        scores = out.scores(xp.truth, ssm.burn_in_cycles)
        scores["status"] = out.status
        scores["resampled"] = jnp.mean(out.diagnostics.resampled.astype(jnp.float64))
        return scores

    return one_seed


def score(label, make, method, n, target, n_cycles, n_seeds):
    ssm = make()
    keys = jnp.stack([jax.random.key(s) for s in range(n_seeds)])
    t = time.perf_counter()
    out = jax.device_get(jax.jit(jax.vmap(_experiment(ssm, method, n, n_cycles)))(keys))
    wall = time.perf_counter() - t
    row = {"case": label, "N": n, "n_cycles": n_cycles, "dapper_rmse_a": target}
    for k in ("rmse_a", "rmse_f", "spread_a"):
        v = np.asarray(out[k])
        row[k] = float(v.mean())
        row[k + "_std"] = float(v.std(ddof=1)) if n_seeds > 1 else 0.0
        row[k + "_median"] = float(np.median(v))
        row[k + "_seeds"] = v.tolist()
    row["status"] = np.asarray(out["status"]).tolist()
    row["resampled_fraction"] = float(np.mean(out["resampled"]))
    row["wall_s_incl_compile"] = wall
    return row


def speed(make, method, n, n_cycles, repeats):
    ssm = make()
    xp = ssm.simulate(jax.random.key(0), n_cycles)
    x0 = ssm.initial_ensemble(jax.random.key(1), n)

    @jax.jit
    def go(key):
        out = ff.run(method, ssm, x0, xp.observations, xp.times, key=key, throw=False)
        return out.analysis_mean

    jax.block_until_ready(go(jax.random.key(2)))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(go(jax.random.key(2)))
        best = min(best, time.perf_counter() - t)
    return best / n_cycles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--speed-cycles", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default=None, help="run the cases whose label contains this")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"device: {device}, {os.cpu_count()} CPUs, load avg {load}, jax {jax.__version__}")
    rows = []
    for label, make, method, n, target in CASES:
        if args.only and args.only not in label:
            continue
        row = score(label, make, method, n, target, args.cycles, args.seeds)
        row["s_per_cycle"] = speed(make, method, n, args.speed_cycles, args.repeats)
        rows.append(row)
        print(
            f"{label}: {args.cycles} cycles x {args.seeds} seeds: rmse.a {row['rmse_a']:.3f} ± "
            f"{row['rmse_a_std']:.3f} (median {row['rmse_a_median']:.3f}; DAPPER {target}), "
            f"spread.a {row['spread_a']:.3f}, "
            f"resampled {row['resampled_fraction']:.2f}, status {row['status']}, "
            f"{1e3 * row['s_per_cycle']:.3f} ms/cycle, wall {row['wall_s_incl_compile']:.0f}s",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "load_avg": load, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
