"""The skip-connection cap of the derived normal cell (P-DARTS) and early stopping on it."""
import json

import torch
from helpers import random_run_data, small_run_config

from emodarts.engine.search import run_search
from emodarts.model.derive import count_op, derive_cell
from emodarts.model.space import CNN_PRIMITIVES

SKIP = CNN_PRIMITIVES.index("skip_connect")
SEP = CNN_PRIMITIVES.index("sep_conv_3x3")


def _skip_heavy_alpha():
    alpha = torch.zeros(9, len(CNN_PRIMITIVES))  # 3 nodes: rows 0-1, 2-4, 5-8
    alpha[:, SKIP] = torch.tensor([5.0, 4.0, 3.0, 2.5, 1.0, 6.0, 0.5, 0.4, 0.3])
    alpha[:, SEP] = 1.5
    return alpha


def test_cap_replaces_the_weakest_skips():
    alpha = _skip_heavy_alpha()
    free = derive_cell(alpha, CNN_PRIMITIVES, 3)
    assert count_op(free, "skip_connect") == 5  # rows 0, 1 | 2, 3 | 5 (rows 4, 6-8 prefer sep_conv)
    capped = derive_cell(alpha, CNN_PRIMITIVES, 3, max_skip=2)
    assert count_op(capped, "skip_connect") == 2
    # the two strongest skip edges (rows 5 and 0: node 2 <- s0 and node 0 <- s0) keep their skip
    assert ("skip_connect", 0) in capped.nodes[0] and ("skip_connect", 0) in capped.nodes[2]
    assert derive_cell(alpha, CNN_PRIMITIVES, 3, max_skip=6) == free
    assert count_op(derive_cell(alpha, CNN_PRIMITIVES, 3, max_skip=0), "skip_connect") == 0


def test_search_stops_early_when_over_the_cap(tmp_path):
    from dataclasses import replace

    # with skip_connect the only CNN candidate, every derived normal cell is all skips: over a cap of 0
    cfg = small_run_config(epochs=5, cnn_primitives=("none", "skip_connect"))
    cfg = replace(cfg, search=replace(cfg.search, max_skip_normal=0, skip_patience=2))
    genotype = run_search(cfg, random_run_data(), tmp_path, progress=False)
    assert count_op(genotype.normal, "skip_connect") == 4  # the cap cannot be met: no other candidate
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
