"""Train the amortised analysis network (issue 12 §3, master list 10.10 / 10.11).

``--system l63`` (default): base = the leaderboard's ``ETKF-10`` on ``lorenz63_sakov2012``
(N_e = 10, infl 1.02, rotation), a dense network. ``--system l96``: base = the leaderboard's
``LETKF-10`` on ``lorenz96_sakov2008`` (N_e = 10, infl 1.04, DAPPER loc_rad 6, no rotation), a
radius-2 STENCIL network shared by the 40 sites (translation- and permutation-equivariant),
its output averaged over the members (`MeanCorrection`: a per-member correction learned to
shrink the over-dispersed ensemble and, cycled, lost the truth on some seeds).

1. Offline (10.10): `filterax.learn.fit_amortised`, fair CRPS of the analysis ensembles
   against the truth on random windows of a training twin (keys 100-103, never scored; the
   leaderboard draws its twins from ``fold_in(key(seed), 0)``).
2. Evaluation on HELD-OUT twins (keys 200+): rmse.a, spread.a and analysis CRPS of the base
   filter and the amortised filter, same truth, initial ensemble and filter keys.
3. Online (10.11, L63 only): continue from the trained parameters on a NEW stream (key 300)
   with `filterax.learn.fit_windows` (windows of 5 cycles, innovation NLL: no truth needed),
   then re-evaluate on the held-out twins.

``--save-weights`` writes ``bench/src/filterax/bench/amortised_<system>.eqx`` (the offline
network), which the leaderboard's ``Amortised-ETKF-10`` / ``Amortised-LETKF-10`` loads.

    uv run python bench/scripts/train_amortised.py [--system l63|l96] [--quick]
        [--save-weights] [--out r.json]
"""

import argparse
import json
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp
from filterax.bench._methods_amortised import (
    L63_INFLATION,
    L63_N_ENSEMBLE,
    L63_WEIGHTS,
    L96_INFLATION,
    L96_LOC_RADIUS,
    L96_N_ENSEMBLE,
    L96_WEIGHTS,
    l63_amortised_filter,
    l63_network,
    l96_amortised_filter,
    l96_network,
)
from filterax.zoo import presets


class System(NamedTuple):
    """What differs between the L63 and L96 runs; everything else is shared."""

    name: str  # the benchmark
    ssm: Any
    base: Any  # the leaderboard row the network corrects
    base_label: str
    amortised: Any  # network -> the amortised cycled method
    network: Any  # key -> the untrained network
    n_ensemble: int
    weights: Any
    learning_rate: float
    online: bool  # run the 10.11 online continuation


def base_filter():
    return ff.EnsembleFilter(
        ff.ETKF(), inflator=fxp.MultiplicativeInflator(L63_INFLATION), rotate=True
    )


def l63_system():
    return System(
        "lorenz63_sakov2012", presets.lorenz63_sakov2012(), base_filter(), "ETKF-10 (base)",
        l63_amortised_filter, l63_network, L63_N_ENSEMBLE, L63_WEIGHTS, 1e-3, True,
    )  # fmt: skip


def l96_system():
    ssm = presets.lorenz96_sakov2008()
    base = ff.EnsembleFilter(
        ff.LETKF(radius=fxp.dapper_radius_to_gc_halfwidth(L96_LOC_RADIUS)),
        inflator=fxp.MultiplicativeInflator(L96_INFLATION),
        context=fxp.geometry_context(ssm),
    )
    return System(
        "lorenz96_sakov2008", ssm, base, "LETKF-10 (base)",
        lambda net: l96_amortised_filter(net, ssm), l96_network, L96_N_ENSEMBLE, L96_WEIGHTS,
        1e-3, False,
    )  # fmt: skip


# (n_train, n_steps, batch, window), (n_eval, eval seeds); --quick: a smoke run
SIZES = {
    "l63": (((4000, 600, 16, 5), (5000, (200, 201, 202))), ((500, 30, 8, 5), (500, (200,)))),
    "l96": (((3000, 200, 2, 40), (3000, (200, 201, 202))), ((600, 10, 4, 3), (600, (200,)))),
}


