"""Triton kernels of emodarts, installed as `emodarts.kernels`.

Importing this package is light (no Triton, no GPU): import a kernel module such as
`emodarts.kernels.mixed_sum` where it is used. The kernels run on CUDA, and on the CPU under the Triton
interpreter (TRITON_INTERPRET=1 set before the kernel module is imported), which is how the tests run them.
`emodarts.kernels.layout` (pure torch) holds the layout rules shared with the C++ twin and the fake kernels.
"""
