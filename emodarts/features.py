"""Audio -> MFCC features, and an on-disk feature cache.

The `paper` preset reproduces the published preparation (method.md): resample to 32,750 Hz, keep the
first 8 s (zero-pad shorter clips at the end), 128 MFCCs with librosa defaults (n_fft 2048, hop 512,
Hann, 128 mel bands, power to dB, DCT-II ortho) -> 128 x 512 frames (1 + 262000 // 512; trimmed or
padded to 512 in general), then max-pooled over time by 4 -> 128 x 128. No normalisation.
The `tiny` preset (16 kHz, 3 s, 20 MFCCs, n_fft 512, hop 256, 40 mel bands, time pool 4) gives 20 x 47.
Clips shorter than `min_duration_s` (MIN_DURATION_S by default) are left out as "too short" rather than
zero-padded into a window of mostly silence.

Two backends compute the same features: `librosa` (the reference, one file at a time, over a process pool
with workers > 1) and `torchaudio` (batched torchaudio transforms, on the GPU when one is there; it
needs no librosa). They agree within TORCHAUDIO_TOLERANCE (see tests/test_corpora_features.py).

The cache (build_features) extracts into shard files (one per chunk of utterances) in a work folder inside
the cache folder, so an interrupted extraction continues where it stopped; the entry is then assembled
in a temporary folder and renamed into place: never a half-written entry. Files that cannot be used are
left out and listed (with a report) or stop the extraction (without one).

librosa is imported inside the functions that need it: importing this module (for FEATURE_PRESETS,
FeatureConfig, or a cached FeatureSet) needs only numpy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError
from .io import fsync_dir, fsync_file, make_temp_dir

FEATURE_VERSION = 1  # bump when the extraction changes in a way that invalidates caches

# Shortest usable clip, in seconds of audio before padding. Absolute rather than a fraction of the window:
# a fraction of the paper preset's 8 s window large enough to matter (10 %: 0.8 s) could drop genuine short
# utterances (a one-word answer) and change the published utterance counts, while 0.25 s (about one short
# syllable) is shorter than a spoken word and still rejects clicks, cut-off files and near-empty clips
# (0.05 s in the tiny preset's 3 s window would be 98 % padding).
MIN_DURATION_S = 0.25


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int
    duration_s: float
    n_mfcc: int
    n_fft: int
    hop_length: int
    n_mels: int
    time_pool: int
    min_duration_s: float = MIN_DURATION_S  # shorter clips are skipped ("too-short"); part of key()

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


def feature_config(preset: str, min_duration_s: Optional[float] = None) -> FeatureConfig:
    """The feature preset `preset`, with another minimum clip duration when one is given (--min-duration)."""
    if preset not in FEATURE_PRESETS:
        raise DataError(f"unknown feature preset {preset!r}; choose one of {', '.join(FEATURE_PRESETS)}")
    cfg = FEATURE_PRESETS[preset]
    if min_duration_s is None:
        return cfg
    if not min_duration_s >= 0:
        raise DataError(f"the minimum clip duration must be 0 s or more (got {min_duration_s})")
    return replace(cfg, min_duration_s=float(min_duration_s))


# --------------------------------------------------------------------------------------------------
# audio


class AudioError(DataError):
    """An audio file that cannot be used; `kind` is the skipped-files category (missing, unreadable,
    empty, truncated, not-finite, too-short). The message names the file."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def wav_truncation(path) -> Optional[str]:
    """A sentence when `path` is a RIFF/WAVE file whose data chunk is shorter than its header declares
    (a cut download or copy), else None. libsndfile reads such files silently up to where they stop."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, block_align = 12, 1
            while pos + 8 <= size:
                fh.seek(pos)
                hdr = fh.read(8)
                cid, clen = hdr[:4], int.from_bytes(hdr[4:8], "little")
                if cid == b"fmt " and clen >= 14:
                    block_align = max(1, int.from_bytes(fh.read(14)[12:14], "little"))
                if cid == b"data":
                    avail = size - (pos + 8)
                    if clen in (0, 0xFFFFFFFF) or clen - avail < block_align:
                        return None
                    return (f"truncated WAV (the header declares {clen} bytes of audio, the file holds "
                            f"{avail}): {path}")
                pos += 8 + clen + (clen & 1)
    except OSError:
        return None
    return None


def read_audio(path) -> Tuple[np.ndarray, int, Dict[str, object]]:
    """(mono float32 samples, the file's sample rate, facts: channels, subtype, format). Any channel count
    is averaged to mono; 8/16/24/32-bit PCM and float WAV (and whatever libsndfile reads) are converted to
    float. Raises AudioError naming the file when it is missing, unreadable or not audio, empty,
    truncated, or has NaN/infinite samples."""
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}", "missing")
    if os.path.getsize(path) == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}", "empty")
    cut = wav_truncation(path)
    if cut:
        raise AudioError(cut, "truncated")
    try:
        with sf.SoundFile(path) as fh:
            facts = {"channels": fh.channels, "subtype": fh.subtype, "format": fh.format}
            data = fh.read(dtype="float32", always_2d=True)
            file_sr = fh.samplerate
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError for bad files
        raise AudioError(f"cannot read audio file {path} (not audio, or damaged): {exc}", "unreadable") from exc
    if data.size == 0 or data.shape[0] == 0:
        raise AudioError(f"audio file is empty (no samples): {path}", "empty")
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(y)):
        raise AudioError(f"audio file has NaN or infinite samples: {path}", "not-finite")
    return np.ascontiguousarray(y, dtype=np.float32), int(file_sr), facts


def load_audio(path, sr: int) -> np.ndarray:
    """Read an audio file as mono float32 at `sr` Hz (channels averaged, resampled with librosa if needed).

    Raises DataError (an AudioError) naming the file when it is missing, unreadable, empty, truncated or
    not finite.
    """
    y, file_sr, _ = read_audio(path)
    if file_sr != sr:
        import librosa

        y = librosa.resample(y, orig_sr=file_sr, target_sr=sr)
    return np.ascontiguousarray(y, dtype=np.float32)


def check_duration(path, seconds: float, cfg: FeatureConfig) -> None:
    """Raise AudioError ("too-short") for a clip under cfg.min_duration_s: zero-padded to the window, it
    would be a few frames of speech in a sea of silence, labelled with an emotion."""
    if seconds < cfg.min_duration_s:
        raise AudioError(f"audio too short ({seconds:.3f} s; the minimum is {cfg.min_duration_s:g} s, "
                         f"--min-duration changes it): {path}", "too-short")


def _fix_length(y: np.ndarray, n: int) -> np.ndarray:
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def _fix_frames(m, frames: int, time_pool: int):
    """Trim/pad (edge) the last axis to `frames`, then max-pool it by `time_pool` (numpy or torch)."""
    if m.shape[-1] >= frames:
        m = m[..., :frames]
    else:
        if isinstance(m, np.ndarray):
            m = np.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, frames - m.shape[-1])], mode="edge")
        else:
            import torch

            m = torch.cat([m, m[..., -1:].expand(*m.shape[:-1], frames - m.shape[-1])], dim=-1)
    if time_pool > 1:
        m = m.reshape(*m.shape[:-1], frames // time_pool, time_pool)
        m = m.max(axis=-1) if isinstance(m, np.ndarray) else m.amax(dim=-1)
    return m


def mfcc_from_audio(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Fix the length, MFCC, trim/pad frames, max-pool time. Returns (n_mfcc, T) float32."""
    import librosa

    y = _fix_length(y, cfg.n_samples)
    m = librosa.feature.mfcc(y=y, sr=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft,
                             hop_length=cfg.hop_length, n_mels=cfg.n_mels)
    m = _fix_frames(m, cfg.n_frames, cfg.time_pool)
    return np.ascontiguousarray(m, dtype=np.float32)


def extract_mfcc(path, cfg: FeatureConfig) -> np.ndarray:
    """MFCC features of one file: (cfg.n_mfcc, cfg.shape[1]) float32."""
    return mfcc_from_audio(load_audio(path, cfg.sample_rate), cfg)


# --------------------------------------------------------------------------------------------------
# the torchaudio backend

BACKENDS = ("librosa", "torchaudio")
# Agreement with the librosa reference, measured on CPU (tests/test_corpora_features.py; speech-like
# synthetic audio, noise and silence; MFCC values up to ~1.1e3 in magnitude):
# - file already at the preset's rate: largest |difference| 2.4e-4 (float32 FFT rounding); bound 5e-3.
# - resampled (torchaudio's Kaiser sinc vs librosa's soxr_hq; 8 / 16 / 44.1 kHz files, both presets):
#   largest |difference| <= 0.3 % of the largest |MFCC|, RMS difference <= 0.42 % of the RMS MFCC;
#   bounds 1 % and 1 %.
TORCHAUDIO_TOLERANCE = {"same_rate_atol": 5e-3, "resampled_rel_max": 0.01, "resampled_rel_rms": 0.01}
# torchaudio's "kaiser_best" resampler settings (close to librosa's soxr_hq)
_RESAMPLE = dict(lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser",
                 beta=14.769656459379492)
_TORCH_OPS: Dict[tuple, tuple] = {}


def torch_device(device: Optional[str] = None) -> str:
    """`device`, or cuda when a GPU is there, else cpu."""
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_ops(cfg: FeatureConfig, device: str):
    key = (cfg, device)
    if key not in _TORCH_OPS:
        try:
            import torchaudio
        except (ImportError, OSError) as exc:  # a CUDA torchaudio next to a CPU torch raises OSError
            raise DataError(f"--backend torchaudio: torchaudio cannot be imported here ({exc}); "
                            f"use --backend librosa") from exc
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
            f_min=0.0, f_max=None, power=2.0, center=True, pad_mode="constant", norm="slaney",
            mel_scale="slaney").to(device)
        dct = torchaudio.functional.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho").to(device)
        _TORCH_OPS[key] = (mel, dct)
    return _TORCH_OPS[key]


