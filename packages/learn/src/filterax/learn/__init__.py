"""filterax.learn — see the package README for what lands here."""

from ._version import __version__ as __version__

# --- EnKF and transport-map variational filters (issue 12 §2) ---
from ._enkf_vi import (
    VariationalEnKF as VariationalEnKF,
    VariationalEnKFState as VariationalEnKFState,
    VICycleTerms as VICycleTerms,
    enkf_localization as enkf_localization,
)
from ._enkf_vi_cost import (
    EnKFVICost as EnKFVICost,
    enkf_vi_cost as enkf_vi_cost,
    vi_cost_surface as vi_cost_surface,
)
from ._transport_map import (
    AffineTransportMap as AffineTransportMap,
    transport_map_loss as transport_map_loss,
)
