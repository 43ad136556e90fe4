"""filterax.processes — ensemble Kalman processes for inversion and sampling."""

from ._version import __version__ as __version__

# --- processes, schedulers, state (EKI, ETKI, GNKI, TEKI, SparseInversion, EKS, UKI) ---
from ._state import (
    AbstractProcessState as AbstractProcessState,
    ProcessState as ProcessState,
)
from ._process_base import (
    AbstractEnsembleProcess as AbstractEnsembleProcess,
    AbstractProcessBase as AbstractProcessBase,
)
from ._localizers import (
    SEC as SEC,
    AbstractCovarianceLocalizer as AbstractCovarianceLocalizer,
    SECFisher as SECFisher,
    SECNice as SECNice,
    TaperLocalizer as TaperLocalizer,
)
from ._inflation import (
    AbstractInflation as AbstractInflation,
    AdditiveInflation as AdditiveInflation,
    InflationLike as InflationLike,
    MultiplicativeInflation as MultiplicativeInflation,
)
from ._eki import EKI as EKI
from ._etki import ETKI as ETKI
from ._gnki import GNKI as GNKI
from ._teki import TEKI as TEKI
from ._sparse import SparseInversion as SparseInversion
from ._eks import EKS as EKS
from ._uki import UKI as UKI, UKIState as UKIState, sigma_points as sigma_points

# --- inverse-problem smoothers as processes (ES-MDA, IES; also in filterax.smoothers) ---
from ._inversion import (
    AbstractInverseSmoother as AbstractInverseSmoother,
    InversionResult as InversionResult,
    InversionState as InversionState,
)
from ._esmda import ESMDA as ESMDA
from ._ies import IES as IES, ExponentialStepLength as ExponentialStepLength
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
