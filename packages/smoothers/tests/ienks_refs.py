"""A straight numpy re-derivation of DAPPER's ``iEnKS.assimilate`` and ``iEnKS_update``.

Written line by line from DAPPER 1.8.1 (``dapper/da_methods/variational.py``) with numpy/scipy
linear algebra (SVD-based ``Cowp``, as DAPPER), independent of filterax's implementation. The
only changes: the model, observation operator and all random draws are injected, so the
reference can replay exactly the draws of `filterax.smoothers.iEnKS`:

- ``dyn(E, t0, t1)``: forecast an ensemble over one observation cycle;
- ``obs(E)``: the observed ensemble;
- ``perturbation(ko, iteration, shape)``: standard normals for the ``PertObs`` variants;
- ``rotation(ko, N)``: the orthogonal matrix of DAPPER's ``genOG_1`` (or ``None``).

Missing observations are not supported here (DAPPER has none).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla


def center(E):
    x = np.mean(E, axis=0)
    return E - x, x


def mean0(E):
    return E - np.mean(E, axis=0)


def inflate_ens(E, factor):
    X, x = center(E)
    return x + X * factor


def svd0(A):
    M, N = A.shape
    if M > N:
        return sla.svd(A, full_matrices=True)
    return sla.svd(A, full_matrices=False)


def pad0(x, N):
    out = np.zeros(N)
    out[: len(x)] = x
    return out


def tinv(A, r):
    U, s, VT = sla.svd(A, full_matrices=False)
    U, s, VT = U[:, :r], s[:r], VT[:r]
    return (VT.T * s**-1.0) @ U.T


def spread(E):
    return np.sqrt(np.mean(np.var(E, axis=0, ddof=1)))


def post_process(E, infl, rot_matrix):
    if infl != 1.0 or rot_matrix is not None:
        A, mu = center(E)
        T = np.eye(E.shape[0]) * infl
        if rot_matrix is not None:
            T = rot_matrix @ T
        E = mu + T @ A
    return E


def iEnKS_update(upd_a, E, DAW, model, stats, EPS, y, ko, Rm12, MDA, nIter, wtol, perturbation):
    dyn, obs, tprev, times = model
    N, Nx = E.shape
    N1 = N - 1
    X0, x0 = center(E)
    w = np.zeros(N)
    T = np.eye(N)
    Tinv = np.eye(N)
    for iteration in range(nIter):
        E = x0 + (w + EPS * T) @ X0
        for kCycle in DAW:
            E = dyn(E, tprev[kCycle], times[kCycle])
        Eo = obs(E)
        if EPS != 1.0:
            E = inflate_ens(E, 1 / EPS)
            Eo = inflate_ens(Eo, 1 / EPS)
        if iteration == 0:
            stats["mu_f"][ko] = np.mean(E, axis=0)
            stats["spread_f"][ko] = spread(E)
            Xf, xf = center(E)
        T_old = T

        Y, xo = center(Eo)
        dy = (y - xo) @ Rm12.T
        Y = Y @ Rm12.T
        Y0 = Tinv @ Y
        V, s, UT = svd0(Y0)

        za = N1
        if MDA:
            za *= nIter

        def Cowp(expo, V=V, s=s, za=za):
            return (V * (pad0(s**2, N) + za) ** -expo) @ V.T

        Cow1 = Cowp(1.0)

        if MDA:
            Cow1 = Cow1 @ T
            dw = dy @ Y.T @ Cow1
            if upd_a == "pertobs":
                D = mean0(perturbation(ko, iteration, Y.shape)) * np.sqrt(nIter)
                T = T - (Y + D) @ Y.T @ Cow1
            elif upd_a == "sqrt":
                T = Cowp(0.5) * np.sqrt(za) @ T
            elif upd_a == "order1":
                T = T - 0.5 * Y @ Y.T @ Cow1
        else:
            grad = Y0 @ dy - w * za
            dw = grad @ Cow1
            if upd_a == "sqrt":
                T = Cowp(0.5) * np.sqrt(N1)
                Tinv = Cowp(-0.5) / np.sqrt(N1)
            elif upd_a == "pertobs":
                if iteration == 0:
                    D = mean0(perturbation(ko, iteration, Y.shape))
                gradT = -(Y + D) @ Y0.T + N1 * (np.eye(N) - T)
                T = T + gradT @ Cow1
                Tinv = sla.inv(T + 1)
            elif upd_a == "order1":
                gradT = -0.5 * Y @ Y0.T + N1 * (np.eye(N) - T)
                T = T + gradT @ Cow1
                Tinv = tinv(T, N1)

        w = w + dw
        if dw @ dw < wtol * N:
            break

    final_increment = (dw + T - T_old) @ Xf
    Ea = E + final_increment
    stats["mu_a"][ko] = np.mean(Ea, axis=0)
    stats["spread_a"][ko] = spread(Ea)
    stats["iters"][ko] = iteration + 1
    return x0 + (w + T) @ X0


def ienks(
    upd_a,
    E,
    yy,
    model,
    R,
    *,
    Lag=1,
    nIter=10,
    wtol=0.0,
    MDA=False,
    bundle=False,
    infl=1.0,
    perturbation=None,
    rotation=None,
):
    """DAPPER's ``iEnKS.assimilate`` window loop; returns the f/a/s statistics per time."""
    dyn, obs, tprev, times = model
    Ko = len(yy) - 1
    N, Nx = E.shape
    EPS = 1e-4 if bundle else 1.0
    Rm12 = np.linalg.inv(sla.sqrtm(R)).real
    stats = {
        "mu_f": np.full((Ko + 1, Nx), np.nan),
        "mu_a": np.full((Ko + 1, Nx), np.nan),
        "mu_s": np.full((Ko + 1, Nx), np.nan),
        "spread_f": np.full(Ko + 1, np.nan),
        "spread_a": np.full(Ko + 1, np.nan),
        "spread_s": np.full(Ko + 1, np.nan),
        "iters": np.zeros(Ko + 1, int),
    }
    if Lag == 0:
        E = dyn(E, tprev[0], times[0])
    for ko in range(0, Ko + Lag + 1):
        kLag = ko - Lag
        DAW = range(max(0, kLag + 1), min(ko, Ko) + 1)
        if ko <= Ko:
            E = iEnKS_update(
                upd_a, E, DAW, model, stats, EPS, yy[ko], ko, Rm12, MDA, nIter, wtol, perturbation
            )
            rot = None if rotation is None else rotation(ko, N)
            E = post_process(E, infl, rot)
        if kLag >= 0:
            stats["mu_s"][kLag] = np.mean(E, axis=0)
            stats["spread_s"][kLag] = spread(E)
        cycle_window = range(max(kLag + 1, 0), min(max(kLag + 1 + 1, 0), Ko + 1))
        for kCycle in cycle_window:
            E = dyn(E, tprev[kCycle], times[kCycle])
    stats["final"] = E
    return stats
