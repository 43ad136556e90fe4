"""filterax.learn — see the package README for what lands here."""

from ._version import __version__ as __version__

# --- training loops and positive reparameterisations (issue 12 §1, training patterns) ---
from ._hybrid import (
    ResidualDynamics as ResidualDynamics,
    ResidualObsOperator as ResidualObsOperator,
    StencilMLP as StencilMLP,
)
from ._positive import (
    AbstractPositiveTransform as AbstractPositiveTransform,
    ExpPositive as ExpPositive,
    SoftplusPositive as SoftplusPositive,
)
from ._training import (
    FitResult as FitResult,
    Resumed as Resumed,
    TrainingProgress as TrainingProgress,
    WindowFitResult as WindowFitResult,
    fit as fit,
    fit_windows as fit_windows,
)
# --- end training ---
