"""When and from which commit a benchmark's figures come, for its JSON (shared by the scripts)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def provenance() -> dict:
    """When and from which commit the figures come: outside a git checkout (the copy of the
    working tree a GPU machine gets) ``$BENCH_COMMIT`` if set, else None."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None
    commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    commit = commit or os.environ.get("BENCH_COMMIT") or None
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
            "uncommitted_changes": None if dirty is None else bool(dirty)}
