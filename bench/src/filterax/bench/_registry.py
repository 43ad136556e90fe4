"""Benchmarks, method configurations, suites and tuned settings, with their registries.

A *benchmark* is a twin-experiment problem (a `filterax.zoo.StateSpaceModel` factory plus run
length, burn-in, scoring seeds and the published reference scores). A *method configuration*
is a filter with every hyper-parameter fixed (ensemble size, inflation, rotation, localisation,
extras), optionally with per-benchmark settings. A *suite* names the (benchmark, method) cells
to run. Everything lives in module-level registries that users extend with
`register_benchmark` / `register_method` / `register_suite`.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import read_schema_json, write_json_atomic

__all__ = [
    "Benchmark",
    "MethodConfig",
    "Suite",
    "TunedSetting",
    "get_benchmark",
    "get_method",
    "get_suite",
    "list_benchmarks",
    "list_methods",
    "list_suites",
    "load_tuned",
    "register_benchmark",
    "register_method",
    "register_suite",
    "resolve_cells",
    "save_tuned",
]

ParamValue = float | int | str | bool

_BENCHMARKS: dict[str, Benchmark] = {}
_METHODS: dict[str, MethodConfig] = {}
_SUITES: dict[str, Suite] = {}
_BUILTINS = "unloaded"  # -> "loading" -> "loaded"


def ensure_builtins() -> None:
    """Register the built-in benchmarks, methods and suites (once; they register themselves
    when their modules are imported). Every public registry function calls it, so the
    registry is complete however `filterax.bench` was imported."""
    global _BUILTINS
    if _BUILTINS != "unloaded":
        return
    _BUILTINS = "loading"
    try:
        from . import _benchmarks, _methods  # noqa: F401
    except BaseException:
        _BUILTINS = "unloaded"
        raise
    _BUILTINS = "loaded"


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name != name.strip():
        raise ValueError(
            f"a {what} name must be a non-empty string without '/' or surrounding spaces (it "
            f"forms the results key '<benchmark>/<method>'); got {name!r}."
        )
    return name


@dataclasses.dataclass(frozen=True, eq=False)
class Benchmark:
    """A benchmark problem: a twin experiment with its run length, seeds and references.

    **Arguments:**

    - `name`: registry key (no ``/``), e.g. ``"lorenz96_sakov2008"``.
    - `model`: zero-argument factory returning the `filterax.zoo.StateSpaceModel` (called once,
      lazily, then cached: some models integrate a spin-up when built).
    - `n_cycles`: number of observation times of a scored run (``standard`` length).
    - `seeds`: default scoring seeds. Seed ``s`` fixes the truth trajectory, shared by every
      method (DAPPER's convention), as well as the initial ensemble and the filter's keys.
    - `burn_in_cycles`: leading cycles left out of the time means; ``None`` takes the model's
      `burn_in_cycles` (its burn-in in model time units / ``dt_obs``).
    - `references`: published ``rmse.a`` by method label (as in
      `filterax.zoo.presets.PUBLISHED_RMSE`).
    - `citation`: where `references` come from.
    - `reference_rounding`: for references published with fewer digits than two significant
      ones, half a unit in their last published digit, by label (DAPPER gives the KS
      baselines to one decimal: ``{"OptInterp": 0.05}``); the leaderboard's reference test
      allows that much beside seed noise.
    - `coordinates`: ``coordinates(model) -> {"state_coords": ..., "obs_coords": ...}`` for
      localised filters (LETKF) on a model without geometry, or to override the model's;
      ``None`` (default): they take the model's own ``state_coords``/``obs_coords`` (the zoo
      presets carry them). A problem with neither cannot run localised methods.
    - `distance`: the distance between coordinates that localised filters use instead of the
      model's (e.g. ``filterax.primitives.PeriodicDistance(40.0)``); ``None`` (default): the
      model's distance (Euclidean if the model has none).
    - `climatology_rmse`: published climatological ``rmse.a`` (informational; divergence is
      judged against the climatology of each seed's own truth).
    - `max_ensemble`: largest ensemble size allowed (a small-ensemble benchmark), or ``None``.
    - `divergence_fraction`: a seed counts as diverged when its ``rmse.a`` exceeds this
      fraction of the climatological rmse of its truth (0.5 for chaotic systems, where working
      filters sit far below climatology; 1.0 for the linear-Gaussian problems, where even the
      Kalman filter reaches 0.4 of it).
    - `description`: one line for listings.
    """

    name: str
    model: Callable[[], Any]
    n_cycles: int
    seeds: Sequence[int] = (0, 1, 2)
    burn_in_cycles: int | None = None
    references: Mapping[str, float | int] = dataclasses.field(default_factory=dict)
    citation: str = ""
    reference_rounding: Mapping[str, float | int] = dataclasses.field(default_factory=dict)
    coordinates: Callable[[Any], Mapping[str, Any]] | None = None
    distance: Callable[..., Any] | None = None
    climatology_rmse: float | int | None = None
    max_ensemble: int | None = None
    divergence_fraction: float | int = 0.5
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "benchmark")
        if not self.divergence_fraction > 0:
            raise ValueError(f"divergence_fraction must be > 0; got {self.divergence_fraction}.")
        if not callable(self.model):
            raise TypeError(
                f"Benchmark.model must be a zero-argument factory returning a StateSpaceModel "
                f"(e.g. filterax.zoo.presets.lorenz63_sakov2012); got {self.model!r}."
            )
        if isinstance(self.n_cycles, bool) or not isinstance(self.n_cycles, int):
            raise TypeError(f"Benchmark.n_cycles must be an int; got {self.n_cycles!r}.")
        if self.n_cycles < 2:
            raise ValueError(f"Benchmark.n_cycles must be >= 2; got {self.n_cycles}.")
        object.__setattr__(self, "seeds", _as_seeds(self.seeds, "Benchmark.seeds"))
        object.__setattr__(self, "references", dict(self.references))
        object.__setattr__(self, "reference_rounding", dict(self.reference_rounding))
        for label, half_unit in self.reference_rounding.items():
            if label not in self.references or not 0 <= half_unit < math.inf:
                raise ValueError(
                    f"benchmark {self.name!r}: reference_rounding[{label!r}] must be a finite "
                    f"half unit >= 0 of a published reference (references: "
                    f"{sorted(self.references)}); got {half_unit!r}."
                )
        if self.burn_in_cycles is not None and self.burn_in_cycles < 0:
            raise ValueError(f"burn_in_cycles must be >= 0; got {self.burn_in_cycles}.")

    @functools.cached_property
    def ssm(self) -> Any:
        """The `StateSpaceModel` (built on first access, then cached)."""
        return self.model()

    def burn_in(self, n_cycles: int | None = None) -> int:
        """Cycles dropped from the time means for a run of `n_cycles` (default `n_cycles`)."""
        n = self.n_cycles if n_cycles is None else n_cycles
        burn = self.burn_in_cycles
        if burn is None:
            burn = int(self.ssm.burn_in_cycles)
        if burn >= n:
            raise ValueError(
                f"benchmark {self.name!r}: a run of {n} cycles lies entirely inside the burn-in "
                f"of {burn} cycles. Run more than {burn} cycles."
            )
        return burn

    def context(self) -> dict[str, Any]:
        """The geometry overrides handed to localised filters: `coordinates` and `distance`.

        Passed as `filterax.filters.EnsembleFilter` context, where each entry takes
        precedence over the model's geometry; empty when the model's own geometry is used.
        """
        context = {} if self.coordinates is None else dict(self.coordinates(self.ssm))
        if self.distance is not None:
            context["distance"] = self.distance
        return context

    @property
    def has_geometry(self) -> bool:
        """Whether localised filters can run: `coordinates` given, or the model has its own.

        Builds the model (`ssm`) only when `coordinates` is ``None``.
        """
        if self.coordinates is not None:
            return True
        return self.ssm.state_coords is not None and self.ssm.obs_coords is not None

    def reference(self, label: str | None) -> float | None:
        """The published ``rmse.a`` with this label, or ``None``."""
        if label is None:
            return None
        return self.references.get(label)


@dataclasses.dataclass(frozen=True)
class TunedSetting:
    """A tuning outcome for one (benchmark, method) cell, as stored in the tuned-settings JSON.

    - `values`: the chosen hyper-parameters, e.g. ``{"inflation": 1.03}``.
    - `date`: ISO date of the tuning run.
    - `grid`: the swept values per hyper-parameter.
    - `tuning_seeds`: the seeds used (disjoint from scoring seeds).
    - `n_cycles`: length of the tuning runs.
    - `rmse_a`: mean ``rmse.a`` over tuning seeds at the chosen point.
    - `margin`: relative rmse tolerance of the safety rule.
    - `rule`: one line saying how the point was chosen.
    """

    values: Mapping[str, ParamValue]
    date: str
    grid: Mapping[str, tuple[ParamValue, ...]]
    tuning_seeds: tuple[int, ...]
    n_cycles: int
    rmse_a: float | None = None
    margin: float | None = None
    rule: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "values": dict(self.values),
            "date": self.date,
            "grid": {k: list(v) for k, v in self.grid.items()},
            "tuning_seeds": list(self.tuning_seeds),
            "n_cycles": self.n_cycles,
            "rmse_a": self.rmse_a,
            "margin": self.margin,
            "rule": self.rule,
        }

    @classmethod
    def from_json(cls, data: Any) -> TunedSetting:
        """The setting `to_json` wrote; a one-line `ValueError` saying what is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an entry must be a JSON object; got {type(data).__name__}")
        missing = [k for k in ("values", "date") if k not in data]
        if missing:
            raise ValueError(f"the entry has no {' or '.join(map(repr, missing))}")
        values, grid = data["values"], data.get("grid", {})
        if not isinstance(values, Mapping) or not values:
            raise ValueError("'values' must be a non-empty object {param: value}")
        if not isinstance(grid, Mapping) or not all(isinstance(v, list) for v in grid.values()):
            raise ValueError("'grid' must be an object {param: [value, ...]}")
        for name, value in [*values.items(), *((k, x) for k, v in grid.items() for x in v)]:
            if not isinstance(value, ParamValue):
                raise ValueError(
                    f"{name}={value!r} is not allowed: a hyper-parameter value is a finite "
                    "number or a string"
                )
        seeds, n_cycles = data.get("tuning_seeds", []), data.get("n_cycles", 0)
        if not isinstance(seeds, list) or not all(_is_int(s) for s in seeds):
            raise ValueError(f"'tuning_seeds' must be a list of ints; got {seeds!r}")
        if not _is_int(n_cycles):
            raise ValueError(f"'n_cycles' must be an int; got {n_cycles!r}")
        for field in ("rmse_a", "margin"):
            value = data.get(field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"{field!r} must be a number or null; got {value!r}")
        return cls(
            values=dict(values),
            date=str(data["date"]),
            grid={k: tuple(v) for k, v in grid.items()},
            tuning_seeds=tuple(seeds),
            n_cycles=n_cycles,
            rmse_a=_float_or_none(data.get("rmse_a")),
            margin=_float_or_none(data.get("margin")),
            rule=str(data.get("rule", "")),
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _show(value: Any) -> str:
    """A hyper-parameter value as written on the command line (strings quoted)."""
    return repr(value) if isinstance(value, str) else str(value)


def _call_factory(factory: Any, params: Mapping[str, Any], benchmark: Benchmark) -> Any:
    """Call ``factory()``, ``factory(params)`` or ``factory(params, benchmark)``."""
    try:
        n_args = len(
            [
                p
                for p in inspect.signature(factory).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is inspect.Parameter.empty
            ]
        )
    except (TypeError, ValueError):
        n_args = 2
    if n_args == 0:
        return factory()
    if n_args == 1:
        return factory(params)
    return factory(params, benchmark)


@dataclasses.dataclass(frozen=True, eq=False)
class MethodConfig:
    """A filter with all hyper-parameters fixed: one row of the leaderboard.

    **Arguments:**

    - `name`: registry key (no ``/``), e.g. ``"ETKF-20"``.
    - `family`: the algorithm, e.g. ``"ETKF"`` (for grouping and plots).
    - `filter`: a filter instance (an `AbstractSequentialFilter`), or a factory
      ``filter(params)`` / ``filter(params, benchmark)`` building one from the hyper-parameters
      (``params`` holds `inflation`, `localization_radius`, the `hyper` entries and their
      per-benchmark / tuned values; during tuning the swept ones are traced scalars).
    - `n_ensemble`: ensemble size ``N_e`` (``None`` for parametric Gaussian filters).
    - `inflation`: multiplicative inflation of the analysis anomalies (DAPPER's ``infl``),
      ``None`` for none.
    - `inflator`: factory ``inflator(params)`` of another inflator (RTPS, ...), overriding the
      multiplicative default.
    - `rotate`: DAPPER's random mean-preserving rotation each cycle (``rot``).
    - `localization_radius`: DAPPER's ``loc_rad`` (taper value exp(-1/2)), for localised filters.
    - `hyper`: further hyper-parameters (numbers or strings) passed to the factories.
    - `settings`: per-benchmark values overriding the above, ``{benchmark: {param: value}}``;
      the benchmarks listed here are the ones the method is configured for (the ``full``
      suite runs them all).
    - `reference_labels`: per benchmark, the label of the published score this configuration
      reproduces (a key of `Benchmark.references`).
    - `tuned`: per benchmark, the `TunedSetting` loaded from the tuned-settings JSON (applied
      on top of `settings`).
    - `tune_grid`: default grid for ``filterax-bench tune``, ``{param: values}``.
    - `safety`: ``(param, +1 | -1)``: which way along which hyper-parameter is safer against
      divergence (``("inflation", +1)``: more inflation); the tuner prefers that side among
      near-optimal points.
    - `static`: hyper-parameters that change shapes or control flow (cannot be vmapped); a
      sweep over them runs one compiled call per value.
    - `context`: whether the filter needs the benchmark's coordinates (localised filters).
    - `kind`: ``"ensemble"`` (an analysis kernel run as `filterax.filters.EnsembleFilter`
      with the inflation and rotation above), ``"parametric"`` (a Gaussian filter:
      `KalmanFilter`, `ExtendedKF`, ...) or ``"cycled"`` (`filter` is, or builds, any
      `filterax.primitives.AbstractCycledMethod`, e.g. one you wrote; `initial` gives its
      initial condition). All three run through `filterax.filters.run`.
    - `initial`: for ``kind="cycled"``, ``initial(key, benchmark, params)`` returning the
      method's initial condition; default: ``benchmark.ssm.initial_ensemble(key,
      n_ensemble)`` when `n_ensemble` is set.
    - `runner`: optional ``runner(key, benchmark, twin, params) -> Trajectory`` replacing the
      built-in drivers (smoothers, learned methods, anything else).
    - `optional_params`: hyper-parameters the factories read with a default of their own
      (``params.get("xN", 1.0)``) that nothing above gives a value. With the names in
      `inflation` (implied for an ensemble method with the default inflator),
      `localization_radius`, `hyper`, `settings`, `tune_grid` and `static` they are the names
      a tuning grid or a tuned setting may set (`param_names`).
    - `check`: ``check(params)`` or ``check(params, benchmark)``, for a `runner`: build (or
      check) what the runner builds from the hyper-parameters, raising `ValueError` on a value
      it cannot take, so that a tuning grid or a tuned setting is refused before any run
      (`check_params`). Without a runner the filter and inflator are built for this.
    - `climatological`: the method's estimate is the climatology itself (DAPPER's
      ``Climatology`` baseline): its rmse.a sits at the climatological rmse by construction, so
      the runner's lost-the-truth test (rmse.a above the benchmark's fraction of it) does not
      apply; non-finite runs and the leaderboard's spread and reference tests still do.
    - `description`: one line for listings.
    """

    name: str
    family: str
    filter: Any = None
    n_ensemble: int | None = None
    inflation: float | int | None = None
    inflator: Callable[..., Any] | None = None
    rotate: bool = False
    localization_radius: float | int | None = None
    hyper: Mapping[str, ParamValue] = dataclasses.field(default_factory=dict)
    settings: Mapping[str, Mapping[str, ParamValue]] = dataclasses.field(default_factory=dict)
    reference_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tuned: Mapping[str, TunedSetting] = dataclasses.field(default_factory=dict)
    tune_grid: Mapping[str, Sequence[ParamValue]] = dataclasses.field(default_factory=dict)
    safety: tuple[str, int] = ("inflation", 1)
    static: tuple[str, ...] = ()
    context: bool = False
    kind: str = "ensemble"
    initial: Callable[..., Any] | None = None
    runner: Callable[..., Any] | None = None
    optional_params: Sequence[str] = ()
    check: Callable[..., Any] | None = None
    climatological: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "method")
        if self.kind not in ("ensemble", "parametric", "cycled"):
            raise ValueError(
                f'MethodConfig.kind must be "ensemble", "parametric" or "cycled"; got '
                f"{self.kind!r}."
            )
        if self.kind == "cycled" and self.initial is None and self.n_ensemble is None:
            raise ValueError(
                f"method {self.name!r}: a cycled method needs initial=... (a function "
                "initial(key, benchmark, params) -> initial condition) or n_ensemble=... (the "
                "benchmark's initial ensemble of that size)."
            )
        if self.filter is None and self.runner is None:
            raise ValueError(
                f"method {self.name!r} needs filter=... (a filter or a factory params -> filter) "
                "or runner=... (a custom driver)."
            )
        if self.kind == "ensemble" and self.runner is None:
            if isinstance(self.n_ensemble, bool) or not isinstance(self.n_ensemble, int):
                raise TypeError(
                    f"method {self.name!r}: an ensemble method needs n_ensemble=<int >= 2>; got "
                    f"{self.n_ensemble!r}."
                )
            if self.n_ensemble < 2:
                raise ValueError(f"method {self.name!r}: n_ensemble must be >= 2.")
        if self.inflation is not None and not self.inflation > 0:
            raise ValueError(f"method {self.name!r}: inflation must be > 0; got {self.inflation}.")
        for attr in ("hyper", "reference_labels", "tuned"):
            object.__setattr__(self, attr, dict(getattr(self, attr)))
        object.__setattr__(self, "settings", {k: dict(v) for k, v in self.settings.items()})
        object.__setattr__(self, "tune_grid", {k: tuple(v) for k, v in self.tune_grid.items()})
        object.__setattr__(self, "static", tuple(self.static))
        object.__setattr__(self, "optional_params", tuple(self.optional_params))
        if (
            len(self.safety) != 2
            or not isinstance(self.safety[0], str)
            or self.safety[1] not in (1, -1)
        ):
            raise ValueError(f"safety must be (param name, +1 or -1); got {self.safety!r}.")

    # --- hyper-parameters --------------------------------------------------------------

    @property
    def benchmarks(self) -> tuple[str, ...]:
        """The benchmarks this method has settings (or a published reference) for."""
        names = dict.fromkeys([*self.settings, *self.reference_labels, *self.tuned])
        return tuple(names)

    def params(self, benchmark: str | Benchmark | None = None) -> dict[str, ParamValue]:
        """The effective hyper-parameters on `benchmark`: defaults < `settings` < `tuned`."""
        name = benchmark.name if isinstance(benchmark, Benchmark) else benchmark
        out: dict[str, Any] = {}
        if self.inflation is not None:
            out["inflation"] = self.inflation
        if self.localization_radius is not None:
            out["localization_radius"] = self.localization_radius
        out.update(self.hyper)
        if name is not None:
            out.update(self.settings.get(name, {}))
            if name in self.tuned:
                out.update(self.tuned[name].values)
        return out

    @property
    def param_names(self) -> tuple[str, ...]:
        """The hyper-parameters a tuning grid or a tuned setting may set, sorted (see
        `optional_params`)."""
        names = {*self.hyper, *self.static, *self.tune_grid, *self.optional_params}
        for values in self.settings.values():
            names.update(values)
        default_inflator = self.kind == "ensemble" and self.runner is None and self.inflator is None
        if self.inflation is not None or default_inflator:
            names.add("inflation")
        if self.localization_radius is not None:
            names.add("localization_radius")
        return tuple(sorted(names))

    def check_param_names(self, names: Iterable[str]) -> None:
        """Raise a one-line `ValueError` listing `param_names` if a name is not among them."""
        unknown = [k for k in names if k not in self.param_names]
        if unknown:
            valid = ", ".join(self.param_names) or "none"
            raise ValueError(
                f"{self.name} has no hyper-parameter {', '.join(map(repr, unknown))} (its "
                f"hyper-parameters: {valid})"
            )

    def check_params(self, values: Mapping[str, Any], benchmark: Benchmark) -> None:
        """Raise a one-line `ValueError` unless `values` (``{param: value}``: a tuning grid point,
        a tuned setting) set hyper-parameters of this method to values it takes on `benchmark`.

        The names must be in `param_names` and the values finite numbers or strings. Then the
        method's components are built from them (over the method's own parameters), one value
        at a time and all together, so that the library's validators judge each value: the
        `filterax.primitives.MultiplicativeInflator` for ``inflation``, the filter's
        constructor for its own (`LETKF`'s radius, `ExtendedKF`'s ``infl``, `EnKF_N`'s ``xN``),
        `check` for a `runner`. Nothing is run.
        """
        self.check_param_names(values)
        for name, value in values.items():
            number = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
            if not (isinstance(value, str) or (number and math.isfinite(value))):
                raise ValueError(
                    f"{name}={value!r} is not allowed: a hyper-parameter value is a finite "
                    "number or a string"
                )
        subsets = [{k: v} for k, v in values.items()] if len(values) > 1 else []
        for subset in [*subsets, dict(values)]:
            problem = self._build_problem({**self.params(benchmark), **subset}, benchmark)
            if problem is not None:
                shown = ", ".join(f"{k}={_show(v)}" for k, v in subset.items())
                raise ValueError(f"{shown} is not allowed: {problem}")

    def _build_problem(self, params: Mapping[str, Any], benchmark: Benchmark) -> str | None:
        """Why the components cannot be built from `params` (the library's message), or None."""
        try:
            if self.runner is None:
                self.build_filter(params, benchmark)
                if self.kind == "ensemble":
                    self.build_inflator(params, benchmark)
            if self.check is not None:
                _call_factory(self.check, params, benchmark)
        except KeyError as err:
            return f"building it looked up {err.args[0]!r}, which has no value here"
        except (ValueError, TypeError) as err:
            return " ".join(str(err).split()).rstrip(".")
        return None

    def source(self, benchmark: str) -> str:
        """Where the settings on `benchmark` come from: ``tuned <date>``, ``published`` or
        ``default``."""
        if benchmark in self.tuned:
            return f"tuned {self.tuned[benchmark].date}"
        if benchmark in self.reference_labels:
            return "published"
        return "default"

    def config(self, benchmark: Benchmark) -> dict[str, ParamValue]:
        """The hyper-parameters recorded with a result (numbers and strings only)."""
        out: dict[str, Any] = {"family": self.family, "kind": self.kind}
        if self.n_ensemble is not None:
            out["n_ensemble"] = self.n_ensemble
        out["rotate"] = bool(self.rotate)
        if self.climatological:
            out["climatological"] = True
        for k, v in self.params(benchmark).items():
            out[k] = v if isinstance(v, str | bool | int | float) else float(v)
        out["settings"] = self.source(benchmark.name)
        return out

    def reference_label(self, benchmark: str) -> str | None:
        return self.reference_labels.get(benchmark)

    # --- construction ------------------------------------------------------------------

    def build_filter(self, params: Mapping[str, Any], benchmark: Benchmark) -> Any:
        from filterax.primitives import AbstractCycledMethod

        filt = self.filter
        if hasattr(filt, "analysis") or isinstance(filt, AbstractCycledMethod):
            return filt  # an instance (parametric filters have `analysis` too)
        if not callable(filt):
            return filt
        return _call_factory(filt, params, benchmark)

    def build_initial(self, key: Any, params: Mapping[str, Any], benchmark: Benchmark) -> Any:
        """The initial condition of a ``kind="cycled"`` method (see `initial`)."""
        if self.initial is not None:
            return self.initial(key, benchmark, params)
        return benchmark.ssm.initial_ensemble(key, self.n_ensemble)

    def build_inflator(self, params: Mapping[str, Any], benchmark: Benchmark) -> Any:
        if self.inflator is not None:
            return _call_factory(self.inflator, params, benchmark)
        if self.kind == "parametric":
            return None
        infl = params.get("inflation")
        if infl is None:
            return None
        from filterax.primitives import MultiplicativeInflator

        return MultiplicativeInflator(infl)

    def with_tuned(self, benchmark: str, setting: TunedSetting) -> MethodConfig:
        return dataclasses.replace(self, tuned={**self.tuned, benchmark: setting})


@dataclasses.dataclass(frozen=True, eq=False)
class Suite:
    """A named set of (benchmark, method) cells with run lengths and seeds.

    - `cells`: ``{benchmark: (method, ...)}``; a ``callable`` returning it is evaluated lazily
      (the ``full`` suite lists every registered method on every benchmark it is configured for).
    - `n_cycles`: per-benchmark run length overriding `Benchmark.n_cycles`.
    - `seeds`: scoring seeds overriding each benchmark's, or ``None``.
    """

    name: str
    cells: Mapping[str, Sequence[str]] | Callable[[], Mapping[str, Sequence[str]]]
    n_cycles: Mapping[str, int] = dataclasses.field(default_factory=dict)
    seeds: Sequence[int] | None = None
    description: str = ""

    def resolved(self) -> dict[str, tuple[str, ...]]:
        cells = self.cells() if callable(self.cells) else self.cells
        return {b: tuple(ms) for b, ms in cells.items()}


def _as_seeds(seeds: Iterable[Any], what: str) -> tuple[int, ...]:
    out = []
    for s in seeds:
        if isinstance(s, bool) or int(s) != s or int(s) < 0:
            raise ValueError(f"{what} must be non-negative ints; got {s!r}.")
        out.append(int(s))
    if not out:
        raise ValueError(f"{what} must hold at least one seed.")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} must not repeat a seed; got {out}.")
    return tuple(out)


