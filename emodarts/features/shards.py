"""Shards: the finished chunks of an extraction that has not finished yet.

An extraction of a cache entry works in cache_dir/.partial-<entry>/: plan.json fixes the chunking, and
each finished chunk is saved as shard-NNNNN.npz, so an interrupted run continues where it stopped. A
shard is reused only for the same utterance ids, the same source stamps, extractor and settings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from emodarts.features.config import FEATURE_VERSION, FeatureConfig
from emodarts.runtime.files import atomic_write, atomic_write_json

DEFAULT_CHUNK = 64


def shard_path(work: Path, c: int) -> Path:
    return work / f"shard-{c:05d}.npz"


def load_plan(work: Path, n: int, cfg: FeatureConfig, chunk_size: Optional[int]) -> List[List[int]]:
    """The chunks (row lists) of an extraction of `n` utterances in `work`: the plan a previous run left
    there when it was for the same count and settings (its shards stay valid), else a new plan (and any
    old shards are removed)."""
    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / "plan.json"
    plan = None
    if plan_path.is_file():
        try:
            plan = json.loads(plan_path.read_text())
        except ValueError:
            plan = None
    if not plan or plan.get("n") != n or plan.get("key") != cfg.key():
        for old in work.glob("shard-*.npz"):
            old.unlink()
        plan = {"n": n, "key": cfg.key(), "chunk": int(chunk_size or DEFAULT_CHUNK)}
        atomic_write_json(plan_path, plan)
    chunk = int(plan["chunk"])
    return [list(range(s, min(s + chunk, n))) for s in range(0, n, chunk)]


def write_shard(path: Path, ids: Sequence[str], stamps: list, result: dict, extractor: str) -> None:
    """Save one chunk's extract_chunk result atomically."""
    meta = {"version": FEATURE_VERSION, "backend": extractor, "stamps": stamps,
            "errors": {str(k): v for k, v in result["errors"].items()}, "facts": result["facts"]}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, feats=result["feats"], ok=result["ok"], ids=np.asarray(list(ids), dtype=str),
                     meta=np.asarray(json.dumps(meta)))

    atomic_write(path, write)


def read_shard(path: Path, ids: Sequence[str], stamps: list, extractor: str, cfg: FeatureConfig) -> Optional[dict]:
    """A finished shard of these ids (same audio stamps, same extractor), or None (redo the chunk)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if [str(i) for i in z["ids"]] != list(ids) or meta.get("version") != FEATURE_VERSION:
                return None
            if meta.get("backend") != extractor or meta.get("stamps") != stamps:
                return None
            feats, ok = z["feats"], z["ok"]
            if feats.shape != (len(ids),) + cfg.shape or ok.shape != (len(ids),):
                return None
            return {"feats": np.array(feats), "ok": np.array(ok),
                    "errors": {int(k): v for k, v in meta["errors"].items()}, "facts": meta["facts"]}
    except Exception:  # a damaged shard (e.g. the disk filled up): redo the chunk
        return None
