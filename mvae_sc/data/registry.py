"""What ``MVAE.setup_mudata`` records about a MuData, and the checks made at the door.

The registry is stored as JSON in ``mdata.uns["mvae_sc"]["registry"]`` (JSON survives
an ``.h5mu`` round trip unchanged, None values and key order included) and copied into
every saved model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from ..nn.likelihoods import COUNT_LIKELIHOODS, LIKELIHOODS

UNS_KEY = "mvae_sc"

DEFAULT_LIKELIHOODS = {"rna": "nb", "atac": "bernoulli"}


@dataclass
class ModalitySpec:
    """One registered modality: its likelihood and where its values are (None = ``.X``)."""

    likelihood: str
    layer: str | None = None


@dataclass
class Registry:
    """Everything the model needs to know about how to read a MuData."""

    modalities: dict[str, ModalitySpec]
    batch_key: str | None = None
    batch_categories: list[str] = field(default_factory=list)

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Registry:
        raw = json.loads(text)
        raw["modalities"] = {k: ModalitySpec(**v) for k, v in raw["modalities"].items()}
        return cls(**raw)

    @classmethod
    def from_mudata(cls, mdata: MuData) -> Registry:
        """Read the registry written by ``setup_mudata``; clear error if there is none."""
        entry = mdata.uns.get(UNS_KEY)
        if not isinstance(entry, Mapping) or "registry" not in entry:
            raise ValueError(
                "This MuData has not been registered: call "
                "`mvae_sc.MVAE.setup_mudata(mdata, ...)` before creating the model."
            )
        return cls.from_json(str(entry["registry"]))


def get_values(mdata: MuData, name: str, layer: str | None):
    """The matrix of modality ``name``: ``.layers[layer]`` or ``.X``."""
    adata = mdata.mod[name]
    return adata.X if layer is None else adata.layers[layer]


def _check_values(name: str, layer: str | None, likelihood: str, values) -> None:
    where = f"modality {name!r} ({'.X' if layer is None else f'layer {layer!r}'})"
    if values is None:
        raise ValueError(f"{where} holds no data (X is None). Put the counts in .X or a layer.")
    data = values.data if sp.issparse(values) else np.asarray(values)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise TypeError(f"{where} has dtype {data.dtype}; expected a real numeric matrix.")
    if data.size and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Remove them, or drop the "
            "cell from this modality if the measurement failed (missing is allowed, NaN is not)."
        )
    if likelihood in COUNT_LIKELIHOODS or likelihood == "bernoulli":
        if data.size and data.min() < 0:
            raise ValueError(
                f"{where} contains negative values (min {data.min():g}); the {likelihood!r} "
                "likelihood needs raw non-negative counts. Pass the raw counts layer, e.g. "
                f"`layers={{{name!r}: 'counts'}}`."
            )
    if likelihood in COUNT_LIKELIHOODS and data.size:
        non_integer = data != np.round(data)
        if non_integer.any():
            example = data[non_integer][0]
            raise ValueError(
                f"{where} contains non-integer values (e.g. {example:g}); the {likelihood!r} "
                "likelihood needs raw counts, not normalised or log-transformed data. Pass the "
                f"raw counts layer (`layers={{{name!r}: 'counts'}}`) or use likelihood 'gaussian'."
            )


def _check_unique(index: pd.Index, what: str, fix: str) -> None:
    if not index.is_unique:
        dupes = index[index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"{what} has duplicated names, e.g. {dupes}. {fix}")


def build_registry(
    mdata: MuData,
    *,
    modalities: Mapping[str, str] | None = None,
    layers: Mapping[str, str | None] | None = None,
    batch_key: str | None = None,
) -> Registry:
    """Validate ``mdata`` and describe how to read it. Changes nothing in ``mdata``.

    See :meth:`mvae_sc.MVAE.setup_mudata` for the meaning of the arguments.
    """
    if not isinstance(mdata, MuData):
        raise TypeError(
            f"Expected a mudata.MuData, got {type(mdata).__name__}. Wrap AnnData objects with "
            "`mudata.MuData({'rna': adata_rna, 'atac': adata_atac})`."
        )
    if modalities is None:
        modalities = {k: v for k, v in DEFAULT_LIKELIHOODS.items() if k in mdata.mod}
        if not modalities:
            raise ValueError(
                f"No 'rna' or 'atac' modality in this MuData (it has {list(mdata.mod)}). "
                "Name the modalities and their likelihoods, e.g. "
                "`modalities={'rna': 'nb', 'prot': 'nb', 'ephys': 'gaussian'}`."
            )
    if not modalities:
        raise ValueError("`modalities` is empty; register at least one modality.")
    layers = dict(layers or {})
    unknown_layers = set(layers) - set(modalities)
    if unknown_layers:
        raise ValueError(
            f"`layers` names modalities that are not registered: {sorted(unknown_layers)}."
        )
    _check_unique(mdata.obs_names, "The MuData's obs", "Call `mdata.obs_names_make_unique()`.")

    specs: dict[str, ModalitySpec] = {}
    for name, likelihood in modalities.items():
        if name not in mdata.mod:
            raise ValueError(f"Modality {name!r} is not in this MuData; it has {list(mdata.mod)}.")
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"Likelihood {likelihood!r} for modality {name!r} is not known; choose one of "
                f"{list(LIKELIHOODS)}."
            )
        adata = mdata.mod[name]
        layer = layers.get(name)
        if layer is not None and layer not in adata.layers:
            raise ValueError(
                f"Layer {layer!r} does not exist in modality {name!r}; its layers are "
                f"{list(adata.layers)} (use None for .X)."
            )
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(
                f"Modality {name!r} has {adata.n_obs} cells and {adata.n_vars} features; a "
                "registered modality needs at least one of each. Leave it out of `modalities`."
            )
        _check_unique(
            adata.var_names,
            f"Modality {name!r} var",
            f"Call `mdata.mod[{name!r}].var_names_make_unique()`.",
        )
        _check_unique(
            adata.obs_names,
            f"Modality {name!r} obs",
            f"Call `mdata.mod[{name!r}].obs_names_make_unique()`.",
        )
        _check_values(name, layer, likelihood, get_values(mdata, name, layer))
        specs[name] = ModalitySpec(likelihood=likelihood, layer=layer)

    presence = np.stack([np.asarray(mdata.obsmap[name]) > 0 for name in specs])
    empty = ~presence.any(0)
    if empty.any():
        names = mdata.obs_names[empty][:5].tolist()
        raise ValueError(
            f"{int(empty.sum())} cells have none of the registered modalities {list(specs)} "
            f"(e.g. {names}). Remove them, e.g. `mdata = mdata[has_any_modality].copy()`."
        )

    categories: list[str] = []
    if batch_key is not None:
        if batch_key not in mdata.obs:
            raise ValueError(
                f"batch_key {batch_key!r} is not a column of mdata.obs (columns: "
                f"{list(mdata.obs.columns)[:20]}). Add it, e.g. "
                f"`mdata.obs[{batch_key!r}] = ...`, or `mdata.pull_obs()` to copy per-modality columns."
            )
        column = mdata.obs[batch_key]
        if column.isna().any():
            raise ValueError(
                f"batch_key {batch_key!r} has {int(column.isna().sum())} missing values; every "
                "cell needs a batch. Fill them (e.g. with 'unknown')."
            )
        values = column.astype(str)
        categories = (
            [str(c) for c in column.cat.categories if (values == str(c)).any()]
            if isinstance(column.dtype, pd.CategoricalDtype)
            else sorted(values.unique().tolist())
        )
        sizes = values.value_counts()
        tiny = sizes[sizes < 2].index.tolist()
        if tiny:
            warnings.warn(
                f"batch_key {batch_key!r}: batches {tiny[:5]} have a single cell; their batch "
                "effect cannot be learned. Consider merging them.",
                UserWarning,
                stacklevel=3,
            )
    return Registry(modalities=specs, batch_key=batch_key, batch_categories=categories)
