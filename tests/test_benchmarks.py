"""The benchmark scripts run end to end at smoke size and write their outputs. The MultiVI
comparison is skipped without scvi-tools (`pip install -e ".[bench]"`)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_multivi.py"


def _run(command: list[str]) -> None:
    """Run a benchmark script with one compute thread; fail with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _realistic_command(out: Path) -> list[str]:
    """The command line of benchmarks/realistic_h5mu.py writing to ``out``."""
    return [sys.executable, str(SCRIPT.parent / "realistic_h5mu.py"), "--out", str(out)]


def _benchmark_module(name: str):
    """A script of benchmarks/, imported as a module."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPT.parent))


def _compare_multivi():
    """The comparison script, imported as a module."""
    return _benchmark_module("compare_multivi")


def _paired_source(n_cells: int = 700, seed: int = 3):
    """Paired synthetic multiome counts, the shape of a real multiome experiment."""
    import mvae_sc

    return mvae_sc.datasets.synthetic_multiome(
        n_cells, n_genes=200, n_peaks=600, frac_rna_only=0, frac_atac_only=0, seed=seed
    )


def test_compare_multivi_smoke(tmp_path):
    pytest.importorskip("scvi", reason="scvi-tools not installed (pip install -e '.[bench]')")
    _run([sys.executable, str(SCRIPT), "--smoke", "--out-dir", str(tmp_path)])
    stem = "compare_multivi_synthetic_n600_smoke"
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    assert (tmp_path / f"{stem}.png").stat().st_size > 0
    table = (tmp_path / f"{stem}.md").read_text()
    assert "mvae_sc" in table and "multivi" in table
    assert set(report["methods"]) >= {"mvae_sc", "multivi"}
    for run in report["methods"].values():  # the monitored validation loss, per epoch
        assert len(run["validation_curve"]) == run["epochs"]
        assert run["validation_curve"][run["best_epoch"] - 1] == min(run["validation_curve"])
    # the per-method partial report is replaced by the full one
    assert not (tmp_path / f"{stem}.partial.json").exists()


def test_compare_multivi_one_method_and_model_seed(tmp_path):
    """--methods runs only those methods (mvae_sc needs no scvi-tools); --model-seed
    reaches the children and changes the models' seed, not the data; --adversary-weight,
    --alignment-weight and --alignment-measure reach mvae_sc's model and its report."""
    command = [sys.executable, str(SCRIPT), "--smoke", "--methods", "mvae_sc"]
    command += ["--model-seed", "3", "--adversary-weight", "20", "--alignment-weight", "0.5"]
    command += ["--alignment-measure", "mean_distance"]
    command += ["--out-dir", str(tmp_path)]
    _run(command)
    stem = "compare_multivi_synthetic_n600_smoke"
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    assert "| metric | better | mvae_sc |\n" in (tmp_path / f"{stem}.md").read_text()
    assert report["model_seed"] == 3 and set(report["methods"]) == {"mvae_sc"}
    assert report["methods"]["mvae_sc"]["settings"]["adversary_weight"] == 20.0
    assert report["methods"]["mvae_sc"]["settings"]["alignment_weight"] == 0.5
    assert report["methods"]["mvae_sc"]["settings"]["alignment_measure"] == "mean_distance"

    cm = _compare_multivi()
    args = cm.parse_args(["--smoke", "--model-seed", "3"])
    child = cm._child_command(args, "mvae_sc", "out")
    assert child[child.index("--model-seed") + 1] == "3" and cm._model_seed(args) == 3
    assert "--adversary-weight" not in child  # the library's default unless asked
    assert "--alignment-weight" not in child and "--alignment-measure" not in child
    child = cm._child_command(cm.parse_args(["--adversary-weight", "20"]), "mvae_sc", "out")
    assert child[child.index("--adversary-weight") + 1] == "20.0"
    assert cm._model_seed(cm.parse_args(["--seed", "5"])) == 5  # default: --seed
    # the data are those of --seed alone
    data = cm.load_dataset(cm.parse_args(["--smoke"]))
    assert report["methods"]["mvae_sc"]["fingerprint"] == cm._fingerprint(data)

    # the true latent's scores, the references for the silhouette and batch-mixing rows
    reference = report["reference"]
    assert 0 < reference["batch_entropy_true_latent"] <= 1
    assert 0 < reference["ilisi_true_latent"] <= 1
    assert 0.5 <= reference["batch_predictability_true_latent"] < 0.7  # no batch effect
    # the feature means' scores: above chance (peaks differ in openness), and recomputed
    # by hand here for the ATAC row
    mean_only = reference["atac_auroc_rna_only_feature_means"]
    assert 0.55 < mean_only < 0.95
    assert 0 < reference["rna_pearson_cell_atac_only_feature_means"] < 1
    from sklearn.metrics import roc_auc_score

    import mvae_sc

    truth = mvae_sc.datasets.heldout(data, "atac").X.toarray() > 0
    rate = np.asarray((data.mod["atac"].X > 0).mean(0)).ravel()
    by_hand = roc_auc_score(truth.ravel(), np.tile(rate, (truth.shape[0], 1)).ravel())
    assert mean_only == pytest.approx(by_hand, abs=1e-4)
    assert any("no batch effect" in note for note in report["notes"])

    # --merge: runs of other methods on the same data become one report (here the same
    # run under another name stands in for MultiVI's, with its own command)
    other = {**report, "command": "python compare_multivi.py --methods multivi"}
    other["methods"] = {"multivi": report["methods"]["mvae_sc"]}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, part in zip(paths, (report, other), strict=True):
        path.write_text(json.dumps(part))
    merged_dir = tmp_path / "merged"
    cm.main(["--merge", *map(str, paths), "--out-dir", str(merged_dir)])
    merged = json.loads((merged_dir / f"{stem.removesuffix('_smoke')}.json").read_text())
    assert list(merged["methods"]) == ["mvae_sc", "multivi"]
    assert merged["command"] == f"{report['command']} ; {other['command']}"
    assert "Merged from 2 runs on the same data" in merged["notes"][-1]
    table = (merged_dir / f"{stem.removesuffix('_smoke')}.md").read_text()
    assert "| metric | better | mvae_sc | multivi |" in table
    with pytest.raises(ValueError, match="more than one report"):
        cm.merge_reports([report, report])
    other["methods"] = {"multivi": {**report["methods"]["mvae_sc"], "fingerprint": "x"}}
    with pytest.raises(ValueError, match="different data"):
        cm.merge_reports([report, other])
    # a run from before the within-batch FOSCTTM row: on one batch it gets the pooled
    # score; with batches it stays missing (the pooled score is another measure there)
    old_run = {**report["methods"]["mvae_sc"]}
    old_run["metrics"] = {
        k: v for k, v in old_run["metrics"].items() if k != "foscttm_paired_within_batch"
    }
    one_batch = {k: v for k, v in old_run["metrics"].items() if k != "batch_predictability_chance"}
    for scores, expected in ((one_batch, old_run["metrics"]["foscttm_paired"]), (None, None)):
        run = old_run if scores is None else {**old_run, "metrics": scores}
        older = {**report, "methods": {"multivi": run}}
        merged = cm.merge_reports([report, older])
        assert merged["methods"]["multivi"]["metrics"].get("foscttm_paired_within_batch") == (
            expected
        )


