"""Lightning DDP on CPU with two processes (gloo), launched by torchrun: every training
cell is seen exactly once per epoch across the ranks, and the embedding is as good as a
single-process run's."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mvae_sc
from mvae_sc import metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="no gloo backend"),
]

WORKER = Path(__file__).with_name("ddp_worker.py")
N_CELLS, EPOCHS = 1500, 80


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", str(WORKER), str(out), str(N_CELLS), str(EPOCHS),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_cell_seen_once_per_epoch_across_ranks(ddp_run):
    records = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["writer"] for r in records] == [True, False]  # model.is_global_zero
    seen = [r["seen"] for r in records]
    order = np.random.default_rng(0).permutation(N_CELLS)  # MuDataModule's split, seed 0
    train_cells = sorted(order[: math.ceil(0.9 * N_CELLS)].tolist())
    assert len(seen[0]) == len(seen[1]) == EPOCHS
    for epoch in seen[0]:
        ranks = [seen[r][epoch] for r in range(2)]
        assert not set(ranks[0]) & set(ranks[1]), "a cell on both ranks"
        assert sorted(ranks[0] + ranks[1]) == train_cells, f"epoch {epoch}: cells lost or repeated"


def test_kl_warmup_spans_its_epochs_under_ddp(ddp_run):
    """The default warm-up (a quarter of 80 epochs) ends after epoch 20 with two ranks,
    as in one process, although each rank runs half the minibatches per epoch."""
    kl_weight = json.loads((ddp_run / "kl_weight.json").read_text())
    warmup = EPOCHS // 4
    assert kl_weight[warmup - 1] < 0.25  # the last warm-up epoch's mean weight
    assert kl_weight[warmup:] == pytest.approx([0.25] * (EPOCHS - warmup))


def test_ddp_embedding_matches_single_process_quality(ddp_run):
    mdata = mvae_sc.datasets.synthetic_multiome(
        N_CELLS, n_genes=600, n_peaks=2000, n_cell_types=6, seed=0
    )
    labels = mdata.obs["cell_type"].to_numpy()
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128, seed=0)
    # the same cells per step as 2 ranks x 64
    model.train(max_epochs=EPOCHS, batch_size=128, enable_progress_bar=False)
    z_single, z_ddp = model.get_latent_representation(), np.load(ddp_run / "z.npy")
    # Leiden's ARI jumps between runs: one process gave 0.69-0.77 over two seeds, in
    # float32 and in bf16-mixed alike; DDP 0.66 (all cells, ATAC-only included). The
    # silhouette is steadier (0.580-0.590; DDP 0.577), so it carries the comparison.
    assert metrics.leiden_ari_nmi(z_ddp, labels)["ari"] > 0.5
    single = metrics.silhouette_label(z_single, labels)
    ddp = metrics.silhouette_label(z_ddp, labels)
    assert ddp > single - 0.03, (ddp, single)
