"""Does the lighter KL weight that ``train`` uses with count modalities still pay off when
counts are mixed with continuous tables? Cell-type recovery on the Patch-seq-like set
(RNA counts + electrophysiology + morphology, with missing modalities) at KL weights 0.25
and 1, over data seeds. The sensor set, continuous only, is in ``modality_weights.py``.

Usage:
    python benchmarks/kl_default_patchseq.py [--seeds 1 2 3] [--kl-weights 0.25 1.0]
                                             [--out benchmarks/results/kl_default_patchseq.json]

Each run: ``synthetic_patchseq(1500, n_genes=500, seed=s)`` (30% of cells without
morphology, 10% without ephys, 5% without RNA), ``modalities={"rna": "nb", "ephys":
"gaussian", "morph": "gaussian"}``, ``MVAE(n_latent=10, n_hidden=128)``, 80 epochs;
on z: 5-fold 15-NN accuracy of the cell type and Leiden ARI (``metrics.leiden_ari_nmi``).
"""

from __future__ import annotations

from modality_weights import sweep  # this directory is on the path when run as a script


def _run(seed: int, kl_weight: float) -> dict[str, float]:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    import mvae_sc
    from mvae_sc import metrics

    mdata = mvae_sc.datasets.synthetic_patchseq(1500, n_genes=500, seed=seed)
    mvae_sc.MVAE.setup_mudata(
        mdata, modalities={"rna": "nb", "ephys": "gaussian", "morph": "gaussian"}
    )
    model = mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128)
    model.train(max_epochs=80, max_kl_weight=kl_weight, enable_progress_bar=False, logger=False)
    z = model.get_latent_representation()
    labels = mdata.obs["cell_type"].to_numpy()
    knn = cross_val_score(KNeighborsClassifier(15), z, labels, cv=5).mean()
    return {
        "cell_type_knn_accuracy": float(knn),
        "leiden_ari": float(metrics.leiden_ari_nmi(z, labels)["ari"]),
    }


if __name__ == "__main__":
    sweep(_run, __doc__, seeds=[1, 2, 3], out="benchmarks/results/kl_default_patchseq.json")
