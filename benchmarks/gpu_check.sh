#!/usr/bin/env bash
# Issue 14's GPU and 16-core check, in one run, on a bare lent GPU machine (nvidia-h200: Python
# 3.12 with torch/torchvision/h5py/pandas/pyarrow/pillow/pytest, no internet, no av, ffmpeg or
# imageio-ffmpeg): installs the wheels it is handed in .whl/ (benchmarks/gpu_wheels.sh makes
# them, here), runs the CUDA tests and every GPU and many-core benchmark, each step under its
# own time limit, and writes JSON and logs into the folder it is given after each step, so a
# time limit still leaves what was measured.
#
# Time budget (seconds; each step is killed at its limit and the next one runs):
#   step      limit  expected  what
#   setup        30      15    unpack .whl/ into /tmp/site, versions, ffmpeg, nvidia-smi
#   tests        90      60    pytest -m cuda (every test file with a cuda mark; compile included)
#   extract     240     195    bench_extract, resnet50 bf16 batch 256 on 50,000 stored frames:
#                              forward-only, extract end to end with worker decode (libjpeg-turbo),
#                              --compile vs eager (first compile ~60 s), --gpus all and 2 shards
#                              + merge, profiler (5,000 frames), then nvjpeg decode (slow, ~35 s:
#                              a limit cuts it first)
#   clips        60      30    HOOK: r2plus1d_18 clips row, when bench_extract has --clips
#   ingest      110      80    bench_ingest --jobs-scaling <cores>: --jobs <cores> vs 1 over 64
#                              small videos; 16 frames/video and --keyframes on 5-min 720p vs
#                              full decode (videos generated first, ~15 s; best of 1)
#   total       530     380    (< 600 with the start-up). GPU_CHECK_STEPS="extract ingest" reruns
#   some steps only; GPU_CHECK_EXTRACT_ARGS / GPU_CHECK_INGEST_ARGS append flags (the last one
#   given wins), e.g. GPU_CHECK_INGEST_ARGS="--scaling-seconds 20" for longer small videos.
#
# The lead's device-tool call (after `bash benchmarks/gpu_wheels.sh` here):
#   run(command='BENCH_COMMIT=<git rev-parse HEAD here> bash benchmarks/gpu_check.sh "$OUT"',
#       carry=[".whl"], timeout_s=590)      (the copy there has no .git: the JSON's commit)
# then commit <files_at>/bench_extract_gpu_<card>.json and bench_ingest_<cores>c.json into
# benchmarks/results/. What comes back (7 files at most, the device tool takes 8):
#   gpu_check.log (every step's output), gpu_check_summary.json (per step: limit, seconds,
#   exit code, timed out), gpu_check_env.txt, bench_extract_gpu_<card>.json,
#   profile_extract.txt, bench_clips_<card>.json (hook), bench_ingest_<cores>c.json
#
#   usage: bash benchmarks/gpu_check.sh [OUTDIR] [--dry]     (OUTDIR, else $OUT, else
#          benchmarks/results/gpu_check; PYTHON=... picks python)
#   --dry or GPU_CHECK_DRY=1: every step tiny, on this machine's CPU, skipping (with a note)
#          what needs CUDA: proves the script end to end in a few minutes (tests/test_benchmarks.py)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY:-0}
ARGS=()
for a in "$@"; do
    if [[ "$a" == "--dry" ]]; then DRY=1; else ARGS+=("$a"); fi
done
OUT=${ARGS[0]:-${OUT:-benchmarks/results/gpu_check}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
STEPS=" ${GPU_CHECK_STEPS:-setup tests extract clips ingest} "
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)  # caches and scratch: never in $OUT (8 files back)
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/gpu_check_summary.json"
# the package from this checkout first, then the carried wheels; the machine's own torch stays
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: >"$LOG"
ENTRIES=""
START=$(date +%s.%N)

note() { echo "note: $*" | tee -a "$LOG"; }

