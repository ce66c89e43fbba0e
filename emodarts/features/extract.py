"""build_features: extract (or reuse) the features of a list of utterances into the cache.

Extraction runs chunk by chunk: librosa one file at a time (over a process pool with workers > 1), or
torchaudio batched (files decoded over `workers` threads). Precomputed features (kind npy) are loaded one
file at a time whatever the extractor; their row count is the corpus's (npy.corpus_rows). Each finished
chunk is saved as a shard (shards.py); when every chunk is done the entry is assembled from the shards
(cache.write_entry) and the shards are removed. Files that cannot be used are left out and listed (with a
report) or stop the extraction (without one).
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from emodarts.features import compute
from emodarts.features.audio import audio_facts, check_duration, read_audio
from emodarts.features.cache import (
    FeatureSet,
    cache_dir_for,
    file_stamp,
    load_cached,
    source_path,
    utt_record,
    work_dir_for,
    write_entry,
)
from emodarts.features.config import FEATURE_VERSION, FeatureConfig, with_rows
from emodarts.features.npy import FeatureFileError, corpus_rows
from emodarts.features.shards import load_plan, read_shard, shard_path, write_shard
from emodarts.features.extractor_choice import EXTRACTORS, resolve_extractor
from emodarts.features.torchaudio_extractor import features_torch, torch_device
from emodarts.runtime.errors import DataError

Items = Sequence[Tuple[str, str]]  # (utt_id, path) of one chunk


# ------------------------------------------------------------------------------------------- one chunk
def _error(exc: Exception) -> list:
    return [getattr(exc, "kind", "unreadable"), str(exc)]


def _chunk_per_file(items: Items, cfg: FeatureConfig, out: dict, strict: bool) -> None:
    """librosa (or .npy loading) one file at a time."""
    for i, (uid, path) in enumerate(items):
        try:
            if not path:  # npy: the manifest names no features file for this utterance
                raise FeatureFileError(f"no features file for utterance {uid!r} (the manifest's features column "
                                       f"is empty or absent)", "missing-features")
            out["feats"][i] = compute.extract_features(path, cfg)
            if cfg.kind != "npy":
                facts = out["facts"][i] = audio_facts(path)
                if facts:
                    check_duration(path, facts["frames"] / facts["sr"], cfg)
            out["ok"][i] = True
        except DataError as exc:
            out["errors"][i] = _error(exc)
            if strict:
                break


def _decode(item: Tuple[str, str], cfg: FeatureConfig):
    """(samples, rate, facts) of one file, or the DataError that rules it out."""
    try:
        y, r, f = read_audio(item[1])
        check_duration(item[1], len(y) / r, cfg)
        return y, r, f
    except DataError as exc:
        return exc


def _chunk_torchaudio(items: Items, cfg: FeatureConfig, out: dict, strict: bool, device: Optional[str],
                      threads: int) -> None:
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            decoded = list(pool.map(lambda it: _decode(it, cfg), items))
    else:
        decoded = [_decode(it, cfg) for it in items]
    good = []
    for i, d in enumerate(decoded):
        if isinstance(d, Exception):
            out["errors"][i] = _error(d)
            if strict:
                break
            continue
        y, r, f = d
        out["facts"][i] = {"sr": r, "channels": int(f["channels"]), "subtype": str(f["subtype"]), "frames": len(y)}
        good.append(i)
    if good and not (strict and out["errors"]):
        out["feats"][good] = features_torch([decoded[i][0] for i in good], [decoded[i][1] for i in good], cfg,
                                            device)
        out["ok"][good] = True


def extract_chunk(items: Items, cfg: FeatureConfig, extractor: str = "librosa",
                  device: Optional[str] = None, strict: bool = False, threads: int = 1) -> dict:
    """Features of one chunk of (utt_id, path): {"feats": (n, F, T) float32, "ok": (n,) bool,
    "errors": {row: [kind, message]}, "facts": [{sr, channels, subtype} | None]}. With `strict`, stops at
    the first unusable file. Runs in a worker process (librosa) or in the caller (torchaudio)."""
    n = len(items)
    out = {"feats": np.zeros((n,) + cfg.shape, dtype=np.float32), "ok": np.zeros(n, dtype=bool),
           "errors": {}, "facts": [None] * n}
    if extractor not in EXTRACTORS:
        raise DataError(f"unknown feature extractor (--backend) {extractor!r}; choose one of {', '.join(EXTRACTORS)}")
    if extractor == "librosa" or cfg.kind == "npy":
        _chunk_per_file(items, cfg, out, strict)
    else:
        _chunk_torchaudio(items, cfg, out, strict, device, threads)
    return out


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _chunk_task(args):
    c, items, cfg, extractor, device, strict = args
    return c, extract_chunk(items, cfg, extractor, device, strict)


# ------------------------------------------------------------------------------------- the extraction
class _Extraction:
    """One extraction of `utts` into the work folder `work`: its chunks, the source stamps, the results."""

    def __init__(self, work: Path, utts: list, cfg: FeatureConfig, extractor: str, strict: bool,
                 chunk_size: Optional[int]):
        self.work, self.utts, self.cfg, self.extractor, self.strict = work, utts, cfg, extractor, strict
        self.chunks = load_plan(work, len(utts), cfg, chunk_size)
        self.sources = [source_path(u, cfg) for u in utts]
        self.stamps = [file_stamp(p) for p in self.sources]
        self.results: Dict[int, dict] = {}

    def items(self, c: int) -> List[Tuple[str, str]]:
        return [(self.utts[i].utt_id, self.sources[i]) for i in self.chunks[c]]

    def _ids_stamps(self, c: int) -> Tuple[list, list]:
        rows = self.chunks[c]
        return [self.utts[i].utt_id for i in rows], [self.stamps[i] for i in rows]

    def _check(self, res: dict) -> None:
        if self.strict and res["errors"]:
            raise DataError(next(iter(res["errors"].values()))[1])

    def reuse_shards(self) -> List[int]:
        """Take the finished shards a previous run left; returns the chunks still to extract."""
        pending = []
        for c in range(len(self.chunks)):
            done = read_shard(shard_path(self.work, c), *self._ids_stamps(c), self.extractor, self.cfg)
            if done is None:
                pending.append(c)
                continue
            self._check(done)
            self.results[c] = done
        return pending

    def finish(self, c: int, res: dict) -> None:
        """Keep a chunk's result and save it as a shard (strict: the first unusable file stops here)."""
        self._check(res)
        write_shard(shard_path(self.work, c), *self._ids_stamps(c), res, self.extractor)
        self.results[c] = res

    def rows_done(self) -> int:
        return sum(len(self.chunks[c]) for c in self.results)


