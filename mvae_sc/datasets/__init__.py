"""Datasets: the synthetic mosaic simulator and registry-backed loaders."""
