#!/usr/bin/env bash
# GPU check for extract, for a lent H100/H200 machine (torch+CUDA preinstalled, no internet).
# Runs the CUDA tests and the GPU benchmark (plus the CPU comparison on that machine's cores)
# in under 5 minutes; logs and JSON go to $OUT (default benchmarks/results).
#   usage: bash benchmarks/gpu_check.sh            (from anywhere; PYTHON=... to pick python)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# the package from this checkout, without touching the machine's own torch/torchvision
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
$PY - <<'PY' 2>&1 | tee -a "$OUT/gpu_info.txt"
import importlib
for m in ("torch", "torchvision", "h5py", "pandas", "pyarrow", "PIL", "tqdm", "pytest"):
    mod = importlib.import_module(m)
    print(m, getattr(mod, "__version__", "?"))
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), "bf16",
      torch.cuda.is_bf16_supported())
PY
status=0
timeout 120 $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_extract.py 2>&1 \
    | tee "$OUT/gpu_tests.log" || status=1
# CPU_FRAMES=0 skips the CPU comparison (measured on the dev machine too) when time is short
timeout 300 $PY benchmarks/bench_extract.py --cpu-frames "${CPU_FRAMES:-2000}" --gpu-frames 30000 \
    --json "$OUT/bench_extract_gpu.json" 2>&1 | tee "$OUT/bench_extract_gpu.log" || status=1
exit $status
