"""Memory, time and agreement of `run`'s adjoint strategies, and why truncated windows exist.

Part 1 (issue 12, "Differentiable assimilation"): the gradient of the negative log-likelihood
of an ETKF run (L96, N_x = 40, N_e = 40, multiplicative inflation 1.02, float64, every state
observed with R = I, model forcing F = 7 against a truth with F = 8) with respect to the
model forcing, for T in ``--lengths`` cycles and each adjoint strategy:

- ``temp MiB``: XLA's ``memory_analysis().temp_size_in_bytes`` of the compiled
  value-and-gradient program (the peak temporary buffer, the tape included);
- ``s``: the median wall time of ``--repeats`` calls of the compiled program;
- ``rel. diff``: the gradient's relative difference to the full tape (exact strategies only).

Targets: two-level (sqrt T) checkpointing >= 100x less memory than the full tape at T = 1024,
gradients equal to 1e-6 relative, time <= 3x the full tape.

Part 2: dNLL/dF at F = 7 (truth 8: the descent direction is dF > 0, i.e. a negative
derivative) over ``--keys`` independent twin experiments of 1024 cycles, through the whole
run (`FullAdjoint`) and through truncated windows (`TruncatedAdjoint(window=k)`). Chaos makes
the full derivative astronomically large with a key-dependent sign; windows short against the
predictability time all point the right way.

    uv run --package filterax-bench python bench/scripts/adjoint_memory.py \
        [--lengths 256 1024 4096] [--json bench-results/adjoint_memory.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import filterax.filters as ff  # noqa: E402
import filterax.primitives as fxp  # noqa: E402
from filterax.zoo import Lorenz96, StateSpaceModel  # noqa: E402

N_X, N_E, DT = 40, 40, 0.05

STRATEGIES = {
    "full tape": ff.FullAdjoint(),
    "per-cycle checkpoint": ff.CheckpointAdjoint(),
    "two-level sqrt(T)": ff.TwoLevelCheckpointAdjoint(),
    "truncated k=10": ff.TruncatedAdjoint(window=10),
}


def twin(key, n_cycles):
    """A twin experiment on the attractor (truth spun up for 50 time units) and an initial
    ensemble N(truth_0, I)."""
    k_spin, k_sim, k_ens = jax.random.split(key, 3)
    dynamics = Lorenz96(n=N_X, forcing=8.0, dt=DT)
    x_spun = dynamics(8.0 + jax.random.normal(k_spin, (N_X,)), 0.0, 50.0)
    truth = StateSpaceModel(
        dynamics,
        obs_op=fxp.IdentityObs(),
        obs_noise=1.0,
        dt_obs=DT,
        x0_mean=x_spun,
        x0_cov=1e-6,
    )
    xp = truth.simulate(k_sim, n_cycles)
    ensemble0 = xp.truth[0] + jax.random.normal(k_ens, (N_E, N_X))
    return xp, ensemble0


def nll(forcing, observations, times, ensemble0, adjoint):
    model = fxp.Model(Lorenz96(n=N_X, forcing=forcing, dt=DT), fxp.IdentityObs(), 1.0)
    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.02))
    out = ff.run(
        method,
        model,
        ensemble0,
        observations,
        times,
        key=jax.random.key(0),
        adjoint=adjoint,
        throw=False,
    )
    return -jnp.sum(out.log_likelihood)


def measure(n_cycles, repeats):
    xp, ensemble0 = twin(jax.random.key(1), n_cycles)
    args = (jnp.asarray(7.0), xp.observations, xp.times, ensemble0)
    rows, ref = [], None
    for name, adjoint in STRATEGIES.items():
        fn = jax.jit(jax.value_and_grad(lambda f, y, t, e, a=adjoint: nll(f, y, t, e, a)))
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            value, grad = jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
        grad = float(grad)
        if ref is None:
            ref = grad
        exact = not isinstance(adjoint, ff.TruncatedAdjoint)
        rows.append(
            {
                "T": n_cycles,
                "strategy": name,
                "temp_MiB": temp,
                "seconds": float(np.median(times)),
                "compile_s": compile_s,
                "grad": grad,
                "rel_diff": abs(grad - ref) / abs(ref) if exact else None,
            }
        )
        print(
            f"T={n_cycles:5d} {name:22s} temp {temp:9.3f} MiB  {np.median(times):7.3f} s  "
            f"dNLL/dF {grad: .6e}" + (f"  rel.diff {rows[-1]['rel_diff']:.1e}" if exact else ""),
            flush=True,
        )
    full = rows[0]
    for row in rows:
        row["memory_ratio_vs_full"] = full["temp_MiB"] / row["temp_MiB"]
        row["time_ratio_vs_full"] = row["seconds"] / full["seconds"]
    return rows


def chaos(n_cycles, n_keys, windows):
    out = {}
    for k in range(n_keys):
        xp, ensemble0 = twin(jax.random.key(100 + k), n_cycles)
        grads = {}
        for name, adjoint in [("full", ff.FullAdjoint())] + [
            (f"window {w}", ff.TruncatedAdjoint(window=w)) for w in windows
        ]:
            g = eqx.filter_jit(jax.grad(nll))(
                jnp.asarray(7.0), xp.observations, xp.times, ensemble0, adjoint
            )
            grads[name] = float(g)
        out[k] = grads
        print(f"key {k}: " + "  ".join(f"{n} {g: .3e}" for n, g in grads.items()), flush=True)
    summary = {}
    for name in out[0]:
        values = np.array([out[k][name] for k in out])
        summary[name] = {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)),
            "all_negative": bool(np.all(values < 0)),
            "values": values.tolist(),
        }
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chaos-cycles", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--windows", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {platform.node()}")
    rows = [row for n in args.lengths for row in measure(n, args.repeats)]
    print("\n| T | strategy | temp MiB | memory ratio | s | time ratio | grad rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        diff = "-" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"
        print(
            f"| {r['T']} | {r['strategy']} | {r['temp_MiB']:.2f} | "
            f"{r['memory_ratio_vs_full']:.0f}x | {r['seconds']:.3f} | "
            f"{r['time_ratio_vs_full']:.2f} | {diff} |"
        )
    summary = chaos(args.chaos_cycles, args.keys, args.windows) if args.keys else {}
    for name, s in summary.items():
        print(
            f"{name:10s} mean {s['mean']: .3e} sd {s['sd']:.3e} all negative: {s['all_negative']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"adjoints": rows, "chaos": summary}, indent=2))


if __name__ == "__main__":
    main()
