"""Static benchmarks where the EnKF fails: a conditional normalising flow vs the EnKF
(issue 13 §3, static). A thin wrapper over `filterax.bench._experiments_flow`, which the
registered experiments ``flow_static_square`` and ``flow_static_abs`` run
(``filterax-bench experiments run flow_static_square flow_static_abs [--quick]``, with
targets and a figure in the report); this script keeps free sizes:

    uv run python bench/scripts/flow_static.py --out flow_static.json
    uv run python bench/scripts/flow_static.py --quick     # N = 1000, 300 steps, 2 seeds

Problems (x ~ N(0, 1), one observation y* = 1): ``square``, y = x^2 + N(0, 0.5^2), and
``abs``, y = |x| + N(0, 0.5^2): the EnKF gain is ~0 (it returns the prior) and the exact
posterior is bimodal. Score: W1 to the grid-computed posterior, mean ± std over seeds, and
seconds per fit (compiled, after warm-up). See the module docstring for the method.

Measured (``filterax-bench experiments run flow_static_square flow_static_abs``, full size:
N = 2000, 600 steps, 5 seeds, float64, one CPU core shared with other jobs): square: EnKF
0.244 ± 0.007, spline flow 0.029 ± 0.010, affine flow 0.071 ± 0.007; abs: EnKF 0.176 ± 0.008,
spline 0.032 ± 0.008, affine 0.056 ± 0.006 (7-10 s per fit under load).
"""

from __future__ import annotations

import argparse
import json

import jax

from filterax.bench._experiments_flow import FULL, PROBLEMS, QUICK, run_flow_static

jax.config.update("jax_enable_x64", True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=FULL["n"], help="joint samples")
    parser.add_argument("--steps", type=int, default=FULL["steps"], help="optimiser steps")
    parser.add_argument("--seeds", type=int, default=FULL["seeds"])
    parser.add_argument("--layers", type=int, default=2, help="spline couplings")
    parser.add_argument("--quick", action="store_true", help="the experiments' quick size")
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.n, args.steps, args.seeds = QUICK["n"], QUICK["steps"], QUICK["seeds"]
    config = {k: getattr(args, k) for k in ("n", "steps", "seeds", "layers")}
    print(f"config: {config}")
    results = {}
    for name in PROBLEMS:
        res = run_flow_static(name, args.n, args.steps, args.seeds, layers=args.layers)
        res.pop("figure")
        results[name] = res
        for method in ("enkf", "spline", "affine"):
            r = res[method]
            extra = f"  {r['seconds_per_fit']:.2f} s/fit" if "seconds_per_fit" in r else ""
            print(f"{name:7s} {method:7s} W1 = {r['w1_mean']:.4f} ± {r['w1_std']:.4f}{extra}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"config": config, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
