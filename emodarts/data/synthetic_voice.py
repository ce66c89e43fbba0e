"""The voice of the built-in synthetic corpus (synthetic.py writes the corpus): speakers and the source-filter
synthesis of one utterance.

A glottal (Rosenberg) pulse train following an F0 contour, vowel formants (a cascade of resonators, applied
frame by frame in the STFT domain so that the vowel can change every syllable), syllables with consonant
onsets (fricative and plosive noise, nasals), a syllable-rate amplitude envelope, aspiration, breath noise and
a faint noise floor; then a per-session channel colouring. The emotions differ strongly in temporal cues and
weakly in level cues (synthetic.py says why).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np


SAMPLE_RATE = 16000
DURATION_S = 3.0

# Vowel formants (Hz) of an adult male voice, scaled per speaker; F5 fixed-ish to shape the top.
_VOWELS: Dict[str, Tuple[float, ...]] = {
    "a": (730, 1090, 2440, 3400),
    "e": (530, 1840, 2480, 3500),
    "i": (290, 2250, 3000, 3600),
    "o": (570, 840, 2410, 3300),
    "u": (320, 900, 2240, 3300),
    "ae": (660, 1720, 2410, 3400),
    "er": (490, 1350, 1690, 3300),
}
_BANDWIDTHS = (80.0, 100.0, 140.0, 220.0)
_NASAL = (260.0, 1100.0, 2300.0, 3300.0)  # a nasal murmur: low F1, damped upper formants
_VOWEL_NAMES = tuple(_VOWELS)
_N_SPECTRA = len(_VOWEL_NAMES) + 1  # + the nasal

# Emotion profiles.
# Temporal cues (strong): rate (syllables/s), accent (semitones of pitch movement per syllable) and its
# shape, declination over the utterance (semitones), jitter and shimmer (relative per-cycle sd).
# Level cues (weak, scaled by LEVEL_SCALE and blurred by speaker/utterance variation): f0_shift
# (semitones), loud (dB), tilt (dB/octave), breath (aspiration ratio).
_PROFILES: Dict[str, Dict[str, float]] = {
    "angry": dict(rate=5.6, accent=4.0, shape=0, declin=-2.5, final=-2.0, jitter=0.035, shimmer=0.20,
                  attack=0.008, f0_shift=2.0, loud=3.0, tilt=1.5, breath=-0.01),
    "happy": dict(rate=4.3, accent=7.5, shape=1, declin=1.0, final=3.0, jitter=0.010, shimmer=0.06,
                  attack=0.020, f0_shift=2.5, loud=1.5, tilt=0.5, breath=0.0),
    "neutral": dict(rate=3.4, accent=1.5, shape=2, declin=-2.0, final=-1.0, jitter=0.008, shimmer=0.05,
                    attack=0.025, f0_shift=0.0, loud=0.0, tilt=0.0, breath=0.0),
    "sad": dict(rate=2.1, accent=3.0, shape=3, declin=-3.5, final=-2.0, jitter=0.022, shimmer=0.10,
                attack=0.045, f0_shift=-1.5, loud=-3.0, tilt=-2.0, breath=0.02),
}
LEVEL_SCALE = 1.0
# Spread of the nuisance variation (per utterance / per speaker).
_UTT_GAIN_DB = 6.0  # uniform +-
_UTT_F0_SD = 2.0  # semitones
_UTT_TILT_SD = 1.5  # dB / octave
_SPK_GAIN_SD = 3.0
_SPK_TILT_SD = 1.5

_NFFT = 512
_HOP = 128


@dataclass(frozen=True)
class SyntheticSpeaker:
    speaker: str
    session: str
    gender: str
    f0: float  # Hz
    formant_scale: float
    open_quotient: float
    breath: float
    tilt: float  # dB / octave offset
    gain_db: float
    rate_factor: float
    range_factor: float
    channel_db: Tuple[float, ...]  # cosine coefficients of the channel colouring (dB)


def voice_settings() -> dict:
    """The voice's settings that the generated audio depends on (part of the corpus cache's key)."""
    return {"profiles": _PROFILES, "level_scale": LEVEL_SCALE,
            "nuisance": [_UTT_GAIN_DB, _UTT_F0_SD, _UTT_TILT_SD, _SPK_GAIN_SD, _SPK_TILT_SD]}


# --------------------------------------------------------------------------------------------------
# speakers


def make_speakers(seed: int, n_speakers: int) -> List[SyntheticSpeaker]:
    """Speakers alternate F/M (F01, M01, F02, ...); session SesNN holds FNN and MNN."""
    speakers = []
    for i in range(n_speakers):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, i]))
        gender = "F" if i % 2 == 0 else "M"
        num = i // 2 + 1
        if gender == "F":
            f0 = rng.uniform(170.0, 250.0)
            fscale = rng.uniform(1.08, 1.20)
        else:
            f0 = rng.uniform(90.0, 145.0)
            fscale = rng.uniform(0.92, 1.02)
        speakers.append(
            SyntheticSpeaker(
                speaker=f"{gender}{num:02d}",
                session=f"Ses{num:02d}",
                gender=gender,
                f0=float(f0),
                formant_scale=float(fscale),
                open_quotient=float(rng.uniform(0.5, 0.7)),
                breath=float(rng.uniform(0.02, 0.08)),
                tilt=float(rng.normal(0.0, _SPK_TILT_SD)),
                gain_db=float(rng.normal(0.0, _SPK_GAIN_SD)),
                rate_factor=float(np.exp(rng.normal(0.0, 0.04))),
                range_factor=float(np.exp(rng.normal(0.0, 0.12))),
                channel_db=tuple(float(x) for x in rng.normal(0.0, 1.5, size=5)),
            )
        )
    return speakers


# --------------------------------------------------------------------------------------------------
# synthesis


def _resonance_mag(freqs: np.ndarray, formants, bandwidths, sr: int) -> np.ndarray:
    """|H(f)| of a cascade of two-pole resonators, unit gain at DC (Klatt style)."""
    w = 2 * np.pi * freqs / sr
    z1 = np.exp(-1j * w)
    mag = np.ones_like(freqs)
    for f, b in zip(formants, bandwidths):
        r = np.exp(-np.pi * b / sr)
        theta = 2 * np.pi * f / sr
        den = 1 - 2 * r * np.cos(theta) * z1 + r * r * z1 * z1
        mag = mag * (np.abs(1 - 2 * r * np.cos(theta) + r * r) / np.abs(den))
    return mag


def _stft_filter(x: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Filter x frame by frame: gains (n_frames, NFFT//2+1) magnitude responses; weighted overlap-add."""
    n = len(x)
    n_frames = gains.shape[0]
    pad = np.zeros(_NFFT + _HOP * (n_frames - 1), dtype=np.float64)
    pad[_NFFT // 2: _NFFT // 2 + n] = x[: len(pad) - _NFFT // 2]
    win = np.sqrt(np.hanning(_NFFT + 1)[:-1])  # sqrt-Hann analysis and synthesis: COLA at hop N/4 (x2)
    idx = np.arange(_NFFT)[None, :] + _HOP * np.arange(n_frames)[:, None]
    frames = pad[idx] * win
    spec = np.fft.rfft(frames, axis=1) * gains
    out_frames = np.fft.irfft(spec, n=_NFFT, axis=1) * win
    out = np.zeros_like(pad)
    _overlap_add(out, out_frames)
    out /= _NFFT / (2 * _HOP)  # sum of win^2 over overlaps = NFFT / (2 * hop)
    return out[_NFFT // 2: _NFFT // 2 + n]


def _overlap_add(out: np.ndarray, frames: np.ndarray) -> None:
    hops_per_frame = _NFFT // _HOP
    for k in range(hops_per_frame):  # frames k, k+4, ... do not overlap each other: add them in one go
        sel = frames[k::hops_per_frame]
        m = sel.shape[0]
        start = k * _HOP
        seg = out[start: start + m * _NFFT]
        seg += sel.reshape(-1)[: len(seg)]


def _fft_shape(noise: np.ndarray, mag: np.ndarray) -> np.ndarray:
    return np.fft.irfft(np.fft.rfft(noise) * mag, n=len(noise))


def _band(freqs: np.ndarray, lo: float, hi: float, slope: float = 2.0) -> np.ndarray:
    """A smooth band-pass magnitude (Butterworth-like)."""
    f = np.maximum(freqs, 1.0)
    return 1.0 / np.sqrt((1 + (lo / f) ** (2 * slope)) * (1 + (f / hi) ** (2 * slope)))


def _raised_env(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    a = min(attack, n // 2)
    r = min(release, n - a)
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[n - r:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return env


def synthesize_utterance(speaker: SyntheticSpeaker, emotion: str, rng: np.random.Generator,
                         sr: int = SAMPLE_RATE, duration_s: float = DURATION_S) -> np.ndarray:
    """One utterance: float32 mono audio in [-1, 1], length round(sr * duration_s)."""
    prof = _PROFILES[emotion]
    L = LEVEL_SCALE
    n = int(round(sr * duration_s))
    t_ctl = np.arange(n) / sr

    # ---- timeline: syllables, one optional pause --------------------------------------------------
    lead = rng.uniform(0.05, 0.30)
    end = duration_s - rng.uniform(0.05, 0.30)
    pause_at, pause_len = None, 0.0
    if rng.random() < 0.6:
        pause_at = rng.uniform(0.35, 0.65) * duration_s
        pause_len = rng.uniform(0.15, 0.40)
    rate = prof["rate"] * speaker.rate_factor * np.exp(rng.normal(0.0, 0.05))
    sylls = []
    t = lead
    while True:
        d = np.exp(rng.normal(0.0, 0.15)) / rate
        if t + 0.6 * d > end:
            break
        if pause_at is not None and t <= pause_at < t + d:
            t += pause_len
            pause_at = None
            continue
        onset = rng.uniform(0.18, 0.32) * d
        cons = rng.choice(5, p=[0.25, 0.2, 0.15, 0.25, 0.15])  # none, s, sh, plosive, nasal
        if cons == 0:
            onset = 0.05 * d
        nucleus = (d - onset) * rng.uniform(0.78, 0.9)
        v1 = int(rng.integers(len(_VOWEL_NAMES)))
        v2 = int(rng.integers(len(_VOWEL_NAMES))) if rng.random() < 0.3 else v1
        stress = rng.random() < 0.35
        sylls.append((t, onset, nucleus, int(cons), v1, v2, stress))
        t += d

    # ---- F0 contour (semitones re the speaker's F0) ----------------------------------------------
    ctl_rate = 500
    tc = np.arange(int(duration_s * ctl_rate) + 1) / ctl_rate
    st = np.full_like(tc, L * prof["f0_shift"] + rng.normal(0.0, _UTT_F0_SD))
    st += prof["declin"] * tc / duration_s
    # slow drift: a few random low-frequency cosines
    for _ in range(3):
        st += rng.normal(0.0, 0.35) * np.cos(2 * np.pi * rng.uniform(0.2, 1.0) * tc + rng.uniform(0, 2 * np.pi))
    acc_amp = prof["accent"] * speaker.range_factor * np.exp(rng.normal(0.0, 0.15))
    shape = int(prof["shape"])
    for k, (t0, onset, nucleus, cons, v1, v2, stress) in enumerate(sylls):
        a = acc_amp * (1.5 if stress else 1.0) * np.exp(rng.normal(0.0, 0.2))
        v0 = t0 + onset
        if shape == 0:  # angry: sharp accent peak near the vowel onset
            w = max(0.25 * nucleus, 0.012)
            st += a * np.exp(-0.5 * ((tc - (v0 + 0.2 * nucleus)) / w) ** 2)
        elif shape == 1:  # happy: wide sing-song swing, alternating up/down movements across syllables
            sign = 1.0 if k % 2 == 0 else -0.5
            mid = v0 + 0.5 * nucleus
            w = 0.5 * (onset + nucleus)
            st += sign * a * np.exp(-0.5 * ((tc - mid) / w) ** 2)
        elif shape == 2:  # neutral: small smooth bump
            mid = v0 + 0.5 * nucleus
            st += a * np.exp(-0.5 * ((tc - mid) / (0.4 * nucleus)) ** 2)
        else:  # sad: a small fall inside each vowel
            inside = (tc >= v0) & (tc < v0 + nucleus)
            st -= a * np.where(inside, (tc - v0) / nucleus, 0.0) + a * (tc >= v0 + nucleus) * np.exp(
                -np.maximum(tc - v0 - nucleus, 0.0) / 0.05)
    if sylls:  # phrase-final movement on the last syllable
        t0, onset, nucleus = sylls[-1][:3]
        ramp = np.clip((tc - (t0 + onset)) / max(nucleus, 1e-3), 0.0, 1.0)
        st += prof["final"] * speaker.range_factor * ramp
    f0 = speaker.f0 * 2.0 ** (np.interp(t_ctl, tc, st) / 12.0)
    f0 = np.clip(f0, 60.0, 600.0)

    # ---- glottal source with jitter and shimmer -------------------------------------------------------
    phase = np.cumsum(f0 / sr)
    n_cycles = int(phase[-1]) + 2
    jit = rng.normal(0.0, prof["jitter"], size=n_cycles).clip(-0.25, 0.25)
    f0j = f0 * (1.0 + jit[phase.astype(np.int64)])
    phase = np.cumsum(f0j / sr)
    cyc = phase.astype(np.int64)
    frac = phase - cyc
    oq = float(np.clip(speaker.open_quotient + rng.normal(0.0, 0.03), 0.35, 0.85))
    rise, fall = 0.65 * oq, 0.35 * oq
    g = np.where(frac < rise, 0.5 - 0.5 * np.cos(np.pi * frac / rise),
                 np.where(frac < oq, np.cos(0.5 * np.pi * (frac - rise) / fall), 0.0))
    shim = np.exp(rng.normal(0.0, prof["shimmer"], size=n_cycles + 1))
    src = np.diff(g, prepend=0.0) * shim[cyc]
    src /= np.sqrt(np.mean(src ** 2)) + 1e-12
    breath = max(speaker.breath + L * prof["breath"] + rng.normal(0.0, 0.01), 0.0)
    src += breath * 6.0 * rng.standard_normal(n) * (0.3 + 0.7 * g)

    # ---- envelopes and per-frame vowel spectra --------------------------------------------------------
    voiced_env = np.zeros(n)
    fric_env = np.zeros((3, n))  # s, sh, burst
    n_frames = 1 + (n + _NFFT) // _HOP
    frame_t = (np.arange(n_frames) * _HOP) / sr  # centre of frame k (audio padded by NFFT/2)
    weights = np.zeros((n_frames, _N_SPECTRA))
    weights[:, 0] = 1.0
    attack = int(prof["attack"] * sr)
    for (t0, onset, nucleus, cons, v1, v2, stress) in sylls:
        amp = (1.4 if stress else 1.0) * np.exp(rng.normal(0.0, 0.1))
        s0 = int(t0 * sr)
        v0 = int((t0 + onset) * sr)
        v1e = min(int((t0 + onset + nucleus) * sr), n)
        if v1e - v0 > 8:
            voiced_env[v0:v1e] += amp * _raised_env(v1e - v0, attack, int(0.4 * (v1e - v0)))
        c_len = v0 - s0
        if c_len > 8 and cons in (1, 2):
            fric_env[cons - 1, s0:v0] += 0.5 * amp * _raised_env(c_len, c_len // 3, c_len // 4)
        elif c_len > 8 and cons == 3:
            b = min(c_len, int(0.02 * sr))
            burst_start = v0 - b
            fric_env[2, burst_start:v0] += 0.8 * amp * np.exp(-np.arange(b) / (0.004 * sr))
        elif c_len > 8 and cons == 4:
            voiced_env[s0:v0] += 0.45 * amp * _raised_env(c_len, c_len // 4, c_len // 4)
        # spectra per frame: nasal during a nasal onset, vowel v1 -> v2 across the nucleus
        fa = (frame_t >= t0) & (frame_t < t0 + onset)
        if cons == 4:
            weights[fa] = 0.0
            weights[fa, -1] = 1.0
        fv = (frame_t >= t0 + onset) & (frame_t < t0 + onset + nucleus + 0.05)
        if fv.any():
            pos = np.clip((frame_t[fv] - (t0 + onset)) / max(nucleus, 1e-3), 0.0, 1.0)
            mix = np.clip((pos - 0.3) / 0.4, 0.0, 1.0) if v2 != v1 else np.zeros_like(pos)
            weights[fv] = 0.0
            weights[fv, v1] += 1.0 - mix
            weights[fv, v2] += mix
    # smooth the formant transitions over ~3 frames (24 ms)
    kern = np.array([0.25, 0.5, 0.25])
    weights = np.stack([np.convolve(weights[:, j], kern, mode="same") for j in range(_N_SPECTRA)], axis=1)
    weights[0] = weights[1]
    weights[-1] = weights[-2]

    freqs = np.fft.rfftfreq(_NFFT, 1.0 / sr)
    fs = speaker.formant_scale
    spectra = np.stack(
        [_resonance_mag(freqs, [f * fs for f in _VOWELS[v]], _BANDWIDTHS, sr) for v in _VOWEL_NAMES]
        + [_resonance_mag(freqs, [f * fs for f in _NASAL], (60.0, 300.0, 400.0, 500.0), sr)
           * _band(freqs, 1.0, 700.0, 1.0)]
    )
    tilt = L * prof["tilt"] + speaker.tilt + rng.normal(0.0, _UTT_TILT_SD)  # dB / octave
    tilt_mag = 10.0 ** (tilt * np.log2(np.maximum(freqs, 100.0) / 500.0) / 20.0)
    gains = (weights @ spectra) * tilt_mag[None, :]
    voiced = _stft_filter(src * voiced_env, gains)

    # ---- noise sources: frication, bursts, breath --------------------------------------------------------
    vrms = np.sqrt(np.mean(voiced[voiced_env > 0.1] ** 2)) if np.any(voiced_env > 0.1) else 1.0
    noise = rng.standard_normal((3, n))
    freqs_full = np.fft.rfftfreq(n, 1.0 / sr)
    fric = (
        _fft_shape(noise[0], _band(freqs_full, 3800.0 * fs, 7500.0, 3.0)) * fric_env[0]  # s
        + _fft_shape(noise[1], _band(freqs_full, 1800.0 * fs, 4500.0 * fs, 3.0)) * fric_env[1]  # sh
        + _fft_shape(noise[2], _band(freqs_full, 600.0, 5000.0, 1.5)) * fric_env[2]  # plosive burst
    )
    fric *= 0.6 * vrms / (np.sqrt(np.mean(noise[0] ** 2)) + 1e-12)
    speech = voiced + fric * 10.0 ** (tilt * 0.5 / 20.0)
    # a breath inhalation in the leading silence, half of the time
    breath_sig = np.zeros(n)
    for (b0, b1) in ((0.0, lead),):
        if b1 - b0 < 0.12 or rng.random() > 0.5:
            continue
        bl = rng.uniform(0.1, min(0.3, b1 - b0))
        s = int((b1 - bl) * sr)
        e = int(b1 * sr)
        breath_sig[s:e] = _raised_env(e - s, (e - s) // 2, (e - s) // 2)
    if breath_sig.any():
        speech += 0.06 * vrms * _fft_shape(rng.standard_normal(n), _band(freqs_full, 400.0, 2500.0)) * breath_sig

    # ---- channel colouring, level ----------------------------------------------------------------------
    x = np.log2(np.maximum(freqs_full, 50.0) / 50.0) / np.log2(sr / 2 / 50.0)
    ch_db = sum(c * np.cos(np.pi * (k + 1) * x) for k, c in enumerate(speaker.channel_db))
    speech = _fft_shape(speech, 10.0 ** (ch_db / 20.0))
    active = voiced_env > 0.1
    rms = np.sqrt(np.mean(speech[active] ** 2)) if active.any() else np.sqrt(np.mean(speech ** 2)) + 1e-12
    level_db = -24.0 + L * prof["loud"] + speaker.gain_db + rng.uniform(-_UTT_GAIN_DB, _UTT_GAIN_DB)
    speech *= 10.0 ** (level_db / 20.0) / (rms + 1e-12)
    floor = _fft_shape(rng.standard_normal(n), 1.0 / np.sqrt(np.maximum(freqs_full, 50.0) / 50.0))
    speech += 10.0 ** (-62.0 / 20.0) * floor / (np.sqrt(np.mean(floor ** 2)) + 1e-12)
    peak = np.max(np.abs(speech))
    if peak > 0.97:
        speech *= 0.97 / peak
    return speech.astype(np.float32)
