"""Issue 13 (GPU readiness), the parts a CPU can check: the install rule for the CUDA kernels (setup.py) and
the loaders that prefer the installed build, the CUDA random state in checkpoints, no host synchronisation in
the Python side of the fused ops, and no host-to-device copies in the CUDA sources.

What only a GPU can show is in tests/test_gpu_kernels.py and tests/test_gpu_supernet.py (marked `gpu`);
`python bench/run_all.py` runs them on a GPU loan.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_mixed_sum import HostOpRecorder
from torch import nn

from emodarts.engine import checkpoint
from emodarts.ops.compiled import cpp as compiled_cpp
from emodarts.ops.compiled import cuda as compiled_cuda
from emodarts.ops.compiled import toolchain
from emodarts.ops import grouped_recurrent as gr

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------------
# item 4: setup.py builds the CUDA kernels (emodarts._C_cuda) when it should, and only then


def load_setup_module():
    """setup.py as a module (not as __main__: setup() is not called)."""
    spec = importlib.util.spec_from_file_location("emodarts_setup_under_test", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_setup_is_importable_without_running_setup(monkeypatch):
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: pytest.fail("setup() ran on import"))
    mod = load_setup_module()
    assert callable(mod.extension_modules) and callable(mod.cuda_extension_wanted)


RULE_CASES = [
    # (environment, torch.version.cuda, toolkit found, GPU visible) -> build emodarts._C_cuda?
    ({}, "13.0", True, True, True),  # the GPU machine: built at install
    ({}, "13.0", True, False, False),  # a CPU machine with nvcc (this one): not unless asked
    ({"EMODARTS_CUDA_EXT": "1"}, "13.0", True, False, True),  # asked for
    ({"TORCH_CUDA_ARCH_LIST": "9.0"}, "13.0", True, False, True),  # asked for, with a target
    ({"EMODARTS_NO_CUDA_EXT": "1"}, "13.0", True, True, False),  # refused
    ({"EMODARTS_CUDA_EXT": "1"}, None, True, False, False),  # a CPU-only torch cannot build CUDA
    ({"EMODARTS_CUDA_EXT": "1"}, "13.0", False, True, False),  # no toolkit
]


@pytest.mark.parametrize("env,cuda_version,toolkit,gpu,want", RULE_CASES)
def test_cuda_extension_rule(env, cuda_version, toolkit, gpu, want):
    mod = load_setup_module()
    got, why = mod.cuda_extension_wanted(env, cuda_version, "/usr/local/cuda" if toolkit else None, gpu)
    assert got is want, why
    assert why


def _clean_build_env(monkeypatch):
    for k in ("EMODARTS_NO_EXT", "EMODARTS_NO_CUDA_EXT", "EMODARTS_CUDA_EXT", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(k, raising=False)
    if os.environ.get("CUDA_HOME"):
        monkeypatch.setenv("CUDA_HOME", os.environ["CUDA_HOME"])
    else:
        monkeypatch.delenv("CUDA_HOME", raising=False)


def test_setup_builds_the_cuda_kernels_only_when_asked_on_a_cpu_machine(monkeypatch):
    """With a CUDA build of torch and nvcc but no GPU (this machine): emodarts._C only; with
    EMODARTS_CUDA_EXT=1 also emodarts._C_cuda from csrc/cuda/*.cu, targeting sm_90 by default."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the CUDA kernels are built by default here")
    mod = load_setup_module()
    if torch.version.cuda is None or mod.find_cuda_home() is None:
        pytest.skip("needs a CUDA build of torch and a CUDA toolkit")
    _clean_build_env(monkeypatch)
    exts, cmdclass = mod.extension_modules()
    assert [e.name for e in exts] == ["emodarts._C"] and "build_ext" in cmdclass
    monkeypatch.setenv("EMODARTS_CUDA_EXT", "1")
    exts, _ = mod.extension_modules()
    assert [e.name for e in exts] == ["emodarts._C", "emodarts._C_cuda"]
    cu = sorted(os.path.basename(s) for s in exts[1].sources if s.endswith(".cu"))
    assert cu == ["darts_rnn_cuda.cu", "grouped_rnn_cuda.cu"]
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0" and os.environ["CUDA_HOME"] == mod.find_cuda_home()


def test_setup_and_the_loader_share_the_toolkit_lookup(monkeypatch, tmp_path):
    """setup.py and the JIT loader run one rule (emodarts/ops/compiled/toolchain.py) to find the CUDA toolkit."""
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "bin" / "nvcc").write_text("")
    (home / "include" / "cuda_runtime.h").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(home))
    mod = load_setup_module()
    assert mod.find_cuda_home() == compiled_cuda.cuda_home() == str(home)


def test_setup_without_torch_builds_nothing():
    """An isolated build (the CI's plain `pip install -e .`) has no torch: no extension, no error."""
    code = ("import sys, importlib.util; sys.modules['torch'] = None\n"
            f"spec = importlib.util.spec_from_file_location('s', {str(ROOT / 'setup.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(m.extension_modules())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "([], {})"


def _fresh_cuda_loader(monkeypatch):
    """extension_cuda as in a new process: nothing loaded, no operator seen ready."""
    monkeypatch.setattr(compiled_cuda, "_ready", set())
    monkeypatch.setattr(compiled_cuda, "_loaded", False)


def test_ensure_cuda_prefers_the_installed_kernels(monkeypatch):
    """grouped_recurrent.ensure_cuda (and darts_fused.ensure_cuda, through the same loader,
    compiled_cuda.ensure_cuda) loads emodarts._C_cuda built by setup.py before falling back to a JIT build."""
    from emodarts.ops import darts_rnn as df

    calls = []
    registered = {"yes": False}

    def installed():
        calls.append("installed")
        registered["yes"] = True
        return True

    _fresh_cuda_loader(monkeypatch)
    monkeypatch.setattr(gr, "ops", lambda: None)
    monkeypatch.setattr(df, "ops", lambda: None)
    monkeypatch.setattr(compiled_cuda, "load_installed_cuda", installed)
    monkeypatch.setattr(compiled_cuda, "build_cuda_extension", lambda *a, **k: calls.append("jit"))
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda op, key: registered["yes"])
    gr.ensure_cuda()
    assert calls == ["installed"] and gr.OP_FWD in compiled_cuda._ready
    df.ensure_cuda()  # the same library: loaded once
    assert calls == ["installed"] and df.OP_FWD in compiled_cuda._ready
    # not installed: the JIT build runs
    _fresh_cuda_loader(monkeypatch)
    registered["yes"] = False
    calls.clear()
    monkeypatch.setattr(compiled_cuda, "load_installed_cuda", lambda: calls.append("installed") or False)

    def jit(*a, **k):
        calls.append("jit")
        registered["yes"] = True

    monkeypatch.setattr(compiled_cuda, "build_cuda_extension", jit)
    gr.ensure_cuda()
    assert calls == ["installed", "jit"]


def test_a_cuda_library_without_the_op_is_not_rebuilt_in_process(monkeypatch):
    """A CUDA library loaded earlier in the process that lacks an operator's kernels is an error that says to
    restart, not a second build over the first."""
    from emodarts.ops import darts_rnn as df
    from emodarts.runtime.errors import BackendError

    calls = []
    _fresh_cuda_loader(monkeypatch)
    monkeypatch.setattr(compiled_cuda, "_loaded", True)
    monkeypatch.setattr(df, "ops", lambda: None)
    monkeypatch.setattr(compiled_cuda, "load_installed_cuda", lambda: calls.append("installed") or False)
    monkeypatch.setattr(compiled_cuda, "build_cuda_extension", lambda *a, **k: calls.append("jit"))
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda op, key: False)
    with pytest.raises(BackendError, match="darts_rnn_cuda.cu .restart the process"):
        df.ensure_cuda()
    assert calls == []


def test_installed_kernels_are_used_only_when_built_from_these_sources(tmp_path, monkeypatch, capsys):
    """The digest setup.py records beside the library decides, not file times: a build older than every
    source (a fresh copy of the tree) loads when its digest matches; no record or another digest does not."""
    lib = tmp_path / "_C_cuda.so"
    lib.write_bytes(b"")
    old = min(os.path.getmtime(s) for s in compiled_cuda.cuda_sources()) - 100
    os.utime(lib, (old, old))
    record = tmp_path / "_C_cuda.sources.sha256"
    imported = []
    monkeypatch.setattr(compiled_cuda, "installed_cuda_library", lambda: str(lib))
    monkeypatch.setattr(compiled_cuda.importlib, "import_module", lambda name: imported.append(name))
    monkeypatch.setattr(compiled_cuda, "load_extension", lambda: imported.append("emodarts._C"))
    for text, why in ((None, "records no digest"), ("0" * 64, "sources have changed")):
        if text is not None:
            record.write_text(text + "\n")
        monkeypatch.setattr(compiled_cuda, "_installed_tried", False)
        assert compiled_cuda.load_installed_cuda() is False
        assert not imported and why in capsys.readouterr().err
    digest = toolchain.sources_digest(compiled_cuda.cuda_sources(), compiled_cpp.csrc_dir())
    record.write_text(digest + "\n")
    monkeypatch.setattr(compiled_cuda, "_installed_tried", False)
    assert compiled_cuda.load_installed_cuda() is True
    assert imported == ["emodarts._C", "emodarts._C_cuda"]


def test_the_sources_digest_follows_contents_and_included_headers(tmp_path):
    (tmp_path / "cuda").mkdir()
    src, head = tmp_path / "cuda" / "k.cu", tmp_path / "plan.h"
    src.write_text('#include "../plan.h"\n__global__ void k() {}\n')
    head.write_text("#pragma once\n")
    first = toolchain.sources_digest([str(src)], str(tmp_path))
    os.utime(src, (1, 1))  # times alone change nothing
    assert toolchain.sources_digest([str(src)], str(tmp_path)) == first
    head.write_text("#pragma once\n// changed\n")
    assert toolchain.sources_digest([str(src)], str(tmp_path)) != first


def test_local_includes_find_the_shared_headers():
    heads = {os.path.basename(h) for s in compiled_cuda.cuda_sources() for h in toolchain.local_includes(s)}
    assert {"grouped_rnn_plan.h", "darts_rnn_shape.h", "cuda_common.cuh"} <= heads


# --------------------------------------------------------------------------------------------------
# item 6: the CUDA random state in checkpoints


def test_rng_state_carries_cuda_when_cuda_is_initialised(monkeypatch):
    fake = [torch.arange(8, dtype=torch.uint8), torch.arange(8, 16, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    state = checkpoint.rng_state()
    assert set(state) == {"torch", "numpy", "python", "cuda"} and state["cuda"] is fake


def test_rng_state_without_cuda_has_no_cuda_entry(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in checkpoint.rng_state()


def test_cuda_rng_state_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    """Saved with the checkpoint (atomic write), loaded back on the CPU, restored device by device."""
    fake = [torch.arange(8, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s.clone())))
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"config": {"a": 1}, "rng": checkpoint.rng_state()})
    state = checkpoint.load_checkpoint(path, {"a": 1})
    checkpoint.set_rng_state(state["rng"])
    assert len(restored) == 1 and restored[0][0] == 0 and torch.equal(restored[0][1], fake[0])


def test_restoring_cuda_rng_state_without_cuda_warns_and_restores_the_rest(monkeypatch):
    state = checkpoint.rng_state()
    expect = torch.rand(3)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="CUDA random state"):
        checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), expect)  # the CPU generator was restored all the same


def test_restoring_onto_fewer_gpus_warns(monkeypatch):
    state = checkpoint.rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(2)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append(device))
    with pytest.warns(RuntimeWarning, match="2 device"):
        checkpoint.set_rng_state(state)
    assert restored == [0]


# --------------------------------------------------------------------------------------------------
# item 2: no host synchronisation per call (what a CPU can see of it)


CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
# host <-> device copies and synchronisations that must not appear in a kernel entry point
HOST_TRAFFIC = [r"from_blob", r"\.cpu\(\)", r"\.item\s*[<(]", r"non_blocking", r"cudaMemcpy(?!Async)",
                r"cudaDeviceSynchronize", r"cudaStreamSynchronize", r"\.to\(\s*at::kCPU", r"\.to\(\s*\w+\.device\(\)"]


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_cuda_sources_copy_nothing_between_host_and_device(source):
    """A static check (the GPU test tests/test_gpu_kernels.py::test_fused_ops_never_synchronise runs them under
    torch.cuda.set_sync_debug_mode("error")): the direction flags of the grouped layer used to be copied to the
    device on every call (from_blob + a blocking .to(device))."""
    text = re.sub(r"//[^\n]*", "", source.read_text())  # code, not comments
    found = [p for p in HOST_TRAFFIC if re.search(p, text)]
    assert not found, f"{source.name}: {found}"


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_cuda_entry_points_guard_the_inputs_device(source):
    """Issue 13, item 1 for the C++/CUDA ops: every CUDA entry point opens a CUDAGuard on its inputs' device
    before it allocates or launches anything."""
    text = source.read_text()
    impls = re.findall(r'm\.impl\("\w+",\s*&[\w:]*::(\w+)\)', text)
    assert impls
    for name in impls:
        body = text[text.index(f" {name}("):]
        body = body[: body.index("\n}\n")]
        guard = body.find("CUDAGuard guard(")
        assert guard > 0, f"{name}: no CUDAGuard"
        first_alloc = min([i for i in (body.find("at::empty"), body.find("<<<"), body.find(".contiguous()")) if i > 0])
        assert guard < first_alloc, f"{name}: allocates or launches before its CUDAGuard"


def _grouped_modules():
    torch.manual_seed(0)
    return [nn.LSTM(6, 5, batch_first=True), nn.RNN(6, 5, batch_first=True, num_layers=2),
            nn.LSTM(6, 5, batch_first=True, bidirectional=True)]


def test_grouped_and_darts_python_paths_do_not_synchronise():
    """The Python side of the grouped layer and of the DARTS cell (forward and backward) calls no op that would
    synchronise a GPU (a host tensor, a scalar read, a device copy); on the CPU the C++ ops stand in for the
    CUDA ones (same Python path)."""
    from test_darts_kernel import make_inputs

    from emodarts.ops import darts_rnn as df

    mods = _grouped_modules()
    x = torch.randn(3, 4, 6, requires_grad=True)
    darts = [t.requires_grad_(True) for t in make_inputs(4, 3, 5, 3, dtype=torch.float32)]

    def step():
        outs = gr.grouped_recurrent_fused(x, mods)
        hs = df.darts_rnn_fused(*darts)
        loss = sum(o.square().sum() for o in outs) + hs.square().sum()
        torch.autograd.grad(loss, [x, *[p for m in mods for p in m.parameters()], *darts])

    step()
    with HostOpRecorder() as rec:
        step()
    assert any("grouped_rnn_forward" in op for op in rec.ops) and any("darts_rnn_backward" in op for op in rec.ops)
    assert not rec.host_ops, rec.host_ops


@pytest.mark.parametrize("seq_space", ["emodarts", "darts"])
def test_fused_supernet_forward_backward_builds_no_host_tensors(seq_space, monkeypatch):
    """A whole fused supernet forward + backward (C++ ops on the CPU, the Triton mixed sum under the
    interpreter when it runs) reads no scalar and builds no host tensor after the first call. On a GPU the
    same step runs under set_sync_debug_mode("error") (tests/test_gpu_supernet.py)."""
    from helpers import small_model_config

    from emodarts.model.space import DARTS_SEQ_PRIMITIVES
    from emodarts.model.supernet import Supernet

    if os.environ.get("TRITON_INTERPRET") == "1":
        monkeypatch.setenv("EMODARTS_TRITON_CPU", "1")  # the mixed sum through the Triton kernels too
    prims = DARTS_SEQ_PRIMITIVES if seq_space == "darts" else ("none", "skip_connect", "lstm_1", "rnn_2",
                                                                "lstm_att_1")
    cfg = small_model_config(seq_space=seq_space, seq_primitives=prims, seq_nodes=2)
    torch.manual_seed(0)
    model = Supernet(cfg, 10, 4, backend="fused")
    x, y = torch.randn(2, 1, 10, 9), torch.tensor([0, 3])

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    step()
    with HostOpRecorder() as rec:
        step()
    assert not rec.host_ops, rec.host_ops


# --------------------------------------------------------------------------------------------------
# a JIT build killed at a time limit


def test_a_stale_torch_build_lock_is_removed_under_our_lock(tmp_path, capsys):
    (tmp_path / "lock").write_text("")  # what torch's FileBaton leaves when its build is killed
    with compiled_cpp.build_lock(str(tmp_path)):
        assert not (tmp_path / "lock").exists()
    assert "stale build lock" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX")
def test_our_build_lock_dies_with_its_holder(tmp_path):
    """The kernel releases an flock when its holder is killed: the next build never waits on a dead one."""
    import fcntl

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom emodarts.ops.compiled import cpp\n"
         f"with cpp.build_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert holder.stdout.readline().strip() == "held"
    with open(tmp_path / "emodarts-build.flock", "w") as fh:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.kill()
        holder.wait(timeout=30)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once


def test_a_jit_load_after_a_killed_build_does_not_wait(tmp_path):
    """torch's 'lock' file left in the JIT folder used to make every later load wait forever; now the loader
    removes it and loads (the cached build: no compile when the suite has built it already)."""
    code = ("import os\nfrom emodarts.ops.compiled import cpp\n"
            "open(os.path.join(cpp.build_dir(), 'lock'), 'w').close()\n"
            "m = cpp._jit_build(None)\nprint('loaded', m.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-3000:]
    assert "stale build lock" in proc.stderr
