"""filterax.smoothers — smoothers (EnKS, RTS, fixed-lag, square-root, IES, ES-MDA, iEnKS)."""

from ._version import __version__ as __version__

# --- shared result type ---
from ._result import SmootherResult as SmootherResult

# --- sequential smoothers (EnKS, EnsembleRTS, EnsembleSqrtSmoother, FixedLagSmoother, RTS) ---

# --- iterative ensemble Kalman smoother (iEnKS) ---

# --- inverse-problem smoothers (IES, ESMDA) ---
