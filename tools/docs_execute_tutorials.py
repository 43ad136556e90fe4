"""mkdocs hook: execute every tutorial, several at a time, before mkdocs-jupyter renders it.

mkdocs-jupyter executes notebooks one after another inside the build. The tutorials are
jupytext percent scripts whose run time is mostly XLA compilation, which is single-threaded, so
on the 2-core CI machine a serial build leaves a core idle. This hook runs each
``docs/tutorials/*.py`` in its own process (``python docs_execute_tutorials.py SRC OUT``: jupytext
reads the script, nbclient executes it on the ``python3`` kernel with errors fatal), ``workers``
at a time, writes the executed notebooks to a scratch directory, and points each tutorial file's
``abs_src_path`` at its executed notebook. mkdocs-jupyter (``execute: false``) then renders the
stored outputs and figures; ``include_source`` offers the executed notebook for download.

A tutorial that raises fails the build (``PluginError`` with the traceback's tail), as
``allow_errors: false`` did before. The build log lists each page's execution time.
``FILTERAX_DOCS_WORKERS`` sets the number of concurrent kernels (default: the CPUs this process
may use, at most 4).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import queue
import subprocess
import sys
import tempfile
import time

from mkdocs.plugins import event_priority

TIMEOUT_S = 120  # one tutorial (each takes under 30 s); a hung kernel is retried once

# XLA's CPU runtime can wedge on vmapped programs: the kernel then waits forever at a low CPU
# load (seen on "2.D" in CI, where the build hit its time limit, and here). These are the
# upstream workarounds (single-threaded Eigen; synchronous dispatch, jax-ml/jax#25861); they cost
# nothing here (one kernel per core) but did not remove every hang, hence the retry below. A
# variable the caller set wins.
KERNEL_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "JAX_CPU_ENABLE_ASYNC_DISPATCH": "false",
}
# Each kernel is also pinned to one CPU of its own (the kernel and everything it starts
# inherit the affinity, and XLA sizes its thread pools from it): the gradient of the learned
# Gaussian filter (10.A, "Learning filters by VI") hung twice in a row in CI with both flags
# set, and pinning to one core is the workaround that held (../shared/VI_REPRODUCTION.md,
# pitfall 8; docs/failure_modes.md).
_CPUS: queue.Queue[int] = queue.Queue()

log = logging.getLogger("mkdocs.hooks.execute_tutorials")


def _workers() -> int:
    env = os.environ.get("FILTERAX_DOCS_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def _execute(src: str, out: str) -> tuple[int, str, float]:
    env = {**KERNEL_ENV, **os.environ}
    start = time.perf_counter()
    cpu = _CPUS.get()
    try:
        return _execute_on(src, out, env, cpu, start)
    finally:
        _CPUS.put(cpu)


def _execute_on(src: str, out: str, env: dict, cpu: int, start: float) -> tuple[int, str, float]:
    for attempt in (1, 2):
        try:
            proc = subprocess.run(
                [sys.executable, __file__, src, out],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
                env=env,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            )
        except subprocess.TimeoutExpired:
            # INFO, not WARNING: a retried hang is XLA's (docs/failure_modes.md), not the page's,
            # and --strict fails on any warning. A second hang fails the build.
            log.info("%s: no result after %d s (attempt %d of 2)", src, TIMEOUT_S, attempt)
            continue
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start
    return 1, f"timed out twice after {TIMEOUT_S} s", time.perf_counter() - start


@event_priority(-100)
def on_files(files, config):
    """Execute the tutorials and point each page at its executed notebook.

    Runs after mkdocs-jupyter has wrapped the tutorials in its ``NotebookFile`` (whose
    ``abs_src_path`` is computed by the wrapper itself, so it is the wrapper's that is set)."""
    from mkdocs.exceptions import PluginError

    tutorials = [
        f for f in files if f.src_uri.startswith("tutorials/") and f.src_uri.endswith(".py")
    ]
    if not tutorials:
        return files
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="filterax-tutorials-")) / "tutorials"
    scratch.mkdir(parents=True)
    workers = _workers()
    cpus = sorted(os.sched_getaffinity(0))
    while not _CPUS.empty():  # a rebuild (mkdocs serve) starts with fresh slots
        _CPUS.get_nowait()
    for slot in range(workers):
        _CPUS.put(cpus[slot % len(cpus)])
    start = time.perf_counter()
    executed = {f: str(scratch / (pathlib.PurePath(f.src_uri).stem + ".ipynb")) for f in tutorials}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = {pool.submit(_execute, f.abs_src_path, executed[f]): f for f in tutorials}
        results = {jobs[job]: job.result() for job in concurrent.futures.as_completed(jobs)}
    failed = [(f, text) for f, (rc, text, _) in results.items() if rc != 0]
    for f, (_, _, seconds) in sorted(results.items(), key=lambda kv: -kv[1][2]):
        log.info("executed %s in %.1f s", f.src_uri, seconds)
    log.info(
        "executed %d tutorials in %.1f s on %d workers",
        len(tutorials),
        time.perf_counter() - start,
        workers,
    )
    if failed:
        report = "\n\n".join(f"{f.src_uri}:\n{text[-3000:]}" for f, text in failed)
        raise PluginError(f"{len(failed)} tutorial(s) raised while executing:\n{report}")
    for f in tutorials:
        f.abs_src_path = executed[f]
    return files


def _main(src: str, out: str) -> None:
    """Execute one jupytext script on the ``python3`` kernel and write the executed notebook."""
    import jupytext
    import nbclient
    import nbformat

    notebook = jupytext.read(src)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(src))}},
    )
    client.execute()
    # An exception raised outside the cell's own code (e.g. by matplotlib while the inline
    # backend renders a figure) does not fail the cell: it is only printed. Fail on it too.
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                text = f"{output.get('ename')}: {output.get('evalue')}"
            elif output.get("output_type") == "stream" and "Traceback" in output.get("text", ""):
                text = output["text"]
            else:
                continue
            raise SystemExit(
                f"{src}: cell {index} printed an exception while executing:\n{text[-3000:]}"
            )
    nbformat.write(notebook, out)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
