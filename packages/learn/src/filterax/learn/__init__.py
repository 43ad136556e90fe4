"""filterax.learn — see the package README for what lands here."""

from ._version import __version__ as __version__
