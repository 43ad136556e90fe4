"""Bad bench inputs end in one line naming the file or flag and the fix, before any work.

Each CLI case asserts the exit status 2 and a single ``filterax-bench <command>: error: ...``
line on stderr, and (with the `no_compute` fixture) that no cell was computed and nothing was
written. Issue "No silent wrong answers", defect class 9.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import pytest

import filterax.bench as fb
import filterax.filters as fxf
import filterax.primitives as fxp
from filterax.bench import _cli, _files, _registry, _runner, _tune
from filterax.bench._cli import main
from filterax.zoo import Lorenz96, StateSpaceModel

BENCH = "test_tiny_l96"
METHOD = "test-ETKF-6"
CELL = ["--methods", METHOD, "--benchmarks", BENCH]


def tiny_model() -> StateSpaceModel:
    # Lorenz-96 with 8 sites; nothing here runs it to the end of a cell.
    return StateSpaceModel(
        dynamics=Lorenz96(n=8, forcing=8.0, dt=0.05),
        obs_op=fxp.IdentityObs(),
        obs_noise=1.0,
        dt_obs=0.05,
        x0_mean=jnp.full(8, 8.0).at[0].add(1.0),
        x0_cov=1.0,
        burn_in=0.5,
        name="tiny_l96",
    )


@pytest.fixture
def tiny(registry_snapshot):
    """A tiny benchmark and an ETKF configuration registered for the test."""
    bench = fb.register_benchmark(
        fb.Benchmark(name=BENCH, model=tiny_model, n_cycles=40, seeds=(0, 1))
    )
    method = fb.register_method(
        fb.MethodConfig(
            name=METHOD,
            family="ETKF",
            filter=fxf.ETKF(),
            n_ensemble=6,
            inflation=1.05,
            tune_grid={"inflation": (1.0, 1.05, 1.1)},
        )
    )
    return bench, method


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a scoring or tuning cell starts."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a cell was computed before the inputs were checked")

    monkeypatch.setattr(_runner, "_execute_cell", forbidden)
    monkeypatch.setattr(_tune, "evaluate_grid", forbidden)


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI; assert status 2 and ONE ``error:`` line on stderr; return that line."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"filterax-bench {argv[0]}: error: "), err
    return lines[0]


def tuned_file(path: Path, values: dict, key: str = f"{BENCH}/{METHOD}") -> Path:
    entry = {
        "values": values,
        "date": "2026-01-01",
        "grid": {k: [v] for k, v in values.items()},
        "tuning_seeds": [1000],
        "n_cycles": 40,
        "rmse_a": 0.3,
        "margin": 0.02,
        "rule": "hand-written",
    }
    path.write_text(json.dumps({"schema": 1, "settings": {key: entry}}))
    return path


# --- tune --grid ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, says",
    [
        ("inflation=1.0,", "an empty value"),
        ("inflation=,1.0", "an empty value"),
        ("inflation=a,b", "'a' is not a number"),
        ("inflation=", "no values"),
        ("=1,2", "write NAME=START:STOP:STEP or NAME=V1,V2"),
        ("inflation", "write NAME=START:STOP:STEP or NAME=V1,V2"),
        ("inflation=nan,1.0", "nan is not a finite number"),
        ("inflation=1.0,inf", "inf is not a finite number"),
        ("inflation=1:2", "a range is START:STOP:STEP"),
        ("inflation=1:2:0", "the step must be > 0; got 0"),
        ("inflation=1:2:-0.1", "the step must be > 0; got -0.1"),
        ("inflation=2:1:0.1", "STOP 1 is below START 2"),
        ("inflation=1:x:0.1", "'x' is not a number"),
        # round() used to turn this into 1, 1.333, 1.667, 2 without a word
        ("inflation=1:2:0.3", "the step 0.3 does not divide"),
        ("inflation=1:2:0.00001", "at most 1000"),
    ],
)
def test_tune_refuses_malformed_grid_ranges(tiny, no_compute, capsys, tmp_path, spec, says):
    into = tmp_path / "tuned.json"
    line = cli_error(capsys, ["tune", *CELL, "--grid", spec, "--into", str(into)])
    assert f"--grid {spec!r}" in line and says in line
    assert not into.exists()


def test_tune_refuses_a_grid_name_given_twice(tiny, no_compute, capsys, tmp_path):
    argv = ["tune", *CELL, "--grid", "inflation=1.0,1.1", "inflation=1.2"]
    line = cli_error(capsys, [*argv, "--into", str(tmp_path / "t.json")])
    assert "inflation is given twice" in line


def test_grid_ranges_are_inclusive_and_exact():
    grid = _cli._parse_grid(["inflation=1.0:1.1:0.05", "lag=1,2, 4"])
    assert grid == {"inflation": (1.0, 1.05, 1.1), "lag": (1.0, 2.0, 4.0)}


@pytest.mark.parametrize(
    "argv, says",
    [
        # the tiny method's hyper-parameters: inflation only
        ([*CELL, "--grid", "bogus=1,2"], "test-ETKF-6 has no hyper-parameter 'bogus'"),
        # a Kalman filter has nothing to tune: inflation used to be swept and ignored
        (
            ["--methods", "KalmanFilter", "--benchmarks", "linear_bach2025"]
            + ["--grid", "inflation=1,2"],
            "KalmanFilter has no hyper-parameter 'inflation' (its hyper-parameters: none)",
        ),
    ],
)
def test_tune_refuses_unknown_grid_name(tiny, no_compute, capsys, tmp_path, argv, says):
    into = tmp_path / "tuned.json"
    line = cli_error(capsys, ["tune", *argv, "--into", str(into)])
    assert "tuning grid of" in line and says in line
    assert not into.exists()


def test_tune_lists_the_valid_grid_names(tiny, no_compute, capsys, tmp_path):
    argv = ["--methods", "LETKF-10", "--benchmarks", "lorenz96_sakov2008", "--grid", "radius=2"]
    line = cli_error(capsys, ["tune", *argv, "--into", str(tmp_path / "t.json")])
    assert "(its hyper-parameters: inflation, localization_radius)" in line


@pytest.mark.parametrize(
    "method, bench, spec, says",
    [
        (METHOD, BENCH, "inflation=1.05,-1", "MultiplicativeInflator.factor must be strictly pos"),
        ("LETKF-10", "lorenz96_sakov2008", "localization_radius=4,0", "LETKF(radius=...) must be"),
        ("EnKF_N-10", "lorenz63_sakov2012", "xN=1,0", "EnKF_N(xN=...) must be strictly positive"),
        ("ExtendedKF", "lorenz63_sakov2012", "inflation=2,0", "ExtendedKF.infl must be strictly"),
        # a static lag of 1.5 used to be truncated to 1
        ("iEnKS-10", "lorenz63_sakov2012", "lag=1,1.5", "lag must be a whole number; got 1.5"),
        ("iEnKS-10", "lorenz63_sakov2012", "n_iter=0", "iEnKS: n_iter must be a Python int >= 1"),
    ],
)
def test_tune_refuses_invalid_grid_value(
    tiny, no_compute, capsys, tmp_path, method, bench, spec, says
):
    into = tmp_path / "tuned.json"
    argv = ["tune", "--methods", method, "--benchmarks", bench, "--grid", spec]
    line = cli_error(capsys, [*argv, "--into", str(into)])
    name, bad = spec.split("=")[0], spec.split("=")[1].split(",")[-1]  # the bad value is last
    assert f"{name}={float(bad)} is not allowed: " in line and says in line
    assert not into.exists()


def test_tune_refuses_invalid_grid_before_computing_any_cell(tiny, no_compute, capsys, tmp_path):
    # The second cell's grid is bad: the first cell must not have been tuned meanwhile.
    argv = ["--methods", METHOD, "KalmanFilter", "--benchmarks", BENCH, "linear_bach2025"]
    line = cli_error(
        capsys, ["tune", *argv, "--grid", "inflation=1,2", "--into", str(tmp_path / "t.json")]
    )
    assert "KalmanFilter has no hyper-parameter 'inflation'" in line


def test_tune_library_refuses_bad_grids_and_stores_nothing(tiny, no_compute, tmp_path):
    bench, method = tiny
    into = tmp_path / "tuned.json"
    with pytest.raises(ValueError, match="has no hyper-parameter 'bogus'"):
        fb.tune(method, bench, {"bogus": (1.0,)}, (1000,), n_cycles=20, into=into)
    with pytest.raises(ValueError, match=r"inflation=-1\.0 is not allowed"):
        fb.tune(method, bench, {"inflation": (1.0, -1.0)}, (1000,), n_cycles=20, into=into)
    with pytest.raises(ValueError, match="finite real numbers"):
        fb.tune(method, bench, {"inflation": (1.0, float("nan"))}, (1000,), n_cycles=20)
    with pytest.raises(ValueError, match="has no values"):
        fb.tune(method, bench, {"inflation": ()}, (1000,), n_cycles=20)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        fb.tune(method, bench, None, (1000,), n_cycles=20, margin=-0.1)
    assert not into.exists() and fb.get_method(METHOD).tuned == {}


def test_builtin_tune_grids_pass_validation():
    # The validation must not refuse what the package itself ships.
    for name in fb.list_methods():
        method = fb.get_method(name)
        for bench_name in method.benchmarks:
            bench = fb.get_benchmark(bench_name)
            for param, values in method.tune_grid.items():
                for value in values:
                    method.check_params({param: value}, bench)


def test_packaged_tuned_settings_pass_validation():
    path = _registry.default_tuned_path()
    settings = _registry.read_tuned(path)
    assert settings
    _registry.check_tuned(settings, path)


# --- run --tuned ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, says",
    [
        ({"bogus": 1.0}, "test-ETKF-6 has no hyper-parameter 'bogus' (its hyper-parameters: "),
        ({"inflation": 1.1, "n_ensemble": 40}, "no hyper-parameter 'n_ensemble'"),
    ],
)
def test_run_tuned_refuses_unknown_stored_name(tiny, no_compute, capsys, tmp_path, values, says):
    path = tuned_file(tmp_path / "old.json", values)
    line = cli_error(capsys, ["run", *CELL, "--tuned", str(path), "--out", str(tmp_path / "o")])
    assert f"{path}: entry '{BENCH}/{METHOD}': " in line and says in line
    assert "correct or delete the entry" in line
    assert fb.get_method(METHOD).tuned == {}  # nothing applied


@pytest.mark.parametrize(
    "values, says",
    [
        ({"inflation": -1.0}, "inflation=-1.0 is not allowed: MultiplicativeInflator.factor"),
        ({"inflation": 0}, "inflation=0 is not allowed: MultiplicativeInflator.factor"),
        ({"inflation": None}, "inflation=None is not allowed: a hyper-parameter value is a finite"),
        ({"inflation": [1.1]}, "inflation=[1.1] is not allowed"),
        ({"inflation": "big"}, "inflation='big' is not allowed"),
    ],
)
def test_run_tuned_refuses_invalid_stored_value(tiny, no_compute, capsys, tmp_path, values, says):
    path = tuned_file(tmp_path / "edited.json", values)
    line = cli_error(capsys, ["run", *CELL, "--tuned", str(path), "--out", str(tmp_path / "o")])
    assert f"{path}: entry '{BENCH}/{METHOD}': " in line and says in line
    assert fb.get_method(METHOD).tuned == {}
    assert not (tmp_path / "o").exists()


def test_run_tuned_refuses_entries_of_unregistered_methods(tiny, no_compute, capsys, tmp_path):
    path = tuned_file(tmp_path / "t.json", {"inflation": 1.1}, key=f"{BENCH}/ETKF-2O")
    line = cli_error(capsys, ["run", *CELL, "--tuned", str(path), "--out", str(tmp_path / "o")])
    assert f"{path}: entry '{BENCH}/ETKF-2O': no method named 'ETKF-2O' is registered" in line


def test_run_tuned_accepts_a_valid_file(tiny, tmp_path):
    path = tuned_file(tmp_path / "good.json", {"inflation": 1.2})
    assert fb.load_tuned(path)[f"{BENCH}/{METHOD}"].values == {"inflation": 1.2}
    assert fb.get_method(METHOD).params(BENCH)["inflation"] == 1.2


def test_load_tuned_refuses_invalid_stored_value(tiny, tmp_path):
    path = tuned_file(tmp_path / "edited.json", {"inflation": -1.0})
    with pytest.raises(ValueError, match=f"{path}: entry '{BENCH}/{METHOD}': inflation=-1.0"):
        fb.load_tuned(path)
    assert fb.get_method(METHOD).tuned == {}


# --- corrupt files --------------------------------------------------------------------------

CORRUPT_JSON = [
    ("{bad", "is not valid JSON (Expecting property name"),
    ("", "is not valid JSON (Expecting value at line 1, column 1)"),
    ("[1, 2]", "found a JSON list"),
    (b"\xff\xfe\x00", "(not UTF-8 text)"),
]


@pytest.mark.parametrize(
    "content, says",
    [
        *CORRUPT_JSON,
        ('{"schema": 7, "cells": {}}', "unknown results schema 7"),
        ('{"schema": 1}', '"cells" must be an object'),
        ('{"schema": 1, "cells": {"a/b": 3}}', "cell 'a/b' is not a results cell"),
        ('{"schema": 1, "cells": {"a/b": {"rmse_a": 1}}}', "cell 'a/b' is not a results cell"),
    ],
)
@pytest.mark.parametrize("command", ["run", "report"])
def test_corrupt_results_json_is_one_line_error(
    tiny, no_compute, capsys, tmp_path, content, says, command
):
    out = tmp_path / "out"
    out.mkdir()
    results = out / "results.json"
    data = content if isinstance(content, bytes) else content.encode()
    results.write_bytes(data)
    argv = [*CELL, "--no-progress"] if command == "run" else []
    line = cli_error(capsys, [command, *argv, "--out", str(out)])
    assert str(results) in line and says in line
    assert "delete it (or move it away) and rerun `filterax-bench run`" in line
    assert results.read_bytes() == data  # never overwritten
    assert sorted(os.listdir(out)) == ["results.json"]


def test_report_refuses_empty_results(capsys, tmp_path):
    (tmp_path / "results.json").write_text('{"schema": 1, "cells": {}}')
    line = cli_error(capsys, ["report", "--out", str(tmp_path)])
    assert f"{tmp_path / 'results.json'} holds no results" in line
    assert f"`filterax-bench run --out {tmp_path}`" in line
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no empty leaderboard written


def test_report_without_results_names_the_fix(capsys, tmp_path):
    line = cli_error(capsys, ["report", "--out", str(tmp_path)])
    assert f"no {tmp_path / 'results.json'}; write it with `filterax-bench run" in line


@pytest.mark.parametrize(
    "content, says",
    [
        *CORRUPT_JSON,
        ('{"schema": 2, "settings": {}}', "unknown tuned-settings schema 2"),
        ('{"schema": 1, "settings": []}', '"settings" must be an object'),
        ('{"schema": 1, "settings": {"nobench": {}}}', "entry 'nobench' is not named"),
        ('{"schema": 1, "settings": {"a/b": {"date": "x"}}}', "entry 'a/b': the entry has no"),
        (
            '{"schema": 1, "settings": {"a/b": {"values": {"inflation": 1}, "date": "x", '
            '"tuning_seeds": "1000"}}}',
            "'tuning_seeds' must be a list of ints",
        ),
    ],
)
def test_corrupt_tuned_file_is_one_line_error(tiny, no_compute, capsys, tmp_path, content, says):
    path = tmp_path / "tuned.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = cli_error(capsys, ["run", *CELL, "--tuned", str(path), "--out", str(tmp_path / "o")])
    assert str(path) in line and says in line
    assert "fix or delete it (`filterax-bench tune --into FILE` writes a new one)" in line


def test_missing_tuned_file_is_one_line_error(tiny, no_compute, capsys, tmp_path):
    path = tmp_path / "nope.json"
    line = cli_error(capsys, ["run", *CELL, "--tuned", str(path)])
    assert f"--tuned {path}: no such file" in line


# --- output locations -----------------------------------------------------------------------


def test_out_checked_before_any_cell(tiny, no_compute, capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, says in [
        (a_file, f"--out {a_file}: {a_file} is a file, not a directory"),
        (tmp_path / "typo" / "out", f"the directory {tmp_path / 'typo'} does not exist"),
        (a_file / "out", f"{a_file} is a file, not a directory"),
    ]:
        line = cli_error(capsys, ["run", *CELL, "--out", str(out), "--no-progress"])
        assert says in line
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    line = cli_error(capsys, ["calibrate", "--quick", "--out", str(a_file)])
    assert f"--out {a_file}: {a_file} is a file, not a directory" in line


def test_run_library_checks_out_before_any_cell(tiny, no_compute, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        fb.run([METHOD], [BENCH], out=a_file, progress=False)


def test_unwritable_out_checked_before_any_cell(tiny, no_compute, capsys, tmp_path, monkeypatch):
    # Simulated, so that it runs as root too (root writes into a chmod 555 directory).
    monkeypatch.setattr(_files, "_unwritable", lambda directory: "Read-only file system")
    line = cli_error(capsys, ["run", *CELL, "--out", str(tmp_path)])
    assert f"--out {tmp_path}: {tmp_path} is not writable (Read-only file system)" in line
    line = cli_error(capsys, ["tune", *CELL, "--into", str(tmp_path / "t.json")])
    assert f"--into {tmp_path / 't.json'}: {tmp_path} is not writable" in line


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only dirs"
)
def test_read_only_out_checked_before_any_cell(tiny, no_compute, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = cli_error(capsys, ["run", *CELL, "--out", str(ro)])
        assert f"--out {ro}: {ro} is not writable" in line
        line = cli_error(capsys, ["run", *CELL, "--out", str(ro / "sub")])
        assert f"cannot create {ro / 'sub'}: {ro} is not writable" in line
    finally:
        ro.chmod(0o755)


def test_tune_checks_into_before_any_cell(tiny, no_compute, capsys, tmp_path):
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{")
    for flag, target, says in [
        ("--into", a_dir, f"--into {a_dir} is a directory, not a file"),
        ("--into", tmp_path / "typo" / "t.json", f"the directory {tmp_path / 'typo'} does not"),
        ("--into", corrupt, f"{corrupt} is not valid JSON"),  # it is read back to merge
        ("--out", corrupt, f"--out {corrupt}: {corrupt} is a file, not a directory"),
    ]:
        line = cli_error(capsys, ["tune", *CELL, "--grid", "inflation=1,1.1", flag, str(target)])
        assert says in line
    assert sorted(os.listdir(tmp_path)) == ["a_dir", "corrupt.json"]
    assert os.listdir(a_dir) == [] and corrupt.read_text() == "{"


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    with pytest.raises(ValueError, match="Out of range float"):
        _files.write_json_atomic(target, {"x": float("nan")})
    assert os.listdir(tmp_path) == []  # not even a temporary file

    target.write_text("old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        _files.write_json_atomic(target, {"x": 1.0})
    assert os.listdir(tmp_path) == ["results.json"] and target.read_text() == "old"


def test_output_checks_leave_no_probe_file(tmp_path):
    _files.check_output_dir(tmp_path)
    _files.check_output_dir(tmp_path / "new")
    _files.check_output_file(tmp_path / "t.json", flag="--into")
    assert os.listdir(tmp_path) == []


def test_failed_run_write_leaves_no_stray_files(tiny, capsys, tmp_path, monkeypatch):
    # A cell "finishes" (without computing) and writing results.json fails: one line, status 1,
    # and the out directory holds no temporary file.
    monkeypatch.setattr(_runner, "_execute_cell", lambda plan, budget: plan.identity())

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(_files.os, "replace", failing_replace)
    out = tmp_path / "out"
    status = main(["run", *CELL, "--cycles", "20", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert err[0] == (
        f"filterax-bench run: error: cannot access {out / 'results.json'}: No space left on device"
    )
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--n-ensemble", "1"], "n_ensemble must be an integer >= 2"),
        (["--cycles", "-5"], "n_cycles must be an integer above the burn-in"),
        (["--inflation", "-1"], "inflation must be strictly positive"),
        (["--inflation", "nan"], "inflation must be strictly positive"),
    ],
)
def test_demo_refuses_bad_arguments_in_one_line(capsys, argv, says):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_learn_refuses_an_unknown_pattern_and_names_the_choices(capsys, tmp_path):
    line = cli_error(capsys, ["learn", "--patterns", "Z_unknown", "--out", str(tmp_path)])
    assert "Z_unknown" in line and "A_forcing" in line and "C_letkf" in line
    assert not (tmp_path / "learn.json").exists()


def test_learn_patterns_library_refuses_an_unknown_pattern():
    with pytest.raises(KeyError, match="choose from"):
        fb.run_learning_patterns(["nope"])
