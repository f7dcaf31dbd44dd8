"""Shared fixtures: small synthetic mosaic data and one trained model per test process
(pytest-xdist worker)."""

from __future__ import annotations

import os
from pathlib import Path

import mudata
import pytest
import torch

# Adopt mudata's coming default (0.4) so its FutureWarning does not fire in every test.
mudata.set_options(pull_on_update=False)

# The test processes share the machine's cores, unless OMP_NUM_THREADS says otherwise
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (_cores or 1) // _WORKERS))

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def small_mosaic():
    """A small mosaic multiome set (paired, RNA-only and ATAC-only cells, 2 batches)."""
    import mvae_sc

    return mvae_sc.datasets.synthetic_multiome(
        1500,
        n_genes=600,
        n_peaks=2000,
        n_cell_types=6,
        frac_rna_only=0.2,
        frac_atac_only=0.2,
        n_batches=2,
        seed=0,
    )


@pytest.fixture(scope="session")
def trained_mosaic(small_mosaic):
    """(mdata, model) after a short CPU training run on ``small_mosaic``."""
    import mvae_sc

    mdata = small_mosaic.copy()
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128)
    model.train(max_epochs=80, batch_size=128, enable_progress_bar=False, seed=0)
    return mdata, model