def test_compare_multivi_on_a_real_style_h5mu(tmp_path):
    """The path new data take (``--dataset FILE.h5mu``): every cell paired, counts in a
    layer under log-normalised X, a repeated gene name, cell type and batch only in the
    modalities' obs under other names. The script subsamples, hides modalities to make
    the 60/20/20 mosaic with held-out truth and scores the imputations against it."""
    import mudata
    import scanpy as sc

    source = _paired_source()
    mods = {}
    for name in ("rna", "atac"):
        adata = source.mod[name].copy()
        adata.obs = adata.obs.rename(columns={"cell_type": "celltype", "batch": "sample"})
        mods[name] = adata
    mods["rna"].layers["counts"] = mods["rna"].X.copy()
    sc.pp.normalize_total(mods["rna"])
    sc.pp.log1p(mods["rna"])
    with warnings.catch_warnings():  # anndata warns of the repeated name, as it should
        warnings.simplefilter("ignore", UserWarning)
        mods["rna"].var_names = [*mods["rna"].var_names[:-1], mods["rna"].var_names[0]]
        mudata.MuData(mods).write(tmp_path / "lab_data.h5mu")

    command = [sys.executable, str(SCRIPT), "--dataset", str(tmp_path / "lab_data.h5mu")]
    command += ["--label-key", "celltype", "--batch-key", "sample", "--rna-layer", "counts"]
    command += ["--n-cells", "500", "--methods", "mvae_sc", "--max-epochs", "2"]
    command += ["--out-dir", str(tmp_path)]
    _run(command)
    report = json.loads((tmp_path / "compare_multivi_lab_data_n500.json").read_text())
    assert report["data"]["modalities"] == {"paired": 300, "rna_only": 100, "atac_only": 100}
    scores = report["methods"]["mvae_sc"]["metrics"]
    for key in ("ari", "batch_entropy", "foscttm_paired", "atac_auroc_rna_only"):
        assert 0 <= scores[key] <= 1, (key, scores[key])
    # with batches, the table's FOSCTTM is within batch, the pooled one is in the notes
    assert 0 <= scores["foscttm_paired_within_batch"] <= 1
    assert scores["foscttm_paired_within_batch"] != scores["foscttm_paired"]
    table = (tmp_path / "compare_multivi_lab_data_n500.md").read_text()
    assert "| FOSCTTM, paired cells, each modality alone, within batch | ↓ |" in table
    assert "FOSCTTM pooled over batches (not in the table): mvae_sc " in table
    assert -1 <= scores["rna_pearson_cell_atac_only"] <= 1
    assert scores.get("within_type_factor_r2") is None  # no simulator truth in a file


