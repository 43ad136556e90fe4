import json
import math

import jax
import numpy as np
import pytest

from filterax.bench import _calibration as cal
from filterax.bench._cli import main


@pytest.fixture(scope="module")
def expsin_results():
    # The 2-parameter problem keeps every method's compile small; one seed.
    return cal.run_calibration(["expsin"], None, [0], quick=True)


def test_every_method_runs_on_the_quick_expsin_problem(expsin_results):
    cells = expsin_results["cells"]
    assert {c["method"] for c in cells} == set(cal.list_calibration_methods())
    for cell in cells:
        s = cell["scores"]
        assert s["iterations"] >= 1 and s["forward_evals"] == cell["n_ensemble"] * s["iterations"]
        assert s["wall_seconds"] > 0 and s["compile_seconds"] is not None
        if cell["status"] != "ok":
            continue
        # The data pin A and v to ~1 %: any working method lands within 15 % of the truth
        # (1.0, 0.8); a diverged or unmoved ensemble (prior mean (2, 0)) is ~100 % off.
        assert s["err_truth"] < 0.15, cell
    # Stochastic GNKI may lose more than half its members here (seed dependent); the others not.
    assert all(c["status"] == "ok" for c in cells if c["method"] != "GNKI")


def test_json_schema(expsin_results, tmp_path):
    paths = cal.write_results(expsin_results, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == cal.CALIBRATION_SCHEMA and data["kind"] == "calibration"
    for key in ("quick", "seeds", "dtype", "device", "versions", "problems", "methods"):
        assert key in data
    assert set(data["problems"]["expsin"]) == {"description", "n_params", "n_obs", "reference"}
    for cell in data["cells"]:
        assert set(cell) == {
            "problem",
            "method",
            "seed",
            "n_ensemble",
            "status",
            "converged",
            "scores",
        }
        assert set(cell["scores"]) == set(cal.SCORES)
        for value in cell["scores"].values():
            assert value is None or (isinstance(value, int | float) and math.isfinite(value))
    for row in data["summary"]:
        assert set(row["scores"]) == set(cal.SCORES)
        assert set(row["scores"]["err_truth"]) == {"mean", "std", "n"}
    md = paths["markdown"].read_text()
    assert md.count("| expsin |") == len(cal.list_calibration_methods())


def test_etki_is_the_exact_posterior_on_the_linear_problem():
    # Moment-matched prior ensemble + square-root update with steps summing to T = 1: the
    # Kalman posterior of (m0, C0) exactly, up to round-off (float64: ~1e-14; 1e-9 leaves room
    # for the DataMisfitController's final step landing on T only to 4 eps).
    assert jax.config.jax_enable_x64
    cell = cal.run_cell(
        cal.get_calibration_problem("linear"),
        cal.get_calibration_method("ETKI"),
        3,
        quick=True,
        measure_compile=False,
    )
    s = cell["scores"]
    assert cell["status"] == "ok" and s["algorithm_time"] == pytest.approx(1.0)
    assert s["err_post_mean"] < 1e-9 and s["err_post_cov"] < 1e-9


def test_moment_matched_ensemble_has_the_prior_moments():
    prior = cal._expsin_prior()
    x = cal.moment_matched_ensemble(prior, jax.random.key(0), 7)
    np.testing.assert_allclose(x.mean(axis=0), np.asarray(prior.mean), atol=1e-12)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.asarray(prior.cov), atol=1e-12)


def test_linear_reference_posterior_matches_the_quadrature_posterior():
    # The 2-D quadrature used for expsin, checked on a linear 2-parameter problem whose
    # posterior is closed form (401^2 grid over +-8 std: accurate to ~1e-6).
    inst = cal.get_calibration_problem("linear").build(0, True)
    g = np.asarray(inst.forward.matrix)[:, :2]
    forward = cal._LinearForward(jax.numpy.asarray(g))
    prior = cal.fpr.ParameterDistribution(jax.numpy.zeros(2), jax.numpy.ones(2))
    y = inst.obs
    mean, cov = cal._grid_posterior(forward, prior, y, inst.noise_var, 401)
    precision = g.T @ (g / inst.noise_var[:, None]) + np.eye(2)
    exact_cov = np.linalg.inv(precision)
    exact_mean = exact_cov @ (g.T @ (y / inst.noise_var))
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, exact_cov, rtol=1e-4, atol=1e-7)


def test_unknown_names_are_rejected():
    with pytest.raises(KeyError, match="choose from"):
        cal.run_calibration(["nope"], None, [0], quick=True)


def test_cli_calibrate_writes_json_and_markdown(tmp_path, capsys):
    argv = ["calibrate", "--quick", "--out", str(tmp_path), "--problems", "expsin"]
    argv += ["--methods", "UKI,ETKI", "--seeds", "0", "1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "calibration" in out and "expsin" in out
    data = json.loads((tmp_path / "calibration.json").read_text())
    # Cells in the order asked for: methods as given, then seeds.
    cells = [(c["method"], c["seed"]) for c in data["cells"]]
    assert cells == [("UKI", 0), ("UKI", 1), ("ETKI", 0), ("ETKI", 1)]
    assert (tmp_path / "calibration.md").read_text().count("| expsin |") == 2
    assert main(["calibrate", "--quick", "--problems", "nope", "--out", str(tmp_path)]) == 2
