#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh, downloaded HERE (where pip reaches the package registry)
# into .whl/ (git-ignored), before the device-tool call that carries them (carry=[".whl"]).
#
# The lent GPU machine (nvidia-h200: CPython 3.12, x86-64, no internet) has torch, torchvision,
# h5py, pandas, pyarrow, pillow, tqdm, scikit-learn, pytest, but none of: av (PyAV: ingest's
# decoder), ffmpeg-python (+ future: synth's command lines), imageio-ffmpeg (a static ffmpeg
# binary: the benchmark's test videos), and simplejpeg when pyproject.toml lists it. Only those
# are fetched, one pinned version each (two versions of one package stop the whole install),
# cp312/py3 manylinux x86_64, without dependencies (each needed one is named here).
#
#   usage: bash benchmarks/gpu_wheels.sh        (PYTHON=... picks the python whose pip runs;
#          the working tree that travels must stay under 64 MiB: this prints the total)
# Measured 2026-12-02: the wheels (simplejpeg included) are 63.1 MiB as zip files, over the
# limit, so they are packed into .whl/site.tar.xz, 41.9 MiB (xz -9: 3 to 11 minutes on 2 busy
# cores; unpacking it with Python 3.12's tarfile takes ~6 s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
LIMIT_MIB=${WHEEL_LIMIT_MIB:-50}
# av, ffmpeg-python, future, simplejpeg: the versions the tests run with here. imageio-ffmpeg
# 0.6.0 (ffmpeg 7.0.2, 28 MiB), not 0.8.1 (68 MiB): its binary only makes the test videos and
# runs the full-decode baseline. Override with e.g. AV=av==14.4.0
PKGS=("${AV:-av==18.1.0}" "${FFMPEG_PYTHON:-ffmpeg-python==0.2.0}" "${FUTURE:-future==1.0.0}"
      "${IMAGEIO_FFMPEG:-imageio-ffmpeg==0.6.0}")
if grep -q '"simplejpeg' pyproject.toml; then
    PKGS+=("${SIMPLEJPEG:-simplejpeg==1.9.0}")
fi
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
rm -rf "$DEST" && mkdir -p "$DEST/dl"
for pkg in "${PKGS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$DEST/dl" "$pkg"
done
ls -l "$DEST/dl"
mib() { echo "scale=1; $1 / 1048576" | bc; }
total=$(du -cb "$DEST"/dl/*.whl | tail -1 | cut -f1)
echo "wheels: $(mib "$total") MiB"
if (( total <= LIMIT_MIB * 1048576 )); then
    mv "$DEST"/dl/*.whl "$DEST"/ && rmdir "$DEST/dl"
else
    # av (~34 MiB, its ffmpeg libraries) + imageio-ffmpeg (~28 MiB, a static ffmpeg) are over
    # the limit as zip files; unpacked into one site folder and xz-compressed they are ~42 MiB.
    # gpu_check.sh unpacks site.tar.xz into /tmp/site with Python's tarfile (no xz needed there).
    echo "over ${LIMIT_MIB} MiB as wheels: packing them into $DEST/site.tar.xz (a few minutes)"
    mkdir -p "$DEST/site"
    for w in "$DEST"/dl/*.whl; do
        "$PY" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for info in z.infolist():  # keep the executable bit (the ffmpeg binary): extractall drops it
    path = z.extract(info, sys.argv[2])
    mode = info.external_attr >> 16
    if mode & 0o111:
        import os; os.chmod(path, mode & 0o777)' "$w" "$DEST/site"
    done
    tar -C "$DEST/site" -cf - . | xz -9 -T0 > "$DEST/site.tar.xz"
    rm -rf "$DEST/site" "$DEST/dl"
fi
ls -l "$DEST"
total=$(du -cb "$DEST"/* | tail -1 | cut -f1)
echo "total $(mib "$total") MiB in $DEST (carry it: run(..., carry=[\".whl\"]))"
if (( total > LIMIT_MIB * 1048576 )); then
    echo "over ${LIMIT_MIB} MiB: the working tree that travels is limited to 64 MiB" >&2
    exit 1
fi
