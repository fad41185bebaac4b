"""The HDF5 feature file: building it safely, reading it (``FeatureStore``), merging shards.

Layout (all row datasets in ``frames.parquet`` order)::

    /features (N, D) float16|float32   /frame_id /video_id /split (str)   /label /repeat /row (int64)
    /videos/features (V, D)  mean of each video's frame features, videos in first-frame order
    /videos/video_id /videos/split (str)   /videos/label /videos/repeat /videos/n_frames (int64)

``/row`` is each frame's index in ``frames.parquet`` (shards hold a subset; a clip file: per clip,
its index among the clips, and ``/clip_id /start_s /end_s``). Root attributes describe the
backbone, preprocessing, precision, manifest fingerprint and shard; ``complete`` and
``attrs_sha256`` are set last. A file is only ever built under a temporary name and renamed into
place once complete, so a killed writer never leaves a file that looks finished; readers also
refuse ``complete=False``.

Integrity. Every dataset is chunked with the fletcher32 checksum filter and strings are stored
fixed-length (variable-length strings live in the global heap, which no filter covers), so a
flipped bit in any stored value fails the read: every reader turns that into one
``CorruptFeatureFile`` line. Attributes are covered by ``attrs_sha256`` (sha256 of the canonical
JSON of all other attributes), checked on open. A full disk while building is one ``StorageError``
(the temporary file closed once and removed).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import pandas as pd

from vidfeat.extraction.integrity import (
    CLIP_DATASETS,
    DERIVED_ATTRS,
    FRAME_DATASETS,
    RE_EXTRACT,
    VIDEO_DATASETS,
    CorruptFeatureFile,
    attrs_digest,
    features_fingerprint,
    mean_problems,
    plain_attr,
    read_error,
    storage_errno,
    table_problems,
)
from vidfeat.files import FileLock, StorageError, check_output

REQUIRED_ATTRS = ("class_names", "backbone", "weights", "feature_dim", "manifest_fingerprint",
                  "complete")
JSON_ATTRS = ("class_names", "sampling")
# attributes that must agree between shards of one extraction
SHARD_INVARIANTS = ("backbone", "weights", "weights_sha256", "feature_dim", "input_size", "mean",
                    "std", "resize_size", "interpolation", "resample", "precision", "dtype",
                    "manifest_fingerprint", "class_names", "shard_count", "manifest_frames")
LEVELS = ("frame", "video")
# per-row strings written when the caller has them: file_hash, the hash of the JPEG bytes each
# row's features were computed from (extract keeps unchanged rows when the manifest changes)
OPTIONAL_STRINGS = ("file_hash",)
_NUMERIC = {"label": "int64", "repeat": "int64", "row": "int64", **CLIP_DATASETS}


@dataclass
class FeatureSet:
    """Features and labels of one split at one level, as numpy arrays."""

    X: np.ndarray                 # (n, D) float32
    y: np.ndarray                 # (n,) int64 class index
    video_id: np.ndarray          # (n,) str
    frame_id: np.ndarray | None   # (n,) str at frame level, None at video level
    repeat: np.ndarray            # (n,) int64 oversampling weight

    def __len__(self) -> int:
        return len(self.y)


# ----------------------------------------------------------------------------------- locking
def output_lock(output: str | os.PathLike) -> FileLock:
    """The lock every writer of ``output`` holds: ``<output>.lock`` (see ``vidfeat.files``)."""
    return FileLock(f"{os.fspath(output)}.lock", what=os.fspath(output))


# ----------------------------------------------------------------------------------- writing
def _strings(values, checksums: bool = True) -> np.ndarray:
    """UTF-8 strings, fixed length (so fletcher32 covers their bytes) unless ``checksums`` is off."""
    if not checksums:
        return np.asarray([str(v) for v in values], dtype=object)
    encoded = [str(v).encode() for v in values]
    length = max(map(len, encoded), default=1) or 1
    return np.asarray(encoded, dtype=h5py.string_dtype("utf-8", length))


def _attr_value(value):
    if isinstance(value, (list, dict)) and not (isinstance(value, list) and value
                                                and all(isinstance(v, float) for v in value)):
        return json.dumps(value)
    return value


def video_table(meta: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Videos of ``meta`` in first-frame order, and each frame's index into that table."""
    codes, uniques = pd.factorize(meta["video_id"], sort=False)
    first = meta.groupby(codes, sort=True).head(1)
    videos = pd.DataFrame({"video_id": uniques.astype(str), "label": first["label"].to_numpy(),
                           "split": first["split"].to_numpy(),
                           "repeat": first["repeat"].to_numpy(),
                           "n_frames": np.bincount(codes, minlength=len(uniques))})
    return videos, codes


