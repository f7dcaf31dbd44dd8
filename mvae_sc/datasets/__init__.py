"""Datasets: the synthetic mosaic simulator and registry-backed loaders."""

from __future__ import annotations

from ._multimodal import synthetic_patchseq, synthetic_sensors
from ._registry import available, load
from ._synthetic import heldout, hide_modality, synthetic_multiome

__all__ = [
    "synthetic_multiome",
    "synthetic_patchseq",
    "synthetic_sensors",
    "heldout",
    "hide_modality",
    "load",
    "available",
]