def resample_torch(y: np.ndarray, orig_sr: int, sr: int, device: str = "cpu"):
    """Resample one signal with torchaudio (Kaiser-windowed sinc); returns a float32 tensor on `device`."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    if orig_sr == sr:
        return x
    import torchaudio

    return torchaudio.functional.resample(x, int(orig_sr), int(sr), **_RESAMPLE)


def mfcc_batch_torch(waves, cfg: FeatureConfig):
    """librosa.feature.mfcc (defaults) for a batch: waves (B, cfg.n_samples) float32 tensor ->
    (B, n_mfcc, T) after the frame fix and time pooling, on the waves' device."""
    import torch

    mel, dct = _torch_ops(cfg, str(waves.device))
    with torch.no_grad():
        s = mel(waves)  # (B, n_mels, frames), power
        db = 10.0 * torch.log10(torch.clamp(s, min=1e-10))  # librosa.power_to_db(ref=1, amin=1e-10, top_db=80)
        db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 80.0)
        m = torch.matmul(db.transpose(1, 2), dct).transpose(1, 2)  # DCT-II ortho over the mel axis
        return _fix_frames(m, cfg.n_frames, cfg.time_pool)


def mfcc_torch(signals: Sequence[np.ndarray], rates: Sequence[int], cfg: FeatureConfig,
               device: Optional[str] = None) -> np.ndarray:
    """MFCCs of decoded signals (any rates) with the torchaudio backend: (n, F, T) float32 numpy."""
    import torch

    device = torch_device(device)
    if not len(signals):
        return np.zeros((0,) + cfg.shape, dtype=np.float32)
    rows = []
    for y, r in zip(signals, rates):
        x = resample_torch(y, r, cfg.sample_rate, device)
        n = cfg.n_samples
        x = x[:n] if x.shape[0] >= n else torch.nn.functional.pad(x, (0, n - x.shape[0]))
        rows.append(x)
    out = mfcc_batch_torch(torch.stack(rows), cfg)
    return out.float().cpu().numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# feature cache


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
        self.backend: str = "librosa"

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
    rec = {"utt_id": u.utt_id, "path": u.path, "label": u.label, "speaker": u.speaker,
           "session": getattr(u, "session", None)}
    if getattr(u, "split", None):
        rec["split"] = u.split
    return rec


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
    fs.skipped = list(index.get("skipped") or [])
    fs.notes = list(index.get("notes") or [])
    fs.backend = index.get("backend", "librosa")
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


