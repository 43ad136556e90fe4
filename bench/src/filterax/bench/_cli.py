"""Command line: ``filterax-bench list | run | tune | report | demo | calibrate | learn |
experiments``."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

from ._version import __version__

DEFAULT_OUT = "bench-results"
MAX_GRID_POINTS = 1000  # per --grid axis: the grid x seeds runs as one vmapped call


class _UsageError(Exception):
    """A mistake in the command line or in a file it names. `main` prints it as one line,
    ``filterax-bench <command>: error: <message>``, and exits with status 2 (as argparse does
    for its own errors)."""


def _split(values: list[str] | None) -> list[str] | None:
    """``--methods A B,C`` -> ``["A", "B", "C"]``."""
    if values is None:
        return None
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return out or None


def _seed(text: str) -> int:
    """An argparse type: a non-negative integer seed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer seed") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seeds are non-negative integers; got {value}")
    return value


def _setup_jax(args: argparse.Namespace) -> None:
    import jax

    from ._compile_cache import default_cache_dir, enable_compile_cache

    # DAPPER runs in float64; the published numbers are reproduced in float64.
    jax.config.update("jax_enable_x64", not getattr(args, "float32", False))
    if getattr(args, "no_compile_cache", False):
        return
    directory = getattr(args, "compile_cache", None)
    enable_compile_cache(Path(directory) if directory else default_cache_dir())


def _import_plugins(args: argparse.Namespace) -> None:
    """``--import my_methods.py`` / ``--import my_package.bench``: user registrations."""
    import importlib
    import runpy

    for target in getattr(args, "imports", None) or []:
        if target.endswith(".py") or os.sep in target:
            if not Path(target).is_file():
                raise _UsageError(f"--import {target}: no such file.")
            runpy.run_path(target, run_name="__filterax_bench_plugin__")
        else:
            importlib.import_module(target)


def _load_tuned(args: argparse.Namespace) -> None:
    """Import the plugins, then check and apply every ``--tuned`` file (all of it or none)."""
    from ._registry import check_tuned, load_tuned, read_tuned

    _import_plugins(args)

    for path in getattr(args, "tuned", None) or []:
        if not Path(path).is_file():
            raise _UsageError(
                f"--tuned {path}: no such file (`filterax-bench tune --into {path}` writes one)."
            )
        try:
            # Every entry must name a registered benchmark and method, and hold values that
            # method takes there: a stale or hand-edited file is refused, never half-applied.
            check_tuned(read_tuned(path), path)
            load_tuned(path)
        except ValueError as err:
            raise _UsageError(str(err)) from err


def _checked_out(args: argparse.Namespace) -> Path:
    """``--out`` as a directory that exists or can be created, checked before any work."""
    from ._files import check_output_dir

    try:
        return check_output_dir(args.out)
    except ValueError as err:
        raise _UsageError(str(err)) from err


def _load_results(out: Path, *, required: bool) -> dict:
    """``<out>/results.json`` (checked); with `required`, a missing or empty one is an error."""
    from ._runner import load_results, results_path

    path = results_path(out)
    if required and not path.exists():
        raise _UsageError(f"no {path}; write it with `filterax-bench run --out {out}` first.")
    try:
        results = load_results(out)
    except ValueError as err:
        raise _UsageError(str(err)) from err
    if required and not results["cells"]:
        raise _UsageError(
            f"{path} holds no results; write them with `filterax-bench run --out {out}`."
        )
    return results


def _render(results: dict, out: Path, *, files: bool = True) -> None:
    from rich.console import Console

    from ._leaderboard import print_leaderboard, render_all

    console = Console()
    print_leaderboard(results, console)
    if files:
        paths = render_all(results, out)
        console.print(
            f"[dim]wrote {out / 'results.json'}, {paths['markdown']}, {paths['html']} "
            f"and {sum(k.startswith('plots/') for k in paths)} plots[/dim]"
        )


