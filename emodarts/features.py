"""Audio -> MFCC features, and an on-disk feature cache.

The `paper` preset reproduces the published preparation (method.md): resample to 32,750 Hz, keep the
first 8 s (zero-pad shorter clips at the end), 128 MFCCs with librosa defaults (n_fft 2048, hop 512,
Hann, 128 mel bands, power to dB, DCT-II ortho) -> 128 x 512 frames (1 + 262000 // 512; trimmed or
padded to 512 in general), then max-pooled over time by 4 -> 128 x 128. No normalisation.
The `tiny` preset (16 kHz, 3 s, 20 MFCCs, n_fft 512, hop 256, 40 mel bands, time pool 4) gives 20 x 47.

librosa is imported inside the functions that need it: importing this module (for FEATURE_PRESETS,
FeatureConfig, or a cached FeatureSet) needs only numpy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .errors import DataError

FEATURE_VERSION = 1  # bump when the extraction changes in a way that invalidates caches


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int
    duration_s: float
    n_mfcc: int
    n_fft: int
    hop_length: int
    n_mels: int
    time_pool: int

    def key(self) -> str:
        """A short hash of the settings and FEATURE_VERSION (names cache folders)."""
        blob = json.dumps({"v": FEATURE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def n_samples(self) -> int:
        return int(round(self.sample_rate * self.duration_s))

    @property
    def n_frames(self) -> int:
        """Frames kept before pooling: librosa's centred frame count, trimmed to a multiple of time_pool."""
        raw = 1 + self.n_samples // self.hop_length
        return (raw // self.time_pool) * self.time_pool

    @property
    def shape(self) -> tuple:
        """(F, T) of one utterance's features."""
        return (self.n_mfcc, self.n_frames // self.time_pool)


FEATURE_PRESETS: Dict[str, FeatureConfig] = {
    "paper": FeatureConfig(sample_rate=32750, duration_s=8.0, n_mfcc=128, n_fft=2048, hop_length=512,
                           n_mels=128, time_pool=4),  # 128 x 128
    "tiny": FeatureConfig(sample_rate=16000, duration_s=3.0, n_mfcc=20, n_fft=512, hop_length=256,
                          n_mels=40, time_pool=4),  # 20 x 47: small enough for a CPU search in minutes
}


# --------------------------------------------------------------------------------------------------
# audio


def load_audio(path, sr: int) -> np.ndarray:
    """Read an audio file as mono float32 at `sr` Hz (channels averaged, resampled with librosa if needed).

    Raises DataError naming the file when it is missing, unreadable, empty or not finite.
    """
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"audio file not found: {path}")
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError for bad files
        raise DataError(f"cannot read audio file {path}: {exc}") from exc
    if data.size == 0 or data.shape[0] == 0:
        raise DataError(f"audio file is empty (no samples): {path}")
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(y)):
        raise DataError(f"audio file has NaN or infinite samples: {path}")
    if file_sr != sr:
        import librosa

        y = librosa.resample(y, orig_sr=file_sr, target_sr=sr)
    return np.ascontiguousarray(y, dtype=np.float32)


