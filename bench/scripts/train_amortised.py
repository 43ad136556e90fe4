"""Train the amortised analysis network (issue 12 §3, master list 10.10 / 10.11) on L63.

Base: the leaderboard's ``ETKF-10`` on ``lorenz63_sakov2012`` (N_e = 10, infl 1.02, rotation).
1. Offline (10.10): `filterax.learn.fit_amortised`, fair CRPS of the analysis ensembles
   against the truth on random windows of a training twin (keys 100-102, never scored).
2. Evaluation on HELD-OUT twins (keys 200+): rmse.a, spread.a and analysis CRPS of the base
   ETKF and the amortised filter, same truth, initial ensemble and filter keys.
3. Online (10.11): continue from the trained parameters on a NEW stream (key 300) with
   `filterax.learn.fit_windows` (windows of 5 cycles, innovation NLL: no truth needed), then
   re-evaluate on the held-out twins.

``--save-weights`` writes ``bench/src/filterax/bench/amortised_l63.eqx`` (the offline network),
which the leaderboard's ``Amortised-ETKF-10`` loads.

    uv run python bench/scripts/train_amortised.py [--quick] [--save-weights] [--out r.json]
"""

import argparse
import json
import time

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
    l63_amortised_filter,
    l63_network,
)
from filterax.zoo import presets


def base_filter():
    return ff.EnsembleFilter(
        ff.ETKF(), inflator=fxp.MultiplicativeInflator(L63_INFLATION), rotate=True
    )


def evaluate(method, ssm, seeds, n_cycles):
    rows = []
    for seed in seeds:
        xp = ssm.simulate(jax.random.key(seed), n_cycles)
        x0 = ssm.initial_ensemble(jax.random.key(seed + 1), L63_N_ENSEMBLE)
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
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--save-weights", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    n_train, n_steps, batch, window = (500, 30, 8, 5) if args.quick else (4000, 600, 16, 5)
    n_eval, eval_seeds = (500, (200,)) if args.quick else (5000, (200, 201, 202))
    ssm = presets.lorenz63_sakov2012()
    base = base_filter()

    # --- offline training on a training twin (its own keys) -----------------------------------
    xp = ssm.simulate(jax.random.key(100), n_train)
    x0 = ssm.initial_ensemble(jax.random.key(101), L63_N_ENSEMBLE)
    reference = ff.run(
        base, ssm, x0, xp.observations, xp.times, key=jax.random.key(102), save="ensembles"
    ).analyses
    method = l63_amortised_filter(l63_network(jax.random.key(0)))
    t = time.perf_counter()
    out = fl.fit_amortised(
        method, ssm, reference, xp.truth, xp.observations, xp.times,
        optimizer=optax.adam(1e-3), n_steps=n_steps, window=window, batch=batch,
        key=jax.random.key(103),
    )  # fmt: skip
    train_s = time.perf_counter() - t
    trained = out.params
    k = max(1, n_steps // 10)
    print(f"offline training: {n_steps} steps x {batch} windows of {window}: {train_s:.1f} s")
    print(f"  loss (mean of 10-step blocks) first {float(out.losses[:k].mean()):.4f} "
          f"last {float(out.losses[-k:].mean()):.4f}")  # fmt: skip
    if args.save_weights:
        eqx.tree_serialise_leaves(L63_WEIGHTS, trained.kernel.network)
        print(f"  wrote {L63_WEIGHTS}")

    # --- online continuation on a new stream (10.11) ------------------------------------------
    stream = ssm.simulate(jax.random.key(300), n_train)

    def build(net):
        return l63_amortised_filter(net), ssm

    def nll(result, obs, params):
        return fl.innovation_nll(result)

    t = time.perf_counter()
    online = fl.fit_windows(
        build, nll, trained.kernel.network, optax.adam(1e-4),
        ssm.initial_ensemble(jax.random.key(301), L63_N_ENSEMBLE),
        stream.observations, stream.times, window=window, key=jax.random.key(302),
        save_trajectory=False,
    )  # fmt: skip
    online_s = time.perf_counter() - t
    continued = l63_amortised_filter(online.params)
    print(f"online continuation: {n_train // window} windows of {window}: {online_s:.1f} s")

    # --- held-out evaluation ------------------------------------------------------------------
    table = {
        "ETKF-10 (base)": evaluate(base, ssm, eval_seeds, n_eval),
        "Amortised (offline)": evaluate(trained, ssm, eval_seeds, n_eval),
        "Amortised (+online)": evaluate(continued, ssm, eval_seeds, n_eval),
    }
    print(f"\nheld-out L63 sakov2012, N_e={L63_N_ENSEMBLE}, {n_eval} cycles, seeds {eval_seeds}")
    print(f"{'method':<22}{'rmse.a':>16}{'spread.a':>10}{'crps.a':>9}")
    for name, row in table.items():
        rm = f"{row['rmse_a']:.4f}±{row['rmse_a_sd']:.4f}"
        print(f"{name:<22}{rm:>16}{row['spread_a']:>10.4f}{row['crps_a']:>9.4f}")
    result = {
        "system": "lorenz63_sakov2012",
        "n_ensemble": L63_N_ENSEMBLE,
        "train": {"n_cycles": n_train, "n_steps": n_steps, "batch": batch, "window": window,
                  "seconds": train_s, "losses": [float(x) for x in out.losses]},
        "online": {"n_cycles": n_train, "window": window, "seconds": online_s,
                   "status": int(online.status)},
        "held_out": table,
    }  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
