import importlib.metadata
import math

import pytest

import filterax.bench
from filterax.bench._cli import main


def test_version():
    assert filterax.bench.__version__ == importlib.metadata.version("filterax-bench") == "0.1.0"


def test_demo_filter_tracks_the_truth():
    # 420 cycles = 400 burn-in + 20 scored, one seed: long enough for the EnKF to lock on
    # (it does within ~100 cycles) and short enough for CI. Climatological rmse of L96 is ~3.6;
    # a working filter sits near 0.2-0.3, a diverged one near 3-5. 0.5 separates the two with a
    # wide margin for seed noise over only 20 scored cycles.
    res = filterax.bench.run_lorenz96_demo(n_ensemble=40, inflation=1.06, n_cycles=420, seeds=(0,))
    assert res.burn_in_cycles == 400
    assert len(res.rmse_a) == 1 and math.isfinite(res.rmse_a[0])
    assert res.rmse_a[0] < 0.5
    # the analysis must improve on the forecast, and the spread must be of the same order as the
    # error (an ensemble that collapsed would have spread << rmse)
    assert res.rmse_a[0] < res.rmse_f[0]
    assert 0.3 < res.spread_a[0] / res.rmse_a[0] < 3.0
    assert res.seconds_per_cycle > 0 and res.compile_seconds > 0


def test_demo_rejects_runs_shorter_than_burn_in():
    with pytest.raises(ValueError, match="burn-in"):
        filterax.bench.run_lorenz96_demo(n_cycles=100, seeds=(0,))


def test_cli_prints_what_it_measured(capsys):
    assert main(["demo", "--cycles", "410", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "rmse.a" in out and "published 0.22" in out and "time per cycle" in out