def _add_by_group(sums: np.ndarray, codes: np.ndarray, block: np.ndarray) -> None:
    """sums[c] += rows of ``block`` with code c (sort + reduceat: np.add.at is far slower)."""
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    sums[c[starts]] += np.add.reduceat(block[order], starts, axis=0)


def _close_discarding(f: h5py.File) -> None:
    """Close ``f``, whose contents are being thrown away, without touching its disk again.

    After a failed write (disk full) HDF5's close flushes into the same full disk, fails, and
    the library's exit handler later closes it again and crashes. Its file descriptor is first
    pointed at an anonymous memory file, so the final flush succeeds and goes nowhere.
    """
    with contextlib.suppress(Exception):
        if hasattr(os, "memfd_create") and f.driver == "sec2":
            mem = os.memfd_create("vidfeat-discarded")
            os.dup2(mem, f.id.get_vfd_handle())
            os.close(mem)
    with contextlib.suppress(Exception):
        f.close()


class FeatureFileBuilder:
    """Writes a feature file under a temporary name; ``finish`` makes it final and visible.

    ``meta`` has one row per frame (frame_id, video_id, label, split, repeat, row) in file
    order. Call ``write(start, block)`` until every row has features, then ``finish(attrs)``.
    ``checksums=False`` writes the older layout (no fletcher32, variable-length strings); only
    the benchmark that prices the checksums uses it. Environmental OSErrors (disk full...) are
    raised as ``StorageError`` after the temporary file is closed and removed; any failure
    leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike, meta: pd.DataFrame, feature_dim: int, *,
                 dtype: str, chunk_rows: int = 256, checksums: bool = True):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.meta = meta.reset_index(drop=True)
        self.checksums = checksums
        self.f: h5py.File | None = None
        self._datasets: list = []  # held open until close: a dropped one flushes unchecked
        n = len(self.meta)
        with self._guard():
            self.f = h5py.File(self.tmp, "w")
            chunks = (max(1, min(n, chunk_rows)), feature_dim) if n else True
            self.features = self._dataset(self.f, "features", shape=(n, feature_dim),
                                          dtype=dtype, chunks=chunks)
            for col in ("frame_id", "video_id", "split", *OPTIONAL_STRINGS):
                if col in self.meta.columns:
                    self._dataset(self.f, col, data=_strings(self.meta[col], checksums))
            for col in (c for c in _NUMERIC if c in self.meta.columns):  # clips: clip_id...
                self._dataset(self.f, col, data=self.meta[col].to_numpy(_NUMERIC[col]))

    def _dataset(self, group, name: str, **kwargs):
        if self.checksums:
            kwargs.setdefault("chunks", True)
            kwargs["fletcher32"] = True
        ds = group.create_dataset(name, **kwargs)
        self._datasets.append(ds)
        return ds

    @contextlib.contextmanager
    def _guard(self):
        """Abort on any failure; an environmental OSError becomes one ``StorageError``."""
        try:
            yield
        except BaseException as exc:
            self.abort()
            code = storage_errno(exc)
            if code is not None and not isinstance(exc, StorageError):
                raise StorageError(code, self.path) from exc
            raise

    def write(self, start: int, block: np.ndarray) -> None:
        """Store ``block`` as the feature rows from ``start`` on."""
        with self._guard():
            self.features[start:start + len(block)] = block

    def _write_videos(self, chunk_rows: int = 65536) -> None:
        videos, codes = video_table(self.meta)
        dim = self.features.shape[1]
        sums = np.zeros((len(videos), dim), np.float64)
        for start in range(0, len(codes), chunk_rows):
            block = self.features[start:start + chunk_rows].astype(np.float64)
            _add_by_group(sums, codes[start:start + chunk_rows], block)
        means = sums / np.maximum(videos["n_frames"].to_numpy(), 1)[:, None]
        g = self.f.create_group("videos")
        self._dataset(g, "features", data=means.astype(self.features.dtype))
        for col in ("video_id", "split"):
            self._dataset(g, col, data=_strings(videos[col], self.checksums))
        for col in ("label", "repeat", "n_frames"):
            self._dataset(g, col, data=videos[col].to_numpy(np.int64))

    def _write_attrs(self, attrs: dict) -> None:
        """``attrs``, then the derived ones: features_fingerprint, complete, attrs_sha256 last."""
        for key, value in attrs.items():
            if key not in DERIVED_ATTRS:
                self.f.attrs[key] = _attr_value(value)
        self.f.attrs["features_fingerprint"] = features_fingerprint(self.f.attrs)
        self.f.attrs["complete"] = True
        self.f.attrs["attrs_sha256"] = attrs_digest(self.f.attrs)

    def finish(self, attrs: dict) -> Path:
        """Compute video means, write attributes, set ``complete`` last, fsync and rename.

        ``attrs``: the root attributes (lists and dicts stored as JSON). Returns the path.
        """
        with self._guard():
            self._write_videos()
            self._write_attrs(attrs)
            self.f.flush()  # every write error surfaces here, not in a silent close
            self.f.close()
            self.f = None
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close (once) and remove the temporary file; safe to call again."""
        f, self.f = self.f, None
        if f is not None:
            _close_discarding(f)
        self._datasets.clear()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


