"""Label-free scores of a representation: effective rank, spectral decay, LDA rank, alignment and
uniformity, per-dimension spread.

Each is a pure function of an embedding tensor, computed in float64 on the tensor's device, and
meant for choosing checkpoints or hyper-parameters without labels:

* :func:`rankme` — Garrido et al. 2023, "RankMe: Assessing the Downstream Performance of
  Pretrained Self-Supervised Representations by Their Rank" (ICML), eq. 1;
* :func:`alpha_req` — Agrawal et al. 2022, "α-ReQ: Assessing Representation Quality in
  Self-Supervised Learning by Measuring Eigenspectrum Decay" (NeurIPS);
* :func:`lidar` — Thilak et al. 2023, "LiDAR: Sensing Linear Probing Performance in Joint
  Embedding SSL Architectures" (arXiv:2312.04000, ICLR 2024), section 3;
* :func:`alignment`, :func:`uniformity` — Wang & Isola 2020, "Understanding Contrastive
  Representation Learning through Alignment and Uniformity on the Hypersphere" (ICML), their
  reference ``lalign`` / ``lunif``;
* :func:`dimension_std` — the per-dimension std of L2-normalized embeddings that SimSiam (Chen &
  He 2021, fig. 2) tracks to detect collapse.

:func:`label_free_scores` computes every score that applies. The callers choose the rows (a few
thousand are enough; 5000 x 512 takes well under a second on a CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Garrido et al. 2023, eq. 1 (the authors' value, "suitable for float32 embeddings").
RANKME_EPS = 1e-7
# Agrawal et al. 2022 fit the tail of the spectrum; ranks 11..100 (1-based, inclusive) are the
# default of the authors' library (reptrix ``get_alpha``: 0-based ``np.arange(10, 100)``).
ALPHA_FIT_RANKS = (11, 100)
# Thilak et al. 2023: delta regularizes the within-class covariance, epsilon smooths the
# eigenvalue distribution; the values of stable-pretraining's LiDAR callback.
LIDAR_DELTA = 1e-4
LIDAR_EPS = 1e-8
# Collapse threshold on the normalized std (std * sqrt(D)); the one train/monitor.py warns at.
COLLAPSE_THRESHOLD = 0.05
DEAD_STD = 1e-4


def _check_matrix(name: str, x: Tensor) -> Tensor:
    if x.ndim != 2 or not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a (N, D) floating-point tensor, got {tuple(x.shape)} {x.dtype}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 rows and 1 column, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or infinite values; check the encoder output")
    return x.detach().to(torch.float64)


def _gram_eigenvalues(z: Tensor) -> Tensor:
    """The ``min(N, D)`` squared singular values of ``z`` ``(N, D)`` (float64), descending.

    Eigenvalues of the smaller Gram matrix (``z^T z`` or ``z z^T``): several times faster than an
    SVD of ``z`` for tall matrices. In float64 the squaring costs nothing that matters here: a
    singular value is lost only below about ``1e-8 sigma_1``, where its share of the spectrum
    is far below RankMe's ``eps`` and alpha-ReQ treats it as zero anyway.
    """
    gram = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)


def _entropy_rank(weights: Tensor, eps: float) -> float:
    """``exp(-sum p log p)`` with ``p = w / ||w||_1 + eps`` (RankMe's smoothing); 1 for all-zero ``w``."""
    total = weights.sum()
    if not total > 0:
        return 1.0  # no direction carries anything: call it (at most) one
    p = weights / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def rankme(embeddings: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023, eq. 1): the exponential of the entropy of the singular values.

    ``embeddings`` ``(N, D)``, used as they are (no centring, no normalization, as in the paper).
    With ``sigma_1..sigma_m`` the ``m = min(N, D)`` singular values, ``p_k = sigma_k / ||sigma||_1
    + eps`` and ``RankMe = exp(-sum_k p_k log p_k)``, between about 1 (one direction) and ``m``.
    Only ``m`` values exist when ``N < D``, so the score can never exceed ``N``: compare runs with
    :func:`rank_scores`' ``rankme_normalized`` (``RankMe / min(N, D)``) when ``N`` differs.
    """
    z = _check_matrix("embeddings", embeddings)
    return _entropy_rank(_gram_eigenvalues(z).sqrt(), eps)


def rank_scores(embeddings: Tensor, eps: float = RANKME_EPS) -> dict[str, float]:
    """``{"rankme": RankMe, "rankme_normalized": RankMe / min(N, D)}`` for ``embeddings`` ``(N, D)``."""
    value = rankme(embeddings, eps)
    return {"rankme": value, "rankme_normalized": value / min(embeddings.shape)}


def covariance_spectrum(embeddings: Tensor) -> Tensor:
    """Eigenvalues ``(min(N - 1, D),)``, descending, of the covariance of ``embeddings`` ``(N, D)``
    (centred on the column means, divided by ``N - 1``); clamped at 0."""
    z = _check_matrix("embeddings", embeddings)
    values = _gram_eigenvalues(z - z.mean(dim=0, keepdim=True)) / (z.shape[0] - 1)
    return values[: min(z.shape[0] - 1, z.shape[1])]


def alpha_req(
    embeddings: Tensor, fit_ranks: tuple[int, int] = ALPHA_FIT_RANKS, *, weighted: bool = True
) -> float:
    """α-ReQ (Agrawal et al. 2022): the decay exponent ``alpha`` of ``lambda_k ~ k^-alpha``.

    ``embeddings`` ``(N, D)`` are centred on their column means; ``lambda_k`` are the eigenvalues
    of their covariance in descending order (:func:`covariance_spectrum`). ``alpha`` is minus the
    slope of the least-squares line through ``(log k, log lambda_k)`` for the 1-based ranks
    ``fit_ranks = (first, last)`` inclusive — by default 11..100, the tail the authors fit (the
    leading eigenvalues follow no power law). As in the authors' code (reptrix, after Stringer &
    Pachitariu 2019) the points are weighted by ``1 / k`` when ``weighted``, so that the many
    high ranks do not dominate. The range is cut at the last non-zero eigenvalue; when fewer than
    3 ranks remain (narrow embeddings) every non-zero eigenvalue is fitted. Small ``alpha`` (about
    1 or less) is a flat, high-dimensional spectrum; large ``alpha`` a fast decay toward collapse.
    Returns NaN with fewer than 2 non-zero eigenvalues (no line to fit).
    """
    first, last = fit_ranks
    if not 1 <= first <= last:
        raise ValueError(f"fit_ranks must be (first, last) with 1 <= first <= last, got {fit_ranks!r}")
    values = covariance_spectrum(embeddings)
    # Eigenvalues at round-off level (rank-deficient features) are not part of the spectrum.
    positive = int((values > values[0] * 1e-12).sum()) if values[0] > 0 else 0
    if positive < 2:
        return float("nan")
    last = min(last, positive)
    if last - first + 1 < 3:
        first, last = 1, positive
    ranks = torch.arange(first, last + 1, dtype=torch.float64, device=values.device)
    x = ranks.log()
    y = values[first - 1 : last].log()
    w = 1.0 / ranks if weighted else torch.ones_like(ranks)
    # Weighted least squares for y = c - alpha * x, closed form.
    xm = (w * x).sum() / w.sum()
    ym = (w * y).sum() / w.sum()
    slope = (w * (x - xm) * (y - ym)).sum() / (w * (x - xm).square()).sum()
    return float(-slope)


def lidar(views: Tensor, eps: float = LIDAR_EPS, delta: float = LIDAR_DELTA) -> float:
    """LiDAR (Thilak et al. 2023, sec. 3): the effective rank of the LDA matrix of the SSL task.

    ``views`` ``(Q, V, D)``: ``Q`` source samples ("surrogate classes"), each seen through ``V``
    augmented views (the method's view policy). With ``mu_q`` the mean over the views of sample
    ``q`` and ``mu`` the mean of the ``mu_q``:

    * between-class covariance ``S_b = sum_q (mu_q - mu)(mu_q - mu)^T / (Q - 1)``,
    * within-class covariance ``S_w = sum_{q,v} (e_qv - mu_q)(e_qv - mu_q)^T / (Q (V - 1)) + delta I``,
    * ``Sigma = S_w^{-1/2} S_b S_w^{-1/2}`` with eigenvalues ``lambda_i``,
    * ``p_i = lambda_i / ||lambda||_1 + eps`` and ``LiDAR = exp(-sum_i p_i log p_i)``.

    The paper writes the covariances as expectations; the unbiased ``1 / (Q - 1)`` and
    ``1 / (Q (V - 1))`` are what stable-pretraining's callback uses (scaling ``S_b`` does not change
    ``p``; ``S_w``'s scale matters only against ``delta``). ``p`` is smoothed as in RankMe, which
    LiDAR adopts; stable-pretraining normalizes ``lambda + eps`` instead, a difference of order
    ``eps * D``. ``S_b`` has rank at most ``Q - 1``, so the score lies in about ``[1, min(Q - 1, D)]``.
    """
    if views.ndim != 3 or not torch.is_floating_point(views):
        raise ValueError(f"views must be a (Q, V, D) floating-point tensor, got {tuple(views.shape)}")
    q, v, d = views.shape
    if q < 2 or v < 2:
        raise ValueError(f"LiDAR needs at least 2 samples with at least 2 views each, got Q={q}, V={v}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0 (it makes S_w invertible), got {delta!r}")
    if not bool(torch.isfinite(views).all()):
        raise ValueError("views contain NaN or infinite values; check the encoder output")
    e = views.detach().to(torch.float64)
    class_means = e.mean(dim=1)  # (Q, D)
    between = class_means - class_means.mean(dim=0)
    s_b = between.T @ between / (q - 1)
    within = (e - class_means.unsqueeze(1)).reshape(q * v, d)
    s_w = within.T @ within / (q * (v - 1))
    s_w = s_w + delta * torch.eye(d, dtype=s_w.dtype, device=s_w.device)
    w_values, w_vectors = torch.linalg.eigh(s_w)  # S_w is symmetric positive definite
    inv_sqrt = (w_vectors * w_values.clamp_min(delta).rsqrt()) @ w_vectors.T
    sigma = inv_sqrt @ s_b @ inv_sqrt
    values = torch.linalg.eigvalsh(0.5 * (sigma + sigma.T)).clamp_min(0.0)
    return _entropy_rank(values, eps)


def _unit_rows(name: str, x: Tensor) -> Tensor:
    return F.normalize(_check_matrix(name, x), dim=1)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """Alignment (Wang & Isola 2020, ``lalign``): ``mean_i ||x_i - y_i||_2^alpha`` over positive
    pairs ``z1[i]``, ``z2[i]`` (both ``(N, D)``), after L2-normalizing the rows. 0 is perfect;
    lower is better."""
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    x, y = _unit_rows("z1", z1), _unit_rows("z2", z2)
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(z: Tensor, t: float = 2.0, chunk_size: int = 1024) -> float:
    """Uniformity (Wang & Isola 2020, ``lunif``): ``log mean_{i<j} exp(-t ||x_i - x_j||_2^2)`` over
    the distinct pairs of L2-normalized rows of ``z`` ``(N, D)``. Lower is more uniform (about
    -3.9 for t = 2 and uniform points on a high-dimensional sphere; 0 when collapsed). Computed
    ``chunk_size`` rows at a time with a log-sum-exp (memory O(chunk_size * N))."""
    x = _unit_rows("z", z)
    n = x.shape[0]
    parts = []
    for start in range(0, n, chunk_size):
        rows = x[start : start + chunk_size]
        sq = (2.0 - 2.0 * rows @ x.T).clamp_min(0.0)  # ||a - b||^2 for unit vectors
        logits = -t * sq
        idx = torch.arange(rows.shape[0], device=x.device)
        logits[idx, idx + start] = float("-inf")  # pairs (i, i) are not pairs
        parts.append(torch.logsumexp(logits.flatten(), dim=0))
    # The sum over i != j counts every distinct pair twice, as does N (N - 1).
    return float(torch.logsumexp(torch.stack(parts), dim=0) - math.log(n * (n - 1)))


def dimension_std(
    embeddings: Tensor, *, threshold: float = COLLAPSE_THRESHOLD, dead: float = DEAD_STD
) -> dict[str, float | bool]:
    """Per-dimension spread of the L2-normalized ``embeddings`` ``(N, D)`` (SimSiam's collapse check).

    Returns ``std_mean`` (mean over dimensions of the std over samples), ``std_ideal`` = ``1 /
    sqrt(D)`` (the value for points spread uniformly over the sphere), ``std_normalized`` =
    ``std_mean * sqrt(D)`` (about 1 healthy, 0 collapsed; what ``train/monitor.py`` logs as
    ``embedding_std``), ``dead_fraction`` (share of dimensions whose std is below ``dead``) and
    ``collapsed`` (``std_normalized < threshold``, the monitor's warning threshold).
    """
    z = _unit_rows("embeddings", embeddings)
    std = z.std(dim=0)
    d = z.shape[1]
    mean = float(std.mean())
    return {
        "std_mean": mean,
        "std_ideal": 1.0 / math.sqrt(d),
        "std_normalized": mean * math.sqrt(d),
        "dead_fraction": float((std < dead).double().mean()),
        "collapsed": mean * math.sqrt(d) < threshold,
    }


def label_free_scores(embeddings: Tensor, *, views: Tensor | None = None) -> dict[str, float]:
    """Every label-free score that applies, as floats (``collapsed`` is 1.0 or 0.0).

    ``embeddings`` ``(N, D)`` (clean inputs): ``rankme``, ``rankme_normalized``, ``alpha_req``,
    ``std_mean``, ``std_ideal``, ``std_normalized``, ``dead_fraction``, ``collapsed``.
    ``views`` ``(Q, V, D)`` (V >= 2 augmented views of Q samples) adds ``lidar``, ``alignment``
    (``views[:, 0]`` against ``views[:, 1]``) and ``uniformity`` (the mean of ``lunif`` over
    ``views[:, 0]`` and ``views[:, 1]``, as Wang & Isola's loss averages it).
    """
    scores: dict[str, float] = dict(rank_scores(embeddings))
    scores["alpha_req"] = alpha_req(embeddings)
    scores.update({k: float(v) for k, v in dimension_std(embeddings).items()})
    if views is not None:
        if views.ndim != 3 or views.shape[1] < 2:
            raise ValueError(f"views must be (Q, V >= 2, D), got {tuple(views.shape)}")
        if views.shape[2] != embeddings.shape[1]:
            raise ValueError(
                f"views have width {views.shape[2]} but embeddings have width {embeddings.shape[1]}"
            )
        scores["lidar"] = lidar(views)
        scores["alignment"] = alignment(views[:, 0], views[:, 1])
        scores["uniformity"] = 0.5 * (uniformity(views[:, 0]) + uniformity(views[:, 1]))
    return scores


__all__ = [
    "alignment",
    "alpha_req",
    "covariance_spectrum",
    "dimension_std",
    "label_free_scores",
    "lidar",
    "rank_scores",
    "rankme",
    "uniformity",
]
