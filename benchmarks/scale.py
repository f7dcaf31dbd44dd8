"""How training cost grows with the number of cells: time per epoch, cells per second and
peak memory, at realistic feature counts.

Usage:
    python benchmarks/scale.py [--cells 10000 30000 100000] [--genes 20000] [--peaks 50000]
                               [--epochs 2] [--backed] [--out benchmarks/results/scale.json]
                               [--tile K] [--precision 32-true] [--batch-size N]
                               [--data-on-device auto|yes|no]

Every size runs in its own child process (so its peak RSS is its own): it simulates the
synthetic mosaic multiome set, trains ``--epochs`` epochs on all cells (no validation,
batch size 128 on CPU), and reports the mean time of the epochs after the first (the
first includes warm-up), the peak resident memory, and the size of the sparse input
(CSR data + indices + indptr of both modalities) for the ratio the issue targets: peak
RSS above the RSS after imports, over sparse input + model. The data are simulated by
another process and written to an .h5mu file, so the measured process holds only what a
user's session would: the MuData read from the file (in memory, or ``--backed`` from
disk) and the training state. The training state is reported apart: the weights, their
gradients and AdamW's two moments (4 x model), plus the dense minibatch activations.
The device is the default one (a GPU when present), recorded in the output with the
GPU's peak memory.

``--tile K`` reaches atlas sizes quickly on a GPU machine: it simulates ``cells / K``
distinct cells and the measured process stacks K copies of each (new cell names, the
same sparse rows), so a minibatch costs what it would on ``cells`` distinct cells. Host
memory then includes the stacking and is not comparable with untiled rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _simulate(n_cells: int, genes: int, peaks: int, path: Path) -> None:
    """Write the synthetic set to ``path`` (run in its own process: the simulator's
    temporaries must not count in the measured peak)."""
    import mudata

    import mvae_sc

    mudata.set_options(pull_on_update=False)
    mdata = mvae_sc.datasets.synthetic_multiome(n_cells, n_genes=genes, n_peaks=peaks, seed=0)
    mdata.uns.pop("heldout", None)  # the simulator's held-out truth: not part of a user's data
    mdata.write(path)


def _tiled(mdata, k: int):
    """``k`` copies of every cell: each modality's CSR rows stacked ``k`` times."""
    import anndata as ad
    import mudata
    import scipy.sparse as sp

    mods = {}
    for name, adata in mdata.mod.items():
        x = adata.X
        nnz, n = x.nnz, x.shape[0]
        indptr = np.concatenate([[0]] + [x.indptr[1:].astype(np.int64) + i * nnz for i in range(k)])
        tiled = sp.csr_matrix((np.tile(x.data, k), np.tile(x.indices, k), indptr),
                              shape=(n * k, x.shape[1]))  # fmt: skip
        names = [f"{c}-{i}" for i in range(k) for c in adata.obs_names]
        mods[name] = ad.AnnData(tiled, obs=pd.DataFrame(index=names), var=adata.var)
    out = mudata.MuData(mods)
    batch = mdata.obs["batch"].astype(str)
    out.obs["batch"] = [batch[name.rsplit("-", 1)[0]] for name in out.obs_names]
    return out


