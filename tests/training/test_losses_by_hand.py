"""Triplet, MultiSimilarity and ArcFace, as the project builds them, recomputed by hand on tiny cases.

Each test builds the loss the trainer would use (``build_loss_wrapper`` on the default config with
``loss.name=...``, at epoch 0, where the default ``train.miner_start_epoch=5`` leaves the miner off),
feeds it a few hand-placed embeddings and compares with a plain-torch/math reference in float64
(the wrapper casts to float32, hence the tolerances). Circle loss is hand-checked in tests/training/test_losses.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from simsearch.config import load
from simsearch.training.losses import LossWrapper, build_loss_wrapper

RTOL, ATOL = 1e-4, 1e-5


def _wrapper_at_epoch_0(name: str, num_classes: int, embed_dim: int) -> LossWrapper:
    """The project's loss for ``loss.name=name`` at the first epoch, with nothing but the bare loss active."""
    cfg = load(overrides=[f"loss.name={name}"])
    wrapper = build_loss_wrapper(cfg, num_classes, embed_dim)
    wrapper.set_epoch(0)
    assert not wrapper.miner_active and wrapper.xbm is None and not wrapper.pairs
    return wrapper


def _on_circle(degrees: list[float], radii: list[float]) -> torch.Tensor:
    """2-D points at the given angles and norms (norms other than 1 check that the losses normalise)."""
    return torch.tensor([[r * math.cos(math.radians(d)), r * math.sin(math.radians(d))]
                         for d, r in zip(degrees, radii)], dtype=torch.float32)


def _cosine(emb: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity matrix of the rows, in float64."""
    unit = F.normalize(emb.double(), dim=1)
    return unit @ unit.T


def _close(value: torch.Tensor, reference: torch.Tensor) -> bool:
    return torch.allclose(value.double(), reference.double(), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- triplet


def _triplet_terms(emb: torch.Tensor, labels: list[int], margin: float) -> list[float]:
    """relu(S_an - S_ap + margin) for every triplet (a, p != a same class, n other class), cosine S."""
    sim = _cosine(emb)
    idx = range(len(labels))
    return [max(0.0, float(sim[a, n] - sim[a, p]) + margin)
            for a in idx for p in idx for n in idx
            if p != a and labels[p] == labels[a] and labels[n] != labels[a]]


def _triplet_by_hand(emb: torch.Tensor, labels: list[int], margin: float) -> torch.Tensor:
    """Mean over the non-zero triplet terms (PML's AvgNonZeroReducer); 0 if every triplet is satisfied."""
    active = [t for t in _triplet_terms(emb, labels, margin) if t > 0]
    return torch.tensor(sum(active) / len(active) if active else 0.0, dtype=torch.float64)


def test_triplet_matches_hand_computation() -> None:
    """Default triplet: cosine similarity, margin 0.1, all triplets, mean over the active ones."""
    labels = [0, 0, 1, 1]
    emb = _on_circle([0.0, 60.0, 90.0, 200.0], [1.0, 2.0, 0.5, 1.0])
    wrapper = _wrapper_at_epoch_0("triplet", 2, 2)
    margin = wrapper.loss.margin
    assert margin == 0.1
    terms = _triplet_terms(emb, labels, margin)
    n_active = sum(t > 0 for t in terms)
    assert len(terms) == 8 and 0 < n_active < len(terms)  # 3 of the 8 triplets violate the margin
    value = wrapper(emb, torch.tensor(labels))
    reference = _triplet_by_hand(emb, labels, margin)
    assert _close(value, reference), (value.item(), reference.item())
    # not degenerate: positive, the zero triplets are left out of the mean, and an embedding matters
    assert value.item() > 0.1
    assert not math.isclose(value.item(), sum(terms) / len(terms), rel_tol=1e-2)
    moved = emb.clone()
    moved[2] = torch.tensor([math.cos(math.radians(100.0)), math.sin(math.radians(100.0))])
    moved_value = wrapper(moved, torch.tensor(labels))
    assert _close(moved_value, _triplet_by_hand(moved, labels, margin))
    assert abs(moved_value.item() - value.item()) > 1e-3


def test_triplet_is_zero_when_every_margin_holds() -> None:
    """Classes 180 degrees apart, positives close: no triplet is active and the loss is exactly 0."""
    labels = [0, 0, 1, 1]
    emb = _on_circle([0.0, 10.0, 180.0, 190.0], [1.0, 1.0, 1.0, 1.0])
    assert all(t == 0 for t in _triplet_terms(emb, labels, 0.1))
    assert _wrapper_at_epoch_0("triplet", 2, 2)(emb, torch.tensor(labels)).item() == 0.0


# --------------------------------------------------------------------------- multi-similarity


def _multi_similarity_terms(emb: torch.Tensor, labels: list[int], alpha: float, beta: float,
                            base: float) -> tuple[list[float], list[float]]:
    """Per anchor: 1/a log(1 + sum_p exp(-a (S_ap - base))) and 1/b log(1 + sum_n exp(b (S_an - base))).

    a = alpha, b = beta; a sum over no pairs gives log 1 = 0 (PML masks such anchors to 0).
    """
    sim = _cosine(emb).tolist()
    pos_terms, neg_terms = [], []
    for a in range(len(labels)):
        pos = [sim[a][p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [sim[a][n] for n in range(len(labels)) if labels[n] != labels[a]]
        pos_terms.append(math.log1p(sum(math.exp(-alpha * (s - base)) for s in pos)) / alpha)
        neg_terms.append(math.log1p(sum(math.exp(beta * (s - base)) for s in neg)) / beta)
    return pos_terms, neg_terms


def _multi_similarity_by_hand(emb: torch.Tensor, labels: list[int], alpha: float, beta: float,
                              base: float) -> torch.Tensor:
    """Mean over all anchors of the positive plus the negative term (PML's MeanReducer)."""
    pos_terms, neg_terms = _multi_similarity_terms(emb, labels, alpha, beta, base)
    return torch.tensor((sum(pos_terms) + sum(neg_terms)) / len(labels), dtype=torch.float64)


def test_multi_similarity_matches_hand_computation() -> None:
    """Default multi-similarity: alpha 2, beta 50, base 0.5 on cosine similarity, mean over the 4 anchors."""
    labels = [0, 0, 1, 1]
    emb = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.7, 0.3], [-0.2, 0.1, 2.0]])
    wrapper = _wrapper_at_epoch_0("multi_similarity", 2, 3)
    alpha, beta, base = wrapper.loss.alpha, wrapper.loss.beta, wrapper.loss.base
    assert (alpha, beta, base) == (2.0, 50.0, 0.5)
    sim = _cosine(emb)
    assert sim[1, 2] > base  # a hard negative, so the beta term is far from 0
    value = wrapper(emb, torch.tensor(labels))
    reference = _multi_similarity_by_hand(emb, labels, alpha, beta, base)
    assert _close(value, reference), (value.item(), reference.item())
    # not degenerate: both terms contribute, and an embedding matters
    pos_terms, neg_terms = _multi_similarity_terms(emb, labels, alpha, beta, base)
    assert sum(pos_terms) / 4 > 1e-2 and sum(neg_terms) / 4 > 1e-2
    moved = emb.clone()
    moved[2] = torch.tensor([0.0, 0.0, 1.0])
    moved_value = wrapper(moved, torch.tensor(labels))
    assert _close(moved_value, _multi_similarity_by_hand(moved, labels, alpha, beta, base))
    assert abs(moved_value.item() - value.item()) > 1e-3


def test_multi_similarity_anchor_without_positive_still_counts_in_the_mean() -> None:
    """Labels 0, 0, 0, 1: the lone sample has no positive (pos term 0) but its negative term is averaged in."""
    labels = [0, 0, 0, 1]
    emb = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.7, 0.3], [0.5, 0.5, 0.6]])
    wrapper = _wrapper_at_epoch_0("multi_similarity", 2, 3)
    value = wrapper(emb, torch.tensor(labels))
    reference = _multi_similarity_by_hand(emb, labels, 2.0, 50.0, 0.5)
    assert _close(value, reference), (value.item(), reference.item())
    pos_terms, neg_terms = _multi_similarity_terms(emb, labels, 2.0, 50.0, 0.5)
    assert pos_terms[3] == 0.0 and neg_terms[3] > 1e-2