def test_compare_multivi_on_a_cell_ranger_file_without_labels(tmp_path):
    """A Cell Ranger ARC filtered_feature_bc_matrix.h5, the form of the registry's real
    data sets: no cell types, one batch. The script reads it, scores everything that
    needs no labels and reports the label and batch rows as n/a."""
    from _tenx import write_10x_matrix
    from scipy import sparse

    source = _paired_source()
    rna, atac = source.mod["rna"], source.mod["atac"]
    peaks = [f"chr1:{100 * i}-{100 * i + 50}" for i in range(atac.n_vars)]
    write_10x_matrix(
        tmp_path / "pbmc_filtered_feature_bc_matrix.h5",
        sparse.hstack([rna.X, atac.X]),
        barcodes=[f"{name}-1" for name in source.obs_names],
        ids=[f"ENSG{i:011d}" for i in range(rna.n_vars)] + peaks,
        names=list(rna.var_names) + peaks,
        feature_types=["Gene Expression"] * rna.n_vars + ["Peaks"] * atac.n_vars,
        intervals=["chr1:1-2"] * rna.n_vars + peaks,
    )
    command = [sys.executable, str(SCRIPT), "--dataset"]
    command += [str(tmp_path / "pbmc_filtered_feature_bc_matrix.h5"), "--n-cells", "500"]
    command += ["--methods", "mvae_sc", "--max-epochs", "2", "--out-dir", str(tmp_path)]
    _run(command)
    stem = "compare_multivi_pbmc_filtered_feature_bc_matrix_n500"
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    assert report["data"]["modalities"] == {"paired": 300, "rna_only": 100, "atac_only": 100}
    assert report["data"]["label_key"] is None and report["data"]["batch_key"] is None
    assert report["data"]["counts"] == {"rna": "mod['rna'].X", "atac": "mod['atac'].X"}
    scores = report["methods"]["mvae_sc"]["metrics"]
    for key in ("ari", "nmi", "silhouette_label", "knn_rna_only_to_atac_only", "ilisi"):
        assert scores[key] is None, key
    for key in ("modality_entropy", "foscttm_paired", "atac_auroc_rna_only"):
        assert 0 <= scores[key] <= 1, (key, scores[key])
    assert scores["foscttm_paired_within_batch"] == scores["foscttm_paired"]  # one batch
    table = (tmp_path / f"{stem}.md").read_text()
    assert "FOSCTTM pooled" not in table
    assert "| Leiden ARI vs cell type | ↑ | n/a |" in table
    assert "no labels" in table


