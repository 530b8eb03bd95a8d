"""BatchNorm over the global batch in a distributed run, so that N ranks train as one process does.

CosPlace trains with BatchNorm in training mode, frozen layers included: each batch is
normalised by its own statistics. With the batch split across ranks, per-rank statistics
would make the result depend on the GPU count; every BatchNorm2d becomes one that uses the
statistics of the whole global batch instead. On CUDA that is torch's SyncBatchNorm; torch's
refuses CPU tensors, so CPU ranks (gloo) use `GlobalBatchNorm2d`, the same computation with a
differentiable all-reduce of per-channel sums.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed.nn.functional as dist_nn
from torch import nn

# Its suggested successor (torch.distributed._functional_collectives) is private and has no
# autograd: this one stays, without a warning at every run.
warnings.filterwarnings(
    "ignore", message="torch.distributed.nn.functional.all_reduce is deprecated", category=FutureWarning
)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of all ranks together."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = self.num_features
        xf = x.float()
        local = torch.cat(
            [xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_tensor([x.shape[0] * x.shape[2] * x.shape[3]])]
        )
        # Its backward all-reduces the gradients too: each rank gets d(sum of all losses)/d(its x).
        total = dist_nn.all_reduce(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            unbiased = var.detach() * count / (count - 1).clamp(min=1)
            self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        shape = (1, channels, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm2d computing global-batch statistics (weights and buffers kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            replacement.load_state_dict(child.state_dict())
            if child.affine:
                replacement.weight.requires_grad = child.weight.requires_grad
                replacement.bias.requires_grad = child.bias.requires_grad
            replacement.train(child.training)
            setattr(model, name, replacement)
        else:
            sync_batchnorm(child, device)
    return model
