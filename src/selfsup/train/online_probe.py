"""The online linear probe: a linear classifier trained during pretraining on the detached features.

As solo-learn's and stable-pretraining's online probes: at every optimizer step, a linear layer on
the encoder's pooled output of the first global view (``MethodOutput.features``, detached) learns
the labels of the batch (samples labelled ``-1`` are ignored) with cross-entropy and its own AdamW
optimizer at a fixed learning rate. The features are detached, so the probe never changes the
encoder's gradients; it consumes no random numbers (zero-initialised weights), so a run with the
probe trains exactly the encoder of a run without it. Its numbers are reported apart from the
offline probes: ``online_train_top1`` / ``online_train_loss`` on the training batches (before each
update, averaged since the last log line) and ``online_top1`` on the monitor's held-out queries.

Exactness: gradients of the summed loss are accumulated over the micro-batches, summed over
processes (one collective, with the labelled count) and divided by the global count, so the update
is that of the mean loss over the global batch: N processes, or ``accumulate`` micro-batches, equal
one process on the whole batch. Weights and optimizer state are saved in every checkpoint.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.config import Config
from selfsup.data.base import UNKNOWN_LABEL, Dataset
from selfsup.errors import ConfigError

PREFIX = "online_probe/"


def probe_classes(dataset: Dataset) -> int:
    """Number of classes: the named classes, else the largest label + 1."""
    if dataset.info.classes:
        return len(dataset.info.classes)
    return int(dataset.labels.max()) + 1


class OnlineProbe:
    """Linear ``(B, dim) -> (B, num_classes)`` trained on detached features, with its own AdamW."""

    def __init__(self, dim: int, num_classes: int, *, lr: float, device: torch.device) -> None:
        self.linear = nn.Linear(dim, num_classes, device=device)
        with torch.no_grad():  # zero start: deterministic and free of the global RNG
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        self.optimizer = torch.optim.AdamW(self.linear.parameters(), lr=lr, weight_decay=0.0)
        self.device = device
        zero = torch.zeros(3, device=device)  # loss sum, correct, labelled count
        self._step, self._window = zero.clone(), zero.clone()
        self._warned = False

    @classmethod
    def build(cls, config: Config, dataset: Dataset, dim: int, device: torch.device) -> OnlineProbe | None:
        """The probe ``eval.online_probe`` asks for (auto: when the training data has labels), or None."""
        wanted = config.eval.online_probe
        if wanted is False or (wanted == "auto" and not dataset.has_labels):
            return None
        if not dataset.has_labels:
            raise ConfigError("eval.online_probe=true needs labelled training data; set it to auto or false")
        return cls(dim, probe_classes(dataset), lr=config.eval.online_probe_lr, device=device)

    def accumulate(self, features: Tensor | None, labels: Tensor | None) -> None:
        """Add one micro-batch: ``features`` ``(B, dim)`` (detached), ``labels`` ``(B,)`` (-1 ignored)."""
        if features is None or labels is None:
            if not self._warned:
                warnings.warn(
                    "the method returned no MethodOutput.features: the online probe is not trained",
                    stacklevel=2,
                )
                self._warned = True
            return
        keep = labels != UNKNOWN_LABEL
        with torch.autocast(self.device.type, enabled=False), torch.enable_grad():
            logits = self.linear(features.detach().float())
            losses = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
            loss = (losses * keep).sum()
            loss.backward()
        correct = ((logits.detach().argmax(dim=1) == labels) & keep).sum()
        self._step += torch.stack([loss.detach(), correct.float(), keep.sum().float()])

    def step(self) -> None:
        """One AdamW step on the mean loss over the labelled samples of the global batch (skipped when
        there are none)."""
        params = list(self.linear.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads] + [self._step])
        if dist.is_distributed():
            flat = dist.all_reduce_mean(flat) * dist.world_size()  # sums over processes
        totals = flat[-3:]
        self._window += totals
        self._step.zero_()
        count = float(totals[2])
        if count > 0:
            offset = 0
            for p in params:
                p.grad = (flat[offset : offset + p.numel()] / count).view_as(p).clone()
                offset += p.numel()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_logs(self) -> dict[str, float]:
        """``online_train_top1`` (%) and ``online_train_loss`` since the last call; then resets them."""
        loss, correct, count = self._window.tolist()
        self._window.zero_()
        if count == 0:
            return {}
        return {"online_train_top1": 100.0 * correct / count, "online_train_loss": loss / count}

    @torch.no_grad()
    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Top-1 (%) on ``features`` ``(M, dim)`` of the labelled samples of ``labels`` ``(M,)``."""
        labels = labels.to(self.device)
        keep = labels != UNKNOWN_LABEL
        predicted = self.linear(features.to(self.device).float()).argmax(dim=1)
        if not bool(keep.any()):
            return float("nan")
        return 100.0 * float((predicted == labels)[keep].double().mean())

    def state_tensors(self) -> dict[str, Tensor]:
        return {PREFIX + k: v for k, v in self.linear.state_dict().items()}

    def load(self, tensors: dict[str, Tensor], optimizer_state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state_tensors` and the optimizer saved (a checkpoint's extra tensors)."""
        state = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if not state or optimizer_state is None:
            raise ValueError("the checkpoint holds no online probe; it was saved with eval.online_probe off")
        self.linear.load_state_dict(state)
        self.optimizer.load_state_dict(optimizer_state)
