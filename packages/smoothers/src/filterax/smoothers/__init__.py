"""filterax.smoothers — smoothers (EnKS, RTS, fixed-lag, square-root, IES, ES-MDA, iEnKS)."""

from ._version import __version__ as __version__

# --- shared result type ---
from ._result import SmootherResult as SmootherResult

# --- sequential smoothers (EnKS, EnsembleRTS, EnsembleSqrtSmoother, FixedLagSmoother, RTS) ---
from ._base import AbstractEnsembleSmoother as AbstractEnsembleSmoother
from ._driver import assimilate_and_smooth as assimilate_and_smooth
from ._enks import EnKS as EnKS
from ._fixed_lag import (
    FixedLagSmoother as FixedLagSmoother,
    OnlineFixedLagDiagnostics as OnlineFixedLagDiagnostics,
    OnlineFixedLagSmoother as OnlineFixedLagSmoother,
    OnlineFixedLagState as OnlineFixedLagState,
)
from ._rts import (
    EnsembleRTS as EnsembleRTS,
    EnsembleSqrtSmoother as EnsembleSqrtSmoother,
    GaussianSmoothResult as GaussianSmoothResult,
    rts_smooth as rts_smooth,
)
from ._transforms import (
    ensemble_transform as ensemble_transform,
    local_ensemble_transforms as local_ensemble_transforms,
)

# --- iterative ensemble Kalman smoother (iEnKS) ---
from ._ienks import (
    iEnKS as iEnKS,
    iEnKSDiagnostics as iEnKSDiagnostics,
    iEnKSState as iEnKSState,
)

# --- inverse-problem smoothers (IES, ESMDA): processes of filterax.processes (same objects) ---
from filterax.processes import (
    ESMDA as ESMDA,
    IES as IES,
    AbstractInverseSmoother as AbstractInverseSmoother,
    ExponentialStepLength as ExponentialStepLength,
    InversionResult as InversionResult,
    InversionState as InversionState,
)