def test_compare_multivi_finds_keys_layers_and_modality_names(tmp_path):
    """Where the command line does not name them, the script finds the cell-type and
    batch columns, the counts layer and the modalities under common names, records what
    it used, and says what to pass when it cannot find raw counts or a named column."""
    import mudata
    import scanpy as sc

    cm = _compare_multivi()
    source = _paired_source(400)
    mods = {}
    for name, new_name in (("rna", "RNA"), ("atac", "Peaks")):
        adata = source.mod[name].copy()
        adata.obs = adata.obs[["cell_type"]].rename(columns={"cell_type": "celltype"})
        adata.layers["counts"] = adata.X.copy()
        sc.pp.normalize_total(adata)
        sc.pp.log1p(adata)  # X normalised, counts in a layer, as after a Scanpy workflow
        mods[new_name] = adata
    obs = source.obs[["batch"]].rename(columns={"batch": "sample"})
    with mudata.set_options(pull_on_update=False):
        mudata.MuData(mods, obs=obs).write(tmp_path / "lab.h5mu")
    path = str(tmp_path / "lab.h5mu")

    data = cm.load_dataset(cm.parse_args(["--dataset", path, "--min-feature-frac", "0"]))
    read = data.uns[cm.READ_INFO]
    assert read == {
        "counts": {"rna": "mod['RNA'].layers['counts']", "atac": "mod['Peaks'].layers['counts']"},
        "label_key": "celltype",
        "batch_key": "sample",
    }
    truth = source.obs.reindex(data.obs_names)
    assert (data.obs[cm.LABEL].astype(str) == truth["cell_type"].astype(str)).all()
    assert (data.obs[cm.BATCH] == truth["batch"].astype(str)).all()
    rna = data.mod["rna"]
    expected = source.mod["rna"][rna.obs_names].X.toarray()
    np.testing.assert_array_equal(rna.X.toarray(), expected)  # the raw counts, not X

    errors = [
        (["--label-key", "cell_type"], "no obs column 'cell_type' .*celltype"),
        (["--batch-key", "donor"], "no obs column 'donor' .*--batch-key none"),
        (["--rna-layer", "X_counts"], "no layer 'X_counts'.*counts"),
        (["--atac-mod", "atac"], r"no modality 'atac' \(--atac-mod\).*Peaks"),
    ]
    for extra, match in errors:
        with pytest.raises(ValueError, match=match):
            cm.load_dataset(cm.parse_args(["--dataset", path, *extra]))
    # no raw counts anywhere: a clear error, before any training
    del mods["RNA"].layers["counts"]
    with mudata.set_options(pull_on_update=False):
        mudata.MuData(mods, obs=obs).write(tmp_path / "normalised.h5mu")
    with pytest.raises(ValueError, match="'RNA': X holds non-integer values.*--rna-layer"):
        cm.load_dataset(cm.parse_args(["--dataset", str(tmp_path / "normalised.h5mu")]))
    # without labels the label rows are n/a, and ``none`` turns the search off
    data = cm.load_dataset(cm.parse_args(["--dataset", path, "--label-key", "none"]))
    assert data.obs[cm.LABEL].isna().all() and data.uns[cm.READ_INFO]["label_key"] is None