def work_dir_for(entry: Path) -> Path:
    """The folder that holds the shards of an unfinished extraction of `entry`."""
    entry = Path(entry)
    return entry.parent / f".partial-{entry.name}"


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
    skipped = list(index.get("skipped") or [])
    skipped_ids = {s.get("utt_id") for s in skipped}
    if not skipped_ids <= set(ids):
        return None
    kept = [u for u in utts if u.utt_id not in skipped_ids]
    kept_ids = [u.utt_id for u in kept]
    if index.get("utt_ids") != kept_ids or index.get("config") != asdict(cfg):
        return None
    if tuple(feats.shape) != (len(kept_ids),) + cfg.shape or feats.dtype != np.float32:
        return None
    # Audio regenerated or edited since (same names, other content): rebuild. Audio that is absent here
    # (features copied to a machine without the corpus) does not invalidate the cache. A skipped file that
    # changed (repaired) rebuilds too.
    stamps = index.get("stamps") or []
    for u, old in list(zip(kept, stamps)) + [(s["path"], s.get("stamp")) for s in skipped]:
        new = _file_stamp(u if isinstance(u, str) else u.path)
        if new is not None and old is not None and new != old:
            return None
    fs = FeatureSet(feats, kept_ids, cfg, folder)
    fs.utterances = list(kept)
    fs.skipped = skipped
    fs.notes = list(index.get("notes") or [])
    fs.backend = index.get("backend", "librosa")
    return fs


