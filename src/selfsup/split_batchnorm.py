"""Batch normalization over groups of a batch: MoCo's shuffle-BN, emulated or spread over processes.

MoCo (He et al., 2020, sec. 3.3 "Shuffling BN") normalizes its key encoder per GPU after shuffling the
key batch across GPUs, so that a query and its positive key are never normalized with the same
samples' statistics (with per-GPU BN the network can otherwise "cheat" the pretext task through the
batch statistics). The authors' CIFAR-10 demo (facebookresearch/moco ``colab/moco_cifar10_demo.ipynb``,
``SplitBatchNorm``) emulates ``n`` GPUs on one by normalizing ``n`` sub-batches separately.

:class:`SplitBatchNorm` does the same: in training mode the batch is cut into ``num_splits`` contiguous
groups (the demo's groups are strided, ``i mod n``; after a random shuffle the two are the same
distribution), each normalized with its own mean and biased variance. It is never synchronized across
processes, and it derives from ``_BatchNorm`` but not from ``nn.BatchNorm1d/2d/3d``, so the trainer's
:func:`selfsup.sync_batchnorm.convert_sync_batchnorm` leaves it alone. Evaluation uses the running
statistics, like ``nn.BatchNorm``. The parameter and buffer names are BatchNorm's, so an
:class:`~selfsup.teacher.EMATeacher` pairs them with a student's ordinary batch norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class SplitBatchNorm(_BatchNorm):
    """Batch norm with statistics per contiguous group of ``num_splits`` groups: ``(B, C, *)`` → same.

    ``B`` must be divisible by ``num_splits`` in training mode. Running statistics are updated with the
    mean over the groups of their means and of their unbiased variances (as the demo's ``SplitBatchNorm``
    averages its per-split running statistics). ``num_splits`` is a plain attribute that the owner may
    change between calls (the MoCo method sets it to ``bn_splits / world_size``).
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.num_splits = num_splits

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim < 2 or input.shape[1] != self.num_features:
            raise ValueError(
                f"SplitBatchNorm({self.num_features}) expects input of shape (B, {self.num_features}, ...), "
                f"got {tuple(input.shape)}"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not use_batch_stats:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        splits = int(self.num_splits)
        batch, channels = input.shape[0], input.shape[1]
        if splits < 1 or batch % splits != 0:
            raise ValueError(
                f"SplitBatchNorm cannot cut a batch of {batch} into {splits} equal groups; "
                "choose a batch size divisible by the number of groups (MoCo's bn_splits)"
            )
        groups = input.float().reshape(splits, batch // splits, *input.shape[1:])
        reduce_dims = [1, *range(3, groups.ndim)]
        count = groups[0].numel() // channels
        if count <= 1:
            raise ValueError(
                f"SplitBatchNorm needs more than 1 value per channel and group, got {count} "
                f"(input {tuple(input.shape)} in {splits} groups); use fewer groups or a larger batch"
            )
        var, mean = torch.var_mean(groups, dim=reduce_dims, correction=0)  # (splits, C)
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                factor = (
                    1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)
                )
                unbiased = var.mean(0) * (count / (count - 1))
                self.running_mean.mul_(1.0 - factor).add_(
                    mean.mean(0).to(self.running_mean.dtype), alpha=factor
                )
                self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)  # type: ignore[union-attr]
        shape = (splits, 1, channels) + (1,) * (input.ndim - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        out = (groups - mean.view(shape)) * scale.view(shape)
        if self.bias is not None:
            out = out + self.bias.float().view((1, 1, channels) + (1,) * (input.ndim - 2))
        return out.reshape(input.shape).to(input.dtype)


_CONVERTIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def convert_split_batchnorm(module: nn.Module, num_splits: int = 1) -> nn.Module:
    """Replace every batch norm in ``module`` (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm`` and
    :class:`selfsup.sync_batchnorm.SyncBatchNorm`) by a :class:`SplitBatchNorm` that reuses its parameter
    objects, buffers, hyper-parameters and train/eval mode (``state_dict`` keys and values unchanged).
    Returns the converted module (a new object when ``module`` itself is a batch norm)."""
    from selfsup.sync_batchnorm import SyncBatchNorm

    if isinstance(module, (*_CONVERTIBLE, SyncBatchNorm)):
        converted = SplitBatchNorm(
            module.num_features,
            num_splits,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            device="meta",
        )
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        new_child = convert_split_batchnorm(child, num_splits)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def set_num_splits(module: nn.Module, num_splits: int) -> None:
    """Set ``num_splits`` on every :class:`SplitBatchNorm` inside ``module``."""
    for child in module.modules():
        if isinstance(child, SplitBatchNorm):
            child.num_splits = num_splits
