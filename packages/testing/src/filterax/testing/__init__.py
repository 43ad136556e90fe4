"""Shared, unpublished test helpers for the filterax workspace.

Every package's ``tests/conftest.py`` does ``from filterax.testing.conftest_common import *``
to get the same JAX configuration (float64, rank promotion raises) and the ``getkey`` fixture.
"""

from ._fuzz import (
    BAD_SCALARS as BAD_SCALARS,
    CLEAR_ERRORS as CLEAR_ERRORS,
    assert_loud as assert_loud,
    first_line as first_line,
)
from ._helpers import (
    load_sibling as load_sibling,
    random_ensemble as random_ensemble,
    random_spd as random_spd,
    tol as tol,
    tree_allclose as tree_allclose,
)
from ._structure import (
    class_structure_violations as class_structure_violations,
    module_structure_violations as module_structure_violations,
)
