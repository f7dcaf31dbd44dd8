"""Lightning pieces: the data module (train/validation split) and the training plan."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import math
import sys
from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch

from .data.loader import (
    CellData,
    densify_batch,
    device_minibatches,
    iterate_chunks,
    minibatch_loader,
)
from .metrics import leiden_clusters
from .nn.fusion import subset_members
from .nn.module import MVAEModule, expert_set_code, identity_calibration

logger = logging.getLogger(__name__)

# The discriminator's learning rate relative to the rest of the model.
DISCRIMINATOR_LR_FACTOR = 30.0

# ``data_on_device=None`` puts the data on a GPU when it takes at most this share of the
# GPU's free memory (the rest is for the model, the optimiser and the minibatches).
DEVICE_DATA_SHARE = 0.5


# glibc's mallopt parameters (malloc.h) and the values used around training.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD = 32 * 1024**2  # glibc's largest threshold for mapping a block itself
_MMAP_MAX_DEFAULT = 65536  # glibc's default number of blocks it maps itself


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Keep the memory of freed minibatch tensors in the process while training, instead
    of giving it back to the operating system after every step (Linux with glibc; a
    no-op elsewhere).

    A step allocates and frees hundreds of MB of (cells x features) tensors. By default
    glibc maps every block of more than 32 MB afresh (its largest threshold; one such
    tensor is 128 cells x 65,536 features) and trims its heap whenever more than a few
    tens of MB are free, so every step touches new pages: the page faults took about a
    quarter of a CPU step at 70,000 features and a fifth at 110,000
    (``benchmarks/profile_step.py``). Inside this context every block comes from the
    heap and the heap is never trimmed, so a step reuses the pages of the one before.
    The peak rises a little (4-7 % at 110,000 features), since a freed block too small
    for the next request stays in the heap beside the new one. On exit glibc's settings
    go back to what its own adaptation reaches after such blocks and the free memory is
    handed back (``malloc_trim``).
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, -1)  # -1: never trim
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)
        libc.malloc_trim(0)


@contextlib.contextmanager
def tensor_core_matmuls() -> Iterator[None]:
    """float32 matrix products on TensorFloat-32 tensor cores (``torch`` "high" matmul
    precision) while training: several times faster on Ampere and later GPUs, well
    within the noise of stochastic training; no effect on CPU. The previous setting
    is restored on exit."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class MuDataModule(pl.LightningDataModule):
    """Splits the cells into training and validation sets (in ``setup``) and serves
    minibatches of both.

    Parameters
    ----------
    data
        The registered cells.
    train_size
        Fraction of cells used for training; the rest is validated on (early stopping).
        With 1.0 there is no validation set.
    batch_size
        Cells per minibatch.
    seed
        Seed of the split and of the shuffling.
    data_on_device
        Where minibatches are gathered when training on a GPU. ``True``: all the data
        (sparse, as they are) are copied to the GPU once and minibatches are gathered
        there, with no work left for the host. ``False``: they stay in host memory
        and each minibatch travels as its non-zero values, from pinned memory, made
        dense on the GPU. ``None``: on the GPU when they take at most
        ``DEVICE_DATA_SHARE`` of its free memory and are not backed. Ignored on CPU.
    """

    def __init__(
        self,
        data: CellData,
        *,
        train_size: float = 0.9,
        batch_size: int = 256,
        seed: int = 0,
        data_on_device: bool | None = None,
    ):
        super().__init__()
        self.data = data
        self.train_size = train_size
        self.batch_size = batch_size
        self.seed = seed
        self.data_on_device = data_on_device
        self.train_cells = np.arange(data.n_cells)
        self.val_cells = np.arange(0)
        self.placed = data  # the data where minibatches are gathered (set in ``setup``)

    def setup(self, stage: str | None = None) -> None:
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(self.data.n_cells)
        n_train = (
            self.data.n_cells
            if self.train_size >= 1
            else int(math.ceil(self.train_size * self.data.n_cells))
        )
        self.train_cells = np.sort(order[:n_train])
        self.val_cells = np.sort(order[n_train:])
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.placed = self.data.to(device) if self._on_device(device) else self.data

    def _on_device(self, device: torch.device) -> bool:
        if device.type == "cpu" or self.data_on_device is False:
            return False
        size = self.data.device_nbytes()
        if self.data_on_device is None:
            if self.data.is_backed or device.type != "cuda":
                return False
            free, _ = torch.cuda.mem_get_info(device)
            if size > DEVICE_DATA_SHARE * free:
                logger.info(
                    "The data (%.1f GB) exceed %.0f%% of the GPU's free memory (%.1f GB): "
                    "minibatches are gathered on the host.",
                    size / 1e9, 100 * DEVICE_DATA_SHARE, free / 1e9,
                )  # fmt: skip
                return False
        logger.info("Training data copied to %s (%.1f GB).", device, size / 1e9)
        return True

    def _loader(self, cells: np.ndarray, **kwargs):
        pin = self.placed.device.type == "cpu" and (
            self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        )
        return minibatch_loader(self.placed, cells, pin_memory=pin, **kwargs)

    def train_dataloader(self):
        # drop a last minibatch of a single cell: LayerNorm statistics need no batch, but
        # a lone cell gives a noisy step; it is seen again in the next epoch's shuffle.
        drop_last = len(self.train_cells) % self.batch_size == 1
        return self._loader(
            self.train_cells,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            drop_last=drop_last,
        )

    def val_dataloader(self):
        return self._loader(self.val_cells, batch_size=max(self.batch_size, 1024), shuffle=False)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # sparse modalities travel as their non-zero values and are made dense here, on
        # the training device
        return densify_batch(batch)

    def teardown(self, stage: str | None = None) -> None:
        self.placed = self.data  # free the device copy


