"""The supervised head against a logistic regression on PCA of RNA, and how much of the
outcome's drivers each representation holds (issue 4).

Usage:
    python benchmarks/supervised_head.py [--runs 2000:1 2000:2 5000:1] [--max-epochs N] [--out F]

Each run ``CELLS:SEED`` simulates ``synthetic_multiome(CELLS, n_genes=600, n_peaks=2000,
n_cell_types=6, seed=SEED)`` (two batches; ``obs["response"]`` is ``outcome > 0`` with
``outcome = 0.7 * program_0 + factor_0 + noise``), holds out 30% of the cells (the split
function of ``tests/test_batch_supervised.py``; the test draws it on a copy, whose cells
MuData puts in another order, so its held-out cells differ) and reports, on held-out
cells with RNA:

* ``accuracy``: balanced accuracy of the supervised model's head
  (``setup_mudata(labels_key=...)``, ``n_latent=10``, ``n_hidden=128``, otherwise the
  defaults), of a logistic regression on that model's z, and of a logistic regression on
  30 PCs of log-normalised RNA (fitted on the labelled cells with RNA);
* ``r2_paired``: on paired cells, the 5-fold cross-validated R^2 of a ridge regression
  (linear, ``metrics.linear_r2``) and of a small MLP (the same shuffled folds) from each
  representation to factor 0, program 0 and the continuous outcome. Representations: z
  of an *unsupervised* model with the same settings (all modalities fused; RNA's expert
  alone; ATAC's alone; the two experts' means side by side, i.e. the best linear fusion)
  and the 30 RNA PCs.
* ``expert_sd``: median posterior standard deviation per latent dimension of the RNA and
  ATAC experts on paired cells (how sure each expert says it is).
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
DEFAULT_RUNS = ("2000:1", "2000:2", "5000:1")


def _data(n_cells: int, seed: int, batch_effect: float = 0.5, batch_type_specific: float = 0.0):
    """The test's outcome data (the simulator's default batch effect: 0.5, the same shift
    in every cell type)."""
    import mvae_sc

    return mvae_sc.datasets.synthetic_multiome(
        n_cells,
        n_genes=600,
        n_peaks=2000,
        n_cell_types=6,
        batch_effect=batch_effect,
        batch_type_specific=batch_type_specific,
        seed=seed,
    )


def _test_protocol(split: str = "_outcome_split"):
    """A split (``"_outcome_split"``: random held-out cells; ``"_lab_split"``: one lab
    labelled, the other held out) and the RNA-PCA baseline of
    tests/test_batch_supervised.py."""
    sys.path.insert(0, str(REPO / "tests"))
    import test_batch_supervised

    return getattr(test_batch_supervised, split), test_batch_supervised._rna_pcs


def _model(mdata, max_epochs: int | None, model_kwargs: dict | None = None, **setup):
    """``max_epochs=None``: train()'s own budget and early stopping."""
    import mvae_sc

    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch", **setup)
    model = mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128, **(model_kwargs or {}))
    model.train(max_epochs=max_epochs, enable_progress_bar=False, logger=False)
    return model


