"""KL weight x adversary: what the defaults (``max_kl_weight=0.25``, adversary on with
batches) change against the plain ELBO without adversary, on synthetic data.

Usage:
    python benchmarks/objective_ablation.py [--seeds 1 2 3 4] [--out benchmarks/results/objective_ablation.json]

Two sets, each model 80 epochs, ``n_latent=10``, ``n_hidden=128``:

* strong batch effect (``synthetic_multiome(1500, n_genes=600, n_peaks=2000,
  n_cell_types=6, batch_effect=1.5, seed=0)``): Leiden ARI vs cell type, kNN batch
  entropy, batch predictability, for the four combinations;
* outcome sets (``synthetic_multiome(2000, n_genes=600, n_peaks=2000, n_cell_types=6,
  seed=s)``, two batches): the 5-fold cross-validated linear R^2 of each continuous
  within-type factor from z (``metrics.linear_r2``) and the held-out accuracy of a
  logistic regression of ``response`` on z (70/30 split), old objective against the
  defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "kl1": ({"adversarial_batch": False}, {"max_kl_weight": 1.0}),
    "kl1_adversary": ({"adversarial_batch": True}, {"max_kl_weight": 1.0}),
    "kl0.25": ({"adversarial_batch": False}, {}),
    "kl0.25_adversary (default)": ({}, {}),
}


def _fit(mdata, model_kwargs: dict, train_kwargs: dict) -> np.ndarray:
    import mvae_sc

    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128, **model_kwargs)
    model.train(max_epochs=80, enable_progress_bar=False, logger=False, **train_kwargs)
    return model.get_latent_representation()


def strong_batch() -> dict:
    import mvae_sc
    from mvae_sc import metrics

    rows = {}
    for name, (model_kwargs, train_kwargs) in CONFIGS.items():
        mdata = mvae_sc.datasets.synthetic_multiome(
            1500, n_genes=600, n_peaks=2000, n_cell_types=6, batch_effect=1.5, seed=0
        )
        z = _fit(mdata, model_kwargs, train_kwargs)
        labels, batches = mdata.obs["cell_type"].to_numpy(), mdata.obs["batch"].to_numpy()
        rows[name] = {
            "ari": round(metrics.leiden_ari_nmi(z, labels)["ari"], 3),
            "batch_entropy": round(metrics.batch_entropy(z, batches), 3),
            "batch_predictability": round(metrics.batch_predictability(z, batches), 3),
        }
        print(name, rows[name], flush=True)  # noqa: T201 - progress
    return rows


def outcome(seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    import mvae_sc
    from mvae_sc import metrics

    rows = {}
    for name in ("kl1", "kl0.25_adversary (default)"):
        mdata = mvae_sc.datasets.synthetic_multiome(
            2000, n_genes=600, n_peaks=2000, n_cell_types=6, seed=seed
        )
        z = _fit(mdata, *CONFIGS[name])
        test = np.random.default_rng(0).random(mdata.n_obs) < 0.3
        r2 = metrics.linear_r2(z, np.asarray(mdata.obsm["true_latent"])[:, -3:])  # the factors
        truth = mdata.obs["response"].to_numpy().astype(str)
        clf = LogisticRegression(max_iter=3000).fit(z[~test], truth[~test])
        rows[name] = {
            "factor_r2": [round(float(v), 3) for v in r2],
            "outcome_accuracy": round(
                balanced_accuracy_score(truth[test], clf.predict(z[test])), 3
            ),
        }
        print(seed, name, rows[name], flush=True)  # noqa: T201 - progress
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--out", default="benchmarks/results/objective_ablation.json")
    args = parser.parse_args()
    import mudata
    import torch

    mudata.set_options(pull_on_update=False)
    torch.set_num_threads(1)
    report = {
        "command": f"python benchmarks/objective_ablation.py --seeds {' '.join(map(str, args.seeds))}",
        "date": time.strftime("%Y-%m-%d"),
        "strong_batch": strong_batch(),
        "outcome": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    for seed in args.seeds:  # written after every seed: a long run can be stopped
        report["outcome"][str(seed)] = outcome(seed)
        out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
