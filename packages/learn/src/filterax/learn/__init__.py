"""filterax.learn — see the package README for what lands here."""

from ._version import __version__ as __version__

# --- loss zoo and sequential VI (issue 12: §1 loss zoo, §3 recursive ELBO) ---
from ._energy_score import energy_score as energy_score
from ._losses import (
    crps_loss as crps_loss,
    energy_score_loss as energy_score_loss,
    innovation_nll as innovation_nll,
    observation_mse as observation_mse,
    spread_skill_loss as spread_skill_loss,
)
from ._sequential_vi import (
    GaussianELBOFit as GaussianELBOFit,
    fit_gaussian_elbo as fit_gaussian_elbo,
    gaussian_elbo as gaussian_elbo,
    recursive_elbo as recursive_elbo,
)

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

# --- amortised analysis maps (issue 12 §2 neural analysis map, §3 amortised filter) ---
from ._amortised import (
    AmortisedAnalysis as AmortisedAnalysis,
    EquivariantEnsembleNet as EquivariantEnsembleNet,
)
from ._amortised_training import fit_amortised as fit_amortised
# --- end amortised ---
