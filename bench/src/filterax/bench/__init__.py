# ruff: noqa: F405  (the names of __all__ come from `_api`, lazily)
"""filterax.bench — benchmark registry, runner, tuning and leaderboard for filterax.

The public names below are imported on first use (PEP 562), so ``filterax-bench --help`` and
argument errors answer without importing JAX; the first access to any of them imports the
whole API (and registers the built-in benchmarks, methods and suites).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _xla as _xla  # first: sizes the XLA CPU thread pool before the backend starts
from ._version import __version__ as __version__

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
    "grid_coordinates",
    "periodic_distance",
    "Trajectory",
    "cell_function",
    "load_results",
    "run",
    "seed_keys",
    "TuneResult",
    "select",
    "tune",
    "CalibrationMethod",
    "CalibrationProblem",
    "get_calibration_method",
    "get_calibration_problem",
    "list_calibration_methods",
    "list_calibration_problems",
    "run_calibration",
    "DemoResult",
    "run_lorenz96_demo",
    "run_learning_patterns",
    "Experiment",
    "Target",
    "evaluate_targets",
    "experiments",
    "get_experiment",
    "load_experiments",
    "register_experiment",
    "run_experiments",
]

if TYPE_CHECKING:  # static analysis and the API docs see every name of `_api`
    from ._api import *  # noqa: F403


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'filterax.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
