"""Writing Cell Ranger ARC ``filtered_feature_bc_matrix.h5`` files for tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp


def write_10x_matrix(
    path: Path,
    counts: np.ndarray | sp.spmatrix,
    *,
    barcodes: Sequence[str],
    ids: Sequence[str],
    names: Sequence[str],
    feature_types: Sequence[str],
    intervals: Sequence[str],
) -> None:
    """Write barcodes x features `counts` in the 10x feature-barcode HDF5 layout: one
    features x barcodes CSC matrix under ``/matrix``, with the features' id, name, type,
    genome and interval."""
    csc = sp.csc_matrix(sp.csr_matrix(counts).T)  # features x barcodes, as Cell Ranger
    n_features, n_barcodes = csc.shape
    with h5py.File(path, "w") as f:
        matrix = f.create_group("matrix")
        matrix.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        matrix.create_dataset("data", data=csc.data.astype(np.int32))
        matrix.create_dataset("indices", data=csc.indices.astype(np.int64))
        matrix.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        matrix.create_dataset("shape", data=np.array([n_features, n_barcodes], dtype=np.int32))
        features = matrix.create_group("features")
        features.create_dataset("_all_tag_keys", data=np.array(["genome", "interval"], dtype="S"))
        features.create_dataset("feature_type", data=np.array(feature_types, dtype="S"))
        features.create_dataset("genome", data=np.array(["GRCh38"] * n_features, dtype="S"))
        features.create_dataset("id", data=np.array(ids, dtype="S"))
        features.create_dataset("name", data=np.array(names, dtype="S"))
        features.create_dataset("interval", data=np.array(intervals, dtype="S"))