# --- registries ------------------------------------------------------------------------


def register_benchmark(benchmark: Benchmark, *, overwrite: bool = False) -> Benchmark:
    """Add `benchmark` to the registry (``overwrite=True`` to replace one of the same name)."""
    ensure_builtins()
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register_benchmark takes a Benchmark; got {type(benchmark).__name__}.")
    if benchmark.name in _BENCHMARKS and not overwrite:
        raise ValueError(
            f"a benchmark named {benchmark.name!r} is already registered; pick another name or "
            "pass overwrite=True."
        )
    _BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def register_method(method: MethodConfig, *, overwrite: bool = False) -> MethodConfig:
    """Add `method` to the registry (``overwrite=True`` to replace one of the same name).

    Tuned settings already loaded for this name (see `load_tuned`) are applied to it.
    """
    ensure_builtins()
    if not isinstance(method, MethodConfig):
        raise TypeError(f"register_method takes a MethodConfig; got {type(method).__name__}.")
    if method.name in _METHODS and not overwrite:
        raise ValueError(
            f"a method named {method.name!r} is already registered; pick another name or pass "
            "overwrite=True."
        )
    for key, setting in _PENDING_TUNED.items():
        bench, name = key.split("/", 1)
        if name == method.name and bench not in method.tuned:
            method = method.with_tuned(bench, setting)
    _METHODS[method.name] = method
    return method


