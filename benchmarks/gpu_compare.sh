#!/usr/bin/env bash
# mvae_sc against MultiVI on one CUDA GPU: the 5k synthetic comparison of
# benchmarks/compare_multivi.py, each method with its own early stopping. From the
# repository root, with mvae_sc and scvi-tools (the [bench] extra) importable:
#   bash benchmarks/gpu_compare.sh [OUT_DIR]    (default: benchmarks/results/gpu)
#
# Budget: on an H200 (2026-11-26, code of 912bc26) the whole script took 564 s: mvae_sc
# trained 65 epochs in 82 s, MultiVI early-stopped after 262 of its 500 epochs in 364 s,
# and the rest is CUDA start, simulation, inference and metrics. Give it 10 minutes.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# anndata 0.12 refuses to write pandas 3's default (Arrow) string index unless told
export ANNDATA_ALLOW_WRITE_NULLABLE_STRINGS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/compare_multivi.py --dataset synthetic --n-cells 5000 --out-dir "$out" \
    2>&1 | grep -v -e "Tip:" -e "TPU available" -e "LOCAL_RANK"
