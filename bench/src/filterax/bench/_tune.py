"""Hyper-parameter tuning: a grid x tuning seeds as ONE vmapped compiled call, with a margin.

DAPPER's practice is to tune inflation (and localisation) by a sweep and take the argmin of
``rmse.a``. Near that argmin filters can diverge catastrophically (REFERENCES.md: L96 at infl
1.01 with N=40 after ~500 cycles), so `select` keeps away from divergence: grid points that
diverged on any tuning seed, *and their grid neighbours*, are excluded; among the remaining
points whose rmse is within ``margin`` (relative) of the best, the one furthest towards the
method's safe side (``MethodConfig.safety``, e.g. the largest inflation) is chosen.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._registry import (
    Benchmark,
    MethodConfig,
    TunedSetting,
    _as_seeds,
    get_benchmark,
    get_method,
    register_method,
    save_tuned,
    today,
)
from ._runner import cell_function, diverged as diverged_runs

__all__ = ["TuneResult", "check_tuning", "select", "tune"]

DEFAULT_TUNING_SEEDS = (1000, 1001, 1002)


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """The outcome of `tune`.

    - `method`, `benchmark`: names.
    - `grid`: ``{param: values}`` as swept (axis order of the arrays below).
    - `rmse_a`: grid-shaped mean ``rmse.a`` over tuning seeds (NaN where non-finite).
    - `per_seed`: grid shape + ``(n_seeds,)``.
    - `diverged`: grid-shaped, any tuning seed diverged there.
    - `best`: the chosen values; `index`: its grid index.
    - `setting`: the `TunedSetting` stored in the registry / JSON.
    - `seconds`: wall time (compile + run).
    """

    method: str
    benchmark: str
    grid: dict[str, tuple[Any, ...]]
    rmse_a: np.ndarray
    per_seed: np.ndarray
    diverged: np.ndarray
    best: dict[str, Any]
    index: tuple[int, ...]
    setting: TunedSetting
    seconds: float


def select(
    rmse_a: np.ndarray,
    diverged: np.ndarray,
    *,
    margin: float = 0.02,
    safe_axis: int | None = None,
    safe_direction: int = 1,
) -> tuple[tuple[int, ...], str]:
    """Choose a grid point from the mean rmse and the divergence mask (both grid-shaped).

    1. *unsafe* = diverged (or non-finite) points and their immediate neighbours along every
       axis; 2. best = the smallest rmse among safe points; 3. candidates = safe points with
       rmse <= best x (1 + `margin`); 4. the candidate furthest along `safe_axis` in
       `safe_direction` wins (ties: smaller rmse). If every point is unsafe, the rule falls
       back to non-diverged points; if every point diverged, `ValueError`.

    **Returns:** ``(index, rule)`` — the grid index and a one-line description.
    """
    rmse_a = np.asarray(rmse_a, dtype=np.float64)
    bad = np.asarray(diverged, dtype=bool) | ~np.isfinite(rmse_a)
    if bad.all():
        raise ValueError(
            "every grid point diverged on some tuning seed; widen the grid (more inflation, "
            "a shorter localisation radius) or check the method."
        )
    unsafe = bad.copy()
    for axis in range(bad.ndim):
        for shift in (1, -1):
            rolled = np.roll(bad, shift, axis=axis)
            edge = [slice(None)] * bad.ndim
            edge[axis] = 0 if shift == 1 else -1
            rolled[tuple(edge)] = False  # no wrap-around
            unsafe |= rolled
    rule = f"safe = no divergence at the point or its grid neighbours; within {margin:.0%} of best"
    if unsafe.all():
        unsafe = bad
        rule = f"no point has safe neighbours: non-diverged points; within {margin:.0%} of best"
    values = np.where(unsafe, np.inf, rmse_a)
    best = values.min()
    candidates = np.argwhere(values <= best * (1.0 + margin))
    if safe_axis is None:
        order = sorted(candidates.tolist(), key=lambda idx: values[tuple(idx)])
    else:
        order = sorted(
            candidates.tolist(),
            key=lambda idx: (-safe_direction * idx[safe_axis], values[tuple(idx)]),
        )
        rule += "; then the safest along the safety axis"
    return tuple(int(i) for i in order[0]), rule


def check_tuning(
    method: str | MethodConfig,
    benchmark: str | Benchmark,
    grid: Mapping[str, Sequence[Any]] | None = None,
    tuning_seeds: Sequence[int] = DEFAULT_TUNING_SEEDS,
    *,
    n_cycles: int | None = None,
    margin: float = 0.02,
) -> tuple[dict[str, tuple[Any, ...]], tuple[int, ...], int]:
    """Check a tuning job before it runs: a one-line `ValueError` naming the cell otherwise.

    - `grid` (default ``method.tune_grid``): at least one axis, each a hyper-parameter of the
      method (`MethodConfig.param_names`) with at least one value; the values of a vmapped
      (non-`static`) axis are finite real numbers; and every value, and every grid point, is
      accepted by the method's components (`MethodConfig.check_params`: the library's own
      validators, e.g. `filterax.primitives.MultiplicativeInflator` refuses ``inflation <=
      0``).
    - `tuning_seeds`: distinct non-negative ints, none of them a scoring seed of `benchmark`.
    - `n_cycles` (default the benchmark's): more cycles than the burn-in; `margin`: finite,
      ``>= 0``.

    **Returns:** ``(grid, tuning_seeds, n_cycles)`` normalised (tuples, ints).
    """
    method = get_method(method)
    benchmark = get_benchmark(benchmark)
    cell = f"{benchmark.name}/{method.name}"
    grid = dict(method.tune_grid if grid is None else grid)
    if not grid:
        raise ValueError(
            f"{cell}: {method.name} has no tune_grid; give a grid, e.g. {{'inflation': [...]}} "
            "(--grid inflation=1.0:1.2:0.01)."
        )
    grid = {k: tuple(v) for k, v in grid.items()}
    try:
        method.check_param_names(grid)
        for name, values in grid.items():
            if not values:
                raise ValueError(f"the axis {name!r} has no values")
            for value in values:
                dynamic = name not in method.static
                if dynamic and (
                    isinstance(value, bool | np.bool_)
                    or not isinstance(value, numbers.Real)
                    or not math.isfinite(value)
                ):
                    raise ValueError(
                        f"{name}={value!r} is not allowed: the values of a swept (vmapped) "
                        "hyper-parameter are finite real numbers"
                    )
                method.check_params({name: value}, benchmark)
        if len(grid) > 1:
            for point in itertools.product(*grid.values()):
                method.check_params(dict(zip(grid, point, strict=True)), benchmark)
    except ValueError as err:
        raise ValueError(f"tuning grid of {cell}: {err}.") from err
    seeds = _as_seeds(tuning_seeds, "tuning seeds")
    overlap = set(seeds) & set(benchmark.seeds)
    if overlap:
        raise ValueError(
            f"tuning seeds {sorted(overlap)} are also scoring seeds of {benchmark.name}; tune on "
            "separate seeds so that scores are out of sample."
        )
    n_cycles = benchmark.n_cycles if n_cycles is None else n_cycles
    if isinstance(n_cycles, bool) or not isinstance(n_cycles, int) or n_cycles < 2:
        raise ValueError(f"{cell}: the run length must be an int >= 2; got {n_cycles!r}.")
    benchmark.burn_in(n_cycles)
    if not (isinstance(margin, numbers.Real) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"the margin must be a finite number >= 0 (0.02 is 2 %); got {margin!r}.")
    return grid, seeds, int(n_cycles)


def _as_array(values: Sequence[Any]) -> jnp.ndarray:
    return jnp.asarray(np.asarray(values, dtype=np.float64), dtype=jnp.result_type(float))


def evaluate_grid(
    method: MethodConfig,
    benchmark: Benchmark,
    grid: Mapping[str, Sequence[Any]],
    tuning_seeds: Sequence[int],
    n_cycles: int,
    *,
    static_params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-after-burn-in rmse.a and divergence per (grid point, seed): ONE compiled call.

    The grid's Cartesian product is flattened to ``G`` points; the cell function is vmapped
    over seeds and then over points, compiled once, and run. Returns two arrays of shape
    grid shape + ``(n_seeds,)``.
    """
    names = list(grid)
    shape = tuple(len(grid[n]) for n in names)
    points = list(itertools.product(*(grid[n] for n in names)))
    dyn = {n: _as_array([p[i] for p in points]) for i, n in enumerate(names)}
    fn = cell_function(method, benchmark, n_cycles, full=False, static_params=static_params)
    over_seeds = jax.vmap(fn, in_axes=(0, None))
    over_grid = jax.jit(jax.vmap(over_seeds, in_axes=(None, 0)))
    keys = jnp.stack([jax.random.key(int(s)) for s in tuning_seeds])
    out = jax.block_until_ready(over_grid(keys, dyn))
    burn = benchmark.burn_in(n_cycles)
    series = np.asarray(out.rmse_a, dtype=np.float64)[..., burn:]  # (G, S, T_scored)
    rmse = series.mean(axis=-1)  # (G, S)
    diverged = diverged_runs(series, out.climatology, out.nonfinite, benchmark.divergence_fraction)
    n_s = len(tuning_seeds)
    return rmse.reshape(*shape, n_s), diverged.reshape(*shape, n_s)


def tune(
    method: str | MethodConfig,
    benchmark: str | Benchmark,
    grid: Mapping[str, Sequence[Any]] | None = None,
    tuning_seeds: Sequence[int] = DEFAULT_TUNING_SEEDS,
    *,
    n_cycles: int | None = None,
    margin: float = 0.02,
    into: str | os.PathLike[str] | None = None,
    register: bool = True,
) -> TuneResult:
    """Sweep `grid` x `tuning_seeds` for `method` on `benchmark` and pick a safe optimum.

    The dynamic hyper-parameters of the grid run as one vmapped compiled call (grid points x
    seeds); hyper-parameters listed in ``method.static`` (they change shapes) run one such
    call per value. The choice (see `select`) is stored as a `TunedSetting` with the date,
    the grid and the seeds: in the registry (``register=True``, so later runs use it) and,
    with `into`, merged into that tuned-settings JSON file.

    **Arguments:**

    - `method`, `benchmark`: names or objects.
    - `grid`: ``{param: values}``; default ``method.tune_grid``.
    - `tuning_seeds`: seeds for tuning, kept apart from the scoring seeds (default
      1000, 1001, 1002; scoring seeds are small integers).
    - `n_cycles`: run length (default the benchmark's).
    - `margin`: relative rmse tolerance of the safety rule.
    - `into`: a tuned-settings JSON path to merge the result into.
    - `register`: apply the result to the registered method.

    Everything is checked before the first run (`check_tuning`): a grid axis that is not a
    hyper-parameter of the method, or a value its components refuse, is a `ValueError`.

    **Returns:** a `TuneResult`.
    """
    method = get_method(method)
    benchmark = get_benchmark(benchmark)
    grid, tuning_seeds, n_cycles = check_tuning(
        method, benchmark, grid, tuning_seeds, n_cycles=n_cycles, margin=margin
    )
    static_names = [k for k in grid if k in method.static]
    dynamic = {k: v for k, v in grid.items() if k not in method.static}
    t0 = time.perf_counter()
    static_points = list(itertools.product(*(grid[k] for k in static_names))) or [()]
    blocks = []
    for point in static_points:
        static_params = dict(zip(static_names, point, strict=True))
        if dynamic:
            rmse, div = evaluate_grid(
                method, benchmark, dynamic, tuning_seeds, n_cycles, static_params=static_params
            )
        else:
            rmse, div = evaluate_grid(
                method,
                benchmark,
                {"_": (0.0,)},
                tuning_seeds,
                n_cycles,
                static_params=static_params,
            )
            rmse, div = rmse[0], div[0]
        blocks.append((rmse, div))
    seconds = time.perf_counter() - t0
    # Assemble in the order static axes, then dynamic axes.
    order = static_names + list(dynamic)
    static_shape = tuple(len(grid[k]) for k in static_names)
    per_seed = np.stack([b[0] for b in blocks]).reshape(*static_shape, *blocks[0][0].shape)
    div_seed = np.stack([b[1] for b in blocks]).reshape(*static_shape, *blocks[0][1].shape)
    mean = per_seed.mean(axis=-1)
    diverged = div_seed.any(axis=-1)
    safe_name, safe_dir = method.safety
    safe_axis = order.index(safe_name) if safe_name in order else None
    index, rule = select(
        mean, diverged, margin=margin, safe_axis=safe_axis, safe_direction=safe_dir
    )
    best = {k: grid[k][i] for k, i in zip(order, index, strict=True)}
    setting = TunedSetting(
        values=best,
        date=today(),
        grid={k: grid[k] for k in order},
        tuning_seeds=tuple(int(s) for s in tuning_seeds),
        n_cycles=n_cycles,
        rmse_a=float(mean[index]),
        margin=margin,
        rule=rule,
    )
    if register:
        register_method(method.with_tuned(benchmark.name, setting), overwrite=True)
    if into is not None:
        save_tuned(into, {f"{benchmark.name}/{method.name}": setting})
    return TuneResult(
        method=method.name,
        benchmark=benchmark.name,
        grid={k: grid[k] for k in order},
        rmse_a=mean,
        per_seed=per_seed,
        diverged=diverged,
        best=best,
        index=index,
        setting=setting,
        seconds=seconds,
    )