# ---------------------------------------------------------------------------------------- extraction
DEFAULT_CHUNK = 64


def _audio_facts(path: str) -> Optional[dict]:
    try:
        import soundfile as sf

        info = sf.info(path)
        return {"sr": int(info.samplerate), "channels": int(info.channels), "subtype": str(info.subtype),
                "frames": int(info.frames)}
    except Exception:
        return None


def extract_chunk(items: Sequence[Tuple[str, str]], cfg: FeatureConfig, backend: str = "librosa",
                  device: Optional[str] = None, strict: bool = False, threads: int = 1) -> dict:
    """Features of one chunk of (utt_id, path): {"feats": (n, F, T) float32, "ok": (n,) bool,
    "errors": {row: [kind, message]}, "facts": [{sr, channels, subtype} | None]}. With `strict`, stops at
    the first unusable file. Runs in a worker process (librosa) or in the caller (torchaudio)."""
    n = len(items)
    feats = np.zeros((n,) + cfg.shape, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    errors: Dict[int, list] = {}
    facts: List[Optional[dict]] = [None] * n
    if backend == "librosa":
        for i, (_, path) in enumerate(items):
            try:
                feats[i] = extract_mfcc(path, cfg)  # looked up at call time (tests count the calls)
                facts[i] = _audio_facts(path)
                if facts[i]:
                    check_duration(path, facts[i]["frames"] / facts[i]["sr"], cfg)
                ok[i] = True
            except DataError as exc:
                errors[i] = [getattr(exc, "kind", "unreadable"), str(exc)]
                if strict:
                    break
    elif backend == "torchaudio":
        def read(item):
            try:
                y, r, f = read_audio(item[1])
                check_duration(item[1], len(y) / r, cfg)
                return y, r, f
            except DataError as exc:
                return exc

        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                decoded = list(pool.map(read, items))
        else:
            decoded = [read(it) for it in items]
        good = []
        for i, d in enumerate(decoded):
            if isinstance(d, Exception):
                errors[i] = [getattr(d, "kind", "unreadable"), str(d)]
                if strict:
                    break
                continue
            y, r, f = d
            facts[i] = {"sr": r, "channels": int(f["channels"]), "subtype": str(f["subtype"]), "frames": len(y)}
            good.append(i)
        if good and not (strict and errors):
            feats[good] = mfcc_torch([decoded[i][0] for i in good], [decoded[i][1] for i in good], cfg, device)
            ok[good] = True
    else:
        raise DataError(f"unknown feature backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return {"feats": feats, "ok": ok, "errors": errors, "facts": facts}


def _write_shard(path: Path, ids: Sequence[str], stamps: list, result: dict, backend: str) -> None:
    from .io import atomic_write

    meta = {"version": FEATURE_VERSION, "backend": backend, "stamps": stamps,
            "errors": {str(k): v for k, v in result["errors"].items()}, "facts": result["facts"]}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, feats=result["feats"], ok=result["ok"], ids=np.asarray(list(ids), dtype=str),
                     meta=np.asarray(json.dumps(meta)))

    atomic_write(path, write)


def _read_shard(path: Path, ids: Sequence[str], stamps: list, backend: str, cfg: FeatureConfig) -> Optional[dict]:
    """A finished shard of these ids (same audio stamps, same backend), or None (redo the chunk)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if [str(i) for i in z["ids"]] != list(ids) or meta.get("version") != FEATURE_VERSION:
                return None
            if meta.get("backend") != backend or meta.get("stamps") != stamps:
                return None
            feats, ok = z["feats"], z["ok"]
            if feats.shape != (len(ids),) + cfg.shape or ok.shape != (len(ids),):
                return None
            return {"feats": np.array(feats), "ok": np.array(ok),
                    "errors": {int(k): v for k, v in meta["errors"].items()}, "facts": meta["facts"]}
    except Exception:  # a damaged shard (e.g. the disk filled up): redo the chunk
        return None


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _chunk_task(args):
    c, items, cfg, backend, device, strict = args
    return c, extract_chunk(items, cfg, backend, device, strict)


def _notes(utts: Sequence, facts: Sequence[Optional[dict]], cfg: FeatureConfig) -> Tuple[List[dict], dict]:
    """Conversions worth knowing: files at a sample rate other than the corpus's usual one (resampled)
    and files with more than one channel (averaged). Also returns counts of rates, channels and formats."""
    from collections import Counter

    rates = Counter(f["sr"] for f in facts if f)
    chans = Counter(f["channels"] for f in facts if f)
    formats = Counter(f["subtype"] for f in facts if f)
    usual = rates.most_common(1)[0][0] if rates else None
    notes = []
    for u, f in zip(utts, facts):
        if not f:
            continue
        if usual is not None and f["sr"] != usual:
            notes.append({"utt_id": u.utt_id, "path": u.path, "kind": "resampled",
                          "reason": f"{u.path}: sample rate {f['sr']} Hz differs from the corpus's usual "
                                    f"{usual} Hz (resampled to {cfg.sample_rate} Hz like every file)"})
        if f["channels"] > 1:
            notes.append({"utt_id": u.utt_id, "path": u.path, "kind": "mixed-down",
                          "reason": f"{u.path}: {f['channels']} channels averaged to mono"})
    audio = {"sample_rates": {str(k): v for k, v in sorted(rates.items())},
             "channels": {str(k): v for k, v in sorted(chans.items())},
             "formats": dict(sorted(formats.items()))}
    return notes, audio


def build_features(utts: Sequence, cfg: FeatureConfig, cache_dir: Path, progress: bool = True, *,
                   report=None, workers: int = 1, backend: str = "librosa", device: Optional[str] = None,
                   chunk_size: Optional[int] = None) -> FeatureSet:
    """Features of `utts` (in their order), computed once and cached under
    cache_dir/<cfg.key()>-<hash of ids and paths>/{features.npy, index.json}.

    Extraction runs chunk by chunk (librosa over `workers` processes, or batched torchaudio on `device`);
    each finished chunk is saved as a shard in cache_dir/.partial-<entry>/, so an interrupted run continues
    where it stopped. The entry is then assembled in a temporary folder and renamed into place (index.json
    is the completion mark), and reused while the ids, the settings and the audio files' size/mtime still
    match (whatever backend wrote it). The returned features are a read-only memmap.

    Without `report`, the first unusable file raises a DataError naming it (and no shard is kept). With a
    `report` (data.report.SkipReport), unusable files are left out of the entry and recorded there (the
    entry's index.json keeps them too, for later runs); a DataError only when no file is usable.
    """
    utts = list(utts)
    if not utts:
        raise DataError("no utterances to extract features from")
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"duplicate utterance id {dup!r} in the feature request")
    if backend not in BACKENDS:
        raise DataError(f"unknown feature backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    strict = report is None
    folder = cache_dir_for(utts, cfg, cache_dir)
    result = _load_cached(folder, utts, cfg)
    if result is None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        work = work_dir_for(folder)
        try:
            _extract_into(work, folder, utts, cfg, progress, strict, workers, backend, device, chunk_size)
        except DataError as exc:
            if strict:
                shutil.rmtree(work, ignore_errors=True)
            elif getattr(exc, "skipped", None):
                for e in exc.skipped:
                    report.skip(e["path"], e["kind"], e["reason"], e.get("utt_id"))
            raise
        result = _load_cached(folder, utts, cfg)
        if result is None:
            raise DataError(f"feature cache {folder} could not be read back after writing it")
    if result.skipped:
        if strict:
            first = result.skipped[0]
            more = f" (and {len(result.skipped) - 1} more file(s))" if len(result.skipped) > 1 else ""
            raise DataError(first["reason"] + more)
        for s in result.skipped:
            report.skip(s["path"], s["kind"], s["reason"], s.get("utt_id"))
    if report is not None:
        for s in result.notes:
            report.note(s["path"], s["kind"], s["reason"], s.get("utt_id"))
    return result


def _extract_into(work: Path, folder: Path, utts: list, cfg: FeatureConfig, progress: bool, strict: bool,
                  workers: int, backend: str, device: Optional[str], chunk_size: Optional[int]) -> None:
    """Extract the missing shards of `utts` into `work`, then assemble the entry `folder` from them."""
    from .io import atomic_write_json

    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / "plan.json"
    plan = None
    if plan_path.is_file():
        try:
            plan = json.loads(plan_path.read_text())
        except ValueError:
            plan = None
    if not plan or plan.get("n") != len(utts) or plan.get("key") != cfg.key():
        for old in work.glob("shard-*.npz"):
            old.unlink()
        plan = {"n": len(utts), "key": cfg.key(), "chunk": int(chunk_size or DEFAULT_CHUNK)}
        atomic_write_json(plan_path, plan)
    chunk = int(plan["chunk"])
    chunks = [list(range(s, min(s + chunk, len(utts)))) for s in range(0, len(utts), chunk)]
    stamps = [_file_stamp(u.path) for u in utts]
    results: Dict[int, dict] = {}
    pending = []
    for c, rows in enumerate(chunks):
        done = _read_shard(work / f"shard-{c:05d}.npz", [utts[i].utt_id for i in rows], [stamps[i] for i in rows],
                           backend, cfg)
        if done is not None:
            if strict and done["errors"]:
                raise DataError(next(iter(done["errors"].values()))[1])
            results[c] = done
        else:
            pending.append(c)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        n_done = sum(len(chunks[c]) for c in results)
        bar = tqdm(total=len(utts), initial=n_done, unit="utt", dynamic_ncols=True,
                   desc=f"MFCC {cfg.shape[0]}x{cfg.shape[1]} ({backend})")

    def finish(c: int, res: dict) -> None:
        rows = chunks[c]
        if strict and res["errors"]:
            raise DataError(next(iter(res["errors"].values()))[1])
        _write_shard(work / f"shard-{c:05d}.npz", [utts[i].utt_id for i in rows], [stamps[i] for i in rows],
                     res, backend)
        results[c] = res
        if bar is not None:
            bar.update(len(rows))

    def items(c: int):
        return [(utts[i].utt_id, utts[i].path) for i in chunks[c]]

    try:
        if backend == "librosa" and workers > 1 and len(pending) > 1:
            import multiprocessing as mp

            # workers ignore Ctrl-C (it reaches the whole process group): the parent stops them cleanly
            pool = mp.get_context("spawn").Pool(min(workers, len(pending)), initializer=_ignore_sigint)
            try:
                tasks = [(c, items(c), cfg, backend, device, strict) for c in pending]
                for c, res in pool.imap_unordered(_chunk_task, tasks):
                    finish(c, res)
                pool.close()
            finally:
                pool.terminate()
                pool.join()
        else:
            dev = torch_device(device) if backend == "torchaudio" else None
            for c in pending:
                finish(c, extract_chunk(items(c), cfg, backend, dev, strict, threads=max(1, workers)))
    finally:
        if bar is not None:
            bar.close()

    # ---- assemble the entry from the shards
    ok = np.concatenate([results[c]["ok"] for c in range(len(chunks))])
    facts: List[Optional[dict]] = []
    skipped = []
    for c, rows in enumerate(chunks):
        facts.extend(results[c]["facts"])
        for r, (kind, msg) in sorted(results[c]["errors"].items()):
            u = utts[rows[r]]
            skipped.append({"utt_id": u.utt_id, "path": u.path, "kind": kind, "reason": msg,
                            "stamp": stamps[rows[r]]})
    kept = [i for i in range(len(utts)) if ok[i]]
    if not kept:
        reasons = "; ".join(s["reason"] for s in skipped[:3])
        err = DataError(f"none of the {len(utts)} audio files could be used ({reasons}"
                        + (" ..." if len(skipped) > 3 else "") + ")")
        err.skipped = skipped
        raise err
    notes, audio = _notes([utts[i] for i in kept], [facts[i] for i in kept], cfg)
    tmp = make_temp_dir(folder.parent, folder.name)  # with the user's umask, like the files in it
    try:
        feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32,
                                          shape=(len(kept),) + cfg.shape)
        row = 0
        for c in range(len(chunks)):
            good = results[c]["feats"][results[c]["ok"]]
            feats[row:row + len(good)] = good
            row += len(good)
        feats.flush()
        del feats
        index = {"version": FEATURE_VERSION, "key": cfg.key(), "config": asdict(cfg),
                 "utt_ids": [utts[i].utt_id for i in kept],
                 "utterances": [_utt_record(utts[i]) for i in kept], "stamps": [stamps[i] for i in kept],
                 "skipped": skipped, "notes": notes, "audio": audio, "backend": backend,
                 "requested": len(utts), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / "index.json").write_text(json.dumps(index))
        _fsync_entry(tmp)
        if folder.exists():  # a stale entry (audio changed): replace it
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
            fsync_dir(folder.parent)
        except OSError:
            # another process finished the same entry first: use theirs
            if _load_cached(folder, utts, cfg) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)


def _fsync_entry(folder: Path) -> None:
    """Flush an assembled entry to the disk before it is renamed into place (index.json marks it done)."""
    for name in ("features.npy", "index.json"):
        fsync_file(folder / name)
    fsync_dir(folder)


def default_cache_dir() -> Path:
    home = os.environ.get("EMODARTS_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "emodarts"
    return base / "features"
