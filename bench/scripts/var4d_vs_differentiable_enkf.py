"""4D-Var versus a differentiable ETKF: cost of one analysis / one gradient over a window.

On Lorenz-96 sakov2008 (N_x = 40, observed everywhere every 0.05, R = I), over a window of
``L`` observation cycles, side by side in one process:

- **4D-Var** (`filterax.zoo.variational_analysis` / `variational_cost`): one Gauss-Newton
  analysis of the strong-constraint window cost (tangent-linear model by `jax.linearize`,
  adjoint by `jax.linear_transpose`, lineax CG inside), and one gradient of the window cost
  ``J(v)`` w.r.t. the control (reverse-mode AD through the model = the adjoint model);
- **differentiable ETKF** (`filterax.filters.run` of `EnsembleFilter(ETKF())`, N_e = 20): one
  forward run over the window, and the gradient of its innovation negative log-likelihood
  ``-sum_k log N(y_k; H x^f_k, H P^f_k H^T + R)`` w.r.t. the initial mean (`jax.grad`
  through the whole scan: forward runs of the N_e members plus autodiff through the filter).

Per row: wall time of the compiled call (median of ``--repeats``), compile time
(``lower(...).compile()``), XLA's ``memory_analysis()`` of the compiled program (temporary,
argument and output bytes) and what the method needs from the model. Prints Markdown tables,
one per window length.

    uv run python bench/scripts/var4d_vs_differentiable_enkf.py --lags 10 40
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
from jax import lax  # noqa: E402

import filterax.filters as ff  # noqa: E402
import filterax.primitives as fxp  # noqa: E402
from filterax.zoo import presets, variational_analysis, variational_cost  # noqa: E402

N_E = 20
SIGMA_B = 1.0  # background error std of the window start (B = SIGMA_B^2 I)


def _setup(lag: int, seed: int):
    ssm = presets.lorenz96_sakov2008()
    dt = float(ssm.dt_obs)
    key = jax.random.key(seed)
    k_spin, k_b, k_obs, k_ens = jax.random.split(key, 4)
    n_x = ssm.x0_mean.shape[0]
    dyn = ssm.dynamics

    def step(x):
        # A concrete interval: a static-length scan inside, so forward-mode AD (the
        # tangent-linear model) works as well as reverse mode.
        return dyn(x, 0.0, dt)

    # A truth on the attractor: spin up 20 time units from the preset's x0.
    x = ssm.x0_mean + 0.1 * jax.random.normal(k_spin, (n_x,))
    x = lax.fori_loop(0, 400, lambda _, z: step(z), x)
    _, truth = lax.scan(lambda z, _: (step(z), step(z)), x, None, length=lag)
    ys = truth + jax.random.normal(k_obs, truth.shape)  # R = I
    x_b = x + SIGMA_B * jax.random.normal(k_b, (n_x,))  # background at the window start
    anomalies = SIGMA_B * jax.random.normal(k_ens, (N_E, n_x))
    anomalies = anomalies - anomalies.mean(0)
    times = dt * jnp.arange(1, lag + 1)
    return ssm, step, x, x_b, ys, anomalies, times


def _window(step, lag):
    def forward(x0):
        _, states = lax.scan(lambda z, _: (step(z), step(z)), x0, None, length=lag)
        return states  # identity H: (L, N_x) predicted observations

    return forward


def _measure(name, fn, args, access, repeats, extra=""):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan"))
    arg = getattr(mem, "argument_size_in_bytes", float("nan"))
    outb = getattr(mem, "output_size_in_bytes", float("nan"))
    return {
        "name": name,
        "wall_ms": 1e3 * statistics.median(walls),
        "cpu_ms": 1e3 * statistics.median(cpus),
        "compile_s": compile_s,
        "temp_kib": temp / 1024,
        "arg_kib": arg / 1024,
        "out_kib": outb / 1024,
        "access": access,
        "extra": extra,
        "out": out,
    }


def run_lag(lag: int, repeats: int, seed: int):
    ssm, step, x_true0, x_b, ys, anomalies, times = _setup(lag, seed)
    n_x = x_b.shape[0]
    forward = _window(step, lag)
    U = lx.DiagonalLinearOperator(jnp.full(n_x, SIGMA_B))
    rows = []

    def gn(x_b, ys):
        # An inner loop to rtol 1e-6 (operational inner loops stop far earlier), capped at 400
        # CG steps; each CG step is one TL and one adjoint run of the model over the window.
        res = variational_analysis(
            forward, x_b, U, ys, 1.0, n_iter=1, jacobian="fwd", rtol=1e-6, max_steps=400
        )
        return res.analysis, res.cg_steps, res.converged

    r = _measure(
        "4D-Var: 1 Gauss-Newton analysis",
        gn,
        (x_b, ys),
        "TL (jax.linearize) + adjoint (linear_transpose) of M over the window, once per CG step",
        repeats,
    )
    x_a, cg_steps, converged = r["out"]
    err_b = float(jnp.sqrt(jnp.mean((x_b - x_true0) ** 2)))
    err_a = float(jnp.sqrt(jnp.mean((x_a - x_true0) ** 2)))
    r["extra"] = (
        f"{int(cg_steps)} CG steps ({'converged' if bool(converged) else 'NOT converged'}); "
        f"rmse of x0 {err_b:.2f} -> {err_a:.2f}"
    )
    rows.append(r)

    def cost_grad(v, x_b, ys):
        return jax.grad(lambda v: variational_cost(forward, x_b, U, ys, 1.0, v))(v)

    rows.append(
        _measure(
            "4D-Var: gradient of J(v)",
            cost_grad,
            (jnp.zeros(n_x), x_b, ys),
            "1 forward run of M + 1 adjoint (reverse-mode AD) run",
            repeats,
        )
    )

    method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.02))

    def etkf_nll(m0, anomalies, ys):
        out = ff.run(
            method, ssm, m0[None, :] + anomalies, ys, times, key=jax.random.key(0), throw=False
        )
        return -jnp.sum(out.log_likelihood)

    rows.append(
        _measure(
            f"ETKF N_e={N_E}: forward run (NLL)",
            etkf_nll,
            (x_b, anomalies, ys),
            f"{N_E} forward runs of M (no TL/AD)",
            repeats,
        )
    )
    rows.append(
        _measure(
            f"ETKF N_e={N_E}: grad of NLL w.r.t. initial mean",
            jax.grad(etkf_nll),
            (x_b, anomalies, ys),
            f"{N_E} forward runs + reverse AD through the filter (checkpointed model loop)",
            repeats,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lags", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dev = jax.devices()[0]
    print(
        f"# machine: {platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} on "
        f"{dev.platform} ({dev.device_kind}); float64; L96 N_x=40, R=I, B={SIGMA_B**2} I"
    )
    for lag in args.lags:
        rows = run_lag(lag, args.repeats, args.seed)
        print(f"\n## window L = {lag} observation cycles ({lag * 0.05:.2f} time units)\n")
        print(
            "| method | wall ms (median) | CPU ms (median) | compile s | XLA temp KiB | args KiB "
            "| out KiB | Jacobian access | notes |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['name']} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | {r['compile_s']:.2f} | "
                f"{r['temp_kib']:.0f} | {r['arg_kib']:.0f} | {r['out_kib']:.1f} | "
                f"{r['access']} | {r['extra']} |"
            )


if __name__ == "__main__":
    main()
