"""Quality along one mvae_sc training run: what the epochs after the KL warm-up buy.

Usage::

    python benchmarks/quality_along_training.py --dataset wide3k.h5mu --epochs 130
    python benchmarks/quality_along_training.py --n-cells 5000 --epochs 100 --every 5

Trains mvae_sc as ``compare_multivi.py`` does (same data preparation, latent 20, hidden
256, the defaults otherwise: ``train``'s own epoch budget, from which it sets the KL
warm-up) and stops it after ``--epochs`` epochs instead of early stopping, keeps the
weights every ``--every`` epochs from ``--start`` on, and scores each of these snapshots
with ``compare_multivi.compute_metrics`` (``--lr``, ``--kl-warmup``, ``--batch-size``:
another learning rate, number of KL warm-up epochs or minibatch size than
``MVAE.train``'s). The report also gives the epoch at which the default early stopping
(``MVAE.train``'s patience, 20, on the validation loss) would have stopped, and the
best epoch it would have restored. Early stopping only ends a run, so one long run
gives the snapshots of every shorter one.

Output: ``benchmarks/results/quality_along_training_<dataset>_n<cells>.json`` (or
``--out``) and a markdown table on stdout. One compute thread, as for the comparison::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/quality_along_training.py ...
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import compare_multivi as cm  # noqa: E402

SHOWN = (
    ("ari", "ARI"),
    ("silhouette_label", "silhouette"),
    ("ilisi", "iLISI"),
    ("batch_predictability", "batch pred."),
    ("modality_entropy", "modality mixing"),
    ("foscttm_paired", "FOSCTTM"),
    ("atac_auroc_rna_only", "ATAC AUROC"),
    ("rna_pearson_cell_atac_only", "RNA Pearson/cell"),
    ("within_type_factor_r2", "within-type R²"),
)


def train_default(name: str):
    """``MVAE.train``'s own default of one argument (the early-stopping patience, the
    learning rate), so the run and its summary follow the library."""
    import mvae_sc

    return inspect.signature(mvae_sc.MVAE.train).parameters[name].default


def early_stop(curve: list[float], patience: int) -> tuple[int, int]:
    """(epoch at which Lightning's EarlyStopping with this patience and min_delta 0
    stops, best epoch), 1-based, for a validation-loss curve."""
    best, best_epoch, wait = float("inf"), 0, 0
    for epoch, value in enumerate(curve, start=1):
        if value < best:
            best, best_epoch, wait = value, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch, best_epoch
    return len(curve), best_epoch


def markdown(rows: dict[int, dict], curve: list[float]) -> str:
    head = "| epoch | validation loss | " + " | ".join(label for _, label in SHOWN) + " |"
    lines = [head, "|" + " ---: |" * (len(SHOWN) + 2)]
    for epoch, metrics in sorted(rows.items()):
        values = [metrics.get(key) for key, _ in SHOWN]
        cells = ["n/a" if v is None else f"{v:.4g}" for v in values]
        lines.append(f"| {epoch} | {curve[epoch - 1]:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", help="as in compare_multivi.py")
    parser.add_argument("--n-cells", type=int, default=5000, help="as in compare_multivi.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and model")
    parser.add_argument("--epochs", type=int, default=130, help="epochs to train (130)")
    parser.add_argument("--every", type=int, default=10, help="epochs between snapshots")
    parser.add_argument("--start", type=int, default=40, help="first snapshot epoch")
    parser.add_argument("--lr", type=float, default=None, help="default: MVAE.train's")
    parser.add_argument(
        "--kl-warmup", type=int, default=None, help="KL warm-up epochs; default: MVAE.train's"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="cells per minibatch; default: MVAE.train's"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.every < 1 or not 1 <= args.start <= args.epochs:
        parser.error("need 1 <= --every and 1 <= --start <= --epochs")
    data_args = cm.parse_args(
        ["--dataset", args.dataset, "--n-cells", str(args.n_cells), "--seed", str(args.seed)]
    )
    warnings.filterwarnings("ignore", category=FutureWarning)
    import lightning.pytorch as pl

    import mvae_sc

    mdata = cm.load_dataset(data_args)
    batch_key = cm.BATCH if mdata.obs[cm.BATCH].nunique() > 1 else None
    mvae_sc.MVAE.setup_mudata(mdata, batch_key=batch_key)
    model = mvae_sc.MVAE(mdata, n_latent=cm.N_LATENT, n_hidden=cm.N_HIDDEN, seed=args.seed)
    snapshots: dict[int, dict] = {}
    optimiser: dict[str, float] = {}
    warmup: dict[str, int] = {}  # the KL warm-up as the training plan ran it
    budget: dict[str, int] = {}  # train()'s epoch budget and minibatch size

    class Snapshot(pl.Callback):
        def on_train_start(self, trainer, plan):
            group = trainer.optimizers[0].param_groups[0]  # the model's (not the adversary's)
            optimiser.update(lr=group["lr"], eps=group["eps"])
            budget.update(max_epochs=trainer.max_epochs, batch_size=trainer.datamodule.batch_size)
            warmup.update(
                steps=plan.n_steps_kl_warmup, steps_per_epoch=trainer.num_training_batches
            )

        def on_train_epoch_end(self, trainer, plan):
            epoch = trainer.current_epoch + 1
            if epoch >= args.start and (epoch - args.start) % args.every == 0:
                snapshots[epoch] = copy.deepcopy(model.module.state_dict())
            # train()'s own budget sets the warm-up as in the comparison; stop here instead
            trainer.should_stop = trainer.should_stop or epoch >= args.epochs

        def on_validation_epoch_end(self, trainer, plan):
            loss = trainer.callback_metrics.get("validation_loss")
            if loss is not None and not trainer.sanity_checking:
                line = f"epoch {trainer.current_epoch + 1}: validation loss {float(loss):.1f}"
                print(line, flush=True)  # noqa: T201

    start = time.perf_counter()
    model.train(
        batch_size=args.batch_size,
        lr=train_default("lr") if args.lr is None else args.lr,
        early_stopping=False,
        n_epochs_kl_warmup=args.kl_warmup,
        seed=args.seed,
        enable_progress_bar=False,
        callbacks=[Snapshot()],
    )
    train_seconds = time.perf_counter() - start
    curve = [float(v) for v in model.history["validation_loss"]]
    rows = {}
    for epoch, state in sorted(snapshots.items()):
        model.module.load_state_dict(state)
        metrics = cm.compute_metrics(mdata, cm.mvae_sc_arrays(model, mdata), args.seed)
        rows[epoch] = cm._round(metrics)
        print(f"[quality_along_training] epoch {epoch}: {rows[epoch]}", flush=True)  # noqa: T201
    patience = train_default("early_stopping_patience")
    stop, best = early_stop(curve, patience)
    report = {
        "command": "python benchmarks/quality_along_training.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "data": mdata.uns[cm.READ_INFO] if cm.READ_INFO in mdata.uns else args.dataset,
        "n_cells": int(mdata.n_obs),
        "machine": cm.machine_info(),
        "git": cm.git_state(),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(train_seconds / len(curve), 2),
        "optimiser": optimiser,
        "kl_warmup": warmup,
        "train_budget": budget,
        "default_early_stopping": {
            "patience": patience,
            "stops_at_epoch": stop,
            "best_epoch": best,
        },
        "reference": {"silhouette_label_true_latent": cm.true_latent_silhouette(mdata, args.seed)},
        "validation_curve": [round(v, 2) for v in curve],
        "snapshots": {str(k): v for k, v in rows.items()},
    }
    out = args.out or (
        cm.DEFAULT_OUT / f"quality_along_training_{cm.dataset_name(data_args)}_n{mdata.n_obs}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cm._round(report), indent=1) + "\n")
    print(markdown(rows, curve))  # noqa: T201
    print(f"default early stopping: stops at {stop}, best epoch {best}; wrote {out}")  # noqa: T201


if __name__ == "__main__":
    main()
