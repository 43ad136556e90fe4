"""filterax.primitives — Layer-0 pure functions, protocols and operators for ensemble DA."""

from ._version import __version__ as __version__
from ._protocols import (
    AbstractDynamics as AbstractDynamics,
    AbstractObsOperator as AbstractObsOperator,
    AbstractProcess as AbstractProcess,
    AbstractScheduler as AbstractScheduler,
    AbstractSequentialFilter as AbstractSequentialFilter,
    Analysis as Analysis,
)

# --- statistics, operators, noise, gain, likelihood, KL, perturbations ---

# --- localisation, inflation, shrinkage, patches ---

# --- diagnostics and observation operators ---
