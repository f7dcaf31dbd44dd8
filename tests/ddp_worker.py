"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node=2``: trains a small model
with Lightning's DDP strategy on CPU (gloo) and records which cells each rank saw in
each epoch (``rank<r>.json``) and, on rank 0, the latent representation (``z.npy``) and
the KL weight of each epoch (``kl_weight.json``)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import mudata
import numpy as np

import mvae_sc

warnings.simplefilter("ignore")
mudata.set_options(pull_on_update=False)


class SeenCells(pl.Callback):
    def __init__(self):
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.setdefault(trainer.current_epoch, []).extend(batch["cells"].tolist())


def main(out: Path, n_cells: int, max_epochs: int) -> None:
    mdata = mvae_sc.datasets.synthetic_multiome(
        n_cells, n_genes=600, n_peaks=2000, n_cell_types=6, seed=0
    )
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128, seed=0)
    seen = SeenCells()
    model.train(
        max_epochs=max_epochs,
        batch_size=64,
        enable_progress_bar=False,
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        callbacks=[seen],
    )
    rank = int(os.environ["RANK"])
    record = {"seen": {str(k): v for k, v in seen.seen.items()}, "writer": model.is_global_zero}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if model.is_global_zero:
        np.save(out / "z.npy", model.get_latent_representation())
        (out / "kl_weight.json").write_text(json.dumps(model.history["kl_weight"].tolist()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
