"""Minibatches from a registered MuData: sparse rows gathered per batch, presence masks.

Matrices stay as the user has them (CSR is used as is; no dense copy of the whole data):
each minibatch gathers its rows with vectorised CSR indexing (:func:`gather_csr_rows`),
travels as those non-zero values and is made dense only on the device that trains
(:func:`densify_batch`). On a GPU the whole sparse data set can instead be copied to
the device once (:meth:`CellData.to`), and minibatches are then gathered there.
A backed MuData (``mudata.read_h5mu(path, backed=True)``) stays on disk: minibatches read
their rows from the file, and whole-matrix passes (validation, depths) read blocks of
``registry.BACKED_CHUNK`` rows, so memory is bounded by the chunk and minibatch sizes,
not by the number of cells.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
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


def _tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` (no copy) where torch has the dtype, else a float32 copy."""
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError:
        return torch.from_numpy(np.asarray(array, dtype=np.float32))


def gather_csr_rows(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    *,
    column_map: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of a CSR matrix as a smaller CSR matrix, without a Python loop.

    Works on whichever device the tensors are on (a GPU for a resident dataset). A row
    position of ``-1`` gives an empty row (a cell that lacks the modality).
    ``column_map`` (data column -> model column) renumbers the columns when a model
    meets its features in another order.

    Returns
    -------
    ``{"indptr", "indices", "values"}`` of the gathered rows (see :func:`densify`).
    """
    present = rows >= 0
    safe = rows.clamp(min=0)
    starts = indptr[safe].long()
    counts = torch.where(present, indptr[safe + 1].long() - starts, 0)
    out_indptr = torch.zeros(len(rows) + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=out_indptr[1:])
    total = int(out_indptr[-1])
    source = torch.repeat_interleave(starts - out_indptr[:-1], counts, output_size=total)
    source += torch.arange(total, device=rows.device)
    columns = indices[source]
    if column_map is not None:
        columns = column_map[columns.long()]
    return {"indptr": out_indptr, "indices": columns, "values": values[source]}


def densify(part: dict[str, torch.Tensor], n_features: int) -> torch.Tensor:
    """The dense float32 ``(cells, n_features)`` matrix of a gathered CSR minibatch
    (:func:`gather_csr_rows`), built on the device its tensors are on."""
    indptr, columns = part["indptr"], part["indices"]
    n_cells = len(indptr) - 1
    row_of = torch.repeat_interleave(
        torch.arange(n_cells, device=indptr.device), indptr.diff(), output_size=len(columns)
    )
    out = torch.zeros(n_cells, n_features, dtype=torch.float32, device=indptr.device)
    out.view(-1)[row_of * n_features + columns.long()] = part["values"].to(torch.float32)
    return out


def densify_batch(batch: dict) -> dict:
    """The minibatch with every sparse modality (a gathered CSR part) made dense; done on
    the training device, so only the non-zero values travel to it."""
    x = batch["x"]
    if any(isinstance(v, dict) for v in x.values()):
        batch = dict(batch)
        batch["x"] = {
            name: densify(v, int(v["n_features"])) if isinstance(v, dict) else v
            for name, v in x.items()
        }
    return batch


class _SparseSource:
    """One modality's CSR matrix as torch tensors (shared with scipy's arrays on the
    CPU; moved whole to a GPU by :meth:`to`)."""

    def __init__(self, indptr, indices, values, n_features, *, binary, column_map=None):
        self.indptr, self.indices, self.values = indptr, indices, values
        self.n_features, self.binary, self.column_map = n_features, binary, column_map

    @classmethod
    def from_scipy(cls, matrix, n_features, *, binary, column_map=None) -> _SparseSource:
        return cls(
            _tensor(matrix.indptr),
            _tensor(matrix.indices),
            _tensor(matrix.data),
            n_features,
            binary=binary,
            column_map=column_map,
        )

    def take(self, rows: torch.Tensor) -> dict:
        part = gather_csr_rows(
            self.indptr, self.indices, self.values, rows, column_map=self.column_map
        )
        # Bernoulli data are "accessible or not": one byte per value on the way
        values = part["values"]
        part["values"] = values > 0 if self.binary else values.to(torch.float32)
        part["n_features"] = self.n_features
        return part

    @property
    def _device_index_dtype(self) -> torch.dtype:
        """Column indices on a device: int32 where they fit (always, for minibatches)."""
        small = self.n_features < 2**31 and len(self.indices) < 2**31
        return torch.int32 if small else torch.int64

    def to(self, device: torch.device) -> _SparseSource:
        return _SparseSource(
            self.indptr.to(device, torch.int64),
            self.indices.to(device, self._device_index_dtype),
            (self.values > 0 if self.binary else self.values.to(torch.float32)).to(device),
            self.n_features,
            binary=self.binary,
            column_map=None if self.column_map is None else self.column_map.to(device),
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix on a device (see :meth:`to`)."""
        index_bytes = self._device_index_dtype.itemsize
        return len(self.indptr) * 8 + len(self.indices) * (index_bytes + (1 if self.binary else 4))