# --- list ------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import _registry as reg

    _import_plugins(args)
    console = Console()
    suite_cells = reg.get_suite(args.suite).resolved() if args.suite else None

    def names_column(table: Table, names: list[str]) -> None:
        # never wrapped or cut: two names must not shrink to the same prefix
        table.add_column("name", no_wrap=True, min_width=max(map(len, names), default=4))

    table = Table(title="benchmarks", title_justify="left")
    names_column(table, reg.list_benchmarks())
    for col in ("cycles", "burn-in", "seeds", "description"):
        table.add_column(col, no_wrap=col != "description", overflow="fold")
    for name in reg.list_benchmarks():
        if suite_cells is not None and name not in suite_cells:
            continue
        b = reg.get_benchmark(name)
        burn = str(b.burn_in(b.n_cycles))  # cycles dropped from the scores
        seeds = ",".join(map(str, b.seeds))
        table.add_row(name, str(b.n_cycles), burn, seeds, b.description)
    console.print(table)

    table = Table(title="methods", title_justify="left")
    names_column(table, reg.list_methods())
    for col in ("family", "N_e", "benchmarks (settings)", "description"):
        table.add_column(col, overflow="fold")
    wanted = None if suite_cells is None else {m for ms in suite_cells.values() for m in ms}
    for name in reg.list_methods():
        if wanted is not None and name not in wanted:
            continue
        m = reg.get_method(name)
        where = ", ".join(f"{b} ({m.source(b)})" for b in m.benchmarks)
        table.add_row(name, m.family, str(m.n_ensemble or "-"), where, m.description)
    console.print(table)

    table = Table(title="suites", title_justify="left")
    for col in ("name", "cells", "description"):
        table.add_column(col)
    for name in reg.list_suites():
        s = reg.get_suite(name)
        n = sum(len(ms) for ms in s.resolved().values())
        table.add_row(name, str(n), s.description)
    console.print(table)
    if suite_cells is not None:
        for bench, methods in suite_cells.items():
            console.print(f"  {args.suite}: [bold]{bench}[/bold]: {', '.join(methods)}")
    return 0


# --- run / report ------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    out = _checked_out(args)
    _load_results(out, required=False)  # a corrupt one is refused before any cell runs
    _setup_jax(args)
    _load_tuned(args)
    from ._runner import run

    methods, benchmarks = _split(args.methods), _split(args.benchmarks)
    suite = args.suite
    if suite is None and methods is None and benchmarks is None:
        suite = "quick"
    t0 = time.perf_counter()
    try:
        results = run(
            methods,
            benchmarks,
            args.seeds,
            out,
            suite=suite,
            n_cycles=args.cycles,
            force=args.force,
            progress=not args.no_progress,
        )
    except (KeyError, ValueError) as err:
        raise _UsageError(err.args[0] if err.args else str(err)) from err
    wall = time.perf_counter() - t0
    _render(results, out, files=not args.no_render)
    last = results.get("last_run") or {}
    if last.get("reused"):
        print(f"resumed: {last['reused']} cells reused, {last['computed']} computed")
    print(f"wall time {wall:.1f} s")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ._experiments import experiments_path, load_experiments

    out = Path(args.out)
    try:
        has_experiments = bool(load_experiments(out))
    except ValueError as err:
        raise _UsageError(str(err)) from err
    # An output folder holding only experiments.json renders the Experiments section alone.
    results = _load_results(out, required=not has_experiments)
    if has_experiments and not results["cells"]:
        print(f"no benchmark results in {out}; rendering {experiments_path(out)} alone")
    _checked_out(args)  # the leaderboard files are written there
    _render(results, out)
    return 0


# --- tune ----------------------------------------------------------------------------------


_GRID_USAGE = "write NAME=START:STOP:STEP or NAME=V1,V2,... (e.g. inflation=1.0:1.2:0.01)"


def _parse_grid(specs: list[str] | None) -> dict[str, tuple[float, ...]] | None:
    """``inflation=1.0:1.1:0.01`` (start:stop:step, inclusive) or ``loc=2,4,6``.

    Anything else is a `_UsageError` naming the spec: no name or no values, an empty value
    (``1.0,``), a value that is not a finite number, a name given twice, a range whose step
    is not positive or does not divide it, more than `MAX_GRID_POINTS` values.
    """
    if not specs:
        return None
    grid: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, sep, text = (part.strip() for part in spec.partition("="))
        if not sep or not name:
            raise _UsageError(f"--grid {spec!r}: {_GRID_USAGE}.")
        if name in grid:
            raise _UsageError(f"--grid {spec!r}: {name} is given twice; give it once.")
        if not text:
            raise _UsageError(f"--grid {spec!r}: no values; {_GRID_USAGE}.")
        if ":" in text:
            grid[name] = _parse_range(spec, text)
        else:
            grid[name] = tuple(_parse_number(spec, v) for v in text.split(","))
        if len(grid[name]) > MAX_GRID_POINTS:
            raise _UsageError(
                f"--grid {spec!r}: {len(grid[name])} values; at most {MAX_GRID_POINTS} per "
                "hyper-parameter (the grid runs as one vmapped call)."
            )
    return grid