def fused_means(
    module: MVAEModule,
    data: CellData,
    device: torch.device,
    batch_size: int,
    sources: list[str] | None = None,
    cells: np.ndarray | None = None,
    calibrated: bool = False,
) -> Iterator[tuple[np.ndarray, dict, torch.Tensor, torch.Tensor]]:
    """Per chunk of cells (all, or the positions ``cells``): ``(chunk, batch, z,
    has_any)``, the posterior mean of z from the ``sources`` experts (all when None),
    ``calibrated`` through :meth:`MVAEModule.calibrate`, and whether the cell has any of
    them; see :func:`device_minibatches` for ``chunk``. Call it with the module in eval
    mode and gradients off."""
    for chunk, batch in device_minibatches(data, device, batch_size, cells):
        mu, logvar, presence = module.encode(batch, modalities=sources)
        z = module.fused_mean(mu, logvar, presence)
        if calibrated:
            z = module.calibrate(z, presence)
        yield chunk, batch, z, presence.any(0).unsqueeze(-1)


# cells with every modality needed per latent dimension (plus one) to fit the maps
CALIBRATION_CELLS_PER_DIM = 10
# values (cells x features, all modalities) of the dense chunks the fit encodes: 64 MB
# of float32, so that the fit does not raise training's peak memory on wide data
CALIBRATION_CHUNK_VALUES = 2**24


