"""Running a non-JAX forward model member-parallel through a ``concurrent.futures.Executor``.

An expensive simulator (Fortran, a subprocess, a model on another machine) cannot be traced by
JAX. The ensemble members are independent, so they run as ``N_e`` tasks on any executor:
``ThreadPoolExecutor`` (the simulator releases the GIL or shells out), ``ProcessPoolExecutor``
(pure-Python/NumPy models; the function must be picklable, i.e. defined at module level), a Dask
``distributed.Client(...).get_executor()`` or a Ray / MPI ``concurrent.futures`` pool on a
cluster. A member that raises, returns the wrong shape, returns non-finite values or times out
is a *failure*, recorded, not fatal: the process down-weights or re-samples it.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import check_timeout

__all__ = ["MemberEvaluations", "SerialExecutor", "evaluate_members"]


class SerialExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` that runs each call immediately in the calling thread.

    For debugging a black-box forward model (tracebacks, breakpoints) with the same driver code
    that later runs on a pool or a cluster.

    !!! Example

        ```python
        from filterax.processes import SerialExecutor, evaluate_members

        evals = evaluate_members(lambda th: th**2, [[1.0], [2.0]], SerialExecutor())
        ```
    """

    def __init__(self) -> None:
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # the future carries the member's exception
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True


class MemberEvaluations:
    """What `evaluate_members` returns (plain NumPy; the executor path never traces).

    **Fields:**

    - `outputs`: ``(N_e, N_y)`` float64 array; a failed member's row is all NaN.
    - `failed`: ``(N_e,)`` bool, True where the member failed.
    - `errors`: length-``N_e`` tuple: the member's exception (a `FloatingPointError` for
        non-finite output, a `ValueError` for a wrong shape, a `TimeoutError`), or None.
    """

    __slots__ = ("errors", "failed", "outputs")

    def __init__(self, outputs: np.ndarray, failed: np.ndarray, errors: tuple):
        self.outputs = outputs
        self.failed = failed
        self.errors = errors

    @property
    def n_failed(self) -> int:
        """The number of failed members."""
        return int(self.failed.sum())

    def first_error(self) -> tuple[int, BaseException] | None:
        """``(member, exception)`` of the lowest-numbered failure, or None."""
        for j, e in enumerate(self.errors):
            if e is not None:
                return j, e
        return None

    def __repr__(self) -> str:
        n_e = self.outputs.shape[0]
        return f"MemberEvaluations(outputs={self.outputs.shape}, failed={self.n_failed}/{n_e})"


def _check_output(value: Any, output_size: int | None) -> np.ndarray:
    out = np.asarray(value, dtype=np.float64)
    if out.ndim == 0:
        out = out.reshape(1)
    if out.ndim != 1 or (output_size is not None and out.shape[0] != output_size):
        expected = "(N_y,)" if output_size is None else f"({output_size},)"
        raise ValueError(
            f"the forward model returned shape {np.shape(value)}; expected a 1-D vector of shape "
            f"{expected} (one entry per observation)."
        )
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the forward model returned non-finite values (NaN or inf).")
    return out


