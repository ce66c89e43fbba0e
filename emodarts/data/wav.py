"""PCM WAV with the standard library's `wave` module: how audio is read and written where soundfile is not
installed (the GPU machine), sample for sample and byte for byte as soundfile (libsndfile) does."""
from __future__ import annotations

import importlib.util
import wave
from typing import Dict, Tuple

import numpy as np


def soundfile_installed() -> bool:
    return importlib.util.find_spec("soundfile") is not None


# PCM sample width in bytes -> (numpy dtype, offset, scale): what libsndfile's float conversion computes
_PCM = {1: (np.uint8, 128.0, 1 / 128), 2: (np.int16, 0.0, 1 / 32768), 4: (np.int32, 0.0, 1 / 2**31)}


def _subtype(width: int) -> str:
    return "PCM_U8" if width == 1 else f"PCM_{8 * width}"


def pcm_wav_facts(path: str) -> Dict[str, object]:
    """{sr, channels, subtype, frames} from a PCM WAV's header (raises wave.Error/EOFError/OSError otherwise)."""
    with wave.open(path, "rb") as fh:
        return {"sr": fh.getframerate(), "channels": fh.getnchannels(), "subtype": _subtype(fh.getsampwidth()),
                "frames": fh.getnframes()}


def read_pcm_wav(path: str) -> Tuple[np.ndarray, int, Dict[str, object]]:
    """(frames x channels float32, rate, facts) of a PCM WAV with the standard library (8/16/24/32-bit)."""
    with wave.open(path, "rb") as fh:
        channels, width, rate = fh.getnchannels(), fh.getsampwidth(), fh.getframerate()
        raw = fh.readframes(fh.getnframes())
    subtype = _subtype(width)
    if width == 3:  # 24-bit: widen to int32 with the sample in the top three bytes
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        raw, width = np.concatenate([np.zeros((len(b), 1), np.uint8), b], axis=1).tobytes(), 4
    if width not in _PCM:
        raise wave.Error(f"unsupported sample width {width} bytes")
    dtype, offset, scale = _PCM[width]
    x = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(np.float32)
    data = ((x - np.float32(offset)) * np.float32(scale)).reshape(-1, channels)
    return data, rate, {"channels": channels, "subtype": subtype, "format": "WAV"}


def write_wav(path, samples: np.ndarray, sr: int) -> None:
    """`samples` (float, mono, in [-1, 1]) as a 16-bit PCM WAV: with soundfile, or where it is missing with the
    standard library, rounded as libsndfile rounds (the same bytes either way)."""
    if soundfile_installed():
        import soundfile as sf

        sf.write(str(path), samples, sr, subtype="PCM_16", format="WAV")
        return
    # libsndfile rounds to 32 bits, then keeps the top 16 (an arithmetic shift: rounding down)
    wide = np.rint(np.asarray(samples, np.float32).astype(np.float64) * 2.0**31)
    pcm = np.clip(np.floor(wide / 65536.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(int(sr))
        fh.writeframes(pcm.tobytes())


__all__ = ["pcm_wav_facts", "read_pcm_wav", "soundfile_installed", "write_wav"]