def test_compare_multivi_shared_takes_every_multiome_file_in_sub_folders(tmp_path):
    cm = _compare_multivi()
    files = [
        "a/PROVENANCE.txt",
        "a/a.h5mu",
        "b/b_filtered_feature_bc_matrix.h5",
        "c.h5ad",
        "d/pbmc10k-ATAC.h5ad",
        "d/pbmc10k-RNA.h5ad",
        "d/other-RNA.h5ad",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    found = cm.shared_files(tmp_path)
    # the RNA and ATAC files of one data set are one entry; a lone RNA file stays alone
    pair = f"{tmp_path / files[5]},{tmp_path / files[4]}"
    assert found == sorted(str(tmp_path / n) for n in (*files[1:4], files[6])) + [pair]
    assert cm.dataset_name(cm.parse_args(["--dataset", pair])) == "pbmc10k"
    assert cm.shared_files(tmp_path / "absent") == []


def test_compare_multivi_reads_genes_and_peaks_side_by_side_in_an_h5ad(tmp_path, monkeypatch):
    """An .h5ad with both modalities' features and var["feature_types"] GEX/ATAC, counts
    in a layer and X normalised (the NeurIPS 2021 multiome file's layout), is split into
    modalities and read like a .h5mu; an .h5ad of one modality is refused with the way
    out."""
    import anndata
    import scanpy as sc

    cm = _compare_multivi()
    source = _paired_source(300)
    rna, atac = source.mod["rna"], source.mod["atac"]
    combined = anndata.concat([rna, atac], axis=1, merge="first")
    combined.var["feature_types"] = ["GEX"] * rna.n_vars + ["ATAC"] * atac.n_vars
    combined.obs = source.obs[["cell_type", "batch"]].loc[combined.obs_names]
    combined.layers["counts"] = combined.X.copy()
    sc.pp.normalize_total(combined)
    sc.pp.log1p(combined)
    path = tmp_path / "bmmc.h5ad"
    combined.write_h5ad(path)

    data = cm.load_dataset(cm.parse_args(["--dataset", str(path), "--min-feature-frac", "0"]))
    assert data.uns[cm.READ_INFO] == {
        "counts": {"rna": "mod['rna'].layers['counts']", "atac": "mod['atac'].layers['counts']"},
        "label_key": "cell_type",
        "batch_key": "batch",
    }
    assert data.mod["rna"].n_vars == rna.n_vars and data.mod["atac"].n_vars == atac.n_vars
    cells = data.mod["atac"].obs_names
    np.testing.assert_array_equal(data.mod["atac"].X.toarray(), atac[cells].X.toarray())
    assert (data.obs[cm.LABEL].astype(str) == source.obs.loc[data.obs_names, "cell_type"]).all()

    # --n-cells: only the kept rows are loaded from the .h5ad, the same cells that the
    # same data as a .h5mu give
    import mvae_sc

    split = mvae_sc.io.split_modalities
    split(anndata.read_h5ad(path)).write(tmp_path / "bmmc.h5mu")
    split_sizes = []
    monkeypatch.setattr(
        mvae_sc.io, "split_modalities", lambda a: split_sizes.append(a.n_obs) or split(a)
    )
    for suffix in (".h5ad", ".h5mu"):
        argv = ["--dataset", str(tmp_path / f"bmmc{suffix}"), "--n-cells", "120"]
        subset = cm.load_dataset(cm.parse_args(argv))
        assert subset.n_obs == 120
        if suffix == ".h5ad":
            kept = list(subset.obs_names)
    assert list(subset.obs_names) == kept
    assert split_sizes == [120]  # the .h5ad's other rows were never loaded

    rna.write_h5ad(tmp_path / "rna_only.h5ad")
    with pytest.raises(ValueError, match="none of the columns .*feature_types"):
        cm.load_dataset(cm.parse_args(["--dataset", str(tmp_path / "rna_only.h5ad")]))


def test_compare_multivi_reads_one_h5ad_per_modality(tmp_path):
    """An RNA and an ATAC .h5ad (GLUE's pbmc10k-RNA.h5ad / pbmc10k-ATAC.h5ad), given
    comma-separated: cells in both are paired, cell types are found in the modalities'
    obs."""
    cm = _compare_multivi()
    source = _paired_source(300)
    for mod, word in (("rna", "RNA"), ("atac", "ATAC")):
        adata = source.mod[mod].copy()
        adata.obs["cell_type"] = source.obs.loc[adata.obs_names, "cell_type"].to_numpy()
        adata.write_h5ad(tmp_path / f"pbmc10k-{word}.h5ad")
    pair = f"{tmp_path / 'pbmc10k-RNA.h5ad'},{tmp_path / 'pbmc10k-ATAC.h5ad'}"
    data = cm.load_dataset(cm.parse_args(["--dataset", pair, "--min-feature-frac", "0"]))
    assert data.uns[cm.READ_INFO]["label_key"] == "cell_type"
    assert data.uns[cm.READ_INFO]["counts"] == {"rna": "mod['rna'].X", "atac": "mod['atac'].X"}
    assert data.n_obs == 300 and data.mod["atac"].n_vars == source.mod["atac"].n_vars
    assert data.obs[cm.MODALITY].value_counts().to_dict() == {
        "paired": 180,
        "rna_only": 60,
        "atac_only": 60,
    }
    with pytest.raises(ValueError, match="one RNA and one ATAC .h5ad"):
        cm.load_dataset(cm.parse_args(["--dataset", f"{pair.split(',')[0]},{pair.split(',')[0]}"]))


def test_compare_multivi_shared_without_data_says_so(tmp_path, monkeypatch, capsys):
    cm = _compare_multivi()
    monkeypatch.setattr(cm, "SHARED_DATA", tmp_path / "data")
    cm.main(["--dataset", "shared", "--methods", "mvae_sc", "--out-dir", str(tmp_path)])
    assert "no .h5mu / .h5 / .h5ad file under" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.json"))


def test_realistic_h5mu_goes_through_the_real_data_path(tmp_path):
    """benchmarks/realistic_h5mu.py writes paired counts with cell_type and batch, which
    the comparison reads as it reads an annotated real file."""
    out = tmp_path / "wide.h5mu"
    command = _realistic_command(out)
    _run(command + ["--n-cells", "200", "--n-genes", "300", "--n-peaks", "900"])
    cm = _compare_multivi()
    data = cm.load_dataset(cm.parse_args(["--dataset", str(out), "--min-feature-frac", "0"]))
    assert data.uns[cm.READ_INFO] == {
        "counts": {"rna": "mod['rna'].X", "atac": "mod['atac'].X"},
        "label_key": "cell_type",
        "batch_key": "batch",
    }
    assert data.mod["rna"].n_vars == 300 and data.mod["atac"].n_vars == 900
    assert data.obs[cm.MODALITY].value_counts().to_dict() == {
        "paired": 120,
        "rna_only": 40,
        "atac_only": 40,
    }
    assert data.obs[cm.BATCH].nunique() == 2 and data.obs[cm.LABEL].nunique() > 2
    # the simulator's truth follows each cell, so the within-type R² row can be scored
    source = mudata.read_h5mu(out)
    factors = cm._true_factors(data)
    assert factors is not None and factors.shape == (200, 3)
    rows = source.obs_names.get_indexer(data.obs_names)
    np.testing.assert_array_equal(data.obsm["true_latent"], source.obsm["true_latent"][rows])


def test_realistic_h5mu_writes_unequal_batches(tmp_path):
    out = tmp_path / "unequal.h5mu"
    command = _realistic_command(out)
    _run(command + ["--n-cells", "400", "--n-genes", "100", "--n-peaks", "300"]
         + ["--batch-shares", "9", "6", "3", "2"])  # fmt: skip
    data = mudata.read_h5mu(out)
    sizes = data.obs["batch"].value_counts().sort_index().tolist()
    assert sizes == [180, 120, 60, 40] and data.n_obs == data.mod["atac"].n_obs
    assert data.obsm["true_latent"].shape[0] == 400
    assert data.obs.groupby("batch", observed=True)["cell_type"].nunique().min() > 2
    # batches are drawn at random: with seed 1, 110 simulated cells hold fewer than 50
    # of one batch, so it simulates more rather than fail
    _run(command + ["--n-cells", "100", "--n-genes", "50", "--n-peaks", "100"]
         + ["--batch-shares", "1", "1", "--seed", "1"])  # fmt: skip
    assert mudata.read_h5mu(out).obs["batch"].value_counts().tolist() == [50, 50]


def test_realistic_h5mu_writes_rare_cell_types(tmp_path):
    out = tmp_path / "rare.h5mu"
    command = _realistic_command(out)
    small = ["--n-cells", "400", "--n-genes", "100", "--n-peaks", "300", "--n-cell-types", "5"]
    _run(command + small + ["--type-shares", "50", "25", "15", "7", "3"])
    data = mudata.read_h5mu(out)
    assert data.obs["cell_type"].value_counts().sort_index().tolist() == [200, 100, 60, 28, 12]
    assert data.obsm["true_latent"].shape[0] == 400 == data.mod["rna"].n_obs
    # with batch shares too, each (type, batch) group gets the product of its shares
    _run(command + small + ["--type-shares", "2", "1", "1", "0.5", "0.5"]
         + ["--batch-shares", "3", "1"])  # fmt: skip
    counts = pd.crosstab(*(mudata.read_h5mu(out).obs[k] for k in ("cell_type", "batch")))
    assert counts.to_numpy().tolist() == [[120, 40], [60, 20], [60, 20], [30, 10], [30, 10]]
    failed = subprocess.run(
        command + small + ["--type-shares", "1", "1"], capture_output=True, text=True
    )
    assert failed.returncode != 0 and "give one per cell type" in failed.stderr


def test_realistic_h5mu_removes_a_type_from_a_batch(tmp_path):
    out = tmp_path / "absent.h5mu"
    command = _realistic_command(out)
    small = ["--n-cells", "300", "--n-genes", "100", "--n-peaks", "300"]
    _run(command + small)
    full = mudata.read_h5mu(out)
    _run(command + small + ["--absent", "type_0@batch_1", "type_7@batch_0"])
    data = mudata.read_h5mu(out)
    pairs = set(zip(data.obs["cell_type"].astype(str), data.obs["batch"].astype(str), strict=True))
    assert ("type_0", "batch_1") not in pairs and ("type_7", "batch_0") not in pairs
    assert {("type_0", "batch_0"), ("type_7", "batch_1")} <= pairs
    # the same simulation with those cells taken out, truth and counts alike
    gone = ((full.obs["cell_type"] == "type_0") & (full.obs["batch"] == "batch_1")) | (
        (full.obs["cell_type"] == "type_7") & (full.obs["batch"] == "batch_0")
    )
    assert gone.sum() > 0 and list(data.obs_names) == list(full.obs_names[~gone.to_numpy()])
    rows = full.obs_names.get_indexer(data.obs_names)
    np.testing.assert_array_equal(data.obsm["true_latent"], full.obsm["true_latent"][rows])
    assert (data.mod["rna"].X != full.mod["rna"].X[rows]).nnz == 0
    failed = subprocess.run(
        command + small + ["--absent", "type_0@batch_9"], capture_output=True, text=True
    )
    assert failed.returncode != 0 and "no batch ['batch_9']" in failed.stderr


def test_realistic_h5mu_thins_counts_for_shallow_sequencing(tmp_path):
    out = tmp_path / "shallow.h5mu"
    command = _realistic_command(out)
    small = ["--n-cells", "300", "--n-genes", "200", "--n-peaks", "600"]
    _run(command + small)
    full = mudata.read_h5mu(out)
    _run(command + small + ["--depth", "0.3"])
    shallow = mudata.read_h5mu(out)
    assert list(shallow.obs_names) == list(full.obs_names)
    np.testing.assert_array_equal(shallow.obsm["true_latent"], full.obsm["true_latent"])
    for name in ("rna", "atac"):
        before, after = full.mod[name].X.toarray(), shallow.mod[name].X.toarray()
        # the same cells' counts, each kept with probability 0.3: never more, whole numbers
        assert (after <= before).all() and (after == np.round(after)).all()
        assert after.sum() == pytest.approx(0.3 * before.sum(), rel=0.05)
    # ATAC stays binary; detected peaks fall to about 0.3 of what they were
    assert set(np.unique(shallow.mod["atac"].X.data)) == {1.0}
    failed = subprocess.run(command + small + ["--depth", "0"], capture_output=True, text=True)
    assert failed.returncode != 0 and "--depth must be in (0, 1]" in failed.stderr


def test_compare_multivi_reads_a_registry_name(monkeypatch):
    """``--dataset pbmc3k_multiome`` goes through the registry (its checksummed cache)."""
    import mvae_sc

    cm = _compare_multivi()
    source, calls = _paired_source(60), []
    monkeypatch.setattr(mvae_sc.datasets, "load", lambda name: calls.append(name) or source)
    assert cm._read_file("pbmc3k_multiome") is source and calls == ["pbmc3k_multiome"]
    with pytest.raises(ValueError, match="neither a file .* nor a data set of the registry"):
        cm._read_file("no_such_data")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_child_peak_rss_is_its_own():
    """A child started by subprocess must not report its parent's peak: Linux keeps
    ru_maxrss across execve, which once inflated MultiVI's peak in the comparison."""
    import numpy as np

    ballast = np.ones(80_000_000)  # 640 MB, touched, in this (the parent) process
    code = f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); "
    code += "from compare_multivi import _peak_rss_mb; print(_peak_rss_mb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout) < 400 < ballast.nbytes / 1e6


