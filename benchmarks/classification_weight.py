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
from supervised_head import _data, _test_protocol  # noqa: E402

DEFAULT_RUNS = ("2000:1", "2000:2", "2000:3", "5000:1", "5000:2", "5000:3")


def run(n_cells: int, seed: int, weight: float, hide: float, max_epochs: int = 80) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    import mvae_sc

    outcome_split, rna_pcs = _test_protocol()
    # a copy, as in the test's fixture: MuData.copy() puts the cells in another order, and
    # the split follows the order
    mdata = _data(n_cells, seed).copy()
    test, labelled = outcome_split(mdata, hide=hide)
    truth = mdata.obs["response"].to_numpy().astype(str)
    mdata.obs["label"] = mdata.obs["response"].astype(object).where(labelled)
    mvae_sc.MVAE.setup_mudata(
        mdata, batch_key="batch", labels_key="label", label_type="categorical"
    )
    model = mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128, classification_weight=weight)
    model.train(max_epochs=max_epochs, enable_progress_bar=False, logger=False)
    head = model.predict().to_numpy().astype(str)
    pcs, has_rna = rna_pcs(mdata)
    on = test & has_rna
    baseline = LogisticRegression(max_iter=2000).fit(
        pcs[labelled & has_rna], truth[labelled & has_rna]
    )
    return {
        "head": round(float(balanced_accuracy_score(truth[on], head[on])), 4),
        "rna_pca": round(float(balanced_accuracy_score(truth[on], baseline.predict(pcs[on]))), 4),
        "epochs": len(model.history),
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
