"""Minibatches from a registered MuData: sparse rows gathered per batch, presence masks.

Matrices stay as the user has them (CSR is used as is; no dense copy of the whole data):
each minibatch gathers its rows with vectorised CSR indexing and densifies only those.
A backed MuData (``mudata.read_h5mu(path, backed=True)``) stays on disk: minibatches read
their rows from the file, and whole-matrix passes (validation, depths) read blocks of
``registry.BACKED_CHUNK`` rows, so memory is bounded by the chunk and minibatch sizes,
not by the number of cells.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from mudata import MuData

from .registry import Registry, get_values, is_backed, row_blocks


def _as_row_indexable(matrix):
    """CSR for sparse input (CSC/COO are converted once), ndarray for dense input; a
    backed matrix stays on disk and is read a minibatch of rows at a time."""
    if is_backed(matrix):
        return matrix
    if sp.issparse(matrix):
        return (
            matrix
            if sp.isspmatrix_csr(matrix) or isinstance(matrix, sp.csr_array)
            else sp.csr_matrix(matrix)
        )
    return np.asarray(matrix)


def _row_totals(matrix, *, binary: bool) -> np.ndarray:
    if is_backed(matrix):
        return np.concatenate([_row_totals(b, binary=binary) for b in row_blocks(matrix)])
    if sp.issparse(matrix):
        if binary:
            return np.diff(matrix.indptr).astype(np.float32)
        return np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel().astype(np.float32)
    return ((matrix > 0) if binary else matrix).sum(axis=1).astype(np.float32)


class CellData:
    """A registered MuData seen as cells × modalities, ready to be cut into minibatches.

    Parameters
    ----------
    mdata
        A MuData registered with ``MVAE.setup_mudata``.
    registry
        How to read it.
    feature_index
        Optional ``{modality: positions}``: the columns of the MuData to use, in the
        model's feature order (used when a loaded model meets reordered features).
    """

    def __init__(
        self,
        mdata: MuData,
        registry: Registry,
        *,
        feature_index: dict[str, np.ndarray] | None = None,
    ):
        self.registry = registry
        self.n_cells = mdata.n_obs
        self.obs_names = mdata.obs_names
        self.matrices: dict[str, object] = {}
        self.rows: dict[str, np.ndarray] = {}
        self.library: dict[str, np.ndarray] = {}
        self.feature_index = feature_index or {}
        for name, spec in registry.modalities.items():
            matrix = _as_row_indexable(get_values(mdata, name, spec.layer))
            self.matrices[name] = matrix
            self.rows[name] = np.asarray(mdata.obsmap[name], dtype=np.int64) - 1  # -1 = absent
            totals = _row_totals(matrix, binary=spec.likelihood == "bernoulli")
            library = np.zeros(self.n_cells, dtype=np.float32)
            present = self.rows[name] >= 0
            library[present] = totals[self.rows[name][present]]
            self.library[name] = library
        self.batch_index = np.zeros(self.n_cells, dtype=np.int64)
        parts = []  # covariate blocks: one-hot batch, one-hot categories, continuous
        if registry.batch_key is not None:
            self.batch_index = _codes(mdata, registry.batch_key, registry.batch_categories)
            parts.append(_one_hot(self.batch_index, registry.n_batches))
        for key, categories in registry.covariate_categories.items():
            parts.append(_one_hot(_codes(mdata, key, categories), len(categories)))
        for key in registry.continuous_covariate_keys:
            mean, sd = registry.covariate_moments[key]
            values = mdata.obs[key].to_numpy(dtype=np.float64)
            parts.append(((values - mean) / sd).astype(np.float32)[:, None])
        self.covariates = np.hstack(parts) if parts else None
        self.labels, self.labelled = _labels(mdata, registry, self.n_cells)

    def presence(self, name: str) -> np.ndarray:
        """Boolean per cell: does the cell have modality ``name``."""
        return self.rows[name] >= 0

    def n_features(self, name: str) -> int:
        if name in self.feature_index:
            return len(self.feature_index[name])
        return self.matrices[name].shape[1]

    def dense_rows(self, name: str, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense float32 values of modality ``name`` for ``cells`` (zeros where absent).

        Returns
        -------
        ``(values, present)``: ``(len(cells), n_features)`` and the boolean mask.
        """
        rows = self.rows[name][cells]
        present = rows >= 0
        out = np.zeros((len(cells), self.n_features(name)), dtype=np.float32)
        if present.any():
            block = _take_rows(self.matrices[name], rows[present])
            if name in self.feature_index:
                block = block[:, self.feature_index[name]]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
            if self.registry.modalities[name].likelihood == "bernoulli":
                block = block > 0
            out[present] = block
        return out, present

    def minibatch(self, cells: np.ndarray) -> dict:
        """The tensors of one minibatch (see :mod:`mvae_sc.nn.module` for the layout)."""
        cells = np.asarray(cells, dtype=np.int64)
        batch: dict = {"x": {}, "mask": {}, "library": {}, "cells": torch.from_numpy(cells)}
        for name in self.registry.modalities:
            values, present = self.dense_rows(name, cells)
            batch["x"][name] = torch.from_numpy(values)
            batch["mask"][name] = torch.from_numpy(present)
            batch["library"][name] = torch.from_numpy(self.library[name][cells]).unsqueeze(-1)
        if self.covariates is not None:
            batch["covariates"] = torch.from_numpy(self.covariates[cells])
        if self.registry.n_batches:
            batch["batch_index"] = torch.from_numpy(self.batch_index[cells])
        if self.labels is not None:
            batch["label"] = torch.from_numpy(self.labels[cells])
            batch["labelled"] = torch.from_numpy(self.labelled[cells])
        return batch