@pytest.mark.parametrize("backed", [False, True])
def test_scale_benchmark_runs(tmp_path, backed):
    out = tmp_path / "scale.json"
    command = [sys.executable, str(SCRIPT.with_name("scale.py")), "--cells", "300", "600"]
    command += ["--genes", "200", "--peaks", "500", "--out", str(out)]
    command += ["--backed"] if backed else []
    _run(command)
    rows = json.loads(out.read_text())["rows"]
    assert [r["n_cells"] for r in rows] == [300, 600]
    assert all(r["backed"] == backed and r["seconds_per_epoch"] > 0 for r in rows)
    assert rows[1]["sparse_input_mb"] > rows[0]["sparse_input_mb"]


def test_profile_step_runs(tmp_path):
    out = tmp_path / "profile.json"
    command = [sys.executable, str(SCRIPT.with_name("profile_step.py")), "--cells", "300"]
    command += ["--genes", "200", "--peaks", "500", "--steps", "4", "--out", str(out)]
    _run(command + ["--precision", "bf16-mixed"])
    report = json.loads(out.read_text())
    assert report["precision"] == "bf16-mixed"
    phases = report["ms_per_step"]
    assert phases["total"] == pytest.approx(sum(v for k, v in phases.items() if k != "total"))
    assert sum(report["operator_share_of_profiled_time"].values()) == pytest.approx(1, abs=0.01)
    assert report["ms_per_step_default_allocator"]["total"] > 0


