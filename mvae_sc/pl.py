"""Plots: training curves and a UMAP overview of an integrated MuData."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mudata import MuData

    from .model import MVAE


def history(
    model: MVAE, *, keys: Sequence[str] = ("train_loss", "validation_loss"), ax: Axes | None = None
) -> Axes:
    """Plot training curves from ``model.history`` (one line per key, by epoch).

    Examples
    --------
    >>> mvae_sc.pl.history(model)
    """
    if model.history.empty:
        raise ValueError("The model has no training history; call `model.train()` first.")
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    for key in keys:
        if key in model.history:
            ax.plot(model.history.index, model.history[key], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per cell (objective at the KL weight)")
    ax.legend(frameon=False)
    return ax


def umap_overview(mdata: MuData, *, color: Sequence[str], basis: str = "X_umap") -> Figure:
    """One UMAP panel per ``color`` column of ``mdata.obs``; returns the figure.

    Examples
    --------
    >>> fig = mvae_sc.pl.umap_overview(mdata, color=["cell_type", "modality"])
    >>> fig.savefig("umap.png")
    """
    import scanpy as sc

    if basis not in mdata.obsm:
        raise ValueError(f"{basis!r} is not in mdata.obsm; run `sc.tl.umap(mdata)` first.")
    missing = [c for c in color if c not in mdata.obs]
    if missing:
        raise ValueError(
            f"Columns {missing} are not in mdata.obs (columns: {list(mdata.obs.columns)})."
        )
    fig, axes = plt.subplots(1, len(color), figsize=(5.5 * len(color), 4.5), squeeze=False)
    with warnings.catch_warnings():
        # scanpy's plotting calls MuData.obs_vector, which mudata marks deprecated,
        warnings.filterwarnings(
            "ignore", message=".*obs_vector is deprecated.*", category=FutureWarning
        )
        # and the colour maps through an API matplotlib will deprecate
        warnings.filterwarnings(
            "ignore", message=".*set_bad function.*", category=PendingDeprecationWarning
        )
        for ax, key in zip(axes[0], color, strict=True):
            sc.pl.embedding(mdata, basis=basis, color=key, ax=ax, show=False, frameon=False)
    fig.tight_layout()
    return fig
