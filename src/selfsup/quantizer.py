"""The Gumbel-softmax product quantizer of wav2vec 2.0 (Baevski et al. 2020, section 2 and eq. 1).

A frame ``x`` ``(C,)`` is mapped by one linear layer to ``G × V`` logits ``l``; in each of the ``G``
groups one of ``V`` codewords ``e_{g,v}`` ``(d / G,)`` is chosen and the ``G`` chosen codewords are
concatenated into the quantized vector ``q`` ``(d,)``. In training the choice is a hard Gumbel-softmax
sample, differentiable by the straight-through estimator: the forward value is the one-hot of
``argmax_v (l_{g,v} + n_{g,v})`` with Gumbel noise ``n = -log(-log u)``, the backward pass that of
``softmax((l + n) / τ)``. In evaluation the choice is ``argmax_v l_{g,v}``, no noise.

As fairseq ``fairseq/modules/gumbel_vector_quantizer.py`` (``GumbelVectorQuantizer``,
``combine_groups=False``, ``weight_proj_depth=1``) and Hugging Face's ``Wav2Vec2GumbelVectorQuantizer``:

* parameters ``weight_proj`` (Linear ``C → G·V``, weight ``N(0, 1)``, bias 0) and ``codevectors``
  ``(1, G·V, d / G)`` (uniform on [0, 1)); the layout and names of transformers'
  ``quantizer.weight_proj`` / ``quantizer.codevectors`` (fairseq calls the codebook ``vars``);
* the softmax and the Gumbel-softmax in fp32;
* ``prob_perplexity``: the perplexity of the *soft* code distribution averaged over the frames given
  (``softmax(l)``, no noise, no temperature), summed over groups — the quantity the diversity loss
  pushes up; ``code_perplexity``: the same for the hard ``argmax l`` choices (no gradient), the
  number fairseq logs to show codebook usage;
* the temperature ``τ`` annealed per optimizer step as ``max(start · decay^step, end)`` with
  ``(start, end, decay) = (2, 0.5, 0.999995)`` (fairseq ``latent_temp``, ``set_num_updates``):
  :func:`gumbel_temperature`, a pure function of the step, passed to :meth:`GumbelVectorQuantizer.forward`,
  so no state changes and a resumed run anneals exactly as an uninterrupted one.

Deliberate differences (none changes the maths): the straight-through value is written
``hard + (soft - soft.detach())`` (fairseq/torch: ``hard - soft.detach() + soft``), so the forward
value is exactly one-hot and identical codes give bit-identical vectors; the codeword lookup is a
per-group ``einsum`` instead of materialising ``(N, G·V, d / G)``; the Gumbel noise can be passed in
(the wav2vec 2.0 method draws it from per-utterance generators, so that the batch order and padding
do not change it); perplexities use ``xlogy`` (exact ``0 · log 0 = 0``) where fairseq adds ``1e-7``
inside the log.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.wav2vec2 import codebook_perplexity

__all__ = ["GumbelVectorQuantizer", "Quantized", "gumbel_noise", "gumbel_temperature"]


def gumbel_temperature(step: int, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> float:
    """The Gumbel-softmax temperature during optimizer step ``step`` (0 for the first).

    ``max(start · decay^step, end)``: fairseq's ``GumbelVectorQuantizer.set_num_updates(num_updates)``,
    which the trainer calls with the number of updates already done, so the first update uses
    ``start``. wav2vec 2.0 Base/Large: ``(2, 0.5, 0.999995)`` (paper, section 4.2), which reaches 0.5
    after ``ln 4 / -ln 0.999995 ≈ 277k`` updates of the 400k.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not (start > 0 and end > 0 and 0 < decay <= 1):
        raise ValueError(f"need start > 0, end > 0 and 0 < decay <= 1, got {start}, {end}, {decay}")
    return max(start * decay**step, end)


def gumbel_noise(
    shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | None = None
) -> Tensor:
    """Standard Gumbel noise ``-log(E)``, ``E ~ Exp(1)`` (fp32), the way ``F.gumbel_softmax`` draws it."""
    exponential = torch.empty(shape, device=device, dtype=torch.float32).exponential_(generator=generator)
    return -exponential.log()


