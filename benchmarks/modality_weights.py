"""Do PoE modality weights follow a sensor's noise, and which KL weight suits continuous
data? On the two-sensor set, over data seeds and KL weights: Spearman correlation of the
PPG's weight with its per-cell noise, and how well z recovers the windows' states.

Usage:
    python benchmarks/modality_weights.py [--seeds 0 1 2 3 4] [--kl-weights 0.25 1.0]
                                          [--out benchmarks/results/modality_weights.json]

Each run: ``synthetic_sensors(1500, seed=s)``, ``modalities={"accel": "gaussian", "ppg":
"gaussian"}``, the default model and training (``MVAE(mdata)``: 20 latent dimensions,
experts of 60 and 40 hidden units for the 30 accelerometer and 20 PPG features, see
``mvae_sc.nn.module.modality_width``; early stopping) at the given KL weight, then
``get_modality_weights()``; the correlation is over the cells that have both sensors
(a cell without the PPG has weight 0 by definition). Negative is what a user wants: the
noisier the PPG, the less it counts. Also per run, 5-fold cross-validated on z: the
15-NN accuracy of the state (``state_knn_accuracy``) and the linear R² of the true
3-dimensional latent (``true_latent_r2``). ``max_kl_weight=1.0`` is what ``train`` uses
by default on data whose modalities are all Gaussian; 0.25 is its default with counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _run(seed: int, kl_weight: float) -> dict[str, float]:
    import scipy.stats as st
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    import mvae_sc

    mdata = mvae_sc.datasets.synthetic_sensors(1500, seed=seed)
    mvae_sc.MVAE.setup_mudata(mdata, modalities={"accel": "gaussian", "ppg": "gaussian"})
    model = mvae_sc.MVAE(mdata)
    model.train(max_kl_weight=kl_weight, enable_progress_bar=False, logger=False)
    weights = model.get_modality_weights()
    both = (weights > 0).all(axis=1).to_numpy()
    noise = mdata.obs["ppg_noise"].to_numpy()[both]
    z = model.get_latent_representation()
    state = mdata.obs["state"].cat.codes.to_numpy()
    knn = cross_val_score(KNeighborsClassifier(15), z, state, cv=5).mean()
    r2 = cross_val_score(
        LinearRegression(), z, mdata.obsm["true_latent"], cv=5, scoring="r2"
    ).mean()
    return {
        "rho": float(st.spearmanr(noise, weights["mvae_weight_ppg"].to_numpy()[both]).statistic),
        "state_knn_accuracy": float(knn),
        "true_latent_r2": float(r2),
    }


def sweep(run, doc: str, *, seeds: list[int], out: str) -> None:
    """Command line of a KL-weight sweep: ``run(seed, kl_weight)`` returns a dict of
    measures; every row is printed, and the rows with the median of each measure per KL
    weight are written as JSON to ``--out``."""
    script = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--kl-weights", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    rows = []
    for kl_weight in args.kl_weights:
        for seed in args.seeds:
            rows.append({"max_kl_weight": kl_weight, "seed": seed, **run(seed, kl_weight)})
            print(json.dumps(rows[-1]), flush=True)  # noqa: T201
    measures = [key for key in rows[0] if key not in ("max_kl_weight", "seed")]
    summary = {
        str(kl): {
            f"median_{key}": float(np.median([r[key] for r in rows if r["max_kl_weight"] == kl]))
            for key in measures
        }
        for kl in args.kl_weights
    }
    report = {
        "command": f"python benchmarks/{script} "
        + " ".join(["--seeds", *map(str, args.seeds), "--kl-weights", *map(str, args.kl_weights)]),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sweep(_run, __doc__, seeds=[0, 1, 2, 3, 4], out="benchmarks/results/modality_weights.json")
