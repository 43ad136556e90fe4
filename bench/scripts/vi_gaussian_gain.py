"""Learning a constant Kalman-type gain by variational inference: the linear 40-d reproduction
of Bach, Baptista, Luk & Stuart (2025), §3.3 (VI_REPRODUCTION.md §1.1), and optionally the
Lorenz-96 ExKF-style gain of §3.4 (--l96).

    uv run python bench/scripts/vi_gaussian_gain.py --out vi_gain.json --plot vi_gain.png
    uv run python bench/scripts/vi_gaussian_gain.py --quick   # J = 200, fewer iterations

Setup (§1.1): d = 40, J = 1000, H = I (partial: every other component), Gamma = I, m0 = 1,
C0 = I; A = V diag(lambda / (max|lambda| + 0.1)) V^T from the symmetric part of a normal
matrix, Sigma = q q^T + 0.1 I with q = W / 5 (the authors' code, key PRNGKey(3) used three
times). Runs in FLOAT64 (the authors: float32), so the random matrices are not bitwise the
authors' ones; the gain targets are relative errors and do not depend on the draw.

Reported (targets from issue 12): offline 100 plain-GD steps from K0 = 0.4 I, alpha = 1e-5
on the SUM over J, 10 Monte Carlo samples with a fresh key per iteration (the paper's
estimator): ||K - K_ss||_F / ||K_ss||_F (<= 0.06), mean KL to the exact KF (<= 0.06), analysis
MSE vs the KF's (within 1 %); partial observation, K0 = H^T, 500 steps (<= 0.06); online with
the exact trace term at t = 1000 (<= 0.05) and the authors' plug-in (0.136 +- 0.01).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.learn import (
    ConstantGainFilter,
    fit_gain_offline,
    fit_gain_online,
    steady_state_gain,
)


def linear_setup(n_steps: int, partial: bool):
    key = jax.random.PRNGKey(3)
    d = 40
    W = jax.random.normal(key, (d, d))
    lam, V = jnp.linalg.eigh(0.5 * (W + W.T))
    A = V @ jnp.diag(lam / (jnp.max(jnp.abs(lam)) + 0.1)) @ V.T
    q = jax.random.normal(key, (d, d)) / 5
    Sigma = q @ q.T + 0.1 * jnp.eye(d)
    Sigma = 0.5 * (Sigma + Sigma.T)
    m0, C0 = jnp.ones(d), jnp.eye(d)
    x0 = m0 + jax.random.multivariate_normal(key, jnp.zeros(d), C0)
    H = jnp.eye(d)[::2] if partial else jnp.eye(d)
    p = H.shape[0]
    key = jax.random.split(key)[0]
    k_proc, k_obs = jax.random.split(key)
    chol_s = jnp.linalg.cholesky(Sigma)

    def step(x, ks):
        kp, ko = ks
        x = A @ x + chol_s @ jax.random.normal(kp, (d,))
        return x, (x, H @ x + jax.random.normal(ko, (p,)))

    keys = (jax.random.split(k_proc, n_steps), jax.random.split(k_obs, n_steps))
    _, (truth, ys) = jax.lax.scan(step, x0, keys)
    model = fxp.Model(
        dynamics=lambda x, t0, t1: A @ x, obs_op=H, obs_noise=1.0, process_noise=Sigma
    )
    times = jnp.arange(1.0, n_steps + 1.0)
    return model, A, H, Sigma, ff.GaussianState(m0, C0), truth, ys, times


def reference(model, initial, ys, times):
    return ff.run(
        ff.KalmanFilter(),
        model,
        initial,
        ys,
        times,
        key=jax.random.key(0),
        save="forecast_and_analysis",
    )


def make_evaluator(model, initial, ys, times, truth, kf, linearization="linear"):
    """(mean KL to the reference filter, analysis MSE) of the constant-gain filter with K."""

    @jax.jit
    def evaluate(K):
        out = ff.run(
            ConstantGainFilter(K, linearization),
            model,
            initial,
            ys,
            times,
            key=jax.random.key(0),
            save="forecast_and_analysis",
            throw=False,
        )
        kl = jax.vmap(fxp.gaussian_kl)(
            out.analyses.mean, out.analyses.cov, kf.analyses.mean, kf.analyses.cov
        )
        mse = jnp.mean((out.analysis_mean - truth) ** 2)
        return jnp.mean(kl), mse

    return evaluate


def curve(gains, K0, K_ref, evaluate, every):
    """Gain error, KL and MSE along training (iteration 0 = K0, then every `every`)."""
    its = [0, *range(every, gains.shape[0] + 1, every)]
    if its[-1] != gains.shape[0]:
        its.append(gains.shape[0])
    rows = []
    for i in its:
        K = K0 if i == 0 else gains[i - 1]
        kl, mse = evaluate(K)
        rel = float(jnp.linalg.norm(K - K_ref) / jnp.linalg.norm(K_ref))
        rows.append({"iteration": i, "gain_error_rel": rel, "kl": float(kl), "mse": float(mse)})
    return rows


def run_linear(args, results):
    J = args.steps
    for partial in (False, True):
        name = "partial" if partial else "full"
        model, A, H, Sigma, initial, truth, ys, times = linear_setup(J, partial)
        ss = steady_state_gain(A, H, Sigma, 1.0)
        K_ss = ss.gain
        kf = reference(model, initial, ys, times)
        kf_mse = float(jnp.mean((kf.analysis_mean - truth) ** 2))
        evaluate = make_evaluator(model, initial, ys, times, truth, kf)
        K0 = H.T if partial else 0.4 * jnp.eye(40)
        n_it = args.partial_iterations if partial else args.iterations
        t = time.perf_counter()
        fit = fit_gain_offline(
            K0,
            model,
            initial,
            ys,
            times,
            key=jax.random.key(7),
            n_iterations=n_it,
            learning_rate=1e-5,
            likelihood="monte_carlo",
            n_samples=10,
        )
        fit.gain.block_until_ready()
        elapsed = time.perf_counter() - t
        rows = curve(fit.gains, K0, K_ss, evaluate, max(1, n_it // 20))
        last = rows[-1]
        results[f"offline_{name}"] = {
            "iterations": n_it,
            "K_ss_fro": float(jnp.linalg.norm(K_ss)),
            "gain_error_rel": last["gain_error_rel"],
            "kl_to_kf": last["kl"],
            "mse": last["mse"],
            "kf_mse": kf_mse,
            "mse_ratio": last["mse"] / kf_mse,
            "seconds": elapsed,
            "curve": rows,
        }
        if partial:
            continue
        for likelihood in ("analytic", "plugin"):
            t = time.perf_counter()
            on = fit_gain_online(
                0.1 * jnp.eye(40),
                model,
                initial,
                ys,
                times,
                n_steps=args.online_steps,
                learning_rate=1e-5,
                likelihood=likelihood,
            )
            on.gain.block_until_ready()
            elapsed = time.perf_counter() - t
            errs = jnp.linalg.norm(on.gains - K_ss, axis=(1, 2)) / jnp.linalg.norm(K_ss)
            kl, mse = evaluate(on.gain)
            results[f"online_{likelihood}"] = {
                "gain_error_rel": float(errs[-1]),
                "gain_error_rel_average": float(
                    jnp.linalg.norm(on.gain_average - K_ss) / jnp.linalg.norm(K_ss)
                ),
                "kl_to_kf": float(kl),
                "mse": float(mse),
                "seconds": elapsed,
                "curve": [float(e) for e in errs[:: max(1, J // 100)]],
            }


def l96_setup(n_steps: int, seed: int):
    F, dt, d = 8.0, 0.05, 40

    def tendency(x):
        # the authors' code form (x_{i-1} - x_{i+2}) x_{i+1} - x_i + F (VI_REPRODUCTION §1.2)
        return (jnp.roll(x, 1) - jnp.roll(x, -2)) * jnp.roll(x, -1) - x + F

    def rk4(x):
        k1 = tendency(x)
        k2 = tendency(x + 0.5 * dt * k1)
        k3 = tendency(x + 0.5 * dt * k2)
        k4 = tendency(x + dt * k3)
        return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    key = jax.random.PRNGKey(seed)
    x0 = jax.random.normal(key, (d,))
    k_proc, k_obs = jax.random.split(key)

    def step(x, ks):
        kp, ko = ks
        x = rk4(x) + jnp.sqrt(0.1) * jax.random.normal(kp, (d,))
        return x, (x, x + jax.random.normal(ko, (d,)))

    keys = (jax.random.split(k_proc, n_steps), jax.random.split(k_obs, n_steps))
    _, (truth, ys) = jax.lax.scan(step, x0, keys)
    model = fxp.Model(
        dynamics=lambda x, t0, t1: rk4(x), obs_op=jnp.eye(d), obs_noise=1.0, process_noise=0.1
    )
    initial = ff.GaussianState(jnp.ones(d), jnp.eye(d))
    return model, initial, truth, ys, jnp.arange(1.0, n_steps + 1.0)


def run_l96(args, results):
    J = args.steps
    model, initial, truth, ys, times = l96_setup(J, 0)
    model_t, initial_t, truth_t, ys_t, times_t = l96_setup(J, 42)
    K0 = 0.4 * jnp.eye(40)

    def rmse(K, mdl, ini, y, tm, tr):
        out = ff.run(ConstantGainFilter(K, "jacobian"), mdl, ini, y, tm, key=jax.random.key(0))
        return float(jnp.sqrt(jnp.mean((out.analysis_mean - tr) ** 2)))

    ekf = ff.run(ff.ExtendedKF(), model_t, initial_t, ys_t, times_t, key=jax.random.key(0))
    t = time.perf_counter()
    fit = fit_gain_offline(
        K0,
        model,
        initial,
        ys,
        times,
        key=jax.random.key(7),
        n_iterations=args.l96_iterations,
        learning_rate=1e-5,
        likelihood="monte_carlo",
        n_samples=10,
        linearization="jacobian",
    )
    fit.gain.block_until_ready()
    K = fit.gain
    offsets = {o: float(jnp.mean(jnp.diagonal(jnp.roll(K, -o, axis=1)))) for o in range(-2, 3)}
    results["l96_offline"] = {
        "iterations": args.l96_iterations,
        "train_rmse": rmse(K, model, initial, ys, times, truth),
        "test_rmse": rmse(K, model_t, initial_t, ys_t, times_t, truth_t),
        "test_rmse_K0": rmse(K0, model_t, initial_t, ys_t, times_t, truth_t),
        "test_rmse_exkf": float(jnp.sqrt(jnp.mean((ekf.analysis_mean - truth_t) ** 2))),
        "gain_band_means": offsets,
        "seconds": time.perf_counter() - t,
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, style in (("offline_full", "-"), ("offline_partial", "--")):
        rows = results[name]["curve"]
        it = [r["iteration"] for r in rows]
        axes[0].semilogy(it, [r["gain_error_rel"] for r in rows], style, label=name)
        axes[1].semilogy(it, [r["kl"] for r in rows], style, label=name)
    axes[0].set(xlabel="GD iteration", ylabel="||K - K_ss|| / ||K_ss||", title="offline gain")
    axes[1].set(xlabel="GD iteration", ylabel="mean KL to the KF", title="offline KL (Fig. 1-2)")
    for name in ("online_analytic", "online_plugin"):
        c = results[name]["curve"]
        t = np.linspace(1, results["config"]["steps"], len(c))
        axes[2].semilogy(t, c, label=name)
    axes[2].set(xlabel="time step", ylabel="||K_t - K_ss|| / ||K_ss||", title="online (Fig. 3)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="J=200, 20/100 iterations")
    parser.add_argument("--l96", action="store_true", help="also the L96 ExKF-style gain")
    parser.add_argument("--only-l96", action="store_true", help="the L96 gain alone")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    parser.add_argument("--plot", default=None, help="write the figure here")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    args.steps = 200 if args.quick else 1000
    args.iterations = 20 if args.quick else 100
    args.partial_iterations = 100 if args.quick else 500
    args.online_steps = 100
    args.l96_iterations = 10 if args.quick else 100
    results = {"config": {k: v for k, v in vars(args).items() if k not in ("out", "plot")}}
    if not args.only_l96:
        run_linear(args, results)
    if args.l96 or args.only_l96:
        run_l96(args, results)
    print(f"{'experiment':<18} {'gain err':>9} {'KL->KF':>8} {'MSE':>7} {'MSE/KF':>7} {'s':>6}")
    for name in ("offline_full", "offline_partial", "online_analytic", "online_plugin"):
        if name not in results:
            continue
        r = results[name]
        ratio = f"{r['mse_ratio']:7.4f}" if "mse_ratio" in r else " " * 7
        print(
            f"{name:<18} {r['gain_error_rel']:9.4f} {r['kl_to_kf']:8.4f} {r['mse']:7.4f} "
            f"{ratio} {r['seconds']:6.1f}"
        )
    if "l96_offline" in results:
        r = results["l96_offline"]
        print(
            f"L96 ExKF-style gain: train RMSE {r['train_rmse']:.4f}, test {r['test_rmse']:.4f} "
            f"(K0 = 0.4 I: {r['test_rmse_K0']:.4f}, ExKF: {r['test_rmse_exkf']:.4f}); "
            f"band means {r['gain_band_means']}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot and not args.only_l96:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