_LABELS = {"mfcc": "MFCC", "logmel": "log mel", "spectrogram": "spectrogram", "npy": "npy features"}


def _progress(ex: _Extraction, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=len(ex.utts), initial=ex.rows_done(), unit="utt", dynamic_ncols=True,
                desc=f"{_LABELS[ex.cfg.kind]} {ex.cfg.shape[0]}x{ex.cfg.shape[1]} ({ex.extractor})")


def _run_pool(ex: _Extraction, pending: List[int], workers: int, device: Optional[str],
              done: Callable[[int, dict], None]) -> None:
    """librosa chunks over a process pool (spawned; the workers ignore Ctrl-C, which reaches the whole
    process group: the parent stops them cleanly)."""
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(min(workers, len(pending)), initializer=_ignore_sigint)
    try:
        tasks = [(c, ex.items(c), ex.cfg, ex.extractor, device, ex.strict) for c in pending]
        for c, res in pool.imap_unordered(_chunk_task, tasks):
            done(c, res)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _run_chunks(ex: _Extraction, pending: List[int], workers: int, device: Optional[str], progress: bool) -> None:
    """Extract the pending chunks (in a pool, or here), saving each as a shard as it finishes."""
    bar = _progress(ex, progress)

    def done(c: int, res: dict) -> None:
        ex.finish(c, res)
        if bar is not None:
            bar.update(len(ex.chunks[c]))

    try:
        if ex.extractor == "librosa" and workers > 1 and len(pending) > 1:
            _run_pool(ex, pending, workers, device, done)
        else:
            dev = torch_device(device) if ex.extractor == "torchaudio" else None
            for c in pending:
                done(c, extract_chunk(ex.items(c), ex.cfg, ex.extractor, dev, ex.strict, threads=max(1, workers)))
    finally:
        if bar is not None:
            bar.close()


def _outcome(ex: _Extraction) -> Tuple[List[int], List[Optional[dict]], List[dict]]:
    """(rows kept, audio facts per row, skipped records) over all chunks; a DataError (with `skipped`)
    when no file is usable."""
    ok = np.concatenate([ex.results[c]["ok"] for c in range(len(ex.chunks))])
    facts: List[Optional[dict]] = []
    skipped = []
    for c, rows in enumerate(ex.chunks):
        facts.extend(ex.results[c]["facts"])
        for r, (kind, msg) in sorted(ex.results[c]["errors"].items()):
            u = ex.utts[rows[r]]
            path = ex.sources[rows[r]] or u.path
            skipped.append({"utt_id": u.utt_id, "path": path, "kind": kind, "reason": msg,
                            "stamp": ex.stamps[rows[r]]})
    kept = [i for i in range(len(ex.utts)) if ok[i]]
    if not kept:
        reasons = "; ".join(s["reason"] for s in skipped[:3])
        what = "features" if ex.cfg.kind == "npy" else "audio"
        err = DataError(f"none of the {len(ex.utts)} {what} files could be used ({reasons}"
                        + (" ..." if len(skipped) > 3 else "") + ")")
        err.skipped = skipped
        raise err
    return kept, facts, skipped


