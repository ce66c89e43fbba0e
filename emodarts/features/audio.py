"""Reading audio files and deciding whether they can be used.

Every reason a file is left out is an AudioError whose `kind` is the skipped-files category (missing,
unreadable, empty, truncated, not-finite, too-short) and whose message names the file: the extraction
records them in the skipped-files report instead of stopping. soundfile and librosa are imported inside
the functions that need them. Without soundfile (the GPU machine has none), PCM WAV files are read and
written with the standard library's `wave` module, sample for sample as soundfile does; other formats then
need soundfile, and say so.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from emodarts.data.wav import pcm_wav_facts, read_pcm_wav, soundfile_installed
from emodarts.runtime.errors import DataError


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
    path = str(path)
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}", "missing")
    if os.path.getsize(path) == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}", "empty")
    cut = wav_truncation(path)
    if cut:
        raise AudioError(cut, "truncated")
    try:
        data, file_sr, facts = _read_soundfile(path) if soundfile_installed() else read_pcm_wav(path)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError, wave wave.Error/EOFError
        hint = "" if soundfile_installed() else " (soundfile is not installed: only PCM WAV can be read without it)"
        raise AudioError(f"cannot read audio file {path} (not audio, or damaged{hint}): {exc}",
                         "unreadable") from exc
    if data.size == 0 or data.shape[0] == 0:
        raise AudioError(f"audio file is empty (no samples): {path}", "empty")
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(y)):
        raise AudioError(f"audio file has NaN or infinite samples: {path}", "not-finite")
    return np.ascontiguousarray(y, dtype=np.float32), int(file_sr), facts


def _read_soundfile(path: str) -> Tuple[np.ndarray, int, Dict[str, object]]:
    import soundfile as sf

    with sf.SoundFile(path) as fh:
        facts = {"channels": fh.channels, "subtype": fh.subtype, "format": fh.format}
        return fh.read(dtype="float32", always_2d=True), fh.samplerate, facts


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


def check_duration(path, seconds: float, cfg) -> None:
    """Raise AudioError ("too-short") for a clip under cfg.min_duration_s (cfg: a FeatureConfig): zero-padded
    to the window, it would be a few frames of speech in a sea of silence, labelled with an emotion."""
    if seconds < cfg.min_duration_s:
        raise AudioError(f"audio too short ({seconds:.3f} s; the minimum is {cfg.min_duration_s:g} s, "
                         f"--min-duration changes it): {path}", "too-short")


def audio_facts(path: str) -> Optional[dict]:
    """{sr, channels, subtype, frames} from the file's header (for the conversion notes), or None."""
    try:
        if not soundfile_installed():
            return pcm_wav_facts(path)
        import soundfile as sf

        info = sf.info(path)
        return {"sr": int(info.samplerate), "channels": int(info.channels), "subtype": str(info.subtype),
                "frames": int(info.frames)}
    except Exception:
        return None