def _take_rows(matrix, rows: np.ndarray):
    """``matrix[rows]``; a backed h5py dataset is read in increasing row order (which
    h5py requires) and put back in the order asked for."""
    if isinstance(matrix, h5py.Dataset):
        unique, inverse = np.unique(rows, return_inverse=True)
        return matrix[unique][inverse]
    return matrix[rows]


def _one_hot(codes: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(codes), n), dtype=np.float32)
    out[np.arange(len(codes)), codes] = 1.0
    return out


def _codes(mdata: MuData, key: str, categories: list[str]) -> np.ndarray:
    """Integer codes of an obs column in the registered categories; clear error for a
    category the model has not seen."""
    column = mdata.obs[key].astype(str)
    codes = pd.Categorical(column, categories=categories).codes
    if (codes < 0).any():
        unseen = sorted(set(column) - set(categories))
        raise ValueError(
            f"obs column {key!r} has categories the model was not trained on: {unseen[:5]}. "
            f"Known categories: {categories}. Map them to known ones or train a new model."
        )
    return codes.astype(np.int64)


def _labels(
    mdata: MuData, registry: Registry, n_cells: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Targets of the supervised head and the mask of labelled cells.

    Categorical: class codes (0 where unlabelled); continuous: standardised values (0
    where unlabelled). Missing values, unknown classes and an absent column (e.g. new
    data at prediction time) all mean "unlabelled"."""
    key = registry.labels_key
    if key is None:
        return None, None
    if key not in mdata.obs:
        return np.zeros(n_cells, dtype=np.float32), np.zeros(n_cells, dtype=bool)
    column = mdata.obs[key]
    if registry.label_type == "categorical":
        codes = pd.Categorical(
            column.astype(str).where(column.notna()), categories=registry.label_categories
        ).codes
        labelled = codes >= 0
        return np.where(labelled, codes, 0).astype(np.float32), labelled
    mean, sd = registry.label_moments
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    labelled = np.isfinite(values)
    return np.where(labelled, (values - mean) / sd, 0.0).astype(np.float32), labelled


class MinibatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole minibatches: ``ds[list_of_cells]``.

    Used with ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)`` so rows are
    gathered once per minibatch in vectorised form.
    """

    def __init__(self, data: CellData, cells: np.ndarray):
        self.data = data
        self.cells = np.asarray(cells, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, positions: Sequence[int]) -> dict:
        return self.data.minibatch(self.cells[np.asarray(positions, dtype=np.int64)])


class ShuffledBatches(torch.utils.data.Sampler):
    """Minibatches of positions ``0..n-1`` in a new random order every epoch, sharded
    across distributed ranks.

    The order depends only on ``(seed, epoch)``; Lightning calls :meth:`set_epoch` at
    the start of every epoch, so a run resumed from a checkpoint sees the same
    minibatches as an uninterrupted one. Under ``torch.distributed`` (DDP) every rank
    takes a disjoint, contiguous share of the epoch's order (shares differ by at most
    one cell) and cuts it into the same number of minibatches, so the ranks step
    together and every cell is seen exactly once per epoch: none duplicated, none lost.

    Parameters
    ----------
    n
        Number of positions.
    batch_size
        Cells per minibatch on each rank (the last ones may be one cell smaller).
    seed
        Seed of the order.
    drop_last
        Drop a last, incomplete minibatch (single-process only).
    rank, world_size
        The shard to serve; default: from ``torch.distributed`` when initialised, else
        ``0`` and ``1``.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank or 0, self.world_size
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._shard()
        if world == 1 and self.drop_last:
            return self.n // self.batch_size
        largest_share = -(-self.n // world)
        return max(1, -(-largest_share // self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        rank, world = self._shard()
        if world == 1 and self.drop_last:
            order = order[: len(self) * self.batch_size]
        share = np.array_split(order, world)[rank]
        for batch in np.array_split(share, len(self)):
            if len(batch):
                yield batch.tolist()


def minibatch_loader(
    data: CellData,
    cells: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of minibatch dicts over ``cells`` (indices into ``data``)."""
    dataset = MinibatchDataset(data, cells)
    if shuffle:
        sampler = ShuffledBatches(len(dataset), batch_size, seed=seed, drop_last=drop_last)
    else:
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last
        )
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)


def iterate_chunks(n: int, chunk_size: int) -> Iterator[np.ndarray]:
    """Consecutive index blocks ``[0, chunk_size), [chunk_size, 2*chunk_size), ...``."""
    for start in range(0, n, chunk_size):
        yield np.arange(start, min(start + chunk_size, n))
