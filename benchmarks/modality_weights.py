"""Do PoE modality weights follow a sensor's noise? Spearman correlation of the PPG's
weight with its per-cell noise on the two-sensor set, over data seeds and KL weights.

Usage:
    python benchmarks/modality_weights.py [--seeds 0 1 2 3 4] [--kl-weights 0.25 1.0]
                                          [--out benchmarks/results/modality_weights.json]

Each run: ``synthetic_sensors(1500, seed=s)``, ``modalities={"accel": "gaussian", "ppg":
"gaussian"}``, ``MVAE(n_latent=8, n_hidden=64)``, 120 epochs, batch size 64, then
``get_modality_weights()``; the correlation is over the cells that have both sensors
(a cell without the PPG has weight 0 by definition). Negative is what a user wants: the
noisier the PPG, the less it counts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _rho(seed: int, kl_weight: float) -> float:
    import scipy.stats as st

    import mvae_sc

    mdata = mvae_sc.datasets.synthetic_sensors(1500, seed=seed)
    mvae_sc.MVAE.setup_mudata(mdata, modalities={"accel": "gaussian", "ppg": "gaussian"})
    model = mvae_sc.MVAE(mdata, n_latent=8, n_hidden=64)
    model.train(
        max_epochs=120,
        batch_size=64,
        max_kl_weight=kl_weight,
        enable_progress_bar=False,
        logger=False,
    )
    weights = model.get_modality_weights()
    both = (weights > 0).all(axis=1).to_numpy()
    noise = mdata.obs["ppg_noise"].to_numpy()[both]
    return float(st.spearmanr(noise, weights["mvae_weight_ppg"].to_numpy()[both]).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--kl-weights", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--out", default="benchmarks/results/modality_weights.json")
    args = parser.parse_args()
    rows = []
    for kl_weight in args.kl_weights:
        for seed in args.seeds:
            rows.append({"max_kl_weight": kl_weight, "seed": seed, "rho": _rho(seed, kl_weight)})
            print(json.dumps(rows[-1]), flush=True)  # noqa: T201
    summary = {
        str(kl): {
            "median_rho": float(np.median([r["rho"] for r in rows if r["max_kl_weight"] == kl])),
            "max_rho": float(max(r["rho"] for r in rows if r["max_kl_weight"] == kl)),
        }
        for kl in args.kl_weights
    }
    report = {
        "command": "python benchmarks/modality_weights.py "
        + " ".join(["--seeds", *map(str, args.seeds), "--kl-weights", *map(str, args.kl_weights)]),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