@torch.inference_mode()
def fit_latent_calibration(module: MVAEModule, data: CellData, device: torch.device) -> int:
    """Fit ``module.latent_calibration``: for each proper subset S of the modalities,
    the affine least-squares map from the posterior mean of S's experts to the posterior
    mean of all of them, over the cells that have every modality.

    With only some experts, a PoE posterior sits at a less specific place than the
    joint one (its mean is shrunk towards the prior and mixes what one modality cannot
    tell apart); the map puts such a cell where cells with every modality and the same
    partial posterior lie, E[z_all | z_S] to first order. The fit is ridge-regularised
    towards the identity (penalty 1e-3 of the inputs' sum of squares per dimension).
    With fewer than ``CALIBRATION_CELLS_PER_DIM * (n_latent + 1)`` such cells (or a
    single modality) every map stays the identity. Cells are encoded in chunks of at
    most 1,024 cells and ``CALIBRATION_CHUNK_VALUES`` dense values.

    Returns
    -------
    The number of cells the maps were fitted on (0 when left at the identity).
    """
    n_modalities, n_latent = len(module.modality_names), module.n_latent
    maps = identity_calibration(2**n_modalities, n_latent).double()
    complete = np.flatnonzero(
        np.logical_and.reduce([data.presence(name) for name in module.modality_names])
    )
    n_cells = len(complete)
    if n_modalities < 2 or n_cells < CALIBRATION_CELLS_PER_DIM * (n_latent + 1):
        module.latent_calibration.copy_(maps)
        return 0
    training = module.training
    module.eval()
    # every non-empty set of experts but the full one (subset_members lists it last)
    members = subset_members(n_modalities, device)[:-1]
    codes = expert_set_code(members).tolist()
    gram = torch.zeros(2**n_modalities, n_latent + 1, n_latent + 1, dtype=torch.float64)
    cross = torch.zeros(2**n_modalities, n_latent + 1, n_latent, dtype=torch.float64)
    n_features = sum(data.n_features(name) for name in module.modality_names)
    chunk = max(16, min(1024, CALIBRATION_CHUNK_VALUES // n_features))
    for _, batch in device_minibatches(data, device, chunk, complete):
        mu, logvar, presence = module.encode(batch)
        target = module.fused_mean(mu, logvar, presence).double().cpu()
        for code, keep in zip(codes, members, strict=True):
            subset = presence & keep.unsqueeze(-1)
            x = module.fused_mean(mu, logvar, subset).double().cpu()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], -1)
            gram[code] += x.T @ x
            cross[code] += x.T @ target
    module.train(training)
    for code in codes:
        # penalty lam * ||A_linear - I||^2: lam on the diagonal of the linear part
        lam = 1e-3 * float(gram[code].diagonal()[:-1].sum()) / n_latent
        penalty = torch.diag(torch.tensor([lam] * n_latent + [0.0], dtype=torch.float64))
        rhs = cross[code] + penalty @ maps[code]
        maps[code] = torch.linalg.solve(gram[code] + penalty, rhs)
    module.latent_calibration.copy_(maps)
    return n_cells


def batch_balance_weights(
    z: np.ndarray,
    batch_index: np.ndarray,
    *,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    temperature: float = 0.02,
    cutoff: float = 0.5,
    max_cells: int = 20_000,
    seed: int = 0,
) -> np.ndarray:
    """Per-cell weights for the batch adversary: how well other batches hold cells like
    this one, so that cell types found in only some batches are not pushed onto other
    types to mix the batches.

    The cells of each batch are clustered on their own (Leiden on a kNN graph of ``z``)
    and clusters are compared across batches by the cosine similarity ``s`` of their
    centroids, as in GLUE's ``scglue.data.estimate_balancing_weight`` (Cao & Gao 2022).
    A cluster ``i`` of batch ``a`` is matched in batch ``b`` when its closest clusters
    there have no closer cluster in ``a`` than ``i`` itself (a mutual match, made soft)::

        match(i, b) = sum_j softmax_j(s_ij / T) * exp((s_ij - max_k∈a s_kj) / T) * [s_ij >= cutoff]

    A type that ``b`` lacks finds there only its nearest other type, whose own closest
    cluster in ``a`` is that type itself, not ``i``: its match is near 0 even where
    related types are similar (best similarities 0.8-0.94 against 0.99 for the same
    type on ``benchmarks/realistic_h5mu.py`` data); a type split into several clusters
    keeps most of its match. Clusters less similar than ``cutoff`` never match (two types
    that only one batch each has may be each other's closest). A cluster's weight is the
    mean of its matches over the other batches, each cell takes its cluster's, and the
    weights are then scaled to a mean of 1 within each batch (a batch that nothing
    matches keeps 0s).

    The matching needs a ``z`` in which a cell type looks alike in every batch. Where
    the batch effect moves a type's centroid further than the distance between types,
    types are matched wrongly (README, "Batches of different composition").

    Parameters
    ----------
    z
        ``(n_cells, n_latent)`` embedding, from a model trained without the adversary.
    batch_index
        ``(n_cells,)`` batch codes.
    resolution, n_neighbors
        Leiden resolution and neighbours of the kNN graph.
    temperature
        ``T`` above, in units of cosine similarity: how much less similar than the best
        counterpart a cluster may be and still count as matched.
    cutoff
        The least cosine similarity of a match (GLUE's 0.5).
    max_cells
        Batches with more cells are clustered on a random sample of this many; the
        other cells take the cluster of their nearest centroid.
    seed
        Seed of the sample and of the clustering.

    Returns
    -------
    ``(n_cells,)`` float32 weights, 1 everywhere with fewer than two batches.
    """
    z = np.asarray(z, dtype=np.float32)
    batch_index = np.asarray(batch_index)
    if len(z) != len(batch_index):
        raise ValueError(f"z has {len(z)} rows but batch_index has {len(batch_index)}.")
    batches = np.unique(batch_index)
    if len(batches) < 2:
        return np.ones(len(z), dtype=np.float32)
    rng = np.random.default_rng(seed)
    cluster = np.empty(len(z), dtype=np.int64)  # global cluster number of each cell
    centroids: list[np.ndarray] = []
    owner: list[int] = []  # the batch of each cluster
    for b, code in enumerate(batches):
        cells = np.flatnonzero(batch_index == code)
        sample = cells
        if len(cells) > max_cells:
            sample = np.sort(rng.choice(cells, max_cells, replace=False))
        (labels,) = leiden_clusters(z[sample], resolution, n_neighbors=n_neighbors, seed=seed)
        means = np.stack([z[sample[labels == k]].mean(0) for k in range(labels.max() + 1)])
        if len(sample) < len(cells):
            labels = _nearest(z[cells], means)
        cluster[cells] = len(centroids) + labels
        centroids.extend(means)
        owner.extend([b] * len(means))
    units = np.stack(centroids).astype(np.float64)
    units /= np.maximum(np.linalg.norm(units, axis=1, keepdims=True), 1e-12)
    similarity = units @ units.T
    owner = np.asarray(owner)
    cluster_weight = np.zeros(len(units))
    for a in range(len(batches)):
        rows = owner == a
        for b in range(len(batches)):
            if b == a:
                continue
            s = similarity[np.ix_(rows, owner == b)] / temperature
            forward = np.exp(s - s.max(1, keepdims=True))
            forward /= forward.sum(1, keepdims=True)
            back = np.exp(s - s.max(0, keepdims=True))
            cluster_weight[rows] += (forward * back * (s >= cutoff / temperature)).sum(1)
    cluster_weight /= len(batches) - 1
    weights = cluster_weight[cluster]
    for code in batches:
        cells = batch_index == code
        mean = weights[cells].mean()
        if mean > 0:
            weights[cells] /= mean
    return weights.astype(np.float32)


