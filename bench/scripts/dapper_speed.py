"""Milliseconds per cycle of filterax vs DAPPER 1.8.1, side by side in one run (speed contract).

Lorenz-96 sakov2008 (N_x = 40, RK4 dt = 0.05, every site observed every step, R = I), float64
on both sides, the same truth and observations (simulated by filterax and handed to DAPPER) and
the same initial ensemble:

- ETKF N=20, infl 1.04, rot (DAPPER ``EnKF("Sqrt", N=20, infl=1.04, rot=True)``, the
  sakov2008 / Bocquet 2015 row, published rmse.a 0.20);
- LETKF N=20, loc_rad 6, infl 1.02, rot (DAPPER ``LETKF(N=20, loc_rad=6, infl=1.02, rot=True)``
  with ONE grid point per local analysis, ``nd_Id_localization((40,), (1,))`` — sakov2008's
  default ``(2,)`` shares one analysis between two points, half the work — and its taper
  cut-off ``rho > 1e-3``; filterax ``LETKF(radius=dapper_radius_to_gc_halfwidth(6),
  distance=partial(periodic, period=40.0), cutoff=1e-3)``, every observation a candidate:
  39 of the 40 have ``rho > 1e-3`` on both sides, the 40th gets weight 0 in filterax).

Particle filters (``--filters PartFilt-L63-100 PartFilt-L63-800 PartFilt-L96b-100 ...``,
`PF_CASES`): DAPPER's ``PartFilt`` / ``OptPF`` on its own presets (``Lorenz63.sakov2012``,
``Lorenz96.bocquet2010``) with the tuned settings of their "Suggested tuning" tables, against
`filterax.learn.BootstrapPF` / `OptimalProposalPF` with the same ``NER`` (ESS threshold),
``reg`` (jitter) and ``Qs``, run by `filterax.filters.run` on the same twin and initial
particles; ``PFxN_EnKF`` (``NER``, ``Qs``, ``xN``, default ``re_use``/``wroot_max``) against
`filterax.learn.EnKFProposalPF` (``xn``). DAPPER's truth ``xx`` at the model steps between
observations repeats the next observed truth (only the analysis-time errors are read).

DAPPER runs in a subprocess of ``--dapper-python`` (a venv with ``dapper==1.8.1``) with
``OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1``, no live plotting, no progress bar,
``store_i=False`` (no per-step statistics between observations) and
``dapper.rc.comps.error_only = True`` (only the ensemble mean and its error are assessed: no
spread, CRPS, skewness, rank histograms or spectra). Its time is the wall time of
``xp.assimilate(HMM, xx, yy)``. filterax runs `filterax.filters.assimilate(...,
save="stats")` (forecast/analysis means, spreads and log-likelihood every cycle, default
``throw=True``) timed two ways, both after a warm-up call with the same shapes:

- ``call``: `assimilate` called directly, as a user calls it (input validation, the
  `eqx.filter_jit` dispatch and the compiled run);
- ``jit``: the same call inside one `jax.jit` (the compiled run alone).

Each repeat times DAPPER, then filterax ``call``, then ``jit`` back to back (interleaved, so
load changes hit both); each figure is the best of ``--repeats``. Both wall time and process
CPU time are recorded: every program here runs on one thread (DAPPER pinned to one, XLA's
CPU runtime runs these small ops on one worker thread while Python blocks), so on an idle
machine the two agree, and on a loaded one CPU time excludes the waits for a core that wall
time includes. The load average is recorded before and after every case.

rmse.a is the time mean over cycles ``burn:`` with ``burn = min(400, T // 2)`` (sakov2008's
burn-in is 20 time units = 400 cycles) of ``sqrt(mean_i (mean_i - truth_i)^2)``, the same
formula and cycles for both (DAPPER's ``stats.err.rms.a``), from the first timed repeat.

    python3 -m venv /tmp/dapper-venv && /tmp/dapper-venv/bin/pip install dapper==1.8.1
    uv run --package filterax-bench python bench/scripts/dapper_speed.py \
        --dapper-python /tmp/dapper-venv/bin/python [--cycles 300 3000] [--repeats 3] \
        [--filters ETKF LETKF] [--out bench-results/dapper_speed.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import filterax.filters as fxf  # noqa: E402
import filterax.primitives as fxp  # noqa: E402
from filterax.zoo import presets  # noqa: E402

N_ENSEMBLE = 20
N_X = 40
# (inflation, DAPPER loc_rad or None, published DAPPER rmse.a for reference)
SETTINGS = {
    "ETKF": (1.04, None, 0.20),
    "LETKF": (1.02, 6.0, None),
}
TAPER_CUTOFF = 1e-3  # DAPPER's localization.inds_and_coeffs(cutoff=1e-3)

# Runs inside --dapper-python. Protocol: one JSON request per stdin line, one JSON reply per
# stdout line ({"ready": ...} once at start-up).
_DAPPER_WORKER = r"""
import json, os, sys, time
os.environ.setdefault("DAPPER_LIVEPLOTTING", "false")
import numpy as np
import dapper as dpr
import dapper.da_methods as da
import dapper.mods as modelling
import dapper.tools.progressbar as progressbar
from dapper.mods.Lorenz96 import step
from dapper.tools.localization import nd_Id_localization

