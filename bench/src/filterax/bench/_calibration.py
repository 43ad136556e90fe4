"""Calibration benchmarks: ensemble Kalman processes on inverse problems with known answers.

An experiment is configured processes x inverse problems x seeds (``filterax-bench
calibrate``). Every cell runs `filterax.processes.calibrate` (one compiled loop) from a prior
ensemble and scores the final ensemble:

- ``err_truth``: ``||theta_hat - theta_true|| / ||theta_true||`` in physical (constrained)
    parameter space, ``theta_hat`` the constrained ensemble mean;
- ``misfit``: ``||Gamma^{-1/2} (G(theta_hat) - y)||^2 / N_y`` (about 1 at the noise level);
- ``err_post_mean``, ``err_post_cov``: ``||m - m_post|| / ||m_post||`` and
    ``||C - Sigma_post||_F / ||Sigma_post||_F`` in the unconstrained space the processes work in,
    where the problem has a reference posterior (closed form for the linear problem, 2-D
    quadrature for the exponential sinusoid); meaningful for the methods whose `kind` is
    ``"posterior"`` or ``"sampler"`` (an optimiser's ensemble collapses by design);
- ``forward_evals`` (members x iterations), ``iterations``, ``algorithm_time`` (sum of the
    ``dt`` taken), ``wall_seconds`` (a warm run, compile excluded) and ``compile_seconds``
    (first run minus warm run of the same cell, measured on the first seed).

Initial ensembles are prior draws whose sample mean and covariance are transformed to equal
the prior's exactly, so the scores measure the process, not the initial sampling error (with
this, ETKI on the linear problem is the exact Kalman posterior up to round-off).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import filterax.processes as fpr
from filterax.zoo import Darcy1D, presets

from ._files import write_json_atomic, write_text_atomic

__all__ = [
    "CALIBRATION_SCHEMA",
    "CalibrationMethod",
    "CalibrationProblem",
    "ProblemInstance",
    "get_calibration_method",
    "get_calibration_problem",
    "list_calibration_methods",
    "list_calibration_problems",
    "render_markdown",
    "run_calibration",
    "summarise_calibration",
]

CALIBRATION_SCHEMA = 1
SCORES = (
    "err_truth",
    "misfit",
    "err_post_mean",
    "err_post_cov",
    "forward_evals",
    "iterations",
    "algorithm_time",
    "wall_seconds",
    "compile_seconds",
)
QUICK_SEEDS = (0, 1)
FULL_SEEDS = (0, 1, 2, 3, 4)


# --- problems ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProblemInstance:
    """One seed's realisation of a calibration problem (host-side NumPy except `forward`).

    `forward` maps ONE constrained parameter vector ``(N_p,)`` to ``(N_y,)``; it is an
    `eqx.Module` whose arrays are the same for every seed, so one compiled run serves all
    seeds. `posterior_mean`/`posterior_cov` are in the unconstrained space (or None).
    """

    forward: Callable[[Array], Array]
    obs: np.ndarray
    noise_var: np.ndarray
    prior: fpr.ParameterDistribution
    truth: np.ndarray
    posterior_mean: np.ndarray | None = None
    posterior_cov: np.ndarray | None = None
    eks_scheduler: Any = None  # None: FixedScheduler(0.01)
    eks_iterations: int = 200
    truth_weights: np.ndarray | None = None  # err_truth compares weights * theta


@dataclasses.dataclass(frozen=True)
class CalibrationProblem:
    """A registered inverse problem: ``build(seed, quick) -> ProblemInstance``."""

    name: str
    description: str
    n_params: int
    n_obs: int
    reference: str
    build: Callable[[int, bool], ProblemInstance]


class _LinearForward(eqx.Module):
    matrix: Float[Array, "N_y N_p"]

    def __call__(self, theta: Float[Array, " N_p"]) -> Float[Array, " N_y"]:
        return self.matrix @ theta


LINEAR_N_P, LINEAR_N_Y, LINEAR_NOISE_STD = 10, 50, 0.5


def _linear(seed: int, quick: bool) -> ProblemInstance:
    del quick
    # The operator is part of the problem (fixed); the seed draws truth and noise. Rows scaled
    # so every output has unit prior variance: the data constrain each direction ~20x.
    g = np.random.default_rng(20240607).standard_normal((LINEAR_N_Y, LINEAR_N_P))
    g /= math.sqrt(LINEAR_N_P)
    rng = np.random.default_rng(seed)
    m0 = np.zeros(LINEAR_N_P)
    c0 = np.eye(LINEAR_N_P)
    truth = rng.standard_normal(LINEAR_N_P)
    noise_var = np.full(LINEAR_N_Y, LINEAR_NOISE_STD**2)
    y = g @ truth + LINEAR_NOISE_STD * rng.standard_normal(LINEAR_N_Y)
    precision = g.T @ (g / noise_var[:, None]) + np.linalg.inv(c0)
    post_cov = np.linalg.inv(precision)
    post_mean = post_cov @ (g.T @ (y / noise_var) + np.linalg.solve(c0, m0))
    prior = fpr.ParameterDistribution(jnp.asarray(m0), jnp.asarray(c0))
    return ProblemInstance(
        forward=_LinearForward(jnp.asarray(g)),
        obs=y,
        noise_var=noise_var,
        prior=prior,
        truth=truth,
        posterior_mean=post_mean,
        posterior_cov=0.5 * (post_cov + post_cov.T),
        # ||C0 G^T Gamma^-1 G|| ~ 40: dt = 0.01 is stable; 600 steps reach t = 6.
        eks_scheduler=fpr.FixedScheduler(0.01),
        eks_iterations=600,
    )


class _ExpSinForward(eqx.Module):
    times: Float[Array, " T"]

    def __call__(self, theta: Float[Array, " 2"]) -> Float[Array, " 2"]:
        curve = jnp.exp(theta[0] * jnp.sin(self.times) + theta[1])
        return jnp.stack([jnp.max(curve) - jnp.min(curve), jnp.mean(curve)])


EXPSIN_TRUTH = (1.0, 0.8)
EXPSIN_NOISE_VAR = 0.01


def _expsin_prior() -> fpr.ParameterDistribution:
    return fpr.combine_distributions(
        fpr.constrained_gaussian(2.0, 1.0, lower=0.0, name="amplitude"),
        fpr.constrained_gaussian(0.0, 1.0, name="vert_shift"),
    )


def _grid_posterior(
    forward: Callable[[Array], Array],
    prior: fpr.ParameterDistribution,
    y: np.ndarray,
    noise_var: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a 2-D posterior (unconstrained space) by two grid passes.

    Pass 1 covers the prior +-6 std; pass 2 the box where the log-density is within 40 of its
    maximum (beyond 8 std of a Gaussian), widened by two pass-1 cells.
    """
    mean, std = np.asarray(prior.mean), np.sqrt(np.diag(np.asarray(prior.cov)))
    prec = np.linalg.inv(np.asarray(prior.cov))

    @jax.jit
    def log_density(u: Array) -> Array:
        g = jax.vmap(forward)(prior.to_constrained(u))
        r = (g - jnp.asarray(y)[None, :]) ** 2 / jnp.asarray(noise_var)[None, :]
        d = u - jnp.asarray(mean)[None, :]
        return -0.5 * jnp.sum(r, axis=1) - 0.5 * jnp.sum((d @ jnp.asarray(prec)) * d, axis=1)

    lo, hi = mean - 6 * std, mean + 6 * std
    for _ in range(2):
        axes = [np.linspace(lo[i], hi[i], n) for i in range(2)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
        logp = np.asarray(log_density(jnp.asarray(grid)))
        keep = logp > logp.max() - 40.0
        cell = (hi - lo) / (n - 1)
        lo, hi = grid[keep].min(axis=0) - 2 * cell, grid[keep].max(axis=0) + 2 * cell
    w = np.exp(logp - logp.max())
    w /= w.sum()
    post_mean = w @ grid
    centred = grid - post_mean
    post_cov = (centred * w[:, None]).T @ centred
    return post_mean, post_cov


def _expsin(seed: int, quick: bool) -> ProblemInstance:
    # EnsembleKalmanProcesses.jl's exponential-sinusoid example with a fixed phase (theirs is
    # redrawn per call; over a full period max-min and mean barely depend on it).
    forward = _ExpSinForward(jnp.arange(0.0, 2 * math.pi + 0.01, 0.01))
    truth = np.asarray(EXPSIN_TRUTH)
    noise_var = np.full(2, EXPSIN_NOISE_VAR)
    rng = np.random.default_rng(seed)
    y = np.asarray(forward(jnp.asarray(truth))) + math.sqrt(EXPSIN_NOISE_VAR) * (
        rng.standard_normal(2)
    )
    prior = _expsin_prior()
    post_mean, post_cov = _grid_posterior(forward, prior, y, noise_var, 201 if quick else 401)
    return ProblemInstance(
        forward=forward,
        obs=y,
        noise_var=noise_var,
        prior=prior,
        truth=truth,
        posterior_mean=post_mean,
        posterior_cov=post_cov,
        # Stiff at the prior (||C0 G'^T Gamma^-1 G'|| ~ 3e3): a fixed dt stable there (1e-4)
        # needs ~1e5 steps to reach equilibrium, so this problem uses the adaptive step.
        eks_scheduler=fpr.EKSStableScheduler(),
        eks_iterations=300 if quick else 1000,
    )


DARCY_N_MODES, DARCY_N_OBS, DARCY_N_GRID = 8, 25, 128
DARCY_NOISE_STD = 0.02  # relative to the largest |u| of the truth


def _darcy_forward() -> Darcy1D:
    # The forward map lives in the zoo (`filterax.zoo.Darcy1D`, preset `darcy1d_kl`): 8 KL
    # modes of a Matern-like field on 128 cells, pressure at 25 interior nodes.
    forward = presets.darcy1d_kl()
    assert forward.modes.shape == (DARCY_N_MODES, DARCY_N_GRID)
    assert len(forward.obs_index) == DARCY_N_OBS
    return forward


def _darcy(seed: int, quick: bool) -> ProblemInstance:
    forward = _darcy_forward()
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(DARCY_N_MODES)
    clean = np.asarray(forward(jnp.asarray(truth)))
    std = DARCY_NOISE_STD * np.abs(clean).max()
    y = clean + std * rng.standard_normal(DARCY_N_OBS)
    prior = fpr.ParameterDistribution(jnp.zeros(DARCY_N_MODES), jnp.ones(DARCY_N_MODES))
    return ProblemInstance(
        forward=forward,
        obs=y,
        noise_var=np.full(DARCY_N_OBS, std**2),
        prior=prior,
        truth=truth,
        # 2 % noise makes the prior stiff for an explicit EKS step: adaptive step, as expsin.
        eks_scheduler=fpr.EKSStableScheduler(),
        eks_iterations=300 if quick else 1000,
        # Error to truth in log-permeability: the modes are orthogonal, so the field's L2 norm
        # is the coefficients' norm weighted by the KL standard deviations.
        truth_weights=np.sqrt(np.sum(np.asarray(forward.modes) ** 2, axis=1) / DARCY_N_GRID),
    )


_PROBLEMS: dict[str, CalibrationProblem] = {
    "linear": CalibrationProblem(
        "linear",
        "linear-Gaussian y = G theta + e, N(0, I) prior, known posterior",
        LINEAR_N_P,
        LINEAR_N_Y,
        "closed-form Gaussian posterior",
        _linear,
    ),
    "expsin": CalibrationProblem(
        "expsin",
        "exp(A sin(t) + v): [max - min, mean], A > 0 (EKP's exponential sinusoid)",
        2,
        2,
        "EnsembleKalmanProcesses.jl examples/Sinusoid (exponential variant); posterior by "
        "2-D quadrature",
        _expsin,
    ),
    "darcy1d": CalibrationProblem(
        "darcy1d",
        f"-(kappa u')' = 1 on [0,1], log kappa = {DARCY_N_MODES} KL modes, u at "
        f"{DARCY_N_OBS} points; err truth in log kappa",
        DARCY_N_MODES,
        DARCY_N_OBS,
        "1-D analogue of EKP's Darcy example; truth drawn from the prior",
        _darcy,
    ),
}


def list_calibration_problems() -> list[str]:
    """Names of the registered calibration problems."""
    return list(_PROBLEMS)


def get_calibration_problem(name: str) -> CalibrationProblem:
    """The calibration problem called `name`."""
    try:
        return _PROBLEMS[name]
    except KeyError:
        raise KeyError(
            f"unknown calibration problem {name!r}; choose from {', '.join(_PROBLEMS)}."
        ) from None


# --- methods ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CalibrationMethod:
    """A process configuration: ``make(instance) -> (process, iterations)``.

    ``iterations`` is an int (fixed run length) or ``("until_converged", max_iterations)``.
    `kind` says what the final ensemble is meant to be: ``"posterior"`` (a Gaussian/ensemble
    approximation of the posterior), ``"sampler"`` or ``"optimiser"`` (its mean is the estimate).
    `n_ensemble` is None for UKI (``2 N_p + 1`` sigma points).
    """

    name: str
    description: str
    kind: str
    n_ensemble: int | None
    make: Callable[[ProblemInstance], tuple[Any, Any]]
    applicable: Callable[[CalibrationProblem], bool] = lambda problem: True


N_ENSEMBLE = 100
UNTIL_CONVERGED = ("until_converged", 50)


def _prior_moments(inst: ProblemInstance) -> tuple[Array, Array]:
    return inst.prior.mean, inst.prior.cov


def _eki(inst: ProblemInstance):
    return fpr.EKI(scheduler=fpr.DataMisfitController()), UNTIL_CONVERGED


def _etki(inst: ProblemInstance):
    return fpr.ETKI(scheduler=fpr.DataMisfitController()), UNTIL_CONVERGED


def _uki(inst: ProblemInstance):
    m0, c0 = _prior_moments(inst)
    return fpr.UKI(m0, c0, impose_prior=True, scheduler=fpr.FixedScheduler(1.0)), 30


def _eks(inst: ProblemInstance):
    m0, c0 = _prior_moments(inst)
    scheduler = inst.eks_scheduler or fpr.FixedScheduler(0.01)
    return fpr.EKS(m0, c0, scheduler=scheduler), inst.eks_iterations


def _teki(inst: ProblemInstance):
    m0, c0 = _prior_moments(inst)
    return fpr.TEKI(m0, c0, scheduler=fpr.FixedScheduler(1.0)), 20


def _gnki(inst: ProblemInstance):
    # dt = 0.5: the stochastic Gauss-Newton step with dt = 1 diverges on expsin (the shift
    # parameter's spread grows through exp until more than half the members overflow).
    m0, c0 = _prior_moments(inst)
    return fpr.GNKI(m0, c0, scheduler=fpr.FixedScheduler(0.5)), 20


def _esmda(inst: ProblemInstance):
    # Stops after its N_a = 4 assimilations (algorithm time sum 1/alpha_i = 1).
    return fpr.ESMDA(n_assimilations=4), UNTIL_CONVERGED


def _ies(inst: ProblemInstance):
    return fpr.IES(n_iter=10), UNTIL_CONVERGED


_METHODS: dict[str, CalibrationMethod] = {
    m.name: m
    for m in (
        CalibrationMethod(
            "EKI",
            "stochastic EKI, DataMisfitController to T = 1 (finite-time EKI)",
            "posterior",
            N_ENSEMBLE,
            _eki,
        ),
        CalibrationMethod(
            "ETKI",
            "ensemble transform KI, DataMisfitController to T = 1",
            "posterior",
            N_ENSEMBLE,
            _etki,
        ),
        CalibrationMethod(
            "UKI",
            "unscented KI, prior imposed, dt = 1, 30 iterations",
            "posterior",
            None,
            _uki,
        ),
        CalibrationMethod(
            "EKS",
            "ensemble Kalman sampler (ALDI); linear: fixed dt 0.01 x 600; the stiff expsin "
            "and darcy1d: EKSStableScheduler x 300 (quick) / 1000",
            "sampler",
            N_ENSEMBLE,
            _eks,
        ),
        CalibrationMethod(
            "TEKI",
            "Tikhonov EKI (stochastic), dt = 1, 20 iterations",
            "optimiser",
            N_ENSEMBLE,
            _teki,
        ),
        CalibrationMethod(
            "GNKI",
            "Gauss-Newton KI (stochastic), dt = 0.5, 20 iterations; needs N_e > N_p",
            "optimiser",
            N_ENSEMBLE,
            _gnki,
            lambda problem: N_ENSEMBLE > problem.n_params,
        ),
        CalibrationMethod(
            "ESMDA",
            "ES-MDA (perturbed observations), 4 assimilations with alpha_i = 4",
            "posterior",
            N_ENSEMBLE,
            _esmda,
        ),
        CalibrationMethod(
            "IES",
            "iterative ensemble smoother (subspace), Evensen's step length, 10 iterations",
            "posterior",
            N_ENSEMBLE,
            _ies,
        ),
    )
}


def list_calibration_methods() -> list[str]:
    """Names of the registered calibration methods."""
    return list(_METHODS)


def get_calibration_method(name: str) -> CalibrationMethod:
    """The calibration method called `name`."""
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(
            f"unknown calibration method {name!r}; choose from {', '.join(_METHODS)}."
        ) from None


# --- running and scoring ---------------------------------------------------------------------


def moment_matched_ensemble(
    prior: fpr.ParameterDistribution, key: Array, n_ensemble: int
) -> np.ndarray:
    """``n_ensemble`` prior draws (unconstrained) whose sample mean and covariance equal the
    prior's exactly (``X = m_0 + A L_S^{-T} L_0^T``, ``S = L_S L_S^T`` the sample covariance)."""
    draws = np.asarray(prior.sample(key, n_ensemble), dtype=np.float64)
    anomalies = draws - draws.mean(axis=0)
    sample_chol = np.linalg.cholesky(anomalies.T @ anomalies / (n_ensemble - 1))
    prior_chol = np.linalg.cholesky(np.asarray(prior.cov, dtype=np.float64))
    white = np.linalg.solve(sample_chol, anomalies.T).T
    return np.asarray(prior.mean, dtype=np.float64) + white @ prior_chol.T


def _relative(a: np.ndarray, b: np.ndarray) -> float | None:
    value = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    return value if math.isfinite(value) else None  # a diverged run: no score


def _calibrate(method, inst, process, iterations, seed):
    key = jax.random.key(seed)
    k_ens, k_proc = jax.random.split(key)
    if method.n_ensemble is None:
        initial = None
    else:
        initial = jnp.asarray(moment_matched_ensemble(inst.prior, k_ens, method.n_ensemble))
    if isinstance(iterations, tuple):
        loop = {"until_converged": True, "max_iterations": iterations[1]}
    else:
        loop = {"n_iterations": iterations}
    t0 = time.perf_counter()
    result = fpr.calibrate(
        process,
        inst.forward,
        initial,
        jnp.asarray(inst.obs),
        jnp.asarray(inst.noise_var),
        key=k_proc,
        prior=inst.prior,
        throw=False,
        **loop,
    )
    jax.block_until_ready(result.state)
    return result, time.perf_counter() - t0


def _score(process, inst: ProblemInstance, result) -> dict[str, Any]:
    mean_u = np.asarray(process.mean(result.state), dtype=np.float64)
    cov_u = np.asarray(process.covariance(result.state), dtype=np.float64)
    estimate = inst.prior.to_constrained(jnp.asarray(mean_u))
    predicted = np.asarray(inst.forward(estimate), dtype=np.float64)
    residual = (predicted - inst.obs) / np.sqrt(inst.noise_var)
    misfit = float(residual @ residual / residual.size)
    w = 1.0 if inst.truth_weights is None else inst.truth_weights
    scores: dict[str, Any] = {
        "err_truth": _relative(w * np.asarray(estimate, dtype=np.float64), w * inst.truth),
        "misfit": misfit if math.isfinite(misfit) else None,
        "err_post_mean": None,
        "err_post_cov": None,
    }
    if inst.posterior_mean is not None:
        scores["err_post_mean"] = _relative(mean_u, inst.posterior_mean)
    if inst.posterior_cov is not None:
        scores["err_post_cov"] = _relative(cov_u, inst.posterior_cov)
    n_members = int(result.history.parameters.shape[1])
    scores["forward_evals"] = n_members * int(result.n_iterations)
    scores["iterations"] = int(result.n_iterations)
    scores["algorithm_time"] = float(result.state.time)
    return scores


def run_cell(
    problem: CalibrationProblem,
    method: CalibrationMethod,
    seed: int,
    *,
    quick: bool = False,
    measure_compile: bool = True,
) -> dict[str, Any]:
    """Run one (problem, method, seed) cell and return its scores.

    With `measure_compile` the cell runs twice: ``compile_seconds`` is the first (compiling)
    run's time minus the second's; ``wall_seconds`` is always a run that hit the compile cache
    when `measure_compile` is set (or a previous cell of the same problem and method ran).
    """
    inst = problem.build(seed, quick)
    process, iterations = method.make(inst)
    result, first = _calibrate(method, inst, process, iterations, seed)
    compile_seconds = None
    wall = first
    if measure_compile:
        result, wall = _calibrate(method, inst, process, iterations, seed)
        compile_seconds = max(first - wall, 0.0)
    failed_at = result.failed_iteration
    if failed_at is None:
        scores = _score(process, inst, result)
    else:
        # More than half the ensemble went non-finite: the cell scores nothing but is kept.
        scores = dict.fromkeys(("err_truth", "misfit", "err_post_mean", "err_post_cov"))
        scores["forward_evals"] = int(result.history.parameters.shape[1]) * (failed_at + 1)
        scores["iterations"] = failed_at + 1
        scores["algorithm_time"] = float(result.state.time)
    scores["wall_seconds"] = wall
    scores["compile_seconds"] = compile_seconds
    n_e = method.n_ensemble or 2 * problem.n_params + 1
    return {
        "problem": problem.name,
        "method": method.name,
        "seed": int(seed),
        "n_ensemble": n_e,
        "status": "ok" if failed_at is None else f"failed at iteration {failed_at}",
        "converged": bool(result.converged),
        "scores": scores,
    }


def _mean_std(values: Sequence[float | int | None]) -> dict[str, Any]:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(xs)}


