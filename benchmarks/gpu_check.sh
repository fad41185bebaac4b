#!/usr/bin/env bash
# GPU check for extract, for a lent H100/H200 machine (torch+CUDA preinstalled, no internet; it
# needs no av/ffmpeg: test frames are made with PIL). Runs the CUDA tests (<= 110 s) and the GPU
# benchmark (<= 180 s: resnet50 bf16 forward-only vs extract with decode=cpu and decode=gpu),
# under 5 minutes in all; logs and JSON go to $OUT (default benchmarks/results), the JSON
# written after each step so a time limit still leaves what was measured.
#
# The lead's device-tool call (the machine's start comes on top of the ~5 minutes):
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=330)
# then commit <files_at>/bench_extract_gpu.json as
# benchmarks/results/bench_extract_gpu_<card>.json and read bench_extract_gpu.log's table.
#
#   usage: bash benchmarks/gpu_check.sh   (from anywhere; PYTHON=... picks python;
#          CPU_FRAMES=500 adds the CPU comparison on that machine's cores, ~1 more minute)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# the package from this checkout, without touching the machine's own torch/torchvision
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
$PY - <<'PY' 2>&1 | tee -a "$OUT/gpu_info.txt"
import importlib, os
for m in ("torch", "torchvision", "h5py", "pandas", "pyarrow", "PIL", "tqdm", "pytest"):
    mod = importlib.import_module(m)
    print(m, getattr(mod, "__version__", "?"))
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), "bf16",
      torch.cuda.is_bf16_supported(), "cores", len(os.sched_getaffinity(0)),
      "torch threads", torch.get_num_threads())
PY
df -h /dev/shm 2>&1 | tee -a "$OUT/gpu_info.txt"  # decoded batches travel through /dev/shm
status=0
timeout 110 $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_extract.py 2>&1 \
    | tee "$OUT/gpu_tests.log" || status=1
timeout 180 $PY benchmarks/bench_extract.py --cpu-frames "${CPU_FRAMES:-0}" --gpu-frames 50000 \
    --json "$OUT/bench_extract_gpu.json" 2>&1 | tee "$OUT/bench_extract_gpu.log" || status=1
exit $status
