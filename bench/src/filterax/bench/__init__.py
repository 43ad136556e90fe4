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
]

if TYPE_CHECKING:  # static analysis and the API docs see the names where they live
    # --- registries: benchmarks, method configurations, suites, tuned settings ---
    from ._registry import (
        Benchmark as Benchmark,
        MethodConfig as MethodConfig,
        Suite as Suite,
        TunedSetting as TunedSetting,
        get_benchmark as get_benchmark,
        get_method as get_method,
        get_suite as get_suite,
        list_benchmarks as list_benchmarks,
        list_methods as list_methods,
        list_suites as list_suites,
        load_tuned as load_tuned,
        register_benchmark as register_benchmark,
        register_method as register_method,
        register_suite as register_suite,
        resolve_cells as resolve_cells,
        save_tuned as save_tuned,
    )
    from ._benchmarks import (
        grid_coordinates as grid_coordinates,
        periodic_distance as periodic_distance,
    )
    from . import _methods as _methods  # registers the built-in methods and suites

    # --- running, scoring and tuning ---
    from ._runner import (
        Trajectory as Trajectory,
        cell_function as cell_function,
        load_results as load_results,
        run as run,
        seed_keys as seed_keys,
    )
    from ._tune import TuneResult as TuneResult, select as select, tune as tune

    # --- the calibration suite (ensemble Kalman processes) ---
    from ._calibration import (
        CalibrationMethod as CalibrationMethod,
        CalibrationProblem as CalibrationProblem,
        get_calibration_method as get_calibration_method,
        get_calibration_problem as get_calibration_problem,
        list_calibration_methods as list_calibration_methods,
        list_calibration_problems as list_calibration_problems,
        run_calibration as run_calibration,
    )

    # --- the Lorenz-96 demo (the 0.1.0 main job) ---
    from ._demo import DemoResult as DemoResult, run_lorenz96_demo as run_lorenz96_demo


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'filterax.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
