"""Numerical parity judged as `emodarts compare` judges it, so that a test's verdict does not depend on the CPU.

A fused path and its reference twin both round; which of them lands nearer the exact value differs from one
machine to the next (AVX2 or not, FMA or not, another BLAS kernel). So each tensor is measured against a
float64 oracle (the reference run in float64 on the same inputs), and the fused error may be at most `slack`
times the reference's own error in the same precision. Two floors keep that bound meaningful when the
reference happens to be nearly exact:
- `rel_floor` x max |oracle| of the tensor itself;
- `group_ulps` units of the precision's epsilon x the largest magnitude among all tensors compared together
  (one step's gradients, say). A quantity that is zero in exact arithmetic (the gradient of a bias that a
  softmax cancels) comes out of either path as pure rounding noise of the terms that cancelled; that noise
  scales with the step's magnitudes, not with the tensor's own ~0 value, so a bound relative to the tensor
  alone is ill-conditioned (the Intel failure of issue 11: |grad| 2.3e-8, error 3.5e-11, relative 1.5e-3).
"""
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

SLACK = 4.0
GROUP_ULPS = 8.0


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def max_abs(x: Tensor) -> float:
    return float(x.detach().double().abs().max().cpu()) if x.numel() else 0.0


def max_err(x: Tensor, truth: Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return float((x.detach().double().cpu() - truth.detach().double().cpu()).abs().max())


@dataclass
class Verdict:
    """One tensor's errors against the oracle and the bound it was held to."""

    name: str
    fused_err: float
    ref_err: float
    scale: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.fused_err <= self.bound

    def __str__(self) -> str:
        rel = self.fused_err / self.scale if self.scale > 0 else self.fused_err
        return (f"{self.name}: fused error {self.fused_err:.3e} (relative {rel:.2e}), reference error "
                f"{self.ref_err:.3e}, bound {self.bound:.3e}, max |truth| {self.scale:.3e}")


Triple = Tuple[str, Tensor, Optional[Tensor], Tensor]


def judge(triples: Iterable[Triple], dtype: torch.dtype, *, slack: float = SLACK, rel_floor: float = 0.0,
          group_ulps: float = GROUP_ULPS) -> List[Verdict]:
    """Verdicts for (name, fused, reference, oracle) triples compared together. `reference` may be None when
    the reference is the oracle itself (a float64 test): then only the floors bound the fused error."""
    triples = list(triples)
    for name, f, r, t in triples:
        assert f.shape == t.shape, f"{name}: shape {tuple(f.shape)} vs {tuple(t.shape)}"
        assert r is None or r.shape == t.shape, f"{name}: reference shape {tuple(r.shape)} vs {tuple(t.shape)}"
    group_scale = max((max_abs(t) for _, _, _, t in triples), default=0.0)
    group_floor = group_ulps * eps(dtype) * group_scale
    out = []
    for name, f, r, t in triples:
        scale = max_abs(t)
        ref_err = max_err(r, t) if r is not None else 0.0
        bound = max(slack * ref_err, rel_floor * scale, group_floor)
        out.append(Verdict(name, max_err(f, t), ref_err, scale, bound))
    return out


def assert_parity(triples: Iterable[Triple], dtype: torch.dtype, *, what: str = "", **kwargs) -> List[Verdict]:
    """judge(), then fail with every tensor beyond its bound (the worst first)."""
    verdicts = judge(triples, dtype, **kwargs)
    bad = sorted((v for v in verdicts if not v.ok), key=lambda v: v.bound - v.fused_err)
    assert not bad, f"{what}: {len(bad)} tensor(s) beyond tolerance\n" + "\n".join(str(v) for v in bad[:8])
    return verdicts


def triples_from(names: Sequence[str], fused: Sequence[Tensor], ref: Optional[Sequence[Tensor]],
                 truth: Sequence[Tensor]) -> List[Triple]:
    """Zip parallel lists of tensors into named triples."""
    refs = ref if ref is not None else [None] * len(truth)
    assert len(names) == len(fused) == len(refs) == len(truth)
    return list(zip(names, fused, refs, truth))
