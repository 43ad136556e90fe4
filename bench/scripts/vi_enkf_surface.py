"""The variational cost surface of the EnKF over inflation x localisation radius (Bach,
Baptista, Luk & Stuart 2025, §3.5, Figs 5-6), and gradient descent on the same cost.

    uv run python bench/scripts/vi_enkf_surface.py --quick --out vi_enkf.json --plot plots/

Lorenz-96 as the authors' code ran it (VI_REPRODUCTION.md §1.3): n = 40, F = 8, RK4 dt = 0.05,
H = I, Gamma = 0.5 I, Sigma = 0.03 I (process noise in the truth at every step, added to the
filter's forecast covariance), J = 250 analyses, x0 = normal(key 0), ensemble N(x0_true, Sigma).
Grid: radius 1, 3, ..., 39 x inflation linspace(1.01, 1.9, 20) (--quick: 7 x 7), ONE vmapped
call per ensemble size (`filterax.learn.vi_cost_surface`, 10 Gaussian-projection samples, one
key for all grid points). --ks adds Kuramoto-Sivashinsky (L = 22, 256 points, obs every 5 steps
of dt = 0.25, Gamma = 0.5 I, Sigma = 0.01 I, J = 200) on a coarse grid.

Beyond the paper: L-BFGS on (log lambda, log l) of the same cost from a poor start; the table
reports where it lands, the grid optimum, and the filter's rmse.a at both beside the
RMSE-optimal grid point (the VI optimum is not the RMSE optimum).

Paper / authors' saved surfaces (VI_REPRODUCTION.md §2): L96 N = 5 argmin at r <= 5,
lambda 1.1-1.2; N = 20 at r >= 20 (r = 37, lambda = 1.385, plateau r = 25-39).
Absolute costs differ from the authors' by the log-likelihood constant (§1.4): subtract 8960
from this script's L96 costs (its NLL carries the full Gaussian constant, +5724 over 250
cycles; the authors' convention has -3236).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import filterax.primitives as fxp
from filterax.learn import enkf_vi_cost, vi_cost_surface
from filterax.zoo import KuramotoSivashinsky, Lorenz96


def twin(dynamics, n, dt, n_cycles, sigma, gamma, key):
    x0 = jax.random.normal(jax.random.key(0), (n,))

    def step(x, k):
        t, kk = k
        k1, k2 = jax.random.split(kk)
        x1 = dynamics(x, t, t + dt) + math.sqrt(sigma) * jax.random.normal(k1, (n,))
        return x1, (x1, x1 + math.sqrt(gamma) * jax.random.normal(k2, (n,)))

    times = dt * jnp.arange(1, n_cycles + 1)
    keys = jax.random.split(key, n_cycles)
    _, (truth, obs) = jax.lax.scan(step, x0, (times - dt, keys))
    return x0, truth, obs, times


def rmse_a(analysis_mean, truth):
    return jnp.mean(jnp.sqrt(jnp.mean((analysis_mean - truth) ** 2, axis=-1)), axis=-1)


def descend(model, ens0, obs, times, truth, start, steps, key):
    """L-BFGS (optax, zoom line search: every accepted step decreases J) on u = log(lambda),
    log(l): a positive reparameterisation. Plain gradient descent / Adam with a fixed step
    overshoot into lambda < 1 from a poor start (tried: Adam lr 0.1 diverged)."""

    def cost(u):
        return enkf_vi_cost(
            model, ens0, obs, times, inflation=jnp.exp(u[0]), radius=jnp.exp(u[1]), key=key
        ).value

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(cost)

    @jax.jit
    def loop(u0):
        def body(carry, _):
            u, state = carry
            value, grad = value_and_grad(u, state=state)
            updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=cost)
            return (optax.apply_updates(u, updates), state), (u, value)

        (u, _), (path, values) = jax.lax.scan(body, (u0, opt.init(u0)), None, length=steps)
        return u, path, values

    u, path, values = loop(jnp.log(jnp.asarray(start)))
    final = enkf_vi_cost(
        model, ens0, obs, times, inflation=jnp.exp(u[0]), radius=jnp.exp(u[1]), key=key
    )
    return {
        "optimizer": "optax.lbfgs on (log lambda, log l)",
        "start": [float(s) for s in start],
        "inflation": float(jnp.exp(u[0])),
        "radius": float(jnp.exp(u[1])),
        "cost": float(final.value),
        "status": int(final.status),
        "rmse_a": float(rmse_a(final.analysis_mean, truth)),
        "path": np.exp(np.asarray(path)).tolist(),
        "costs": np.asarray(values).tolist(),
    }


def surface_case(name, model, ens0, obs, times, truth, infl, radii, key, gd):
    t = time.perf_counter()
    surf = vi_cost_surface(model, ens0, obs, times, infl, radii, key=key)
    value = np.asarray(surf.value)
    seconds = time.perf_counter() - t
    rm = np.asarray(rmse_a(surf.analysis_mean, truth))
    i, j = np.unravel_index(np.nanargmin(value), value.shape)
    ri, rj = np.unravel_index(np.nanargmin(rm), rm.shape)
    out = {
        "case": name,
        "seconds": seconds,
        "inflations": np.asarray(infl).tolist(),
        "radii": np.asarray(radii).tolist(),
        "cost": value.tolist(),
        "rmse_a": rm.tolist(),
        "status": np.asarray(surf.status).tolist(),
        "vi_opt": {
            "inflation": float(infl[i]),
            "radius": float(radii[j]),
            "cost": float(value[i, j]),
            "rmse_a": float(rm[i, j]),
        },
        "rmse_opt": {
            "inflation": float(infl[ri]),
            "radius": float(radii[rj]),
            "cost": float(value[ri, rj]),
            "rmse_a": float(rm[ri, rj]),
        },
        "best_inflation_per_radius": {
            float(r): float(infl[np.nanargmin(value[:, b])]) for b, r in enumerate(radii)
        },
    }
    if gd is not None:
        start, steps = gd
        t = time.perf_counter()
        out["gd"] = descend(model, ens0, obs, times, truth, start, steps, key)
        out["gd"]["seconds"] = time.perf_counter() - t
    return out


def plot(case, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    infl = np.asarray(case["inflations"])
    radii = np.asarray(case["radii"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "cost", "VI cost J"), (axes[1], "rmse_a", "rmse.a")):
        z = np.asarray(case[key])
        cs = ax.contourf(radii, infl, z, levels=30)
        fig.colorbar(cs, ax=ax)
        ax.plot(
            case["vi_opt"]["radius"], case["vi_opt"]["inflation"], "r*", ms=12, label="VI optimum"
        )
        ax.plot(
            case["rmse_opt"]["radius"],
            case["rmse_opt"]["inflation"],
            "wo",
            ms=8,
            label="RMSE optimum",
        )
        if "gd" in case:
            path = np.asarray(case["gd"]["path"])
            ax.plot(path[:, 1], path[:, 0], "m.-", ms=3, label="L-BFGS path")
        ax.set_xlabel("localisation radius l")
        ax.set_ylabel("inflation lambda")
        ax.set_title(f"{case['case']}: {title}")
    axes[0].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / f"vi_enkf_{case['case']}.png", dpi=110)
    plt.close(fig)


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

    if args.quick:
        radii = jnp.array([1.0, 3.0, 5.0, 9.0, 15.0, 25.0, 39.0])
        infl = jnp.linspace(1.01, 1.9, 7)
        steps = 10
    elif args.grid == "medium":
        radii = jnp.arange(1.0, 40.0, 4.0)
        infl = jnp.linspace(1.01, 1.9, 10)
        steps = 15
    else:
        radii = jnp.arange(1.0, 40.0, 2.0)
        infl = jnp.linspace(1.01, 1.9, 20)
        steps = 20
    results = []
    key = jax.random.key(3)

    dyn = Lorenz96(n=40, forcing=8.0, dt=0.05)
    model = fxp.Model(dynamics=dyn, obs_op=fxp.IdentityObs(), obs_noise=0.5, process_noise=0.03)
    x0, truth, obs, times = twin(dyn, 40, 0.05, 250, 0.03, 0.5, jax.random.key(1))
    for n_ens in args.ens:
        ens0 = x0 + math.sqrt(0.03) * jax.random.normal(jax.random.key(2), (n_ens, 40))
        # A poor start: the opposite corner of the grid from the paper's optimum.
        start = (1.8, 30.0) if n_ens <= 10 else (1.05, 2.0)
        gd = None if args.no_gd else (start, steps)
        case = surface_case(f"L96_N{n_ens}", model, ens0, obs, times, truth, infl, radii, key, gd)
        results.append(case)
        print_case(case)
        if args.plot:
            plot(case, args.plot)

    if args.ks:
        ks = KuramotoSivashinsky(n=256, length=22.0, dt=0.25)
        ks_model = fxp.Model(
            dynamics=ks, obs_op=fxp.IdentityObs(), obs_noise=0.5, process_noise=0.01
        )
        x0, truth, obs, times = twin(ks, 256, 1.25, 200, 0.01, 0.5, jax.random.key(1))
        ks_radii = jnp.array([1.0, 11.0, 31.0, 91.0]) if args.quick else jnp.arange(1.0, 92, 10)
        ks_infl = jnp.linspace(1.01, 1.9, 4 if args.quick else 10)
        for n_ens in args.ens:
            ens0 = x0 + math.sqrt(0.01) * jax.random.normal(jax.random.key(2), (n_ens, 256))
            case = surface_case(
                f"KS_N{n_ens}", ks_model, ens0, obs, times, truth, ks_infl, ks_radii, key, None
            )
            results.append(case)
            print_case(case)
            if args.plot:
                plot(case, args.plot)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


def print_case(case):
    v, r = case["vi_opt"], case["rmse_opt"]
    print(
        f"\n{case['case']}: grid {len(case['inflations'])}x{len(case['radii'])} in "
        f"{case['seconds']:.1f} s (one vmapped call)"
    )
    print(f"  {'':14s} {'radius':>7s} {'inflation':>9s} {'cost':>10s} {'rmse.a':>7s}")
    print(
        f"  {'VI optimum':14s} {v['radius']:7.1f} {v['inflation']:9.3f} {v['cost']:10.1f} "
        f"{v['rmse_a']:7.3f}"
    )
    print(
        f"  {'RMSE optimum':14s} {r['radius']:7.1f} {r['inflation']:9.3f} {r['cost']:10.1f} "
        f"{r['rmse_a']:7.3f}"
    )
    if "gd" in case:
        g = case["gd"]
        print(f"  {'L-BFGS from':14s} {g['start'][1]:7.1f} {g['start'][0]:9.3f}")
        print(
            f"  {'L-BFGS lands':14s} {g['radius']:7.1f} {g['inflation']:9.3f} {g['cost']:10.1f} "
            f"{g['rmse_a']:7.3f}   ({len(g['costs'])} steps, {g['seconds']:.0f} s)"
        )
    best = ", ".join(f"r={r:g}:{lam:.2f}" for r, lam in case["best_inflation_per_radius"].items())
    print(f"  best inflation per radius: {best}")


if __name__ == "__main__":
    main()
