"""``python -m filterax.bench ...`` runs the ``filterax-bench`` command line."""

import sys

from ._cli import main

sys.exit(main())