def _parse_number(spec: str, text: str) -> float:
    text = text.strip()
    if not text:
        raise _UsageError(f"--grid {spec!r}: an empty value (a stray comma?); {_GRID_USAGE}.")
    try:
        value = float(text)
    except ValueError:
        raise _UsageError(f"--grid {spec!r}: {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise _UsageError(f"--grid {spec!r}: {text} is not a finite number.")
    return value


def _parse_range(spec: str, text: str) -> tuple[float, ...]:
    import numpy as np

    parts = text.split(":")
    if len(parts) != 3:
        raise _UsageError(
            f"--grid {spec!r}: a range is START:STOP:STEP (three numbers); {_GRID_USAGE}."
        )
    start, stop, step = (_parse_number(spec, part) for part in parts)
    if not step > 0:
        raise _UsageError(f"--grid {spec!r}: the step must be > 0; got {step:g}.")
    if stop < start:
        raise _UsageError(f"--grid {spec!r}: STOP {stop:g} is below START {start:g}.")
    steps = (stop - start) / step
    n = round(steps)
    if n + 1 > MAX_GRID_POINTS:
        raise _UsageError(
            f"--grid {spec!r}: {n + 1} values; at most {MAX_GRID_POINTS} per hyper-parameter "
            "(the grid runs as one vmapped call)."
        )
    if abs(steps - n) > 1e-6 * max(n, 1):
        # round() would silently change the step (1:2:0.3 gave 1, 1.333, 1.667, 2).
        raise _UsageError(
            f"--grid {spec!r}: the step {step:g} does not divide STOP - START = "
            f"{stop - start:g} ({steps:.4g} steps); pick one that does or list the values."
        )
    return tuple(round(float(v), 10) for v in np.linspace(start, stop, n + 1))


def _checked_into(args: argparse.Namespace) -> Path:
    """The tuned-settings file ``tune`` merges into, checked before any work: a writable
    location, and (when it exists) a tuned-settings file, since it is read back to merge."""
    from ._files import check_output_file
    from ._registry import read_tuned

    try:
        if args.into:
            into = check_output_file(args.into, flag="--into")
        else:
            into = Path(_checked_out(args)) / "tuned.json"
            check_output_file(into, flag="--out", create_parents=True)
        read_tuned(into)
    except ValueError as err:
        raise _UsageError(str(err)) from err
    return into


def _tune(args: argparse.Namespace) -> int:
    grid = _parse_grid(args.grid)
    into = _checked_into(args)
    _setup_jax(args)
    _load_tuned(args)
    from rich.console import Console

    from . import _registry as reg
    from ._tune import DEFAULT_TUNING_SEEDS, check_tuning, tune

    console = Console()
    methods, benchmarks = _split(args.methods), _split(args.benchmarks)
    try:
        cells = reg.resolve_cells(args.suite, methods, benchmarks)
    except (KeyError, ValueError) as err:
        raise _UsageError(err.args[0] if err.args else str(err)) from err
    seeds = args.tuning_seeds or list(DEFAULT_TUNING_SEEDS)
    todo = []
    for bench, method in cells:
        if grid is None and not method.tune_grid:
            console.print(f"[dim]{bench.name}/{method.name}: nothing to tune, skipped[/dim]")
            continue
        # Every cell's grid, seeds and run length are checked before the first one runs.
        try:
            check_tuning(method, bench, grid, seeds, n_cycles=args.cycles, margin=args.margin)
        except ValueError as err:
            raise _UsageError(str(err)) from err
        todo.append((bench, method))
    failed = stored = 0
    for bench, method in todo:
        try:
            with console.status(f"tuning {bench.name}/{method.name}"):
                res = tune(
                    method,
                    bench,
                    grid,
                    seeds,
                    n_cycles=args.cycles,
                    margin=args.margin,
                    into=str(into),
                )
        except ValueError as err:
            console.print(f"[red]{bench.name}/{method.name}: {err}[/red] (nothing stored)")
            failed += 1
            continue
        stored += 1
        chosen = ", ".join(f"{k}={v}" for k, v in res.best.items())
        console.print(
            f"{bench.name}/{method.name}: [bold]{chosen}[/bold] rmse.a {res.setting.rmse_a:.4f} "
            f"({res.diverged.sum()} of {res.diverged.size} grid points diverged; "
            f"{res.seconds:.1f} s)"
        )
        _print_tune_table(console, res)
    if stored:
        console.print(f"[dim]tuned settings merged into {into}; use them with --tuned {into}[/dim]")
    return 1 if failed else 0


def _print_tune_table(console, res) -> None:
    """rmse.a over the grid: ``*`` the pick, ``x`` diverged (1-D: one line; 2-D: a matrix)."""
    import numpy as np

    names = list(res.grid)
    best = tuple(res.index)

    def cell(idx):
        mark = "*" if idx == best else ("x" if res.diverged[idx] else " ")
        value = res.rmse_a[idx]
        return f"{value:.3f}{mark}" if np.isfinite(value) else f"  nan{mark}"

    if len(names) == 1:
        values = res.grid[names[0]]
        line = "  ".join(f"{v:g}:{cell((i,))}" for i, v in enumerate(values))
        console.print("  " + line, highlight=False)
    elif len(names) == 2:
        rows, cols = (res.grid[n] for n in names)
        console.print(f"  {names[0]} \\ {names[1]}", highlight=False)
        console.print("  " + " " * 8 + "".join(f"{c:>8g}" for c in cols), highlight=False)
        for i, r in enumerate(rows):
            cells = "".join(f"{cell((i, j)):>8}" for j in range(len(cols)))
            console.print(f"  {r:>8g}{cells}", highlight=False)


# --- demo ----------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_lorenz96_demo

    print(
        f"Lorenz-96 (Sakov & Oke 2008 setup), stochastic EnKF N={args.n_ensemble}, "
        f"inflation {args.inflation}, {args.cycles} cycles, seeds {args.seeds}"
    )
    try:
        res = run_lorenz96_demo(
            n_ensemble=args.n_ensemble,
            inflation=args.inflation,
            n_cycles=args.cycles,
            seeds=args.seeds,
        )
    except ValueError as err:
        raise _UsageError(str(err)) from err

    def pm(xs):
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.3f} ± {sd:.3f}"

    print(f"  burn-in cycles       : {res.burn_in_cycles}")
    print(
        f"  rmse.a (mean ± sd)   : {pm(res.rmse_a)}"
        f"   (published {res.published_rmse_a}, DAPPER 1.8.1)"
    )
    print(f"  rmse.f               : {pm(res.rmse_f)}")
    print(f"  spread.a             : {pm(res.spread_a)}")
    print(f"  per-seed rmse.a      : {', '.join(f'{x:.3f}' for x in res.rmse_a)}")
    print(f"  compile time         : {res.compile_seconds:.2f} s")
    print(
        f"  time per cycle       : {1e3 * res.seconds_per_cycle:.3f} ms"
        " (all seeds in one vmapped scan)"
    )
    return 0


