"""Tests for mvae_sc.io: the 10x Genomics multiome reader and split_modalities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import h5py
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _tenx import write_10x_matrix

from mvae_sc.io import FEATURE_TYPE_KEYS, read_10x_multiome, read_multiome, split_modalities

N_BARCODES, N_GENES, N_PEAKS, N_PROT = 30, 20, 40, 5
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def _mudata_new_update_behaviour() -> Iterator[None]:
    """Adopt mudata's future `.update()` (no pulling of modality columns) in each test,
    silencing its FutureWarning; restored afterwards."""
    with mudata.set_options(pull_on_update=False):
        yield


def write_10x_h5(
    path: Path,
    *,
    n_barcodes: int = N_BARCODES,
    n_genes: int = N_GENES,
    n_peaks: int = N_PEAKS,
    n_prot: int = 0,
    duplicate_gene: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Write a tiny Cell Ranger ARC filtered_feature_bc_matrix.h5; return the dense
    barcodes x features counts (features ordered genes, peaks, antibodies)."""
    rng = np.random.default_rng(seed)
    n_features = n_genes + n_peaks + n_prot
    dense = rng.poisson(0.8, size=(n_barcodes, n_features)).astype(np.int32)
    dense[:, n_genes : n_genes + n_peaks] = rng.random((n_barcodes, n_peaks)) < 0.2
    gene_names = [f"GENE{i}" for i in range(n_genes)]
    if duplicate_gene and n_genes > 1:
        gene_names[1] = gene_names[0]  # real files have duplicated symbols
    peak_ids = [f"chr{1 + i % 3}:{1000 * i + 10}-{1000 * i + 510}" for i in range(n_peaks)]
    prot_names = [f"CD{i}" for i in range(n_prot)]
    ids = [f"ENSG{i:011d}" for i in range(n_genes)] + peak_ids + prot_names
    names = gene_names + peak_ids + prot_names
    types = ["Gene Expression"] * n_genes + ["Peaks"] * n_peaks + ["Antibody Capture"] * n_prot
    intervals = (
        [f"chr1:{100 * i}-{100 * i + 50}" for i in range(n_genes)] + peak_ids + ["NA"] * n_prot
    )
    write_10x_matrix(
        path,
        dense,
        barcodes=[f"AAAC{i:04d}-1" for i in range(n_barcodes)],
        ids=ids,
        names=names,
        feature_types=types,
        intervals=intervals,
    )
    return dense


def test_read_10x_multiome_splits_rna_and_atac(tmp_path: Path) -> None:
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    dense = write_10x_h5(path)
    mdata = read_10x_multiome(path)

    assert isinstance(mdata, mudata.MuData)
    assert list(mdata.mod) == ["rna", "atac"]
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert rna.shape == (N_BARCODES, N_GENES)
    assert atac.shape == (N_BARCODES, N_PEAKS)
    assert mdata.n_obs == N_BARCODES
    assert list(rna.obs_names[:2]) == ["AAAC0000-1", "AAAC0001-1"]
    assert (rna.obs_names == atac.obs_names).all()

    for adata in (rna, atac):
        assert sp.issparse(adata.X) and adata.X.format == "csr"
        assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(rna.X.toarray(), dense[:, :N_GENES])
    np.testing.assert_array_equal(atac.X.toarray(), dense[:, N_GENES:])

    # Gene names made unique, Ensembl ids kept.
    assert rna.var_names.is_unique
    assert list(rna.var_names[:3]) == ["GENE0", "GENE0-1", "GENE2"]
    assert rna.var["gene_ids"].iloc[1] == "ENSG00000000001"
    assert (rna.var["feature_types"] == "Gene Expression").all()
    assert (rna.var["genome"] == "GRCh38").all()

    # Peaks named by interval, coordinates parsed.
    assert atac.var_names[0] == "chr1:10-510"
    assert atac.var["chrom"].iloc[1] == "chr2"
    assert atac.var["start"].iloc[1] == 1010
    assert atac.var["end"].iloc[1] == 1510
    assert (atac.var["feature_types"] == "Peaks").all()
    assert np.asarray(mdata.obsmap["rna"]).ravel().min() > 0