@dataclass
class Quantized:
    """The output of :class:`GumbelVectorQuantizer` for ``N`` frames.

    vectors: ``(N, code_dim)`` the concatenated codewords (straight-through gradients in training).
    codes: ``(N, G)`` int64 the chosen codeword of every group.
    logits: ``(N, G, V)`` the fp32 logits ``l``, before noise and temperature.
    prob_perplexity: scalar fp32, ``Σ_g exp(H(mean_n softmax(l_{n,g})))``, with gradient.
    code_perplexity: scalar fp32, ``Σ_g exp(H(mean_n onehot(argmax l_{n,g})))``, detached.
    """

    vectors: Tensor
    codes: Tensor
    logits: Tensor
    prob_perplexity: Tensor
    code_perplexity: Tensor


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer with ``num_groups`` codebooks of ``num_codes`` entries (wav2vec 2.0, eq. 1).

    Args:
        input_dim: ``C``, the width of the frames to quantize (wav2vec 2.0: the conv features, 512).
        num_groups: ``G`` (fairseq ``latent_groups``; 2 in the paper).
        num_codes: ``V`` entries per group (fairseq ``latent_vars``; 320 in the paper: 102.4k combinations).
        code_dim: ``d``, the width of a quantized vector; each codeword has ``d / G`` dimensions
            (fairseq ``latent_dim``, which defaults to ``final_dim``: 256 for Base, 768 for Large).
    """

    def __init__(
        self, input_dim: int, num_groups: int = 2, num_codes: int = 320, code_dim: int = 256
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_dim", input_dim),
            ("num_groups", num_groups),
            ("num_codes", num_codes),
            ("code_dim", code_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if code_dim % num_groups:
            raise ValueError(f"code_dim {code_dim} is not divisible by num_groups {num_groups}")
        self.input_dim, self.num_groups, self.num_codes, self.code_dim = (
            input_dim,
            num_groups,
            num_codes,
            code_dim,
        )
        self.weight_proj = nn.Linear(input_dim, num_groups * num_codes)
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_codes, code_dim // num_groups))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fairseq / transformers: logits N(0, 1) weights and zero bias, codewords uniform on [0, 1).
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        nn.init.uniform_(self.codevectors)

    @property
    def total_codes(self) -> int:
        """``G · V``: the largest possible perplexity (every codeword of every group equally used)."""
        return self.num_groups * self.num_codes

    def codebook(self) -> Tensor:
        """``(G, V, d / G)`` the codewords per group."""
        return self.codevectors.view(self.num_groups, self.num_codes, -1)

    def forward(self, x: Tensor, *, temperature: float = 2.0, noise: Tensor | None = None) -> Quantized:
        """Quantize ``x`` ``(N, C)`` (N frames; flatten ``(B, T, C)`` and select the frames first).

        temperature: ``τ`` of the Gumbel-softmax in training (:func:`gumbel_temperature`); unused in eval.
        noise: ``(N, G, V)`` Gumbel noise for training; None draws it from torch's global generator.
        """
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected frames of shape (N, {self.input_dim}), got {tuple(x.shape)}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        n, g, v = x.shape[0], self.num_groups, self.num_codes
        logits = self.weight_proj(x).float().view(n, g, v)
        hard_codes = logits.detach().argmax(dim=-1)  # (N, G): the eval choice; code perplexity in both modes
        with torch.no_grad():
            code_perplexity = codebook_perplexity(F.one_hot(hard_codes, v).float())
        prob_perplexity = codebook_perplexity(logits.softmax(dim=-1))
        if self.training:
            if noise is None:
                noise = gumbel_noise((n, g, v), device=x.device)
            elif noise.shape != (n, g, v):
                raise ValueError(f"noise must be (N, G, V) = {(n, g, v)}, got {tuple(noise.shape)}")
            soft = ((logits + noise.to(logits)) / temperature).softmax(dim=-1)
            codes = soft.detach().argmax(dim=-1)
            # Straight-through: exactly one-hot forward, softmax's gradient backward.
            onehot = F.one_hot(codes, v).to(soft) + (soft - soft.detach())
        else:
            codes = hard_codes
            onehot = F.one_hot(codes, v).float()
        book = self.codebook()
        vectors = torch.einsum("ngv,gvd->ngd", onehot.to(book.dtype), book).reshape(n, self.code_dim)
        return Quantized(
            vectors=vectors,
            codes=codes,
            logits=logits,
            prob_perplexity=prob_perplexity,
            code_perplexity=code_perplexity,
        )