def _notes(utts: Sequence, facts: Sequence[Optional[dict]], cfg: FeatureConfig) -> Tuple[List[dict], dict]:
    """Conversions worth knowing: files at a sample rate other than the corpus's usual one (resampled)
    and files with more than one channel (averaged). Also returns counts of rates, channels and formats."""
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


def _assemble(ex: _Extraction, folder: Path) -> None:
    """Write the entry `folder` from the finished chunks (cache.write_entry: all or nothing)."""
    kept, facts, skipped = _outcome(ex)
    utts, cfg = ex.utts, ex.cfg
    notes, audio = _notes([utts[i] for i in kept], [facts[i] for i in kept], cfg)
    index = {"version": FEATURE_VERSION, "key": cfg.key(), "config": cfg.record(),
             "utt_ids": [utts[i].utt_id for i in kept],
             "utterances": [utt_record(utts[i]) for i in kept], "stamps": [ex.stamps[i] for i in kept],
             "skipped": skipped, "notes": notes, "audio": audio, "backend": ex.extractor,
             "requested": len(utts), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    blocks = (ex.results[c]["feats"][ex.results[c]["ok"]] for c in range(len(ex.chunks)))
    write_entry(folder, blocks, len(kept), cfg, index, utts)


def _extract_into(work: Path, folder: Path, utts: list, cfg: FeatureConfig, progress: bool, strict: bool,
                  workers: int, extractor: str, device: Optional[str], chunk_size: Optional[int]) -> None:
    """Extract the missing shards of `utts` into `work`, then assemble the entry `folder` from them."""
    ex = _Extraction(work, utts, cfg, extractor, strict, chunk_size)
    _run_chunks(ex, ex.reuse_shards(), workers, device, progress)
    _assemble(ex, folder)
    shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------- build_features
def _check_request(utts: list) -> None:
    if not utts:
        raise DataError("no utterances to extract features from")
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"duplicate utterance id {dup!r} in the feature request")


def _report_result(result: FeatureSet, report) -> None:
    """Strict (no report): the first skipped file is an error; else skipped files and notes go to `report`."""
    if result.skipped:
        if report is None:
            first = result.skipped[0]
            more = f" (and {len(result.skipped) - 1} more file(s))" if len(result.skipped) > 1 else ""
            raise DataError(first["reason"] + more)
        for s in result.skipped:
            report.skip(s["path"], s["kind"], s["reason"], s.get("utt_id"))
    if report is not None:
        for s in result.notes:
            report.note(s["path"], s["kind"], s["reason"], s.get("utt_id"))


def build_features(utts: Sequence, cfg: FeatureConfig, cache_dir: Path, progress: bool = True, *,
                   report=None, workers: int = 1, extractor: str = "auto", device: Optional[str] = None,
                   chunk_size: Optional[int] = None) -> FeatureSet:
    """Features of `utts` (in their order), computed once and cached under
    cache_dir/<cfg.key()>-<hash of ids and paths>/{features.npy, index.json}.

    Extraction runs chunk by chunk (librosa over `workers` processes, or batched torchaudio on `device`;
    `extractor` auto, librosa or torchaudio, as extractor_choice.resolve_extractor reads it);
    each finished chunk is saved as a shard in cache_dir/.partial-<entry>/, so an interrupted run continues
    where it stopped. The entry is then assembled in a temporary folder and renamed into place (index.json
    is the completion mark), and reused while the ids, the settings and the audio files' size/mtime still
    match (whatever extractor wrote it). The returned features are a read-only memmap.

    For kind npy, each utterance's `features` file is loaded instead of its audio; the entry's (and the
    returned FeatureSet's) cfg has the files' row count as n_mfcc.

    Without `report`, the first unusable file raises a DataError naming it (and no shard is kept). With a
    `report` (data.report.SkipReport), unusable files are left out of the entry and recorded there (the
    entry's index.json keeps them too, for later runs); a DataError only when no file is usable.
    """
    utts = list(utts)
    _check_request(utts)
    extractor = resolve_extractor(extractor, cfg.kind)
    strict = report is None
    if cfg.kind == "npy":  # the arrays' row count, not the preset's, is the features' height
        rows = corpus_rows([source_path(u, cfg) for u in utts])
        cfg = with_rows(cfg, rows) if rows else cfg
    folder = cache_dir_for(utts, cfg, cache_dir)
    result = load_cached(folder, utts, cfg)
    if result is None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        work = work_dir_for(folder)
        try:
            _extract_into(work, folder, utts, cfg, progress, strict, workers, extractor, device, chunk_size)
        except DataError as exc:
            if strict:
                shutil.rmtree(work, ignore_errors=True)
            elif getattr(exc, "skipped", None):
                for e in exc.skipped:
                    report.skip(e["path"], e["kind"], e["reason"], e.get("utt_id"))
            raise
        result = load_cached(folder, utts, cfg)
        if result is None:
            raise DataError(f"feature cache {folder} could not be read back after writing it")
    _report_result(result, report)
    return result
