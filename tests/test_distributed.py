"""Data parallel on CPU: 2 gloo processes give the alphas of one process on the same global batch, dropout on."""
import socket
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import random_run_data, small_run_config

from emodarts.engine.search import run_search
from emodarts.engine.training import run_train
from emodarts.model.dropout import BatchDropout, drop_path
from emodarts.runtime.distributed import DistInfo, global_batch, set_info


def _config(second_order: bool = False):
    # dropout on: every rank draws the masks of the whole global batch (8, 4 per rank) and keeps its rows
    # (distributed.batch_mask), so the data-parallel run drops what one process drops
    return small_run_config(epochs=2, second_order=second_order, dropout=0.3)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    set_info(DistInfo(rank, world))
    try:
        data = random_run_data()
        genotype = run_search(_config(), data, out, progress=False)  # raises if the replicas diverge
        run_train(replace(_config(), train=replace(_config().train, epochs=1)), genotype, data, out, progress=False)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    run_search(_config(), random_run_data(), tmp_path / "single", progress=False)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["model"]
    single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)["model"]
    for name in ("alpha_normal", "alpha_reduce", "alpha_seq"):
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=2e-6)
    # the weights took the same steps too (batch-norm statistics of the global batch included)
    for name, value in single.items():
        if value.is_floating_point():
            torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert (tmp_path / "ddp" / "model.pt").exists()


def test_shards_draw_the_masks_of_one_process():
    """Dropout and drop-path on each rank's shard of an uneven global batch (7 over 3 ranks) give, put
    together, exactly what one process gives on the whole batch from the same seed."""
    x = torch.randn(7, 3, 5)

    def apply(t):
        return drop_path(BatchDropout(0.3).train()(t), 0.4, True)

    torch.manual_seed(0)
    whole = apply(x)
    parts = []
    try:
        for rank in range(3):
            set_info(DistInfo(rank, 3))
            torch.manual_seed(0)
            with global_batch(7) as part:
                parts.append(apply(x[part]))
    finally:
        set_info(DistInfo())
    assert torch.equal(torch.cat(parts), whole)
    assert (whole == 0).any() and (whole != 0).any()
