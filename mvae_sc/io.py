"""Reading multiome data: the 10x Genomics Cell Ranger ARC reader, and one AnnData of
several modalities' features split into a MuData."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import h5py
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = ["read_10x_multiome", "read_multiome", "split_modalities"]

# ---------------------------------------------------------------------------------------
# 10x Genomics Cell Ranger ARC reader
# ---------------------------------------------------------------------------------------

#: Modality name for each feature type, as Cell Ranger writes them and as the NeurIPS
#: 2021 (openproblems) multiome and CITE-seq files name them; other types get a
#: lower-case name.
FEATURE_TYPE_TO_MODALITY = {
    "Gene Expression": "rna",
    "GEX": "rna",
    "Peaks": "atac",
    "ATAC": "atac",
    "Antibody Capture": "prot",
    "ADT": "prot",
}

#: ``var`` columns that name each feature's type in a combined AnnData, first found used.
FEATURE_TYPE_KEYS = ("feature_types", "feature_type", "modality")

_REQUIRED_10X_DATASETS = (
    "matrix/barcodes",
    "matrix/data",
    "matrix/indices",
    "matrix/indptr",
    "matrix/shape",
    "matrix/features/id",
    "matrix/features/name",
    "matrix/features/feature_type",
)


def _decode(values: np.ndarray) -> np.ndarray:
    """HDF5 byte strings to a str object array."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8").astype(object)
    return values.astype(str).astype(object)


def _modality_name(feature_type: str) -> str:
    if feature_type in FEATURE_TYPE_TO_MODALITY:
        return FEATURE_TYPE_TO_MODALITY[feature_type]
    return feature_type.strip().lower().replace(" ", "_")


def _parse_intervals(intervals: np.ndarray) -> pd.DataFrame:
    """'chr1:100-200' or 'chr1-100-200' -> chrom, start, end columns (NA where the
    interval is malformed)."""
    parts = pd.Series(intervals, dtype=object).str.extract(r"^(.+)[:-](\d+)-(\d+)$")
    return pd.DataFrame(
        {
            "chrom": parts[0].to_numpy(dtype=object),
            "start": pd.to_numeric(parts[1]).astype("Int64").to_numpy(),
            "end": pd.to_numeric(parts[2]).astype("Int64").to_numpy(),
        }
    )


