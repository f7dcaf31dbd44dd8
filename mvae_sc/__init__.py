"""mvae_sc: multimodal variational autoencoders for single-cell multi-omics on MuData."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, metrics, pl
from .model import MVAE

try:
    __version__ = version("mvae-sc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["MVAE", "datasets", "io", "metrics", "pl", "__version__"]