class _DenseSource:
    """One modality's dense matrix as a float32 tensor."""

    def __init__(self, matrix: torch.Tensor, *, binary: bool, columns=None):
        self.matrix, self.binary, self.columns = matrix, binary, columns
        self.n_features = matrix.shape[1] if columns is None else len(columns)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        present = rows >= 0
        block = self.matrix[rows.clamp(min=0)]
        if self.columns is not None:
            block = block[:, self.columns]
        block = ((block > 0) if self.binary else block).to(torch.float32)
        return torch.where(present.unsqueeze(-1), block, 0.0)

    def to(self, device: torch.device) -> _DenseSource:
        matrix = self.matrix if self.columns is None else self.matrix[:, self.columns]
        return _DenseSource(matrix.to(device, torch.float32), binary=self.binary)

    @property
    def nbytes(self) -> int:
        return self.matrix.shape[0] * self.n_features * 4


class _BackedSource:
    """One modality's matrix on disk (backed AnnData): each minibatch reads its rows."""

    def __init__(self, matrix, n_features, *, binary, column_map=None, columns=None):
        self.matrix, self.n_features, self.binary = matrix, n_features, binary
        self.column_map, self.columns = column_map, columns

    def take(self, rows: torch.Tensor):
        present = (rows >= 0).numpy()
        block = _take_rows(self.matrix, rows.numpy()[present])
        # positions of the cells' rows in the block read (-1: absent)
        in_block = torch.from_numpy(np.cumsum(present) - 1).where(rows >= 0, -1)
        if sp.issparse(block):
            source = _SparseSource.from_scipy(
                sp.csr_matrix(block), self.n_features, binary=self.binary,
                column_map=self.column_map,
            )  # fmt: skip
        else:
            source = _DenseSource(
                _tensor(np.asarray(block)), binary=self.binary, columns=self.columns
            )
        return source.take(in_block)


def _source(matrix, n_features: int, *, binary: bool, positions: np.ndarray | None):
    """How minibatches read one modality's matrix (``positions``: the data's columns of
    the model's features, in the model's order, when the data have them reordered)."""
    column_map = columns = None
    if positions is not None:
        columns = torch.from_numpy(np.asarray(positions, dtype=np.int64))
        column_map = torch.empty(len(columns), dtype=torch.int64)
        column_map[columns] = torch.arange(len(columns))  # a permutation
    if is_backed(matrix):
        return _BackedSource(
            matrix, n_features, binary=binary, column_map=column_map, columns=columns
        )
    if sp.issparse(matrix):
        return _SparseSource.from_scipy(matrix, n_features, binary=binary, column_map=column_map)
    return _DenseSource(_tensor(matrix), binary=binary, columns=columns)


