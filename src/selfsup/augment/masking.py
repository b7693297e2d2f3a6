"""Span masks over frames for masked prediction (wav2vec 2.0, HuBERT, data2vec), batched on device.

:func:`span_mask` reproduces fairseq's ``compute_mask_indices`` (``fairseq/data/data_utils.py``) with
``mask_type="static"``, ``no_overlap=False`` and its current defaults (``idc_select_ver=1``,
``num_mask_ver=2``), as wav2vec 2.0 (Baevski et al. 2020, §4.2: ``p = 0.065`` of the frames start a
span of ``M = 10``, "about 49% of all time steps" masked) and HuBERT (Hsu et al. 2021) use it. Per
sample with ``L`` valid frames:

1. ``num_mask = max(min_masks, int(mask_prob * L / mask_length + u))``, ``u ~ U[0, 1)`` drawn per sample
   (probabilistic rounding; ``mask_prob = 0.65`` is fairseq's spelling of ``p * M``);
2. span starts: ``num_mask`` distinct positions drawn uniformly from ``range(L - mask_length)`` —
   fairseq's ``rng.choice(sz - min_len, num_mask, replace=False)``, so no span starts in the last
   ``mask_length`` frames and the last frame is never masked; when ``L - mask_length <= num_mask``
   the range is ``num_mask + 1`` positions instead (fairseq's ``min_len = sz - num_mask - 1``);
3. each start masks ``mask_length`` frames; spans may overlap (hence ~49%, not 65%); frames past ``L``
   are dropped, so nothing on padding is ever masked.

The expected masked fraction of an interior frame is ``1 - C(N - M, k) / C(N, k)`` with
``N = L - M`` start positions and ``k = num_mask``: 0.489 for ``L = 1000, p·M = 0.65, M = 10``
(tested).

Differences, by decision:

* fairseq's ``require_same_masks=True`` (its default; wav2vec 2.0's and data2vec's configs keep it)
  then cuts every row down to the smallest row's masked count by unmasking random *frames*, so that
  masked frames reshape to ``(B, K, D)``. Our losses index masked frames with the mask itself, so the
  default here is ``require_same_masks=False`` (each sample keeps its own ~49%, as Hugging Face's
  ``_compute_mask_indices`` also does); ``True`` reproduces fairseq's cut, batched.
* Hugging Face draws starts from ``L - mask_length + 1`` positions and one ``u`` per batch; we follow
  fairseq (``L - mask_length`` positions, ``u`` per sample).
* fairseq raises when a short clip ends up fully masked; here a clip shorter than about
  ``mask_length + num_mask`` frames may be fully masked (its loss is still defined), never its padding.

All randomness comes from ``generator`` (uniform keys over positions: the ``k`` smallest of ``L``
i.i.d. uniforms are a uniform ``k``-subset), so one call is a few kernels for the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expected_masked_fraction(length: int, mask_prob: float, mask_length: int, min_masks: int = 0) -> float:
    """Exact expected fraction of the ``length`` frames of a clip masked by :func:`span_mask`.

    Averages over the rounding draw of ``num_mask`` and, for each frame ``t``, uses that it is masked
    iff one of the (at most ``mask_length``) start positions ``t - mask_length + 1 .. t`` is drawn:
    ``1 - C(N - w_t, k) / C(N, k)`` for ``w_t`` such positions out of ``N``. For tests and documentation.
    """
    from math import comb, floor

    base = mask_prob * length / mask_length
    low = floor(base)
    frac = base - low
    total = 0.0
    for k_raw, weight in ((low, 1.0 - frac), (low + 1, frac)):
        if weight == 0.0:
            continue
        k = max(min_masks, k_raw)
        n = length - mask_length
        if n <= k:
            n = k + 1
        masked = 0.0
        for t in range(length):
            window = max(0, min(t, n - 1) - max(0, t - mask_length + 1) + 1)
            masked += 1.0 - comb(n - window, k) / comb(n, k) if k > 0 else 0.0
        total += weight * masked / length
    return total


def span_mask(
    lengths: Tensor,
    num_frames: int,
    *,
    mask_prob: float,
    mask_length: int,
    generator: torch.Generator,
    min_masks: int = 2,
    require_same_masks: bool = False,
) -> Tensor:
    """``(B,)`` int64 valid frames → ``(B, num_frames)`` bool span mask, True where a frame is masked.

    fairseq's ``compute_mask_indices`` (static spans, overlaps allowed; see the module docstring).
    Random numbers are drawn on ``generator.device``; the mask is returned on ``lengths.device``.
    ``require_same_masks=True`` makes every row's masked count the batch minimum, as fairseq does.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob!r}")
    if isinstance(mask_length, bool) or not isinstance(mask_length, int) or mask_length < 1:
        raise ValueError(f"mask_length must be a positive integer, got {mask_length!r}")
    if min_masks < 0:
        raise ValueError(f"min_masks must be >= 0, got {min_masks!r}")
    if lengths.ndim != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    if lengths.numel() and int(lengths.max()) > num_frames:
        raise ValueError(f"a length exceeds num_frames={num_frames}: {lengths.tolist()}")
    device = generator.device
    out_device = lengths.device
    valid = lengths.to(device=device, dtype=torch.long)
    batch = valid.shape[0]
    if batch == 0 or num_frames == 0:
        return torch.zeros(batch, num_frames, dtype=torch.bool, device=out_device)

    # 1. Spans per sample, with per-sample probabilistic rounding.
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    num_mask = torch.floor(mask_prob * valid.double() / mask_length + u).long().clamp_min(min_masks)
    # 2. Start positions: a uniform num_mask-subset of range(n) per sample.
    n = valid - mask_length
    n = torch.where(n <= num_mask, num_mask + 1, n)
    width = max(num_frames, int(n.max()))
    positions = torch.arange(width, device=device)
    keys = torch.rand(batch, width, generator=generator, device=device)
    keys = keys.masked_fill(positions.unsqueeze(0) >= n.unsqueeze(1), 2.0)  # never chosen
    starts = _smallest(keys, num_mask)
    # 3. Frame t is masked iff a start lies in [t - mask_length + 1, t]: a windowed count via cumsum.
    counts = starts.long().cumsum(dim=1)
    behind = torch.nn.functional.pad(counts, (mask_length, 0))[:, :width]
    mask = (counts - behind) > 0
    mask = mask[:, :num_frames] & (positions[:num_frames].unsqueeze(0) < valid.unsqueeze(1))
    if require_same_masks:
        target = mask.sum(dim=1).min()
        keys = torch.rand(batch, num_frames, generator=generator, device=device)
        mask = _smallest(keys.masked_fill(~mask, 2.0), target.expand(batch))
    return mask.to(out_device)


def _smallest(keys: Tensor, k: Tensor) -> Tensor:
    """``(B, W)`` keys in [0, 1) (2.0 = excluded), ``(B,)`` counts → bool, True at each row's ``k`` smallest
    keys (fewer when a row has fewer than ``k`` eligible positions)."""
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order))
    return (rank < k.unsqueeze(1)) & (keys < 2.0)
