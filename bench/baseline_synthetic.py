"""Difficulty check of the synthetic corpus on held-out speakers.

Prints, per speaker split: UA of a logistic regression on utterance-mean MFCCs (target 0.45-0.80) and,
unless --no-temporal, UA of a small CNN + GRU on the MFCC sequences (target >= 0.90).

    python bench/baseline_synthetic.py [--seeds 0 1 2] [--preset tiny] [--no-temporal] [--json out.json]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch load: the machine is small

import numpy as np  # noqa: E402

from emodarts.data import EMOTIONS  # noqa: E402
from emodarts.data.baseline import logistic_regression_baseline, temporal_baseline  # noqa: E402
from emodarts.data.registry import load_corpus  # noqa: E402
from emodarts.data.splits import speaker_split  # noqa: E402
from emodarts.features import FEATURE_PRESETS, build_features, default_cache_dir  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=None, help="synthetic corpus folder (default: the cache)")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder")
    ap.add_argument("--corpus-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="speaker-split seeds")
    ap.add_argument("--preset", default="tiny", choices=sorted(FEATURE_PRESETS))
    ap.add_argument("--no-temporal", action="store_true")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    t0 = time.time()
    utts = load_corpus("synthetic", args.root, seed=args.corpus_seed)
    t_corpus = time.time() - t0
    cfg = FEATURE_PRESETS[args.preset]
    t0 = time.time()
    fs = build_features(utts, cfg, args.cache or default_cache_dir(), progress=True)
    t_feat = time.time() - t0
    print(f"{len(utts)} utterances, {len({u.speaker for u in utts})} speakers; corpus {t_corpus:.1f} s, "
          f"features {fs.shape} {t_feat:.1f} s")
    lab = {e: i for i, e in enumerate(EMOTIONS)}
    results = []
    for seed in args.seeds:
        split = speaker_split(utts, seed=seed, n_test_speakers=3, n_dev_speakers=2)
        xs = {k: fs.take(getattr(split, k)) for k in ("train", "dev", "test")}
        ys = {k: np.array([lab[u.label] for u in getattr(split, k)]) for k in ("train", "dev", "test")}
        lr = logistic_regression_baseline(xs["train"], ys["train"], xs["test"], ys["test"], n_classes=4)
        row = {"seed": seed, "test_speakers": split.speakers()["test"], "logreg_ua": lr["ua"],
               "logreg_train_ua": lr["train_ua"]}
        msg = f"split {seed} test={','.join(row['test_speakers'])}: logreg UA {lr['ua']:.3f} (train {lr['train_ua']:.3f})"
        if not args.no_temporal:
            t1 = time.time()
            tm = temporal_baseline(xs["train"], ys["train"], xs["test"], ys["test"], xs["dev"], ys["dev"],
                                   n_classes=4, epochs=args.epochs, seed=seed, threads=args.threads)
            row.update(temporal_ua=tm["ua"], temporal_dev_ua=tm["dev_ua"], temporal_best_epoch=tm["best_epoch"],
                       temporal_s=time.time() - t1)
            msg += (f"; CNN+GRU UA {tm['ua']:.3f} (dev {tm['dev_ua']:.3f}, epoch {tm['best_epoch']}, "
                    f"{time.time() - t1:.0f} s)")
        print(msg, flush=True)
        results.append(row)
    summary = {"logreg_ua_mean": float(np.mean([r["logreg_ua"] for r in results]))}
    if not args.no_temporal:
        summary["temporal_ua_mean"] = float(np.mean([r["temporal_ua"] for r in results]))
    print("mean: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "splits": results, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