progressbar.disable_progbar = True
dpr.rc.liveplotting = False
dpr.rc.comps.error_only = True
out = sys.stdout
sys.stdout = sys.stderr  # keep DAPPER's prints off the reply channel


class FixedEnsemble:
    # HMM.X0 stand-in: the EnKF and LETKF only call X0.sample(N).
    def __init__(self, ensemble):
        self.ensemble = ensemble

    def sample(self, n):
        assert n == len(self.ensemble)
        return self.ensemble.copy()


def make_hmm(n_cycles, nx, batch):
    # dapper.mods.Lorenz96.sakov2008, with Ko set to the run length and the LETKF batch size.
    tseq = modelling.Chronology(0.05, dko=1, Ko=n_cycles - 1, BurnIn=0.0)
    dyn = modelling.Operator(M=nx, model=step, noise=0)
    obs = modelling.Operator(
        **modelling.partial_Id_Obs(nx, np.arange(nx)),
        noise=1,
        localizer=nd_Id_localization((nx,), (batch,)),
    )
    x0 = np.zeros(nx)
    x0[0] = 1.0
    return modelling.HiddenMarkovModel(dyn, obs, tseq, modelling.GaussRV(mu=x0, C=0.001))


out.write(json.dumps({"ready": True, "dapper": dpr.__version__, "numpy": np.__version__}) + "\n")
out.flush()
def dapper_hmm(module, n_cycles):
    # A DAPPER preset's HMM (dapper.mods.<module>) with Ko set to the run length, no burn-in.
    import importlib

    hmm = importlib.import_module("dapper.mods." + module).HMM.copy()
    tseq = hmm.tseq
    hmm.tseq = modelling.Chronology(tseq.dt, dko=tseq.dko, Ko=n_cycles - 1, BurnIn=0.0)
    return hmm


