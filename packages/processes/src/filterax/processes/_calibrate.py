"""`calibrate`: the driver loop of an ensemble Kalman process.

Two paths share one update step:

- a JAX ``forward_fn`` (one member, ``theta -> G(theta)``) is vmapped over the ensemble inside a
  single compiled loop: ``lax.scan`` for a fixed number of iterations, ``lax.while_loop`` with a
  preallocated history when running until the scheduler reports convergence;
- with ``executor=`` the forward model is any Python callable (a wrapper around an external
  simulator) evaluated member-parallel through a ``concurrent.futures.Executor``; the Python
  loop calls the jitted process update between rounds of forward runs.

Members whose evaluation fails (an exception, a wrong shape, NaN/inf output) are passed to the
process as NaN rows; the process handles up to half of them. More than half failing stops the
run with a `CalibrationError` naming the iteration (and, on the executor path, the first
exception). A process whose `status` turns bad (data or hyper-parameters that are invalid at
run time, see `AbstractProcessState`) stops changing; `calibrate` raises on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._checks import check_key, check_noise_entries, check_obs, check_timeout
from ._executors import evaluate_members
from ._minibatch import MiniBatcher
from ._priors import ParameterDistribution
from ._status import STATUS_OK, status_messages

__all__ = ["CalibrationError", "CalibrationHistory", "CalibrationResult", "calibrate"]


class CalibrationError(RuntimeError):
    """More than half of the ensemble failed in one iteration of `calibrate`.

    **Attributes:** `iteration` (0-based), `n_failed`, `n_ensemble`, `first_error` (the lowest
    member's exception on the executor path, None on the JAX path where failures are NaN).
    """

    def __init__(
        self,
        iteration: int,
        n_failed: int,
        n_ensemble: int,
        first_error: tuple[int, BaseException] | None = None,
        n_nonfinite_parameters: int = 0,
    ):
        self.iteration = iteration
        self.n_failed = n_failed
        self.n_ensemble = n_ensemble
        self.first_error = first_error
        self.n_nonfinite_parameters = n_nonfinite_parameters
        msg = (
            f"calibrate: at iteration {iteration}, {n_failed} of {n_ensemble} ensemble members "
            "failed (raised or returned non-finite output); at most half may fail."
        )
        if n_nonfinite_parameters:
            msg += (
                f" {n_nonfinite_parameters} of them had non-finite PARAMETERS: the previous "
                "process update diverged (not the forward model). Use a smaller time step "
                "(e.g. FixedScheduler(0.5) or DataMisfitController), more members, or a "
                "narrower prior."
            )
        elif first_error is not None:
            member, exc = first_error
            msg += f" First failure: member {member}: {type(exc).__name__}: {exc}"
        else:
            msg += " The JAX forward model returned NaN/inf for those members."
        if not n_nonfinite_parameters:
            msg += (
                " Check the forward model on those parameters, narrow the prior, or bound the "
                "parameters with constrained_gaussian(...) and calibrate(..., prior=...)."
            )
        super().__init__(msg)


class CalibrationHistory(eqx.Module):
    """Everything a `calibrate` run saw, iteration by iteration (``n`` = iterations done).

    **Fields:**

    - `parameters`: ``(n + 1, N_e, N_p)`` the points the forward model was evaluated at
        (``process.particles``; unconstrained when a prior is given), the last entry is the
        final ensemble.
    - `means`: ``(n + 1, N_p)`` ``process.mean`` before each update and at the end.
    - `outputs`: ``(n, N_e, N_y)`` forward evaluations given to the update (restricted to the
        iteration's mini-batch); NaN rows for failed members.
    - `misfits`: ``(n, N_e)`` per-member data misfit ``process.misfits`` of those outputs.
    - `failed`: ``(n, N_e)`` bool; `n_failed`: ``(n,)`` their count per iteration.
    - `dt`: ``(n,)`` the algorithm time step each update took.
    - `time`: ``(n + 1,)`` algorithm time before the first update and after each update.
    - `batch`: ``(n,)`` the mini-batch used at each iteration (0 without mini-batching).
    - `status`: ``(n,)`` the process's `status` after each update (0 = OK; see
        `AbstractProcessState`).
    """

    parameters: Float[Array, "n1 N_e N_p"]
    means: Float[Array, "n1 N_p"]
    outputs: Float[Array, "n N_e N_y"]
    misfits: Float[Array, "n N_e"]
    failed: Bool[Array, "n N_e"]
    n_failed: Int[Array, " n"]
    dt: Float[Array, " n"]
    time: Float[Array, " n1"]
    batch: Int[Array, " n"]
    status: Int[Array, " n"]

    @property
    def misfit_mean(self) -> Float[Array, " n"]:
        """Mean misfit over the successful members of each iteration."""
        return jnp.nanmean(self.misfits, axis=1)


class CalibrationResult(eqx.Module):
    """What `calibrate` returns.

    **Fields:**

    - `state`: the final process state (continue with ``process.update`` or another
        `calibrate` call starting from ``state.ensemble``).
    - `history`: the `CalibrationHistory`.
    - `n_iterations`: iterations actually run.
    - `converged`: whether the scheduler reported convergence (``until_converged`` runs).
    - `failed_iteration`: the iteration where more than half the members failed (only when
        ``throw=False``), else None.
    - `failures`: ``(iteration, member, message)`` for every failure on the executor path.
    - `prior`: the `ParameterDistribution` the run used, or None.
    """

    state: Any
    history: CalibrationHistory
    n_iterations: int = eqx.field(static=True)
    converged: bool = eqx.field(static=True)
    failed_iteration: int | None = eqx.field(static=True)
    failures: tuple[tuple[int, int, str], ...] = eqx.field(static=True)
    prior: ParameterDistribution | None

    @property
    def status(self) -> int:
        """The process's final `status`: 0 (OK), 1 (invalid data), 2 (invalid hyper-parameters).

        Only a ``throw=False`` run returns with a bad status (``throw=True`` raises); see
        `AbstractProcessState` for the codes.
        """
        return int(_status_of(self.state))

    @property
    def ensemble(self) -> Float[Array, "N_e N_p"]:
        """The final ensemble (``history.parameters[-1]``), unconstrained if a prior is used."""
        return self.history.parameters[-1]

    @property
    def mean(self) -> Float[Array, " N_p"]:
        """The final ``process.mean`` (unconstrained if a prior is used)."""
        return self.history.means[-1]

    @property
    def constrained_parameters(self) -> Float[Array, "n1 N_e N_p"]:
        """`history.parameters` mapped through the prior's transform (physical values)."""
        if self.prior is None:
            return self.history.parameters
        return self.prior.to_constrained(self.history.parameters)

    @property
    def constrained_ensemble(self) -> Float[Array, "N_e N_p"]:
        """The final ensemble in physical (constrained) space."""
        return self.constrained_parameters[-1]


class _Record(NamedTuple):
    parameters: Array
    means: Array
    outputs: Array
    misfits: Array
    failed: Array
    n_failed: Array
    dt: Array
    time: Array
    batch: Array
    status: Array


# --- shared pieces -----------------------------------------------------------------------------


def _converged(process: Any, state: Any) -> Bool[Array, ""]:
    # `ProcessState.converged` mirrors the scheduler's termination (DataMisfitController with
    # on_terminate="stop" after landing on T); schedulers that never stop leave it False.
    del process
    flag = getattr(state, "converged", None)
    if flag is None:
        return jnp.asarray(False)
    return jnp.asarray(flag, dtype=bool)


def _status_of(state: Any) -> Int[Array, ""]:
    # Every filterax process state has `status`; a state without one is always OK.
    return jnp.asarray(getattr(state, "status", STATUS_OK), dtype=jnp.int32)


_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


@contextlib.contextmanager
def raise_if_untraceable(
    forward_fn: Callable[..., Any], particles: Array, owner: str, executor_call: str
) -> Iterator[None]:
    """Turn JAX's tracer errors into a `TypeError` naming the executor path.

    Only when ``forward_fn`` itself cannot be traced (checked with `jax.eval_shape` on one
    member, after the failure, so a traceable model pays nothing); any other error passes.
    """
    try:
        yield
    except _TRACER_ERRORS as err:
        member = jax.ShapeDtypeStruct(particles.shape[1:], particles.dtype)
        try:
            jax.eval_shape(forward_fn, member)
        except _TRACER_ERRORS:
            first_line = (str(err).strip().splitlines() or [""])[0]
            raise TypeError(
                f"{owner}: forward_fn cannot be traced by JAX ({type(err).__name__}: "
                f"{first_line}). Without an executor the forward model runs inside one "
                "compiled JAX program, vmapped over the members, so it must be written with "
                "jax.numpy: no NumPy/SciPy calls, float()/int() or Python if/while on its "
                "values. To run a NumPy, SciPy or external model (a subprocess, a simulator), "
                f"give it an executor: {executor_call}. filterax.processes.SerialExecutor runs "
                "the members one after another (for debugging); concurrent.futures."
                "ThreadPoolExecutor / ProcessPoolExecutor or distributed.Client(...)"
                ".get_executor() run them in parallel. Each member then receives a NumPy "
                "array."
            ) from err
        raise


def _constrain(prior: ParameterDistribution | None, particles: Array) -> Array:
    return particles if prior is None else prior.to_constrained(particles)


def _batch(batches: MiniBatcher | None, iteration: Array):
    if batches is None:
        return None, None, None, jnp.asarray(0, dtype=jnp.int32)
    idx, obs, noise = batches.batch(iteration)
    return idx, obs, noise, jnp.asarray(batches.batch_index(iteration), dtype=jnp.int32)


def _misfits(process, state, outputs, obs, noise) -> Array:
    if obs is None:
        return process.misfits(state, outputs)
    # The misfit of iteration n is measured against the batch that iteration used.
    return process.misfits(state, outputs, obs=obs, obs_noise=noise)


def _match_dtypes(new: Any, old: Any) -> Any:
    # A loop carry must keep its exact types; an update that promotes a counter (e.g. an
    # int32 sum becoming int64 under x64) or a weakly-typed scalar would break scan/cond.
    def cast(n, o):
        if isinstance(n, jax.Array) and isinstance(o, jax.Array) and n.dtype != o.dtype:
            return n.astype(o.dtype)
        return n

    return jax.tree.map(cast, new, old)


def _strengthen(state: Any) -> Any:
    # Weakly-typed scalars in an initial state (e.g. a Python-float default) become strong
    # after one update; fixing them up front keeps one compiled signature for every iteration.
    def strong(x):
        if isinstance(x, jax.Array) and getattr(x, "weak_type", False):
            return jnp.asarray(x, dtype=x.dtype)
        return x

    return jax.tree.map(strong, state)


def _apply(process, batches, state, full_outputs, iteration, frozen=False, guard=True):
    """Restrict to the batch, mark failures, update (unless > half failed). Traceable.

    ``guard=False`` always updates and leaves failures to the process (`ESMDA.run`, `IES.run`
    raise or skip on their own, as their ``throw`` says).
    """
    n_e = full_outputs.shape[0]
    ok = jnp.all(jnp.isfinite(full_outputs), axis=1)
    idx, obs, noise, b = _batch(batches, iteration)
    outputs = full_outputs if idx is None else full_outputs[:, idx]
    outputs = jnp.where(ok[:, None], outputs, jnp.nan)
    failed = ~ok
    n_failed = jnp.sum(failed, dtype=jnp.int32)
    too_many = 2 * n_failed > n_e
    misfits = _misfits(process, state, outputs, obs, noise)
    kwargs = {} if obs is None else {"obs": obs, "obs_noise": noise}

    def do_update(s):
        return _match_dtypes(process.update(s, outputs, **kwargs), s)

    if not guard:
        return do_update(state), outputs, misfits, failed, n_failed, too_many, b
    # lax.cond, not a where: with more than half the members NaN the update itself may raise or
    # produce garbage; the driver reports the failure instead.
    new_state = jax.lax.cond(too_many | frozen, lambda s: s, do_update, state)
    return new_state, outputs, misfits, failed, n_failed, too_many, b


def _print_progress(iteration, misfit, time, n_failed, n_ensemble) -> None:
    print(
        f"iteration {int(iteration) + 1:4d} | misfit mean {float(misfit):.6e} | "
        f"algorithm time {float(time):.6f} | failed {int(n_failed)}/{int(n_ensemble)}",
        flush=True,
    )


def _check_outputs(outputs: Any, n_e: int, n_y: int) -> Array:
    shape = jnp.shape(outputs)
    if shape != (n_e, n_y):
        raise ValueError(
            f"calibrate: vmap(forward_fn) over {n_e} members returned shape {shape}; expected "
            f"({n_e}, {n_y}): forward_fn must map ONE parameter vector (N_p,) to ONE output "
            f"vector of length N_y = {n_y} (the observation size)."
        )
    return outputs


def _jax_iteration(
    process, forward_fn, prior, batches, state, iteration, n_y, progress, frozen=False, guard=True
):
    particles = process.particles(state)
    mean = process.mean(state)
    n_e = particles.shape[0]
    full = jax.vmap(forward_fn)(_constrain(prior, particles))
    full = _check_outputs(full, n_e, n_y).astype(particles.dtype)
    new_state, outputs, misfits, failed, n_failed, too_many, b = _apply(
        process, batches, state, full, iteration, frozen, guard
    )
    if progress:
        jax.debug.callback(
            _print_progress,
            iteration,
            jnp.nanmean(misfits),
            new_state.time,
            n_failed,
            n_e,
            ordered=True,
        )
    record = _Record(
        particles,
        mean,
        outputs,
        misfits,
        failed,
        n_failed,
        new_state.dt,
        new_state.time,
        b,
        _status_of(new_state),
    )
    return new_state, record, too_many


def scan_loop(process, forward_fn, prior, batches, state, n_iterations, n_y, progress, guard=True):
    """The compiled loop of `calibrate` (and of `ESMDA.run` / `IES.run`): traceable.

    Returns ``(state, records, failed_at, particles, mean)``; ``records`` stacks one `_Record`
    per iteration, ``failed_at`` is the first iteration where more than half the members
    failed (-1 if none; only with ``guard``).
    """

    def body(carry, iteration):
        state, failed_at = carry
        # Once too many members failed the state is frozen (the run is reported as failed);
        # a scan cannot stop early.
        new_state, record, too_many = _jax_iteration(
            process,
            forward_fn,
            prior,
            batches,
            state,
            iteration,
            n_y,
            progress,
            failed_at >= 0,
            guard,
        )
        if guard:
            failed_at = jnp.where((failed_at < 0) & too_many, iteration, failed_at)
        return (new_state, failed_at), record

    init = (state, jnp.asarray(-1, dtype=jnp.int32))
    (state, failed_at), records = jax.lax.scan(
        body, init, jnp.arange(n_iterations, dtype=jnp.int32)
    )
    return state, records, failed_at, process.particles(state), process.mean(state)


_run_scan = eqx.filter_jit(scan_loop)


@eqx.filter_jit
def _run_while(process, forward_fn, prior, batches, state, max_iterations, n_y, progress):
    def one(state, iteration):
        return _jax_iteration(process, forward_fn, prior, batches, state, iteration, n_y, False)

    _, record_shape, _ = jax.eval_shape(one, state, jnp.asarray(0, dtype=jnp.int32))

    def buffer(s: jax.ShapeDtypeStruct) -> Array:
        fill = jnp.nan if jnp.issubdtype(s.dtype, jnp.floating) else 0
        return jnp.full((max_iterations, *s.shape), fill, dtype=s.dtype)

    history = jax.tree.map(buffer, record_shape)

    def cond(carry):
        iteration, _, stop, _ = carry
        return (iteration < max_iterations) & ~stop

    def body(carry):
        iteration, state, _, history = carry
        new_state, record, too_many = _jax_iteration(
            process, forward_fn, prior, batches, state, iteration, n_y, progress
        )
        history = jax.tree.map(lambda h, r: h.at[iteration].set(r), history, record)
        # A bad status makes every further update the identity: nothing left to run.
        stop = too_many | _converged(process, new_state) | (_status_of(new_state) != STATUS_OK)
        return iteration + 1, new_state, stop, history

    init = (jnp.asarray(0, dtype=jnp.int32), state, jnp.asarray(False), history)
    n_done, state, _, history = jax.lax.while_loop(cond, body, init)
    too_many = 2 * history.n_failed > history.failed.shape[-1]
    too_many = too_many & (jnp.arange(max_iterations) < n_done)
    failed_at = jnp.where(jnp.any(too_many), jnp.argmax(too_many), -1)
    return (
        state,
        history,
        failed_at,
        n_done,
        _converged(process, state),
        process.particles(state),
        process.mean(state),
    )


def _history(records: _Record, n: int, final_particles, final_mean, time0) -> CalibrationHistory:
    # Host-side bookkeeping in NumPy: eager jnp slicing/concatenation would compile one small
    # XLA program per shape, which costs more than the whole run on small problems.
    rec = jax.tree.map(np.asarray, records)

    def cut(x: np.ndarray) -> Array:
        return jnp.asarray(x[:n])

    time = np.concatenate([np.reshape(np.asarray(time0, rec.time.dtype), (1,)), rec.time[:n]])
    return CalibrationHistory(
        parameters=jnp.asarray(
            np.concatenate([rec.parameters[:n], np.asarray(final_particles)[None]])
        ),
        means=jnp.asarray(np.concatenate([rec.means[:n], np.asarray(final_mean)[None]])),
        outputs=cut(rec.outputs),
        misfits=cut(rec.misfits),
        failed=cut(rec.failed),
        n_failed=cut(rec.n_failed),
        dt=cut(rec.dt),
        time=jnp.asarray(time),
        batch=cut(rec.batch),
        status=cut(rec.status),
    )


# --- executor path -------------------------------------------------------------------------------


@eqx.filter_jit
def _particles_and_mean(process, prior, state):
    particles = process.particles(state)
    return particles, process.mean(state), _constrain(prior, particles)


@eqx.filter_jit
def _executor_update(process, batches, state, full_outputs, iteration):
    new_state, outputs, misfits, failed, n_failed, too_many, b = _apply(
        process, batches, state, full_outputs, iteration
    )
    converged = _converged(process, new_state)
    status = _status_of(new_state)
    return new_state, outputs, misfits, failed, n_failed, b, converged, status


def _run_executor(
    process,
    forward_fn,
    prior,
    batches,
    state,
    n_iterations,
    n_y,
    progress,
    executor,
    timeout,
    throw,
    until_converged,
):
    records: list[_Record] = []
    failures: list[tuple[int, int, str]] = []
    failed_at: int | None = None
    is_converged = False
    for iteration in range(n_iterations):
        particles, mean, constrained = _particles_and_mean(process, prior, state)
        n_e = particles.shape[0]
        evals = evaluate_members(
            forward_fn, np.asarray(constrained), executor, output_size=n_y, timeout=timeout
        )
        for j, e in enumerate(evals.errors):
            if e is not None:
                failures.append((iteration, j, f"{type(e).__name__}: {e}"))
        if 2 * evals.n_failed > n_e:
            if throw:
                first = evals.first_error()
                err = CalibrationError(iteration, evals.n_failed, n_e, first)
                raise err from (first[1] if first is not None else None)
            failed_at = iteration
            break
        full = jnp.asarray(evals.outputs, dtype=particles.dtype)
        it = jnp.asarray(iteration, dtype=jnp.int32)
        state, outputs, misfits, failed, n_failed, b, conv, status = _executor_update(
            process, batches, state, full, it
        )
        if progress:
            misfit = np.nanmean(np.asarray(misfits))
            _print_progress(iteration, misfit, state.time, n_failed, n_e)
        records.append(
            _Record(
                particles, mean, outputs, misfits, failed, n_failed, state.dt, state.time, b, status
            )
        )
        is_converged = bool(conv)
        if (until_converged and is_converged) or int(status) != STATUS_OK:
            break
    return state, records, failed_at, is_converged, tuple(failures)


def _stack_records(records: list[_Record], n_e: int, n_p: int, n_y: int, dtype) -> _Record:
    if records:
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *records)
    # No iteration completed (throw=False and the first round failed): empty history.
    return _Record(
        parameters=np.zeros((0, n_e, n_p), dtype),
        means=np.zeros((0, n_p), dtype),
        outputs=np.zeros((0, n_e, n_y), dtype),
        misfits=np.zeros((0, n_e), dtype),
        failed=np.zeros((0, n_e), bool),
        n_failed=np.zeros((0,), np.int32),
        dt=np.zeros((0,), dtype),
        time=np.zeros((0,), dtype),
        batch=np.zeros((0,), np.int32),
        status=np.zeros((0,), np.int32),
    )


