"""Small replicas of the real corpus layouts (real folder and file names, real label-file formats, a few
tenths of a second of synthetic audio per file), for the loader, protocol, bad-input and cv tests."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

sf = pytest.importorskip("soundfile", reason="the replicas write audio in formats only soundfile writes; the modules that use them are skipped where it is missing (the GPU machine)")

SR = 16000
N_SAMPLES = 4800  # 0.3 s (above features.MIN_DURATION_S): 9,600 bytes of PCM_16 + a 44-byte header


def tiny_wav(path: Path, seed: int = 0, sr: int = SR, n: int = N_SAMPLES, subtype: str = "PCM_16",
             channels: int = 1) -> Path:
    """A short noisy tone (deterministic from seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    y = 0.3 * np.sin(2 * np.pi * (150 + 10 * (seed % 17)) * t) + 0.05 * rng.standard_normal(n)
    y = y.astype(np.float32)
    if channels > 1:
        y = np.stack([y * (1 - 0.2 * c) for c in range(channels)], axis=1)
    sf.write(str(path), y, sr, subtype=subtype, format="WAV")
    return path


# ------------------------------------------------------------------------------------------- IEMOCAP
IEMOCAP_CYCLE = ("neu", "hap", "exc", "ang", "sad", "fru", "xxx", "neu", "sur", "ang", "sad", "exc")


def iemocap_dialogs(session: int) -> List[str]:
    # both F and M improvisations of the same number: the published code kept only one of each pair
    return [f"Ses0{session}F_impro01", f"Ses0{session}M_impro01", f"Ses0{session}F_script01_1"]


def make_iemocap(root: Path, per_speaker: int = 3) -> List[dict]:
    """IEMOCAP_full_release/Session1..5 under `root`. Returns one record per labelled utterance:
    utt_id, label, speaker, session, improvised, path, label_file."""
    base = root / "IEMOCAP_full_release"
    records = []
    seed = 0
    for s in range(1, 6):
        sdir = base / f"Session{s}"
        eval_dir = sdir / "dialog" / "EmoEvaluation"
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / "Categorical").mkdir(exist_ok=True)
        (eval_dir / "Categorical" / f"Ses0{s}F_impro01_e1_cat.txt").write_text(
            f"Ses0{s}F_impro01_F000 :Neutral state; ()\n")
        for d, dialog in enumerate(iemocap_dialogs(s)):
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            t = 0.0
            for k in range(per_speaker):
                for g in ("F", "M"):
                    utt = f"{dialog}_{g}{k:03d}"
                    label = IEMOCAP_CYCLE[(seed + d) % len(IEMOCAP_CYCLE)]
                    wav = tiny_wav(sdir / "sentences" / "wav" / dialog / f"{utt}.wav", seed)
                    seed += 1
                    lines += [f"[{t:.4f} - {t + 1.5:.4f}]\t{utt}\t{label}\t[2.5000, 3.0000, 3.5000]",
                              "C-E1:\tNeutral;\t()", "C-E2:\tNeutral;\t()", "A-E1:\tval 3; act 3; dom  3;\t()", ""]
                    t += 2.0
                    records.append({"utt_id": utt, "label": label, "speaker": f"Ses0{s}{g}", "session": f"Ses0{s}",
                                    "improvised": "_impro" in dialog, "path": str(wav),
                                    "label_file": str(eval_dir / f"{dialog}.txt")})
            (eval_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        (eval_dir / f"._Ses0{s}F_impro01.txt").write_bytes(b"\x00\x05\x16\x07 mac metadata")
    return records


# ---------------------------------------------------------------------------------------- MSP-IMPROV
MSP_CONSENSUS_CYCLE = ("A", "H", "S", "N", "N", "O", "X", "H", "A")


def make_msp_improv(root: Path, with_labels: bool = True, scenarios=("R", "S", "P")) -> List[dict]:
    """MSP-IMPROV/Audio/sessionN/S01E/T/MSP-IMPROV-S01E-G0N-T-XX01.wav (+ Evalution.txt). Records: utt_id,
    target, consensus, speaker, session, scenario, path."""
    base = root / "MSP-IMPROV"
    records, lines = [], []
    seed = 100
    for s in range(1, 7):
        for emo in ("A", "H", "S", "N"):
            for scen in scenarios:
                for g in ("F", "M"):
                    clip = f"MSP-IMPROV-S01{emo}-{g}0{s}-{scen}-FM0{s}"
                    path = tiny_wav(base / "Audio" / f"session{s}" / f"S01{emo}" / scen / f"{clip}.wav", seed)
                    consensus = MSP_CONSENSUS_CYCLE[seed % len(MSP_CONSENSUS_CYCLE)]
                    seed += 1
                    lines.append(f"UTD-IMPROV-S01{emo}-{g}0{s}-{scen}-FM0{s}.avi; {consensus}; A:3.000000; "
                                 f"V:2.500000; D:3.000000; N:4.000000;")
                    lines.append(f"   Evaluator: {consensus}; 3; 2; 3")
                    records.append({"utt_id": clip, "target": emo, "consensus": consensus, "speaker": f"{g}0{s}",
                                    "session": f"session{s}", "scenario": scen, "path": str(path)})
    if with_labels:
        (base / "Evalution.txt").write_text("\n".join(lines) + "\n")
    return records


# --------------------------------------------------------------------------------------- MSP-Podcast
PODCAST_CYCLE = ("N", "H", "A", "S", "N", "U", "C", "O", "X", "D", "F", "H")
PODCAST_SPLITS = ("Train", "Train", "Train", "Development", "Test1", "Test2")


def make_msp_podcast(root: Path, n_speakers: int = 12, per_speaker: int = 6, n_unknown: int = 4) -> List[dict]:
    """MSP-Podcast/Audios/*.wav + Labels/labels_consensus.csv. Speakers are tied to one split set (as in
    the release); a few clips have SpkrID Unknown. Records: file, label, speaker_id, gender, split, path."""
    base = root / "MSP-Podcast"
    (base / "Labels").mkdir(parents=True, exist_ok=True)
    records = []
    seed = 500
    rows = [["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]]
    for spk in range(n_speakers + 1):
        unknown = spk == n_speakers
        n = n_unknown if unknown else per_speaker
        for k in range(n):
            name = f"MSP-PODCAST_{spk + 1:04d}_{k + 1:04d}.wav"
            path = tiny_wav(base / "Audios" / name, seed)
            label = PODCAST_CYCLE[seed % len(PODCAST_CYCLE)]
            split = PODCAST_SPLITS[(seed if unknown else spk) % len(PODCAST_SPLITS)]
            gender = "Unknown" if unknown else ("Female" if spk % 2 == 0 else "Male")
            spkr = "Unknown" if unknown else str(100 + spk)
            seed += 1
            rows.append([name, label, "3.4", "4.0", "3.6", spkr, gender, split])
            records.append({"file": name, "label": label, "speaker_id": spkr, "gender": gender, "split": split,
                            "path": str(path)})
    with open(base / "Labels" / "labels_consensus.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return records


# ----------------------------------------------------------------------------------------------- csv
CSV_LABELS = ("Anger", "happy", "neu", "SAD", "neutral", "ang", "Happiness", "sadness")


def make_csv_corpus(root: Path, n_speakers: int = 8, per_speaker: int = 4) -> Tuple[Path, List[dict]]:
    """root/manifest.csv (path,label,speaker,session,split; no utt_id) + root/wav/<spk>/<n>.wav."""
    root.mkdir(parents=True, exist_ok=True)
    rows, records = [["path", "label", "speaker", "session", "split"]], []
    seed = 900
    for s in range(n_speakers):
        spk = f"{'F' if s % 2 == 0 else 'M'}{s // 2 + 1:02d}"
        for k in range(per_speaker):
            rel = f"wav/{spk}/{k}.wav"
            tiny_wav(root / rel, seed)
            label = CSV_LABELS[seed % len(CSV_LABELS)]
            split = ("train", "train", "dev", "test")[s % 4]
            rows.append([rel, label, spk, f"S{s // 2 + 1}", split])
            records.append({"rel": rel, "label": label, "speaker": spk, "session": f"S{s // 2 + 1}", "split": split})
            seed += 1
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root / "manifest.csv", records


def counts(values) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
