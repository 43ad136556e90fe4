"""filterax.learn — see the package README for what lands here."""

from ._version import __version__ as __version__

# --- learning filters by variational inference: the Gaussian family (issue 12 §2) ---
from ._constant_gain import ConstantGainFilter as ConstantGainFilter
from ._dare import SteadyStateGain as SteadyStateGain, steady_state_gain as steady_state_gain
from ._expected_loglik import expected_log_likelihood as expected_log_likelihood
from ._fit_gain import (
    OfflineGainFit as OfflineGainFit,
    OnlineGainFit as OnlineGainFit,
    fit_gain_offline as fit_gain_offline,
    fit_gain_online as fit_gain_online,
    online_vi_step as online_vi_step,
)
from ._vi_loss import gaussian_vi_terms as gaussian_vi_terms, offline_vi_loss as offline_vi_loss