def register_suite(suite: Suite, *, overwrite: bool = False) -> Suite:
    """Add `suite` to the registry (``overwrite=True`` to replace one of the same name)."""
    ensure_builtins()
    if suite.name in _SUITES and not overwrite:
        raise ValueError(f"a suite named {suite.name!r} is already registered.")
    _SUITES[suite.name] = suite
    return suite


def _lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    ensure_builtins()
    try:
        return registry[name]
    except KeyError:
        close = [n for n in registry if name.lower() in n.lower() or n.lower() in name.lower()]
        hint = f" Did you mean {', '.join(sorted(close)[:5])}?" if close else ""
        raise KeyError(
            f"no {what} named {name!r}.{hint} `filterax-bench list` shows them all."
        ) from None


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """The registered benchmark called `name` (a `Benchmark` is returned as is)."""
    return name if isinstance(name, Benchmark) else _lookup(_BENCHMARKS, name, "benchmark")


def get_method(name: str | MethodConfig) -> MethodConfig:
    """The registered method configuration called `name` (a `MethodConfig` is returned as is)."""
    return name if isinstance(name, MethodConfig) else _lookup(_METHODS, name, "method")


def get_suite(name: str | Suite) -> Suite:
    """The registered suite called `name`."""
    return name if isinstance(name, Suite) else _lookup(_SUITES, name, "suite")