def mfcc_from_audio(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Fix the length, MFCC, trim/pad frames, max-pool time. Returns (n_mfcc, T) float32."""
    import librosa

    n = cfg.n_samples
    if len(y) >= n:
        y = y[:n]
    else:
        y = np.pad(y, (0, n - len(y)))
    m = librosa.feature.mfcc(y=y, sr=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft,
                             hop_length=cfg.hop_length, n_mels=cfg.n_mels)
    frames = cfg.n_frames
    if m.shape[1] >= frames:
        m = m[:, :frames]
    else:
        m = np.pad(m, ((0, 0), (0, frames - m.shape[1])), mode="edge")
    if cfg.time_pool > 1:
        m = m.reshape(m.shape[0], frames // cfg.time_pool, cfg.time_pool).max(axis=2)
    return np.ascontiguousarray(m, dtype=np.float32)


def extract_mfcc(path, cfg: FeatureConfig) -> np.ndarray:
    """MFCC features of one file: (cfg.n_mfcc, cfg.shape[1]) float32."""
    return mfcc_from_audio(load_audio(path, cfg.sample_rate), cfg)


# --------------------------------------------------------------------------------------------------
# feature cache


class FeatureSet:
    """Features of a list of utterances: `features` (N, F, T) float32 (possibly a read-only memmap),
    `utt_ids` (row order) and `index` (utt_id -> row)."""

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


def _utt_record(u) -> dict:
    return {"utt_id": u.utt_id, "path": u.path, "label": u.label, "speaker": u.speaker,
            "session": getattr(u, "session", None)}


def load_feature_set(folder: Path) -> FeatureSet:
    """Open a cache entry written by build_features without its audio (e.g. on a machine that only has
    the feature cache). `FeatureSet.utterances` holds the utterance records (paths as they were)."""
    from .data import Utterance

    folder = Path(folder)
    try:
        index = json.loads((folder / "index.json").read_text())
        feats = np.load(folder / "features.npy", mmap_mode="r")
        cfg = FeatureConfig(**index["config"])
        utts = [Utterance(**r) for r in index["utterances"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a readable feature cache entry: {folder} ({exc})") from exc
    fs = FeatureSet(feats, [u.utt_id for u in utts], cfg, folder)
    fs.utterances = utts
    return fs


def utterance_list_hash(utts: Sequence) -> str:
    """Hash of the utterance ids and absolute audio paths, in order (two corpora with the same layout in
    different folders get different cache entries)."""
    h = hashlib.sha1()
    for u in utts:
        h.update(u.utt_id.encode())
        h.update(b"\0")
        h.update(os.path.abspath(u.path).encode())
        h.update(b"\n")
    return h.hexdigest()[:12]


def cache_dir_for(utts: Sequence, cfg: FeatureConfig, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"{cfg.key()}-{utterance_list_hash(utts)}"


def _file_stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _load_cached(folder: Path, utts: Sequence, cfg: FeatureConfig) -> Optional[FeatureSet]:
    index_path, feat_path = folder / "index.json", folder / "features.npy"
    if not (index_path.is_file() and feat_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text())
        feats = np.load(feat_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    ids = [u.utt_id for u in utts]
    if index.get("utt_ids") != ids or index.get("config") != asdict(cfg):
        return None
    if tuple(feats.shape) != (len(ids),) + cfg.shape or feats.dtype != np.float32:
        return None
    # Audio regenerated or edited since (same names, other content): rebuild. Audio that is absent here
    # (features copied to a machine without the corpus) does not invalidate the cache.
    stamps = index.get("stamps") or []
    for u, old in zip(utts, stamps):
        new = _file_stamp(u.path)
        if new is not None and old is not None and new != old:
            return None
    fs = FeatureSet(feats, ids, cfg, folder)
    fs.utterances = list(utts)
    return fs


def build_features(utts: Sequence, cfg: FeatureConfig, cache_dir: Path, progress: bool = True) -> FeatureSet:
    """Features of `utts` (in their order), computed once and cached under
    cache_dir/<cfg.key()>-<hash of ids and paths>/{features.npy, index.json}.

    The cache is written to a temporary folder and renamed into place (index.json is the completion mark),
    and reused when the ids, the settings and the audio files' size/mtime still match. The returned
    features are a read-only memmap.
    """
    utts = list(utts)
    if not utts:
        raise DataError("no utterances to extract features from")
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"duplicate utterance id {dup!r} in the feature request")
    folder = cache_dir_for(utts, cfg, cache_dir)
    cached = _load_cached(folder, utts, cfg)
    if cached is not None:
        return cached

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    try:
        feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32,
                                          shape=(len(utts),) + cfg.shape)
        iterator = utts
        if progress:
            from tqdm import tqdm

            iterator = tqdm(utts, desc=f"MFCC {cfg.shape[0]}x{cfg.shape[1]}", unit="utt")
        stamps = []
        for i, u in enumerate(iterator):
            feats[i] = extract_mfcc(u.path, cfg)
            stamps.append(_file_stamp(u.path))
        feats.flush()
        del feats
        index = {"version": FEATURE_VERSION, "key": cfg.key(), "config": asdict(cfg), "utt_ids": ids,
                 "utterances": [_utt_record(u) for u in utts], "stamps": stamps}
        (tmp / "index.json").write_text(json.dumps(index))
        if folder.exists():  # a stale entry (audio changed): replace it
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            # another process finished the same entry first: use theirs
            if _load_cached(folder, utts, cfg) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = _load_cached(folder, utts, cfg)
    if result is None:
        raise DataError(f"feature cache {folder} could not be read back after writing it")
    return result


def default_cache_dir() -> Path:
    home = os.environ.get("EMODARTS_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "emodarts"
    return base / "features"
