"""The adversary with batches of unequal size: cell types kept, batch taken out.

Usage:
    python benchmarks/adversary_unequal_batches.py [--seeds 0 1 2] [--keep 0.25]
        [--out benchmarks/results/adversary_unequal_batches.json]

Per seed s: ``synthetic_multiome(3000, n_genes=600, n_peaks=2000, n_cell_types=6,
batch_effect=1.5, seed=s)`` with the second batch subsampled to ``--keep`` of its cells
(about 80:20 at 0.25), then ``MVAE(n_latent=10, n_hidden=128)`` trained 80 epochs
without and with the adversary (its default weight). Rows: Leiden ARI and cell-type
silhouette against the simulator's types, kNN batch entropy and batch predictability.

The discriminator's target is the batches' frequency (``MVAE``'s ``batch_prior``); a
uniform target, which a discriminator cannot be brought to on unequal batches without
separating cells of the larger one, cost cell types here (see the result file).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def unequal_batches(seed: int, keep: float, n_cells: int = 3000, **kwargs):
    """The two-batch set with the second batch cut to ``keep`` of its cells."""
    import mvae_sc

    mdata = mvae_sc.datasets.synthetic_multiome(
        n_cells, n_cell_types=6, batch_effect=1.5, seed=seed, **kwargs
    )
    batches = mdata.obs["batch"].astype(str).to_numpy()
    smaller = np.unique(batches)[1]
    rng = np.random.default_rng(seed)
    return mdata[(batches != smaller) | (rng.random(mdata.n_obs) < keep)].copy()


def run(seed: int, keep: float, *, n_cells: int, n_genes: int, n_peaks: int, epochs: int):
    import mvae_sc
    from mvae_sc import metrics

    mdata = unequal_batches(seed, keep, n_cells, n_genes=n_genes, n_peaks=n_peaks)
    labels = mdata.obs["cell_type"].to_numpy()
    batches = mdata.obs["batch"].to_numpy()
    rows = {"batch_sizes": {str(k): int(v) for k, v in mdata.obs["batch"].value_counts().items()}}
    for name, adversarial in (("no_adversary", False), ("adversary", True)):
        mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
        model = mvae_sc.MVAE(
            mdata, n_latent=10, n_hidden=128, adversarial_batch=adversarial, seed=seed
        )
        model.train(max_epochs=epochs, enable_progress_bar=False, logger=False)
        z = model.get_latent_representation()
        rows[name] = {
            "ari": round(metrics.leiden_ari_nmi(z, labels)["ari"], 4),
            "silhouette_label": round(metrics.silhouette_label(z, labels), 4),
            "batch_entropy": round(metrics.batch_entropy(z, batches), 4),
            "batch_predictability": round(metrics.batch_predictability(z, batches), 4),
        }
        print(f"[seed {seed}] {name}: {rows[name]}", flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("adversary_unequal_batches.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs (tests)")
    args = parser.parse_args(argv)
    size = (
        {"n_cells": 400, "n_genes": 60, "n_peaks": 120, "epochs": 2}
        if args.smoke
        else {"n_cells": 3000, "n_genes": 600, "n_peaks": 2000, "epochs": 80}
    )
    start = time.perf_counter()
    runs = {str(s): run(s, args.keep, **size) for s in args.seeds}
    report = {
        "command": "python benchmarks/adversary_unequal_batches.py "
        + " ".join(["--seeds", *map(str, args.seeds), "--keep", str(args.keep)]),
        "settings": {"keep": args.keep, **size},
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
