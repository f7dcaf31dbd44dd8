"""Reading and writing: the 10x Genomics multiome reader (model files come later)."""

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

__all__ = ["read_10x_multiome"]

# ---------------------------------------------------------------------------------------
# 10x Genomics Cell Ranger ARC reader
# ---------------------------------------------------------------------------------------

#: Modality name for each 10x ``feature_type``; other types get a lower-case name.
FEATURE_TYPE_TO_MODALITY = {
    "Gene Expression": "rna",
    "Peaks": "atac",
    "Antibody Capture": "prot",
}

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
    """'chr1:100-200' -> chrom, start, end columns (NA where the interval is malformed)."""
    parts = pd.Series(intervals, dtype=object).str.extract(r"^(.+):(\d+)-(\d+)$")
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
