#!/usr/bin/env bash
# mvae_sc against MultiVI on one CUDA GPU at real feature counts: the wide3k set of
# benchmarks/realistic_h5mu.py (3,000 paired cells; 25,458 genes and 85,660 peaks pass
# the comparison's 1 % filter), each method to its own early stop. The two run at the
# same time on the one GPU (8 torch threads each; both times are then upper bounds) and
# are merged into one report. From the repository root, with mvae_sc and scvi-tools
# (the [bench] extra) importable:
#   bash benchmarks/gpu_compare_wide.sh [OUT_DIR]    (default: benchmarks/results/gpu)
#
# Budget: on an H100 (2026-11-27, code of e09419d) the whole took about 9 minutes:
# MultiVI 186 epochs in 286 s, mvae_sc 132 in 145 s, plus data, inference and metrics.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=8
# anndata 0.12 refuses to write pandas 3's default (Arrow) string index unless told
export ANNDATA_ALLOW_WRITE_NULLABLE_STRINGS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/realistic_h5mu.py --out "$work/wide3k.h5mu" || exit 1
run() {
    python3 benchmarks/compare_multivi.py --dataset "$work/wide3k.h5mu" --methods "$1" \
        --out-dir "$work/$1" >"$work/$1.log" 2>&1
}
run multivi &
sleep 20  # MultiVI, the longer run, first
run mvae_sc
wait
tail -n 3 "$work/mvae_sc.log" "$work/multivi.log"
python3 benchmarks/compare_multivi.py --merge "$work"/mvae_sc/*.json "$work"/multivi/*.json \
    --out-dir "$out"
