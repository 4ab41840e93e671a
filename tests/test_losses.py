import math

import pytest
import torch
import torch.nn.functional as F

from conftest import CONFIGS
from simsearch.config import load
from simsearch.losses import LOSSES, LossWrapper, build_loss, build_miner


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
    assert (len(list(loss.parameters())) > 0) == (name == "arcface")


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
