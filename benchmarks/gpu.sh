#!/usr/bin/env bash
# The GPU checks and timings, in one run on a machine with a CUDA GPU (from the
# repository root, with mvae_sc importable):
#   bash benchmarks/gpu.sh [OUT_DIR]    (default: benchmarks/results)
# 1. tests/test_gpu.py (skipped elsewhere) and the minibatch tests;
# 2. one training step's phases at 30k genes + 100k peaks, minibatch of 1,024 cells,
#    data on the GPU and gathered on the host;
# 3. time per epoch at 100k cells (data on the GPU; on the host; bf16-mixed) and at 1M
#    cells, 30k genes, 100k peaks (--tile: 10k simulated cells stacked).
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# anndata 0.12 refuses to write pandas 3's default (Arrow) string index unless told
export ANNDATA_ALLOW_WRITE_NULLABLE_STRINGS=1
data=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/test_gpu.py tests/test_loader.py
for where in yes no; do
    python3 benchmarks/profile_step.py --cells 4000 --genes 30000 --peaks 100000 \
        --batch-size 1024 --steps 20 $([ $where = yes ] && echo --data-on-device) \
        --out "$out/profile_step_gpu_on_device_$where.json" | grep -A6 '"ms_per_step"'
done
scale() { python3 benchmarks/scale.py --genes 30000 --peaks 100000 --epochs 2 --data-dir "$data" "$@"; }
scale --cells 100000 --tile 10 --out "$out/scale_gpu_100k.json"
scale --cells 1000000 --tile 100 --out "$out/scale_gpu_1m.json"
scale --cells 100000 --tile 10 --data-on-device no --out "$out/scale_gpu_100k_host.json"
scale --cells 100000 --tile 10 --precision bf16-mixed --out "$out/scale_gpu_100k_bf16.json"
scale --cells 1000000 --tile 100 --precision bf16-mixed --out "$out/scale_gpu_1m_bf16.json"
