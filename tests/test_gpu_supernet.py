"""Issue 13 (GPU readiness): whole fused search steps on a GPU. The tests that need a GPU are marked `gpu`
(skipped, with the reason, where torch.cuda.is_available() is false); `python bench/run_all.py` runs them.

- the fused supernet on CUDA against the reference: logits and every gradient of one step, and N search
  steps first and second order (`emodarts compare --device cuda`), both sequential spaces, judged against a
  float64 reference run as tests/parity.py / `emodarts compare` judge;
- no host synchronisation: a fused forward + backward under torch.cuda.set_sync_debug_mode("error"), and a
  whole search step (alpha step + weight step) whose only synchronisations are the scalars the training code
  reads on purpose (the logged loss, the finite-difference step of the second order), none in the fused code;
- a CUDA graph of a whole fused supernet forward + backward, replayed with the eager result;
- resume on a GPU: the CUDA random state travels with the checkpoint, so the dropout masks after a resume
  are those of an uninterrupted run.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from helpers import random_run_data, small_model_config, small_run_config, sync_debug
from test_fused_supernet import judge_step, step_grads
from torch import nn

from emodarts.model.space import DARTS_SEQ_PRIMITIVES
from emodarts.model.supernet import Supernet

ALL_SEQ = ("none", "skip_connect", "lstm_1", "lstm_2", "rnn_1", "rnn_3", "lstm_att_1", "rnn_att_2")
SPACES = ["emodarts", "darts"]
ROOT = Path(__file__).resolve().parents[1]
FUSED_CODE = (str(ROOT / "emodarts" / "ops") + os.sep, str(ROOT / "kernels") + os.sep,
              os.sep + os.path.join("emodarts", "kernels") + os.sep)
# the synchronisations the training code makes on purpose (file, function): a scalar it needs on the host
INTENDED_SYNCS = {("losses.py", "weight_step"), ("architect.py", "finite_difference_hvp")}


@pytest.fixture
def ieee_fp32(monkeypatch):
    """The float32 reference must not be rounder than the fused path it judges: no TF32 (cuDNN's default)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def model_config(seq_space, dropout=0.0, hidden=16):
    prims = DARTS_SEQ_PRIMITIVES if seq_space == "darts" else ALL_SEQ
    return small_model_config(dropout=dropout, seq_nodes=3, seq_cells=2, seq_primitives=prims, seq_space=seq_space,
                              hidden=hidden)


# --------------------------------------------------------------------------------------------------
# parity on CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("seq_space", SPACES)
def test_fused_supernet_step_equals_reference_on_cuda(seq_space, ieee_fp32):
    """Logits and the gradient of every weight and alpha: fused (Triton + CUDA) in float32 against the
    reference in float32 on CUDA, both against the reference in float64."""
    torch.manual_seed(5)
    cfg = model_config(seq_space)
    state = Supernet(cfg, 10, 4).state_dict()
    x, y = torch.randn(6, 1, 10, 17), torch.randint(0, 4, (6,))
    verdicts = judge_step(step_grads("reference", cfg, state, x, y, torch.float64, "cuda"),
                          step_grads("reference", cfg, state, x, y, torch.float32, "cuda"),
                          step_grads("fused", cfg, state, x, y, torch.float32, "cuda"))
    assert len(verdicts) > 10


@pytest.mark.gpu
@pytest.mark.parametrize("seq_space", SPACES)
@pytest.mark.parametrize("order", ["first", "second"])
def test_compare_search_steps_on_cuda(seq_space, order, tmp_path, ieee_fp32):
    """`emodarts compare --device cuda`: two search steps (alpha step, first or second order, then weight
    step) with the reference and the fused backend from one state, losses, logits, every weight and alpha
    gradient and the alphas within tolerance of the float64 run."""
    from click.testing import CliRunner

    from emodarts.cli.commands import cli

    out = tmp_path / "report.json"
    args = ["compare", "--preset", "tiny", "--device", "cuda", "--steps", "2", "--seq-space", seq_space,
            "--json", str(out)] + (["--second-order"] if order == "second" else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["ok"] and report["second_order"] == (order == "second"), result.output


# --------------------------------------------------------------------------------------------------
# no host synchronisation




class SyncLog:
    """Collects every "synchronizing CUDA operation" warning (torch.cuda.set_sync_debug_mode("warn")) with the
    Python stack that made it, and attributes each to the innermost frame of this project."""

    def __init__(self):
        self.records = []

    @contextlib.contextmanager
    def capture(self):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            previous = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if "synchroniz" in str(message):
                    self.records.append(traceback.extract_stack()[:-1])
                else:
                    previous(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            yield self

    @staticmethod
    def site(stack):
        """(file name, function, source line) of the innermost frame in this project, or None."""
        for frame in reversed(stack):
            if frame.filename.startswith("<"):  # <frozen runpy>, <string>, ...
                continue
            path = os.path.abspath(frame.filename)
            if path.startswith(str(ROOT)) and os.sep + "tests" + os.sep not in path:
                return os.path.basename(path), frame.name, (frame.line or "").strip(), path
        return None

    def unexpected(self):
        """Synchronisations that are not the training code's deliberate scalar reads (float(...))."""
        bad = []
        for stack in self.records:
            site = self.site(stack)
            if site is None:
                continue  # made outside this project's code (e.g. by the test itself)
            name, func, line, path = site
            fused_code = any(part in path for part in FUSED_CODE)
            if fused_code or (name, func) not in INTENDED_SYNCS or "float(" not in line:
                bad.append(f"{name}:{func}: {line}")
        return bad


def _fake_sync():
    warnings.warn("called a synchronizing CUDA operation", UserWarning)


def test_sync_log_attribution():
    """The bookkeeping of the GPU test below, checked on the CPU with stand-in warnings: a sync reached from
    the test itself is ignored, one inside the project's code counts, with its file, function and line."""
    log = SyncLog()
    with pytest.warns(UserWarning, match="something else"), log.capture():
        _fake_sync()
        warnings.warn("something else", UserWarning)  # passed through, not recorded
    assert len(log.records) == 1 and log.unexpected() == []  # the innermost project frame is a test: ignored
    log = SyncLog()
    with log.capture():
        _call_in_project(_fake_sync)
    assert len(log.unexpected()) == 1 and log.unexpected()[0].startswith("mixed_sum.py")


def _call_in_project(fn):
    """Calls fn from a frame that claims a file of the fused code (emodarts/ops/mixed_sum.py)."""
    code = compile("fn()", str(ROOT / "emodarts" / "ops" / "mixed_sum.py"), "exec")
    exec(code, {"fn": fn})


def _search_parts(seq_space, second_order, dropout=0.1):
    from emodarts.engine.architect import Architect
    from emodarts.engine.config import PRESETS

    sc = PRESETS["tiny"].search
    torch.manual_seed(0)
    model = Supernet(model_config(seq_space, dropout=dropout), 10, 4, backend="fused").cuda()
    w_opt = torch.optim.SGD(model.weights(), sc.w_lr, momentum=sc.w_momentum, weight_decay=sc.w_weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), sc.alpha_lr, betas=sc.alpha_betas)
    architect = Architect(model, w_opt, a_opt, second_order=second_order)
    x = torch.randn(8, 1, 10, 17, device="cuda")
    y = torch.randint(0, 4, (8,), device="cuda")
    return model, w_opt, architect, x, y, sc


@pytest.mark.gpu
@pytest.mark.parametrize("seq_space", SPACES)
def test_fused_forward_backward_never_synchronises(seq_space):
    """The fused part of every search step (the supernet's forward and backward, dropout on) under
    set_sync_debug_mode("error"): any synchronising call raises."""
    model, _, _, x, y, _ = _search_parts(seq_space, False)
    params = list(model.parameters())

    def fwd_bwd():
        loss = nn.functional.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params, allow_unused=True)

    fwd_bwd()  # warm: Triton compiles, cached indices
    with sync_debug("error"):
        fwd_bwd()
        fwd_bwd()
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("seq_space", SPACES)
@pytest.mark.parametrize("second_order", [False, True], ids=["first", "second"])
def test_search_step_synchronises_only_where_the_training_code_reads_a_scalar(seq_space, second_order):
    """A whole search step as bench/bench_search.py measures it (Architect.step, then train.weight_step),
    under set_sync_debug_mode("warn"): every synchronisation is one the training code makes on purpose
    (weight_step's logged float(loss); the second order's float(norm) for its finite-difference step), none in
    the fused code (emodarts/ops, kernels). (A sync inside a backward pass is reported at the autograd call
    that ran it, which is not a float(...) line: it fails too.)"""
    from emodarts.engine.losses import weight_step

    model, w_opt, architect, x, y, sc = _search_parts(seq_space, second_order)

    def step():
        architect.step(x, y, x, y)
        weight_step(model, w_opt, x, y, sc.grad_clip)

    step()  # warm
    log = SyncLog()
    with sync_debug("warn"), log.capture():
        step()
    torch.cuda.synchronize()
    assert not log.unexpected(), "\n".join(log.unexpected())


# --------------------------------------------------------------------------------------------------
# CUDA graphs


@pytest.mark.gpu
@pytest.mark.parametrize("seq_space", SPACES)
def test_fused_supernet_forward_backward_in_a_cuda_graph(seq_space):
    """A whole fused supernet forward + backward (batch norm in training mode, no dropout) captured once in a
    CUDA graph; replayed on new inputs it gives the eager result."""
    model, _, _, x, y, _ = _search_parts(seq_space, False, dropout=0.0)
    params = list(model.parameters())

    def fwd_bwd():
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [loss.detach()] + [g for g in grads if g is not None]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fwd_bwd()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = fwd_bwd()
    for seed in (1, 2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
        y.copy_(torch.randint(0, 4, y.shape, device="cuda", generator=gen))
        graph.replay()
        eager = fwd_bwd()
        assert len(static) == len(eager)
        for i, (a, b) in enumerate(zip(static, eager)):
            scale = b.abs().max().item() + 1e-30
            assert (a - b).abs().max().item() <= 1e-4 * scale, f"tensor {i} differs after replay"


# --------------------------------------------------------------------------------------------------
# resume on a GPU


@pytest.mark.gpu
def test_rng_state_saves_and_restores_the_gpu_generator():
    from emodarts.engine.checkpoint import rng_state, set_rng_state

    torch.rand(1, device="cuda")  # CUDA initialised
    state = rng_state()
    assert "cuda" in state and len(state["cuda"]) == torch.cuda.device_count()
    a = torch.rand(1000, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(1000, device="cuda"), a)


@pytest.mark.gpu
def test_search_resume_on_cuda_draws_the_uninterrupted_runs_masks(tmp_path, monkeypatch):
    """A fused 3-epoch search on CUDA, cut after epoch 1 and resumed, draws the same dropout masks (on the GPU's
    generator) as the uninterrupted search; without the CUDA random state in the checkpoint the resumed run
    replayed epoch 0's masks. The alphas then agree up to the GPU's non-deterministic rounding."""
    import emodarts.runtime.distributed as dist_mod
    from emodarts.engine.search import run_search

    real = dist_mod.batch_mask
    masks = []

    def recording(shape, keep, device, dtype):
        m = real(shape, keep, device, dtype)
        masks.append(hashlib.sha1(m.detach().cpu().numpy().tobytes()).hexdigest())
        return m

    monkeypatch.setattr(dist_mod, "batch_mask", recording)
    cfg = dataclasses.replace(small_run_config(epochs=3), device="cuda", backend="fused")
    data = random_run_data()
    run_search(cfg, data, tmp_path / "full", progress=False)
    full = list(masks)
    masks.clear()
    run_search(cfg, data, tmp_path / "cut", progress=False, stop_after=1)
    first = list(masks)
    masks.clear()
    run_search(cfg, data, tmp_path / "cut", resume=True, progress=False)
    assert first + masks == full
    state = {k: torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for k, d in
             (("full", "full"), ("cut", "cut"))}
    for k, v in state["full"].items():
        if k.startswith("alpha_"):
            assert torch.allclose(v, state["cut"][k], rtol=1e-3, atol=1e-5), k
    assert "cuda" in torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["rng"]
