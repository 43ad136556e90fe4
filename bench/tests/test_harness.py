"""Registry, runner, tuning and CLI of filterax-bench, on tiny problems."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.bench as fb
import filterax.filters as fxf
import filterax.primitives as fxp
from filterax.bench import _registry, _runner
from filterax.bench._cli import main
from filterax.zoo import Lorenz96, StateSpaceModel, presets

# --- tiny problems ------------------------------------------------------------------------

N_X = 8
N_CYCLES = 60
BURN_CYCLES = 10  # burn_in 0.5 time units / dt_obs 0.05


def tiny_model() -> StateSpaceModel:
    # Lorenz-96 with 8 sites: chaotic, fully observed; the filter locks on within ~10 cycles.
    return StateSpaceModel(
        dynamics=Lorenz96(n=N_X, forcing=8.0, dt=0.05),
        obs_op=fxp.IdentityObs(),
        obs_noise=1.0,
        dt_obs=0.05,
        x0_mean=jnp.full(N_X, 8.0).at[0].add(1.0),
        x0_cov=1.0,
        burn_in=0.5,
        name="tiny_l96",
    )


def tiny_benchmark(name: str = "test_tiny_l96", **kw) -> fb.Benchmark:
    return fb.Benchmark(
        name=name,
        model=tiny_model,
        n_cycles=N_CYCLES,
        seeds=(0, 1),
        references={"ETKF N=6 infl=1.05": 0.3},
        citation="test problem",
        coordinates=fb.grid_coordinates,
        distance=fb.periodic_distance(N_X),
        **kw,
    )


def tiny_method(name: str = "test-ETKF-6", inflation: float = 1.05, **kw) -> fb.MethodConfig:
    return fb.MethodConfig(
        name=name,
        family="ETKF",
        filter=fxf.ETKF(),
        n_ensemble=6,
        inflation=inflation,
        reference_labels={"test_tiny_l96": "ETKF N=6 infl=1.05"},
        **kw,
    )


def _numbers_only(obj, path="$"):
    """Every leaf of the results JSON is a number, string, bool or null (never NaN text)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _numbers_only(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _numbers_only(v, f"{path}[{i}]")
    else:
        assert obj is None or isinstance(obj, bool | int | float | str), path
        if isinstance(obj, float):
            assert math.isfinite(obj), path


# --- registries ---------------------------------------------------------------------------


def test_registry_round_trip(registry_snapshot):
    bench = fb.register_benchmark(tiny_benchmark())
    method = fb.register_method(tiny_method())
    assert fb.get_benchmark("test_tiny_l96") is bench
    assert fb.get_method("test-ETKF-6") is method
    assert "test_tiny_l96" in fb.list_benchmarks() and "test-ETKF-6" in fb.list_methods()
    with pytest.raises(ValueError, match="already registered"):
        fb.register_method(tiny_method())
    replaced = fb.register_method(tiny_method(inflation=1.1), overwrite=True)
    assert fb.get_method("test-ETKF-6") is replaced and replaced.params()["inflation"] == 1.1
    with pytest.raises(KeyError, match="no method named"):
        fb.get_method("no-such-method")
    with pytest.raises(ValueError, match="'/'"):
        tiny_method(name="a/b")
    # the model factory is called once and cached
    assert bench.ssm is bench.ssm and bench.burn_in() == BURN_CYCLES


def test_params_precedence_defaults_settings_tuned(registry_snapshot, tmp_path):
    m = tiny_method(settings={"test_tiny_l96": {"inflation": 1.2}}, hyper={"xN": 2.0})
    assert m.params()["inflation"] == 1.05
    assert m.params("test_tiny_l96") == {"inflation": 1.2, "xN": 2.0}
    setting = fb.TunedSetting(
        values={"inflation": 1.3},
        date="2025-01-02",
        grid={"inflation": (1.0, 1.3)},
        tuning_seeds=(1000,),
        n_cycles=60,
        rmse_a=0.25,
    )
    assert fb.TunedSetting.from_json(json.loads(json.dumps(setting.to_json()))) == setting
    # stored before the method registers: applied on registration
    path = fb.save_tuned(tmp_path / "tuned.json", {"test_tiny_l96/test-ETKF-6": setting})
    fb.load_tuned(path)
    registered = fb.register_method(m)
    assert registered.params("test_tiny_l96")["inflation"] == 1.3
    assert registered.source("test_tiny_l96") == "tuned 2025-01-02"
    assert registered.params("other")["inflation"] == 1.05


def test_every_filter_is_registered():
    # every concrete sequential filter exported by filterax.filters has a method configuration
    exported = {
        name
        for name, obj in vars(fxf).items()
        if inspect.isclass(obj)
        and issubclass(obj, fxp.AbstractSequentialFilter)
        and not inspect.isabstract(obj)
    }
    families = {fb.get_method(n).family for n in fb.list_methods()}
    assert exported, "filterax.filters exports no filters?"
    assert exported <= families, f"unregistered filters: {sorted(exported - families)}"


def test_reference_labels_exist_and_settings_are_on_known_benchmarks():
    for name in fb.list_methods():
        m = fb.get_method(name)
        for bench, label in m.reference_labels.items():
            assert label in fb.get_benchmark(bench).references, (name, bench, label)
        for bench in m.benchmarks:
            fb.get_benchmark(bench)


def test_standard_suite_is_the_parity_table():
    # (benchmark, family, N_e, xN) -> published rmse.a of the filters issue, section 4
    expected = {
        ("lorenz63_sakov2012", "ETKF", 10, None): 0.60,
        ("lorenz63_sakov2012", "EnKF_N", 10, None): 0.54,
        ("lorenz63_sakov2012", "StochasticEnKF", 100, None): 0.56,
        ("lorenz96_sakov2008", "ETKF", 20, None): 0.20,
        ("lorenz96_sakov2008", "ETKF", 40, None): 0.18,
        ("lorenz96_sakov2008", "DEnKF", 40, None): 0.18,
        ("lorenz96_sakov2008", "StochasticEnKF", 40, None): 0.22,
        ("lorenz96_sakov2008", "EnKF_N", 20, 2.0): 0.19,
        ("lorenz96_sakov2008", "LETKF", 7, None): 0.22,
        ("ks_bocquet2019", "LETKF", 16, None): 0.11,
    }
    found = {}
    for bench, method in _registry.resolve_cells("standard"):
        key = (bench.name, method.family, method.n_ensemble, method.params(bench).get("xN"))
        found[key] = bench.reference(method.reference_label(bench.name))
    for key, value in expected.items():
        assert found.get(key) == value, key
    benches = {b for b, *_ in found}
    assert {"lorenz96_every_other", "lorenz96_small_ensemble"} <= benches
    small = [m for b, m in _registry.resolve_cells("standard") if b.name.endswith("small_ensemble")]
    assert all(m.n_ensemble <= 10 for m in small) and any(m.context for m in small)
    # LETKF N=7 uses DAPPER's loc_rad 4, infl 1.04 and rotation
    letkf = fb.get_method("LETKF-7")
    assert letkf.params("lorenz96_sakov2008") == {"inflation": 1.04, "localization_radius": 4.0}
    assert letkf.rotate


def test_quick_suite_contents():
    cells = _runner.plan_cells(suite="quick")
    names = {(p.benchmark.name, p.method.family) for p in cells}
    for family in ("ETKF", "StochasticEnKF", "DEnKF", "EnKF_N"):
        assert ("lorenz63_sakov2012", family) in names
        assert ("lorenz96_sakov2008", family) in names
    assert ("lorenz96_sakov2008", "LETKF") in names
    assert all(p.seeds == (0, 1, 2) for p in cells)


# --- runner -------------------------------------------------------------------------------


def test_tiny_benchmark_end_to_end_matches_numpy(registry_snapshot, tmp_path):
    bench, method = tiny_benchmark(), tiny_method()
    results = fb.run([method], [bench], seeds=[0, 1], out=tmp_path, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == {k: v for k, v in results.items() if k != "last_run"}
    assert on_disk["schema"] == 1
    _numbers_only(on_disk)
    cell = on_disk["cells"]["test_tiny_l96/test-ETKF-6"]
    assert cell["method"] == "test-ETKF-6" and cell["benchmark"] == "test_tiny_l96"
    assert cell["family"] == "ETKF"
    assert cell["seeds"] == [0, 1] and cell["n_cycles"] == N_CYCLES
    assert cell["burn_in_cycles"] == BURN_CYCLES
    assert cell["config"]["n_ensemble"] == 6 and cell["config"]["inflation"] == 1.05
    assert cell["reference"] == {
        "rmse_a": 0.3,
        "label": "ETKF N=6 infl=1.05",
        "citation": "test problem",
    }
    assert cell["seconds_per_cycle"] > 0 and cell["compile_seconds"] > 0
    assert cell["device"] and "jax" in cell["versions"] and "timestamp" in cell
    assert not cell["diverged"] and cell["diverged_seeds"] == []

    # Independent recomputation in numpy from the analysis ensembles.
    model = bench.ssm
    series = []
    for seed in (0, 1):
        k_truth, k_ens, k_da = fb.seed_keys(seed)
        twin = model.simulate(k_truth, N_CYCLES)
        res = fxf.assimilate(
            fxf.ETKF(),
            model.dynamics,
            model.obs_op,
            model.obs_noise,
            model.initial_ensemble(k_ens, 6),
            twin.observations,
            twin.times,
            key=k_da,
            inflator=fxp.MultiplicativeInflator(1.05),
            save="ensembles",
        )
        all_ens, all_truth = np.asarray(res.ensembles), np.asarray(twin.truth)
        series.append(np.sqrt(np.mean((all_ens.mean(1) - all_truth) ** 2, axis=-1)))
        ens, truth = all_ens[BURN_CYCLES:], all_truth[BURN_CYCLES:]  # (T, N_e, N_x), (T, N_x)
        n_e = ens.shape[1]
        rmse_a = np.mean(np.sqrt(np.mean((ens.mean(1) - truth) ** 2, axis=-1)))
        spread = np.mean(np.sqrt(np.mean(ens.var(axis=1, ddof=1), axis=-1)))
        pair = np.abs(ens[:, :, None, :] - ens[:, None, :, :]).sum(axis=(1, 2))
        crps = np.mean(np.abs(ens - truth[:, None, :]).mean(1) - pair / (2 * n_e * (n_e - 1)))
        ranks = (ens < truth[:, None, :]).sum(axis=1).ravel()
        counts = np.bincount(ranks, minlength=n_e + 1)
        expected_n = counts.sum() / counts.size
        chi2 = np.sum((counts - expected_n) ** 2) / expected_n
        loglik = np.mean(np.asarray(res.log_likelihood)[BURN_CYCLES:])
        # vmapped vs eager evaluation differ only by float64 round-off
        tol = dict(rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(cell["rmse_a"]["per_seed"][seed], rmse_a, **tol)
        np.testing.assert_allclose(cell["spread_a"]["per_seed"][seed], spread, **tol)
        np.testing.assert_allclose(cell["crps"]["per_seed"][seed], crps, **tol)
        np.testing.assert_allclose(cell["log_likelihood"]["per_seed"][seed], loglik, **tol)
        np.testing.assert_allclose(cell["rank_chi2"]["per_seed"][seed], chi2, **tol)
    per_seed = cell["rmse_a"]["per_seed"]
    assert cell["rmse_a"]["mean"] == pytest.approx(np.mean(per_seed), rel=1e-12)
    assert cell["rmse_a"]["std"] == pytest.approx(np.std(per_seed, ddof=1), rel=1e-12)
    # a working filter: well below climatology, and the analysis beats the forecast
    assert cell["rmse_a"]["mean"] < 0.5 * cell["climatology"]["mean"]
    assert cell["rmse_a"]["mean"] < cell["rmse_f"]["mean"]
    # series: seed-mean rmse per analysis time (60 points <= 500, so not downsampled)
    assert len(cell["series"]["rmse_a"]) == N_CYCLES == len(cell["series"]["times"])
    np.testing.assert_allclose(cell["series"]["times"], np.asarray(twin.times), rtol=1e-12)
    np.testing.assert_allclose(cell["series"]["rmse_a"], np.mean(series, axis=0), rtol=1e-8)
    hist = cell["series"]["rank_histogram"]
    assert len(hist) == n_e + 1 and sum(hist) == 2 * (N_CYCLES - BURN_CYCLES) * N_X


def test_series_downsampling_block_means():
    values = np.arange(1200, dtype=float)
    vals, times = _runner._downsample(values, values * 0.1)
    assert len(vals) <= _runner.MAX_SERIES_POINTS
    assert vals[0] == pytest.approx(np.mean(values[:3])) and times[0] == pytest.approx(0.1)


def test_seed_chunking_gives_the_same_scores(registry_snapshot, tmp_path):
    bench, method = tiny_benchmark(), tiny_method()
    plan = _runner.CellPlan(bench, method, (0, 1, 2), 30)
    whole = _runner.score_cell(plan)
    chunked = _runner.score_cell(plan, memory_budget=1)  # one seed per call, last one padded
    for key in ("rmse_a", "spread_a", "crps", "rank_chi2", "log_likelihood"):
        np.testing.assert_allclose(
            chunked[key]["per_seed"], whole[key]["per_seed"], rtol=1e-9, err_msg=key
        )


class _NoUpdate(fxp.AbstractSequentialFilter):
    """Returns the forecast untouched: the ensemble drifts off the truth (filter divergence)."""

    def analysis(self, key, forecast, obs, obs_op, obs_noise, **context):
        return fxp.Analysis(forecast, jnp.zeros((), forecast.dtype))


class _BlowUp(fxp.AbstractSequentialFilter):
    """Produces a non-finite ensemble after the first few cycles."""

    def analysis(self, key, forecast, obs, obs_op, obs_noise, **context):
        blown = jnp.where(jnp.max(jnp.abs(forecast)) > 0, jnp.inf, 0.0) * forecast
        return fxp.Analysis(blown, jnp.zeros((), forecast.dtype))


def test_divergence_flag_fires_on_forced_blow_up(registry_snapshot, tmp_path):
    bench = tiny_benchmark()
    methods = [
        fb.MethodConfig(name="no-update", family="none", filter=_NoUpdate(), n_ensemble=6),
        fb.MethodConfig(name="blow-up", family="none", filter=_BlowUp(), n_ensemble=6),
    ]
    results = fb.run(methods, [bench], seeds=[0, 1], out=tmp_path, progress=False)
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    _numbers_only(cells)
    drift = cells["test_tiny_l96/no-update"]
    assert drift["diverged"] and drift["diverged_seeds"] == [0, 1]
    # finite but useless: above half the climatological rmse
    assert drift["rmse_a"]["mean"] > 0.5 * drift["climatology"]["mean"]
    blown = cells["test_tiny_l96/blow-up"]
    assert blown["diverged"] and blown["diverged_seeds"] == [0, 1]
    assert blown["rmse_a"]["per_seed"] == [None, None] and blown["rmse_a"]["mean"] is None
    assert results["cells"] == cells  # (a working filter is not flagged: see the e2e test)


def _offset_runner(keys, benchmark, twin, params):
    # a cheap stand-in method (no filter to compile): the truth plus the "inflation" offset
    mean = twin.truth + jnp.asarray(params["inflation"])
    return fb.Trajectory(analysis_mean=mean, forecast_mean=mean)


def _late_loss_runner(keys, benchmark, twin, params):
    # tracks to within 0.1 for the first 88 % of the run, then is off by 5 for good
    n = twin.truth.shape[0]
    late = (jnp.arange(n) >= int(0.88 * n))[:, None]
    mean = twin.truth + jnp.where(late, 5.0, 0.1)
    return fb.Trajectory(analysis_mean=mean, forecast_mean=mean)


def test_divergence_flag_fires_on_late_loss_of_track(registry_snapshot, tmp_path):
    # Catastrophic divergence late in a long run: the time mean stays below half the
    # climatology, but the final 10 % of the scored cycles are far above it.
    method = fb.MethodConfig(name="late-loss", family="fake", runner=_late_loss_runner)
    bench = tiny_benchmark()
    cell = fb.run([method], [bench], seeds=[0], out=tmp_path, progress=False, n_cycles=110)[
        "cells"
    ]["test_tiny_l96/late-loss"]
    threshold = 0.5 * cell["climatology"]["mean"]
    assert cell["rmse_a"]["mean"] < threshold < 5.0
    assert cell["diverged"] and cell["diverged_seeds"] == [0]


def _climatology_runner(keys, benchmark, twin, params):
    # the climatological mean every cycle: rmse.a == the climatological rmse by construction
    mean = jnp.broadcast_to(jnp.mean(twin.truth, axis=0), twin.truth.shape)
    return fb.Trajectory(analysis_mean=mean, forecast_mean=mean)


def test_climatological_method_is_not_flagged_by_the_climatology_fraction(
    registry_snapshot, tmp_path
):
    # The same estimate is flagged for an ordinary method (rmse.a > 0.5 x climatology) and
    # not for one declared climatological; a non-finite run is flagged either way.
    kw = dict(seeds=[0], out=tmp_path, progress=False, n_cycles=60)
    plain = fb.MethodConfig(name="clim-plain", family="fake", runner=_climatology_runner)
    clim = fb.MethodConfig(
        name="clim-baseline", family="fake", runner=_climatology_runner, climatological=True
    )
    cells = fb.run([plain, clim], [tiny_benchmark()], **kw)["cells"]
    assert cells["test_tiny_l96/clim-plain"]["diverged_seeds"] == [0]
    assert cells["test_tiny_l96/clim-baseline"]["diverged_seeds"] == []
    rmse = np.array([[1.0, np.nan]])
    assert _runner.diverged(rmse, 1.0, [False], None).tolist() == [True]
    assert _runner.diverged(np.array([[9.0, 9.0]]), 1.0, [False], None).tolist() == [False]


def test_reference_rounding_is_recorded_and_checked(registry_snapshot, tmp_path):
    # a stated rounding of the published value goes into the cell's reference; it must name
    # a reference and be a finite half unit
    bench = tiny_benchmark()
    rounded = dataclasses.replace(
        bench, references={"offset": 0.1}, reference_rounding={"offset": 0.05}
    )
    method = fb.MethodConfig(
        name="offset",
        family="fake",
        runner=_offset_runner,
        inflation=0.1,
        reference_labels={rounded.name: "offset"},
    )
    cell = fb.run([method], [rounded], seeds=[0], out=tmp_path, progress=False, n_cycles=30)[
        "cells"
    ][f"{rounded.name}/offset"]
    assert cell["reference"] == {
        "rmse_a": 0.1,
        "label": "offset",
        "citation": rounded.citation,
        "rounding": 0.05,
    }
    with pytest.raises(ValueError, match="reference_rounding"):
        dataclasses.replace(bench, reference_rounding={"missing": 0.05})
    with pytest.raises(ValueError, match="reference_rounding"):
        dataclasses.replace(bench, references={"a": 1.0}, reference_rounding={"a": -1.0})


def test_resume_skips_finished_cells(registry_snapshot, tmp_path, monkeypatch):
    bench = fb.register_benchmark(tiny_benchmark())
    for name, offset in (("offset-a", 0.1), ("offset-b", 0.2)):
        fb.register_method(
            fb.MethodConfig(name=name, family="fake", runner=_offset_runner, inflation=offset)
        )
    executed = []
    real = _runner._execute_cell

    def counting(plan, budget):
        executed.append(plan.key)
        return real(plan, budget)

    monkeypatch.setattr(_runner, "_execute_cell", counting)
    kw = dict(seeds=[0], out=tmp_path, progress=False, n_cycles=30)
    methods = ["offset-a", "offset-b"]
    first = fb.run(methods, [bench.name], **kw)
    assert sorted(executed) == ["test_tiny_l96/offset-a", "test_tiny_l96/offset-b"]
    assert first["cells"]["test_tiny_l96/offset-b"]["rmse_a"]["mean"] == pytest.approx(0.2)
    executed.clear()
    again = fb.run(methods, [bench.name], **kw)
    assert executed == [] and again["cells"] == first["cells"]  # finished cells: a no-op
    assert again["last_run"] == {"cells": 2, "reused": 2, "computed": 0}
    # a changed configuration re-runs that cell only
    fb.register_method(
        fb.MethodConfig(name="offset-a", family="fake", runner=_offset_runner, inflation=0.3),
        overwrite=True,
    )
    third = fb.run(methods, [bench.name], **kw)
    assert executed == ["test_tiny_l96/offset-a"]
    assert third["cells"]["test_tiny_l96/offset-a"]["rmse_a"]["mean"] == pytest.approx(0.3)
    # other seeds would mix incomparable cells: refused, naming the difference; --force
    executed.clear()
    with pytest.raises(ValueError, match=r"offset-b: stored with seeds \[0\].*differs in seeds"):
        fb.run(["offset-b"], [bench.name], **{**kw, "seeds": [0, 1]})
    assert executed == []
    fb.run(["offset-b"], [bench.name], **{**kw, "seeds": [0, 1]}, force=True)
    assert executed == ["test_tiny_l96/offset-b"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["cells"]["test_tiny_l96/offset-b"]["seeds"] == [0, 1]
    assert on_disk["cells"]["test_tiny_l96/offset-a"]["config"]["inflation"] == 0.3


def test_selection_rules():
    with pytest.raises(KeyError):
        _registry.resolve_cells("quick", methods=["no-such-*"])
    cells = _registry.resolve_cells(methods=["ETKF-*"], benchmarks=["lorenz96_sakov2008"])
    assert {m.name for _, m in cells} >= {"ETKF-20", "ETKF-40"}
    # the small-ensemble benchmark refuses N_e > 10 in a suite
    big = fb.get_method("ETKF-20")
    assert _registry.incompatibility(fb.get_benchmark("lorenz96_small_ensemble"), big)
    # a cross product skips incompatible pairs; nothing left is an error
    with pytest.raises(ValueError, match="no .* cell"):
        _registry.resolve_cells(methods=["ETKF-20"], benchmarks=["lorenz96_small_ensemble"])


def tiny_model_with_geometry() -> StateSpaceModel:
    # The tiny ring with its geometry on the model (grid indices, PeriodicDistance(N_X)).
    base = tiny_model()
    return StateSpaceModel(
        dynamics=base.dynamics,
        obs_op=base.obs_op,
        obs_noise=1.0,
        dt_obs=base.dt_obs,
        x0_mean=base.x0_mean,
        x0_cov=1.0,
        burn_in=base.burn_in,
        name="tiny_l96_geometry",
        **presets.grid_geometry(N_X, base.obs_op),
    )


def test_localised_methods_take_the_geometry_from_the_model(registry_snapshot):
    # The built-in ring benchmarks hand LETKF no overrides: coordinates and distance come from
    # the presets; the linear models have no geometry, and their benchmarks keep overrides.
    for name in ("lorenz96_sakov2008", "lorenz96_every_other", "ks_bocquet2019"):
        bench = fb.get_benchmark(name)
        assert bench.coordinates is None and bench.distance is None and bench.context() == {}
        assert bench.has_geometry
    every_other = fb.get_benchmark("lorenz96_every_other").ssm
    np.testing.assert_array_equal(every_other.obs_coords, np.arange(0.0, 40.0, 2.0)[:, None])
    linear = fb.get_benchmark("linear_bach2025")
    assert linear.ssm.state_coords is None and linear.has_geometry
    assert linear.context()["distance"] == fxp.PeriodicDistance(40.0)
    # A model without geometry and no coordinates: localised methods cannot run.
    letkf = fb.get_method("LETKF-10")
    bare = dataclasses.replace(tiny_benchmark("test_bare"), coordinates=None, distance=None)
    assert "no geometry" in _registry.incompatibility(bare, letkf)
    # The model's geometry gives the same LETKF cell, bit for bit, as the same geometry passed
    # as Benchmark(coordinates=..., distance=...) overrides on a model without it.
    params = {"inflation": 1.05, "localization_radius": 2.0}
    from_model = fb.Benchmark(
        name="test_tiny_geometry", model=tiny_model_with_geometry, n_cycles=N_CYCLES
    )
    assert from_model.context() == {} and _registry.incompatibility(from_model, letkf) is None
    outputs = [
        _runner.cell_function(letkf, bench, N_CYCLES, static_params=params)(jax.random.key(0), {})
        for bench in (from_model, tiny_benchmark())
    ]
    for field in ("rmse_a", "rmse_f", "spread_a", "log_likelihood", "crps"):
        np.testing.assert_array_equal(
            getattr(outputs[0], field), getattr(outputs[1], field), err_msg=field
        )


# --- tuning -------------------------------------------------------------------------------

OPTIMUM = 1.07


def _quadratic_runner(calls):
    """A fake method whose rmse.a is exactly 0.1 + 10 (inflation - 1.07)^2 at every cycle,
    and which is non-finite for inflation >= 1.10 (a forced divergence region)."""

    def runner(keys, benchmark, twin, params):
        calls.append(1)  # Python side effect: counts traces, not executions
        infl = jnp.asarray(params["inflation"])
        err = 0.1 + 10.0 * (infl - OPTIMUM) ** 2
        err = jnp.where(infl >= 1.095, jnp.nan, err)
        mean = twin.truth + err  # every component off by err -> rmse = err
        return fb.Trajectory(analysis_mean=mean, forecast_mean=mean)

    return runner


def test_tuning_picks_the_known_optimum(registry_snapshot, tmp_path):
    calls = []
    bench = fb.register_benchmark(tiny_benchmark())
    method = fb.register_method(
        fb.MethodConfig(
            name="fake-quadratic",
            family="fake",
            runner=_quadratic_runner(calls),
            inflation=1.0,
            tune_grid={"inflation": tuple(np.round(np.arange(1.0, 1.125, 0.01), 2))},
        )
    )
    into = tmp_path / "tuned.json"
    res = fb.tune(method, bench, tuning_seeds=(1000, 1001), n_cycles=20, margin=0.0, into=into)
    assert len(calls) == 1  # the whole grid x seeds is ONE traced (compiled) call
    assert res.best == {"inflation": OPTIMUM}
    np.testing.assert_allclose(res.rmse_a[:7], 0.1 + 10 * (np.arange(1.0, 1.065, 0.01) - 1.07) ** 2)
    assert res.diverged.tolist() == [False] * 10 + [True] * 3
    # stored with date, grid and seeds, and applied to the registry
    stored = json.loads(into.read_text())["settings"]["test_tiny_l96/fake-quadratic"]
    assert stored["values"] == {"inflation": OPTIMUM}
    assert stored["tuning_seeds"] == [1000, 1001] and len(stored["grid"]["inflation"]) == 13
    assert stored["date"] == fb.get_method("fake-quadratic").tuned["test_tiny_l96"].date
    assert fb.get_method("fake-quadratic").params("test_tiny_l96")["inflation"] == OPTIMUM

    # A diverged grid neighbour makes the optimum unsafe and pushes the pick away from it.
    calls.clear()
    shifted = fb.MethodConfig(
        name="fake-shifted",
        family="fake",
        runner=_quadratic_runner(calls),
        inflation=1.0,
        safety=("inflation", -1),
    )
    grid = {"inflation": (1.05, 1.06, 1.07, 1.08, 1.09, 1.10, 1.11)}
    res = fb.tune(shifted, bench, grid, (1000,), n_cycles=20, margin=0.0, register=False)
    assert res.best == {"inflation": OPTIMUM}  # 1.09 is unsafe (next to 1.10), 1.07 is not
    grid = {"inflation": (1.05, 1.06, 1.07, 1.10)}
    res = fb.tune(shifted, bench, grid, (1000,), n_cycles=20, margin=0.0, register=False)
    assert res.best == {"inflation": 1.06}  # the optimum's grid neighbour 1.10 diverged


def test_tuning_refuses_scoring_seeds(registry_snapshot):
    with pytest.raises(ValueError, match="scoring seeds"):
        fb.tune(tiny_method(), tiny_benchmark(), {"inflation": (1.0,)}, tuning_seeds=(0,))


def test_select_margin_prefers_the_safe_side():
    rmse = np.array([0.30, 0.21, 0.200, 0.203, 0.205, 0.25])
    ok = np.zeros(6, bool)
    assert select_idx(rmse, ok, 0.0) == 2
    assert select_idx(rmse, ok, 0.02) == 3  # largest inflation within 2%
    assert select_idx(rmse, ok, 0.03) == 4
    assert select_idx(rmse, ok, 0.03, direction=-1) == 2
    # 2-D grid: a diverged point poisons its four neighbours
    grid = np.full((3, 3), 1.0)
    grid[1, 1] = 0.5
    grid[0, 0] = 0.6
    div = np.zeros((3, 3), bool)
    div[2, 1] = True
    idx, _ = fb.select(grid, div, margin=0.0)
    assert idx == (0, 0)
    with pytest.raises(ValueError, match="every grid point diverged"):
        fb.select(grid, np.ones((3, 3), bool))


def select_idx(rmse, diverged, margin, direction=1):
    idx, _ = fb.select(rmse, diverged, margin=margin, safe_axis=0, safe_direction=direction)
    return idx[0]


# --- user-defined entries and the CLI -------------------------------------------------------


def test_readme_example_registers_and_appears_in_results(registry_snapshot, tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("<!-- example: add your own -->")
    block = readme[start:].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    results = namespace["results"]
    key = "lorenz96_n20/ETKF-RTPS-10"
    assert key in results["cells"]
    assert key in json.loads((tmp_path / "bench-results" / "results.json").read_text())["cells"]
    cell = results["cells"][key]
    assert not cell["diverged"] and cell["config"]["rtps"] == 0.5
    assert "lorenz96_n20" in fb.list_benchmarks() and "ETKF-RTPS-10" in fb.list_methods()
    from filterax.bench._leaderboard import render_terminal

    assert "ETKF-RTPS-10" in render_terminal(results)


def test_cli_run_report_list_and_tune(registry_snapshot, tmp_path, capsys):
    fb.register_benchmark(tiny_benchmark())
    fb.register_method(tiny_method(tune_grid={"inflation": (1.0, 1.05, 1.1)}))
    out = tmp_path / "res"
    argv = ["--methods", "test-ETKF-6", "--benchmarks", "test_tiny_l96", "--cycles", "30"]
    assert main(["run", *argv, "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test-ETKF-6" in printed and "wall time" in printed
    data = json.loads((out / "results.json").read_text())
    assert list(data["cells"]) == ["test_tiny_l96/test-ETKF-6"]
    assert (out / "leaderboard.md").exists() and (out / "leaderboard.html").exists()
    (out / "leaderboard.md").unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert "test-ETKF-6" in (out / "leaderboard.md").read_text()
    assert main(["list", "--suite", "quick"]) == 0
    assert "LETKF-7" in capsys.readouterr().out
    into = tmp_path / "tuned.json"
    assert main(["tune", *argv, "--tuning-seeds", "1000", "--into", str(into)]) == 0
    tuned = json.loads(into.read_text())["settings"]["test_tiny_l96/test-ETKF-6"]
    assert tuned["values"]["inflation"] in (1.0, 1.05, 1.1)
    assert tuned["grid"] == {"inflation": [1.0, 1.05, 1.1]}
    assert main(["run", "--methods", "nope", "--benchmarks", "test_tiny_l96"]) == 2


def test_builtin_dataclass_fields_are_json_ready():
    # the config of every built-in cell is JSON numbers/strings (it is written to results.json)
    for bench, method in _registry.resolve_cells("full"):
        config = method.config(bench)
        _numbers_only(json.loads(json.dumps(config)))
        assert dataclasses.is_dataclass(method)


def test_preset_climatology_matches_published():
    # the divergence threshold uses each seed's climatology; check it is the published one
    model = presets.lorenz63_sakov2012()
    twin = model.simulate(jax.random.key(0), 3000)
    assert model.climatology_rmse(twin.truth) == pytest.approx(7.6, rel=0.1)


def test_cli_import_registers_user_methods(registry_snapshot, tmp_path, capsys):
    plugin = tmp_path / "my_methods.py"
    plugin.write_text(
        "import filterax.bench as fb\n"
        "import filterax.filters as fxf\n"
        "fb.register_method(fb.MethodConfig(name='plugin-ETKF-5', family='ETKF',\n"
        "    filter=fxf.ETKF(), n_ensemble=5, inflation=1.1,\n"
        "    settings={'lorenz96_sakov2008': {}}))\n"
    )
    assert main(["list", "--import", str(plugin)]) == 0
    assert "plugin-ETKF-5" in capsys.readouterr().out
    assert "plugin-ETKF-5" in fb.list_methods()
    assert "lorenz96_sakov2008" in fb.get_method("plugin-ETKF-5").benchmarks


def test_the_conventions_page_cycled_method_is_scored_by_the_harness(
    registry_snapshot, tmp_path, monkeypatch
):
    # The user-written 3D-Var of docs/snippets/cycled_method.py (shown on the conventions
    # page) runs through filterax.filters.run and is scored by the harness like a built-in
    # filter.
    import runpy

    from filterax.bench import _runner

    snippet = pathlib.Path(__file__).parents[2] / "docs" / "snippets" / "cycled_method.py"
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(snippet))
    cell = ns["results"]["cells"]["lorenz63_sakov2012/Var3D-static"]
    assert cell["config"]["kind"] == "cycled" and not cell["diverged"]
    # a working analysis: far below climatology (7.6), better than the forecast, near
    # DAPPER's tuned Var3D (1.04)
    assert 0.9 < cell["rmse_a"]["mean"] < 1.5 and cell["rmse_a"]["mean"] < cell["rmse_f"]["mean"]
    assert 0.9 < float(ns["rmse_a"]) < 1.5
    # The harness's per-seed series is the driver's: the cell function, evaluated eagerly on
    # seed 0, equals `run` on the same twin experiment to round-off. (Compiled, the truth
    # simulation itself differs by round-off that the chaotic L63 amplifies over 500 cycles,
    # so the comparison is made eagerly.)
    bench = fb.get_benchmark("lorenz63_sakov2012")
    cell_fn = _runner.cell_function(ns["config"], bench, 100, full=True)
    scored = cell_fn(jax.random.key(0), {})
    k_truth, _, k_da = fb.seed_keys(0)
    twin = bench.ssm.simulate(k_truth, 100)
    direct = fxf.run(ns["method"], bench.ssm, bench.ssm.x0_mean, twin.observations, twin.times,
                     key=k_da)  # fmt: skip
    rmse = np.sqrt(np.mean((np.asarray(direct.analysis_mean) - np.asarray(twin.truth)) ** 2, -1))
    np.testing.assert_allclose(scored.rmse_a, rmse, rtol=1e-10, atol=1e-12)


def test_bench_modules_follow_the_abstract_final_pattern():
    from filterax.testing import module_structure_violations

    assert module_structure_violations("filterax.bench") == []
