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

from .data.loader import CellData, densify_batch, minibatch_loader
from .nn.module import MVAEModule

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
    """

    def __init__(
        self,
        module: MVAEModule,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        n_epochs_kl_warmup: float = 50,
        max_kl_weight: float = 1.0,
    ):
        super().__init__()
        self.module = module
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
        # The adversary's pull on the encoders warms up with the KL weight.
        adversary_scale = self.warmup if stage == "train" else None
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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "mvae_sc_rng" in checkpoint:
            torch.set_rng_state(checkpoint["mvae_sc_rng"])

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
