"""The feature cache: one entry per (settings, utterance list), a FeatureSet to read it.

An entry is cache_dir/<cfg.key()>-<hash of ids and paths>/{features.npy, index.json}. It is written in a
temporary folder and renamed into place (index.json is the completion mark), so a reader never sees a
half-written entry, and it is reused while the ids, the settings and the source files' size/mtime match.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from emodarts.features.config import FeatureConfig
from emodarts.runtime.errors import DataError
from emodarts.runtime.files import fsync_dir, fsync_file, make_temp_dir


class FeatureSet:
    """Features of a list of utterances: `features` (N, F, T) float32 (possibly a read-only memmap),
    `utt_ids` (row order) and `index` (utt_id -> row). `skipped` lists the requested utterances whose
    audio could not be used (dicts: utt_id, path, kind, reason); `notes` the files used after a
    conversion worth knowing (resampled from an unusual rate, mixed down)."""

    def __init__(self, features: np.ndarray, utt_ids: Sequence[str], cfg: Optional[FeatureConfig] = None,
                 path: Optional[Path] = None):
        if len(utt_ids) != features.shape[0]:
            raise ValueError(f"{len(utt_ids)} ids for {features.shape[0]} feature rows")
        self.features = features
        self.utt_ids: List[str] = list(utt_ids)
        self.index: Dict[str, int] = {u: i for i, u in enumerate(self.utt_ids)}
        self.cfg = cfg
        self.path = path
        self.utterances: Optional[list] = None  # set by load_feature_set / build_features
        self.skipped: List[dict] = []
        self.notes: List[dict] = []
        self.extractor: str = "librosa"

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.index

    def __getitem__(self, utt_id: str) -> np.ndarray:
        return self.features[self.index[utt_id]]

    def rows(self, utts: Iterable) -> np.ndarray:
        """Row indices of utterances (Utterance objects or utt_id strings)."""
        out = []
        for u in utts:
            uid = u if isinstance(u, str) else u.utt_id
            try:
                out.append(self.index[uid])
            except KeyError:
                raise DataError(f"utterance {uid!r} is not in the feature set {self.path or ''}") from None
        return np.asarray(out, dtype=np.int64)

    def take(self, utts: Iterable) -> np.ndarray:
        """A dense (n, F, T) float32 copy of the features of `utts`, in their order."""
        return np.ascontiguousarray(self.features[self.rows(utts)])

    @property
    def shape(self):
        return tuple(self.features.shape)


def utt_record(u) -> dict:
    """An utterance as index.json keeps it (so the entry can be used without the corpus)."""
    rec = {"utt_id": u.utt_id, "path": u.path, "label": u.label, "speaker": u.speaker,
           "session": getattr(u, "session", None)}
    for optional in ("split", "features"):
        if getattr(u, optional, None):
            rec[optional] = getattr(u, optional)
    return rec


def source_path(u, cfg: FeatureConfig) -> Optional[str]:
    """The file an utterance's features come from: its audio, or for npy features the file the manifest's
    `features` column names (None when it names none)."""
    return (getattr(u, "features", None) or None) if cfg.kind == "npy" else u.path


def _with_index(fs: FeatureSet, index: dict, utts: list) -> FeatureSet:
    fs.utterances = utts
    fs.skipped = list(index.get("skipped") or [])
    fs.notes = list(index.get("notes") or [])
    fs.extractor = index.get("backend", "librosa")
    return fs


def load_feature_set(folder: Path) -> FeatureSet:
    """Open a cache entry written by build_features without its audio (e.g. on a machine that only has
    the feature cache). `FeatureSet.utterances` holds the utterance records (paths as they were)."""
    from emodarts.data import Utterance

    folder = Path(folder)
    try:
        index = json.loads((folder / "index.json").read_text())
        feats = np.load(folder / "features.npy", mmap_mode="r")
        cfg = FeatureConfig(**index["config"])
        utts = [Utterance(**r) for r in index["utterances"]]
    except (OSError, ValueError, KeyError, TypeError, DataError) as exc:
        raise DataError(f"not a readable feature cache entry: {folder} ({exc})") from exc
    return _with_index(FeatureSet(feats, [u.utt_id for u in utts], cfg, folder), index, utts)


def utterance_list_hash(utts: Sequence, cfg: Optional[FeatureConfig] = None) -> str:
    """Hash of the utterance ids and absolute audio paths, in order (two corpora with the same layout in
    different folders get different cache entries); for npy features (`cfg`) the features files' too."""
    h = hashlib.sha1()
    for u in utts:
        h.update(u.utt_id.encode())
        h.update(b"\0")
        h.update(os.path.abspath(u.path).encode())
        if cfg is not None and cfg.kind == "npy":
            src = source_path(u, cfg)
            h.update(b"\0" + (os.path.abspath(src).encode() if src else b""))
        h.update(b"\n")
    return h.hexdigest()[:12]


