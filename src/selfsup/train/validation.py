"""Validation and early stopping for classifier methods (``finetune``) inside the training loop.

Every ``train.val_every`` steps (and at the last step) the classifier's top-1 and cross-entropy on
a validation split carved from the labelled training data (``train.val_fraction``, stratified,
seeded: :func:`selfsup.eval.splits.train_val_split`) are measured on the main process and shared
with the others, so every process takes the same decision. An evaluation improves on the best one
when its top-1 is higher, or equal with a lower loss (small validation splits tie often). The best
weights (the method's state dict: encoder and head) are written atomically to ``best.safetensors``
in the run directory; after ``train.patience`` evaluations without improvement the run stops, and a
finished run restores the best weights before it writes ``encoder.safetensors``. The early-stopping
state is saved in every checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from selfsup import dist
from selfsup.augment.base import InputTransform
from selfsup.data.base import UNKNOWN_LABEL, Dataset
from selfsup.errors import ConfigError
from selfsup.io import save_tensors_atomic

BEST_FILE = "best.safetensors"


class Classifier(Protocol):
    """A method that predicts classes: ``logits(x, padding_mask) -> (B, num_classes)``."""

    def logits(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor: ...


@torch.no_grad()
def classifier_logits(
    method: nn.Module,
    dataset: Dataset,
    transform: InputTransform,
    *,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> Tensor:
    """``(N, num_classes)`` float32 logits of every sample of ``dataset`` (eval mode, restored after)."""
    flags = [(m, m.training) for m in method.modules()]
    method.eval()
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    out = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = dataset.batch(torch.arange(start, min(len(dataset), start + batch_size))).to(device)
            x, padding_mask = transform(batch)
            with autocast:
                out.append(method.logits(x, padding_mask).float().cpu())  # type: ignore[operator]
    finally:
        for module, training in flags:
            module.training = training
    return torch.cat(out)


def top1_and_loss(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Top-1 (%) and mean cross-entropy over the labelled samples."""
    keep = labels.cpu() != UNKNOWN_LABEL
    logits, labels = logits[keep], labels.cpu()[keep]
    top1 = 100.0 * float((logits.argmax(dim=1) == labels).double().mean())
    return top1, float(F.cross_entropy(logits, labels))


@dataclass
class EarlyStopping:
    """The state of early stopping, saved in checkpoints (plain numbers)."""

    best_top1: float = -math.inf
    best_loss: float = math.inf
    best_step: int = -1
    bad_evaluations: int = 0
    stopped: bool = False

    def update(self, top1: float, loss: float, step: int, patience: int | None) -> bool:
        """Record one evaluation; True when it is the best so far."""
        improved = top1 > self.best_top1 or (top1 == self.best_top1 and loss < self.best_loss)
        if improved:
            self.best_top1, self.best_loss, self.best_step, self.bad_evaluations = top1, loss, step, 0
        else:
            self.bad_evaluations += 1
            self.stopped = patience is not None and self.bad_evaluations >= patience
        return improved


class Validation:
    """Validate every ``every`` steps, keep the best weights in ``run_dir/best.safetensors``, stop after
    ``patience`` evaluations without improvement (None: never)."""

    def __init__(
        self,
        data: Dataset,
        transform: InputTransform,
        run_dir: Path,
        *,
        every: int,
        patience: int | None,
        batch_size: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.data, self.transform, self.path = data, transform, run_dir / BEST_FILE
        self.every, self.patience = every, patience
        self.batch_size, self.device, self.amp_dtype = batch_size, device, amp_dtype
        self.state = EarlyStopping()

    @staticmethod
    def check(method: nn.Module) -> None:
        if not callable(getattr(method, "logits", None)):
            raise ConfigError(
                f"train.val_fraction validates a classifier, but method {type(method).__name__} has no "
                "logits(); use method=finetune or unset train.val_fraction"
            )

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every == 0 or step == total_steps

    def __call__(self, method: nn.Module, step: int) -> dict[str, float]:
        """Evaluate (main process), share the result, update the state; returns the logged metrics."""
        measured = None
        if dist.is_main():
            logits = classifier_logits(
                method,
                self.data,
                self.transform,
                batch_size=self.batch_size,
                device=self.device,
                amp_dtype=self.amp_dtype,
            )
            measured = top1_and_loss(logits, self.data.labels)
        top1, loss = dist.broadcast_object(measured)
        if self.state.update(top1, loss, step, self.patience) and dist.is_main():
            save_tensors_atomic(self.path, method.state_dict(), metadata={"step": str(step)})
        return {"val_top1": top1, "val_loss": loss}

    def restore_best(self, method: nn.Module) -> None:
        """Load the best weights into ``method`` (every process; call after a barrier)."""
        if self.state.best_step >= 0 and self.path.exists():
            method.load_state_dict(load_file(str(self.path), device=str(self.device)))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = EarlyStopping(**state)