def list_benchmarks() -> list[str]:
    """Names of the registered benchmarks, in registration order."""
    ensure_builtins()
    return list(_BENCHMARKS)


def list_methods() -> list[str]:
    """Names of the registered method configurations, in registration order."""
    ensure_builtins()
    return list(_METHODS)


def list_suites() -> list[str]:
    """Names of the registered suites."""
    ensure_builtins()
    return list(_SUITES)


def _match(patterns: Sequence[str] | None, names: Iterable[str]) -> list[str]:
    names = list(names)
    if patterns is None:
        return names
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise KeyError(f"{pattern!r} matches nothing among {', '.join(names) or '(none)'}.")
        out.extend(h for h in hits if h not in out)
    return out


def _names(items: Sequence[Any] | None) -> list[str] | None:
    if items is None:
        return None
    if isinstance(items, str | Benchmark | MethodConfig):
        items = [items]
    return [x.name if isinstance(x, Benchmark | MethodConfig) else str(x) for x in items]


def resolve_cells(
    suite: str | Suite | None = None,
    methods: Sequence[str | MethodConfig] | None = None,
    benchmarks: Sequence[str | Benchmark] | None = None,
) -> list[tuple[Benchmark, MethodConfig]]:
    """The (benchmark, method) cells to run.

    - With a `suite`: its cells, filtered by `methods` / `benchmarks` (names or glob patterns).
    - Without a suite, with both `methods` and `benchmarks`: every method on every benchmark.
    - Without a suite, with only one of them: the ``full`` suite filtered by it.

    `Benchmark` / `MethodConfig` objects are registered on the fly if they are not yet.
    """
    ensure_builtins()
    for obj in [*(methods or []), *(benchmarks or [])]:
        if isinstance(obj, MethodConfig) and _METHODS.get(obj.name) is not obj:
            register_method(obj, overwrite=True)
        if isinstance(obj, Benchmark) and _BENCHMARKS.get(obj.name) is not obj:
            register_benchmark(obj, overwrite=True)
    method_pats, bench_pats = _names(methods), _names(benchmarks)
    if suite is None and method_pats is not None and bench_pats is not None:
        pairs = [
            (b, m) for b in _match(bench_pats, _BENCHMARKS) for m in _match(method_pats, _METHODS)
        ]
    else:
        cells = get_suite(suite if suite is not None else "full").resolved()
        chosen_b = set(_match(bench_pats, cells)) if bench_pats is not None else set(cells)
        all_methods = dict.fromkeys(m for ms in cells.values() for m in ms)
        chosen_m = set(_match(method_pats, all_methods)) if method_pats is not None else None
        pairs = [
            (b, m)
            for b, ms in cells.items()
            if b in chosen_b
            for m in ms
            if chosen_m is None or m in chosen_m
        ]
    out = []
    for b, m in pairs:
        bench, method = get_benchmark(b), get_method(m)
        problem = incompatibility(bench, method)
        if problem is not None:
            if suite is None and method_pats is not None and bench_pats is not None:
                continue  # a cross product skips the pairs that cannot run
            raise ValueError(f"cell {b}/{m} cannot run: {problem}")
        out.append((bench, method))
    if not out:
        raise ValueError("no (benchmark, method) cell matches the selection.")
    return out


