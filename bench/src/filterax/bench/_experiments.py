"""Registered reproduction experiments: train-then-score runs with stated targets.

The leaderboard (`_registry`, `_runner`) scores cycled filters with fixed hyper-parameters;
an `Experiment` is a different kind of benchmark: it trains (or sweeps) something, measures a
few numbers and checks them against the targets its source states (a paper's figure, an
issue's acceptance criteria). Each has a quick size (about two minutes on one CPU core) and the
full size of its source:

    filterax-bench experiments list
    filterax-bench experiments run [NAMES] [--quick] [--out DIR]

``run_experiments`` writes ``<out>/experiments.json`` (merged with the experiments already
there, so they can be run one at a time); ``filterax-bench report`` renders them in an
"Experiments" section of the HTML page (targets vs measured, and the figures of
`_experiment_plots`).

A target is ``(key, comparison, value, source)``: `key` a dotted path into the experiment's
result (``"L96_N5.vi_opt.radius"``), `comparison` one of ``<=``, ``>=``, ``<``, ``>`` or
``in`` (`value` a ``(low, high)`` pair, inclusive), `value` a number, a pair, or the dotted key
of another measured number (``("test_rmse", "<", "test_rmse_K0", ...)``).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ._files import read_schema_json, write_json_atomic

__all__ = [
    "EXPERIMENTS_FILE",
    "Experiment",
    "Target",
    "evaluate_targets",
    "experiments",
    "get_experiment",
    "load_experiments",
    "register_experiment",
    "run_experiments",
]

EXPERIMENTS_FILE = "experiments.json"
EXPERIMENTS_SCHEMA = 1
COMPARISONS = ("<=", ">=", "<", ">", "in")

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as an experiment advances (a stage label and how
many of its `total` steps are done)."""


class Target(NamedTuple):
    """One stated target of an experiment (see the module docstring)."""

    key: str
    comparison: str
    value: float | tuple[float, float] | str
    source: str


@dataclass(frozen=True)
class Experiment:
    """A registered reproduction experiment.

    - `name`: identifier (``[a-z0-9_]``), used on the command line and in the JSON.
    - `title`: one line for tables and headings.
    - `citation`: what it reproduces (author year, section/figure).
    - `run`: ``run(quick, progress) -> dict`` of measured numbers and figure data (JSON
      values; NaN/inf become ``null``). ``progress`` may be ``None``.
    - `targets`: the stated targets, `Target` or plain ``(key, comparison, value, source)``.
    - `sizes`: ``{"quick": ..., "full": ...}``: what each size runs, in words.
    - `plot`: the figure kind(s) `_experiment_plots` draws from the result.
    - `summary`: dotted keys of measured numbers shown beside the targets without a verdict
      (e.g. the rmse.a where a descent lands and at the RMSE-optimal tuning).
    """

    name: str
    title: str
    citation: str
    run: Callable[[bool, Progress | None], dict[str, Any]]
    targets: Sequence[Target | tuple[Any, ...]] = ()
    sizes: Mapping[str, str] = field(default_factory=dict)
    plot: Sequence[str] = ()
    summary: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(
                f"experiment name {self.name!r}: use letters, digits and underscores only."
            )
        if not callable(self.run):
            raise TypeError(f"experiment {self.name}: run must be callable run(quick, progress).")
        targets = tuple(Target(*t) for t in self.targets)
        for t in targets:
            _check_target(self.name, t)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "plot", tuple(self.plot))
        object.__setattr__(self, "summary", tuple(self.summary))


def _check_target(name: str, t: Target) -> None:
    if t.comparison not in COMPARISONS:
        raise ValueError(
            f"experiment {name}: target {t.key!r} has comparison {t.comparison!r}; use one of "
            f"{COMPARISONS}."
        )
    if t.comparison == "in":
        ok = (
            isinstance(t.value, tuple | list)
            and len(t.value) == 2
            and all(_is_number(v) for v in t.value)
            and t.value[0] <= t.value[1]
        )
        if not ok:
            raise ValueError(
                f"experiment {name}: target {t.key!r} 'in' needs value (low, high) with "
                f"low <= high; got {t.value!r}."
            )
    elif not (_is_number(t.value) or isinstance(t.value, str)):
        raise ValueError(
            f"experiment {name}: target {t.key!r} {t.comparison} needs a number or the dotted "
            f"key of another measured number; got {t.value!r}."
        )


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


_EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment, *, replace: bool = False) -> Experiment:
    """Add `experiment` to the registry (a second one of the same name needs ``replace``)."""
    if not isinstance(experiment, Experiment):
        raise TypeError(f"register an Experiment; got {type(experiment).__name__}.")
    if experiment.name in _EXPERIMENTS and not replace:
        raise ValueError(
            f"an experiment named {experiment.name!r} is registered; pass replace=True to "
            "replace it."
        )
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def experiments() -> dict[str, Experiment]:
    """The registered experiments, ``{name: Experiment}`` in registration order."""
    return dict(_EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    """The registered experiment `name` (KeyError listing the names otherwise)."""
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        raise KeyError(
            f"unknown experiment {name!r}; registered: {', '.join(_EXPERIMENTS) or 'none'} "
            "(`filterax-bench experiments list`)."
        ) from None


def lookup(result: Mapping[str, Any], key: str) -> Any:
    """The value at dotted `key` of `result` (KeyError naming the missing part)."""
    value: Any = result
    for part in key.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, Sequence) and not isinstance(value, str) and part.isdigit():
            value = value[int(part)]
        else:
            raise KeyError(f"the result has no {key!r} (missing {part!r})")
    return value


