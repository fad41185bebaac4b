"""Clip rows: a clip ingest's frames grouped into the clips a clip backbone takes.

A clip ingest's ``frames`` table (see ``manifests/schema.md``) has ``clip_id``, ``clip_pos`` and
``padded``; the rows of one clip are consecutive, ordered by ``clip_pos``, ``clip_len`` of them.
A clip backbone's feature file has one row per clip, in that order: ``/frame_id`` is the clip's
key ``<video_id>@clip<k>`` (k: its place among its video's clips, so keys survive other videos
coming and going), ``/file_hash`` the hash of its frames' hashes (an update keeps a clip whose
frames are byte for byte the same), ``/clip_id``, ``/start_s`` and ``/end_s`` its id and span.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vidfeat.extraction.backbones import backbone_kind
from vidfeat.extraction.video_backbones import check_clip_len


def is_clip_manifest(m) -> bool:
    """Whether ingest manifest ``m`` holds clips (``Manifest.clips``, else its columns)."""
    return bool(getattr(m, "clips", False)) or "clip_id" in m.frames.columns


def check_fits(m, backbone: str) -> str:
    """"clip" or "frame": what ``backbone`` makes of manifest ``m``; a clip backbone on a frame
    ingest (or clips of a length the model cannot take) is a one-line ValueError."""
    kind = backbone_kind(backbone)
    if kind == "clip":
        if not is_clip_manifest(m):
            raise ValueError(f"backbone {backbone} is a clip (video) model and {m.root} holds "
                             "single frames: ingest with --clips-per-video K (--clip-len T "
                             "--clip-fps F), then extract that folder")
        check_clip_len(backbone, clip_len(m))
    return kind


def file_rows(m, backbone: str) -> tuple[int, str]:
    """(rows, unit) of ``backbone``'s feature file of manifest ``m``: clips or frames."""
    if backbone_kind(backbone) == "clip" and is_clip_manifest(m):
        return len(clip_starts(m)), "clip"
    return len(m.frames), "frame"


def clip_len(m) -> int:
    """Frames per clip of clip manifest ``m``."""
    recorded = getattr(m, "clip_len", None)
    if recorded is not None:
        return int(recorded)
    ids = m.frames["clip_id"].to_numpy()
    return int((ids == ids[0]).sum()) if len(ids) else 1


def clip_fps(m) -> float:
    """The clip frame rate recorded in ``m``'s sampling (default 15, the contract's)."""
    return float((m.info.get("sampling") or {}).get("clip_fps") or 15.0)


def clip_starts(m) -> np.ndarray:
    """Frame-table row of each clip's first frame, in table order."""
    ids = m.frames["clip_id"].to_numpy()
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)


def clip_table(m) -> pd.DataFrame:
    """One row per clip of ``m``, with its video_id: what ``shard_rows`` splits (whole videos)."""
    starts = clip_starts(m)
    return pd.DataFrame({"video_id": m.frames["video_id"].to_numpy()[starts]})


def _combined_hash(hashes: np.ndarray, length: int) -> np.ndarray:
    """One hash per clip over its frames' hashes in order ("" when any is unknown: a clip
    whose bytes cannot be proven unchanged is never reused)."""
    from vidfeat.files import hash_bytes

    per_clip = hashes.reshape(-1, length)
    return np.asarray(["" if not all(h) else hash_bytes("|".join(h).encode())
                       for h in per_clip.tolist()], dtype=object)


def clip_meta(m, rows: np.ndarray, class_index: dict) -> pd.DataFrame:
    """The file rows of clips ``rows`` (indices into :func:`clip_table`) of clip manifest ``m``.

    ``class_index``: class name -> label index. Columns: those of a frame file's rows (frame_id
    the clip key, row the clip index, file_hash over its frames), ``clip_id``, ``start_s``,
    ``end_s``, and ``paths``/``hashes``: the clip's JPEGs in clip order (input, not stored).
    """
    length, f = clip_len(m), m.frames
    starts = clip_starts(m)
    first = f.iloc[starts[rows]]
    frame_rows = (starts[rows][:, None] + np.arange(length)).ravel()
    paths = f["path"].astype(str).to_numpy()[frame_rows]
    hashes = (f["file_hash"].fillna("").astype(str).to_numpy()[frame_rows]
              if "file_hash" in f.columns else np.full(len(frame_rows), "", dtype=object))
    last_t = f["timestamp_s"].to_numpy(np.float64)[frame_rows].reshape(-1, length)[:, -1]
    video_ids = first["video_id"].astype(str).to_numpy()
    clip_videos = f["video_id"].astype(str).to_numpy()[starts]  # every clip's, not only rows'
    place = pd.Series(clip_videos).groupby(clip_videos).cumcount().to_numpy()[rows]
    return pd.DataFrame({
        "frame_id": [f"{v}@clip{k}" for v, k in zip(video_ids, place)],
        "video_id": video_ids, "label": first["label"].map(class_index).to_numpy(np.int64),
        "split": first["split"].astype(str).to_numpy(),
        "repeat": first["repeat"].to_numpy(np.int64), "row": rows.astype(np.int64),
        "file_hash": _combined_hash(hashes, length),
        "clip_id": first["clip_id"].to_numpy(np.int64),
        "start_s": first["timestamp_s"].to_numpy(np.float64),
        "end_s": last_t + 1.0 / clip_fps(m),
        "paths": list(paths.reshape(-1, length)), "hashes": list(hashes.reshape(-1, length))})


def flat_inputs(meta: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Every JPEG path and hash of ``meta``'s clips, clip after clip (what the loader reads)."""
    if not len(meta):
        return [], []
    return (np.concatenate(meta["paths"].to_list()).tolist(),
            np.concatenate(meta["hashes"].to_list()).tolist())