# --------------------------------------------------------------------------- arcface


def _arcface_by_hand(emb: torch.Tensor, labels: list[int], weight: torch.Tensor, margin_deg: float,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of scale * cos(theta_j), the target class's logit replaced by cos(theta_y + m).

    ``weight`` is (embed_dim, num_classes), one class centre per column, as PML stores it. Past
    theta_y > pi - m the target logit is cos(theta_y) - m sin(m) (PML keeps the logit monotone there).
    Returns the loss and the target angles theta_y.
    """
    m = math.radians(margin_deg)
    cos = F.normalize(emb.double(), dim=1) @ F.normalize(weight.detach().double(), dim=0)
    rows = torch.arange(len(labels))
    target = torch.tensor(labels)
    theta = torch.acos(cos[rows, target].clamp(-1.0, 1.0))
    with_margin = torch.where(theta <= math.pi - m, torch.cos(theta + m), torch.cos(theta) - m * math.sin(m))
    logits = cos.clone()
    logits[rows, target] = with_margin
    logits = scale * logits
    per_sample = torch.logsumexp(logits, dim=1) - logits[rows, target]
    return per_sample.mean(), theta


def test_arcface_matches_hand_computation() -> None:
    """Default ArcFace: margin 28.6 degrees, scale 64, learnable centres W (3 x 3) read from the loss."""
    labels = [0, 1, 2, 1]
    wrapper = _wrapper_at_epoch_0("arcface", 3, 3)
    loss = wrapper.loss
    assert math.isclose(loss.margin, math.radians(28.6)) and loss.scale == 64.0
    torch.manual_seed(0)
    with torch.no_grad():
        loss.W.copy_(torch.randn(3, 3))
    centres = F.normalize(loss.W.detach(), dim=0)
    # near its own centre, between centres, and one sample almost opposite its centre (the fallback branch)
    emb = torch.stack([centres[:, 0] + 0.3 * centres[:, 1], 2.0 * centres[:, 1] + centres[:, 2],
                       centres[:, 2] - 0.5 * centres[:, 0], -centres[:, 1] + 0.05 * centres[:, 0]]).float()
    value = wrapper(emb, torch.tensor(labels))
    reference, theta = _arcface_by_hand(emb, labels, loss.W, 28.6, 64.0)
    m = math.radians(28.6)
    assert (theta <= math.pi - m).sum() == 3 and (theta > math.pi - m).sum() == 1  # both branches used
    assert _close(value, reference), (value.item(), reference.item())
    # not degenerate: the margin matters, W matters, and an embedding matters
    assert value.item() > 1.0
    no_margin, _ = _arcface_by_hand(emb, labels, loss.W, 0.0, 64.0)
    assert reference.item() - no_margin.item() > 1.0
    value.backward()
    assert loss.W.grad is not None and loss.W.grad.abs().sum() > 0
    moved = emb.clone()
    moved[3] = centres[:, 1]
    moved_value = wrapper(moved, torch.tensor(labels))
    assert _close(moved_value, _arcface_by_hand(moved, labels, loss.W, 28.6, 64.0)[0])
    assert abs(moved_value.item() - value.item()) > 1.0
