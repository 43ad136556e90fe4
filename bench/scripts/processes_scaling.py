"""Time one ensemble-process update against the data dimension d (should be linear in d).

EKI (stochastic), ETKI and EKS with N_e = 100, N_p = 50, a diagonal Gamma, d = 1e2 ... 1e6:
each update is jitted, compiled once per d (excluded), then timed as the median of repeats with
``block_until_ready``. Prints a table and the fitted log-log slope of time against d over the
three largest d (where the O(N_e^2 d) work dominates fixed overheads); ~1 means linear.

    uv run --package filterax-bench python bench/scripts/processes_scaling.py [--float64]
        [--dims 100 1000 ...] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# Imported for its side effect: sizes the XLA CPU thread pool before the backend starts.
import filterax.bench  # noqa: F401
import filterax.processes as fpr

N_E, N_P = 100, 50


def make_processes(dtype):
    m0, c0 = jnp.zeros(N_P, dtype), jnp.ones(N_P, dtype)
    return {
        "EKI": fpr.EKI(scheduler=fpr.FixedScheduler(0.5)),
        "ETKI": fpr.ETKI(scheduler=fpr.FixedScheduler(0.5)),
        "EKS": fpr.EKS(m0, c0, scheduler=fpr.FixedScheduler(0.01)),
    }


def time_update(process, d: int, dtype, repeats: int) -> tuple[float, float]:
    key = jax.random.key(d)
    k1, k2, k3 = jax.random.split(key, 3)
    ensemble = jax.random.normal(k1, (N_E, N_P), dtype)
    obs = jax.random.normal(k2, (d,), dtype)
    noise = jnp.linspace(0.5, 1.5, d, dtype=dtype)  # diagonal Gamma (variances)
    g = jax.random.normal(k3, (N_E, d), dtype)
    state = process.init(ensemble, obs, noise, key=key)
    update = eqx.filter_jit(process.update)
    t0 = time.perf_counter()
    jax.block_until_ready(update(state, g))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(update(state, g))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_s


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10**k for k in range(2, 7)])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--float64", action="store_true")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", args.float64)
    dtype = jnp.float64 if args.float64 else jnp.float32
    procs = make_processes(dtype)
    print(f"N_e = {N_E}, N_p = {N_P}, diagonal Gamma, {jnp.dtype(dtype).name}, {jax.devices()[0]}")
    print(f"{'d':>9} " + " ".join(f"{name + ' ms':>12}" for name in procs))
    rows = {name: [] for name in procs}
    for d in args.dims:
        cells = []
        for name, process in procs.items():
            median, _ = time_update(process, d, dtype, args.repeats)
            rows[name].append(median)
            cells.append(f"{1e3 * median:12.3f}")
        print(f"{d:>9} " + " ".join(cells), flush=True)
    dims = np.log(np.asarray(args.dims, float))
    tail = slice(-3, None) if len(args.dims) >= 3 else slice(None)
    for name, times in rows.items():
        slope_all = np.polyfit(dims, np.log(times), 1)[0]
        slope_tail = np.polyfit(dims[tail], np.log(np.asarray(times)[tail]), 1)[0]
        print(f"{name}: log-log slope {slope_tail:.2f} (largest 3 d), {slope_all:.2f} (all d)")


if __name__ == "__main__":
    main()
