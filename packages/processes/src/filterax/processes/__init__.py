"""filterax.processes — ensemble Kalman processes for inversion and sampling."""

from ._version import __version__ as __version__

# --- processes, schedulers, state (EKI, ETKI, GNKI, TEKI, SparseInversion, EKS, UKI) ---
from ._state import ProcessState as ProcessState
from ._base import (
    SEC as SEC,
    AbstractCovarianceLocalizer as AbstractCovarianceLocalizer,
    AbstractInflation as AbstractInflation,
    AbstractProcessBase as AbstractProcessBase,
    AdditiveInflation as AdditiveInflation,
    MultiplicativeInflation as MultiplicativeInflation,
    SECFisher as SECFisher,
    SECNice as SECNice,
    TaperLocalizer as TaperLocalizer,
)
from ._eki import EKI as EKI
from ._etki import ETKI as ETKI
from ._gnki import GNKI as GNKI
from ._teki import TEKI as TEKI
from ._sparse import SparseInversion as SparseInversion
from ._eks import EKS as EKS
from ._uki import UKI as UKI, UKIState as UKIState, sigma_points as sigma_points
from ._schedulers import (
    DataMisfitController as DataMisfitController,
    DataMisfitControllerState as DataMisfitControllerState,
    EKSStableScheduler as EKSStableScheduler,
    FixedScheduler as FixedScheduler,
)
from ._failures import (
    FailureHandler as FailureHandler,
    failed_members as failed_members,
    n_failed as n_failed,
    resample_failed as resample_failed,
)

# --- drivers, executors, priors/constraints, mini-batching ---
from ._calibrate import (
    CalibrationError as CalibrationError,
    CalibrationHistory as CalibrationHistory,
    CalibrationResult as CalibrationResult,
    calibrate as calibrate,
)
from ._executors import (
    MemberEvaluations as MemberEvaluations,
    SerialExecutor as SerialExecutor,
    evaluate_members as evaluate_members,
)
from ._minibatch import MiniBatcher as MiniBatcher
from ._priors import (
    ParameterDistribution as ParameterDistribution,
    combine_distributions as combine_distributions,
    constrained_gaussian as constrained_gaussian,
    to_constrained as to_constrained,
    to_unconstrained as to_unconstrained,
)

from . import optax as optax