def cache_dir_for(utts: Sequence, cfg: FeatureConfig, cache_dir: Path) -> Path:
    """The entry folder of these utterances under these settings."""
    return Path(cache_dir) / f"{cfg.key()}-{utterance_list_hash(utts, cfg)}"


def work_dir_for(entry: Path) -> Path:
    """The folder that holds the shards of an unfinished extraction of `entry`."""
    entry = Path(entry)
    return entry.parent / f".partial-{entry.name}"


def default_cache_dir() -> Path:
    """$EMODARTS_HOME/features, else ~/.cache/emodarts/features."""
    home = os.environ.get("EMODARTS_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "emodarts"
    return base / "features"


def file_stamp(path: Optional[str]):
    """[size, mtime_ns] of a source file, or None when it is not there: a changed file rebuilds the entry."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def load_cached(folder: Path, utts: Sequence, cfg: FeatureConfig) -> Optional[FeatureSet]:
    """The finished entry `folder` when it holds exactly these utterances (less the ones it skipped) under
    these settings and no source file changed since; else None (extract again)."""
    index_path, feat_path = folder / "index.json", folder / "features.npy"
    if not (index_path.is_file() and feat_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text())
        feats = np.load(feat_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    ids = [u.utt_id for u in utts]
    skipped = list(index.get("skipped") or [])
    skipped_ids = {s.get("utt_id") for s in skipped}
    if not skipped_ids <= set(ids):
        return None
    kept = [u for u in utts if u.utt_id not in skipped_ids]
    kept_ids = [u.utt_id for u in kept]
    if index.get("utt_ids") != kept_ids or index.get("config") != cfg.record():
        return None
    if tuple(feats.shape) != (len(kept_ids),) + cfg.shape or feats.dtype != np.float32:
        return None
    # Audio regenerated or edited since (same names, other content): rebuild. Audio that is absent here
    # (features copied to a machine without the corpus) does not invalidate the cache. A skipped file that
    # changed (repaired) rebuilds too.
    stamps = index.get("stamps") or []
    for u, old in list(zip(kept, stamps)) + [(s["path"], s.get("stamp")) for s in skipped]:
        new = file_stamp(u if isinstance(u, str) else source_path(u, cfg))
        if new is not None and old is not None and new != old:
            return None
    return _with_index(FeatureSet(feats, kept_ids, cfg, folder), index, list(kept))


def write_entry(folder: Path, blocks: Iterable[np.ndarray], n_rows: int, cfg: FeatureConfig, index: dict,
                utts: Sequence) -> None:
    """Write the entry `folder` from feature blocks (n_rows rows in all) and its index, all or nothing:
    assembled in a temporary folder, flushed, then renamed into place. When another process finished the
    same entry first, theirs is kept."""
    tmp = make_temp_dir(folder.parent, folder.name)  # with the user's umask, like the files in it
    try:
        feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32,
                                          shape=(n_rows,) + cfg.shape)
        row = 0
        for block in blocks:
            feats[row:row + len(block)] = block
            row += len(block)
        feats.flush()
        del feats
        (tmp / "index.json").write_text(json.dumps(index))
        _fsync_entry(tmp)
        if folder.exists():  # a stale entry (audio changed): replace it
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
            fsync_dir(folder.parent)
        except OSError:
            # another process finished the same entry first: use theirs
            if load_cached(folder, utts, cfg) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_entry(folder: Path) -> None:
    """Flush an assembled entry to the disk before it is renamed into place (index.json marks it done)."""
    for name in ("features.npy", "index.json"):
        fsync_file(folder / name)
    fsync_dir(folder)
