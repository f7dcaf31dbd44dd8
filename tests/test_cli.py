"""The `mvae-sc` command, run as a user would (in-process, tiny settings)."""

from __future__ import annotations

import mudata as md
import numpy as np
import pytest

from mvae_sc import cli

pytestmark = pytest.mark.slow


def test_demo_writes_results_plot_and_model(tmp_path):
    out = tmp_path / "demo"
    assert (
        cli.main(
            [
                "demo",
                "--out",
                str(out),
                "--n-cells",
                "400",
                "--max-epochs",
                "3",
                "--n-latent",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    for name in (
        "demo.h5mu",
        "umap.png",
        "history.png",
        "model/model.safetensors",
        "model/config.json",
    ):
        assert (out / name).is_file(), name
    mdata = md.read_h5mu(out / "demo.h5mu")
    assert mdata.obsm["X_mvae"].shape == (400, 5)
    assert np.isfinite(mdata.obsm["X_mvae"]).all()
    assert {"X_mvae_rna", "X_mvae_atac", "X_umap"} <= set(mdata.obsm)
    assert "leiden" in mdata.obs
    assert not list(out.glob(".*tmp")), "temporary files left behind"


def test_train_on_an_h5mu(tmp_path):
    import mvae_sc

    source = mvae_sc.datasets.synthetic_multiome(300, n_genes=100, n_peaks=300, seed=1)
    source.write(tmp_path / "in.h5mu")
    out = tmp_path / "out"
    argv = [
        "train",
        str(tmp_path / "in.h5mu"),
        "--out",
        str(out),
        "--batch-key",
        "batch",
        "--max-epochs",
        "2",
        "--n-latent",
        "4",
        "--quiet",
        "--color",
        "cell_type",
    ]
    assert cli.main(argv) == 0
    result = md.read_h5mu(out / "integrated.h5mu")
    assert result.obsm["X_mvae"].shape == (300, 4)
    # the input file is untouched
    assert "X_mvae" not in md.read_h5mu(tmp_path / "in.h5mu").obsm


def test_train_with_a_bad_batch_key_fails_before_writing(tmp_path):
    import mvae_sc

    mvae_sc.datasets.synthetic_multiome(100, n_genes=50, n_peaks=100, seed=2).write(
        tmp_path / "in.h5mu"
    )
    with pytest.raises(ValueError, match="batch_key 'lab' is not a column"):
        cli.main(
            [
                "train",
                str(tmp_path / "in.h5mu"),
                "--out",
                str(tmp_path / "out"),
                "--batch-key",
                "lab",
                "--quiet",
            ]
        )
    assert not (tmp_path / "out" / "integrated.h5mu").exists()


def test_train_on_an_h5ad_of_genes_and_peaks_with_counts_in_a_layer(tmp_path):
    """The NeurIPS 2021 layout: one .h5ad, var["feature_types"] GEX/ATAC, X normalised and
    the raw counts in layers["counts"]. Without --layer the run stops before writing,
    saying which layer to pass; with it, it integrates."""
    import anndata
    import scanpy as sc

    import mvae_sc

    source = mvae_sc.datasets.synthetic_multiome(
        200, n_genes=60, n_peaks=120, frac_rna_only=0, frac_atac_only=0, seed=3
    )
    adata = anndata.concat([source.mod["rna"], source.mod["atac"]], axis=1, merge="first")
    adata.var["feature_types"] = ["GEX"] * 60 + ["ATAC"] * 120
    adata.obs["batch"] = source.obs.loc[adata.obs_names, "batch"].astype(str)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata.write_h5ad(tmp_path / "bmmc.h5ad")
    argv = ["train", str(tmp_path / "bmmc.h5ad"), "--out", str(tmp_path / "out"), "--quiet"]
    argv += ["--batch-key", "batch", "--max-epochs", "2", "--n-latent", "4"]
    with pytest.raises(ValueError, match="non-integer values.*raw counts layer"):
        cli.main(argv)
    assert not (tmp_path / "out" / "integrated.h5mu").exists()
    assert cli.main([*argv, "--layer", "counts"]) == 0
    result = md.read_h5mu(tmp_path / "out" / "integrated.h5mu")
    assert list(result.mod) == ["rna", "atac"] and result.obsm["X_mvae"].shape == (200, 4)