def test_read_10x_multiome_matches_scanpy(tmp_path: Path) -> None:
    sc = pytest.importorskip("scanpy")
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(path, duplicate_gene=False)
    combined = sc.read_10x_h5(path, gex_only=False)
    mdata = read_10x_multiome(path)
    np.testing.assert_array_equal(
        sp.hstack([mdata.mod["rna"].X, mdata.mod["atac"].X]).toarray(), combined.X.toarray()
    )
    assert list(mdata.mod["rna"].var_names) + list(mdata.mod["atac"].var_names) == list(
        combined.var_names
    )


def test_read_10x_multiome_other_feature_types_become_prot(tmp_path: Path) -> None:
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    dense = write_10x_h5(path, n_prot=N_PROT)
    mdata = read_10x_multiome(path)
    assert set(mdata.mod) == {"rna", "atac", "prot"}
    assert mdata.mod["prot"].shape == (N_BARCODES, N_PROT)
    np.testing.assert_array_equal(mdata.mod["prot"].X.toarray(), dense[:, N_GENES + N_PEAKS :])
    assert list(mdata.mod["prot"].var_names) == [f"CD{i}" for i in range(N_PROT)]


def test_read_10x_multiome_requires_peaks(tmp_path: Path) -> None:
    path = tmp_path / "rna_only.h5"
    write_10x_h5(path, n_peaks=0)
    with pytest.raises(ValueError, match="no 'Peaks' features"):
        read_10x_multiome(path)


def test_read_10x_multiome_requires_gene_expression(tmp_path: Path) -> None:
    path = tmp_path / "atac_only.h5"
    write_10x_h5(path, n_genes=0)
    with pytest.raises(ValueError, match="no 'Gene Expression' features"):
        read_10x_multiome(path)


