"""What ``MVAE.setup_mudata`` records about a MuData, and the checks made at the door.

The registry is stored as JSON in ``mdata.uns["mvae_sc"]["registry"]`` (JSON survives
an ``.h5mu`` round trip unchanged, None values and key order included) and copied into
every saved model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from ..nn.likelihoods import COUNT_LIKELIHOODS, LIKELIHOODS

UNS_KEY = "mvae_sc"
BACKED_CHUNK = 16384  # rows read at a time from a backed matrix (validation, depths)

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
    categorical_covariate_keys: list[str] = field(default_factory=list)
    covariate_categories: dict[str, list[str]] = field(default_factory=dict)
    continuous_covariate_keys: list[str] = field(default_factory=list)
    # {key: [mean, sd]} of each continuous covariate in the registered data
    covariate_moments: dict[str, list[float]] = field(default_factory=dict)
    labels_key: str | None = None
    label_type: str | None = None
    label_categories: list[str] = field(default_factory=list)
    label_moments: list[float] = field(default_factory=list)  # [mean, sd], continuous

    @property
    def n_batches(self) -> int:
        return len(self.batch_categories)

    @property
    def n_covariates(self) -> int:
        """Width of the covariate vector: batch one-hot, other one-hots, continuous."""
        return (
            self.n_batches
            + sum(len(c) for c in self.covariate_categories.values())
            + len(self.continuous_covariate_keys)
        )

    @property
    def n_label_outputs(self) -> int:
        """Outputs of the supervised head: classes, 1 for a continuous label, 0 if none."""
        if self.labels_key is None:
            return 0
        return len(self.label_categories) if self.label_type == "categorical" else 1

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


def is_backed(matrix) -> bool:
    """True for a matrix read from disk on demand (backed AnnData: a CSR/CSC dataset or
    an h5py dataset), False for one in memory."""
    return isinstance(matrix, ad.abc.CSRDataset | ad.abc.CSCDataset | h5py.Dataset)


def row_blocks(matrix, chunk: int = BACKED_CHUNK):
    """The matrix as in-memory blocks of at most ``chunk`` rows (one block if it is in
    memory already): what reading a backed matrix costs is one block at a time."""
    if not is_backed(matrix):
        yield matrix
        return
    for start in range(0, matrix.shape[0], chunk):
        yield matrix[start : min(start + chunk, matrix.shape[0])]


def _check_values(name: str, layer: str | None, likelihood: str, values) -> None:
    where = f"modality {name!r} ({'.X' if layer is None else f'layer {layer!r}'})"
    if values is None:
        raise ValueError(f"{where} holds no data (X is None). Put the counts in .X or a layer.")
    if isinstance(values, ad.abc.CSCDataset):
        raise ValueError(
            f"{where} is a backed CSC matrix; rows cannot be read from it efficiently. Write "
            "it as CSR (`adata.X = adata.X.tocsr()` before saving) or load it into memory."
        )
    for block in row_blocks(values):
        _check_block(name, where, likelihood, block)


def _check_block(name: str, where: str, likelihood: str, values) -> None:
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
    categorical_covariate_keys: str | Sequence[str] | None = None,
    continuous_covariate_keys: str | Sequence[str] | None = None,
    labels_key: str | None = None,
    label_type: str = "categorical",
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

    batch_categories = [] if batch_key is None else _categories(mdata, batch_key, "batch_key")
    categorical_covariate_keys = _keys(categorical_covariate_keys, "categorical_covariate_keys")
    continuous_covariate_keys = _keys(continuous_covariate_keys, "continuous_covariate_keys")
    if batch_key is not None and batch_key in categorical_covariate_keys:
        raise ValueError(
            f"{batch_key!r} is both the batch_key and a categorical covariate; name it once "
            "(as batch_key, which the adversary and batch metrics use)."
        )
    covariate_categories = {
        key: _categories(mdata, key, "categorical_covariate_keys")
        for key in categorical_covariate_keys
    }
    covariate_moments = {
        key: _continuous_moments(mdata, key, "continuous_covariate_keys", allow_missing=False)
        for key in continuous_covariate_keys
    }
    label_categories: list[str] = []
    label_moments: list[float] = []
    if labels_key is None:
        label_type = None
    elif label_type == "categorical":
        label_categories = _label_categories(mdata, labels_key)
    elif label_type == "continuous":
        label_moments = _continuous_moments(mdata, labels_key, "labels_key", allow_missing=True)
    else:
        raise ValueError(f"label_type must be 'categorical' or 'continuous', got {label_type!r}.")
    return Registry(
        modalities=specs,
        batch_key=batch_key,
        batch_categories=batch_categories,
        categorical_covariate_keys=categorical_covariate_keys,
        covariate_categories=covariate_categories,
        continuous_covariate_keys=continuous_covariate_keys,
        covariate_moments=covariate_moments,
        labels_key=labels_key,
        label_type=label_type,
        label_categories=label_categories,
        label_moments=label_moments,
    )


def _keys(keys: str | Sequence[str] | None, argument: str) -> list[str]:
    """A list of obs column names from None, one name, or a sequence of names."""
    if keys is None:
        return []
    keys = [keys] if isinstance(keys, str) else list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError(f"`{argument}` names a column more than once: {keys}.")
    return keys


def _obs_column(mdata: MuData, key: str, argument: str) -> pd.Series:
    if key not in mdata.obs:
        raise ValueError(
            f"{argument} {key!r} is not a column of mdata.obs (columns: "
            f"{list(mdata.obs.columns)[:20]}). Add it, e.g. `mdata.obs[{key!r}] = ...`, or "
            "`mdata.pull_obs()` to copy per-modality columns."
        )
    return mdata.obs[key]


def _observed_categories(column: pd.Series) -> list[str]:
    """The categories present in a column, as strings: in category order for a
    categorical column, sorted otherwise."""
    values = column.dropna().astype(str)
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories if (values == str(c)).any()]
    return sorted(values.unique().tolist())


def _categories(mdata: MuData, key: str, argument: str) -> list[str]:
    """Categories of a batch-like obs column; every cell needs a value."""
    column = _obs_column(mdata, key, argument)
    if column.isna().any():
        raise ValueError(
            f"{argument} {key!r} has {int(column.isna().sum())} missing values; every "
            "cell needs one. Fill them (e.g. with 'unknown')."
        )
    sizes = column.astype(str).value_counts()
    tiny = sizes[sizes < 2].index.tolist()
    if tiny:
        warnings.warn(
            f"{argument} {key!r}: categories {tiny[:5]} have a single cell; their effect "
            "cannot be learned. Consider merging them.",
            UserWarning,
            stacklevel=4,
        )
    return _observed_categories(column)


def _continuous_moments(
    mdata: MuData, key: str, argument: str, *, allow_missing: bool
) -> list[float]:
    """``[mean, sd]`` of a numeric obs column (NaN = unlabelled when allowed)."""
    column = _obs_column(mdata, key, argument)
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise TypeError(
            f"{argument} {key!r} has dtype {column.dtype}; a continuous column must be "
            "numeric (int or float)."
        )
    values = column.to_numpy(dtype=np.float64)
    missing = np.isnan(values)
    if np.isinf(values).any():
        raise ValueError(f"{argument} {key!r} contains infinite values; remove or clip them.")
    if missing.any() and not allow_missing:
        raise ValueError(
            f"{argument} {key!r} has {int(missing.sum())} missing values; every cell needs "
            "one. Fill them (e.g. with the column's median)."
        )
    if (~missing).sum() < 2:
        raise ValueError(f"{argument} {key!r} needs at least 2 non-missing values.")
    sd = float(values[~missing].std())
    return [float(values[~missing].mean()), sd if sd > 0 else 1.0]


def _label_categories(mdata: MuData, key: str) -> list[str]:
    """Classes of a categorical label column; missing values mark unlabelled cells."""
    categories = _observed_categories(_obs_column(mdata, key, "labels_key"))
    if len(categories) < 2:
        raise ValueError(
            f"labels_key {key!r} has {len(categories)} class(es) among labelled cells "
            f"({categories}); a categorical label needs at least 2. Unlabelled cells are NaN."
        )
    return categories
