import math

import pytest
import torch
import torch.nn.functional as F

from conftest import CONFIGS
from simsearch.config import ConfigError, load
from simsearch.training.losses import (
    CLASSIFIER_LOSSES,
    LOSSES,
    LossWrapper,
    build_loss,
    build_loss_wrapper,
    build_miner,
    check_loss_config,
    position_pairs,
)


def _circle_by_hand(emb, labels, m=0.4, gamma=80.0):
    """Sun et al. 2020, eq. 4 with the optima O_p = 1 + m, O_n = -m and margins 1 - m, m."""
    sim = emb @ emb.T
    total, count = 0.0, 0
    for i in range(len(labels)):
        pos = [sim[i, j] for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [sim[i, j] for j in range(len(labels)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        lp = sum(math.exp(-gamma * max(0.0, 1 + m - s) * (s - (1 - m))) for s in map(float, pos))
        ln = sum(math.exp(gamma * max(0.0, s + m) * (s - m)) for s in map(float, neg))
        total += math.log1p(lp * ln)
        count += 1
    return total / count


def test_circle_loss_matches_hand_computation():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(6, 4), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    cfg = load([CONFIGS / "tiny_test.yaml"])
    loss = LossWrapper(build_loss(cfg, 3, 4))
    assert loss(emb, labels).item() == pytest.approx(_circle_by_hand(emb, labels), rel=1e-4)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_builds_and_backpropagates(name):
    cfg = load([CONFIGS / "tiny_test.yaml"], [f"loss.name={name}"])
    loss = LossWrapper(build_loss(cfg, 3, 8), build_miner(cfg), miner_start_epoch=1)
    emb = F.normalize(torch.randn(6, 8, requires_grad=True), dim=1)
    value = loss(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    value.backward()
    assert torch.isfinite(value)
    assert (len(list(loss.parameters())) > 0) == (name in CLASSIFIER_LOSSES)


def test_miner_switches_on_at_start_epoch():
    cfg = load([CONFIGS / "tiny_test.yaml"], ["train.miner_start_epoch=5"])
    wrapper = LossWrapper(build_loss(cfg, 3, 8), build_miner(cfg), 5)
    wrapper.set_epoch(4)
    assert not wrapper.miner_active
    wrapper.set_epoch(5)
    assert wrapper.miner_active
    calls = []
    orig = wrapper.miner.forward
    wrapper.miner.forward = lambda *a, **k: calls.append(1) or orig(*a, **k)
    wrapper(F.normalize(torch.randn(6, 8), dim=1), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert calls


def test_unknown_loss_name():
    cfg = load([], ["loss.name=magic"])
    with pytest.raises(ValueError, match="loss.name: unknown loss 'magic'"):
        build_loss(cfg, 3, 8)


# --------------------------------------------------------------------------- pairs

# Pairs at positions (0, 1), (2, 3), (4, 5): positive, negative, positive.
PAIR_LABELS = torch.tensor([3, 3, 1, 2, 5, 5])


def _pair_embeddings() -> torch.Tensor:
    torch.manual_seed(3)
    emb = F.normalize(torch.randn(6, 5), dim=1)
    emb[3] = F.normalize(emb[2] + 0.3 * emb[3], dim=0)  # a hard negative: cosine well above 0
    return emb


def _cos(emb, i, j) -> float:
    return float(emb[i] @ emb[j])


def test_cosine_embedding_over_the_sampled_pairs_matches_hand_computation():
    emb = _pair_embeddings()
    cfg = load([CONFIGS / "tiny_test.yaml"], ["loss.name=cosine_embedding", "loss.cosine_margin=0.2"])
    assert _cos(emb, 2, 3) > 0.2  # the negative term is not clipped to zero
    # nn.CosineEmbeddingLoss: 1 - cos for a positive pair, max(0, cos - margin) for a negative
    by_hand = (1 - _cos(emb, 0, 1) + max(0.0, _cos(emb, 2, 3) - 0.2) + 1 - _cos(emb, 4, 5)) / 3
    loss = LossWrapper(build_loss(cfg, 6, 5), pairs=True)
    assert loss(emb, PAIR_LABELS).item() == pytest.approx(by_hand, rel=1e-5)


def test_cosine_embedding_without_pairs_uses_every_pair_of_the_batch():
    emb = _pair_embeddings()
    cfg = load([CONFIGS / "tiny_test.yaml"], ["loss.name=cosine_embedding", "loss.cosine_margin=0.1"])
    terms = [1 - _cos(emb, i, j) if PAIR_LABELS[i] == PAIR_LABELS[j] else max(0.0, _cos(emb, i, j) - 0.1)
             for i in range(6) for j in range(6) if i != j]
    loss = LossWrapper(build_loss(cfg, 6, 5))
    assert loss(emb, PAIR_LABELS).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_contrastive_over_the_sampled_pairs_matches_hand_computation():
    """PML's contrastive loss on the given pairs only: mean non-zero positive + negative terms."""
    emb = _pair_embeddings()
    cfg = load([CONFIGS / "tiny_test.yaml"], ["loss.name=contrastive"])  # pos margin 1, neg margin 0
    pos = [max(0.0, 1 - _cos(emb, 0, 1)), max(0.0, 1 - _cos(emb, 4, 5))]
    neg = [max(0.0, _cos(emb, 2, 3))]
    by_hand = sum(pos) / len([x for x in pos if x > 0]) + sum(neg) / len([x for x in neg if x > 0])
    loss = LossWrapper(build_loss(cfg, 6, 5), pairs=True)
    assert loss(emb, PAIR_LABELS).item() == pytest.approx(by_hand, rel=1e-5)
    # the same embeddings without the pair structure (all 30 ordered pairs) give another value
    assert LossWrapper(build_loss(cfg, 6, 5))(emb, PAIR_LABELS).item() != pytest.approx(by_hand, rel=1e-3)


def test_position_pairs():
    a1, p, a2, n = position_pairs(PAIR_LABELS)
    assert a1.tolist() == [0, 4] and p.tolist() == [1, 5] and a2.tolist() == [2] and n.tolist() == [3]
    with pytest.raises(ValueError, match="even number"):
        position_pairs(torch.tensor([0, 0, 1]))


# --------------------------------------------------------------------------- classifier


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_hand_computation(smoothing):
    torch.manual_seed(4)
    labels = torch.tensor([0, 2, 1, 2, 3])
    cfg = load([CONFIGS / "tiny_test.yaml"], ["loss.name=cross_entropy", "loss.miner=null",
                                              f"loss.ce_label_smoothing={smoothing}"])
    wrapper = build_loss_wrapper(cfg, 4, cfg.model.embed_dim)
    assert wrapper.miner is None
    fc = wrapper.loss.classifier
    assert fc.weight.shape == (4, cfg.model.embed_dim)
    emb = F.normalize(torch.randn(5, cfg.model.embed_dim), dim=1)
    logits = emb @ fc.weight.T + fc.bias
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # smoothed target: 1 - eps on the label plus eps / C on every class
    by_hand = -((1 - smoothing) * log_p[torch.arange(5), labels] + smoothing * log_p.mean(dim=1)).mean()
    value = wrapper(emb, labels)
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
    expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert fc.weight.grad is not None and fc.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("overrides,message", [
    (["data.sampler=pairs", "loss.name=arcface", "loss.miner=null"],
     "loss.name=arcface does not learn from pairs; data.sampler=pairs works with loss.name contrastive or "
     "cosine_embedding"),
    (["data.sampler=pairs", "loss.name=cross_entropy", "loss.miner=null"], "loss.name=cross_entropy does not"),
    (["data.sampler=pairs", "loss.name=contrastive"], "loss.miner=multi_similarity would replace"),
    (["loss.name=cross_entropy", "loss.ce_label_smoothing=1.0"], "loss.ce_label_smoothing must be in"),
    (["loss.name=magic"], "loss.name: unknown loss 'magic'"),
])
def test_incompatible_settings_fail_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_loss_config(load([CONFIGS / "tiny_test.yaml"], overrides))


def test_compatible_settings_pass():
    for overrides in (["data.sampler=pairs", "loss.name=cosine_embedding", "loss.miner=null"],
                      ["data.sampler=pairs", "loss.name=contrastive", "loss.miner=null"],
                      ["loss.name=cross_entropy"], ["loss.name=arcface"], []):
        check_loss_config(load([CONFIGS / "tiny_test.yaml"], overrides))


def test_labels_missing_from_the_manifest_fail_naming_the_keys(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("path,domain\na.jpg,query\n")
    cfg = load([CONFIGS / "tiny_test.yaml"], ["loss.name=cross_entropy", f"data.train_csv={csv}"])
    with pytest.raises(ConfigError, match=f"loss.name=cross_entropy needs class labels, but "
                                          f"data.train_csv={csv} has no 'label' column"):
        check_loss_config(cfg)


def test_classifier_with_a_single_class_fails():
    cfg = load([CONFIGS / "tiny_test.yaml"], ["loss.name=arcface"])
    with pytest.raises(ConfigError, match="loss.name=arcface classifies the training classes"):
        build_loss_wrapper(cfg, 1, 8)


def test_pair_mode_follows_the_sampler():
    cfg = load([CONFIGS / "tiny_test.yaml"], ["data.sampler=pairs", "loss.name=cosine_embedding",
                                              "loss.miner=null"])
    assert build_loss_wrapper(cfg, 3, 8).pairs
    assert not build_loss_wrapper(load([CONFIGS / "tiny_test.yaml"]), 3, 8).pairs
