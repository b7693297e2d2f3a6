"""MoCo v2 (He et al., CVPR 2020; Chen, Fan, Girshick & He, arXiv:2003.04297) and MoCo v3 (Chen, Xie &
He, ICCV 2021).

Both train a query network against a momentum ("key") copy of itself with :func:`selfsup.losses.info_nce`.
MoCo v2 takes its negatives from a queue of past keys; MoCo v3 drops the queue and takes the other keys
of the global batch, and adds a predictor. The key network is an :class:`~selfsup.teacher.EMATeacher`
of encoder + projector, updated once per optimizer step in ``on_optimizer_step``; MoCo v2's queue is
updated there too (:class:`KeyQueue`), from the keys of every micro-batch of the step gathered from
every process, so the queue is identical on every rank and the loss of step ``s`` always uses the
queue as it was before step ``s``, whatever ``train.accumulate`` is.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.heads import EncoderWithHead, MLPHead
from selfsup.losses import info_nce
from selfsup.losses.contrastive import l2_normalize
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.split_batchnorm import convert_split_batchnorm, set_num_splits
from selfsup.teacher import EMATeacher
from selfsup.train.schedules import cosine_momentum

KEY_BN_MODES = ("global", "shuffle")


def gather_detached(x: Tensor) -> Tensor:
    """``x`` ``(n, ...)`` from every rank concatenated in rank order, without gradients (MoCo's
    ``concat_all_gather``); ``x`` itself in one process."""
    with torch.no_grad():
        return dist.all_gather_with_grad(x.detach())


def shuffle_seed(step: int, micro: int, view: int) -> int:
    """The seed of shuffle-BN's permutation for view ``view`` (0 or 1) of micro-batch ``micro`` of optimizer
    step ``step``: a pure function of the training clock, the same on every rank."""
    return (step * 65536 + micro) * 2 + view


def shuffle_permutation(total: int, seed: int) -> Tensor:
    """``(total,)`` the permutation of the global key batch for shuffle-BN, drawn on the CPU from a generator
    seeded with ``seed`` (never the global RNG), so every rank draws the same one without a broadcast."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))