save_summary() {  # rewritten after every step
    local total
    total=$(echo "$(date +%s.%N) - $START" | bc)
    printf '{"dry": %s, "total_s": %.1f, "out": "%s", "steps": [%s]}\n' \
        "$([[ $DRY == 1 ]] && echo true || echo false)" "$total" "$OUT" "$ENTRIES" >"$SUMMARY"
}

step() {  # step NAME LIMIT_S COMMAND...: run it under its own timeout, log it, record it
    local name=$1 limit=$2
    shift 2
    if [[ "$STEPS" != *" $name "* ]]; then
        note "step $name not in GPU_CHECK_STEPS: skipped"
        return 0
    fi
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local t0 rc dt
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    dt=$(echo "$(date +%s.%N) - $t0" | bc)
    printf '== %s: exit %s after %.1f s%s\n' "$name" "$rc" "$dt" \
        "$([[ $rc == 124 || $rc == 137 ]] && echo " (TIMED OUT)")" | tee -a "$LOG"
    ENTRIES+="${ENTRIES:+, }$(printf '{"name": "%s", "limit_s": %s, "seconds": %.1f, "rc": %s, "timed_out": %s}' \
        "$name" "$limit" "$dt" "$rc" "$([[ $rc == 124 || $rc == 137 ]] && echo true || echo false)")"
    save_summary
    [[ $rc == 0 ]] || STATUS=1
}

install_wheels() {  # .whl/site.tar.xz (packed by gpu_wheels.sh) and/or .whl/*.whl -> $SITE
    mkdir -p "$SITE"
    if [[ -f .whl/site.tar.xz ]]; then
        "$PY" - "$SITE" <<'PY' || return 1
import sys, tarfile
with tarfile.open(".whl/site.tar.xz") as tf:
    try:
        tf.extractall(sys.argv[1], filter="data")  # keeps the owner's exec bit (ffmpeg)
    except TypeError:  # a Python without extraction filters
        tf.extractall(sys.argv[1])
print("unpacked .whl/site.tar.xz into", sys.argv[1])
PY
    fi
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" .whl/*.whl || return 1
        echo "installed $(ls .whl/*.whl | wc -l) wheels into $SITE"
    fi
    if [[ ! -f .whl/site.tar.xz ]] && ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "note: no .whl/ here: using the packages this python already has"
    fi
}

setup() {
    if [[ $DRY == 1 ]]; then  # .whl/ holds the GPU machine's cp312 wheels: list, don't install
        echo "note: dry run: .whl/ is not installed here ($(ls .whl 2>/dev/null | tr '\n' ' '))"
    else
        install_wheels || return 1
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv
    local rc=0
    "$PY" - <<'PY' || rc=1
import importlib, os, subprocess
for m in ("torch", "torchvision", "numpy", "h5py", "pandas", "pyarrow", "PIL", "av",
          "imageio_ffmpeg", "ffmpeg", "simplejpeg", "tqdm", "pytest", "vidfeat"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), os.path.dirname(mod.__file__ or ""))
    except ImportError as exc:
        print(m, "MISSING", exc)
import torch
from vidfeat.media import ffmpeg_exe
exe = ffmpeg_exe()
print("ffmpeg", exe, subprocess.run([exe, "-version"], capture_output=True,
                                    text=True).stdout.split("\n")[0])
cuda = torch.cuda.is_available()
print("cuda", cuda, torch.cuda.get_device_name(0) if cuda else "-", "bf16",
      cuda and torch.cuda.is_bf16_supported(), "cores", len(os.sched_getaffinity(0)),
      "torch threads", torch.get_num_threads())
PY
    df -h /dev/shm /tmp 2>&1  # decoded batches travel through /dev/shm
    return $rc
}

