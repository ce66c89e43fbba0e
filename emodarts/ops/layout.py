"""Memory-layout planning for the mixed-sum kernels (pure torch, no Triton needed).

The C++ twin (csrc/mixed_sum.cpp) implements the same rules. The output layout is the contract between
them: the fake (meta) kernels use `out_strides` and `result_dtype` to promise what the C++ op allocates, and
tests/test_mixed_sum.py::test_cpp_and_python_layout_rules_agree fails when the two disagree on a table of
layouts (extend its LAYOUT_CASES when a rule changes). Which inputs are read flat and how dims collapse is
each kernel's own reading plan: results do not depend on it.

Rules
- The output takes the strides of the most common non-overlapping-and-dense layout among the inputs
  (ties: the first such input); when no input is dense, the output is contiguous.
- An input is *flat* when it is dense with the output's strides (size-1 dims ignored): the kernels read
  it at the output's memory offsets. Any other input (a transposed skip input, a strided slice, an
  expanded tensor) is *strided*: it is read where it lies through its own strides, never copied, as
  long as the dims collapse to at most `max_dims` (Triton: 4; C++: no limit).
- Offsets are computed in the output's memory order (outer to inner), so the index of an element in
  the output's storage is its flat index j, and a strided input reads at sum_d c_d(j) * stride_d.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor


def is_dense(sizes: Sequence[int], strides: Sequence[int]) -> bool:
    """True when the tensor covers exactly numel consecutive elements (some permutation of dims)."""
    dims = sorted((st, sz) for sz, st in zip(sizes, strides) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _key(sizes: Sequence[int], strides: Sequence[int]) -> Tuple[int, ...]:
    return tuple(st for sz, st in zip(sizes, strides) if sz != 1)


def out_strides(ys: Sequence[Tensor]) -> List[int]:
    """Strides of the output (and of every grad_y): the majority dense layout of the inputs.

    Plain lists and == only (no hashing), so that it also runs on symbolic shapes under torch.compile.
    """
    if all(y.is_contiguous() for y in ys):  # the common case, without the Python loops below
        return list(ys[0].stride())
    sizes = list(ys[0].shape)
    keys: List[Tuple[int, ...]] = []
    counts: List[int] = []
    first: List[int] = []
    for i, y in enumerate(ys):
        st = list(y.stride())
        if is_dense(sizes, st):
            k = _key(sizes, st)
            for j, other in enumerate(keys):
                if len(other) == len(k) and all(a == b for a, b in zip(other, k)):
                    counts[j] += 1
                    break
            else:
                keys.append(k)
                counts.append(1)
                first.append(i)
    if not keys:
        return contiguous_strides(sizes)
    best = 0
    for j in range(1, len(keys)):
        if counts[j] > counts[best]:
            best = j
    return list(ys[first[best]].stride())


def contiguous_strides(sizes: Sequence[int]) -> List[int]:
    strides = [1] * len(sizes)
    acc = 1
    for d in range(len(sizes) - 1, -1, -1):
        strides[d] = acc
        acc *= max(int(sizes[d]), 1)
    return strides


def result_dtype(ys: Sequence[Tensor]) -> torch.dtype:
    dt = ys[0].dtype
    for y in ys[1:]:
        dt = torch.promote_types(dt, y.dtype)
    return dt


def is_flat(t: Tensor, ostrides: Sequence[int]) -> bool:
    """Can `t` be read at the output's memory offsets?"""
    sizes = list(t.shape)
    st = list(t.stride())
    if not is_dense(sizes, st):
        return False
    a, b = _key(sizes, st), _key(sizes, ostrides)
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


def plan_strided(
    sizes: Sequence[int], ostrides: Sequence[int], strided: Sequence[Sequence[int]]
) -> Tuple[List[int], List[List[int]]]:
    """Collapse the dims for reading `strided` inputs (their stride lists) in the output's order.

    Returns (dim sizes outer->inner, per input its strides on those dims). Size-1 dims are dropped, and
    two neighbouring dims merge when every strided input walks them as one. At least one dim.
    """
    dims = [d for d in range(len(sizes)) if sizes[d] != 1]
    dims.sort(key=lambda d: -ostrides[d])  # output memory order, outer -> inner
    out_sizes: List[int] = []
    out_st: List[List[int]] = [[] for _ in strided]
    for d in dims:
        if out_sizes and all(out_st[t][-1] == strided[t][d] * sizes[d] for t in range(len(strided))):
            out_sizes[-1] *= sizes[d]
            for t in range(len(strided)):
                out_st[t][-1] = strided[t][d]
            continue
        out_sizes.append(int(sizes[d]))
        for t in range(len(strided)):
            out_st[t].append(int(strided[t][d]))
    if not out_sizes:
        out_sizes = [1]
        out_st = [[0] for _ in strided]
    return out_sizes, out_st


def max_offset(sizes: Sequence[int], strides: Sequence[int]) -> int:
    """Largest element offset a tensor with these sizes/strides touches (0 when empty)."""
    if any(s == 0 for s in sizes):
        return 0
    return sum((sz - 1) * st for sz, st in zip(sizes, strides))
