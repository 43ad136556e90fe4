"""The amortised analysis network on the leaderboard (issue 12 §3, master list 10.10).

``Amortised-ETKF-10`` is ``EnsembleFilter(AmortisedAnalysis(ETKF(), net), infl 1.02, rot)``:
the registered ``ETKF-10`` (DAPPER's L63 setting) plus a permutation-equivariant correction
network trained by ``bench/scripts/train_amortised.py`` (`filterax.learn.fit_amortised`, fair
CRPS against the truth of a training twin whose keys no scored seed uses). The trained weights
ship as ``amortised_l63.eqx`` and are loaded with `eqx.tree_deserialise_leaves` into the
skeleton built here (same architecture as the script): training takes minutes, too slow to
run at registration time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._registry import MethodConfig

__all__ = ["L63_WEIGHTS", "amortised_methods", "l63_amortised_filter", "l63_network"]

L63 = "lorenz63_sakov2012"
L63_WEIGHTS = Path(__file__).with_name("amortised_l63.eqx")
L63_N_ENSEMBLE = 10
L63_INFLATION = 1.02


def l63_network(key: Any) -> Any:
    """The L63 network's architecture (dense deep sets over the 10 members)."""
    import filterax.learn as fl

    return fl.EquivariantEnsembleNet(
        3, 32, 1, key=key, state_scale=10.0, anomaly_scale=1.0, output_scale=0.1
    )


def l63_amortised_filter(network: Any) -> Any:
    """The cycled method around `network`: ETKF base, inflation 1.02, random rotation."""
    import filterax.filters as ff
    import filterax.learn as fl
    import filterax.primitives as fxp

    return ff.EnsembleFilter(
        fl.AmortisedAnalysis(ff.ETKF(), network),
        inflator=fxp.MultiplicativeInflator(L63_INFLATION),
        rotate=True,
    )


def _trained_l63(params: Any) -> Any:
    del params
    import equinox as eqx
    import jax

    if not L63_WEIGHTS.exists():
        raise FileNotFoundError(
            f"{L63_WEIGHTS} is missing: run `uv run python bench/scripts/train_amortised.py "
            "--save-weights` to train the amortised L63 network."
        )
    skeleton = l63_network(jax.random.key(0))
    network = eqx.tree_deserialise_leaves(L63_WEIGHTS, skeleton)
    return l63_amortised_filter(network)


def amortised_methods() -> list[MethodConfig]:
    """The `MethodConfig` row of the trained amortised filter."""
    return [
        MethodConfig(
            name="Amortised-ETKF-10",
            family="Amortised",
            filter=_trained_l63,
            kind="cycled",
            n_ensemble=L63_N_ENSEMBLE,
            settings={L63: {}},
            description=(
                "ETKF-10 (infl 1.02, rot) + a trained permutation-equivariant correction "
                "network (filterax.learn.AmortisedAnalysis; weights from "
                "bench/scripts/train_amortised.py)"
            ),
        )
    ]
