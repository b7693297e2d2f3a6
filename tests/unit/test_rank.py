"""Label-free scores against independent references: numpy's SVD for RankMe, scipy for LiDAR,
double loops for alignment / uniformity, planted spectra for alpha-ReQ."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import scipy.linalg
import torch

from selfsup.eval.rank import (
    alignment,
    alpha_req,
    covariance_spectrum,
    dimension_std,
    label_free_scores,
    lidar,
    rank_scores,
    rankme,
    uniformity,
)


def reference_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """Garrido et al. 2023, eq. 1, with numpy's SVD."""
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / np.abs(s).sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def reference_lidar(views: np.ndarray, eps: float = 1e-8, delta: float = 1e-4) -> float:
    """Thilak et al. 2023, sec. 3, written with loops over samples and views and scipy's sqrtm."""
    q, v, d = views.shape
    views = views.astype(np.float64)
    mu_q = [views[i].mean(axis=0) for i in range(q)]
    mu = np.mean(mu_q, axis=0)
    s_b = sum(np.outer(m - mu, m - mu) for m in mu_q) / (q - 1)
    s_w = sum(np.outer(views[i, j] - mu_q[i], views[i, j] - mu_q[i]) for i in range(q) for j in range(v))
    s_w = s_w / (q * (v - 1)) + delta * np.eye(d)
    inv_sqrt = np.linalg.inv(scipy.linalg.sqrtm(s_w).real)
    lam = np.clip(scipy.linalg.eigvalsh(inv_sqrt @ s_b @ inv_sqrt), 0, None)
    p = lam / lam.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def orthonormal(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


# --- RankMe -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (64, 64)])
def test_rankme_matches_numpy_svd(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    # A decaying spectrum, so the test does not pass merely because every value is equal.
    z = rng.standard_normal(shape) * np.geomspace(1.0, 1e-3, shape[1])
    assert rankme(torch.from_numpy(z)) == pytest.approx(reference_rankme(z), rel=1e-10)
    assert rankme(torch.from_numpy(z).float()) == pytest.approx(reference_rankme(z), rel=1e-5)


def test_rankme_normalizer_is_min_n_d_when_n_below_d() -> None:
    # 64 isotropic samples in 512 dimensions: only 64 singular values exist, all of similar size.
    z = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    scores = rank_scores(z)
    assert scores["rankme"] == pytest.approx(reference_rankme(z.numpy()), rel=1e-6)
    assert 0.9 * 64 < scores["rankme"] <= 64
    # Normalized by min(N, D) = 64, not D = 512 (which would give about 0.12).
    assert scores["rankme_normalized"] == pytest.approx(scores["rankme"] / 64)
    assert scores["rankme_normalized"] > 0.9


def test_rankme_isotropic_gaussian_is_near_full_rank() -> None:
    z = torch.randn(4000, 64, generator=torch.Generator().manual_seed(1))
    assert 0.97 * 64 < rankme(z) <= 64


@pytest.mark.parametrize("k", [1, 5, 20])
def test_rankme_of_rank_k_matrix_is_k(k: int) -> None:
    rng = np.random.default_rng(k)
    # Exactly k equal singular values, the rest zero.
    z = orthonormal(500, k, rng) @ orthonormal(128, k, rng).T
    assert rankme(torch.from_numpy(z)) == pytest.approx(k, rel=1e-3)


def test_rankme_constant_embedding_is_one() -> None:
    z = torch.ones(100, 32) * torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    assert rankme(z) == pytest.approx(1.0, abs=1e-3)
    assert rankme(torch.zeros(10, 4)) == 1.0


# --- alpha-ReQ ----------------------------------------------------------------------------


def planted_spectrum(n: int, d: int, alpha: float, seed: int) -> torch.Tensor:
    """Centred embeddings whose covariance has eigenvalues exactly k^-alpha, in a random basis."""
    rng = np.random.default_rng(seed)
    u = orthonormal(n, d + 1, rng)
    u = u - u.mean(axis=0)  # columns orthogonal to the ones vector stay orthonormal up to rank d
    u = np.linalg.qr(u)[0][:, :d]
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    z = u * np.sqrt(lam * (n - 1)) @ orthonormal(d, d, rng).T
    return torch.from_numpy(z + 5.0)  # an offset, which the centring must remove


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("weighted", [True, False])
def test_alpha_req_recovers_planted_exponent(alpha: float, weighted: bool) -> None:
    z = planted_spectrum(300, 128, alpha, seed=int(alpha))
    spectrum = covariance_spectrum(z)
    assert spectrum[:5].numpy() == pytest.approx(np.arange(1, 6) ** -alpha, rel=1e-8)
    assert alpha_req(z, weighted=weighted) == pytest.approx(alpha, rel=1e-6)


def test_alpha_req_fits_only_the_requested_ranks() -> None:
    # Exponent 1 up to rank 10, exponent 3 afterwards: the default fit (ranks 11..100) sees 3.
    rng = np.random.default_rng(0)
    n, d = 300, 128
    k = np.arange(1, d + 1, dtype=np.float64)
    lam = np.where(k <= 10, k**-1.0, 10.0**-1.0 * (k / 10) ** -3.0)
    u = np.linalg.qr(orthonormal(n, d, rng) - orthonormal(n, d, rng).mean(axis=0))[0]
    z = torch.from_numpy(u * np.sqrt(lam * (n - 1)))
    assert alpha_req(z) == pytest.approx(3.0, rel=0.05)
    assert alpha_req(z, fit_ranks=(1, 10)) == pytest.approx(1.0, rel=0.05)


def test_alpha_req_sampled_gaussian_within_5_percent() -> None:
    # Samples (not an exact construction) from a covariance with spectrum k^-1.
    g = torch.Generator().manual_seed(0)
    d = 128
    z = torch.randn(20000, d, generator=g, dtype=torch.float64) * torch.arange(1, d + 1) ** -0.5
    assert alpha_req(z) == pytest.approx(1.0, rel=0.05)


def test_alpha_req_narrow_and_degenerate() -> None:
    z = planted_spectrum(200, 8, 1.5, seed=3)  # fewer than 11 ranks: every eigenvalue is fitted
    assert alpha_req(z) == pytest.approx(1.5, rel=1e-6)
    assert math.isnan(alpha_req(torch.ones(50, 16)))
    with pytest.raises(ValueError, match="fit_ranks"):
        alpha_req(z, fit_ranks=(0, 5))


# --- LiDAR --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 4, 8), (12, 3, 20)])
def test_lidar_matches_scipy_reference(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    q, v, d = shape
    centres = rng.standard_normal((q, 1, d)) * np.geomspace(3.0, 0.1, d)
    views = centres + 0.3 * rng.standard_normal((q, v, d))
    assert lidar(torch.from_numpy(views)) == pytest.approx(reference_lidar(views), rel=1e-8)
    assert lidar(torch.from_numpy(views), eps=1e-6, delta=1e-2) == pytest.approx(
        reference_lidar(views, eps=1e-6, delta=1e-2), rel=1e-8
    )


def test_lidar_separated_classes_beat_collapsed_views() -> None:
    g = torch.Generator().manual_seed(0)
    q, v, d = 200, 4, 32
    separated = torch.randn(q, 1, d, generator=g) + 0.1 * torch.randn(q, v, d, generator=g)
    # Collapsed: every sample lands on a 2-D subspace, whatever the augmentation.
    basis = torch.randn(2, d, generator=g)
    collapsed = (torch.randn(q, 1, 2, generator=g) + 0.1 * torch.randn(q, v, 2, generator=g)) @ basis
    high, low = lidar(separated), lidar(collapsed)
    assert high > 0.8 * d
    assert low < 2.5
    # The rank of S_b bounds the score: with Q = 5 samples at most Q - 1 = 4 directions.
    assert lidar(separated[:5]) < 4.0 + 1e-3


def test_lidar_rejects_single_view() -> None:
    with pytest.raises(ValueError, match="2 views"):
        lidar(torch.randn(10, 1, 4))


# --- alignment and uniformity -------------------------------------------------------------


def test_alignment_and_uniformity_match_double_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 6))
    y = x + 0.3 * rng.standard_normal((37, 6))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    for a in (2.0, 1.0):
        expected = np.mean([np.linalg.norm(xn[i] - yn[i]) ** a for i in range(len(x))])
        assert alignment(torch.from_numpy(x), torch.from_numpy(y), alpha=a) == pytest.approx(expected)
    for t in (2.0, 0.5):
        pairs = [np.exp(-t * np.sum((xn[i] - xn[j]) ** 2)) for i, j in itertools.combinations(range(37), 2)]
        expected = np.log(np.mean(pairs))
        for chunk in (1000, 5):  # the chunked log-sum-exp gives the same value
            assert uniformity(torch.from_numpy(x), t=t, chunk_size=chunk) == pytest.approx(expected)


def test_uniformity_of_collapsed_and_spread_points() -> None:
    assert uniformity(torch.ones(20, 8)) == pytest.approx(0.0, abs=1e-12)
    spread = torch.randn(2000, 256, generator=torch.Generator().manual_seed(0))
    assert uniformity(spread) == pytest.approx(-4.0, abs=0.05)  # -2t for near-orthogonal pairs, t = 2


# --- per-dimension std and the combined scores --------------------------------------------


def test_dimension_std_detects_collapse() -> None:
    healthy = dimension_std(torch.randn(3000, 64, generator=torch.Generator().manual_seed(0)))
    assert healthy["std_mean"] == pytest.approx(1 / 8, rel=0.02)
    assert healthy["std_ideal"] == pytest.approx(1 / 8)
    assert healthy["std_normalized"] == pytest.approx(1.0, rel=0.02)
    assert healthy["dead_fraction"] == 0.0
    assert healthy["collapsed"] is False
    constant = dimension_std(torch.full((100, 64), 3.0))
    assert constant["std_mean"] == pytest.approx(0.0, abs=1e-12)
    assert constant["dead_fraction"] == 1.0
    assert constant["collapsed"] is True
    # Half the dimensions never vary: dead, though the rest keep the embedding alive.
    z = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    z[:, 8:] = 0.0
    half = dimension_std(z)
    assert half["dead_fraction"] == 0.5
    assert half["collapsed"] is False


def test_label_free_scores_keys_and_consistency() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 24, generator=g)
    views = z[:100, None] + 0.2 * torch.randn(100, 3, 24, generator=g)
    plain = label_free_scores(z)
    assert set(plain) == {
        "rankme",
        "rankme_normalized",
        "alpha_req",
        "std_mean",
        "std_ideal",
        "std_normalized",
        "dead_fraction",
        "collapsed",
    }
    assert all(isinstance(v, float) for v in plain.values())
    assert plain["rankme"] == pytest.approx(reference_rankme(z.numpy()), rel=1e-6)
    full = label_free_scores(z, views=views)
    assert full["lidar"] == pytest.approx(reference_lidar(views.numpy()), rel=1e-6)
    assert full["alignment"] == pytest.approx(alignment(views[:, 0], views[:, 1]))
    assert full["uniformity"] == pytest.approx(0.5 * (uniformity(views[:, 0]) + uniformity(views[:, 1])))
    collapsed = label_free_scores(torch.ones(50, 24))
    assert collapsed["collapsed"] == 1.0
    assert collapsed["rankme"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="width"):
        label_free_scores(z, views=views[:, :, :10])


def test_label_free_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rankme(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        rankme(torch.randn(5))


def test_label_free_scores_fast_for_5000_by_512() -> None:
    z = torch.randn(5000, 512, generator=torch.Generator().manual_seed(0))
    label_free_scores(z[:600])  # warm up LAPACK / BLAS
    # CPU time of one thread: an upper bound on the wall time of an idle machine, and unaffected
    # by other jobs competing for the cores (which can slow wall time tenfold on a shared runner).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = math.inf
        for _ in range(2):
            start = time.thread_time()
            label_free_scores(z)
            best = min(best, time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    assert best < 1.0