# ----------------------------------------------------------------------------------- reading
def _decode_attr(key: str, value):
    if isinstance(value, bytes):
        value = value.decode()
    if key in JSON_ATTRS and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else v.item() for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _not_a_feature_file(path: Path) -> Exception:
    """What to say when ``path`` is no feature file: what it is instead, and what to run."""
    from vidfeat.extraction.partial import partial_dir

    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if names & {"ingest.json", "videos.parquet", "videos.csv"}:
            return ValueError(f"{path} is an ingest folder, not a feature file: run `vidfeat "
                              f"extract {path} -o FEATURES.h5` first and give FEATURES.h5")
        if "head.pt" in names:
            return ValueError(f"{path} is a model folder (from `vidfeat train`), not a feature file")
        return ValueError(f"{path} is a folder, not a feature file (.h5 from `vidfeat extract`)")
    if partial_dir(path).is_dir():
        return FileNotFoundError(f"{path} is not finished: its extraction was interrupted (or "
                                 "is still running); rerun the same `vidfeat extract` command to "
                                 "resume it")
    return FileNotFoundError(f"feature file not found: {path}")


class FeatureStore:
    """Read-only view of a complete feature file; a context manager.

    Raises FileNotFoundError for a missing path and ValueError naming what is wrong for a file
    that is not HDF5, not a vidfeat feature file, lacks a dataset, or is incomplete;
    ``CorruptFeatureFile`` (a ValueError) when its attributes or, on any read, its data fail
    their checksums.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise _not_a_feature_file(self.path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            if storage_errno(exc) is not None:
                raise read_error(self.path, "", exc) from exc
            raise ValueError(f"{self.path} is not a readable HDF5 file: {exc}") from None
        try:
            self._check()
            self.attrs = {k: _decode_attr(k, v) for k, v in self._f.attrs.items()}
        except BaseException:
            self._f.close()
            raise
        self.class_names: list[str] = list(self.attrs["class_names"])
        self.feature_dim = int(self.attrs["feature_dim"])
        self.backbone = str(self.attrs["backbone"])
        self.fingerprint = str(self.attrs["manifest_fingerprint"])

    def _check(self) -> None:
        try:
            self._check_layout()
            raw = dict(self._f.attrs)
        except (OSError, RuntimeError, KeyError) as exc:  # damaged metadata
            raise read_error(self.path, "the file's metadata", exc) from exc
        stored = raw.get("attrs_sha256")  # files of older versions have none
        if stored is not None and plain_attr(stored) != attrs_digest(raw):
            raise CorruptFeatureFile(self.path, "attributes do not match attrs_sha256")

    def _check_layout(self) -> None:
        f = self._f
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise ValueError(f"{self.path} is not a vidfeat feature file "
                             f"(attribute {missing[0]!r} missing)")
        if not bool(f.attrs["complete"]):
            raise ValueError(f"{self.path} is incomplete (complete=False): its writer did not "
                             "finish; rerun the extraction to resume it")
        wanted = [*FRAME_DATASETS, *(f"videos/{d}" for d in VIDEO_DATASETS)]
        absent = [d for d in wanted if d not in f]
        if absent:
            raise ValueError(f"{self.path}: dataset /{absent[0]} missing")
        n = f["features"].shape[0]
        short = [d for d in FRAME_DATASETS if f[d].shape[0] != n]
        if short:
            raise ValueError(f"{self.path}: dataset /{short[0]} has {f[short[0]].shape[0]} rows, "
                             f"/features has {n}")

    def __len__(self) -> int:
        return int(self._f["features"].shape[0])

    @property
    def n_videos(self) -> int:
        return int(self._f["videos/features"].shape[0])

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, frames={len(self)}, videos={self.n_videos}, "
                f"backbone={self.backbone!r}, dim={self.feature_dim})")

    @property
    def features_fingerprint(self) -> str:
        """What decided the features (see ``features_fingerprint``); equal values, equal
        features. Files written before it existed give their ``manifest_fingerprint``."""
        return str(self.attrs.get("features_fingerprint") or self.fingerprint)

    def _read(self, ds, sel=...) -> np.ndarray:
        """``ds[sel]`` (strings as str); a failed read is ``CorruptFeatureFile``."""
        try:
            return ds.asstr()[sel] if h5py.check_string_dtype(ds.dtype) else ds[sel]
        except (OSError, RuntimeError) as exc:  # h5py: "filter returned failure during read"
            raise read_error(self.path, ds.name, exc) from exc

    def column(self, name: str, *, level: str = "frame") -> np.ndarray:
        """A whole per-row dataset (``split``, ``video_id``, ``row``…) as numpy.

        ``name``: the dataset. ``level``: "frame" (root datasets) or "video" (``/videos``).
        """
        return self._read(self._group(level)[name])

    def optional_column(self, name: str) -> np.ndarray | None:
        """A per-frame dataset that older files may lack (``file_hash``), or None."""
        return self.column(name) if name in self._f else None

    def feature_rows(self, start: int, stop: int, *, level: str = "frame") -> np.ndarray:
        """Feature rows ``start:stop`` in their stored dtype (a contiguous, bounded read).

        ``start``/``stop``: row range, as a slice. ``level``: "frame" or "video".
        """
        return self._read(self._group(level)["features"], slice(start, stop))

    def _group(self, level: str):
        from vidfeat.options import check_choice

        check_choice("level", level, LEVELS)
        return self._f if level == "frame" else self._f["videos"]

    def iter_chunks(self, split: str | None = None, *, level: str = "frame",
                    rows: int = 65536) -> Iterator[FeatureSet]:
        """Yield FeatureSets of at most ``rows`` file rows each (fewer after the split filter)."""
        g = self._group(level)
        if rows < 1:
            raise ValueError(f"rows must be > 0, got {rows}")
        n = g["features"].shape[0]
        for start in range(0, n, rows):
            sl = slice(start, min(n, start + rows))
            keep = (self._read(g["split"], sl) == split) if split is not None else slice(None)
            yield FeatureSet(
                X=self._read(g["features"], sl).astype(np.float32)[keep],
                y=self._read(g["label"], sl)[keep],
                video_id=self._read(g["video_id"], sl).astype(str)[keep],
                frame_id=(self._read(g["frame_id"], sl).astype(str)[keep] if level == "frame"
                          else None),
                repeat=self._read(g["repeat"], sl)[keep])

    def load(self, split: str | None = None, *, level: str = "frame") -> FeatureSet:
        """All rows of ``split`` (None: every split) at ``level`` ("frame" or "video")."""
        if split is not None:
            from vidfeat.ingestion.manifest import SPLITS
            from vidfeat.options import check_choice

            check_choice("split", split, SPLITS)
        parts = list(self.iter_chunks(split, level=level))
        if not parts:
            dim = self.feature_dim
            return FeatureSet(np.zeros((0, dim), np.float32), np.zeros(0, np.int64),
                              np.zeros(0, str), np.zeros(0, str) if level == "frame" else None,
                              np.zeros(0, np.int64))
        cat = np.concatenate
        return FeatureSet(X=cat([p.X for p in parts]), y=cat([p.y for p in parts]),
                          video_id=cat([p.video_id for p in parts]),
                          frame_id=cat([p.frame_id for p in parts]) if level == "frame" else None,
                          repeat=cat([p.repeat for p in parts]))

    # ------------------------------------------------------------------------------- verify
    def verify(self, *, rows: int = 65536) -> list[str]:
        """Read every dataset in full and check the file; the problems found (empty: sound).

        Checks every chunk's checksum, ``attrs_sha256``, the row counts of the frame and video
        tables, and that ``/videos/features`` are the means of each video's frame features
        (within the stored dtype's rounding). ``rows``: rows read at once (bounds memory).
        """
        problems = self._attr_problems()
        cols = self._verify_columns(problems)
        sums = self._verify_features(cols.get("video_id"), rows, problems)
        table = table_problems(self.path, cols, len(self), len(self.class_names))
        readable = all(f"videos/{d}" in cols for d in ("features", "video_id", "n_frames"))
        if sums is not None and readable and not table:  # else the means cannot be matched up
            table += mean_problems(self.path, cols, *sums)
        return problems + table

    def _attr_problems(self) -> list[str]:
        stored = plain_attr(self._f.attrs.get("attrs_sha256"))
        if stored is None:
            return [f"{self.path}: no attrs_sha256 (written before vidfeat checksummed feature "
                    f"files), so its attributes and data cannot be verified: {RE_EXTRACT}"]
        if stored != attrs_digest(self._f.attrs):
            return [str(CorruptFeatureFile(self.path, "attributes do not match attrs_sha256"))]
        return []

    def _verify_columns(self, problems: list[str]) -> dict[str, np.ndarray]:
        """Every dataset but /features, read whole; failed reads go to ``problems``."""
        names: list[str] = []
        self._f.visititems(lambda name, obj: names.append(name)
                           if isinstance(obj, h5py.Dataset) and name != "features" else None)
        cols = {}
        for name in names:
            try:
                cols[name] = self._read(self._f[name])
            except (CorruptFeatureFile, StorageError) as exc:
                problems.append(str(exc))
        return cols

    def _verify_features(self, video_id, rows: int, problems: list[str]):
        """Read /features in blocks; (per-video sums, frame counts) when the ids were read."""
        ds = self._f["features"]
        codes = pd.factorize(video_id, sort=False)[0] if video_id is not None else None
        n_videos = int(codes.max()) + 1 if codes is not None and len(codes) else 0
        sums = np.zeros((n_videos, ds.shape[1]), np.float64)
        for start in range(0, len(ds), rows):
            try:
                block = self._read(ds, slice(start, start + rows)).astype(np.float64)
            except (CorruptFeatureFile, StorageError) as exc:
                problems.append(str(exc))
                return None
            if codes is not None:
                _add_by_group(sums, codes[start:start + rows], block)
        return None if codes is None else (sums, np.bincount(codes, minlength=n_videos))


# ----------------------------------------------------------------------------------- merging
def _check_shards(stores: Sequence[FeatureStore]) -> int:
    """Refuse mismatched, duplicated or missing shards; return the shard count."""
    first = stores[0]
    for s in stores[1:]:
        for key in SHARD_INVARIANTS:
            if s.attrs.get(key) != first.attrs.get(key):
                raise ValueError(f"shards do not match: {key} is {s.attrs.get(key)!r} in {s.path} "
                                 f"but {first.attrs.get(key)!r} in {first.path}")
    count = int(first.attrs.get("shard_count", 1))
    seen: dict[int, Path] = {}
    for s in stores:
        idx = int(s.attrs.get("shard_index", 0))
        if idx in seen:
            raise ValueError(f"shard {idx}/{count} given twice: {seen[idx]} and {s.path}")
        seen[idx] = s.path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ValueError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)}; "
                         f"got {len(seen)} of {count}")
    return count


def _merged_meta(stores: Sequence[FeatureStore], total: int) -> pd.DataFrame:
    cols = ("frame_id", "video_id", "split", "label", "repeat", "row")
    cols += tuple(c for c in (*OPTIONAL_STRINGS, *CLIP_DATASETS) if all(c in s._f for s in stores))
    parts = [pd.DataFrame({c: s.column(c) for c in cols}).assign(_shard=i, _local=np.arange(len(s)))
             for i, s in enumerate(stores)]
    meta = pd.concat(parts, ignore_index=True).sort_values("row", kind="stable")
    if not np.array_equal(meta["row"].to_numpy(), np.arange(total)):
        raise ValueError(f"shards do not cover the manifest's {total} frames exactly once")
    return meta.reset_index(drop=True)


def merge(shards: Sequence[str | os.PathLike], output: str | os.PathLike, *,
          overwrite: bool = False, chunk_rows: int = 65536) -> Path:
    """Join the shard files of one extraction into ``output`` (a self-contained copy).

    Refuses incomplete, missing, duplicated or mismatched shards (different backbone, weights,
    precision, dtype or manifest). The result equals a single unsharded run's file.
    """
    output = check_output(output, kind="file")
    paths = [Path(p) for p in shards]
    if not paths:
        raise ValueError("merge needs at least one shard file")
    if any(p.resolve() == output.resolve() for p in paths):
        raise ValueError(f"output {output} is also one of the shards")
    with output_lock(output):
        if output.exists() and not overwrite:
            raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it")
        stores = [FeatureStore(p) for p in paths]
        try:
            return _merge_into(stores, output, chunk_rows)
        finally:
            for s in stores:
                s.close()


def _merge_into(stores: Sequence[FeatureStore], output: Path, chunk_rows: int) -> Path:
    _check_shards(stores)
    first = stores[0]
    meta = _merged_meta(stores, int(first.attrs.get("manifest_clips", first.attrs.get("manifest_frames", 0))))
    dtype = first._f["features"].dtype
    builder = FeatureFileBuilder(output, meta, first.feature_dim, dtype=dtype,
                                 chunk_rows=first._f["features"].chunks[0]
                                 if first._f["features"].chunks else 256)
    try:
        for i, s in enumerate(stores):
            dest = meta.index[meta["_shard"] == i].to_numpy()
            local = meta.loc[dest, "_local"].to_numpy()
            for start in range(0, len(dest), chunk_rows):
                _scatter(builder, dest[start:start + chunk_rows],
                         _gather(s, local[start:start + chunk_rows]))
        attrs = {k: v for k, v in first.attrs.items() if k not in DERIVED_ATTRS}
        attrs.update(shard="0/1", shard_index=0, shard_count=1)
        return builder.finish(attrs)
    except BaseException:
        builder.abort()
        raise


def _is_run(idx: np.ndarray) -> bool:
    return len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))


def _gather(store: FeatureStore, idx: np.ndarray) -> np.ndarray:
    if _is_run(idx):
        return store.feature_rows(int(idx[0]), int(idx[-1]) + 1)
    dataset = store._f["features"]
    order = np.argsort(idx, kind="stable")  # h5py fancy reads need increasing indices
    out = np.empty((len(idx), *dataset.shape[1:]), dataset.dtype)
    out[order] = store._read(dataset, idx[order])
    return out


def _scatter(builder: FeatureFileBuilder, dest: np.ndarray, block: np.ndarray) -> None:
    # shards are contiguous row ranges in practice: one slice write; otherwise row by row runs
    if _is_run(dest):
        builder.write(int(dest[0]), block)
        return
    for d, row in zip(dest, block):
        builder.write(int(d), row[None])