# --- calibrate -----------------------------------------------------------------------------


def _calibrate(args: argparse.Namespace) -> int:
    _setup_jax(args)
    from rich.console import Console

    from ._calibration import print_table, run_calibration

    console = Console()
    out = _checked_out(args)

    def report(cell: dict) -> None:
        s = cell["scores"]
        err = "-" if s["err_truth"] is None else f"{s['err_truth']:.3g}"
        console.print(
            f"[dim]{cell['problem']}/{cell['method']} seed {cell['seed']}: {cell['status']}, "
            f"err truth {err}, {s['iterations']} iterations, {s['wall_seconds']:.3f} s[/dim]",
            highlight=False,
        )

    t0 = time.perf_counter()
    try:
        results = run_calibration(
            _split(args.problems),
            _split(args.methods),
            args.seeds,
            quick=args.quick,
            out=out,
            progress=None if args.no_progress else report,
        )
    except (KeyError, ValueError) as err:
        raise _UsageError(err.args[0] if err.args else str(err)) from err
    print_table(results)
    console.print(f"[dim]wrote {out / 'calibration.json'} and {out / 'calibration.md'}[/dim]")
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


def _learn(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    console = Console()
    out = _checked_out(args)
    from ._learn_patterns import PATTERNS, run_learning_patterns

    names = _split(args.patterns) or list(PATTERNS)
    unknown = [n for n in names if n not in PATTERNS]
    if unknown:
        raise _UsageError(f"unknown pattern(s) {unknown}; choose from {list(PATTERNS)}")
    bars = None
    if not args.no_progress and sys.stdout.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
        )

    def progress(name: str):
        if args.no_progress:
            return None
        task = None

        def callback(p) -> None:
            # One call per training window (filterax.learn.TrainingProgress).
            nonlocal task
            if bars is not None:
                if task is None:
                    task = bars.add_task(name, total=p.n_steps, loss="-")
                bars.update(task, completed=p.step + 1, loss=f"{p.loss:.4g}")
            elif (p.step + 1) % max(1, p.n_steps // 10) == 0 or p.step + 1 == p.n_steps:
                print(f"{name}: window {p.step + 1}/{p.n_steps}, loss {p.loss:.4g}", flush=True)

        return callback

    t0 = time.perf_counter()
    if bars is not None:
        bars.start()
    try:
        results = run_learning_patterns(names, quick=args.quick, out=out, progress=progress)
    finally:
        if bars is not None:
            bars.stop()
    for name in names:
        console.print(f"[bold]{name}[/bold] ({results[name]['seconds']} s): ", highlight=False)
        console.print_json(data={k: v for k, v in results[name].items() if k != "seconds"})
    console.print(f"[dim]wrote {out / 'learn.json'}[/dim]")
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


def _progress_bars(no_progress: bool):
    """A rich progress display when stdout is a terminal (None otherwise or with
    --no-progress)."""
    if no_progress or not sys.stdout.isatty():
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def _experiments_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ._api import experiments

    _import_plugins(args)
    table = Table(title="experiments", title_justify="left", show_lines=True)
    names = list(experiments())
    table.add_column("name", no_wrap=True, min_width=max(map(len, names), default=4))
    table.add_column("what (source; quick | full size)", overflow="fold", ratio=3)
    table.add_column("targets", overflow="fold", ratio=2)
    for name, exp in experiments().items():
        targets = "\n".join(
            f"{t.key} in [{t.value[0]}, {t.value[1]}]"
            if t.comparison == "in"
            else f"{t.key} {t.comparison} {t.value}"
            for t in exp.targets
        )
        sizes = " | ".join(exp.sizes.get(k, "?") for k in ("quick", "full"))
        table.add_row(name, f"{exp.title}\n[dim]{exp.citation}; {sizes}[/dim]", targets)
    Console().print(table)
    return 0


def _experiments_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    out = _checked_out(args)
    from ._experiments import experiments_path, load_experiments

    try:
        load_experiments(out)  # a corrupt file is refused before any experiment runs
    except ValueError as err:
        raise _UsageError(str(err)) from err
    if not args.no_render:
        _load_results(out, required=False)  # so is a corrupt results.json the report reads
    _setup_jax(args)
    _import_plugins(args)
    from ._api import experiments, run_experiments

    names = _split(args.names) or list(experiments())
    unknown = [n for n in names if n not in experiments()]
    if unknown:
        raise _UsageError(
            f"unknown experiment(s) {unknown}; choose from {list(experiments())} "
            "(`filterax-bench experiments list`)"
        )
    bars = _progress_bars(args.no_progress)

    def progress(name: str):
        if args.no_progress:
            return None
        task = None
        last = [-1.0]

        def callback(stage: str, done: int, total: int) -> None:
            nonlocal task
            if bars is not None:
                if task is None:
                    task = bars.add_task(f"{name}: {stage}", total=total)
                bars.update(task, description=f"{name}: {stage}", completed=done, total=total)
                return
            # Plain lines: at most one per tenth of a stage, and its end.
            frac = done / total if total else 1.0
            if done == total or frac - last[0] >= 0.1 or frac < last[0]:
                last[0] = frac
                print(f"{name}: {stage} {done}/{total}", flush=True)

        return callback

    t0 = time.perf_counter()
    if bars is not None:
        bars.start()
    try:
        records = run_experiments(names, quick=args.quick, out=out, progress=progress)
    finally:
        if bars is not None:
            bars.stop()
    for name, rec in records.items():
        verdict = "[green]all targets met[/green]" if rec["passed"] else "[red]missed[/red]"
        size = "quick" if rec["quick"] else "full"
        console.print(f"[bold]{name}[/bold] ({size}, {rec['seconds']} s): {verdict}")
        for t in rec["targets"]:
            mark = "[green]✔[/green]" if t["passed"] else "[red]✗[/red]"
            measured = "—" if t["measured"] is None else f"{t['measured']:.4g}"
            value = t["value"]
            target = (
                f"in [{value[0]:g}, {value[1]:g}]"
                if t["comparison"] == "in"
                else f"{t['comparison']} {value}"
            )
            console.print(f"  {mark} {t['key']} = {measured}  (target {target})", highlight=False)
        for key, value in rec.get("summary", {}).items():
            text = "—" if value is None else f"{value:.4g}"
            console.print(f"    {key} = {text}", highlight=False)
    console.print(f"[dim]merged into {experiments_path(out)}[/dim]")
    if not args.no_render:
        from ._leaderboard import render_all

        paths = render_all(_load_results(out, required=False), out)
        console.print(f"[dim]wrote {paths['html']}[/dim]")
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


# --- parser ----------------------------------------------------------------------------------


def _add_selection(p: argparse.ArgumentParser, *, suite_default_note: str) -> None:
    p.add_argument(
        "--suite",
        default=None,
        help=f"quick | standard | full | a registered suite ({suite_default_note})",
    )
    p.add_argument(
        "--methods", nargs="+", help="method names or glob patterns (space/comma separated)"
    )
    p.add_argument("--benchmarks", nargs="+", help="benchmark names or glob patterns")
    p.add_argument("--cycles", type=int, default=None, help="run length for every cell")
    p.add_argument(
        "--tuned",
        nargs="+",
        default=None,
        help="tuned-settings JSON file(s) to apply on top of the packaged settings",
    )
    p.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    _add_import(p)
    _add_compile_cache(p)


def _add_compile_cache(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="JAX's persistent compilation cache directory (default "
        "$FILTERAX_BENCH_COMPILE_CACHE, else ~/.cache/filterax-bench/jax): a second run "
        "loads the compiled cells instead of compiling them",
    )
    group.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="compile every cell afresh (also FILTERAX_BENCH_COMPILE_CACHE=off)",
    )


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--import",
        dest="imports",
        nargs="+",
        default=None,
        metavar="MODULE_OR_FILE",
        help="Python module(s) or .py file(s) that register your own methods/benchmarks",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filterax-bench",
        description="Score filterax's DA methods on the standard benchmarks; print and write "
        "the leaderboard.",
    )
    parser.add_argument("--version", action="version", version=f"filterax-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list benchmarks, methods and suites")
    p.add_argument("--suite", default=None, help="only what this suite runs")
    _add_import(p)
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "run",
        help="run a suite (default: quick), write results.json and the leaderboard",
        description="Without --suite/--methods/--benchmarks: the quick suite. With both "
        "--methods and --benchmarks and no --suite: every method on every benchmark. With one "
        "of them: the full suite filtered by it.",
    )
    _add_selection(p, suite_default_note="default quick")
    p.add_argument(
        "--seeds",
        type=_seed,
        nargs="+",
        default=None,
        help="scoring seeds, non-negative integers (default: the suite's, else each benchmark's)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="re-run cells already in results.json")
    p.add_argument("--no-render", action="store_true", help="skip Markdown/HTML/plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "tune",
        help="sweep hyper-parameters (grid x tuning seeds, one compiled call) and store the pick",
    )
    _add_selection(p, suite_default_note="cells to tune; default: --methods x --benchmarks")
    p.add_argument(
        "--grid",
        nargs="+",
        default=None,
        help="NAME=START:STOP:STEP or NAME=V1,V2,... (default: each method's tune_grid)",
    )
    p.add_argument(
        "--tuning-seeds",
        type=_seed,
        nargs="+",
        default=None,
        help="seeds the grid is scored on (default: seeds disjoint from the scoring seeds)",
    )
    p.add_argument("--margin", type=float, default=0.02, help="relative rmse tolerance (0.02)")
    p.add_argument("--into", default=None, help="tuned-settings JSON (default <out>/tuned.json)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    p.set_defaults(func=_tune)

    p = sub.add_parser("report", help="re-render the leaderboard from <out>/results.json")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="Lorenz-96 twin experiment with a stochastic EnKF")
    p.add_argument("--n-ensemble", type=int, default=40, help="ensemble size N_e (40)")
    p.add_argument("--inflation", type=float, default=1.06, help="multiplicative inflation (1.06)")
    p.add_argument("--cycles", type=int, default=1400, help="assimilation cycles (1400)")
    p.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1, 2], help="seeds (0 1 2)")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "learn",
        help="training patterns of differentiable DA (learn F, a model correction, H, LETKF "
        "inflation/localisation/R) with a progress bar",
        description="Train each pattern online on Lorenz-96 windows through filterax.learn."
        "fit_windows, score it on a held-out twin, print the results and write learn.json "
        "into --out.",
    )
    p.add_argument("--quick", action="store_true", help="quarter-length training runs")
    p.add_argument(
        "--patterns", nargs="+", help="A_forcing A_mlp_correction B_obs_operator C_letkf (all)"
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    p.set_defaults(func=_learn)

    p = sub.add_parser(
        "experiments",
        help="reproduction experiments with stated targets (train, then score): list | run",
        description="Registered reproduction experiments (Bach et al. 2025's learned filters, "
        "the training patterns of differentiable DA). `run` writes <out>/experiments.json "
        "(merged with earlier runs) and re-renders the HTML report with an Experiments section.",
    )
    esub = p.add_subparsers(dest="experiments_command", required=True)
    q = esub.add_parser("list", help="list the experiments, their targets and sizes")
    _add_import(q)
    q.set_defaults(func=_experiments_list)
    q = esub.add_parser("run", help="run experiments (default all) and check their targets")
    q.add_argument("names", nargs="*", help="experiment names (default: all)")
    q.add_argument("--quick", action="store_true", help="the quick sizes (~2 min each, 1 core)")
    q.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    q.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    q.add_argument("--no-render", action="store_true", help="skip re-rendering the HTML report")
    _add_import(q)
    _add_compile_cache(q)
    q.set_defaults(func=_experiments_run)

    p = sub.add_parser(
        "calibrate",
        help="ensemble Kalman processes (EKI, ETKI, UKI, EKS, TEKI, GNKI) on inverse problems",
        description="Run every problem x method x seed cell, print the table and write "
        "calibration.json and calibration.md into --out.",
    )
    p.add_argument("--quick", action="store_true", help="short runs, seeds 0 1 (~1-2 min)")
    p.add_argument("--problems", nargs="+", help="linear, expsin, darcy1d (default all)")
    p.add_argument("--methods", nargs="+", help="EKI, ETKI, UKI, EKS, TEKI, GNKI (default all)")
    p.add_argument(
        "--seeds", type=_seed, nargs="+", default=None, help="seeds (default 0 1 / 0..4)"
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell lines")
    _add_compile_cache(p)
    p.set_defaults(func=_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``filterax-bench`` console script."""
    args = build_parser().parse_args(argv)  # --help and argument errors: no JAX import
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        return args.func(args)
    except _UsageError as err:
        _error(args.command, str(err))
        return 2
    except KeyboardInterrupt:
        # Finished cells are already on disk (results.json is rewritten after each one).
        kept = (
            " finished cells are kept in results.json; run again to resume"
            if (args.command in ("run", "tune"))
            else ""
        )
        _error(args.command, f"interrupted;{kept}" if kept else "interrupted")
        return 130
    except OSError as err:
        # The disk, not the user: a failed read or write (full, removed, permissions changed
        # during the run). Atomic writes leave the previous file intact.
        where = f" {err.filename}" if err.filename else ""
        _error(args.command, f"cannot access{where}: {err.strerror or err}")
        return 1


def _error(command: str, message: str) -> None:
    # One line, whatever the message holds.
    print(f"filterax-bench {command}: error: {' '.join(message.split())}", file=sys.stderr)