def summarise_calibration(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every score, per (problem, method)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["problem"], cell["method"]), []).append(cell)
    out = []
    for (problem, method), members in groups.items():
        out.append(
            {
                "problem": problem,
                "method": method,
                "kind": get_calibration_method(method).kind if method in _METHODS else "unknown",
                "n_ensemble": members[0]["n_ensemble"],
                "seeds": [c["seed"] for c in members],
                "n_failed": sum(c.get("status", "ok") != "ok" for c in members),
                "scores": {
                    name: _mean_std([c["scores"].get(name) for c in members]) for name in SCORES
                },
            }
        )
    return out


def _select(names: Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    if not names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(
            f"unknown calibration {what} {', '.join(unknown)}; choose from {', '.join(known)}."
        )
    return list(names)


def run_calibration(
    problems: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    quick: bool = False,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every (problem x method x seed) cell; return (and optionally write) the results.

    **Arguments:**

    - `problems`, `methods`: names (default: all registered); methods that do not apply to a
        problem (GNKI with ``N_e <= N_p``) are skipped.
    - `seeds`: default ``(0, 1)`` with `quick`, ``(0, 1, 2, 3, 4)`` otherwise.
    - `quick`: shorter EKS runs and coarser reference quadrature.
    - `out`: a directory to write ``calibration.json`` and ``calibration.md`` into.
    - `progress`: called with each finished cell.

    **Returns:** a JSON-able dict: ``schema``, ``quick``, ``seeds``, ``problems``, ``methods``,
    ``cells`` (one per problem x method x seed), ``summary`` (mean/std over seeds), environment.
    """
    from ._runner import device_description, git_revision, package_versions

    problem_names = _select(problems, list(_PROBLEMS), "problem")
    method_names = _select(methods, list(_METHODS), "method")
    seeds = tuple(int(s) for s in (seeds or (QUICK_SEEDS if quick else FULL_SEEDS)))
    cells = []
    skipped = []
    t0 = time.perf_counter()
    for pname in problem_names:
        problem = _PROBLEMS[pname]
        for mname in method_names:
            method = _METHODS[mname]
            if not method.applicable(problem):
                skipped.append({"problem": pname, "method": mname})
                continue
            for i, seed in enumerate(seeds):
                cell = run_cell(problem, method, seed, quick=quick, measure_compile=i == 0)
                cells.append(cell)
                if progress is not None:
                    progress(cell)
    results = {
        "schema": CALIBRATION_SCHEMA,
        "kind": "calibration",
        "quick": bool(quick),
        "seeds": list(seeds),
        "dtype": str(jnp.zeros(()).dtype),
        "device": device_description(),
        "versions": package_versions(),
        "git_revision": git_revision(),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - t0,
        "problems": {
            n: {
                "description": _PROBLEMS[n].description,
                "n_params": _PROBLEMS[n].n_params,
                "n_obs": _PROBLEMS[n].n_obs,
                "reference": _PROBLEMS[n].reference,
            }
            for n in problem_names
        },
        "methods": {
            n: {
                "description": _METHODS[n].description,
                "kind": _METHODS[n].kind,
                "n_ensemble": _METHODS[n].n_ensemble,
            }
            for n in method_names
        },
        "skipped": skipped,
        "cells": cells,
        "summary": summarise_calibration(cells),
    }
    if out is not None:
        write_results(results, out)
    return results


# --- output ----------------------------------------------------------------------------------

_COLUMNS = (
    ("err_truth", "err truth", "{:.3g}"),
    ("misfit", "misfit", "{:.3g}"),
    ("err_post_mean", "err post mean", "{:.2g}"),
    ("err_post_cov", "err post cov", "{:.2g}"),
    ("forward_evals", "G evals", "{:.0f}"),
    ("iterations", "iters", "{:.0f}"),
    ("algorithm_time", "alg. time", "{:.3g}"),
    ("wall_seconds", "wall s", "{:.3f}"),
    ("compile_seconds", "compile s", "{:.2f}"),
)
_SPREAD = {"err_truth", "misfit", "err_post_mean", "err_post_cov"}


def _format(stat: dict[str, Any], fmt: str, spread: bool) -> str:
    if stat["mean"] is None:
        return "-"
    text = fmt.format(stat["mean"])
    if spread and stat["n"] > 1:
        text += " ± " + fmt.format(stat["std"])
    return text


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (mean ± std over seeds)."""
    header = ["problem", "method", "kind", "N_e", "failed"] + [label for _, label, _ in _COLUMNS]
    rows = []
    for row in results["summary"]:
        failed = f"{row['n_failed']}/{len(row['seeds'])}"
        cells = [row["problem"], row["method"], row["kind"], str(row["n_ensemble"]), failed]
        for key, _, fmt in _COLUMNS:
            cells.append(_format(row["scores"][key], fmt, key in _SPREAD))
        rows.append(cells)
    return header, rows


def render_markdown(results: dict[str, Any]) -> str:
    """The summary table as Markdown, with the problem and method legend."""
    header, rows = table_rows(results)
    seeds = ", ".join(map(str, results["seeds"]))
    lines = [
        "# filterax calibration benchmarks",
        "",
        f"{'Quick suite' if results['quick'] else 'Full suite'}; seeds {seeds}; "
        f"{results['dtype']}; {results['device']}. Scores: mean ± std over seeds "
        "(errors relative; misfit = ||Gamma^-1/2 (G(theta_hat) - y)||^2 / N_y; wall time "
        "excludes compilation).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Problems", ""]
    for name, p in results["problems"].items():
        lines.append(
            f"- **{name}** (N_p = {p['n_params']}, N_y = {p['n_obs']}): {p['description']}. "
            f"Reference: {p['reference']}."
        )
    lines += ["", "## Methods", ""]
    for name, m in results["methods"].items():
        n_e = m["n_ensemble"] if m["n_ensemble"] is not None else "2 N_p + 1"
        lines.append(f"- **{name}** ({m['kind']}, N_e = {n_e}): {m['description']}.")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``calibration.json`` and ``calibration.md`` into `out` (created if needed)."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "calibration.json"
    write_json_atomic(json_path, results)
    md_path = directory / "calibration.md"
    write_text_atomic(md_path, render_markdown(results))
    return {"json": json_path, "markdown": md_path}


def print_table(results: dict[str, Any], console: Any = None) -> None:
    """Print the summary table with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(160, Console().width))
    header, rows = table_rows(results)
    table = Table(title="calibration (mean ± std over seeds)", title_justify="left")
    for col in header:
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)