def accuracy(
    n_cells: int,
    seed: int,
    max_epochs: int | None,
    *,
    hide: float = 0.0,
    copy: bool = False,
    **model_kwargs,
) -> dict:
    """The supervised model against the baselines, on a split drawn as the test's is.

    ``hide``: fraction of the training labels hidden. ``copy``: draw the split on a copy
    of the data, as the test's fixture does (MuData.copy() puts the cells in another
    order, and the split follows the order). ``model_kwargs`` go to ``MVAE``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    outcome_split, rna_pcs = _test_protocol()
    mdata = _data(n_cells, seed)
    if copy:
        mdata = mdata.copy()
    test, labelled = outcome_split(mdata, hide=hide)
    truth = mdata.obs["response"].to_numpy().astype(str)
    mdata.obs["label"] = mdata.obs["response"].astype(object).where(labelled)
    model = _model(mdata, max_epochs, model_kwargs, labels_key="label", label_type="categorical")
    head = model.predict().to_numpy().astype(str)
    z = model.get_latent_representation()
    pcs, has_rna = rna_pcs(mdata)
    on = test & has_rna

    def score(predicted: np.ndarray) -> float:
        return round(float(balanced_accuracy_score(truth[on], predicted[on])), 4)

    lr_z = LogisticRegression(max_iter=2000).fit(z[labelled], truth[labelled])
    lr_pca = LogisticRegression(max_iter=2000).fit(
        pcs[labelled & has_rna], truth[labelled & has_rna]
    )
    return {
        "head": score(head),
        "logistic_on_z": score(lr_z.predict(z)),
        "logistic_on_rna_pcs": score(lr_pca.predict(pcs)),
        "epochs": len(model.history),
        "n_test_cells_with_rna": int(on.sum()),
    }


def information(n_cells: int, seed: int, max_epochs: int | None) -> dict:
    """An unsupervised model: what each representation holds of the outcome's drivers,
    and how sure each expert claims to be, on paired cells."""
    import torch
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPRegressor

    from mvae_sc import metrics
    from mvae_sc.data.loader import device_minibatches

    _, rna_pcs = _test_protocol()
    mdata = _data(n_cells, seed)
    pcs = rna_pcs(mdata)[0]
    model = _model(mdata, max_epochs)
    paired = (mdata.obs["modality"] == "paired").to_numpy()
    z_rna = model.get_latent_representation(modality="rna")[paired]
    z_atac = model.get_latent_representation(modality="atac")[paired]
    reps = {
        "z (fused)": model.get_latent_representation()[paired],
        "z, RNA expert alone": z_rna,
        "z, ATAC expert alone": z_atac,
        "z, both experts side by side": np.hstack([z_rna, z_atac]),
        "RNA PCs": pcs[paired],
    }
    columns = list(mdata.uns["synthetic_multiome"]["true_latent_columns"])
    truth = np.asarray(mdata.obsm["true_latent"])[paired]
    targets = {
        "factor_0": truth[:, columns.index("factor_0")],
        "program_0": truth[:, columns.index("program_0")],
        "outcome": mdata.obs["outcome"].to_numpy()[paired],
    }
    folds = KFold(5, shuffle=True, random_state=0)  # the folds of metrics.linear_r2
    r2: dict[str, dict] = {}
    for name, x in reps.items():
        linear = metrics.linear_r2(x, np.column_stack(list(targets.values())))
        r2[name] = {}
        for target, y, lin in zip(targets, targets.values(), linear, strict=True):
            mlp = MLPRegressor(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=600, random_state=0)
            r2[name][target] = {
                "linear": round(float(lin), 4),
                "mlp": round(float(cross_val_score(mlp, x, y, cv=folds).mean()), 4),
            }
    sds = {name: [] for name in model.module.modality_names}
    data = model._data_for(None)[1]
    with torch.no_grad():
        for cells, batch in device_minibatches(data, model.device, 1024):
            _, logvar, _ = model.module.encode(batch)
            keep = paired[cells]
            for m, name in enumerate(model.module.modality_names):
                sds[name].append(torch.exp(0.5 * logvar[m]).cpu().numpy()[keep])
    expert_sd = {
        name: np.round(np.median(np.concatenate(v), axis=0), 3).tolist() for name, v in sds.items()
    }
    return {"r2_paired": r2, "expert_sd": expert_sd, "epochs": len(model.history)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="CELLS:SEED")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/supervised_head.json"
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="cap (smoke runs)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    results = []
    for run in args.runs:
        n_cells, seed = (int(v) for v in run.split(":"))
        start = time.perf_counter()
        row = {
            "n_cells": n_cells,
            "seed": seed,
            "accuracy": accuracy(n_cells, seed, args.max_epochs),
        }
        row.update(information(n_cells, seed, args.max_epochs))
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(row), flush=True)  # noqa: T201
        results.append(row)
    report = {
        "command": "python benchmarks/supervised_head.py --runs " + " ".join(args.runs),
        "date": time.strftime("%Y-%m-%d"),
        "torch_threads": torch.get_num_threads(),
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