def _number(result: Mapping[str, Any], key: str) -> float | None:
    try:
        v = lookup(result, key)
    except (KeyError, IndexError):
        return None
    if not _is_number(v) or not math.isfinite(v):
        return None
    return float(v)


def evaluate_targets(
    targets: Sequence[Target | tuple], result: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Each target checked against `result`: ``{key, comparison, value, source, measured,
    reference, passed}``. A measured (or referenced) number that is missing or not finite
    fails the target (``measured`` None)."""
    rows = []
    for t in (Target(*t) for t in targets):
        measured = _number(result, t.key)
        if isinstance(t.value, str):
            ref: Any = _number(result, t.value)
        elif t.comparison == "in":
            ref = [float(t.value[0]), float(t.value[1])]
        else:
            ref = float(t.value)
        if measured is None or ref is None:
            passed = False
        elif t.comparison == "in":
            passed = ref[0] <= measured <= ref[1]
        else:
            passed = {
                "<=": measured <= ref,
                ">=": measured >= ref,
                "<": measured < ref,
                ">": measured > ref,
            }[t.comparison]
        rows.append(
            {
                "key": t.key,
                "comparison": t.comparison,
                "value": list(t.value) if isinstance(t.value, tuple | list) else t.value,
                "source": t.source,
                "measured": measured,
                "reference": ref,
                "passed": bool(passed),
            }
        )
    return rows


def _json_safe(x: Any) -> Any:
    """Plain JSON values: numpy/JAX scalars and arrays to Python, NaN/inf to None."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "tolist"):  # numpy / JAX arrays and scalars
        return _json_safe(x.tolist())
    raise TypeError(f"an experiment result holds a {type(x).__name__}; return JSON values.")


def experiments_path(out: str | Path) -> Path:
    """``<out>/experiments.json`` (or `out` itself when it names a .json file)."""
    p = Path(out)
    return p if p.suffix == ".json" else p / EXPERIMENTS_FILE


def load_experiments(out: str | Path) -> dict[str, Any]:
    """``{name: record}`` from ``<out>/experiments.json`` (empty when absent); a file that is
    not an experiments file raises a one-line ValueError naming it."""
    path = experiments_path(out)
    if not path.exists():
        return {}
    body = read_schema_json(
        path,
        what="experiments",
        schema=EXPERIMENTS_SCHEMA,
        body="experiments",
        body_shape='{"<experiment>": record}',
        fix="delete it (or move it away) and rerun `filterax-bench experiments run`",
    )
    for name, rec in body.items():
        if not (isinstance(rec, dict) and isinstance(rec.get("result"), dict)):
            raise ValueError(
                f"{path}: experiment {name!r} is not an experiment record (an object with its "
                "result); delete the file and rerun `filterax-bench experiments run`."
            )
    return body


def save_experiments(out: str | Path, records: Mapping[str, Any]) -> Path:
    """Merge `records` into ``<out>/experiments.json`` (a record of the same name is
    replaced, the others kept) and write it atomically. Returns the path."""
    path = experiments_path(out)
    merged = load_experiments(path)
    merged.update(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"schema": EXPERIMENTS_SCHEMA, "experiments": _json_safe(merged)})
    return path


def run_experiment(experiment: Experiment, *, quick: bool, progress: Progress | None = None):
    """Run one experiment and evaluate its targets: the record stored in the JSON."""
    t0 = time.perf_counter()
    result = _json_safe(experiment.run(quick, progress))
    if not isinstance(result, dict):
        raise TypeError(f"experiment {experiment.name}: run must return a dict of results.")
    checks = evaluate_targets(experiment.targets, result)
    return {
        "name": experiment.name,
        "title": experiment.title,
        "citation": experiment.citation,
        "quick": bool(quick),
        "size": experiment.sizes.get("quick" if quick else "full", ""),
        "seconds": round(time.perf_counter() - t0, 1),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "plot": list(experiment.plot),
        "result": result,
        "targets": checks,
        "summary": {key: _number(result, key) for key in experiment.summary},
        "passed": all(c["passed"] for c in checks),
    }


def run_experiments(
    names: Sequence[str] | None = None,
    *,
    quick: bool = False,
    out: str | Path | None = None,
    progress: Callable[[str], Progress | None] | None = None,
) -> dict[str, Any]:
    """Run registered experiments (default: all) in float64 and check their targets.

    **Arguments:**

    - `names`: experiment names (`experiments()`); unknown names raise KeyError before any run.
    - `quick`: the quick sizes (about two minutes each on one core) instead of the full ones.
    - `out`: a directory: each finished record is merged into ``<out>/experiments.json`` at
      once (``None``: nothing written).
    - `progress`: ``progress(name) -> callback(stage, done, total)`` (or ``None``).

    **Returns:** ``{name: record}``, a record holding ``result`` (the measured numbers and
    figure data), ``targets`` (`evaluate_targets`), ``passed``, ``quick`` and ``seconds``.
    """
    import jax

    chosen = list(experiments()) if names is None else list(names)
    found = [get_experiment(n) for n in chosen]  # KeyError before any work
    jax.config.update("jax_enable_x64", True)
    records: dict[str, Any] = {}
    for exp in found:
        callback = None if progress is None else progress(exp.name)
        records[exp.name] = run_experiment(exp, quick=quick, progress=callback)
        if out is not None:
            save_experiments(out, {exp.name: records[exp.name]})
    return records
