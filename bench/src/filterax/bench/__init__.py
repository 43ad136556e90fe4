"""filterax.bench — benchmark harness for filterax (0.1.0: the Lorenz-96 twin-experiment demo)."""

from ._demo import DemoResult as DemoResult, run_lorenz96_demo as run_lorenz96_demo
from ._version import __version__ as __version__