def incompatibility(benchmark: Benchmark, method: MethodConfig) -> str | None:
    """Why `method` cannot run on `benchmark`, or ``None`` if it can."""
    if method.context and not benchmark.has_geometry:
        return (
            f"{method.name} is localised but {benchmark.name} has no geometry: its model has "
            "no state_coords/obs_coords and the benchmark no coordinates=."
        )
    if (
        benchmark.max_ensemble is not None
        and method.n_ensemble is not None
        and method.n_ensemble > benchmark.max_ensemble
    ):
        return (
            f"{benchmark.name} allows at most N_e={benchmark.max_ensemble}; {method.name} "
            f"uses {method.n_ensemble}."
        )
    return None


# --- tuned settings --------------------------------------------------------------------

# Tuned settings loaded for methods not registered yet: applied when they register.
_PENDING_TUNED: dict[str, TunedSetting] = {}

TUNED_SCHEMA = 1


def default_tuned_path() -> Path:
    """The tuned-settings file shipped with the package (loaded at import)."""
    return Path(__file__).with_name("tuned.json")


TUNED_FIX = "fix or delete it (`filterax-bench tune --into FILE` writes a new one)"


def read_tuned(path: str | os.PathLike[str]) -> dict[str, TunedSetting]:
    """Read a tuned-settings JSON: ``{"schema": 1, "settings": {"<bench>/<method>": ...}}``.

    An absent file reads as no settings. A file that cannot be read, is not JSON or does not
    have this structure raises a one-line `ValueError` naming it and the entry at fault.
    """
    path = Path(path)
    if not path.exists():
        return {}
    settings = read_schema_json(
        path,
        what="tuned-settings",
        schema=TUNED_SCHEMA,
        body="settings",
        body_shape='{"<benchmark>/<method>": entry}',
        fix=TUNED_FIX,
    )
    out = {}
    for key, entry in settings.items():
        bench, sep, name = key.partition("/")
        if not (sep and bench and name):
            raise ValueError(
                f"{path}: entry {key!r} is not named '<benchmark>/<method>'; {TUNED_FIX}."
            )
        try:
            out[key] = TunedSetting.from_json(entry)
        except ValueError as err:
            raise ValueError(f"{path}: entry {key!r}: {err}; {TUNED_FIX}.") from err
    return out