def _child(path: Path, args: argparse.Namespace) -> dict:
    import h5py
    import lightning.pytorch as pl
    import mudata
    import torch

    epochs, backed, tile = args.epochs, args.backed, args.tile

    import mvae_sc

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mudata.set_options(pull_on_update=False)
    with h5py.File(path, "r") as f:
        input_bytes = sum(
            f[f"mod/{m}/X/{part}"].size * f[f"mod/{m}/X/{part}"].dtype.itemsize
            for m in ("rna", "atac")
            for part in ("data", "indices", "indptr")
        )
    mdata = mudata.read_h5mu(path, backed=backed)
    if tile > 1:
        mdata = _tiled(mdata, tile)
        input_bytes *= tile
    n_cells, genes, peaks = mdata.n_obs, mdata.mod["rna"].n_vars, mdata.mod["atac"].n_vars
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata)
    n_params = sum(p.numel() for p in model.module.parameters())

    class EpochTimes(pl.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimes()
    model.train(
        max_epochs=epochs,
        train_size=1.0,
        batch_size=args.batch_size,
        data_on_device={"auto": None, "yes": True, "no": False}[args.data_on_device],
        precision=args.precision,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    gpu = model.device.type == "cuda"
    per_epoch = float(np.mean(timer.times[1:] if len(timer.times) > 1 else timer.times))
    return {
        "n_cells": n_cells,
        "n_genes": genes,
        "n_peaks": peaks,
        "backed": backed,
        "epoch_seconds": [round(t, 2) for t in timer.times],
        "seconds_per_epoch": round(per_epoch, 2),
        "cells_per_second": round(n_cells / per_epoch, 1),
        "sparse_input_mb": round(input_bytes / 2**20, 1),
        "model_mb": round(n_params * 4 / 2**20, 1),
        "rss_mb_after_imports": round(rss_imports, 1),
        "peak_rss_mb_after_reading_data": round(rss_data, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": torch.cuda.get_device_name(model.device) if gpu else "cpu",
        "gpu_peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None,
        "data_on_device": args.data_on_device,
        "tile": tile,
        "batch_size": args.batch_size or mvae_sc.model.default_batch_size(n_cells, gpu=gpu),
        "precision": args.precision,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--peaks", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backed", action="store_true")
    parser.add_argument("--tile", type=int, default=1, help="stack K copies of cells/K cells")
    parser.add_argument("--precision", default="32-true", help="Lightning precision")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train's")
    parser.add_argument("--data-on-device", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the simulated .h5mu files go (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--simulate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate is not None:
        _simulate(args.cells[0] // args.tile, args.genes, args.peaks, args.simulate)
        return
    if args.child is not None:
        result = _child(args.child, args)
        print("RESULT " + json.dumps(result))  # noqa: T201 - read by the parent
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = _run_sizes(args, args.data_dir or Path(tmp))
    report = {
        "command": " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


def _run_sizes(args: argparse.Namespace, data_dir: Path) -> list[dict]:
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_cells in args.cells:
        path = data_dir / f"synthetic_{n_cells // args.tile}x{args.genes}x{args.peaks}.h5mu"
        if not path.exists():  # simulated once, reused by later runs with --data-dir
            subprocess.run(
                [sys.executable, __file__, "--simulate", str(path), "--cells", str(n_cells),
                 "--genes", str(args.genes), "--peaks", str(args.peaks),
                 "--tile", str(args.tile)],
                check=True,
            )  # fmt: skip
        command = [
            sys.executable, __file__, "--child", str(path), "--epochs", str(args.epochs),
            "--tile", str(args.tile), "--precision", args.precision,
            "--data-on-device", args.data_on_device,
        ] + (["--backed"] if args.backed else []) + (
            ["--batch-size", str(args.batch_size)] if args.batch_size else []
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{n_cells} cells failed:\n{done.stderr[-2000:]}")  # noqa: T201
            break
        row = json.loads(lines[-1][len("RESULT ") :])
        # the target: peak memory (above the interpreter and libraries) over the
        # sparse input plus the model
        above_imports = row["peak_rss_mb"] - row["rss_mb_after_imports"]
        row["rss_above_imports_over_input_plus_model"] = round(
            above_imports / (row["sparse_input_mb"] + row["model_mb"]), 2
        )
        # what training adds on top of the data a user's session already holds: the
        # weights, gradients, two AdamW moments and the minibatch activations
        row["training_state_mb"] = round(
            row["peak_rss_mb"] - row["peak_rss_mb_after_reading_data"], 1
        )
        row["rss_above_imports_over_input_plus_training_state"] = round(
            above_imports / (row["sparse_input_mb"] + row["training_state_mb"]), 2
        )
        rows.append(row)
        print(json.dumps(row))  # noqa: T201 - progress
    return rows


if __name__ == "__main__":
    main()