class KeyQueue(nn.Module):
    """A FIFO of ``size`` unit vectors ``(size, dim)`` plus its write pointer, both buffers (saved in the
    state dict), as MoCo's ``queue`` / ``queue_ptr`` (stored here as rows, theirs as columns).

    ``stash(keys)`` keeps one chunk of this process's detached keys (a micro-batch, one view) in a plain
    list; ``flush()``, called once per optimizer step, gathers every rank's chunks with one collective and
    writes them in the order a single process would have seen the global batch: chunk by chunk (micro-batch,
    then view), and within a chunk rank by rank (the sampler cuts each micro-batch into processes in rank
    order). The write wraps around: the keys go to rows ``(ptr + j) mod size`` and the pointer advances by
    the number of keys written, modulo ``size`` (MoCo asserts ``size % batch == 0`` instead). The initial
    queue is random unit vectors, as the authors'.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"queue_size must be at least 1, got {size}")
        self.register_buffer("keys", l2_normalize(torch.randn(size, dim)))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self._pending: list[Tensor] = []

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def stash(self, keys: Tensor) -> None:
        """Keep ``keys`` ``(n, dim)`` (this process's, already normalized) for the next :meth:`flush`."""
        self._pending.append(keys.detach().to(self.keys.dtype))

    @torch.no_grad()
    def flush(self) -> int:
        """Write every stashed chunk of every rank into the queue; returns the number of keys written."""
        chunks, self._pending = self._pending, []
        if not chunks:
            return 0
        local = torch.cat(chunks)
        world = dist.world_size()
        gathered = gather_detached(local).view(world, local.shape[0], local.shape[1])
        ordered = torch.cat(
            [part.reshape(-1, local.shape[1]) for part in gathered.split([c.shape[0] for c in chunks], dim=1)]
        )
        self.enqueue(ordered)
        return ordered.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` ``(n, dim)`` (the same on every rank) at the pointer, wrapping around."""
        count = keys.shape[0]
        rows = (int(self.ptr) + torch.arange(count, device=self.keys.device)) % self.size
        if count > self.size:  # only the last `size` keys survive a write longer than the queue
            rows, keys = rows[-self.size :], keys[-self.size :]
        self.keys[rows] = keys.to(self.keys.dtype)
        self.ptr.fill_((int(self.ptr) + count) % self.size)


def _views(views: Views, name: str) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    if views.num_global != 2 or len(views.inputs) != 2:
        raise ValueError(f"{name} takes exactly two global views per sample")
    return views.inputs[0], views.inputs[1], views.padding_mask(0), views.padding_mask(1)


def _check_momentum(base: float, final: float) -> None:
    if not 0.0 <= base <= final <= 1.0:
        raise ConfigError(f"need 0 <= base_momentum <= final_momentum <= 1, got {base}, {final}")


@METHODS.register("mocov2")
class MoCoV2(Method):
    """MoCo v2: query encoder + MLP head, momentum key encoder, a queue of negatives.

    The head is MoCo v2's (the authors' ``--mlp``: ``Linear(embed, hidden) → ReLU → Linear(hidden,
    projection_dim)``, with biases and no BatchNorm; solo-learn's ``mocov2plus`` projector is the same).
    The loss is :func:`~selfsup.losses.info_nce` of the query of view 1 against the key of view 2 and the
    queue; ``symmetric=True`` adds the other direction and averages the two (solo-learn's ``mocov2plus``;
    the authors' CIFAR demo sums them instead, twice the gradient), and enqueues both views' keys (view 1's
    first, as the demo: ``cat([k1, k2])``) into the one queue. Keys are L2-normalized before they are
    enqueued.

    Key-encoder batch norm (``key_bn``):

    * ``"global"`` (default): the key encoder normalizes with the statistics of its whole batch; under
      DDP the trainer's SyncBatchNorm (``train.sync_bn=true``) makes them global. This is what MoCo v3,
      SimCLR (sec. 2.2, "Global BN") and solo-learn's ``mocov2plus`` (the issue's CIFAR-10 reference,
      92.94%) do: statistics over the global batch leak no per-device signal, which is what shuffle-BN
      was invented to hide, and nothing is gathered but keys.
    * ``"shuffle"``: MoCo's shuffle-BN. The key batch of all processes is gathered (a plain all-gather of
      the inputs), permuted with a permutation drawn from a generator seeded by ``(step, micro-batch,
      view)`` (the same on every rank, so no broadcast and no global RNG), cut into ``bn_splits`` equal
      groups normalized separately (:class:`~selfsup.split_batchnorm.SplitBatchNorm`, never synchronized:
      rank ``r`` computes groups of its slice of the permuted batch), and unshuffled. On one process this
      is the authors' CIFAR demo (``bn_splits`` sub-batches); on W processes each computes
      ``bn_splits / W`` groups, so the keys do not depend on the number of processes. Differences: the
      query encoder keeps its own batch norm (global, or per process with ``train.sync_bn=false``; the demo
      splits the query encoder too), and the key encoder's running statistics are copied from the query
      encoder at each update (as every EMA teacher here), not accumulated by the key encoder.

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: output size of the head (128 in MoCo v2; solo-learn's CIFAR recipe: 256).
        hidden_dim: hidden size of the head; None uses the encoder's ``embed_dim`` (2048 for ResNet-50, as
            MoCo v2).
        queue_size: number of negative keys ``K`` (65536 in MoCo; 4096 in the authors' CIFAR demo).
        temperature: InfoNCE temperature (0.2 in MoCo v2; 0.07 in MoCo v1).
        base_momentum: key-encoder EMA decay at step 0. Default 0.999, MoCo's ImageNet value (the authors'
            CIFAR demo uses 0.99, solo-learn 0.99 → 0.999).
        final_momentum: decay at the last step; equal to ``base_momentum`` (default) gives MoCo's constant
            momentum, larger gives solo-learn's cosine increase per optimizer step
            (:func:`~selfsup.train.schedules.cosine_momentum`).
        symmetric: both directions of the loss, both views' keys enqueued (see above). Default False, as
            MoCo v2's paper and code.
        key_bn: ``"global"`` or ``"shuffle"`` (see above).
        bn_splits: groups of the global key batch under ``key_bn="shuffle"`` (8 in the authors' CIFAR demo);
            must be a multiple of the number of processes and divide the global batch.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "simclr", "vector": "vector_noise"}
    # The queue is identical on every rank by construction; broadcasting rank 0's buffers at every forward
    # would only copy K x D floats per micro-batch.
    ddp_options: ClassVar[dict[str, object]] = {"broadcast_buffers": False}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        queue_size: int = 65536,
        temperature: float = 0.2,
        base_momentum: float = 0.999,
        final_momentum: float = 0.999,
        symmetric: bool = False,
        key_bn: str = "global",
        bn_splits: int = 8,
    ) -> None:
        super().__init__(encoder)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        _check_momentum(base_momentum, final_momentum)
        if key_bn not in KEY_BN_MODES:
            raise ConfigError(f"key_bn must be one of {KEY_BN_MODES}, got {key_bn!r}")
        if bn_splits < 1:
            raise ConfigError(f"bn_splits must be at least 1, got {bn_splits}")
        hidden = hidden_dim or encoder.embed_dim
        self.projector = nn.Sequential(
            nn.Linear(encoder.embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, projection_dim)
        )
        self.key = EMATeacher(self._query_branch())
        if key_bn == "shuffle":
            convert_split_batchnorm(self.key.module, bn_splits)
        self.queue = KeyQueue(queue_size, projection_dim)
        self.temperature = temperature
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.symmetric = symmetric
        self.key_bn, self.bn_splits = key_bn, bn_splits
        self.last_momentum = base_momentum
        self._micro = 0  # micro-batches seen in this optimizer step (seeds shuffle-BN's permutations)

    def _query_branch(self) -> EncoderWithHead:
        # Built on demand so that the encoder is registered once (as `encoder`) in the state dict.
        return EncoderWithHead(self.encoder, self.projector)

    def _keys(self, x: Tensor, padding: Tensor | None, step: StepInfo, view: int) -> Tensor:
        """``(B, D)`` keys of this process's samples (no gradient)."""
        if self.key_bn == "global":
            return self.key(x, padding)
        return self._shuffled_keys(x, padding, seed=shuffle_seed(step.step, self._micro, view))

    @torch.no_grad()
    def _shuffled_keys(self, x: Tensor, padding: Tensor | None, seed: int) -> Tensor:
        world, rank, batch = dist.world_size(), dist.rank(), x.shape[0]
        if self.bn_splits % world != 0:
            raise ConfigError(
                f"key_bn='shuffle' with bn_splits={self.bn_splits} on {world} processes: set "
                "method.bn_splits to a multiple of the number of processes"
            )
        x_all = gather_detached(x)
        padding_all = None if padding is None else gather_detached(padding)
        total = x_all.shape[0]
        if total % self.bn_splits != 0:
            raise ConfigError(
                f"key_bn='shuffle' cuts the global key batch of {total} into bn_splits={self.bn_splits} "
                "equal groups: choose a batch size divisible by method.bn_splits"
            )
        order = shuffle_permutation(total, seed).to(x.device)
        mine = order.view(world, batch)[rank]
        set_num_splits(self.key, self.bn_splits // world)
        shuffled = self.key(x_all[mine], None if padding_all is None else padding_all[mine])
        gathered = gather_detached(shuffled)  # row j is the key of sample order[j]
        keys = torch.empty_like(gathered)
        keys[order] = gathered
        return keys[rank * batch : (rank + 1) * batch]

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        x1, x2, pad1, pad2 = _views(views, "MoCo v2")
        # One encoder pass per view (BatchNorm statistics per view), as the authors' code.
        h1 = self.encoder(x1, padding_mask=pad1).pooled
        q1 = self.projector(h1)
        k2 = self._keys(x2, pad2, step, view=1)
        queue = self.queue.keys  # the queue before this optimizer step, for every micro-batch of it
        loss = info_nce(q1, k2, queue, self.temperature)
        keys = [k2]
        if self.symmetric:
            q2 = self._query_branch()(x2, pad2)
            k1 = self._keys(x1, pad1, step, view=0)
            loss = 0.5 * (loss + info_nce(q2, k1, queue, self.temperature))
            keys = [k1, k2]
        if self.training:
            self._micro += 1
            for k in keys:
                self.queue.stash(l2_normalize(k.float()))
        with torch.no_grad():
            positive = torch.nn.functional.cosine_similarity(q1.float(), k2.float()).mean()
        logs = {"positive_similarity": positive, "key_momentum": torch.tensor(self.last_momentum)}
        return MethodOutput(loss=loss, logs=logs, embeddings=q1.detach(), features=h1.detach())

    def on_optimizer_step(self, step: StepInfo) -> None:
        self.last_momentum = cosine_momentum(
            step.step, step.total_steps, self.base_momentum, self.final_momentum
        )
        self.key.update(self._query_branch(), self.last_momentum)
        self.queue.flush()
        self._micro = 0


@METHODS.register("mocov3")
class MoCoV3(Method):
    """MoCo v3: encoder + projector + predictor against a momentum encoder + projector, no queue.

    ``loss = 2τ · [info_nce(q1, k2_all) + info_nce(q2, k1_all)]`` where ``q`` are predictions and ``k`` the
    momentum network's projections of the other view, gathered from every process (the negatives are the
    other keys of the global batch); the ``2τ`` factor is the authors' (``contrastive_loss`` returns
    ``CE · 2T``, facebookresearch/moco-v3 ``moco/builder.py``). Each view goes through the encoder
    separately, as theirs.

    Heads are the authors' ``_build_mlp``: bias-free Linear layers with BN + ReLU between, the projector
    ending in a BN without affine parameters. Their ViT setting (the paper's subject) is the default: a
    3-layer projector and a predictor ending in that BN, temperature 0.2; their ResNet-50 setting is
    ``projector_layers=2, predictor_last_bn=False`` with temperature 1.0 (``main_moco.py`` default), and
    solo-learn's CIFAR-10 ResNet-18 recipe uses the ResNet heads with temperature 0.2.

    The momentum follows the authors' ``--moco-m-cos`` (used in every reference command of their
    CONFIG.md): ``1 - (1 - m₀)(1 + cos(π t))/2`` from 0.99 (their default; 0.996 in their 1000-epoch
    ResNet-50 command) to 1. They update at the start of iteration ``t`` with ``m(t / T)``, i.e. after
    optimizer step ``s`` with ``m((s + 1) / T)``; so does :meth:`on_optimizer_step`.

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: projector and predictor output size (256).
        hidden_dim: hidden size of both MLPs (4096).
        projector_layers: Linear layers in the projector (3: ViT; 2: ResNet).
        predictor_last_bn: the predictor's last BatchNorm (True: ViT; False: ResNet).
        temperature: InfoNCE temperature (0.2: ViT and solo-learn CIFAR; 1.0: the authors' ResNet).
        base_momentum: EMA decay at step 0 (0.99).
        final_momentum: EMA decay at the end (1.0).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "byol", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        projector_layers: int = 3,
        predictor_last_bn: bool = True,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if projector_layers < 1:
            raise ConfigError(f"projector_layers must be at least 1, got {projector_layers}")
        _check_momentum(base_momentum, final_momentum)
        # The authors' _build_mlp: bias-free Linear layers, the projector ending in an affine-free BN.
        self.projector = MLPHead(
            encoder.embed_dim, hidden_dim, projection_dim, num_layers=projector_layers, last_bn=True
        )
        self.predictor = MLPHead(
            projection_dim, hidden_dim, projection_dim, last_bn=predictor_last_bn, last_bias=False
        )
        self.key = EMATeacher(self._query_branch())
        self.temperature = temperature
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.last_momentum = base_momentum

    def _query_branch(self) -> EncoderWithHead:
        return EncoderWithHead(self.encoder, self.projector)

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        x1, x2, pad1, pad2 = _views(views, "MoCo v3")
        h1 = self.encoder(x1, padding_mask=pad1).pooled
        z1 = self.projector(h1)
        q1 = self.predictor(z1)
        q2 = self.predictor(self._query_branch()(x2, pad2))
        k1, k2 = self.key(x1, pad1), self.key(x2, pad2)
        batch = x1.shape[0]
        if dist.is_distributed():
            # The keys carry no gradient: a plain gather; one collective for both views.
            k_all = gather_detached(torch.stack([k1, k2], dim=1))
            k1_all, k2_all, offset = k_all[:, 0], k_all[:, 1], dist.rank() * batch
        else:
            k1_all, k2_all, offset = k1, k2, 0
        loss = info_nce(q1, k2_all, temperature=self.temperature, offset=offset) + info_nce(
            q2, k1_all, temperature=self.temperature, offset=offset
        )
        loss = loss * (2.0 * self.temperature)
        logs = {"key_momentum": torch.tensor(self.last_momentum)}
        return MethodOutput(loss=loss, logs=logs, embeddings=z1.detach(), features=h1.detach())

    def on_optimizer_step(self, step: StepInfo) -> None:
        self.last_momentum = cosine_momentum(
            min(step.step + 1, step.total_steps), step.total_steps, self.base_momentum, self.final_momentum
        )
        self.key.update(self._query_branch(), self.last_momentum)
