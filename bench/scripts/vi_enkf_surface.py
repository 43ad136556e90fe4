"""The variational cost surface of the EnKF over inflation x localisation radius (Bach,
Baptista, Luk & Stuart 2025, §3.5, Figs 5-6), and gradient descent on the same cost.

    uv run python bench/scripts/vi_enkf_surface.py --quick --out vi_enkf.json --plot plots/

A command-line wrapper of `filterax.bench._vi_enkf` (setups, grids, the vmapped surface and the
L-BFGS descent live there; the registered experiments ``vi_enkf_surface_l96``,
``vi_enkf_surface_ks`` and ``vi_enkf_gd`` of ``filterax-bench experiments run`` call the same
functions). Grids: --quick 7 x 7 (KS 3 x 3), --grid medium 10 x 10, default the paper's
20 x 20 (KS 10 x 10).

Paper / authors' saved surfaces (VI_REPRODUCTION.md §2): L96 N = 5 argmin at r <= 5,
lambda 1.1-1.2; N = 20 at r >= 20 (r = 37, lambda = 1.385, plateau r = 25-39). Absolute costs
differ from the authors' by the log-likelihood constant: subtract 8960 from the L96 costs here.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 x 7 grid, 10 L-BFGS steps")
    parser.add_argument(
        "--grid",
        choices=("paper", "medium"),
        default="paper",
        help="without --quick: the paper's 20 x 20 grid or a 10 x 10 one (radius 1, 5, ..., 37)",
    )
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write JSON here")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="contour PNGs here")
    parser.add_argument("--ens", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--ks", action="store_true", help="also the KS surface (slow)")
    parser.add_argument("--no-gd", action="store_true", help="skip gradient descent")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    from filterax.bench._experiment_plots import make_experiment_plots
    from filterax.bench._vi_enkf import print_case, run_surfaces

    size = "quick" if args.quick else args.grid
    steps = {"quick": 10, "medium": 15, "paper": 20}[size]
    cases = run_surfaces("L96", args.ens, size, gd_steps=None if args.no_gd else steps)
    if args.ks:
        cases.update(run_surfaces("KS", args.ens, "quick" if args.quick else "paper"))
    for case in cases.values():
        print_case(case)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(list(cases.values()), indent=1))
    if args.plot:
        args.plot.mkdir(parents=True, exist_ok=True)
        for p in make_experiment_plots({"vi_enkf": {"result": cases, "plot": ["cost-surface"]}}):
            (args.plot / p.filename).write_bytes(p.png)


if __name__ == "__main__":
    main()
