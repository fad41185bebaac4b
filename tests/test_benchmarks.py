"""benchmarks/gpu_check.sh end to end in its dry mode: every step tiny on this CPU, real
processes (pytest, bench_extract, bench_ingest with generated videos), JSON checked."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 1.5 to 3 minutes on 2 cores (torch.compile of resnet18, r2plus1d_18, ingests)
def test_gpu_check_dry_run_writes_every_result_within_the_device_tools_limits(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SITE": str(tmp_path / "site")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # what the device tool brings back: at most 8 plain files, plain names, no folders
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert all((out / f).is_file() for f in files)

    summary = json.loads((out / "gpu_check_summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["dry"] is True and {"setup", "tests", "extract", "ingest"} <= set(steps)
    assert all(s["rc"] == 0 and not s["timed_out"] for s in steps.values()), steps
    assert sum(s["seconds"] for s in steps.values()) <= summary["total_s"] + 1

    log = (out / "gpu_check.log").read_text()
    assert "needs a CUDA GPU" in log or " passed" in log  # pytest -m cuda ran (skips on CPU)

    [extract_json] = out.glob("bench_extract_gpu_*.json")
    ex = json.loads(extract_json.read_text())
    c = ex["compile"]
    assert c["forward_eager_fps"] > 0 and c["forward_compiled_fps"] > 0
    assert c["ratio_forward_compiled_vs_eager"] == pytest.approx(
        c["forward_compiled_fps"] / c["forward_eager_fps"])
    assert c["max_rel_diff"] <= 1e-4 and c["within_tolerance"]  # fp32 on the CPU
    g = ex["gpus_all"]
    assert g["frames"] == 24 and g["max_rel_diff_vs_single"] <= 1e-4
    m = g["two_shards_merged"]
    assert m["rows"] == 24 and m["max_rel_diff_vs_single"] <= 1e-4
    assert ex["profile"]["top"] and (out / "profile_extract.txt").stat().st_size > 0

    if "clips" in steps:  # the hook ran bench_extract's clip row (r2plus1d_18, 2 clips)
        [clips_json] = out.glob("bench_clips_*.json")
        c = json.loads(clips_json.read_text())["clips"]["cpu"]
        assert c["clips"] == 2 and c["vidfeat_clips_per_s_end_to_end"] > 0

    [ingest_json] = out.glob("bench_ingest_*c.json")
    rows = {r["name"].split(" (")[0]: r for r in json.loads(ingest_json.read_text())["ratios"]}
    assert set(rows) == {"--jobs 2 speed-up over --jobs 1", "16 frames/video vs full decode",
                         "--keyframes vs full decode"}
    # 4 small videos and the 4 720p ones, 16 frames each; every timing positive
    assert rows["--jobs 2 speed-up over --jobs 1"]["frames"] == 4 * 16
    assert rows["16 frames/video vs full decode"]["frames"] == 4 * 16
    assert all(r["ours_s"] > 0 and r["other_s"] > 0 and r["ratio"] > 0 for r in rows.values())
