"""Minibatches: sparse rows gathered as CSR parts and made dense on the device, from
memory, from disk (backed) and from a copy of the data on a device (``CellData.to``),
all equal to indexing the user's matrices directly."""

from __future__ import annotations

import anndata as ad
import mudata
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import mvae_sc
from mvae_sc.data.loader import CellData, densify_batch
from mvae_sc.model import default_batch_size


def _mosaic(seed: int = 0) -> mudata.MuData:
    """RNA counts (CSR), ATAC (CSR with explicit zeros and counts > 1) and a dense
    Gaussian table, each measured in a different subset of the cells."""
    rng = np.random.default_rng(seed)
    n = 60
    names = np.array([f"c{i}" for i in range(n)])
    rna = sp.random(50, 30, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    rna.data = rng.integers(1, 20, rna.nnz).astype(np.float32)
    atac = sp.random(45, 80, density=0.1, format="csr", random_state=seed + 1)
    atac.data = rng.integers(0, 3, atac.nnz).astype(np.float64)  # zeros stored explicitly
    table = rng.normal(size=(40, 7)).astype(np.float32)
    mods = {
        "rna": ad.AnnData(rna, obs={"o": np.zeros(50)}, var={"v": np.zeros(30)}),
        "atac": ad.AnnData(atac, obs={"o": np.zeros(45)}, var={"v": np.zeros(80)}),
        "prot": ad.AnnData(table, obs={"o": np.zeros(40)}, var={"v": np.zeros(7)}),
    }
    for mod, adata in mods.items():
        # 50 cells with RNA, 45 with ATAC (10 of them ATAC-only), 40 with the table
        chosen = {
            "rna": names[:50],
            "atac": np.r_[names[50:], rng.choice(names[:50], 35, replace=False)],
            "prot": rng.choice(names, 40, replace=False),
        }[mod]
        adata.obs_names = rng.permutation(chosen)
        adata.var_names = [f"{mod}{j}" for j in range(adata.n_vars)]
    mdata = mudata.MuData(mods)
    assert mdata.n_obs == n  # every cell has some modality
    mvae_sc.MVAE.setup_mudata(
        mdata, modalities={"rna": "nb", "atac": "bernoulli", "prot": "gaussian"}
    )
    return mdata


def _expected(mdata: mudata.MuData, name: str, cells: np.ndarray) -> np.ndarray:
    """Values of ``cells`` read straight from the user's matrix (zeros where absent)."""
    adata = mdata.mod[name]
    out = np.zeros((len(cells), adata.n_vars), dtype=np.float32)
    rows = np.asarray(mdata.obsmap[name], dtype=np.int64)[cells] - 1
    x = adata.X[rows[rows >= 0]]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    out[rows >= 0] = (x > 0) if name == "atac" else x
    return out


def _check(batch: dict, mdata: mudata.MuData, cells: np.ndarray) -> None:
    batch = densify_batch(batch)
    for name in mdata.mod:
        np.testing.assert_array_equal(batch["x"][name].cpu().numpy(), _expected(mdata, name, cells))
        np.testing.assert_array_equal(
            batch["mask"][name].cpu().numpy(), np.asarray(mdata.obsmap[name])[cells] > 0
        )
    np.testing.assert_array_equal(batch["cells"].cpu().numpy(), cells)


def test_minibatches_equal_the_users_rows():
    """In-memory CSR and dense matrices, absent cells, repeated cells and any order."""
    mdata = _mosaic()
    data = CellData(mdata, mvae_sc.MVAE(mdata).registry)
    cells = np.array([5, 0, 59, 5, 17, 33, 2])
    batch = data.minibatch(cells)
    # sparse modalities travel as their non-zero values only
    assert isinstance(batch["x"]["rna"], dict) and isinstance(batch["x"]["prot"], torch.Tensor)
    assert batch["x"]["atac"]["values"].dtype == torch.bool
    _check(batch, mdata, cells)


def test_minibatches_from_a_device_copy_equal_those_from_the_host():
    """``CellData.to`` (what ``data_on_device`` does on a GPU; here onto the CPU, the same
    conversion: int32 column indices, Bernoulli values as bytes, tensors per cell)."""
    mdata = _mosaic(1)
    data = CellData(mdata, mvae_sc.MVAE(mdata).registry)
    moved = data.to("cpu")
    assert moved.sources["rna"].indices.dtype == torch.int32
    assert moved.sources["atac"].values.dtype == torch.bool
    # explicit zeros in the ATAC matrix become False, not "accessible"
    assert moved.sources["atac"].values.sum() < len(moved.sources["atac"].values)
    assert moved.device_nbytes() == data.device_nbytes()
    for cells in (np.arange(60), np.array([59, 3, 3, 41])):
        _check(moved.minibatch(cells), mdata, cells)


def test_minibatches_from_a_backed_mudata_equal_in_memory(tmp_path):
    mdata = _mosaic(2)
    mdata.write(tmp_path / "m.h5mu")
    backed = mudata.read_h5mu(tmp_path / "m.h5mu", backed=True)
    data = CellData(backed, mvae_sc.MVAE(mdata).registry)
    assert data.is_backed
    cells = np.array([7, 1, 44, 7, 20])
    _check(data.minibatch(cells), mdata, cells)
    with pytest.raises(ValueError, match="backed"):
        data.to("cpu")


def test_reordered_features_are_mapped_to_the_models():
    """A model meeting its features in another order reads them in its own order."""
    mdata = _mosaic(3)
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16)
    rng = np.random.default_rng(0)
    shuffled = mudata.MuData(
        {n: a[:, rng.permutation(a.n_vars)].copy() for n, a in mdata.mod.items()}
    )
    data = model._cell_data(shuffled)
    assert set(data.sources) == {"rna", "atac", "prot"}
    cells = np.array([0, 9, 59, 31])
    _check(data.minibatch(cells), mdata, cells)


def test_default_batch_size_is_large_on_a_gpu_only_with_enough_steps():
    assert default_batch_size(1_000_000, gpu=False) == 128
    assert default_batch_size(1_000_000, gpu=True) == 1024
    assert default_batch_size(5_000, gpu=True) == 128  # keeps >= 100 steps per epoch
    assert default_batch_size(30_000, gpu=True) == 256
    assert default_batch_size(60_000, gpu=True) == 512
    for n in (1_000, 30_000, 120_000, 10**7):
        size = default_batch_size(n, gpu=True)
        assert size == 128 or n // size >= 100


def test_data_on_device_refuses_a_backed_mudata_before_training(tmp_path):
    mdata = _mosaic(4)
    mdata.write(tmp_path / "m.h5mu")
    backed = mudata.read_h5mu(tmp_path / "m.h5mu", backed=True)
    model = mvae_sc.MVAE(backed, n_latent=4, n_hidden=16)
    with pytest.raises(ValueError, match="data_on_device=True needs the data in memory"):
        model.train(max_epochs=1, data_on_device=True, enable_progress_bar=False)
    assert not model.is_trained
