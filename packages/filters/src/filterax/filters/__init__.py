"""filterax.filters — sequential ensemble filters and the compiled assimilation loop."""

from ._version import __version__ as __version__

# --- deterministic square-root family (ETKF, EnSRF, DEnKF, ESTKF, ETKF_Livings) ---

# --- stochastic, finite-size and localised filters (StochasticEnKF, EnKF_N, LETKF) ---

# --- parametric filters and the assimilation loop (KF family, assimilate) ---
