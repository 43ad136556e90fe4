"""The optimal-transport rows (`ETPF-100`, `LNETF-20`) build and track on their benchmarks."""

from __future__ import annotations

import math

import pytest

import filterax.bench as fb


@pytest.mark.parametrize(
    ("row", "benchmark", "n_cycles", "bound"),
    # Short runs just past each benchmark's burn-in (64 and 400 cycles) from the preset's
    # initial ensemble: both filters must track. Bounds: the observation noise std (sqrt 2 on
    # L63, 1 on L96), far below the climatological rmse (~7.9 on L63, ~3.6 on L96) that a
    # lost filter would score.
    [
        ("ETPF-100", "lorenz63_sakov2012", 120, math.sqrt(2.0)),
        ("LNETF-20", "lorenz96_sakov2008", 450, 1.0),
    ],
)
def test_transport_row_tracks(row, benchmark, n_cycles, bound, tmp_path):
    cell = fb.run([row], [benchmark], seeds=[0], out=tmp_path, progress=False, n_cycles=n_cycles)[
        "cells"
    ][f"{benchmark}/{row}"]
    assert not cell["diverged"]
    assert cell["rmse_a"]["mean"] < bound
