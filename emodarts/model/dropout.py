"""The model's two random masks, drawn through runtime.distributed.batch_mask so that data-parallel ranks
drop what one process would: dropout on features and drop-path on whole samples."""
from torch import Tensor, nn

from emodarts.runtime.distributed import batch_mask


class BatchDropout(nn.Dropout):
    """nn.Dropout (a bernoulli_ mask scaled by 1/keep) whose mask comes from `batch_mask`, so data-parallel
    ranks drop what one process would. No parameters: checkpoints are those of nn.Dropout."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        if keep == 0.0:
            return x * 0.0
        noise = batch_mask(x.shape, keep, x.device, x.dtype).div_(keep)
        return x * noise


def drop_path(x: Tensor, prob: float, training: bool) -> Tensor:
    """Zero whole samples with probability `prob` (scaled), as DARTS final training does."""
    if not training or prob <= 0.0:
        return x
    keep = 1.0 - prob
    mask = batch_mask((x.shape[0], *([1] * (x.dim() - 1))), keep, x.device, x.dtype)
    return x * mask / keep