def check_tuned(
    settings: Mapping[str, TunedSetting],
    source: str | os.PathLike[str],
    *,
    registered_only: bool = False,
) -> None:
    """Raise a one-line `ValueError` naming `source` and the entry unless every entry names a
    registered benchmark and method and holds values that method takes there
    (`MethodConfig.check_params`). ``registered_only=True`` skips the entries of benchmarks
    or methods not registered (yet)."""
    ensure_builtins()
    for key, setting in settings.items():
        bench, name = key.split("/", 1)
        where = f"{source}: entry {key!r}"
        for what, registry, entry_name in (
            ("benchmark", _BENCHMARKS, bench),
            ("method", _METHODS, name),
        ):
            if entry_name not in registry:
                if registered_only:
                    break
                raise ValueError(
                    f"{where}: no {what} named {entry_name!r} is registered; register it (on "
                    "the command line: --import the module that does) or delete the entry."
                )
        else:
            try:
                _METHODS[name].check_params(setting.values, _BENCHMARKS[bench])
            except ValueError as err:
                raise ValueError(
                    f"{where}: {err}; correct or delete the entry, or rerun `filterax-bench tune`."
                ) from err


def load_tuned(path: str | os.PathLike[str] | None = None) -> dict[str, TunedSetting]:
    """Apply the tuned settings in `path` (default: the packaged file) to the registry.

    Each entry ``"<benchmark>/<method>"`` becomes that method's `tuned` setting on that
    benchmark (overriding its published / default values there). Entries for methods that are
    not registered yet are applied when they register. Returns what was read.

    The entries of registered methods in a given `path` are checked first (`check_tuned`): a
    hyper-parameter the method does not have, or a value it does not take, is a `ValueError`
    naming the file and the entry, and nothing is applied. (The packaged file is checked by
    the test suite, which keeps the import free of JAX work.)
    """
    ensure_builtins()
    settings = read_tuned(default_tuned_path() if path is None else path)
    if path is not None:
        check_tuned(settings, path, registered_only=True)
    for key, setting in settings.items():
        bench, name = key.split("/", 1)
        _PENDING_TUNED[key] = setting
        if name in _METHODS:
            _METHODS[name] = _METHODS[name].with_tuned(bench, setting)
    return settings


def save_tuned(
    path: str | os.PathLike[str], settings: Mapping[str, TunedSetting], *, merge: bool = True
) -> Path:
    """Write `settings` (``{"<benchmark>/<method>": TunedSetting}``) to `path` atomically,
    merging with the entries already there unless ``merge=False``."""
    path = Path(path)
    existing = read_tuned(path) if merge else {}
    existing.update(settings)
    payload = {
        "schema": TUNED_SCHEMA,
        "settings": {k: existing[k].to_json() for k in sorted(existing)},
    }
    write_json_atomic(path, payload)
    return path


def today() -> str:
    return datetime.date.today().isoformat()


def finite_or_none(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
