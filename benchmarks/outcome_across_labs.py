"""The supervised head when outcomes are known in one lab and predicted in another,
against a logistic regression on PCA of RNA (issue 4).

Usage:
    python benchmarks/outcome_across_labs.py [--runs 2000:1 2000:2 2000:3]
        [--batch-effects 0.5 0.5:0.5 1.5 1.5:0.5] [--max-epochs N] [--out F]

Each run ``CELLS:SEED`` at each batch effect simulates the data of
``benchmarks/supervised_head.py`` (two labs, ``batch_0`` and ``batch_1``). A batch
effect ``E`` is ``synthetic_multiome(batch_effect=E)``, the same shift in every cell type
(0.5 is the simulator's default, 1.5 a strong one); ``E:S`` adds
``batch_type_specific=S``, a share ``S`` of it that differs between cell types. The data
are copied as the test's fixture does, and ``obs["response"]`` is labelled only for the
cells of ``batch_0`` (the ``_lab_split`` of ``tests/test_batch_supervised.py``). Scored
on the cells of ``batch_1``, balanced accuracy of:

* ``head``: the supervised model (``n_latent=10``, ``n_hidden=128``, 80 epochs, otherwise
  the defaults: batch-aware decoders and, with two batches, the adversary), on cells with
  RNA; ``head_70pct_hidden``: the same with 70% of ``batch_0``'s labels hidden;
  ``head_no_adversary``: ``adversarial_batch=False``;
* ``head_atac_only``: the head on the held-out lab's ATAC-only cells (no RNA baseline
  can score them);
* ``logistic_on_rna_pcs``: logistic regression on 30 PCs of log-normalised RNA (all
  cells' PCA, fitted on the labelled lab), as in the test;
* ``logistic_on_rna_pcs_centred``: the same after subtracting each lab's mean PC vector,
  a simple batch correction, to show how much of the gap is a shift common to all cells;
* ``logistic_on_true_latent``: on the simulator's true programs and factors, the ceiling
  set by the outcome's own noise.

Set ``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1`` when two runs share a machine.
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
from supervised_head import _data, _model, _test_protocol  # noqa: E402

DEFAULT_RUNS = ("2000:1", "2000:2", "2000:3")


def run(
    n_cells: int, seed: int, batch_effect: float, type_specific: float, max_epochs: int = 80
) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    lab_split, rna_pcs = _test_protocol("_lab_split")
    # a copy, as in the test's fixture
    source = _data(n_cells, seed, batch_effect, type_specific).copy()
    test, labelled = lab_split(source)
    truth = source.obs["response"].to_numpy().astype(str)
    batch = source.obs["batch"].astype(str).to_numpy()
    pcs, has_rna = rna_pcs(source)
    on, atac_only = test & has_rna, test & ~has_rna

    def score(predicted: np.ndarray, cells: np.ndarray = on) -> float:
        return round(float(balanced_accuracy_score(truth[cells], predicted[cells])), 4)

    def logistic(x: np.ndarray, fit_on: np.ndarray) -> np.ndarray:
        return LogisticRegression(max_iter=2000).fit(x[fit_on], truth[fit_on]).predict(x)

    centred = pcs.copy()
    for b in np.unique(batch):
        cells = (batch == b) & has_rna
        centred[cells] -= centred[cells].mean(0)
    row = {
        "logistic_on_rna_pcs": score(logistic(pcs, labelled & has_rna)),
        "logistic_on_rna_pcs_centred": score(logistic(centred, labelled & has_rna)),
        "logistic_on_true_latent": score(
            logistic(np.asarray(source.obsm["true_latent"]), labelled)
        ),
    }
    rng = np.random.default_rng(0)
    for name, hide, model_kwargs in (
        ("head", 0.0, {}),
        ("head_70pct_hidden", 0.7, {}),
        ("head_no_adversary", 0.0, {"adversarial_batch": False}),
    ):
        mdata = source.copy()
        known = labelled & (rng.random(mdata.n_obs) >= hide)
        mdata.obs["label"] = mdata.obs["response"].astype(object).where(known)
        model = _model(mdata, max_epochs, model_kwargs, labels_key="label")
        predicted = model.predict().to_numpy().astype(str)
        row[name] = score(predicted)
        row[f"{name}_epochs"] = len(model.history)
        if name == "head":
            row["head_atac_only"] = score(predicted, atac_only)
    row["n_test_cells_with_rna"] = int(on.sum())
    row["n_test_cells_atac_only"] = int(atac_only.sum())
    return row


def summarise(rows: list[dict]) -> dict:
    """Per setting, in the order met: the mean of each score and the head's smallest
    margin over PCA of RNA."""
    summary = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == setting]
        summary[setting] = {
            key: round(float(np.mean([r[key] for r in group])), 4)
            for key in (
                "head",
                "head_70pct_hidden",
                "head_no_adversary",
                "head_atac_only",
                "logistic_on_rna_pcs",
                "logistic_on_rna_pcs_centred",
                "logistic_on_true_latent",
            )
        }
        summary[setting]["head_minus_rna_pca_min"] = round(
            min(r["head"] - r["logistic_on_rna_pcs"] for r in group), 4
        )
        summary[setting]["runs"] = len(group)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="CELLS:SEED")
    parser.add_argument(
        "--batch-effects",
        nargs="+",
        default=["0.5", "0.5:0.5", "1.5", "1.5:0.5"],
        help="E (batch_effect) or E:S (and batch_type_specific=S)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/outcome_across_labs.json"
    )
    parser.add_argument(
        "--max-epochs", type=int, default=80, help="the test's 80; less for smoke runs"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    rows = []
    for setting in args.batch_effects:
        batch_effect, _, type_specific = setting.partition(":")
        for spec in args.runs:
            n_cells, seed = (int(v) for v in spec.split(":"))
            start = time.perf_counter()
            row = {"n_cells": n_cells, "seed": seed, "setting": setting}
            row["batch_effect"] = float(batch_effect)
            row["batch_type_specific"] = float(type_specific or 0.0)
            row.update(
                run(
                    n_cells,
                    seed,
                    row["batch_effect"],
                    row["batch_type_specific"],
                    args.max_epochs,
                )
            )
            row["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(row), flush=True)  # noqa: T201
            rows.append(row)
    summary = summarise(rows)
    report = {
        "command": "python benchmarks/outcome_across_labs.py --runs "
        + " ".join(args.runs)
        + " --batch-effects "
        + " ".join(args.batch_effects),
        "date": time.strftime("%Y-%m-%d"),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))  # noqa: T201
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
