"""Figures of the reproduction experiments (`_experiments`), in the conventions of `_plots`
(matplotlib Agg canvas without pyplot, constrained layout, legends outside the axes, plain
labels on log axes, deterministic PNG bytes, a caption per figure).

Kinds, drawn only when the record's result holds their data:

- ``gain-training``: relative gain error ``‖K − K_ss‖_F / ‖K_ss‖_F``, mean KL to the Kalman
  filter and the analysis MSE (with the KF's) along offline training (the paper's Figs 1-2);
- ``gain-online``: the online gain error against time, exact trace term and plug-in (Fig. 3);
- ``gain-heatmap``: the learned L96 gain as a heat map and its mean periodic bands (Fig. 4);
- ``cost-surface``: per ensemble size, filled contours of the variational cost and of rmse.a
  over inflation x radius, the VI optimum, the RMSE optimum and the descent path (Figs 5-6);
- ``posterior-histogram``: histograms of the EnKF's and the flows' posterior samples over the
  grid-computed posterior density (issue 13 §3, the static flow benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from ._plots import Plot, _legend, _log_axis, _to_png, png_size

__all__ = ["EXPERIMENT_PLOT_KINDS", "make_experiment_plots"]

EXPERIMENT_PLOT_KINDS = {
    "gain-training": "Gain error, KL and MSE along training",
    "gain-online": "Online gain error along time",
    "gain-heatmap": "Learned gain",
    "cost-surface": "Variational cost and rmse.a over inflation x radius",
    "posterior-histogram": "Posterior samples over the exact density",
}
_BLUE, _ORANGE, _GREEN, _RED = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


def _pos_pairs(xs, ys) -> tuple[list[float], list[float]]:
    pts = [
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=False)
        if isinstance(y, int | float) and math.isfinite(y) and y > 0
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _gain_training(name: str, r: Mapping[str, Any]):
    rows = r.get("curve")
    if not isinstance(rows, list) or not rows:
        return None
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    its = [row["iteration"] for row in rows]
    for ax, key, label in (
        (axes[0], "gain_error_rel", "‖K − K_ss‖_F / ‖K_ss‖_F"),
        (axes[1], "kl", "mean KL to the Kalman filter"),
        (axes[2], "mse", "analysis MSE"),
    ):
        x, y = _pos_pairs(its, [row.get(key) for row in rows])
        if not y:
            continue
        ax.plot(x, y, "o-", ms=3, color=_BLUE, label="learned gain")
        if key == "mse" and isinstance(r.get("kf_mse"), int | float):
            ax.axhline(r["kf_mse"], color=_GREEN, ls="--", label="Kalman filter")
        if key == "gain_error_rel":
            ax.axhline(0.06, color=_RED, ls=":", label="target 0.06")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi)
        _log_axis(ax, "y")
        ax.set_xlabel("gradient-descent iteration")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    caption = (
        "Offline VI of the constant gain (plain gradient descent, alpha = 1e-5 on the sum over "
        f"J = {r.get('steps', '?')} cycles, 10 Monte Carlo samples, a fresh key per iteration): "
        "relative distance to the DARE steady-state gain, the time-mean KL of the filter to the "
        "exact Kalman filter, and the analysis MSE against the truth (dashed: the KF's)."
    )
    return fig, caption


def _gain_online(name: str, r: Mapping[str, Any]):
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for key, color, label in (
        ("analytic", _BLUE, "exact trace term"),
        ("plugin", _ORANGE, "plug-in (authors' code)"),
    ):
        run = r.get(key)
        if not isinstance(run, Mapping) or not run.get("curve"):
            continue
        times = run.get("curve_times") or list(range(1, len(run["curve"]) + 1))
        x, y = _pos_pairs(times, run["curve"])
        if y:
            ax.plot(x, y, color=color, label=label)
            drawn = True
    if not drawn:
        return None
    ax.axhline(0.05, color=_BLUE, ls=":", label="target 0.05 (exact)")
    ax.axhline(0.136, color=_ORANGE, ls=":", label="authors' 0.136 (plug-in)")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi)
    _log_axis(ax, "y")
    ax.set_xlabel("time step t")
    ax.set_ylabel("‖K_t − K_ss‖_F / ‖K_ss‖_F")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    caption = (
        "Online VI (eq. 2.6): 100 gradient steps per time step warm-started from K_{t-1}, from "
        "K0 = 0.1 I; the relative distance of K_t to the DARE gain at every time step (sampled "
        "at about 100 times)."
    )
    return fig, caption


def _gain_heatmap(name: str, r: Mapping[str, Any]):
    K = r.get("gain")
    if not isinstance(K, list) or not K:
        return None
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=(1.2, 1))
    vmax = max(abs(v) for row in K for v in row if isinstance(v, int | float)) or 1.0
    im = ax.imshow(K, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.set_xlabel("observed component j")
    ax.set_ylabel("state component i")
    ax.set_title("learned K")
    bands = r.get("gain_band_means") or {}
    offsets = sorted(int(k) for k in bands)
    bx.bar(offsets, [bands[str(o)] for o in offsets], color=_BLUE)
    bx.set_xlabel("offset j − i (periodic)")
    bx.set_ylabel("mean of the band")
    bx.set_title("band means")
    bx.grid(True, alpha=0.3)
    dev = r.get("circulant_deviation")
    dev_text = f"{dev:.3f}" if isinstance(dev, int | float) else "?"
    caption = (
        f"The ExKF-style constant gain learned offline on Lorenz-96 ({r.get('iterations', '?')} "
        f"GD steps, J = {r.get('steps', '?')}). A circulant gain has constant bands; "
        f"off-circulant share ‖K − P(K)‖_F / ‖K‖_F = {dev_text}."
    )
    return fig, caption


def _surface(name: str, case: Mapping[str, Any]):
    import numpy as np

    infl = np.asarray(case["inflations"], dtype=float)
    radii = np.asarray(case["radii"], dtype=float)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "cost", "VI cost J"), (axes[1], "rmse_a", "rmse.a")):
        z = np.asarray(
            [[np.nan if v is None else v for v in row] for row in case[key]], dtype=float
        )
        if np.isfinite(z).sum() >= 4 and len(infl) > 1 and len(radii) > 1:
            cs = ax.contourf(radii, infl, np.ma.masked_invalid(z), levels=25)
            fig.colorbar(cs, ax=ax)
        vi, rm = case["vi_opt"], case["rmse_opt"]
        ax.plot(vi["radius"], vi["inflation"], "r*", ms=13, label="VI optimum (grid)")
        ax.plot(rm["radius"], rm["inflation"], "wo", mec="k", ms=8, label="RMSE optimum (grid)")
        for other in case.get("gd_starts", [])[1:]:
            if isinstance(other, Mapping) and other.get("path"):
                path = np.asarray(other["path"], dtype=float)
                ax.plot(path[:, 1], path[:, 0], ".-", color="0.55", ms=3, lw=1)
                ax.plot(path[-1, 1], path[-1, 0], "D", color="0.55", ms=5)
        gd = case.get("gd")
        if isinstance(gd, Mapping) and gd.get("path"):
            path = np.asarray(gd["path"], dtype=float)
            ax.plot(path[:, 1], path[:, 0], "m.-", ms=4, label="L-BFGS path")
            ax.plot(path[-1, 1], path[-1, 0], "mD", ms=7, label="L-BFGS end")
        ax.set_xlabel("localisation radius ℓ")
        ax.set_ylabel("inflation λ")
        ax.set_title(f"{case.get('case', name)}: {title}")
    _legend(axes[1])
    caption = (
        f"{case.get('case', name)}: the EnKF's variational cost (eq. 2.5 summed over the run) "
        "and its time-mean rmse.a on the inflation x radius grid (one vmapped call, the same "
        "key at every grid point); star: the grid's VI optimum, circle: its RMSE optimum"
        + ("; magenta: the L-BFGS path from a poor start" if "gd" in case else "")
        + ("; grey: L-BFGS from the grid's other corners" if case.get("gd_starts") else "")
        + "."
    )
    return fig, caption


def _posterior_histogram(name: str, r: Mapping[str, Any]):
    fig_data = r.get("figure")
    if not isinstance(fig_data, Mapping) or not fig_data.get("grid"):
        return None
    edges = fig_data.get("hist_edges") or []
    hists = fig_data.get("hist") or {}
    labels = {"enkf": ("EnKF", _ORANGE), "spline": ("spline flow", _BLUE)}
    labels["affine"] = ("affine flow", _GREEN)
    shown = [
        m for m in labels if isinstance(hists.get(m), list) and len(hists[m]) + 1 == len(edges)
    ]
    if not shown:
        return None
    fig = Figure(figsize=(4.2 * len(shown), 3.6), layout="constrained")
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, m in zip(axes, shown, strict=True):
        label, color = labels[m]
        ax.stairs(hists[m], edges, fill=True, color=color, alpha=0.45, label="samples (seed 0)")
        ax.plot(fig_data["grid"], fig_data["density"], "k-", lw=1.4, label="exact (grid)")
        run = r.get(m)
        w1 = run.get("w1_mean") if isinstance(run, Mapping) else None
        ax.set_title(label + (f", W1 = {w1:.3f}" if isinstance(w1, int | float) else ""))
        ax.set_xlabel("x")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("density")
    _legend(axes[-1])
    cfg = r.get("config") if isinstance(r.get("config"), Mapping) else {}
    caption = (
        f"Posterior samples of x given y* = {cfg.get('y_star', '?')} from N = "
        f"{cfg.get('n', '?')} joint samples (seed 0), x_a = T(T^-1(x; y); y*), against the "
        "posterior density computed on a grid. The EnKF's gain is about zero here, so it "
        "returns the prior; W1 in the titles is the mean over seeds."
    )
    return fig, caption


def _png_plot(kind: str, name: str, suffix: str, fig: Figure, caption: str, title: str) -> Plot:
    png = _to_png(fig)
    w, h = png_size(png)
    stem = f"{name}--{kind}" + (f"-{suffix}" if suffix else "")
    alt = f"{EXPERIMENT_PLOT_KINDS[kind]} for experiment {name}" + (
        f" ({suffix})" if suffix else ""
    )
    return Plot(
        kind=kind,
        benchmark=name,
        title=title,
        alt=alt,
        filename=f"experiment-{stem}.png",
        png=png,
        width=w,
        height=h,
        caption=caption,
    )


def make_experiment_plots(records: Mapping[str, Any]) -> list[Plot]:
    """Every figure the experiment records have data for, in record order (``Plot.benchmark``
    is the experiment's name)."""
    plots = []
    for name, rec in records.items():
        result = rec.get("result") if isinstance(rec, Mapping) else None
        if not isinstance(result, Mapping):
            continue
        title = rec.get("title", name)
        for kind in rec.get("plot") or ():
            if kind == "cost-surface":
                for case_name, case in result.items():
                    if isinstance(case, Mapping) and "cost" in case and "vi_opt" in case:
                        fig, cap = _surface(name, case)
                        plots.append(
                            _png_plot(kind, name, case_name, fig, cap, f"{title} — {case_name}")
                        )
                continue
            maker = {
                "gain-training": _gain_training,
                "gain-online": _gain_online,
                "gain-heatmap": _gain_heatmap,
                "posterior-histogram": _posterior_histogram,
            }.get(kind)
            drawn = None if maker is None else maker(name, result)
            if drawn is not None:
                plots.append(_png_plot(kind, name, "", drawn[0], drawn[1], title))
    return plots
