"""data2vec: masked prediction of a teacher's contextualised representations (Baevski et al., ICML 2022).

One implementation for every modality (speech here, ViTs in the vision zoo). The student is the encoder
on the masked view (``mask_mode == "replace"``: masked tokens replaced by the encoder's mask embedding);
the teacher is an EMA copy of the encoder, in eval mode, on the unmasked view. The targets are the
average of the teacher's top-K layer outputs, each normalised (:func:`selfsup.losses.data2vec_targets`);
a linear head on the student's final output regresses them at the masked, non-padded positions
(:func:`selfsup.losses.data2vec_regression`).

Facts reproduced from the authors' code (fairseq ``examples/data2vec/models/data2vec_audio.py`` and
``data2vec_vision.py``, their ``Data2VecAudioConfig`` defaults and ``config/audio/pretraining/
base_librispeech.yaml``):

* **Teacher.** ``EMAModule`` of the Transformer encoder only (``ema_transformer_only=True``, implied by
  ``ema_layers_only=True``), with the positional convolution in ``skip_keys`` (copied, not averaged); the
  feature extractor and projection are not in the teacher at all: it gets the student's projected
  features before masking (``pre_encoder_features``). Here the teacher is an :class:`EMATeacher` of the
  whole encoder whose ``ema_filter`` averages only the parameters at depth ``layer_id >= 1`` (the blocks
  and a final norm) and copies the rest (stem: feature extractor, projection, positional embedding,
  mask embedding), so its stem always equals the student's; for encoders exposing ``local_features`` /
  ``contextualize`` the teacher reuses the student's projected features as fairseq does (no second
  convolutional pass). The teacher runs in eval mode (fairseq calls ``self.ema.model.eval()`` before every
  teacher pass: no dropout, no layer drop).
* **Which tensor per layer.** fairseq audio takes ``layer_results[i][2]``: the FFN output (``fc2``) before
  dropout and the residual; encoders exposing ``contextualize(...).ffn_outputs`` give exactly that
  (``target_layer="ffn"``). The generic path uses the block outputs (``target_layer="block"``), which is
  fairseq vision's default (``end_of_block_targets=True``: ``layer_results="end"``, each block's output,
  class token dropped): ``encoder.block_outputs(x, padding_mask=...)`` when the encoder offers it (every
  block's output before the final norm, exactly fairseq's), else ``hidden_states[1:]`` (whose last entry
  is, for our ViT, after the final LayerNorm: a difference in the top target layer only).
* **Vision (ViT).** The ``masked_image`` view policy (BEiT block masking, 60% of the patches, data2vec's
  paper); the student replaces masked patches by the ViT's ``mask_token`` (``mask_mode="replace"``, as
  fairseq's ``mask_emb``); fairseq's data2vec v1 vision recipe (``config/vision/pretraining/
  base_imagenet_d2v1.yaml`` + ``Data2VecVisionConfig``) is ``top_k=6``, ``instance_norm_target_layer=false``,
  ``layer_norm_targets=true``, ``loss_beta=2``, ``ema_end_decay=0.9998`` (recipe
  ``data2vec_vit_cifar10.yaml``). **Difference:** fairseq vision regresses the student's final output
  directly (its ``final_proj`` is unused there); here the same linear ``head`` as for audio is kept.
* **Normalisation.** Audio: instance norm of each layer over time (``instance_norm_target_layer=True``),
  nothing after the average. Text: ``layer_norm_target_layer``; vision v1: ``layer_norm_targets``, top 6,
  ``loss_beta=2``. **Difference:** padded frames are excluded from the instance-norm statistics (fairseq
  includes them, harmlessly there since its pretraining batches are cropped, never padded).
* **Loss.** Squared error (``loss_beta=0``) or smooth L1, summed over dimensions, times ``1/sqrt(D)``
  (``loss_scale=None``), summed over masked positions and divided by their number (fairseq's
  ``sample_size`` normalisation in the trainer). Under data parallelism the divisor is the global count
  of masked positions (one small all-reduce), so N processes equal one on the global batch as in fairseq;
  over accumulated micro-batches each micro-batch is its own mean (fairseq divides by the total).
* **EMA schedule.** ``tau`` from ``ema_decay`` 0.999 to ``ema_end_decay`` 0.9999 linearly over
  ``ema_anneal_end_step`` updates, then constant (``get_annealed_rate``). fairseq applies the update
  inside ``set_num_updates(k)`` before the forward of update ``k``, with ``tau(k)``; here it runs in
  :meth:`on_optimizer_step` after optimizer step ``k - 1`` with the same ``tau(k)`` -- once per optimizer
  step, whereas fairseq's ``set_num_updates`` runs once per *micro-batch* when ``update_freq > 1``.
  ``ema_anneal_end_step=None`` is the training length (fairseq's dataclass default
  ``optimization.max_update``); the Base LibriSpeech recipe sets 30000 of 400000 updates.
  fairseq skips the update when ``tau == 1``; here the copied parameters still track the student then.
* **Collapse.** fairseq logs ``target_var`` / ``pred_var`` -- the mean over dimensions of the standard
  deviation over masked positions, global over processes -- and raises after 5000 updates when
  ``target_var < 0.1`` or ``pred_var < 0.01``. The same here (:class:`CollapseError`, a
  :class:`~selfsup.errors.SelfsupError`: the CLI prints it without a traceback; every process sees the
  same all-reduced values and stops together). ``min_target_var=0`` / ``min_pred_var=0`` disable it.

``MethodOutput.features`` and ``embeddings`` are, as for every masking method, the student encoder's
output averaged over the positions it did not mask (:func:`~selfsup.encoders.base.pool_unmasked`, free:
the masked positions hold the mask embedding's predictions, not a view of the input).

ViT-style encoders with prefix tokens (class / register tokens) declare ``num_prefix_tokens`` (timm's
name); those tokens are dropped from targets and predictions, as fairseq vision drops the class token
(``z[:, 1:]``), and the mask covers the remaining tokens.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder, EncoderOutput, pool_unmasked, require_capabilities
from selfsup.errors import CollapseError, ConfigError
from selfsup.losses.data2vec import data2vec_regression, data2vec_targets, mean_std_from_moments
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.teacher import EMATeacher

__all__ = ["CollapseError", "Data2Vec", "ema_decay_at"]

TARGET_LAYERS = ("auto", "ffn", "block")


def ema_decay_at(updates: int, start: float, end: float, anneal_end_step: int) -> float:
    """The teacher's EMA decay after ``updates`` optimizer updates (fairseq's ``get_annealed_rate``).

    ``end - (end - start) * (1 - updates / anneal_end_step)`` for ``updates < anneal_end_step``, ``end``
    from then on: ``start`` at 0 updates, linear in between.
    """
    if updates < 0:
        raise ValueError(f"updates must be >= 0, got {updates}")
    if anneal_end_step <= 0:
        raise ValueError(f"anneal_end_step must be positive, got {anneal_end_step}")
    if updates >= anneal_end_step:
        return end
    return end - (end - start) * (1.0 - updates / anneal_end_step)


# data2vec masks tokens by replacing them with the encoder's mask embedding.
NEEDS = ("mask:replace",)


@METHODS.register("data2vec", needs=NEEDS)
class Data2Vec(Method):
    """data2vec (Baevski et al. 2022), one implementation for every modality; defaults: audio Base.

    Args:
        encoder: an encoder with ``mask_mode == "replace"``.
        top_k: how many of the teacher's top layers are averaged (``average_top_k_layers``: 8 audio Base,
            6 vision, 10 text); all layers when the encoder has fewer (fairseq's behaviour).
        target_layer: ``"ffn"`` (each block's FFN output before the residual, needs ``contextualize``),
            ``"block"`` (block outputs ``hidden_states[1:]``) or ``"auto"`` (``ffn`` where available).
        instance_norm_target_layer, layer_norm_target_layer, instance_norm_targets, layer_norm_targets:
            the target normalisations of :func:`~selfsup.losses.data2vec_targets` (audio: the first only).
        loss_beta: 0 for the squared error, ``> 0`` for smooth L1 with that beta.
        loss_scale: per-position loss scale; None means ``1 / sqrt(embed_dim)``.
        ema_decay, ema_end_decay: the teacher's EMA decay at the first update and after annealing.
        ema_anneal_end_step: updates over which the decay is annealed (None: the whole run).
        ema_transformer_only: average only the parameters at depth >= 1 (``encoder.layer_id``), copy the
            stem; False averages everything (fairseq ``ema_transformer_only=False``).
        min_target_var, min_pred_var: collapse thresholds on the mean std of targets / predictions.
        var_check_after: the thresholds apply once more than this many updates were made.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"audio": "speech_mask", "image": "masked_image"}

    def __init__(
        self,
        encoder: Encoder,
        top_k: int = 8,
        target_layer: str = "auto",
        instance_norm_target_layer: bool = True,
        layer_norm_target_layer: bool = False,
        instance_norm_targets: bool = False,
        layer_norm_targets: bool = False,
        loss_beta: float = 0.0,
        loss_scale: float | None = None,
        ema_decay: float = 0.999,
        ema_end_decay: float = 0.9999,
        ema_anneal_end_step: int | None = None,
        ema_transformer_only: bool = True,
        min_target_var: float = 0.1,
        min_pred_var: float = 0.01,
        var_check_after: int = 5000,
    ) -> None:
        super().__init__(encoder)
        require_capabilities("data2vec", encoder, NEEDS)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"method.top_k must be a positive integer (layers averaged), got {top_k!r}")
        self._split = hasattr(encoder, "local_features") and hasattr(encoder, "contextualize")
        if target_layer not in TARGET_LAYERS:
            raise ConfigError(f"method.target_layer must be one of {TARGET_LAYERS}, got {target_layer!r}")
        if target_layer == "ffn" and not self._split:
            raise ConfigError(
                f"method.target_layer='ffn' needs an encoder with contextualize(...).ffn_outputs; "
                f"{type(encoder).__name__} has none: use 'block'"
            )
        self.target_layer = ("ffn" if self._split else "block") if target_layer == "auto" else target_layer
        if not (0.0 <= ema_decay <= ema_end_decay <= 1.0):
            raise ConfigError(
                f"need 0 <= method.ema_decay <= method.ema_end_decay <= 1, got {ema_decay}, {ema_end_decay}"
            )
        if ema_anneal_end_step is not None and ema_anneal_end_step <= 0:
            raise ConfigError(
                f"method.ema_anneal_end_step must be positive or null, got {ema_anneal_end_step}"
            )
        if not (math.isfinite(loss_beta) and loss_beta >= 0):
            raise ConfigError(f"method.loss_beta must be >= 0 (0: squared error), got {loss_beta}")
        if loss_scale is not None and not (math.isfinite(loss_scale) and loss_scale > 0):
            raise ConfigError(f"method.loss_scale must be positive or null (1/sqrt(D)), got {loss_scale}")
        # More layers than the encoder has means all of them, as fairseq's min_layer = layers - K does.
        self.top_k = min(top_k, encoder.num_layers)
        self.norms = {
            "instance_norm_target_layer": bool(instance_norm_target_layer),
            "layer_norm_target_layer": bool(layer_norm_target_layer),
            "instance_norm_targets": bool(instance_norm_targets),
            "layer_norm_targets": bool(layer_norm_targets),
        }
        self.loss_beta, self.loss_scale = float(loss_beta), loss_scale
        self.ema_decay, self.ema_end_decay = float(ema_decay), float(ema_end_decay)
        self.ema_anneal_end_step = ema_anneal_end_step
        self.ema_transformer_only = bool(ema_transformer_only)
        self.min_target_var, self.min_pred_var = float(min_target_var), float(min_pred_var)
        self.var_check_after = int(var_check_after)
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 0))
        # fairseq's final_proj: Linear(D, D) with PyTorch's default initialisation.
        self.head = nn.Linear(encoder.embed_dim, encoder.embed_dim)
        averaged = _transformer_parameters(encoder) if self.ema_transformer_only else None
        self.teacher = EMATeacher(
            encoder, eval_mode=True, ema_filter=None if averaged is None else averaged.__contains__
        )

    # -- schedule ------------------------------------------------------------------------------------

    def decay(self, updates: int, total_steps: int) -> float:
        """The EMA decay of the teacher update that follows ``updates`` optimizer updates."""
        end_step = self.ema_anneal_end_step or max(total_steps, 1)
        return ema_decay_at(updates, self.ema_decay, self.ema_end_decay, end_step)

    def on_optimizer_step(self, step: StepInfo) -> None:
        # After optimizer step k (0-based) k + 1 updates were made: fairseq's set_num_updates(k + 1).
        self.teacher.update(self.encoder, self.decay(step.step + 1, step.total_steps))

    # -- forward -------------------------------------------------------------------------------------

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        mask = views.mask(0)
        if mask is None:
            raise ValueError(
                "data2vec needs a token mask on its view (Views.masks); use a masking view policy "
                "(audio: speech_mask)"
            )
        x, padding = views.inputs[0], views.padding_mask(0)
        mask = mask.flatten(1).bool()  # (B, N): a (B, H, W) patch mask flattens in row-major order
        student, layers = self._encode(x, padding, mask)
        frame_padding = self._tokens(student.padding_mask)
        hidden = self._tokens(student.last_hidden_state)
        layers = [self._tokens(t) for t in layers[-self.top_k :]]
        _check_mask(mask, hidden)
        valid = mask if frame_padding is None else mask & ~frame_padding
        targets = data2vec_targets(layers, frame_padding, **self.norms)[valid]  # (N, D)
        pred = self.head(hidden[valid])  # (N, D), only the masked positions, as fairseq

        count, target_var, pred_var = self._statistics(valid, targets, pred)
        loss = data2vec_regression(
            pred,
            targets,
            loss_beta=self.loss_beta,
            loss_scale=self.loss_scale,
            normalizer=(count / dist.world_size()).clamp_min(1.0 / dist.world_size()),
        )
        if self.training and step.step > self.var_check_after:
            self._check_collapse(target_var, pred_var, step.step)
        frames = (
            (~frame_padding).sum()
            if frame_padding is not None
            else torch.tensor(valid.numel(), device=valid.device)
        )
        logs = {
            "target_var": target_var.float(),
            "pred_var": pred_var.float(),
            "ema_decay": torch.tensor(self.decay(step.step, step.total_steps)),
            "masked_fraction": (valid.sum() / frames.clamp_min(1)).detach().float(),
        }
        # An encoder with several mask modes (a ViT) pools over what it saw itself; the audio encoders'
        # pooled output would average in the mask embedding's positions.
        if getattr(self.encoder, "mask_modes", ()):
            pooled = student.pooled.detach().float()
        else:
            pooled = pool_unmasked(hidden.detach(), frame_padding, mask)
        return MethodOutput(loss=loss, logs=logs, embeddings=pooled, features=pooled)

    def _encode(self, x: Tensor, padding: Tensor | None, mask: Tensor) -> tuple[EncoderOutput, list[Tensor]]:
        """The student's output on the masked input and the teacher's layer outputs on the unmasked one."""
        if not self._split:
            # An encoder with several mask modes (a ViT drops or replaces) is asked to replace.
            modes = {"mask_mode": "replace"} if len(getattr(self.encoder, "mask_modes", ())) > 1 else {}
            student = self.encoder(x, padding_mask=padding, mask=mask, **modes)
            with torch.no_grad():
                block_outputs = getattr(self.teacher.module, "block_outputs", None)
                if block_outputs is not None:
                    # fairseq vision's "end" targets: every block's output before any final norm.
                    return student, list(block_outputs(x, padding_mask=padding))
                teacher = self.teacher(x, padding_mask=padding)
            return student, list(teacher.hidden_states[1:])
        encoder: Any = self.encoder
        local = encoder.local_features(x, padding_mask=padding)
        _check_mask(mask, local.projected)
        context = encoder.contextualize(local.projected, padding_mask=local.padding_mask, mask=mask)
        module: Any = self.teacher.module
        with torch.no_grad():
            if self.ema_transformer_only:
                # fairseq feeds the teacher the student's pre-mask features (its stem is not in the EMA).
                t_in, t_padding = local.projected.detach(), local.padding_mask
            else:
                t_local = module.local_features(x, padding_mask=padding)
                t_in, t_padding = t_local.projected, t_local.padding_mask
            t_context = module.contextualize(t_in, padding_mask=t_padding)
        layers = t_context.ffn_outputs if self.target_layer == "ffn" else t_context.output.hidden_states[1:]
        return context.output, list(layers)

    def _tokens(self, t: Tensor | None) -> Tensor | None:
        """Drop the prefix (class / register) tokens of a ``(B, P + N, ...)`` sequence."""
        if t is None or self.num_prefix_tokens == 0:
            return t
        return t[:, self.num_prefix_tokens :]

    def _statistics(self, valid: Tensor, targets: Tensor, pred: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Global count of positions and fairseq's target_var / pred_var, in one detached all-reduce."""
        y, p = targets.detach().double(), pred.detach().double()
        count = valid.sum().double().reshape(1)
        stats = torch.cat([count, y.sum(0), y.square().sum(0), p.sum(0), p.square().sum(0)])
        if dist.world_size() > 1:
            stats = dist.all_reduce_mean(stats) * dist.world_size()
        d = y.shape[1]
        count = stats[0]
        target_var = mean_std_from_moments(count, stats[1 : 1 + d], stats[1 + d : 1 + 2 * d])
        pred_var = mean_std_from_moments(count, stats[1 + 2 * d : 1 + 3 * d], stats[1 + 3 * d :])
        return count, target_var, pred_var

    def _check_collapse(self, target_var: Tensor, pred_var: Tensor, updates: int) -> None:
        for name, value, floor, option in (
            ("target", float(target_var), self.min_target_var, "min_target_var"),
            ("prediction", float(pred_var), self.min_pred_var, "min_pred_var"),
        ):
            if value < floor:  # NaN (fewer than 2 masked positions) never triggers
                raise CollapseError(
                    f"data2vec collapsed after {updates} updates: the {name} std is {value:.4g} < "
                    f"method.{option}={floor} (fairseq stops here too). Lower optim.lr, anneal the EMA "
                    f"more slowly (method.ema_decay / ema_end_decay), or set method.{option}=0 to go on"
                )


def _check_mask(mask: Tensor, tokens: Tensor) -> None:
    if mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"the view's mask is {tuple(mask.shape)} but the encoder gives {tuple(tokens.shape[:2])} "
            "tokens: the mask must be in the encoder's token grid (encoder.output_lengths)"
        )


def _transformer_parameters(encoder: Encoder) -> frozenset[str]:
    """Names of the parameters the EMA averages under ``ema_transformer_only``: depth ``layer_id >= 1``."""
    names = [name for name, _ in encoder.named_parameters()]
    try:
        averaged = frozenset(n for n in names if encoder.layer_id(n) >= 1)
    except ValueError as error:
        raise ConfigError(
            f"data2vec cannot place {type(encoder).__name__}'s parameters at a depth ({error}); "
            "set method.ema_transformer_only=false to average every parameter"
        ) from None
    if not averaged:
        raise ConfigError(
            f"{type(encoder).__name__} puts every parameter at depth 0, so ema_transformer_only would make "
            "the teacher an exact copy of the student; set method.ema_transformer_only=false"
        )
    return averaged
