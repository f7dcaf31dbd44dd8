"""Datasets: the synthetic mosaic simulator and registry-backed loaders."""

from __future__ import annotations

from ._registry import available, load
from ._synthetic import heldout, hide_modality, synthetic_multiome

__all__ = ["synthetic_multiome", "heldout", "hide_modality", "load", "available"]
