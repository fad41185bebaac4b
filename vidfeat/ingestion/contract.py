"""The manifest contract, shared by the pandas read side and the pandas-free write side: each
table's columns and their pandas dtypes, the allowed splits and statuses, ``ManifestError``."""
from __future__ import annotations

SPLITS = ("train", "val", "test")
# the one split of an unlabelled ingest; its videos' label is "" (scan.UNLABELLED)
UNLABELLED_SPLIT = "all"
MANIFEST_SPLITS = (*SPLITS, UNLABELLED_SPLIT)
STATUSES = ("ok", "failed")
FORMATS = {"parquet": ".parquet", "csv": ".csv"}

# column -> pandas dtype. Required columns first; optional ones may be absent.
VIDEO_COLUMNS: dict[str, str] = {
    "video_id": "string",   # POSIX relative path derived from the source path; unique
    "path": "string",       # absolute path of the source video
    "label": "string",
    "split": "string",      # train | val | test, or all (unlabelled); empty for failed videos
    "status": "string",     # ok | failed
    "error": "string",      # one-line reason when failed, else empty
    "duration_s": "float64",
    "fps": "float64",       # nominal (r_frame_rate)
    "width": "Int64",       # display size, rotation applied
    "height": "Int64",
    "n_frames": "Int64",    # frames stored for this video
    "repeat": "Int64",      # oversampling factor; 0 = dropped by undersampling, 1 = as is
}
VIDEO_OPTIONAL: dict[str, str] = {
    "avg_fps": "float64",
    "vfr": "boolean",
    "frame_count": "Int64",
    "rotation": "Int64",
    "codec": "string",
    "has_audio": "boolean",
    "source_hash": "string",          # vidfeat.files.source_hash of the source file
    "duration_header_s": "float64",   # the header's duration when the stream contradicted it
    "warning": "string",              # e.g. why duration_s is not the header's
    "elapsed_s": "float64",
    "size_bytes": "Int64",   # the source file's identity when it was ingested
    "mtime_ns": "Int64",
    "device": "Int64",
    "inode": "Int64",
}
FRAME_COLUMNS: dict[str, str] = {
    "frame_id": "string",     # f"{video_id}#{frame_index}"; unique
    "video_id": "string",
    "label": "string",
    "split": "string",
    "frame_index": "int64",   # index of the frame in the video's decode order
    "timestamp_s": "float64", # presentation time of that frame
    "path": "string",         # JPEG path relative to OUTDIR
    "repeat": "int64",        # copy of the video's repeat (oversampling weight)
}
# written by every ingest; optional when reading (hand-made manifests, older vidfeat)
FRAME_PROVENANCE: dict[str, str] = {
    "file_bytes": "Int64",    # length of the stored JPEG
    "file_hash": "string",    # vidfeat.files.hash_bytes of its bytes, taken before writing
}
# a clip ingest's frames (ingest.json's sampling has clips_per_video); absent otherwise
FRAME_CLIP: dict[str, str] = {
    "clip_id": "int64",       # unique in the dataset; a clip's rows are consecutive
    "clip_pos": "int64",      # 0 .. clip_len - 1, in order
    "padded": "boolean",      # the row repeats the last frame of a video shorter than a clip
}
INFO = "ingest.json"


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or inconsistent; the message names the culprit."""


def sampling_clips(info: dict) -> bool:
    """Whether ``info`` (``ingest.json``'s content) records a clip ingest (``clips_per_video``)."""
    return (info.get("sampling") or {}).get("clips_per_video") is not None