def evaluate(method, ssm, seeds, n_cycles, n_ensemble):
    rows = []
    for seed in seeds:
        xp = ssm.simulate(jax.random.key(seed), n_cycles)
        x0 = ssm.initial_ensemble(jax.random.key(seed + 1), n_ensemble)
        r = ff.run(
            method, ssm, x0, xp.observations, xp.times, key=jax.random.key(seed + 2),
            save="ensembles", throw=False,
        )  # fmt: skip
        burn = min(ssm.burn_in_cycles, n_cycles // 4)
        s = r.scores(xp.truth, burn)
        crps = fl.crps_loss(r, xp.truth, which="analysis", burn_in=burn)
        rows.append([float(s["rmse_a"]), float(s["spread_a"]), float(crps)])
    m = jnp.asarray(rows)
    return {
        "rmse_a": float(m[:, 0].mean()),
        "rmse_a_sd": float(m[:, 0].std()),
        "spread_a": float(m[:, 1].mean()),
        "crps_a": float(m[:, 2].mean()),
        "per_seed_rmse_a": [r[0] for r in rows],
        "per_seed_crps_a": [r[2] for r in rows],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", choices=("l63", "l96"), default="l63")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument(
        "--save-weights", nargs="?", const="", default=None, metavar="PATH",
        help="write the offline network (default path: the leaderboard row's .eqx)",
    )  # fmt: skip
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=None, help="override: Adam steps")
    ap.add_argument("--window", type=int, default=None, help="override: cycles per window")
    ap.add_argument("--batch", type=int, default=None, help="override: windows per step")
    ap.add_argument("--lr", type=float, default=None, help="override: Adam learning rate")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    sizes = SIZES[args.system][int(args.quick)]
    (n_train, n_steps, batch, window), (n_eval, eval_seeds) = sizes
    n_steps = args.steps or n_steps
    window = args.window or window
    batch = args.batch or batch
    system = l63_system() if args.system == "l63" else l96_system()
    ssm, base, n_e = system.ssm, system.base, system.n_ensemble

    # --- offline training on a training twin (its own keys) -----------------------------------
    # The spin-up from the preset's initial state stays in the training twin: the scored runs
    # start there too, and a network that never saw it can lose the truth there (L96).
    xp = ssm.simulate(jax.random.key(100), n_train)
    x0 = ssm.initial_ensemble(jax.random.key(101), n_e)
    reference = ff.run(
        base, ssm, x0, xp.observations, xp.times, key=jax.random.key(102), save="ensembles"
    ).analyses
    method = system.amortised(system.network(jax.random.key(0)))
    t = time.perf_counter()
    out = fl.fit_amortised(
        method, ssm, reference, xp.truth, xp.observations, xp.times,
        optimizer=optax.adam(args.lr or system.learning_rate), n_steps=n_steps, window=window,
        batch=batch, key=jax.random.key(103),
    )  # fmt: skip
    train_s = time.perf_counter() - t
    trained = out.params
    k = max(1, n_steps // 10)
    print(f"offline training: {n_steps} steps x {batch} windows of {window}: {train_s:.1f} s")
    print(f"  loss (mean of 10-step blocks) first {float(out.losses[:k].mean()):.4f} "
          f"last {float(out.losses[-k:].mean()):.4f}")  # fmt: skip
    if args.save_weights is not None:
        path = args.save_weights or system.weights
        eqx.tree_serialise_leaves(path, trained.kernel.network)
        print(f"  wrote {path}")

    # --- online continuation on a new stream (10.11) ------------------------------------------
    online_row = None
    if system.online:
        stream = ssm.simulate(jax.random.key(300), n_train)

        def build(net):
            return system.amortised(net), ssm

        def nll(result, obs, params):
            return fl.innovation_nll(result)

        t = time.perf_counter()
        online = fl.fit_windows(
            build, nll, trained.kernel.network, optax.adam(1e-4),
            ssm.initial_ensemble(jax.random.key(301), n_e),
            stream.observations, stream.times, window=window, key=jax.random.key(302),
            save_trajectory=False,
        )  # fmt: skip
        online_s = time.perf_counter() - t
        continued = system.amortised(online.params)
        print(f"online continuation: {n_train // window} windows of {window}: {online_s:.1f} s")
        online_row = {"n_cycles": n_train, "window": window, "seconds": online_s,
                      "status": int(online.status)}  # fmt: skip

    # --- held-out evaluation ------------------------------------------------------------------
    t = time.perf_counter()
    table = {
        system.base_label: evaluate(base, ssm, eval_seeds, n_eval, n_e),
        "Amortised (offline)": evaluate(trained, ssm, eval_seeds, n_eval, n_e),
    }
    if system.online:
        table["Amortised (+online)"] = evaluate(continued, ssm, eval_seeds, n_eval, n_e)
    eval_s = time.perf_counter() - t
    print(f"\nheld-out {system.name}, N_e={n_e}, {n_eval} cycles, seeds {eval_seeds} "
          f"({eval_s:.1f} s)")  # fmt: skip
    print(f"{'method':<22}{'rmse.a':>16}{'spread.a':>10}{'crps.a':>9}")
    for name, row in table.items():
        rm = f"{row['rmse_a']:.4f}±{row['rmse_a_sd']:.4f}"
        print(f"{name:<22}{rm:>16}{row['spread_a']:>10.4f}{row['crps_a']:>9.4f}")
    result = {
        "system": system.name,
        "n_ensemble": n_e,
        "train": {"n_cycles": n_train, "n_steps": n_steps, "batch": batch, "window": window,
                  "seconds": train_s, "losses": [float(x) for x in out.losses]},
        "held_out": table,
    }  # fmt: skip
    if online_row is not None:
        result["online"] = online_row
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
