"""Command line: ``filterax-bench demo``."""

from __future__ import annotations

import argparse
import statistics

from ._version import __version__


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_lorenz96_demo

    print(
        f"Lorenz-96 (Sakov & Oke 2008 setup), stochastic EnKF N={args.n_ensemble}, "
        f"inflation {args.inflation}, {args.cycles} cycles, seeds {args.seeds}"
    )
    res = run_lorenz96_demo(
        n_ensemble=args.n_ensemble, inflation=args.inflation, n_cycles=args.cycles, seeds=args.seeds
    )

    def pm(xs):
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.3f} ± {sd:.3f}"

    print(f"  burn-in cycles       : {res.burn_in_cycles}")
    print(
        f"  rmse.a (mean ± sd)   : {pm(res.rmse_a)}"
        f"   (published {res.published_rmse_a}, DAPPER 1.8.1)"
    )
    print(f"  rmse.f               : {pm(res.rmse_f)}")
    print(f"  spread.a             : {pm(res.spread_a)}")
    print(f"  per-seed rmse.a      : {', '.join(f'{x:.3f}' for x in res.rmse_a)}")
    print(f"  compile time         : {res.compile_seconds:.2f} s")
    print(
        f"  time per cycle       : {1e3 * res.seconds_per_cycle:.3f} ms"
        " (all seeds in one vmapped scan)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``filterax-bench`` console script."""
    parser = argparse.ArgumentParser(prog="filterax-bench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"filterax-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Lorenz-96 twin experiment with a stochastic EnKF")
    demo.add_argument("--n-ensemble", type=int, default=40)
    demo.add_argument("--inflation", type=float, default=1.06)
    demo.add_argument("--cycles", type=int, default=1400)
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)