def evaluate_members(
    forward_fn: Callable[[np.ndarray], Any],
    particles: Any,
    executor: Any = None,  # a concurrent.futures.Executor; checked with a clear message
    *,
    output_size: int | None = None,
    timeout: float | int | None = None,
) -> MemberEvaluations:
    """Evaluate a (non-JAX) forward model on every ensemble member, in parallel.

    Submits ``forward_fn(particles[j])`` for ``j = 1..N_e`` (each a float64 NumPy vector) to
    ``executor`` and gathers the results. Member ``j`` *fails* if its call raises, returns a
    value that is not a length-``output_size`` vector, returns NaN/inf, or is not done within
    ``timeout`` seconds of submission (its future is then cancelled; an already running call
    cannot be interrupted by `concurrent.futures` and is abandoned). Failures never raise here.

    **Arguments:**

    - `forward_fn`: ``theta (N_p,) -> G(theta) (N_y,)``; picklable for process pools and
        clusters (a module-level function).
    - `particles`: ``(N_e, N_p)`` array-like of parameters.
    - `executor`: any ``concurrent.futures.Executor``; None runs serially in this thread.
    - `output_size`: the expected ``N_y`` (inferred from the first success if None, and then
        every other member must agree).
    - `timeout`: seconds (``> 0``, finite) to wait for all members together; None waits
        forever.

    **Returns:** a `MemberEvaluations` (outputs with NaN rows for failures, mask, exceptions).

    **Reference:** EnsembleKalmanProcesses.jl leaves the forward runs to the user (e.g. with
    ``pmap`` or a ``ClimaCalibrate`` backend) and takes NaN columns as failures; this is that
    loop.

    !!! Example

        ```python
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from filterax.processes import evaluate_members

        with ThreadPoolExecutor(4) as pool:
            ev = evaluate_members(np.exp, np.zeros((8, 3)), pool)
        ev.outputs.shape, ev.n_failed   # (8, 3), 0
        ```
    """
    thetas = np.asarray(particles, dtype=np.float64)
    if thetas.ndim != 2:
        raise ValueError(
            f"evaluate_members(particles=...) must be a 2-D (N_e, N_p) array; got shape "
            f"{thetas.shape}."
        )
    check_timeout(timeout, "evaluate_members(timeout=...)")
    if output_size is not None and (
        isinstance(output_size, bool)
        or not isinstance(output_size, int | np.integer)
        or output_size < 1
    ):
        raise ValueError(
            "evaluate_members(output_size=...) must be a positive int (N_y, the length of one "
            f"forward-model output) or None to infer it; got {output_size!r}."
        )
    if executor is None:
        executor = SerialExecutor()
    if not isinstance(executor, cf.Executor):
        raise TypeError(
            "executor must be a concurrent.futures.Executor (ThreadPoolExecutor, "
            "ProcessPoolExecutor, distributed.Client(...).get_executor(), ...); got "
            f"{type(executor).__name__}."
        )
    n_e = thetas.shape[0]
    # `submit`, not `map`: map re-raises the first exception and loses every later member.
    futures = [executor.submit(forward_fn, thetas[j].copy()) for j in range(n_e)]
    _, not_done = cf.wait(futures, timeout=timeout)
    values: list[np.ndarray | None] = [None] * n_e
    errors: list[BaseException | None] = [None] * n_e
    for j, fut in enumerate(futures):
        if fut in not_done:
            fut.cancel()
            errors[j] = TimeoutError(f"member {j} did not finish within {timeout} s.")
            continue
        try:
            exc = fut.exception()
        except cf.CancelledError as e:
            errors[j] = e
            continue
        if exc is not None:
            errors[j] = exc
            continue
        try:
            values[j] = _check_output(fut.result(), output_size)
        except (ValueError, FloatingPointError, TypeError) as e:
            errors[j] = e
    sizes = {v.shape[0] for v in values if v is not None}
    if output_size is None and len(sizes) > 1:
        # No declared size and members disagree: the most common size wins, the rest fail.
        counts: dict[int, int] = {}
        for v in values:
            if v is not None:
                counts[v.shape[0]] = counts.get(v.shape[0], 0) + 1
        output_size = max(counts, key=lambda s: (counts[s], -s))
        for j, v in enumerate(values):
            if v is not None and v.shape[0] != output_size:
                errors[j] = ValueError(
                    f"member {j} returned {v.shape[0]} outputs but most members returned "
                    f"{output_size}."
                )
                values[j] = None
    n_y = output_size if output_size is not None else (sizes.pop() if sizes else 0)
    outputs = np.full((n_e, n_y), np.nan)
    for j, v in enumerate(values):
        if v is not None:
            outputs[j] = v
    failed = np.array([e is not None for e in errors], dtype=bool)
    return MemberEvaluations(outputs, failed, tuple(errors))
