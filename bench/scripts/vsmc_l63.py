"""Variational SMC / FIVO on Lorenz-63: the bound log Z_hat of a learned proposal vs the
bootstrap particle filter with the same N, before and after training (issue 13 §1).

    uv run python bench/scripts/vsmc_l63.py --out vsmc_l63.json
    uv run python bench/scripts/vsmc_l63.py --quick      # fewer cycles / iterations

Setup: the `lorenz63_sakov2012` preset (RK4 dt 0.01, observations of all 3 components every
0.25 time units, R = 2 I, x0 ~ N(mu0, 2 I)) with additive process noise Q = q I per
observation window (default q = 1; VSMC needs a transition density, and a deterministic
model has none). One training sequence and one held-out sequence of T cycles are simulated
from the model. The proposal is `bootstrap_proposal` (mean = forecast + an MLP of forecast
and innovation, learnable diagonal scale); untrained it IS the bootstrap PF's transition
N(Psi(x), Q), so the "before" rows are the bootstrap PF with N particles. It is trained with
`fit_vsmc` (Adam, n_samples filters per gradient) on the training sequence, once with
resampling at every step (VSMC) and once ESS-triggered (FIVO), and each bound is evaluated on
both sequences over `reps` independent filters (mean +- standard error). A bootstrap PF with
`n_ref` particles gives a near-exact reference for log p(y_{1:T}). The gradient is truncated
at each cycle's incoming particles (`truncate_gradient=True`): the full reparameterisation
gradient runs back through 25 RK4 steps of a chaotic model per cycle and explodes
(--full-gradient shows the training diverging).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from filterax.learn import bootstrap_proposal, fit_vsmc, vsmc_bound
from filterax.zoo import presets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-particles", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--q", type=float, default=1.0)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--dt-obs", type=float, default=0.25)
    parser.add_argument(
        "--full-gradient",
        action="store_true",
        help="differentiate through the particles' history (explodes on chaotic L63)",
    )
    parser.add_argument("--reps", type=int, default=32)
    parser.add_argument("--n-ref", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=str, default=None)
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.train_steps, args.reps, args.n_ref = 40, 100, 16, 1024
    jax.config.update("jax_enable_x64", True)

    ssm = dataclasses.replace(
        presets.lorenz63_sakov2012(), process_noise=args.q, dt_obs=args.dt_obs
    )
    n_x = 3
    initial = (jnp.asarray(ssm.x0_mean), 2.0 * jnp.eye(n_x))
    key = jax.random.key(args.seed)
    k_train, k_test, k_init, k_fit, k_eval = jax.random.split(key, 5)
    sequences = {
        "train": ssm.simulate(k_train, args.cycles),
        "held-out": ssm.simulate(k_test, args.cycles),
    }
    proposal0 = bootstrap_proposal(k_init, ssm, n_x, n_x, width=32, depth=2, input_scale=8.0)

    def evaluator(n_particles, resample, reps):
        @eqx.filter_jit
        def run(proposal, ys, ts):
            keys = jax.random.split(k_eval, reps)
            return jax.vmap(
                lambda k: vsmc_bound(
                    proposal,
                    k,
                    ssm,
                    initial,
                    ys,
                    ts,
                    n_particles=n_particles,
                    resample=resample,
                    throw=False,
                )
            )(keys)

        return run

    def summary(values):
        v = np.asarray(values)
        finite = np.isfinite(v)
        v = v[finite]
        return {
            "mean": float(v.mean()),
            "se": float(v.std(ddof=1) / math.sqrt(v.size)),
            "sd": float(v.std(ddof=1)),
            "non_finite": int((~finite).sum()),
        }

    results: dict = {"config": vars(args), "rows": []}
    ref_run = evaluator(args.n_ref, "always", 4)
    refs = {}
    for name, exp in sequences.items():
        refs[name] = summary(ref_run(proposal0, exp.observations, exp.times))
    results["reference_log_evidence"] = refs

    fitted = {}
    for resample in ("always", "ess"):
        t = time.perf_counter()
        fit = fit_vsmc(
            proposal0,
            k_fit,
            ssm,
            initial,
            sequences["train"].observations,
            sequences["train"].times,
            n_particles=args.n_particles,
            n_steps=args.train_steps,
            optimiser=optax.adam(args.lr),
            n_samples=args.n_samples,
            resample=resample,
            truncate_gradient=not args.full_gradient,
        )
        jax.block_until_ready(fit.bounds)
        fitted[resample] = fit.proposal
        results[f"train_seconds_{resample}"] = time.perf_counter() - t
        results[f"training_curve_{resample}"] = np.asarray(fit.bounds).tolist()

    header = f"{'sequence':9} {'objective':6} {'proposal':9} {'log Z_hat (mean +- se)':>24}"
    print(
        f"L63 sakov2012 + Q = {args.q} I, T = {args.cycles}, N = {args.n_particles}, "
        f"{args.reps} filters each"
    )
    print(header)
    for name, exp in sequences.items():
        print(
            f"{name:9} reference bootstrap N={args.n_ref}: "
            f"{refs[name]['mean']:.2f} +- {refs[name]['se']:.2f}"
        )
        for resample, label in (("always", "VSMC"), ("ess", "FIVO")):
            run = evaluator(args.n_particles, resample, args.reps)
            for which, prop in (("bootstrap", proposal0), ("learned", fitted[resample])):
                s = summary(run(prop, exp.observations, exp.times))
                results["rows"].append(
                    {"sequence": name, "objective": label, "proposal": which, **s}
                )
                print(
                    f"{name:9} {label:6} {which:9} {s['mean']:14.2f} +- {s['se']:.2f}"
                    f"  (sd {s['sd']:.2f}, gap to ref {refs[name]['mean'] - s['mean']:.2f})"
                )
    for resample in ("always", "ess"):
        print(
            f"training ({resample}): {results[f'train_seconds_{resample}']:.1f} s, "
            f"{args.train_steps} steps"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
