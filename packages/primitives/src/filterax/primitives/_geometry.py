"""The geometry a localising analysis takes from the model (docs/conventions.md; issue "The model
carries its geometry").

A model knows where its state components and observations sit and how far apart two points
are (`AbstractModel.state_coords`, `obs_coords`, `distance`: a periodic ring for Lorenz-96, the
sphere for latitude–longitude grids). `geometry_context` turns that into the keyword context of
an `AbstractLocalFilter`, so a user of a localising filter never re-derives it; explicit
context entries still override the model's (a model without geometry, or a different choice).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._model import AbstractModel

__all__ = ["GEOMETRY_KEYS", "geometry_context"]

GEOMETRY_KEYS = ("state_coords", "obs_coords", "distance")
"""The context keywords of an `AbstractLocalFilter` that a model provides."""


def geometry_context(
    model: AbstractModel, context: Mapping[str, Any] | None = None, *, owner: str = "analysis"
) -> dict[str, Any]:
    """The keyword context of a localising kernel: the model's geometry, overridden by `context`.

    ``{"state_coords": model.state_coords, "obs_coords": model.obs_coords, "distance":
    model.distance} | context``: an entry of `context` replaces the model's (even with
    ``None``), and other entries (e.g. LETKF's ``local_obs_indices``) pass through.
    ``distance = None`` leaves the choice to the kernel (`LETKF`: its own `distance`, else
    Euclidean).

    **Arguments:**

    - `model`: an `AbstractModel`.
    - `context`: the user's extra keywords (e.g. `EnsembleFilter.context`), or ``None``.
    - `owner`: the name of the localising method, for the error message.

    **Returns:** the dict of keywords for ``kernel.analysis(..., **context)``.

    **Raises:** `ValueError` when the state or observation coordinates are given neither by
    the model nor by `context`.

    **Example:**

    ```python
    from filterax.zoo import presets

    ssm = presets.lorenz96_sakov2008()
    geometry_context(ssm)["distance"]  # PeriodicDistance(period=40.0)
    geometry_context(ssm, {"distance": euclidean})  # the model's coordinates, Euclidean
    ```
    """
    if not isinstance(model, AbstractModel):
        raise TypeError(
            f"{owner}: the model must be an AbstractModel (filterax.primitives.Model, "
            f"filterax.zoo.StateSpaceModel) carrying the geometry; got {type(model).__name__}."
        )
    merged: dict[str, Any] = {
        "state_coords": model.state_coords,
        "obs_coords": model.obs_coords,
        "distance": model.distance,
    }
    merged.update(context or {})
    missing = [k for k in ("state_coords", "obs_coords") if merged[k] is None]
    if missing:
        raise ValueError(
            f"{owner} localises, so it needs the coordinates of the state components and of "
            f"the observations, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Give the model state_coords "
            "(N_x, D) and obs_coords (N_y, D) (filterax.zoo.StateSpaceModel(..., "
            "state_coords=..., obs_coords=..., distance=...) or filterax.primitives.Model(..., "
            "state_coords=..., obs_coords=...); the zoo presets carry them), or pass them in "
            "context={'state_coords': ..., 'obs_coords': ...}."
        )
    return merged
