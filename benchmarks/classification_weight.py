"""The supervised head's ``classification_weight`` against a logistic regression on PCA
of RNA, with all training labels known and with 70% of them hidden (issue 4).

Usage:
    python benchmarks/classification_weight.py [--weights 10 50]
        [--runs 2000:1 2000:2 2000:3 5000:1 5000:2 5000:3] [--out F]

Each run ``CELLS:SEED`` is the data of ``benchmarks/supervised_head.py``, with the split
and the RNA-PCA baseline of ``tests/test_batch_supervised.py`` and its model
(``n_latent=10``, ``n_hidden=128``, ``max_epochs=80``). Per weight, run and fraction of
hidden labels it reports the balanced accuracy, on held-out cells with RNA, of the head
and of the baseline, and the epochs trained (early stopping). Set ``OMP_NUM_THREADS=1
NUMBA_NUM_THREADS=1`` when two runs share a machine: numba's and BLAS's threads
oversubscribe the cores and slow training several times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from supervised_head import accuracy  # noqa: E402

DEFAULT_RUNS = ("2000:1", "2000:2", "2000:3", "5000:1", "5000:2", "5000:3")


def run(n_cells: int, seed: int, weight: float, hide: float, max_epochs: int = 80) -> dict:
    # on a copy, as in the test's fixture
    scores = accuracy(n_cells, seed, max_epochs, hide=hide, copy=True, classification_weight=weight)
    return {
        "head": scores["head"],
        "rna_pca": scores["logistic_on_rna_pcs"],
        "epochs": scores["epochs"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[10.0, 50.0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="CELLS:SEED")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/classification_weight.json"
    )
    parser.add_argument(
        "--max-epochs", type=int, default=80, help="the test's 80; less for smoke runs"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    for weight in args.weights:
        for spec in args.runs:
            n_cells, seed = (int(v) for v in spec.split(":"))
            for hide in (0.0, 0.7):
                row = {"weight": weight, "n_cells": n_cells, "seed": seed, "hide": hide}
                row.update(run(n_cells, seed, weight, hide, args.max_epochs))
                print(json.dumps(row), flush=True)  # noqa: T201
                rows.append(row)
    summary = {}
    for weight in args.weights:
        margins = [r["head"] - r["rna_pca"] for r in rows if r["weight"] == weight]
        summary[str(weight)] = {
            "mean_head_minus_rna_pca": round(float(np.mean(margins)), 4),
            "wins": int(sum(m > 0 for m in margins)),
            "runs": len(margins),
        }
    report = {
        "command": "python benchmarks/classification_weight.py --weights "
        + " ".join(f"{w:g}" for w in args.weights)
        + " --runs "
        + " ".join(args.runs),
        "date": time.strftime("%Y-%m-%d"),
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary))  # noqa: T201


if __name__ == "__main__":
    main()
