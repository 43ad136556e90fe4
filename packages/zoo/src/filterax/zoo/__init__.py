"""filterax.zoo — dynamical systems, twin experiments and reference methods for filterax."""

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
from ._pde1d import (
    Darcy1D as Darcy1D,
    HeatEquation1D as HeatEquation1D,
    HeatInverse1D as HeatInverse1D,
)
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

# --- continuous-time observations ---
from ._enkbf import (
    ContinuousExperiment as ContinuousExperiment,
    ContinuousStateSpaceModel as ContinuousStateSpaceModel,
    EulerFlow as EulerFlow,
    coarsen_increments as coarsen_increments,
)

# --- reference methods (cycled methods: run them with filterax.filters.run) ---
from ._baselines import (
    BaselineDiagnostics as BaselineDiagnostics,
    Climatology as Climatology,
    OptInterp as OptInterp,
)
from ._var3d import Var3D as Var3D
from ._var4d import (
    Var4D as Var4D,
    VarDiagnostics as VarDiagnostics,
    VarState as VarState,
)
from ._envar import (
    EnVar as EnVar,
    EnVarDiagnostics as EnVarDiagnostics,
    EnVarState as EnVarState,
)
from ._enkf4d import (
    EnKF4D as EnKF4D,
    EnKF4DDiagnostics as EnKF4DDiagnostics,
    EnKF4DState as EnKF4DState,
)
from ._enkbf import EnKBF as EnKBF

# --- the control-variable solver shared by the variational methods ---
from ._variational import (
    VariationalResult as VariationalResult,
    background_sqrt as background_sqrt,
    variational_analysis as variational_analysis,
    variational_cost as variational_cost,
    variational_increment as variational_increment,
)
