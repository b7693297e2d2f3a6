"""Batch normalization with statistics over the global batch, on any device (CPU/gloo included).

``torch.nn.SyncBatchNorm`` only runs on CUDA, but the distributed code of this project is tested on
CPU with gloo, and SimCLR/BYOL need global batch statistics: with per-process statistics a network
can tell which samples share a process and "cheat" the contrastive task (Chen et al., 2020, §2.2
"Global BN"). :class:`SyncBatchNorm` is a drop-in for ``nn.BatchNorm1d/2d/3d`` whose training-mode
statistics come from ``selfsup.dist``'s gradient-carrying ``all_reduce``; :func:`convert_sync_batchnorm`
swaps it into an existing model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup import dist


class SyncBatchNorm(_BatchNorm):
    """Batch norm over the global batch, for ``(B, C)``, ``(B, C, L)``, ``(B, C, H, W)``, ... inputs.

    Same parameters, buffers, hyper-parameters and ``state_dict`` keys as ``nn.BatchNorm2d``. In
    training mode each process computes the mean and the biased variance of its ``(B, C, *)`` input
    per channel in fp32, the ranks combine ``[count, sum, sum of squares]`` with
    :func:`selfsup.dist.all_reduce_sum_with_grad` (so gradients flow through the global statistics),
    and the input is normalized with the global biased variance; running statistics are updated with
    the global *unbiased* variance, with ``momentum`` (``None`` = cumulative average) and
    ``num_batches_tracked`` exactly as ``nn.BatchNorm``. Evaluation uses the running statistics. In a
    single process it equals ``nn.BatchNorm`` (outputs, gradients, running statistics).

    Numerics: the sums are formed from each rank's fp32 mean and variance (``torch.var_mean``, stable)
    and combined in float64, so ``sum of squares - count·mean²`` does not cancel catastrophically when
    ``|mean| ≫ std``. The combined statistics are three ``C``-vectors, so float64 costs nothing.
    The output has the input's dtype.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim < 2 or input.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm({self.num_features}) expects input of shape (B, {self.num_features}, ...), "
                f"got {tuple(input.shape)}"
            )

    def _batch_statistics(self, x: Tensor, synchronize: bool) -> tuple[Tensor, Tensor, int | Tensor]:
        """Per-channel mean and biased variance ``(C,)`` in fp32, and the number of values behind them.

        The count is a Python int for local statistics and a float64 ``(C,)`` tensor for global ones
        (reading it back would stall the GPU at every layer).
        """
        reduce_dims = [0, *range(2, x.ndim)]
        count = x.numel() // x.shape[1]
        if count > 0:
            var, mean = torch.var_mean(x.float(), dim=reduce_dims, correction=0)
        else:  # an empty shard contributes nothing to the global statistics
            mean = var = x.new_zeros(x.shape[1], dtype=torch.float32)
        if not synchronize:
            return mean, var, count

        mean64, var64 = mean.double(), var.double()
        packed = torch.stack(
            [torch.full_like(mean64, count), count * mean64, count * (var64 + mean64.square())]
        )
        total, total_sum, total_squares = dist.all_reduce_sum_with_grad(packed).unbind(0)
        denominator = total.clamp_min(1.0)
        global_mean = total_sum / denominator
        global_var = (total_squares / denominator - global_mean.square()).clamp_min(0.0)
        return global_mean.float(), global_var.float(), total.detach()

    def forward(self, input: Tensor) -> Tensor:
        """``(B, C, *)`` → ``(B, C, *)`` normalized per channel over the global batch (training mode)."""
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not use_batch_stats:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )

        # Like nn.SyncBatchNorm: statistics are shared only in training mode.
        mean, var, count = self._batch_statistics(input, synchronize=self.training and dist.world_size() > 1)
        if isinstance(count, int) and count <= 1:
            raise ValueError(
                f"SyncBatchNorm needs more than 1 value per channel in training mode, got {count} "
                f"(global batch; local input {tuple(input.shape)}); use a larger batch or eval mode"
            )
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                # Like nn.BatchNorm; a global count of 1 (only possible with empty shards) gives inf.
                unbiased = var * (count / (count - 1))
                self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

        shape = (1, -1) + (1,) * (input.ndim - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        out = (input.float() - mean.view(shape)) * scale.view(shape)
        if self.bias is not None:
            out = out + self.bias.float().view(shape)
        return out.to(input.dtype)


_CONVERTIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` in ``module`` by ours.

    The new layers reuse the original parameter objects (an optimizer built before keeps working)
    and buffers, hyper-parameters and train/eval mode, so ``state_dict`` keys and values are
    unchanged. Returns the converted module (a new object when ``module`` itself is a batch norm).
    """
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and isinstance(module, _BatchNorm):
        raise ValueError(
            "cannot convert a lazy batch norm before its first forward pass; run one batch first"
        )
    if isinstance(module, _CONVERTIBLE) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            device="meta",  # placeholders only: the original tensors are moved in below
        )
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
