"""filterax.filters — sequential ensemble filters and the compiled assimilation loop."""

from ._version import __version__ as __version__

# --- deterministic square-root family (ETKF, EnSRF, DEnKF, ESTKF, ETKF_Livings) ---
from ._common import (
    AnalysisInputs as AnalysisInputs,
    check_obs_noise as check_obs_noise,
    prepare_analysis as prepare_analysis,
)
from ._transform_filter import (
    AbstractTransformFilter as AbstractTransformFilter,
    finish_transform_analysis as finish_transform_analysis,
)
from ._transforms import (
    apply_transform as apply_transform,
    full_transform as full_transform,
    matmul as matmul,
    sqrt_transform as sqrt_transform,
)
from ._denkf import DEnKF as DEnKF
from ._ensrf import EnSRF as EnSRF, EnSRF_Serial as EnSRF_Serial
from ._estkf import ESTKF as ESTKF
from ._etkf import ETKF as ETKF
from ._etkf_livings import ETKF_Livings as ETKF_Livings
from ._transforms import TransformInfo as TransformInfo

# --- stochastic, finite-size and localised filters (StochasticEnKF, EnKF_N, LETKF) ---
from ._enkf import StochasticEnKF as StochasticEnKF, StochasticEnKFInfo as StochasticEnKFInfo
from ._enkf_n import EnKF_N as EnKF_N, EnKFNInfo as EnKFNInfo
from ._letkf import LETKF as LETKF, LETKFInfo as LETKFInfo

# --- the one driver of cycled methods, the ensemble-filter cycle, assimilate ---
from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    AbstractFlatAdjoint as AbstractFlatAdjoint,
    CheckpointAdjoint as CheckpointAdjoint,
    FullAdjoint as FullAdjoint,
    TruncatedAdjoint as TruncatedAdjoint,
    TwoLevelCheckpointAdjoint as TwoLevelCheckpointAdjoint,
    check_adjoint as check_adjoint,
)
from ._run import (
    RunResult as RunResult,
    as_cycled_method as as_cycled_method,
    check_run_arguments as check_run_arguments,
    check_times as check_times,
    cycle_keys as cycle_keys,
    run as run,
    run_cycles as run_cycles,
    time_mean_scores as time_mean_scores,
)
from ._ensemble_filter import (
    CallableInflator as CallableInflator,
    EnsembleFilter as EnsembleFilter,
    EnsembleState as EnsembleState,
)
from ._assimilate import AssimilationResult as AssimilationResult, assimilate as assimilate

# --- parametric filters (KF family) ---
from ._kalman import (
    AbstractKalmanFilter as AbstractKalmanFilter,
    ExtendedKF as ExtendedKF,
    GaussianDiagnostics as GaussianDiagnostics,
    GaussianFilter as GaussianFilter,
    GaussianState as GaussianState,
    KalmanFilter as KalmanFilter,
    KalmanResult as KalmanResult,
    SquareRootKF as SquareRootKF,
    SqrtGaussianState as SqrtGaussianState,
)
from ._information import (
    InformationFilter as InformationFilter,
    InformationState as InformationState,
)

# rotations live in filterax.primitives (re-exported here, the same objects)
from filterax.primitives import (
    random_rotation as random_rotation,
    rotate_ensemble as rotate_ensemble,
)
