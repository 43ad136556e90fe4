"""filterax.zoo — dynamical systems, twin experiments and reference setups for filterax."""

from ._version import __version__ as __version__

# --- dynamical systems and integrators ---
from ._integrators import (
    AbstractMapDynamics as AbstractMapDynamics,
    AbstractODEDynamics as AbstractODEDynamics,
    euler_step as euler_step,
    rk4_step as rk4_step,
)
from ._ks import KuramotoSivashinsky as KuramotoSivashinsky
from ._linear import (
    LinearAdvection as LinearAdvection,
    LinearModel as LinearModel,
    random_process_covariance as random_process_covariance,
)
from ._lorenz import (
    Lorenz63 as Lorenz63,
    Lorenz96 as Lorenz96,
    Lorenz96TwoScale as Lorenz96TwoScale,
)
from ._noise_wrappers import StochasticDynamics as StochasticDynamics
from ._toy import (
    BrownianMotion as BrownianMotion,
    DoubleWell as DoubleWell,
    OrnsteinUhlenbeck as OrnsteinUhlenbeck,
    Sinusoid as Sinusoid,
)

# --- state-space models and twin experiments ---
from . import presets as presets
from ._ssm import (
    StateSpaceModel as StateSpaceModel,
    TwinExperiment as TwinExperiment,
)

# --- reference methods ---
from ._baselines import (
    BaselineDiagnostics as BaselineDiagnostics,
    Climatology as Climatology,
    OptInterp as OptInterp,
)
