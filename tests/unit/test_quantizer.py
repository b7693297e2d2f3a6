"""The Gumbel product quantizer of wav2vec 2.0 against hand-written definitions (selfsup.quantizer).

References: Baevski et al. 2020 eq. 1 (hard Gumbel-softmax with straight-through gradients), fairseq
``GumbelVectorQuantizer`` (temperature ``max(start · decay^updates, end)``, perplexities), numpy/scipy
for entropies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from selfsup.quantizer import GumbelVectorQuantizer, gumbel_noise, gumbel_temperature

G, V, C, D = 2, 5, 6, 8


def make(seed: int = 0) -> GumbelVectorQuantizer:
    torch.manual_seed(seed)
    return GumbelVectorQuantizer(C, num_groups=G, num_codes=V, code_dim=D)


def frames(n: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, C, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_initialisation_follow_fairseq() -> None:
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(64, num_groups=2, num_codes=320, code_dim=256)
    assert q.codevectors.shape == (1, 640, 128) and q.weight_proj.weight.shape == (640, 64)
    assert q.total_codes == 640
    # fairseq: weight_proj ~ N(0, 1), bias 0; codewords uniform on [0, 1).
    assert (
        abs(float(q.weight_proj.weight.detach().std()) - 1.0) < 0.02
        and float(q.weight_proj.bias.detach().abs().max()) == 0
    )
    assert float(q.codevectors.detach().min()) >= 0 and float(q.codevectors.detach().max()) < 1
    out = q(torch.randn(9, 64), temperature=2.0)
    assert out.vectors.shape == (9, 256) and out.codes.shape == (9, 2) and out.logits.shape == (9, 2, 320)
    assert out.codes.dtype == torch.int64
    with pytest.raises(ValueError, match="divisible"):
        GumbelVectorQuantizer(64, num_groups=3, num_codes=4, code_dim=256)
    with pytest.raises(ValueError, match="frames of shape"):
        q(torch.randn(2, 3, 64))


def concatenated_codewords(q: GumbelVectorQuantizer, codes: torch.Tensor) -> torch.Tensor:
    """Reference lookup: for every frame, codeword ``codes[n, g]`` of group ``g``, concatenated."""
    book = q.codevectors.detach()[0]  # (G·V, D/G), group g's entries at rows g·V .. g·V + V - 1
    rows = []
    for n in range(codes.shape[0]):
        rows.append(torch.cat([book[g * q.num_codes + int(codes[n, g])] for g in range(q.num_groups)]))
    return torch.stack(rows)


def test_training_picks_the_noisy_argmax_and_is_exactly_one_hot() -> None:
    q = make()
    x = frames()
    noise = gumbel_noise((7, G, V), torch.Generator().manual_seed(3))
    out = q(x, temperature=0.7, noise=noise)
    logits = (x @ q.weight_proj.weight.detach().T + q.weight_proj.bias.detach()).view(7, G, V)
    expected = (logits + noise).argmax(dim=-1)  # argmax of softmax((l + n) / τ) = argmax of l + n
    assert torch.equal(out.codes, expected)
    # The forward value is exactly the chosen codewords (one-hot per group, no rounding residue).
    assert torch.equal(out.vectors.detach(), concatenated_codewords(q, expected))
    torch.testing.assert_close(out.logits, logits)


def test_straight_through_gradient_is_the_gumbel_softmax_gradient() -> None:
    q = make()
    x = frames().requires_grad_(True)
    noise = gumbel_noise((7, G, V), torch.Generator().manual_seed(4))
    tau = 0.9
    weights = torch.randn(7, D, generator=torch.Generator().manual_seed(5))
    (q(x, temperature=tau, noise=noise).vectors * weights).sum().backward()
    got = {"x": x.grad.clone(), "w": q.weight_proj.weight.grad.clone(), "book": q.codevectors.grad.clone()}
    assert all(float(g.abs().sum()) > 0 for g in got.values())

    # Reference: torch's own hard Gumbel-softmax formula, y_hard - y_soft.detach() + y_soft, same noise.
    ref = make()
    x2 = x.detach().clone().requires_grad_(True)
    logits = ref.weight_proj(x2).view(7, G, V)
    soft = ((logits + noise) / tau).softmax(dim=-1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), V).float()
    y = hard - soft.detach() + soft
    book = ref.codevectors.view(G, V, -1)
    vectors = torch.cat([y[:, g] @ book[g] for g in range(G)], dim=1)
    (vectors * weights).sum().backward()
    torch.testing.assert_close(got["x"], x2.grad)
    torch.testing.assert_close(got["w"], ref.weight_proj.weight.grad)
    torch.testing.assert_close(got["book"], ref.codevectors.grad)


def test_eval_takes_the_argmax_without_noise() -> None:
    q = make().eval()
    x = frames()
    a = q(x, temperature=2.0, noise=gumbel_noise((7, G, V), torch.Generator().manual_seed(1)))
    b = q(x, temperature=0.5)
    logits = (x @ q.weight_proj.weight.detach().T + q.weight_proj.bias.detach()).view(7, G, V)
    assert torch.equal(a.codes, logits.argmax(-1)) and torch.equal(a.codes, b.codes)
    assert torch.equal(a.vectors, concatenated_codewords(q, a.codes))


def test_default_noise_is_gumbel_distributed() -> None:
    g = gumbel_noise((200_000,), torch.Generator().manual_seed(0)).double()
    # Standard Gumbel: mean = Euler's gamma, variance = pi^2 / 6 (standard errors ~0.003 and ~0.01).
    assert abs(float(g.mean()) - 0.5772156649) < 0.015
    assert abs(float(g.var()) - math.pi**2 / 6) < 0.05


def test_temperature_schedule_matches_fairseq_formula() -> None:
    start, end, decay = 2.0, 0.5, 0.999995
    for step in (0, 1, 1000, 100_000, 277_000, 278_000, 400_000):
        assert gumbel_temperature(step) == max(start * decay**step, end)
    assert gumbel_temperature(0) == 2.0 and gumbel_temperature(400_000) == 0.5
    # Crossing point: the first update at which 2 · decay^k <= 0.5 is ceil(ln(1/4) / ln(decay)) = 277,258.
    k = math.ceil(math.log(0.25) / math.log(decay))
    assert gumbel_temperature(k - 1) > 0.5 and gumbel_temperature(k) == 0.5
    assert gumbel_temperature(10, start=1.0, end=0.1, decay=0.5) == max(0.5**10, 0.1)
    with pytest.raises(ValueError):
        gumbel_temperature(-1)


def reference_perplexity(probs: np.ndarray) -> float:
    """Σ_g exp(H(mean_n probs[n, g])), with scipy's entropy."""
    return float(sum(np.exp(entropy(probs[:, g].mean(axis=0))) for g in range(probs.shape[1])))


def test_perplexities_are_exp_entropy_of_the_batch_average() -> None:
    q = make()
    x = frames(50)
    out = q(x, temperature=2.0)
    logits = out.logits.detach().double().numpy()
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    assert float(out.prob_perplexity.detach()) == pytest.approx(reference_perplexity(soft), rel=1e-5)
    hard = np.eye(V)[logits.argmax(-1)]  # (N, G, V) one-hot of the noise-free argmax
    assert float(out.code_perplexity) == pytest.approx(reference_perplexity(hard), rel=1e-5)
    assert not out.code_perplexity.requires_grad and out.prob_perplexity.requires_grad
    assert G <= float(out.code_perplexity) <= G * V