def test_quality_along_training_scores_each_snapshot(tmp_path):
    """Each snapshot is scored with its own weights (the scores move between them), and
    the early-stopping summary is the one Lightning's rule gives on the curve."""
    from mvae_sc.model import default_max_epochs

    out = tmp_path / "along.json"
    command = [sys.executable, str(SCRIPT.with_name("quality_along_training.py"))]
    command += ["--n-cells", "400", "--epochs", "4", "--every", "2", "--start", "2"]
    _run(command + ["--lr", "0.002", "--kl-warmup", "3", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["optimiser"]["lr"] == 0.002  # as the optimiser had it
    warmup = report["kl_warmup"]  # as the training plan ran it
    assert warmup["steps"] == 3 * warmup["steps_per_epoch"] == 9  # 360 cells, 3 minibatches
    # train()'s own epoch budget (as in the comparison), stopped after --epochs
    assert report["train_budget"] == {
        "max_epochs": default_max_epochs(360 // 128),
        "batch_size": 128,
    }
    assert sorted(report["snapshots"]) == ["2", "4"]
    first, last = report["snapshots"]["2"], report["snapshots"]["4"]
    assert first["foscttm_paired"] != last["foscttm_paired"]
    assert 0 < report["reference"]["silhouette_label_true_latent"] < 1
    assert len(report["validation_curve"]) == 4

    early_stop = _benchmark_module("quality_along_training").early_stop
    # best at epoch 2; three epochs without improvement stop a patience-3 run at 5
    assert early_stop([5.0, 3.0, 4.0, 3.0, 3.5, 1.0], patience=3) == (5, 2)
    assert early_stop([3.0, 2.0, 1.0], patience=3) == (3, 3)


def test_supervised_head_benchmark_runs(tmp_path):
    out = tmp_path / "head.json"
    command = [sys.executable, str(SCRIPT.with_name("supervised_head.py")), "--runs", "400:1"]
    command += ["--max-epochs", "5", "--out", str(out)]
    _run(command)
    (run,) = json.loads(out.read_text())["runs"]
    assert set(run["accuracy"]) >= {"head", "logistic_on_z", "logistic_on_rna_pcs"}
    assert all(0 <= run["accuracy"][k] <= 1 for k in ("head", "logistic_on_rna_pcs"))
    assert set(run["r2_paired"]) == {
        "z (fused)",
        "z, RNA expert alone",
        "z, ATAC expert alone",
        "z, both experts side by side",
        "RNA PCs",
    }
    assert set(run["expert_sd"]) == {"rna", "atac"} and len(run["expert_sd"]["rna"]) == 10


def test_outcome_across_labs_benchmark_runs(tmp_path):
    out = tmp_path / "labs.json"
    command = [sys.executable, str(SCRIPT.with_name("outcome_across_labs.py"))]
    command += ["--runs", "400:1", "--batch-effects", "0.5", "1.5:0.5", "--max-epochs", "2"]
    command += ["--out", str(out)]
    _run(command)
    report = json.loads(out.read_text())
    settings = [(r["batch_effect"], r["batch_type_specific"]) for r in report["rows"]]
    assert settings == [(0.5, 0.0), (1.5, 0.5)]
    scored = ("head", "head_70pct_hidden", "head_no_adversary", "logistic_on_rna_pcs")
    assert all(0 <= r[k] <= 1 for r in report["rows"] for k in scored)
    # the held-out lab is the one without labels, and every cell of it is scored
    row = report["rows"][0]
    assert row["n_test_cells_with_rna"] + row["n_test_cells_atac_only"] > 150
    assert report["summary"]["1.5:0.5"]["runs"] == 1


def test_adversary_unequal_batches_benchmark_runs(tmp_path):
    out = tmp_path / "unequal.json"
    command = [sys.executable, str(SCRIPT.with_name("adversary_unequal_batches.py"))]
    _run(command + ["--seeds", "3", "--keep", "0.2", "--smoke", "--out", str(out)])
    run = json.loads(out.read_text())["runs"]["3"]
    sizes = sorted(run["batch_sizes"].values())
    assert sizes[0] < 0.35 * sizes[1]  # the second batch cut to about a fifth
    for name in ("no_adversary", "adversary"):
        assert set(run[name]) == {
            "ari",
            "silhouette_label",
            "batch_entropy",
            "batch_predictability",
        }
        assert 0.5 <= run[name]["batch_predictability"] <= 1


def test_classification_weight_benchmark_runs(tmp_path):
    out = tmp_path / "weights.json"
    command = [sys.executable, str(SCRIPT.with_name("classification_weight.py"))]
    command += ["--runs", "400:1", "--weights", "10", "50", "--max-epochs", "2", "--out", str(out)]
    _run(command)
    report = json.loads(out.read_text())
    # one row per weight and fraction of hidden labels, each scored against the baseline
    assert [(r["weight"], r["hide"]) for r in report["rows"]] == [
        (10.0, 0.0),
        (10.0, 0.7),
        (50.0, 0.0),
        (50.0, 0.7),
    ]
    assert all(0 <= r["head"] <= 1 and 0 <= r["rna_pca"] <= 1 for r in report["rows"])
    assert report["summary"]["10.0"]["runs"] == 2