def _raise_on_status(process: Any, state: Any, history: CalibrationHistory) -> None:
    code = int(_status_of(state))
    if code == STATUS_OK:
        return
    bad = np.flatnonzero(np.asarray(history.status) != STATUS_OK)
    where = f"at iteration {int(bad[0])}" if bad.size else "before the first update"
    owner = f"calibrate ({type(process).__name__}, {where})"
    raise ValueError(
        status_messages(owner)[code - 1]
        + " Pass throw=False to get the result (status in CalibrationResult.status) instead."
    )


@eqx.filter_jit
def _first_batch(batches: MiniBatcher):
    _, obs, noise = batches.batch(0)
    return obs, noise


# --- the driver ---------------------------------------------------------------------------------


def calibrate(
    process: Any,
    forward_fn: Callable[..., Any],
    initial: Any,
    obs: Any,
    obs_noise: Any,
    *,
    key: PRNGKeyArray,
    n_iterations: int | None = None,
    until_converged: bool = False,
    max_iterations: int = 100,
    executor: Any = None,  # a concurrent.futures.Executor; checked with a clear message
    batches: MiniBatcher | None = None,
    prior: ParameterDistribution | None = None,
    progress: bool = False,
    timeout: float | int | None = None,
    throw: bool = True,
) -> CalibrationResult:
    r"""Run an ensemble Kalman process against a forward model.

    Each iteration evaluates ``G`` at ``process.particles(state)`` (mapped through
    ``prior.to_constrained`` when a prior is given) and applies ``process.update``:

    $$\theta^{(j)}_{n+1} = \theta^{(j)}_n + \Delta t_n\, C^{\theta G}_n
      (C^{GG}_n + \Delta t_n^{-1}\Gamma)^{-1}(y - G(\theta^{(j)}_n)) \quad\text{(EKI)}.$$

    **JAX path** (``executor=None``): ``forward_fn`` maps ONE parameter vector ``(N_p,)`` to
    ``(N_y,)`` and must be traceable; it is vmapped over the ensemble and the whole run is one
    compiled ``lax.scan`` (``n_iterations``) or ``lax.while_loop`` (``until_converged``).

    **Executor path**: ``forward_fn`` is any picklable Python callable ``np.ndarray (N_p,) ->
    array (N_y,)`` (e.g. a wrapper that writes a namelist, runs a simulator, reads its output);
    the members run in parallel on ``executor`` (``ThreadPoolExecutor``,
    ``ProcessPoolExecutor``, ``distributed.Client(...).get_executor()``, ...) and the jitted
    update runs between rounds.

    **Failures**: a member that raises, times out, or returns NaN/inf (on either path) is passed
    to the process as a NaN row; the process handles it as its ``failure_handler`` says (at most
    half of the ensemble; `ESMDA` and `IES` raise on any failed member unless built with
    ``throw=False`` or, for `ESMDA`, a ``failure_handler``). If more than half fail in one
    iteration, a `CalibrationError` names the iteration and the first exception
    (``throw=False`` instead stops and returns the history so far with ``failed_iteration``
    set).

    **Bad input**: ``obs`` with a NaN/inf entry (processes do not support missing data),
    ``obs_noise`` that is not finite and positive definite, a key that is not a PRNG key and
    a ``timeout`` that is not a positive number of seconds raise before anything runs. A
    ``forward_fn`` that JAX cannot trace (NumPy, SciPy, Python control flow on values) on the
    JAX path raises a `TypeError` that says to pass an ``executor``. A process whose `status`
    turns bad during the run (see `AbstractProcessState`) raises a `ValueError` naming the
    iteration (``throw=False``: it is returned in `CalibrationResult.status`).

    **Arguments:**

    - `process`: an ensemble Kalman process (`EKI`, `ETKI`, `EKS`, `UKI`, ...).
    - `forward_fn`: the forward model ``G``, per member (see the two paths above).
    - `initial`: what ``process.init`` takes (an ``(N_e, N_p)`` ensemble, or a prior for
        `UKI`), or an ``int`` ``N_e`` to draw that many members from `prior`.
    - `obs`, `obs_noise`: ``y`` and ``Gamma`` (any noise form); None when `batches` is given.
    - `key`: PRNG key for the process (and for sampling `initial` from the prior), e.g.
        ``jax.random.key(0)``.
    - `n_iterations`: run exactly this many updates; or
    - `until_converged`: run until the scheduler reports convergence (algorithm time 1 with
        ``DataMisfitController``), at most `max_iterations` updates.
    - `executor`: a ``concurrent.futures.Executor`` for a non-JAX `forward_fn`.
    - `batches`: a `MiniBatcher`; iteration ``n`` updates with its batch ``b(n)``.
    - `prior`: a `ParameterDistribution`; the ensemble lives in its unconstrained space and
        `forward_fn` receives constrained (physical) parameters.
    - `progress`: print one line per iteration (misfit mean, algorithm time, failures).
    - `timeout`: executor path only: seconds (``> 0``) to wait for one iteration's members;
        None waits forever.
    - `throw`: raise `CalibrationError` when more than half the ensemble fails, and
        `ValueError` when the process's `status` turns bad.

    **Returns:** a `CalibrationResult` with the final state and the full history.

    **Reference:** EnsembleKalmanProcesses.jl's user loop (``get_ϕ_final``, run ``G``,
    ``update_ensemble!``) and ``ClimaCalibrate.calibrate``; Iglesias, Law & Stuart (2013),
    *Ensemble Kalman methods for inverse problems*, Inverse Problems 29.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.processes import EKI, calibrate

        A = jnp.array([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
        y = A @ jnp.array([1.0, -0.5])
        ens = jax.random.normal(jax.random.key(0), (20, 2))
        result = calibrate(EKI(), lambda th: A @ th, ens, y, 0.01 * jnp.ones(3),
                           n_iterations=10, key=jax.random.key(1))
        result.mean, result.history.misfits.shape   # ~[1, -0.5], (10, 20)
        ```
    """
    if (n_iterations is None) == (not until_converged):
        raise ValueError(
            "calibrate: pass exactly one of n_iterations=<int> or until_converged=True "
            "(with max_iterations=<int> as a cap)."
        )
    n_run = n_iterations if n_iterations is not None else max_iterations
    if not isinstance(n_run, int | np.integer) or n_run < 1:
        raise ValueError(
            f"calibrate: n_iterations / max_iterations must be a positive int; got {n_run!r}."
        )
    n_run = int(n_run)
    if not callable(forward_fn):
        raise TypeError(
            "calibrate(forward_fn=...) must be a callable theta (N_p,) -> G(theta) (N_y,); got "
            f"{type(forward_fn).__name__}."
        )
    check_key(key, "calibrate(key=...)")
    if executor is not None and not isinstance(executor, cf.Executor):
        raise TypeError(
            "calibrate(executor=...) must be a concurrent.futures.Executor (ThreadPoolExecutor, "
            "ProcessPoolExecutor, distributed.Client(...).get_executor(), ...); got "
            f"{type(executor).__name__}."
        )
    check_timeout(timeout, "calibrate(timeout=...)")
    if timeout is not None and executor is None:
        raise ValueError(
            "calibrate(timeout=...) applies to the executor path only: a JAX forward model runs "
            "inside one compiled program that cannot be interrupted. Pass executor=... (e.g. a "
            "ThreadPoolExecutor) to time out members, or timeout=None."
        )
    if batches is not None and not isinstance(batches, MiniBatcher):
        raise TypeError(
            f"calibrate(batches=...) must be a MiniBatcher; got {type(batches).__name__}."
        )
    if prior is not None and not isinstance(prior, ParameterDistribution):
        raise TypeError(
            "calibrate(prior=...) must be a ParameterDistribution (see constrained_gaussian); "
            f"got {type(prior).__name__}."
        )
    if batches is not None:
        if obs is not None or obs_noise is not None:
            raise ValueError(
                "calibrate: with batches=MiniBatcher(obs, obs_noise, ...) pass obs=None and "
                "obs_noise=None; the batcher holds the observations."
            )
        obs, obs_noise = _first_batch(batches)
        n_y = batches.n_obs
    else:
        if obs is None or obs_noise is None:
            raise ValueError("calibrate: obs and obs_noise are required without batches=.")
        check_obs(obs, "calibrate(obs=...)")
        check_noise_entries(obs_noise, "calibrate(obs_noise=...)")
        n_y = int(jnp.shape(obs)[0])
    if isinstance(initial, int | np.integer) and not isinstance(initial, bool):
        if prior is None:
            raise ValueError(
                "calibrate(initial=<int>) draws the initial ensemble from the prior; pass "
                "prior=ParameterDistribution(...) or an (N_e, N_p) ensemble."
            )
        key, sample_key = jax.random.split(key)
        initial = prior.sample(sample_key, int(initial))
    state = _strengthen(process.init(initial, obs, obs_noise, key=key))
    time0 = np.asarray(state.time)

    if executor is None:
        untraceable = raise_if_untraceable(
            forward_fn, state.ensemble, "calibrate", "calibrate(..., executor=SerialExecutor())"
        )
        with untraceable:
            if until_converged:
                state, records, failed_at, n_done, conv, particles, mean = _run_while(
                    process, forward_fn, prior, batches, state, n_run, n_y, progress
                )
                n_done, is_converged = int(n_done), bool(conv)
            else:
                state, records, failed_at, particles, mean = _run_scan(
                    process, forward_fn, prior, batches, state, n_run, n_y, progress
                )
                n_done, is_converged = n_run, bool(_converged(process, state))
        failed_at = int(failed_at)
        records = jax.tree.map(np.asarray, records)
        if failed_at >= 0:
            if throw:
                n_failed = int(records.n_failed[failed_at])
                bad_params = ~np.all(np.isfinite(records.parameters[failed_at]), axis=-1)
                raise CalibrationError(
                    failed_at,
                    n_failed,
                    int(records.failed.shape[-1]),
                    n_nonfinite_parameters=int(np.sum(bad_params)),
                )
            n_done = failed_at
        failed_iteration = failed_at if failed_at >= 0 else None
        n_seen = n_done if failed_iteration is None else failed_iteration + 1
        failed_mask = records.failed[:n_seen]
        failures = tuple(
            (int(i), int(j), "FloatingPointError: non-finite forward output")
            for i, j in zip(*np.nonzero(failed_mask), strict=True)
        )
        history = _history(records, n_done, particles, mean, time0)
    else:
        state, record_list, failed_iteration, is_converged, failures = _run_executor(
            process,
            forward_fn,
            prior,
            batches,
            state,
            n_run,
            n_y,
            progress,
            executor,
            timeout,
            throw,
            until_converged,
        )
        n_done = len(record_list)
        particles, mean, _ = _particles_and_mean(process, prior, state)
        n_b = n_y if batches is None else batches.batch_size
        records = _stack_records(record_list, *particles.shape, n_b, particles.dtype)
        history = _history(records, n_done, particles, mean, time0)
    if throw:
        _raise_on_status(process, state, history)
    return CalibrationResult(
        state=state,
        history=history,
        n_iterations=n_done,
        converged=is_converged,
        failed_iteration=failed_iteration,
        failures=failures,
        prior=prior,
    )
