"""Per-call overhead of `filterax.filters.assimilate` called repeatedly with unchanged shapes.

Online DA, hyper-parameter tuning loops and tests call `assimilate` many times on short runs
with the same shapes. Every call after the first should cost the compiled work plus a small
constant (target: <= 1 ms). This script measures, on L96 sakov2008 (ETKF N=20, infl 1.04,
rot, float64, ``save="stats"``, ``--cycles`` cycles per call):

- ``call``: `assimilate(...)` called directly in a Python loop (what users do);
- ``jit``: the same call wrapped once in `jax.jit` and called in the loop (the jit cache hit
  path: argument flattening, cache lookup, dispatch);
- ``aot``: ``jax.jit(...).lower(...).compile()`` called in the loop: the compiled program
  through the Python dispatch of a `jax.stages.Compiled` (on CPU slightly *slower* than the
  jit cache-hit path, which is C++);

each the median (and min) of ``--calls`` calls, after warm-up; calls are interleaved
(call, jit, aot, call, ...) so load changes hit all three alike. "compiled work" is the
faster of ``jit`` and ``aot`` and overhead = call - compiled work. Then ``cProfile`` of
``--profile-calls`` direct calls attributes the per-call time to the functions it goes
through (input validation and its `jax.eval_shape` re-trace, equinox's `filter_jit` argument
partitioning / hashing, dispatch, ...); the profiler inflates Python-heavy code, so each
share is also reported scaled to the unprofiled median CPU time of a direct call. Wall and
process CPU times are both recorded; on a loaded machine trust the CPU times.

    uv run --package filterax-bench python bench/scripts/call_overhead.py \
        [--cycles 10] [--calls 50] [--profile-calls 20] [--json bench-results/call_overhead.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import filterax.filters as fxf  # noqa: E402
import filterax.primitives as fxp  # noqa: E402
from filterax.zoo import presets  # noqa: E402

# Functions to report from the profile, matched on "file:function" (substrings). Names that a
# refactor removes simply report 0; the full top list is printed and saved as well.
BREAKDOWN = {
    "assimilate (whole call)": ("filters/_assimilate.py:assimilate",),
    "input validation (check_run_inputs / check_run_arguments)": (
        ":check_run_inputs",
        ":check_run_arguments",
        "_assimilate.py:_validate",
    ),
    "jax.eval_shape (re-trace for validation)": ("jax/_src/api.py:eval_shape",),
    # On CPU a small compiled program may run inline, inside this call.
    "equinox filter_jit __call__ (dispatch, maybe the run)": ("equinox/_jit.py:__call__",),
    "equinox filter_jit argument partition/hash": (
        "equinox/_jit.py:_preprocess",
        "equinox/_jit.py:hashable_partition",
        "equinox/_jit.py:hashable_filter",
        "equinox/_jit.py:_bind",
    ),
    "jax pjit cache-hit dispatch (C++ fast path misses)": (
        "jax/_src/pjit.py:cache_miss",
        "jax/_src/pjit.py:_python_pjit_helper",
    ),
    "tracing (trace_to_jaxpr)": (
        "jax/_src/interpreters/partial_eval.py:trace_to_jaxpr_dynamic",
        "jax/_src/interpreters/partial_eval.py:trace_to_jaxpr",
    ),
    "block_until_ready (waiting on the computation)": ("jax/_src/api.py:block_until_ready",),
}


def _setup(n_cycles: int):
    model = presets.lorenz96_sakov2008()
    twin = model.simulate(jax.random.key(0), n_cycles)
    ens0 = model.initial_ensemble(jax.random.key(1), 20)
    filt = fxf.ETKF()
    inflator = fxp.MultiplicativeInflator(1.04)

    def call(key, ens0, obs, times):
        return fxf.assimilate(
            filt,
            model.dynamics,
            model.obs_op,
            model.obs_noise,
            ens0,
            obs,
            times,
            key=key,
            inflator=inflator,
            rotate=True,
            save="stats",
        )

    args = (jax.random.key(2), ens0, twin.observations, twin.times)
    return call, args


def _timed(fn, args) -> tuple[float, float]:
    """Wall and process CPU seconds of one call (CPU time is robust to other processes' load)."""
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t, time.process_time() - c


def measure(n_cycles: int, n_calls: int) -> dict:
    call, args = _setup(n_cycles)
    jitted = jax.jit(call)
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    aot_compile_s = time.perf_counter() - t
    first_call_s = _timed(call, args)[0]
    ways = {"call": call, "jit": jitted, "aot": compiled}
    for fn in ways.values():  # warm-up
        for _ in range(3):
            _timed(fn, args)
    times = {name: [] for name in ways}
    for _ in range(n_calls):
        for name, fn in ways.items():
            times[name].append(_timed(fn, args))
    ms = {}
    for name, v in times.items():
        wall, cpu = np.asarray(v).T
        ms[name] = {
            "median": 1e3 * float(np.median(wall)),
            "min": 1e3 * float(np.min(wall)),
            "cpu_median": 1e3 * float(np.median(cpu)),
        }
    work = {k: min(ms["jit"][k], ms["aot"][k]) for k in ("median", "min", "cpu_median")}
    return {
        "n_cycles": n_cycles,
        "n_calls": n_calls,
        "first_call_s": first_call_s,
        "aot_compile_s": aot_compile_s,
        "ms_per_call": ms,
        "compiled_work_ms": work,
        "overhead_ms": {
            "median": ms["call"]["median"] - work["median"],
            "min": ms["call"]["min"] - work["min"],
            "cpu_median": ms["call"]["cpu_median"] - work["cpu_median"],
            "jit_minus_aot_median": ms["jit"]["median"] - ms["aot"]["median"],
        },
    }


def _key(func: tuple) -> str:
    filename, _, name = func
    parts = filename.replace("\\", "/").split("/")
    short = "/".join(parts[-3:]) if "jax/_src" in filename else "/".join(parts[-2:])
    if "jax/_src" in filename:
        short = "jax/_src/" + "/".join(parts[parts.index("_src") + 1 :])
    elif "equinox" in parts:
        short = "equinox/" + "/".join(parts[parts.index("equinox") + 1 :])
    return f"{short}:{name}"


def profile(n_cycles: int, n_calls: int, top: int, real_ms: float) -> dict:
    call, args = _setup(n_cycles)
    for _ in range(3):
        _timed(call, args)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n_calls):
        _timed(call, args)
    prof.disable()
    stats = pstats.Stats(prof)
    cumulative = {}
    own = {}
    calls = {}
    for func, (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        name = _key(func)
        # Recursive functions appear once per (file, line, name): keep the largest cumtime.
        cumulative[name] = max(cumulative.get(name, 0.0), cumtime)
        own[name] = own.get(name, 0.0) + tottime
        calls[name] = calls.get(name, 0) + ncalls
    breakdown = {}
    for label, patterns in BREAKDOWN.items():
        hits = [n for n in cumulative if any(n.endswith(p) or p in n for p in patterns)]
        # Nested matches (e.g. _validate calling check_run_inputs) must not be double counted.
        value = max((cumulative[n] for n in hits), default=0.0)
        breakdown[label] = {"ms_per_call": 1e3 * value / n_calls, "functions": sorted(hits)}
    ranked = sorted(cumulative.items(), key=lambda kv: -kv[1])
    top_cumulative = [
        {"function": n, "ms_per_call": 1e3 * c / n_calls, "calls_per_call": calls[n] / n_calls}
        for n, c in ranked[:top]
    ]
    ranked_own = sorted(own.items(), key=lambda kv: -kv[1])
    top_own = [
        {"function": n, "ms_per_call": 1e3 * c / n_calls, "calls_per_call": calls[n] / n_calls}
        for n, c in ranked_own[:top]
    ]
    total = 1e3 * stats.total_tt / n_calls
    for v in breakdown.values():
        v["scaled_ms_per_call"] = v["ms_per_call"] / total * real_ms
    return {
        "n_calls": n_calls,
        "profiled_ms_per_call": total,
        "breakdown": breakdown,
        "top_cumulative": top_cumulative,
        "top_own_time": top_own,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--profile-calls", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", default="bench-results/call_overhead.json")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    timing = measure(args.cycles, args.calls)
    # CPU time: the per-call time least distorted by other processes' load.
    real_ms = timing["ms_per_call"]["call"]["cpu_median"]
    prof = None
    if args.profile_calls:
        prof = profile(args.cycles, args.profile_calls, args.top, real_ms)
    load_after = os.getloadavg()

    ms = timing["ms_per_call"]
    print(
        f"jax {jax.__version__}, {os.cpu_count()} CPUs, L96 ETKF N=20 rot, {args.cycles} cycles "
        f"per call, {args.calls} calls; load before {load_before[0]:.2f}, after "
        f"{load_after[0]:.2f}"
    )
    print(f"{'':34s} {'median ms':>10s} {'min ms':>8s} {'CPU median ms':>14s}")
    for name, label in (
        ("call", "assimilate(...) direct"),
        ("jit", "jax.jit(assimilate wrapper)"),
        ("aot", "AOT compiled (compiled work)"),
    ):
        print(
            f"{label:34s} {ms[name]['median']:10.3f} {ms[name]['min']:8.3f} "
            f"{ms[name]['cpu_median']:14.3f}"
        )
    ov = timing["overhead_ms"]
    print(
        f"overhead per call (call - compiled work): {ov['median']:.2f} ms median, "
        f"{ov['min']:.2f} ms min, {ov['cpu_median']:.2f} ms CPU (target: <= 1 ms); jit - aot: "
        f"{ov['jit_minus_aot_median']:+.3f} ms"
    )
    print(f"first call (trace + compile): {timing['first_call_s']:.2f} s")
    if prof is not None:
        print(
            f"\ncProfile of {prof['n_calls']} direct calls ({prof['profiled_ms_per_call']:.2f} "
            "ms/call under the profiler). Cumulative ms per call: profiled, and scaled to the "
            f"unprofiled {real_ms:.2f} ms (CPU median of a direct call):"
        )
        for label, v in prof["breakdown"].items():
            print(f"  {v['ms_per_call']:8.3f} {v['scaled_ms_per_call']:8.3f}  {label}")
        print("top functions by cumulative time (ms per call, calls per call):")
        for row in prof["top_cumulative"]:
            print(f"  {row['ms_per_call']:8.3f} {row['calls_per_call']:8.1f}  {row['function']}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "jax": jax.__version__,
                    "cpus": os.cpu_count(),
                    "load_average_before": load_before,
                    "load_average_after": load_after,
                    "case": "L96 sakov2008 ETKF N=20 infl 1.04 rot, float64, save='stats'",
                    "filterax_filters": fxf.__file__,
                    "timing": timing,
                    "profile": prof,
                },
                indent=2,
            )
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
