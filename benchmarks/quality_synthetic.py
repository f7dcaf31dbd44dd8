"""Integration and imputation quality of mvae_sc on the synthetic mosaic multiome set.

Usage: python benchmarks/quality_synthetic.py [--n-cells 5000] [--seed 0] [--out FILE.json]

Reports Leiden ARI/NMI (all cells; RNA-bearing cells vs. a PCA-on-RNA baseline), cell-type
silhouette, batch entropy, kNN label agreement between RNA-only and ATAC-only cells,
FOSCTTM of paired cells (each modality encoded alone), ATAC imputation AUROC for RNA-only
cells and RNA imputation Pearson for ATAC-only cells against the simulator's held-out
truth, plus training wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import mudata
import numpy as np
import scanpy as sc

import mvae_sc
from mvae_sc import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    mudata.set_options(pull_on_update=False)
    mdata = mvae_sc.datasets.synthetic_multiome(args.n_cells, n_batches=2, seed=args.seed)
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=20)
    start = time.perf_counter()
    model.train(seed=args.seed, enable_progress_bar=False)
    train_seconds = time.perf_counter() - start
    z = model.get_latent_representation()
    labels = mdata.obs["cell_type"].to_numpy()
    kind = mdata.obs["modality"].to_numpy()
    has_rna = kind != "atac_only"
    rna = mdata.mod["rna"].copy()
    sc.pp.normalize_total(rna)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=20, random_state=0)
    rna_labels = mdata.obs.loc[rna.obs_names, "cell_type"].to_numpy()
    z_rna = model.get_latent_representation(modality="rna")
    z_atac = model.get_latent_representation(modality="atac")
    paired = kind == "paired"
    ro, ao = kind == "rna_only", kind == "atac_only"
    atac_truth = mvae_sc.datasets.heldout(mdata, "atac")
    rna_truth = mvae_sc.datasets.heldout(mdata, "rna")
    atac_imp = model.impute("atac")[mdata.obs_names.get_indexer(atac_truth.obs_names)]
    rna_imp = model.impute("rna")[mdata.obs_names.get_indexer(rna_truth.obs_names)]
    report = {
        "n_cells": args.n_cells,
        "seed": args.seed,
        "machine": f"{platform.processor() or platform.machine()}, torch threads {__import__('torch').get_num_threads()}",
        "epochs": len(model.history),
        "train_seconds": round(train_seconds, 1),
        "ari_all": metrics.leiden_ari_nmi(z, labels)["ari"],
        "nmi_all": metrics.leiden_ari_nmi(z, labels)["nmi"],
        "ari_rna_cells": metrics.leiden_ari_nmi(z[has_rna], labels[has_rna])["ari"],
        "ari_rna_pca_baseline": metrics.leiden_ari_nmi(rna.obsm["X_pca"], rna_labels)["ari"],
        "silhouette_label": metrics.silhouette_label(z, labels),
        "batch_entropy": metrics.batch_entropy(z, mdata.obs["batch"].to_numpy()),
        "knn_rna_only_to_atac_only": metrics.knn_label_agreement(
            z[ro], labels[ro], z[ao], labels[ao]
        ),
        "knn_atac_only_to_rna_only": metrics.knn_label_agreement(
            z[ao], labels[ao], z[ro], labels[ro]
        ),
        "foscttm_paired": metrics.foscttm(z_rna[paired], z_atac[paired]),
        "atac_auroc_rna_only": metrics.imputation_auroc(atac_truth.X, atac_imp),
        "rna_pearson_gene_atac_only": metrics.imputation_pearson(rna_truth.X, rna_imp),
        "rna_pearson_cell_atac_only": metrics.imputation_pearson(rna_truth.X, rna_imp, axis="cell"),
    }
    report = {
        k: (round(float(v), 4) if isinstance(v, float | np.floating) else v)
        for k, v in report.items()
    }
    text = json.dumps(report, indent=1)
    print(text)  # noqa: T201 - a benchmark script reports on stdout
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