class CellData:
    """A registered MuData seen as cells × modalities, ready to be cut into minibatches.

    Minibatches carry each sparse modality as its gathered CSR rows (only the non-zero
    values), made dense by :func:`densify_batch` on the device that trains; dense
    modalities travel dense. :meth:`to` puts a copy of all the values on a GPU, where
    minibatches are then gathered without the host (``train(data_on_device=...)``).

    Parameters
    ----------
    mdata
        A MuData registered with ``MVAE.setup_mudata``.
    registry
        How to read it.
    feature_index
        Optional ``{modality: positions}``: the columns of the MuData to use, in the
        model's feature order (used when a loaded model meets reordered features).
    absent
        Optional ``{modality: n_features}``: registered modalities that this MuData
        lacks (or holds with no cells); they are absent in every cell.
    """

    def __init__(
        self,
        mdata: MuData,
        registry: Registry,
        *,
        feature_index: dict[str, np.ndarray] | None = None,
        absent: Mapping[str, int] | None = None,
    ):
        self.registry = registry
        self.n_cells = mdata.n_obs
        self.obs_names = mdata.obs_names
        self.device = torch.device("cpu")
        self.rows: dict[str, np.ndarray] = {}
        self.library: dict[str, np.ndarray] = {}
        self.sources: dict[str, _SparseSource | _DenseSource | _BackedSource] = {}
        feature_index = feature_index or {}
        absent = absent or {}
        for name, spec in registry.modalities.items():
            binary = spec.likelihood == "bernoulli"
            if name in absent:
                # one empty row that no cell reads (rows of -1 gather nothing)
                empty = sp.csr_matrix((1, absent[name]), dtype=np.float32)
                self.sources[name] = _source(empty, absent[name], binary=binary, positions=None)
                self.rows[name] = np.full(self.n_cells, -1, dtype=np.int64)
                self.library[name] = np.zeros(self.n_cells, dtype=np.float32)
                continue
            matrix = _as_row_indexable(get_values(mdata, name, spec.layer))
            positions = feature_index.get(name)
            n_features = matrix.shape[1] if positions is None else len(positions)
            self.sources[name] = _source(matrix, n_features, binary=binary, positions=positions)
            self.rows[name] = np.asarray(mdata.obsmap[name], dtype=np.int64) - 1  # -1 = absent
            totals = _row_totals(matrix, binary=binary)
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
        # per-cell values as tensors (sharing the arrays above), moved by ``to``
        self._per_cell = {
            "rows": {n: torch.from_numpy(r) for n, r in self.rows.items()},
            "library": {n: torch.from_numpy(v).unsqueeze(-1) for n, v in self.library.items()},
        }
        for key in ("covariates", "labels", "labelled"):
            if getattr(self, key) is not None:
                self._per_cell[key] = torch.from_numpy(getattr(self, key))
        if registry.n_batches:
            self._per_cell["batch_index"] = torch.from_numpy(self.batch_index)

    def set_adversary_weight(self, weights: np.ndarray | None) -> None:
        """Give every cell a weight in the batch adversary, carried by its minibatches as
        ``adversary_weight`` (None: remove them; every cell then weighs 1)."""
        if weights is None:
            self._per_cell.pop("adversary_weight", None)
            return
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (self.n_cells,):
            raise ValueError(f"Expected {self.n_cells} weights, got shape {weights.shape}.")
        self._per_cell["adversary_weight"] = torch.from_numpy(weights).to(self.device)

    def presence(self, name: str) -> np.ndarray:
        """Boolean per cell: does the cell have modality ``name``."""
        return self.rows[name] >= 0

    def n_features(self, name: str) -> int:
        return self.sources[name].n_features

    @property
    def is_backed(self) -> bool:
        """True when some modality is read from disk (a backed MuData)."""
        return any(isinstance(s, _BackedSource) for s in self.sources.values())

    def device_nbytes(self) -> int:
        """Bytes that :meth:`to` puts on a device: the values and the per-cell arrays."""
        per_cell = sum(
            t.numel() * t.element_size()
            for v in self._per_cell.values()
            for t in (v.values() if isinstance(v, dict) else [v])
        )
        return per_cell + sum(s.nbytes for s in self.sources.values())

    def to(self, device: torch.device | str) -> CellData:
        """A copy with every value on ``device`` (minibatches are then gathered there).

        Sparse matrices keep their sparsity (Bernoulli values as one byte); a backed
        MuData cannot be moved (read it into memory first)."""
        if self.is_backed:
            raise ValueError(
                "A backed MuData stays on disk and cannot be copied to a device; train "
                "with data_on_device=False, or read it into memory (mudata.read_h5mu)."
            )
        moved = copy.copy(self)
        moved.device = torch.device(device)
        moved.sources = {n: s.to(moved.device) for n, s in self.sources.items()}
        moved._per_cell = move_data_to_device(self._per_cell, moved.device)
        return moved

    def dense_rows(self, name: str, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense float32 values of modality ``name`` for ``cells`` (zeros where absent).

        Returns
        -------
        ``(values, present)``: ``(len(cells), n_features)`` and the boolean mask.
        """
        rows = torch.from_numpy(self.rows[name][np.asarray(cells, dtype=np.int64)])
        values = self.sources[name].take(rows)
        if isinstance(values, dict):
            values = densify(values, self.n_features(name))
        return values.numpy(), (rows >= 0).numpy()

    def minibatch(self, cells) -> dict:
        """The tensors of one minibatch, on :attr:`device` (see :mod:`mvae_sc.nn.module`
        for the layout; sparse modalities as gathered CSR parts, see
        :func:`densify_batch`)."""
        cells = torch.as_tensor(np.asarray(cells, dtype=np.int64)).to(self.device)
        per_cell = self._per_cell
        batch: dict = {"x": {}, "mask": {}, "library": {}, "cells": cells}
        for name, source in self.sources.items():
            rows = per_cell["rows"][name][cells]
            batch["x"][name] = source.take(rows)
            batch["mask"][name] = rows >= 0
            batch["library"][name] = per_cell["library"][name][cells]
        for key in ("covariates", "batch_index", "labels", "labelled", "adversary_weight"):
            if key in per_cell:
                batch["label" if key == "labels" else key] = per_cell[key][cells]
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
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of minibatch dicts over ``cells`` (indices into ``data``);
    ``pin_memory`` for asynchronous copies to a GPU."""
    dataset = MinibatchDataset(data, cells)
    if shuffle:
        sampler = ShuffledBatches(len(dataset), batch_size, seed=seed, drop_last=drop_last)
    else:
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last
        )
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, pin_memory=pin_memory
    )


def device_minibatches(
    data: CellData, device: torch.device, batch_size: int, cells: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, dict]]:
    """The cells of ``data`` (all, or the positions ``cells``) in order, in chunks:
    ``(chunk, minibatch)``, ``chunk`` the positions in the output (0, 1, ... over the
    cells asked for) and the minibatch dense and on ``device`` (for inference)."""
    n_cells = data.n_cells if cells is None else len(cells)
    for chunk in iterate_chunks(n_cells, batch_size):
        rows = chunk if cells is None else cells[chunk]
        yield chunk, densify_batch(move_data_to_device(data.minibatch(rows), device))


def iterate_chunks(n: int, chunk_size: int) -> Iterator[np.ndarray]:
    """Consecutive index blocks ``[0, chunk_size), [chunk_size, 2*chunk_size), ...``."""
    for start in range(0, n, chunk_size):
        yield np.arange(start, min(start + chunk_size, n))