for line in sys.stdin:
    req = json.loads(line)
    data = np.load(req["data"])
    truth, obs, ens0 = data["xx"], data["observations"], data["ensemble0"]
    n_cycles, ny = obs.shape
    if "hmm" in req:
        # Any DAPPER preset and method: xx holds the truth at every model step (DAPPER's
        # convention), the method is da.<method>(**kwargs) with N = the ensemble size.
        hmm = dapper_hmm(req["hmm"], n_cycles)
        hmm.X0 = FixedEnsemble(ens0)
        yy = np.empty(n_cycles, dtype=object)
        for k in range(n_cycles):
            yy[k] = obs[k]
        xp = getattr(da, req["method"])(N=len(ens0), **req["kwargs"])
        dpr.set_seed(req["seed"])
        t, c = time.perf_counter(), time.process_time()
        xp.assimilate(hmm, truth, yy, liveplots=False, store_i=False)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        err = np.asarray(xp.stats.err.rms.a, dtype=float)
        reply = {"seconds": seconds, "cpu_seconds": cpu, "rmse_a_series": err.tolist()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        continue
    nx = ny
    hmm = make_hmm(n_cycles, nx, req.get("batch", 1))
    hmm.X0 = FixedEnsemble(ens0)
    yy = np.empty(n_cycles, dtype=object)
    for k in range(n_cycles):
        yy[k] = obs[k]
    if req["filter"] == "ETKF":
        xp = da.EnKF("Sqrt", N=len(ens0), infl=req["infl"], rot=True)
    else:
        xp = da.LETKF(N=len(ens0), loc_rad=req["loc_rad"], infl=req["infl"], rot=True)
    dpr.set_seed(req["seed"])
    t, c = time.perf_counter(), time.process_time()
    xp.assimilate(hmm, truth, yy, liveplots=False, store_i=False)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    err = np.asarray(xp.stats.err.rms.a, dtype=float)
    reply = {"seconds": seconds, "cpu_seconds": cpu, "rmse_a_series": err.tolist()}
    out.write(json.dumps(reply) + "\n")
    out.flush()
"""


class DapperWorker:
    """A long-lived DAPPER process (one thread) answering timing requests."""

    def __init__(self, python: str):
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            DAPPER_LIVEPLOTTING="false",
            MPLBACKEND="Agg",
        )
        # DAPPER's own prints and warnings go to a log, shown if the worker dies.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [python, "-c", _DAPPER_WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise RuntimeError(
                "the DAPPER worker exited; check --dapper-python (a venv with dapper==1.8.1). "
                f"Its stderr ended with:\n{tail}"
            )
        return json.loads(line)

    def run(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def _filter(name: str):
    infl, loc_rad, _ = SETTINGS[name]
    if name == "ETKF":
        return fxf.ETKF(), fxp.MultiplicativeInflator(infl), None
    grid = jnp.arange(float(N_X))
    filt = fxf.LETKF(
        radius=fxp.dapper_radius_to_gc_halfwidth(loc_rad),
        distance=functools.partial(fxp.periodic, period=float(N_X)),
        cutoff=TAPER_CUTOFF,
    )
    return filt, fxp.MultiplicativeInflator(infl), {"state_coords": grid, "obs_coords": grid}


def _time(fn) -> tuple[float, float, object]:
    """Wall and process CPU seconds of ``fn()``.

    CPU time is what load from other processes distorts least (waiting for a core is not
    counted; a busy hyper-thread sibling still slows it a little)."""
    t, c = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t, time.process_time() - c, out


def _rmse_a(analysis_mean, truth, burn: int) -> float:
    err = np.sqrt(np.mean((np.asarray(analysis_mean) - np.asarray(truth)) ** 2, axis=-1))
    return float(np.mean(err[burn:]))


def _compare(worker, request, call, jitted, args, repeats, n_cycles, truth, burn) -> dict:
    """Time DAPPER (`request` to `worker`), the filterax ``call`` and its ``jitted`` form back
    to back `repeats` times: the timing and rmse.a fields of a result row (ms per cycle from
    the best repeat; rmse.a from the first)."""
    load_before = os.getloadavg()
    t = {"d": [], "c": [], "j": [], "dc": [], "cc": [], "jc": []}
    rmse = {}
    for _ in range(repeats):
        reply = worker.run(request)
        t["d"].append(reply["seconds"])
        t["dc"].append(reply["cpu_seconds"])
        seconds, cpu, res = _time(lambda: call(*args))
        t["c"].append(seconds)
        t["cc"].append(cpu)
        seconds, cpu, _ = _time(lambda: jitted(*args))
        t["j"].append(seconds)
        t["jc"].append(cpu)
        if not rmse:
            rmse = {
                "dapper": float(np.mean(np.asarray(reply["rmse_a_series"])[burn:])),
                "filterax": _rmse_a(res.analysis_mean, truth, burn),
                "filterax_status": int(res.status),
            }
    ms = {k: 1e3 * min(v) / n_cycles for k, v in t.items()}
    return {
        "dapper_ms_per_cycle": ms["d"],
        "filterax_ms_per_cycle": ms["c"],
        "filterax_jit_ms_per_cycle": ms["j"],
        "ratio": ms["d"] / ms["c"],
        "ratio_jit": ms["d"] / ms["j"],
        "dapper_cpu_ms_per_cycle": ms["dc"],
        "filterax_cpu_ms_per_cycle": ms["cc"],
        "filterax_jit_cpu_ms_per_cycle": ms["jc"],
        "ratio_cpu": ms["dc"] / ms["cc"],
        "ratio_jit_cpu": ms["dc"] / ms["jc"],
        "dapper_seconds": t["d"],
        "filterax_seconds": t["c"],
        "filterax_jit_seconds": t["j"],
        "dapper_cpu_seconds": t["dc"],
        "filterax_cpu_seconds": t["cc"],
        "filterax_jit_cpu_seconds": t["jc"],
        "rmse_a_dapper": rmse["dapper"],
        "rmse_a_filterax": rmse["filterax"],
        "rmse_burn_in_cycles": burn,
        "filterax_status": rmse["filterax_status"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def measure(name: str, n_cycles: int, repeats: int, seed: int, worker: DapperWorker, tmp: Path):
    model = presets.lorenz96_sakov2008()
    twin = model.simulate(jax.random.key(seed), n_cycles)
    ens0 = model.initial_ensemble(jax.random.key(seed + 1000), N_ENSEMBLE)
    data = tmp / f"twin_{name}_{n_cycles}.npz"
    np.savez(
        data,
        xx=np.concatenate([np.asarray(twin.initial_truth)[None], np.asarray(twin.truth)]),
        observations=np.asarray(twin.observations),
        ensemble0=np.asarray(ens0),
    )
    burn = min(model.burn_in_cycles, n_cycles // 2)
    filt, inflator, context = _filter(name)
    infl, loc_rad, published = SETTINGS[name]

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
            context=context,
        )

    jitted = jax.jit(call)
    args = (jax.random.key(seed + 2000), ens0, twin.observations, twin.times)
    compile_call, _, _ = _time(lambda: call(*args))
    compile_jit, _, _ = _time(lambda: jitted(*args))
    # batch=1: one grid point per DAPPER local analysis (the LETKF's like-for-like setting).
    request = {"filter": name, "data": str(data), "infl": infl, "loc_rad": loc_rad, "seed": seed}
    request["batch"] = 1
    row = {
        "filter": name,
        "n_cycles": n_cycles,
        "n_ensemble": N_ENSEMBLE,
        "inflation": infl,
        "loc_rad": loc_rad,
        "filterax_first_call_s": compile_call,
        "filterax_first_jit_call_s": compile_jit,
        "published_rmse_a": published,
    }
    row.update(_compare(worker, request, call, jitted, args, repeats, n_cycles, twin.truth, burn))
    return row


# Particle filters side by side (issue 13 §3), DAPPER's tuned settings from its presets'
# "Suggested tuning" tables. name: (filterax preset, DAPPER module, DAPPER method, DAPPER
# kwargs, filterax method factory, N, published rmse.a).
def _pf(cls: str, **kwargs):
    def make():
        import filterax.learn as fl

        return getattr(fl, cls)(**kwargs)

    return make


PF_CASES = {
    "PartFilt-L63-100": (
        "lorenz63_sakov2012", "Lorenz63.sakov2012", "PartFilt", {"reg": 2.4, "NER": 0.3},
        _pf("BootstrapPF", ess_threshold=0.3, reg=2.4), 100, 0.38,
    ),
    "PartFilt-L63-800": (
        "lorenz63_sakov2012", "Lorenz63.sakov2012", "PartFilt", {"reg": 0.9, "NER": 0.2},
        _pf("BootstrapPF", ess_threshold=0.2, reg=0.9), 800, 0.28,
    ),
    "PartFilt-L96b-100": (
        "lorenz96_bocquet2010", "Lorenz96.bocquet2010", "PartFilt", {"reg": 1.3, "NER": 0.2},
        _pf("BootstrapPF", ess_threshold=0.2, reg=1.3), 100, 0.36,
    ),
    "PartFilt-L96b-800": (
        "lorenz96_bocquet2010", "Lorenz96.bocquet2010", "PartFilt", {"reg": 0.8, "NER": 0.2},
        _pf("BootstrapPF", ess_threshold=0.2, reg=0.8), 800, 0.25,
    ),
    "OptPF-L96b-100": (
        "lorenz96_bocquet2010", "Lorenz96.bocquet2010", "OptPF",
        {"reg": 1.0, "NER": 0.2, "Qs": 0.3},
        _pf("OptimalProposalPF", ess_threshold=0.2, reg=1.0, qs=0.3), 100, 0.37,
    ),
    "OptPF-L96b-800": (
        "lorenz96_bocquet2010", "Lorenz96.bocquet2010", "OptPF",
        {"reg": 0.6, "NER": 0.2, "Qs": 0.1},
        _pf("OptimalProposalPF", ess_threshold=0.2, reg=0.6, qs=0.1), 800, 0.25,
    ),
    "PFxN_EnKF-L96b-100": (
        "lorenz96_bocquet2010", "Lorenz96.bocquet2010", "PFxN_EnKF",
        {"NER": 0.2, "Qs": 1.0, "xN": 100},
        _pf("EnKFProposalPF", ess_threshold=0.2, qs=1.0, xn=100), 100, 0.32,
    ),
}  # fmt: skip


def _every_step_truth(twin, steps_per_cycle: int) -> np.ndarray:
    """DAPPER's ``xx`` (the truth at every model step) from a filterax twin (the truth at the
    observation times): steps between two observations repeat the next observed truth. Only
    the analysis-time errors are read back, which use the exact truth."""
    at_obs = np.asarray(twin.truth)
    between = np.repeat(at_obs, steps_per_cycle, axis=0)
    return np.concatenate([np.asarray(twin.initial_truth)[None], between])


def measure_cycled(
    name: str, n_cycles: int, repeats: int, seed: int, worker: DapperWorker, tmp: Path
):
    """One `PF_CASES` row: DAPPER's method vs the filterax cycled method through `run`."""
    import filterax.filters as ff

    preset, module, method, kwargs, factory, n_particles, published = PF_CASES[name]
    model = presets.PRESETS[preset]()
    steps = int(round(float(model.dt_obs) / float(model.dynamics.dt)))
    twin = model.simulate(jax.random.key(seed), n_cycles)
    ens0 = model.initial_ensemble(jax.random.key(seed + 1000), n_particles)
    data = tmp / f"twin_{name}_{n_cycles}.npz"
    np.savez(
        data,
        xx=_every_step_truth(twin, steps),
        observations=np.asarray(twin.observations),
        ensemble0=np.asarray(ens0),
    )
    burn = min(model.burn_in_cycles, n_cycles // 2)
    filt = factory()

    def call(key, ens0, obs, times):
        return ff.run(filt, model, ens0, obs, times, key=key)

    jitted = jax.jit(call)
    args = (jax.random.key(seed + 2000), ens0, twin.observations, twin.times)
    compile_call, _, _ = _time(lambda: call(*args))
    compile_jit, _, _ = _time(lambda: jitted(*args))
    request = {"hmm": module, "method": method, "kwargs": kwargs, "data": str(data)}
    request["seed"] = seed
    row = {
        "filter": name,
        "n_cycles": n_cycles,
        "n_ensemble": n_particles,
        "dapper_method": f"{method}({kwargs})",
        "filterax_method": repr(filt),
        "filterax_first_call_s": compile_call,
        "filterax_first_jit_call_s": compile_jit,
        "published_rmse_a": published,
    }
    row.update(_compare(worker, request, call, jitted, args, repeats, n_cycles, twin.truth, burn))
    return row


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dapper-python", required=True, help="python of a dapper==1.8.1 venv")
    parser.add_argument("--cycles", type=int, nargs="+", default=[300, 3000])
    parser.add_argument(
        "--filters", nargs="+", default=list(SETTINGS), choices=[*SETTINGS, *PF_CASES]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default="bench-results/dapper_speed.json")
    args = parser.parse_args(argv)

    worker = DapperWorker(args.dapper_python)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.filters:
                for n_cycles in args.cycles:
                    fn = measure_cycled if name in PF_CASES else measure
                    row = fn(name, n_cycles, args.repeats, args.seed, worker, Path(tmp))
                    rows.append(row)
                    print(
                        f"{name} {n_cycles}: DAPPER {row['dapper_ms_per_cycle']:.3f} ms, "
                        f"filterax {row['filterax_ms_per_cycle']:.4f} ms "
                        f"(jit {row['filterax_jit_ms_per_cycle']:.4f}), load "
                        f"{row['load_average_after'][0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        worker.close()

    meta = {
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "jax_device": str(jax.devices()[0]),
        "dapper": worker.info.get("dapper"),
        "dapper_numpy": worker.info.get("numpy"),
        "dapper_threads": 1,
        "repeats": args.repeats,
        "seed": args.seed,
        "dtype": "float64",
        "filterax_filters": fxf.__file__,
    }
    print(
        f"{meta['cpu']} ({meta['cpus']} CPUs), jax {meta['jax']}, DAPPER {meta['dapper']} "
        f"(numpy {meta['dapper_numpy']}, 1 thread), float64, best of {args.repeats}"
    )
    for clock, suffix in (("wall", ""), ("CPU", "_cpu")):
        header = (
            f"{clock:4s} {'filter':17s} {'cycles':>6s} {'filterax':>9s} {'(jit)':>8s} "
            f"{'DAPPER':>8s} {'ratio':>6s} {'(jit)':>6s} {'rmse.a fx':>9s} {'DAPPER':>7s}  "
            "load 1/5/15 min"
        )
        print(header)
        print("-" * len(header))
        for r in rows:
            load = "/".join(f"{x:.2f}" for x in r["load_average_after"])
            print(
                f"{clock:4s} {r['filter']:17s} {r['n_cycles']:6d} "
                f"{r[f'filterax{suffix}_ms_per_cycle']:9.4f} "
                f"{r[f'filterax_jit{suffix}_ms_per_cycle']:8.4f} "
                f"{r[f'dapper{suffix}_ms_per_cycle']:8.3f} {r[f'ratio{suffix}']:5.1f}x "
                f"{r[f'ratio_jit{suffix}']:5.1f}x {r['rmse_a_filterax']:9.3f} "
                f"{r['rmse_a_dapper']:7.3f}  {load}"
            )
    print(
        "ms per cycle, best of the repeats; ratio = DAPPER / filterax (call: assimilate as "
        "called; jit: inside jax.jit). wall: elapsed time; CPU: process CPU time (robust to "
        "other processes' load; equal to wall on an idle machine for these one-thread runs)."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
