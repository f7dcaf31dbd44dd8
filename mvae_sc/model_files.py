"""Safe model files: weights in safetensors, configuration in JSON. No pickle anywhere.

A model directory holds ``model.safetensors`` and ``config.json``; the JSON carries a
``format_version`` so that files written by a newer mvae_sc are refused with a clear
message instead of being misread.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# 2: per-modality hidden widths in init_params; 3: the discriminator sees which experts
# each posterior fuses, and a batch prior; 4: the latent calibration maps (formats 1 to
# 3 still read)
FORMAT_VERSION = 4
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _package_version() -> str:
    from . import __version__

    return __version__


def write(
    dir_path: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict,
    *,
    overwrite: bool = False,
) -> None:
    """Write ``state_dict`` and ``config`` into ``dir_path`` (created if needed).

    Each file is written to a temporary name and renamed, so an interrupted save never
    leaves a half-written model behind.
    """
    dir_path = Path(dir_path)
    if dir_path.exists() and any(dir_path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{dir_path} exists and is not empty; pass overwrite=True to replace it."
        )
    dir_path.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, "mvae_sc_version": _package_version(), **config}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    for name, writer in (
        (WEIGHTS, lambda p: save_file(tensors, p, metadata={"format": "pt"})),
        (CONFIG, lambda p: Path(p).write_text(json.dumps(config, indent=1))),
    ):
        fd, tmp = tempfile.mkstemp(dir=dir_path, prefix=f".{name}.")
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, dir_path / name)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def read(dir_path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a model directory written by :func:`write`; never executes code from it."""
    dir_path = Path(dir_path)
    if not dir_path.is_dir():
        raise FileNotFoundError(f"No model directory at {dir_path}.")
    for name in (WEIGHTS, CONFIG):
        if not (dir_path / name).is_file():
            raise FileNotFoundError(
                f"{dir_path} has no {name}; it is not an mvae_sc model directory (expected "
                f"{WEIGHTS} and {CONFIG}, written by `model.save`)."
            )
    try:
        config = json.loads((dir_path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{dir_path / CONFIG} is corrupted or truncated ({err}); save the model again."
        ) from err
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int):
        raise ValueError(
            f"{dir_path / CONFIG} has no format_version; it is not an mvae_sc model file."
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{dir_path} was written in model format {version} by mvae_sc "
            f"{config.get('mvae_sc_version', '?')}; this mvae_sc ({_package_version()}) reads "
            f"format {FORMAT_VERSION} at most. Upgrade mvae_sc: `pip install -U mvae-sc`."
        )
    try:
        state = load_file(dir_path / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{dir_path / WEIGHTS} is corrupted or truncated ({err}); save the model again."
        ) from err
    return state, config