STATUS=0
export -f setup install_wheels
export PY SITE DRY
step setup 30 bash -c setup
cp "$LOG" "$OUT/gpu_check_env.txt"
CARD=$("$PY" -c 'import re, torch
n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
m = re.findall(r"[A-Z]+\d+[A-Za-z]*", n)
print((m[-1] if m else n.split()[-1]).lower())' 2>/dev/null || echo unknown)
CORES=$(nproc)
CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
[[ $CUDA == 1 ]] || note "no CUDA here: the CUDA tests skip, GPU rows are skipped or run tiny on the CPU"

# --- CUDA tests: every test file with a cuda mark (skipped, with pytest's note, without CUDA)
CUDA_TESTS=$(grep -l "mark.cuda" tests/test_*.py | tr '\n' ' ')
step tests 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda $CUDA_TESTS

# --- bench_extract: resnet50 bf16 at batch 256; --clips 0 here where the clips row exists
HAS_CLIPS=0
"$PY" benchmarks/bench_extract.py --help 2>/dev/null | grep -q -- "--clips" && HAS_CLIPS=1
NO_CLIPS=()
[[ $HAS_CLIPS == 1 ]] && NO_CLIPS=(--clips 0)
if [[ $DRY == 1 ]]; then
    SIZES=(--gpu-frames 64 --rows-backbone resnet18 --cpu-rows-frames 24 --cpu-rows-batch 8
           --profile-frames 24 --resample-frames 32)
else
    # nvjpeg (decode=gpu, ~1,900 frames/s on an H100: ~35 s here) last: a limit cuts it first
    SIZES=(--gpu-frames "${GPU_FRAMES:-50000}" --profile-frames 5000 --late-decodes gpu
           --resample-frames 400)  # one worker core's rate, uint8 vs float resize (~3 s)
fi
step extract 240 "$PY" benchmarks/bench_extract.py --cpu-frames 0 --checksum-frames 0 \
    "${SIZES[@]}" --compile --gpus-all --profile-out "$OUT/profile_extract.txt" \
    "${NO_CLIPS[@]}" --json "$OUT/bench_extract_gpu_$CARD.json" ${GPU_CHECK_EXTRACT_ARGS:-}

# --- HOOK (issue 14, clip backbones): bench_extract's `--clips N` (from clip-models: r2plus1d_18
# clips/s, extract end to end vs the plain loop, on the CPU and then on CUDA; no forward-only
# clips row yet, which issue 14's ">= 0.8x of forward" needs). Runs when the flag exists;
# GPU_CHECK_CLIPS sets N. Adjust here if that row's flags change.
if [[ $HAS_CLIPS == 1 ]]; then
    step clips 60 "$PY" benchmarks/bench_extract.py --cpu-frames 0 --checksum-frames 0 \
        --resample-frames 0 \
        --gpu-frames 0 --clips "${GPU_CHECK_CLIPS:-$([[ $DRY == 1 ]] && echo 2 || echo 16)}" \
        --json "$OUT/bench_clips_$CARD.json"
else
    note "hook: bench_extract.py has no --clips yet (branch clip-models): clips row skipped"
fi

# --- ingest on every core: whole commands, start-up included; videos cached under $WORK
if [[ $DRY == 1 ]]; then
    INGEST=(--jobs-scaling 2 --scaling-videos 4 --scaling-seconds 1 --scaling-size 160x96
            --minutes 0.1)
else
    INGEST=(--jobs-scaling "$CORES" --scaling-videos 64 --scaling-seconds 10
            --scaling-size 640x360 --minutes 5)
fi
step ingest 110 "$PY" benchmarks/bench_ingest.py "${INGEST[@]}" --repeat 1 \
    --cache "$WORK/ingest" --json "$OUT/bench_ingest_${CORES}c.json" ${GPU_CHECK_INGEST_ARGS:-}

save_summary
rm -rf "$WORK"
echo "gpu_check: $(ls "$OUT" | wc -l) files in $OUT; exit $STATUS" | tee -a "$LOG"
exit $STATUS
