"""The public API of `filterax.bench`, imported on first use (see ``__init__``)."""

# ruff: noqa: F401, I001  (grouped by topic, as the package __init__)
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

# --- training patterns of differentiable DA (filterax.learn) ---
from ._learn_patterns import run_learning_patterns as run_learning_patterns

# --- reproduction experiments (train, then score against stated targets) ---
from ._experiments import (
    Experiment as Experiment,
    Target as Target,
    evaluate_targets as evaluate_targets,
    experiments as experiments,
    get_experiment as get_experiment,
    load_experiments as load_experiments,
    register_experiment as register_experiment,
    run_experiments as run_experiments,
)
from . import _experiments_vi as _experiments_vi  # registers the built-in experiments
from . import _experiments_flow as _experiments_flow  # issue 13 §3 static flow benchmarks

# --- the Lorenz-96 demo (the 0.1.0 main job) ---
from ._demo import DemoResult as DemoResult, run_lorenz96_demo as run_lorenz96_demo
