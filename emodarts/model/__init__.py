"""The search space, the supernet and the network derived from a genotype (knows no kernels, only its backend)."""