def _nearest(z: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of every row of ``z``."""
    out = np.empty(len(z), dtype=np.int64)
    squared = (centroids**2).sum(1)
    for rows in iterate_chunks(len(z), chunk):
        out[rows] = (squared[None, :] - 2 * z[rows] @ centroids.T).argmin(1)
    return out


class TrainingPlan(pl.LightningModule):
    """Optimises an :class:`~mvae_sc.nn.module.MVAEModule`.

    Parameters
    ----------
    module
        The torch model.
    lr, weight_decay
        AdamW settings.
    n_epochs_kl_warmup, max_kl_weight
        The KL term's weight rises linearly from 0 to ``max_kl_weight`` over this many
        epochs, counted in the minibatches each process runs, so that under DDP it spans
        as many epochs as in one process (avoids posterior collapse early on); the
        adversary's weight on the encoders (if any) warms up with it. Validation always uses
        ``max_kl_weight`` and leaves the adversary out, so the monitored validation loss
        is the objective training ends on (plus the weighted supervised loss when there
        is a head); the ELBO is logged beside it.
    balance_steps
        With a batch adversary: train without its pull on the encoders (the
        discriminator learns meanwhile) until the end of the first epoch with at least
        this many optimiser steps, then weigh every cell in the adversary by
        :func:`batch_balance_weights` of the embedding at that point and let it pull
        (still on the warm-up's scale). None: no balancing, the adversary pulls from
        the first step.
    """

    def __init__(
        self,
        module: MVAEModule,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        n_epochs_kl_warmup: float = 50,
        max_kl_weight: float = 1.0,
        balance_steps: int | None = None,
    ):
        super().__init__()
        self.module = module
        self.balance_steps = balance_steps if module.discriminator is not None else None
        # the cells' weights in the adversary once computed (None before)
        self.adversary_weights: torch.Tensor | None = None
        self.lr = lr
        self.weight_decay = weight_decay
        self.n_epochs_kl_warmup = n_epochs_kl_warmup
        self.max_kl_weight = max_kl_weight
        self.non_finite: dict[str, int] | None = None  # where the loss became NaN/inf
        self._epoch_sums: dict[str, dict] = {}  # stage -> metric -> (weighted sum, weight)

    @property
    def n_steps_kl_warmup(self) -> int:
        """The warm-up in optimiser steps: its epochs times this process's minibatches
        per epoch (the trainer's count: a last, smaller minibatch included; under DDP
        the rank's share); at least one."""
        return max(1, round(self.n_epochs_kl_warmup * self.trainer.num_training_batches))

    @property
    def warmup(self) -> float:
        """How far the warm-up has gone: 0 at the first step, 1 from its end on."""
        if self.n_epochs_kl_warmup <= 0:
            return 1.0
        return min(1.0, self.global_step / self.n_steps_kl_warmup)

    @property
    def kl_weight(self) -> float:
        return self.max_kl_weight * self.warmup

    def _step(self, batch: dict, stage: str, batch_idx: int) -> torch.Tensor:
        kl_weight = self.kl_weight if stage == "train" else self.max_kl_weight
        # Training: PoE decodes its joint posterior plus one sampled single-expert
        # posterior per cell (two decoder passes, unbiased for the full sub-sampled
        # objective); mixtures use stratified sampling, one z per component.
        # Validation is always exact.
        stratified = stage != "train" or self.module.fusion != "poe"
        # The adversary's pull on the encoders warms up with the KL weight (and waits
        # for the cells' balancing weights).
        adversary_scale = None
        if stage == "train":
            adversary_scale = self.warmup if self.adversary_pulls else 0.0
        out = self.module.loss(
            batch, kl_weight=kl_weight, stratified=stratified, adversary_scale=adversary_scale
        )
        n_cells = len(batch["cells"])
        sums = self._epoch_sums.setdefault(stage, {})
        for key, value in out.items():
            # supervised metrics are means over labelled cells: weight them so (a
            # minibatch without any adds nothing, rather than a fake 0)
            size = batch["labelled"].sum() if key.startswith("classification_") else n_cells
            _accumulate(sums, f"{stage}_{key}", value.detach().float(), size)
        if stage == "train":
            _accumulate(sums, "kl_weight", kl_weight, n_cells)
        if batch_idx == self._last_batch_index(stage):
            self._log_epoch_means(stage)
        return out["loss"]

    @property
    def adversary_pulls(self) -> bool:
        """Whether the batch adversary acts on the encoders yet."""
        return self.balance_steps is None or self.adversary_weights is not None

    def on_train_start(self) -> None:
        if self.adversary_weights is not None:  # resumed after the balancing
            self.trainer.datamodule.placed.set_adversary_weight(self.adversary_weights.numpy())

    def on_train_epoch_end(self) -> None:
        if not self.adversary_pulls and self.global_step >= self.balance_steps:
            self.balance_adversary()

    def on_train_end(self) -> None:
        self.trainer.datamodule.placed.set_adversary_weight(None)

    @torch.inference_mode()
    def balance_adversary(self) -> None:
        """Weigh every cell in the adversary by :func:`batch_balance_weights` of the
        current posterior means (all cells, validation ones included)."""
        data = self.trainer.datamodule.placed
        module = self.module
        training = module.training
        module.eval()
        z = np.empty((data.n_cells, module.n_latent), dtype=np.float32)
        for cells, _, means, _ in fused_means(module, data, self.device, 4096):
            z[cells] = means.float().cpu().numpy()
        module.train(training)
        weights = batch_balance_weights(z, data.batch_index)
        self.adversary_weights = torch.from_numpy(weights)
        data.set_adversary_weight(weights)
        logger.info(
            "Batch adversary from epoch %d on, balanced: %.1f%% of cells weigh under 0.25 "
            "(cell types that the other batches lack).",
            self.current_epoch + 1, 100 * float((weights < 0.25).mean()),
        )  # fmt: skip

    # Per-step metrics are summed here and logged once, at an epoch's last minibatch:
    # Lightning's self.log costs about 1 ms of Python per call, which with a dozen
    # metrics was a quarter of a small model's step (and a device sync per step for the
    # labelled-cell count).
    def on_train_epoch_start(self) -> None:
        self._epoch_sums["train"] = {}

    def on_validation_epoch_start(self) -> None:
        self._epoch_sums["validation"] = {}

    def _last_batch_index(self, stage: str) -> int:
        trainer = self.trainer  # our loaders are sized, so these counts are finite
        n = trainer.num_training_batches if stage == "train" else trainer.num_val_batches[0]
        return int(n) - 1

    def _log_epoch_means(self, stage: str) -> None:
        """Log each metric's epoch mean (weighted by cells, or by labelled cells), over
        all processes under DDP."""
        distributed = self.trainer.world_size > 1
        for key, (total, count) in self._epoch_sums.pop(stage, {}).items():
            total = torch.as_tensor(total, dtype=torch.float32, device=self.device)
            count = torch.as_tensor(count, dtype=torch.float32, device=self.device)
            if distributed:
                total = self.trainer.strategy.reduce(total, reduce_op="sum")
                count = self.trainer.strategy.reduce(count, reduce_op="sum")
            if count > 0:
                self.log(
                    key,
                    total / count,
                    on_step=False,
                    on_epoch=True,
                    batch_size=1,
                    prog_bar=key == f"{stage}_loss",
                )

    # Resuming from a checkpoint continues the random stream (dropout, z samples) where
    # it was, so a resumed run reproduces an uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mvae_sc_rng"] = torch.get_rng_state()
        checkpoint["mvae_sc_adversary_weights"] = self.adversary_weights

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "mvae_sc_rng" in checkpoint:
            torch.set_rng_state(checkpoint["mvae_sc_rng"])
        self.adversary_weights = checkpoint.get("mvae_sc_adversary_weights")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        loss = self._step(batch, "train", batch_idx)
        if not torch.isfinite(loss):
            # Skip this step (returning None leaves the weights untouched) and stop; the
            # model wrapper turns ``non_finite`` into a clear error.
            self.non_finite = {"epoch": self.current_epoch, "step": self.global_step}
            self.trainer.should_stop = True
            return None
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "validation", batch_idx)

    def configure_optimizers(self):
        # The discriminator learns faster than the encoders it plays against, so it keeps
        # finding the batch signal the encoders are hiding (a slow one is fooled by a z
        # that merely moves the signal elsewhere).
        disc = self.module.discriminator
        disc_params = (
            [] if disc is None else [*disc.parameters(), *self.module.batch_prior.parameters()]
        )
        ids = {id(p) for p in disc_params}
        groups = [{"params": [p for p in self.module.parameters() if id(p) not in ids]}]
        if disc_params:
            groups.append({"params": disc_params, "lr": self.lr * DISCRIMINATOR_LR_FACTOR})
        # The fused update is one pass over each parameter: several times faster than
        # the per-tensor loop on a CPU, where that loop was a tenth of a step at real
        # widths. float16 with a gradient scaler keeps the unfused one (see below).
        return torch.optim.AdamW(
            groups,
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=0.01,
            fused=not self._gradient_scaler(),
        )

    def _gradient_scaler(self) -> bool:
        trainer = self._trainer
        return trainer is not None and str(trainer.precision) in ("16-mixed", "16")

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip as Lightning does, also for the fused optimiser under ``bf16-mixed``
        (Lightning refuses fused optimisers under any mixed precision, as they might
        unscale float16 gradients themselves; bfloat16 has no scaler)."""
        if self._gradient_scaler() or not gradient_clip_val:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)


def _accumulate(sums: dict, key: str, value, weight) -> None:
    total, count = sums.get(key, (0.0, 0.0))
    sums[key] = (total + value * weight, count + weight)


def ema_update(decay: float):
    """The ``multi_avg_fn`` of :class:`torch.optim.swa_utils.AveragedModel` for an
    exponential moving average of the weights that forgets its start: after ``n``
    updates the average moves by ``1 - d`` towards the current weights, with ``d =
    min(decay, (1 + n) / (10 + n))``, so a short run is averaged over its own last
    steps rather than its initialisation (TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``)."""

    @torch.no_grad()
    def update(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers: kept equal to the current ones
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


class HistoryCallback(pl.Callback):
    """Collects the epoch-level metrics into a list of rows (``MVAE.history``)."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.rows.append(row)

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])


class KeepBestWeights(pl.Callback):
    """Keeps a copy of the weights with the lowest monitored value and restores them at
    the end of training (early stopping otherwise leaves the last, not the best)."""

    def __init__(self, monitor: str = "validation_loss"):
        self.monitor = monitor
        self.best_value = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not torch.isfinite(value):
            return
        if float(value) < self.best_value:
            self.best_value = float(value)
            self.best_epoch = trainer.current_epoch
            self.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_value = state_dict["best_value"]
        self.best_epoch = state_dict["best_epoch"]
        self.best_state = state_dict["best_state"]
