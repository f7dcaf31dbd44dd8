#!/usr/bin/env bash
# mvae_sc against MultiVI on one CUDA GPU: the 5k synthetic comparison of
# benchmarks/compare_multivi.py, each method with its own early stopping. From the
# repository root, with mvae_sc and scvi-tools (the [bench] extra) importable:
#   bash benchmarks/gpu_compare.sh [OUT_DIR]    (default: benchmarks/results/gpu)
#
# Budget: on an H100 (2026-11-26) MultiVI ran 1.39 s per epoch at 5k cells (30 epochs
# in 41.6 s; its default budget here is 229 epochs, about 5.5 min), and mvae_sc's child
# did not finish within 115 s (CUDA start, data, about 75 epochs, inference). Allow about
# 9 minutes for the whole script.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# anndata 0.12 refuses to write pandas 3's default (Arrow) string index unless told
export ANNDATA_ALLOW_WRITE_NULLABLE_STRINGS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/compare_multivi.py --dataset synthetic --n-cells 5000 --out-dir "$out" \
    2>&1 | grep -v -e "Tip:" -e "TPU available" -e "LOCAL_RANK"