def read_10x_multiome(path: str | Path) -> mudata.MuData:
    """Read a Cell Ranger ARC ``filtered_feature_bc_matrix.h5`` into a MuData.

    The file holds one features x barcodes CSC matrix (``/matrix``) with a
    ``features/feature_type`` per feature; it is split into one modality per feature
    type. The file is read with h5py directly rather than ``scanpy.read_10x_h5`` to skip
    the combined genes + peaks AnnData copy and its duplicate-name warning.

    Parameters
    ----------
    path
        Path to the ``.h5`` file.

    Returns
    -------
    MuData with ``mod["rna"]`` ("Gene Expression": ``var_names`` the gene names made
    unique, ``var["gene_ids"]`` the Ensembl ids), ``mod["atac"]`` ("Peaks": ``var_names``
    the peak ids ``chr:start-end``, ``var["chrom"/"start"/"end"]`` parsed from them), and
    ``mod["prot"]`` for "Antibody Capture" (any other feature type gets its lower-cased
    name). Every modality keeps ``var["feature_types"]`` and, when present,
    ``var["genome"]`` and ``var["interval"]``; ``X`` is CSR float32 counts; ``obs_names``
    are the barcodes.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If `path` is not a 10x feature-barcode HDF5 file, or has no "Gene Expression" or
        no "Peaks" features.

    Examples
    --------
    >>> from mvae_sc.io import read_10x_multiome
    >>> mdata = read_10x_multiome("pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    >>> mdata.mod["rna"].n_vars, mdata.mod["atac"].n_vars  # doctest: +SKIP
    (36601, 143887)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {str(path)!r}.")
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"{str(path)!r} is not an HDF5 file; expected a Cell Ranger ARC "
            "'filtered_feature_bc_matrix.h5' (not the .tar.gz of the MEX folder)."
        )
    with h5py.File(path, "r") as f:
        missing = [name for name in _REQUIRED_10X_DATASETS if name not in f]
        if missing:
            raise ValueError(
                f"{str(path)!r} is not a 10x feature-barcode matrix (Cell Ranger >= 3 / ARC "
                f"layout): missing {missing}. Legacy (Cell Ranger 2) files have no "
                "feature types and cannot hold multiome data."
            )
        group = f["matrix"]
        features = group["features"]
        feature_type = _decode(features["feature_type"][:])
        has = set(feature_type)
        for required in ("Gene Expression", "Peaks"):
            if required not in has:
                raise ValueError(
                    f"{str(path)!r} has no {required!r} features (found feature types "
                    f"{sorted(has)}); read_10x_multiome needs both 'Gene Expression' and "
                    "'Peaks'. For RNA-only files use scanpy.read_10x_h5."
                )
        n_features, n_barcodes = (int(v) for v in group["shape"][:])
        barcodes = _decode(group["barcodes"][:])
        feature_id = _decode(features["id"][:])
        feature_name = _decode(features["name"][:])
        extra = {
            key: _decode(features[key][:])
            for key in ("genome", "interval")
            if key in features and isinstance(features[key], h5py.Dataset)
        }
        # features x barcodes CSC == barcodes x features CSR.
        matrix = sp.csr_matrix(
            (
                group["data"][:].astype(np.float32),
                group["indices"][:],
                group["indptr"][:],
            ),
            shape=(n_barcodes, n_features),
        )
    if len(barcodes) != n_barcodes or len(feature_type) != n_features:
        raise ValueError(
            f"{str(path)!r} is inconsistent: shape {(n_features, n_barcodes)} but "
            f"{len(feature_type)} features and {len(barcodes)} barcodes."
        )

    obs = pd.DataFrame(index=pd.Index(barcodes.astype(str)))
    mods: dict[str, ad.AnnData] = {}
    for ftype in pd.unique(feature_type):
        mask = feature_type == ftype
        name = _modality_name(ftype)
        var = pd.DataFrame({"gene_ids": feature_id[mask], "feature_types": ftype})
        for key, values in extra.items():
            var[key] = values[mask]
        if name == "atac":
            for key, values in _parse_intervals(feature_id[mask]).items():
                var[key] = values
            names = pd.Index(feature_id[mask].astype(str))
        else:
            names = pd.Index(feature_name[mask].astype(str))
        var.index = ad.utils.make_index_unique(names)
        mods[name] = ad.AnnData(X=matrix[:, np.flatnonzero(mask)], obs=obs.copy(), var=var)
    logger.info(
        "read %s: %d barcodes, %s",
        path,
        n_barcodes,
        ", ".join(f"{k} {a.n_vars}" for k, a in mods.items()),
    )
    with mudata.set_options(pull_on_update=False):
        return mudata.MuData(mods)


# ---------------------------------------------------------------------------------------
# One AnnData of several modalities' features
# ---------------------------------------------------------------------------------------


def split_modalities(adata: ad.AnnData, *, key: str | None = None) -> mudata.MuData:
    """Split an AnnData that holds several modalities' features side by side into a
    MuData with one modality per feature type.

    Multiome and CITE-seq data are often shared as one ``.h5ad`` whose ``var`` column
    names each feature's type: ``"GEX"``/``"ATAC"``/``"ADT"`` in the NeurIPS 2021
    (openproblems) files, ``"Gene Expression"``/``"Peaks"`` after
    ``scanpy.read_10x_h5(..., gex_only=False)``. Modalities are named as in
    :func:`read_10x_multiome` (``rna``, ``atac``, ``prot``; any other type its lower-cased
    name).

    Parameters
    ----------
    adata
        Cells x features of every modality; not modified.
    key
        The ``var`` column with each feature's type; by default the first of
        ``feature_types``, ``feature_type``, ``modality`` that ``adata.var`` has.

    Returns
    -------
    MuData whose modalities keep their features' ``X``, every layer (a ``counts`` layer
    of raw counts, say), ``var`` and ``varm``, and whose ``obs`` (cell types, batches),
    ``obsm``, ``obsp`` and ``uns`` are ``adata``'s. ATAC peaks named
    ``chr:start-end`` or ``chr-start-end`` get ``var["chrom"/"start"/"end"]``.

    Raises
    ------
    ValueError
        If `key` is not a ``var`` column (or none of the default ones is), or if the
        features are all of one type.

    Examples
    --------
    >>> import anndata, mvae_sc
    >>> adata = anndata.read_h5ad("GSE194122_openproblems_neurips2021_multiome_BMMC_processed.h5ad")  # doctest: +SKIP
    >>> mdata = mvae_sc.io.split_modalities(adata)  # doctest: +SKIP
    >>> list(mdata.mod)  # doctest: +SKIP
    ['rna', 'atac']
    """
    if key is None:
        found = [k for k in FEATURE_TYPE_KEYS if k in adata.var.columns]
        if not found:
            raise ValueError(
                f"adata.var has none of the columns {list(FEATURE_TYPE_KEYS)} that name each "
                f"feature's type (var columns: {list(adata.var.columns)}). Pass the column "
                "as key=..., or build the MuData yourself: "
                "mudata.MuData({'rna': rna_adata, 'atac': atac_adata})."
            )
        key = found[0]
    elif key not in adata.var.columns:
        raise ValueError(
            f"adata.var has no column {key!r} (var columns: {list(adata.var.columns)})."
        )
    feature_type = adata.var[key].astype(str).to_numpy()
    types = list(pd.unique(feature_type))
    if len(types) < 2:
        raise ValueError(
            f"adata.var[{key!r}] names {len(types)} feature type(s) ({types}): nothing to "
            "split into modalities. With one AnnData per modality, build the MuData from "
            "them: mudata.MuData({'rna': rna_adata, 'atac': atac_adata})."
        )
    names = [_modality_name(t) for t in types]
    if len(set(names)) < len(names):
        raise ValueError(f"feature types {types} give the modality names {names} twice.")
    mods: dict[str, ad.AnnData] = {}
    for ftype, name in zip(types, names, strict=True):
        columns = np.flatnonzero(feature_type == ftype)
        part = ad.AnnData(
            X=adata.X[:, columns] if adata.X is not None else None,
            obs=pd.DataFrame(index=adata.obs_names.copy()),
            var=adata.var.iloc[columns].copy(),
            layers={layer: values[:, columns] for layer, values in adata.layers.items()},
            varm={k: np.asarray(v)[columns] for k, v in adata.varm.items()},
        )
        if name == "atac" and not {"chrom", "start", "end"} & set(part.var.columns):
            parsed = _parse_intervals(part.var_names.to_numpy())
            if parsed["start"].notna().all():
                for column, values in parsed.items():
                    part.var[column] = values.to_numpy()
        mods[name] = part
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData(mods, obs=adata.obs.copy())
    for k, v in adata.obsm.items():
        mdata.obsm[k] = v
    for k, v in adata.obsp.items():
        mdata.obsp[k] = v
    mdata.uns.update(adata.uns)
    logger.info(
        "split %d features by var[%r]: %s",
        adata.n_vars,
        key,
        ", ".join(f"{k} {a.n_vars}" for k, a in mods.items()),
    )
    return mdata


def read_multiome(path: str | Path) -> mudata.MuData:
    """Read multiome data from a file of any of the usual kinds, as a MuData.

    - ``.h5mu``: read as it is (``mudata.read_h5mu``).
    - ``.h5``: a Cell Ranger ARC ``filtered_feature_bc_matrix.h5``
      (:func:`read_10x_multiome`).
    - ``.h5ad``: genes and peaks side by side with a ``var`` column of their types, as the
      NeurIPS 2021 multiome file (:func:`split_modalities`).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    MuData with modalities ``rna`` and ``atac`` for the last two kinds; an ``.h5mu``
    keeps its own modality names.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is of another kind, or is not multiome data of its kind (the reader's
        own message).

    Examples
    --------
    >>> import mvae_sc
    >>> mdata = mvae_sc.io.read_multiome("pbmc_granulocyte_sorted_3k_filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {str(path)!r}.")
    if path.suffix == ".h5mu":
        return mudata.read_h5mu(path)
    if path.suffix == ".h5":
        return read_10x_multiome(path)
    if path.suffix == ".h5ad":
        return split_modalities(ad.read_h5ad(path))
    raise ValueError(
        f"{str(path)!r}: expected an .h5mu, a Cell Ranger ARC .h5 or an .h5ad with genes and "
        "peaks side by side (var['feature_types']); for one AnnData per modality build the "
        "MuData yourself: mudata.MuData({'rna': rna_adata, 'atac': atac_adata})."
    )