def test_read_10x_multiome_rejects_non_10x_files(tmp_path: Path) -> None:
    text = tmp_path / "matrix.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        read_10x_multiome(text)

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("X", data=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a 10x feature-barcode matrix"):
        read_10x_multiome(other)

    with pytest.raises(FileNotFoundError, match="No such file"):
        read_10x_multiome(tmp_path / "missing.h5")


def _real_files() -> list[Path]:
    if not SHARED_DATA.is_dir():
        return []
    return (
        sorted(SHARED_DATA.glob("*filtered_feature_bc_matrix*.h5"))
        + sorted(SHARED_DATA.glob("*.h5mu"))
        + sorted(SHARED_DATA.glob("*.h5ad"))
    )


def test_read_real_multiome_files() -> None:
    """Read every real file in ../shared/data (relative to the repo root), if any."""
    paths = _real_files()
    if not paths:
        pytest.skip(
            "no real multiome file (*filtered_feature_bc_matrix*.h5, *.h5mu or *.h5ad) in "
            f"{SHARED_DATA.resolve()}"
        )
    for path in paths:
        if path.suffix == ".h5ad":  # one modality's file, or genes and peaks side by side
            adata = ad.read_h5ad(path, backed="r")
            if any(k in adata.var.columns for k in FEATURE_TYPE_KEYS):
                mdata = split_modalities(adata[:200].to_memory())
                assert len(mdata.mod) >= 2, path
                assert all(m.n_obs == mdata.n_obs > 0 and m.n_vars > 0 for m in mdata.mod.values())
            adata.file.close()
            continue
        if path.suffix == ".h5mu":
            mdata = mudata.read_h5mu(path, backed="r")
        else:
            mdata = read_10x_multiome(path)
            assert mdata.mod["rna"].X.dtype == np.float32
            assert mdata.mod["atac"].var_names[0].count(":") == 1
        assert {"rna", "atac"} <= set(mdata.mod), path
        assert mdata.mod["rna"].n_obs > 0 and mdata.mod["rna"].n_vars > 0, path
        assert mdata.mod["atac"].n_vars > 0, path
        assert mdata.mod["rna"].var_names.is_unique, path


def _combined_multiome(n_cells: int = 12, n_genes: int = 5, n_peaks: int = 7) -> ad.AnnData:
    """One AnnData with genes and peaks side by side, as the NeurIPS 2021 multiome file:
    var["feature_types"] GEX/ATAC, peaks named chr-start-end, normalised X, raw counts in
    layers["counts"], cell types and batches in obs."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, size=(n_cells, n_genes + n_peaks)).astype(np.float32)
    var = pd.DataFrame(
        {"feature_types": ["GEX"] * n_genes + ["ATAC"] * n_peaks, "gene_id": "x"},
        index=[f"G{i}" for i in range(n_genes)]
        + [f"chr{1 + i % 2}-{100 * i}-{100 * i + 50}" for i in range(n_peaks)],
    )
    obs = pd.DataFrame(
        {"cell_type": ["B", "T"] * (n_cells // 2), "batch": ["s1d1"] * n_cells},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(sp.csr_matrix(np.log1p(counts)), obs=obs, var=var)
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.obsm["X_umap"] = rng.normal(size=(n_cells, 2))
    adata.uns["dataset_id"] = "neurips2021"
    return adata


def test_split_modalities_gives_each_feature_type_its_modality() -> None:
    adata = _combined_multiome()
    mdata = split_modalities(adata)
    assert list(mdata.mod) == ["rna", "atac"]
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert list(rna.var_names) == [f"G{i}" for i in range(5)]
    assert list(atac.var_names) == list(adata.var_names[5:])
    counts = adata.layers["counts"].toarray()
    np.testing.assert_array_equal(rna.layers["counts"].toarray(), counts[:, :5])
    np.testing.assert_array_equal(atac.layers["counts"].toarray(), counts[:, 5:])
    np.testing.assert_array_equal(atac.X.toarray(), adata.X.toarray()[:, 5:])
    assert list(atac.var["chrom"][:2]) == ["chr1", "chr2"]
    assert list(atac.var["start"][:2]) == [0, 100] and list(atac.var["end"][:2]) == [50, 150]
    assert "chrom" not in rna.var.columns and (rna.var["gene_id"] == "x").all()
    # cells' annotations on the MuData, where MVAE.setup_mudata and the benchmark read them
    pd.testing.assert_frame_equal(mdata.obs, adata.obs)
    np.testing.assert_array_equal(mdata.obsm["X_umap"], adata.obsm["X_umap"])
    assert mdata.uns["dataset_id"] == "neurips2021"
    assert (rna.obs_names == adata.obs_names).all()
    assert adata.n_vars == 12 and "counts" in adata.layers  # the input is left as it was


def test_split_modalities_says_what_is_missing() -> None:
    adata = _combined_multiome()
    with pytest.raises(ValueError, match="no column 'kind'"):
        split_modalities(adata, key="kind")
    adata.var = adata.var.rename(columns={"feature_types": "kind"})
    with pytest.raises(ValueError, match=r"none of the columns .*feature_types.*key=\.\.\."):
        split_modalities(adata)
    assert list(split_modalities(adata, key="kind").mod) == ["rna", "atac"]
    adata.var["kind"] = "GEX"
    with pytest.raises(ValueError, match="nothing to split"):
        split_modalities(adata, key="kind")


def test_read_multiome_reads_each_kind_of_file(tmp_path: Path) -> None:
    dense = write_10x_h5(tmp_path / "arc.h5")
    from_h5 = read_multiome(tmp_path / "arc.h5")
    np.testing.assert_array_equal(from_h5.mod["rna"].X.toarray(), dense[:, :N_GENES])
    adata = _combined_multiome()
    adata.write_h5ad(tmp_path / "combined.h5ad")
    from_h5ad = read_multiome(tmp_path / "combined.h5ad")
    np.testing.assert_array_equal(
        from_h5ad.mod["atac"].layers["counts"].toarray(), adata.layers["counts"].toarray()[:, 5:]
    )
    from_h5ad.write(tmp_path / "combined.h5mu")
    assert list(read_multiome(tmp_path / "combined.h5mu").mod) == ["rna", "atac"]
    (tmp_path / "counts.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected an .h5mu, a Cell Ranger ARC .h5 or an .h5ad"):
        read_multiome(tmp_path / "counts.csv")
    with pytest.raises(FileNotFoundError):
        read_multiome(tmp_path / "absent.h5mu")
