"""Process-group helpers and gradient-carrying collectives.

This is the only module of the package that imports :mod:`torch.distributed`; everything else asks it
for the rank and the world size and calls the collectives below, which are the identity in a single
process, so one code path serves one CPU, one GPU and N processes (``torchrun``; NCCL on CUDA, gloo
on CPU, which is how the distributed code is tested).

Why the gathers carry gradients
-------------------------------
DDP averages parameter gradients over the ``W`` ranks, i.e. it optimizes ``L = (1/W) Σ_r L_r``. A
contrastive loss on rank ``r`` compares its local anchors with candidates gathered from every rank,
so ``L_r`` depends on the embeddings of all ranks. :func:`all_gather_with_grad` concatenates in rank
order and, in backward, sums the incoming gradients over ranks (``all_reduce`` SUM) before taking this
rank's slice. Rank ``r`` therefore receives ``∂(Σ_r' L_r')/∂z_r = W ∂L/∂z_r`` for its own embeddings
``z_r``, hence ``W ∂L/∂θ`` restricted to its own samples; DDP's average over ranks then yields exactly
``∂L/∂θ``: the gradient a single process would compute on the whole global batch (when each ``L_r``
is a mean over its ``B`` local anchors and ``L`` the mean over all ``W·B``). The same argument makes
:func:`all_reduce_sum_with_grad` (backward = ``all_reduce`` SUM) right for synchronized batch
statistics. A plain ``all_reduce`` inside a loss has no backward across ranks, which is why
:func:`all_reduce_mean` is detached and meant for logging only.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor

# The variables torchrun sets for every worker; init_from_env needs all of them.
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_available() -> bool:
    """Whether this PyTorch build ships :mod:`torch.distributed` at all."""
    return tdist.is_available()


def is_distributed() -> bool:
    """Whether a default process group exists (collectives below are the identity otherwise)."""
    return tdist.is_available() and tdist.is_initialized()


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 when not launched by it)."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on the process that writes logs, checkpoints and reports (rank 0)."""
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Create the default process group from torchrun's environment variables.

    Returns True when a group was created: ``WORLD_SIZE > 1``, all of ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` set, and no group existing yet. Uses NCCL for
    ``device_type='cuda'`` (after selecting GPU ``LOCAL_RANK``) and gloo for ``'cpu'``. Returns False
    for a single-process run or when a group already exists.
    """
    if is_distributed():
        return False
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return False
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed run, but {', '.join(missing)} "
            "is not set; launch with `torchrun --nproc_per_node=N ...`, or unset WORLD_SIZE for one process"
        )
    if not tdist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run with WORLD_SIZE unset")
    kwargs: dict[str, Any] = {}
    if device_type == "cuda":
        backend = "nccl"
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={index} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(index)
        # Binding the device lets NCCL set up eagerly and barrier() know which GPU to use.
        if "device_id" in inspect.signature(tdist.init_process_group).parameters:
            kwargs["device_id"] = torch.device("cuda", index)
    elif device_type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(
            f"distributed training supports device types 'cuda' (NCCL) and 'cpu' (gloo), got {device_type!r}"
        )
    tdist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return True


def destroy() -> None:
    """Tear down the default process group, if any."""
    if is_distributed():
        tdist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()


def _check_same_shape(x: Tensor, what: str) -> None:
    """Raise the same clear error on every rank when the ranks' shapes differ (instead of a hang)."""
    info = torch.tensor([x.ndim, x.shape[0], x.numel()], dtype=torch.int64, device=x.device)
    parts = [torch.empty_like(info) for _ in range(world_size())]
    tdist.all_gather(parts, info)
    rows = [tuple(p.tolist()) for p in parts]
    if any(row != rows[0] for row in rows):
        sizes = ", ".join(f"rank {r}: batch {row[1]} ({row[2]} elements)" for r, row in enumerate(rows))
        raise ValueError(
            f"{what} needs the same shape on every rank, got {sizes}; "
            "drop the last incomplete batch (drop_last=True) so that every rank sees equal batches"
        )


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rank, ctx.batch = rank(), x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world_size())]
        tdist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Clone: autograd may hand the same buffer to other consumers; all_reduce works in place.
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.contiguous().clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        return grad


def all_gather_with_grad(x: Tensor, *, check_shapes: bool = True) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` from every rank in rank order → ``(W·B, ...)``, with gradients.

    Backward sums the incoming gradient over ranks and returns this rank's slice (see the module
    docstring for why that gives DDP the single-process gradient). Every rank must pass the same
    shape; ``check_shapes`` verifies it with one tiny extra collective (which synchronizes with the
    device) and raises a clear error instead of hanging or returning garbage. Identity in a single
    process.
    """
    if x.ndim == 0:
        raise ValueError("all_gather_with_grad needs a tensor with a batch dimension, got a scalar")
    if world_size() == 1:
        return x
    if check_shapes:
        _check_same_shape(x, "all_gather_with_grad")
    return _AllGatherWithGrad.apply(x)


def gather_views(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, int]:
    """The two views' ``(B, D)`` embeddings of this rank → each view's global batch ``(W·B, D)`` in rank
    order, with gradients, in one collective, and this rank's offset in it (``rank · B``): the inputs of a
    loss over the global batch (NT-Xent's negatives, Barlow Twins' cross-correlation). The inputs
    themselves and offset 0 in a single process."""
    if world_size() == 1:
        return z1, z2, 0
    gathered = all_gather_with_grad(torch.stack([z1, z2], dim=1))
    return gathered[:, 0], gathered[:, 1], rank() * z1.shape[0]


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks; backward is also a sum over ranks (for synchronized batch statistics).

    Shapes must match on every rank. Identity in a single process.
    """
    if world_size() == 1:
        return x
    return _AllReduceSumWithGrad.apply(x)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Average of ``x`` over ranks, detached: for logging and statistics only, never inside a loss."""
    out = x.detach().clone()
    if world_size() == 1:
        return out
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out / world_size()


def per_process_share(count: Tensor) -> Tensor:
    """``count`` summed over ranks, divided by the number of ranks (detached, at least ``1 / world``).

    The normalizer of a loss summed over items (masked frames, tokens) that must equal the mean over the
    items of the *global* batch however they fall on the ranks: each rank divides its sum by this, and
    DDP's gradient average over ranks then gives ``sum over all items / global count`` (fairseq divides
    the all-reduced gradient by the all-reduced sample size). One process: ``count`` itself.
    """
    total = count.detach().to(torch.float64).reshape(())
    if world_size() > 1:
        total = total.clone()
        tdist.all_reduce(total, op=tdist.ReduceOp.SUM)
    world = world_size()
    return (total / world).clamp_min(1.0 / world).to(torch.float32)


def global_mean(local_sum: Tensor, local_count: Tensor) -> Tensor:
    """``Σ_ranks local_sum / Σ_ranks local_count``, with the gradient of the numerator (a batch statistic
    of the global batch inside a loss: wav2vec 2.0's code usage, the feature penalty). Every rank gets
    the same value; DDP's gradient average then gives each rank's inputs the one-process gradient,
    since the backward of the sum sums the ranks' upstream gradients. One process: the local mean."""
    total = all_reduce_sum_with_grad(local_sum)
    return total / (per_process_share(local_count) * world_size()).to(total.dtype)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects; identity in one process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects; ``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out
