"""filterax.processes — ensemble Kalman processes for inversion and sampling."""

from ._version import __version__ as __version__

# --- processes, schedulers, state (EKI, ETKI, GNKI, TEKI, SparseInversion, EKS, UKI) ---

# --- drivers, executors, priors/constraints, mini-batching ---
