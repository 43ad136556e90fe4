"""`run` into an existing results folder: resume, refuse a different configuration, report."""

import json

import pytest

from filterax.bench._cli import main

CELL = ["--methods", "ETKF-10", "--benchmarks", "lorenz63_sakov2012", "--cycles", "80"]


def _run(out, *extra):
    return main(["run", *CELL, "--out", str(out), "--no-render", "--no-progress", *extra])


def test_a_different_configuration_is_refused_not_mixed(tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    assert _run(out, "--seeds", "0") == 0
    before = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    # other seeds, then another run length: refused with the mismatch and the flag
    for extra in (["--seeds", "1"], ["--seeds", "0", "--cycles", "90"]):
        assert _run(out, *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--force" in err and "stored with seeds [0]" in err
    assert json.loads((out / "results.json").read_text())["cells"] == before["cells"]
    # the same configuration resumes and says so
    assert _run(out, "--seeds", "0") == 0
    assert "resumed: 1 cells reused, 0 computed" in capsys.readouterr().out
    # --force replaces
    assert _run(out, "--seeds", "1", "--force") == 0
    cell = json.loads((out / "results.json").read_text())["cells"]
    assert next(iter(cell.values()))["seeds"] == [1]


def test_other_filterax_versions_are_refused(tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    assert _run(out, "--seeds", "0") == 0
    path = out / "results.json"
    results = json.loads(path.read_text())
    for cell in results["cells"].values():
        cell["versions"]["filterax-filters"] = "0.0.1"
    path.write_text(json.dumps(results))
    capsys.readouterr()
    assert _run(out, "--seeds", "0") == 2
    assert "differs in versions" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", [["-1"], ["x"]])
def test_negative_or_non_integer_seeds_are_refused(tmp_path, capsys, seeds):
    with pytest.raises(SystemExit) as exc:
        main(["run", *CELL, "--out", str(tmp_path), "--seeds", *seeds])
    assert exc.value.code == 2
    assert "seed" in capsys.readouterr().err


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    assert main(["run", *CELL, "--seeds", "0", "--out", str(out), "--no-render"]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] lorenz63_sakov2012/ETKF-10 ..." in printed
    assert "[1/1] lorenz63_sakov2012/ETKF-10 done in" in printed


def test_interrupt_is_one_line_and_keeps_finished_cells(tmp_path, capsys, monkeypatch):
    from filterax.bench import _runner

    out = tmp_path / "res"
    out.mkdir()
    real = _runner._execute_cell
    calls = []

    def interrupted(plan, budget):
        calls.append(plan.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(plan, budget)

    monkeypatch.setattr(_runner, "_execute_cell", interrupted)
    argv = ["run", "--methods", "ETKF-10,DEnKF-10", "--benchmarks", "lorenz63_sakov2012"]
    status = main([*argv, "--cycles", "80", "--seeds", "0", "--out", str(out), "--no-progress"])
    assert status == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "resume" in err
    kept = json.loads((out / "results.json").read_text())["cells"]
    assert list(kept) == [calls[0]]
