"""A built-in synthetic emotional speech corpus (numpy only; no licence, no download).

Each utterance is a source-filter synthesis of speech-like audio: a glottal (Rosenberg) pulse train
following an F0 contour, vowel formants (a cascade of resonators, applied frame by frame in the STFT
domain so that the vowel can change every syllable), syllables with consonant onsets (fricative and
plosive noise, nasals), a syllable-rate amplitude envelope, aspiration, breath noise and a faint noise
floor; then a per-session channel colouring.

The four emotions differ in prosody. The *temporal* cues are strong: speaking rate (syllable timing), the
size and shape of the pitch movement on every syllable, jitter/shimmer. The *level* cues (mean F0,
loudness, spectral tilt, breathiness) differ only a little between emotions and are smeared by speaker and
per-utterance variation, so a classifier on utterance-mean MFCCs does clearly worse than one that reads
the MFCC sequence (see emodarts/data/baseline.py and bench/baseline_synthetic.py).

Generation is deterministic from the seed (numpy Generator seeded per utterance from
(seed, speaker, emotion, index)), cached on disk, and atomic: audio files are written to temporary names
and renamed, the manifest is written last, so an interrupted run never leaves a corpus that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from emodarts.data import EMOTIONS, Utterance
from emodarts.data.synthetic_voice import (DURATION_S, SAMPLE_RATE, make_speakers, synthesize_utterance,
                                           voice_settings)
from emodarts.runtime.errors import DataError

GENERATOR_VERSION = 3
MANIFEST_NAME = "manifest.csv"
STAMP_NAME = "generator.json"

def generator_config(seed: int, n_speakers: int, utts_per_class: int) -> dict:
    """Everything the generated audio depends on; its hash decides whether a cache is still valid."""
    return {
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_speakers": int(n_speakers),
        "utts_per_class": int(utts_per_class),
        "sample_rate": SAMPLE_RATE,
        "duration_s": DURATION_S,
        "emotions": list(EMOTIONS),
        **voice_settings(),
    }


def _config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def default_root() -> Path:
    home = os.environ.get("EMODARTS_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "emodarts"
    return base / "synthetic"


# --------------------------------------------------------------------------------------------------
# the corpus on disk


def _plan(seed: int, n_speakers: int, utts_per_class: int):
    """(speaker, emotion index, k, utt_id, relative path) for every utterance, in manifest order."""
    out = []
    for si, spk in enumerate(make_speakers(seed, n_speakers)):
        for ei, emo in enumerate(EMOTIONS):
            for k in range(utts_per_class):
                utt_id = f"{spk.speaker}_{emo}_{k:03d}"
                out.append((si, spk, ei, k, utt_id, f"audio/{spk.speaker}/{utt_id}.wav"))
    return out


def _is_complete(root: Path, config_hash: str, n_expected: int) -> bool:
    stamp, manifest = root / STAMP_NAME, root / MANIFEST_NAME
    if not (stamp.is_file() and manifest.is_file()):
        return False
    try:
        if json.loads(stamp.read_text()).get("hash") != config_hash:
            return False
        from emodarts.data.manifest import read_manifest

        utts = read_manifest(manifest)  # checks that every audio file exists
    except (ValueError, OSError, DataError):
        return False
    return len(utts) == n_expected


def ensure_synthetic_corpus(root: Optional[Path] = None, seed: int = 0, n_speakers: int = 12,
                            utts_per_class: int = 20, progress: bool = False) -> Path:
    """Generate the synthetic corpus under `root` unless a complete one with the same settings is there.

    Returns the corpus root (it holds manifest.csv, generator.json and audio/<speaker>/<utt>.wav).
    Default root: $EMODARTS_HOME/synthetic, else ~/.cache/emodarts/synthetic.
    """
    from emodarts.data.manifest import write_manifest
    from emodarts.data.wav import write_wav
    from emodarts.runtime.files import atomic_write, atomic_write_json

    if n_speakers < 1 or utts_per_class < 1:
        raise DataError(f"synthetic corpus needs n_speakers >= 1 and utts_per_class >= 1 "
                        f"(got {n_speakers}, {utts_per_class})")
    root = Path(root) if root is not None else default_root()
    config = generator_config(seed, n_speakers, utts_per_class)
    chash = _config_hash(config)
    plan = _plan(seed, n_speakers, utts_per_class)
    if _is_complete(root, chash, len(plan)):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the synthetic corpus folder {root}: {exc}") from exc
    # Invalidate first: a half-regenerated corpus must never pass for the old or the new one.
    for name in (MANIFEST_NAME, STAMP_NAME):
        if (root / name).exists():
            (root / name).unlink()
    iterator = plan
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plan, desc=f"synthetic corpus -> {root}", unit="utt")
    utts = []
    for si, spk, ei, k, utt_id, rel in iterator:
        rng = np.random.default_rng(np.random.SeedSequence([seed, si, ei, k]))
        audio = synthesize_utterance(spk, EMOTIONS[ei], rng)
        path = root / rel
        atomic_write(path, lambda tmp, a=audio: write_wav(tmp, a, SAMPLE_RATE))
        utts.append(Utterance(utt_id, str(path), EMOTIONS[ei], spk.speaker, spk.session))
    # Remove audio that a previous, larger configuration left behind.
    keep = {str(root / rel) for *_, rel in plan}
    audio_dir = root / "audio"
    for wav in audio_dir.glob("*/*.wav"):
        if str(wav) not in keep:
            wav.unlink()
    atomic_write_json(root / STAMP_NAME, {"hash": chash, "config": config})
    write_manifest(utts, root / MANIFEST_NAME)  # last: its presence marks the corpus complete
    return root
