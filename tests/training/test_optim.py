import math

import pytest
import torch

from conftest import CONFIGS
from simsearch.config import load
from simsearch.models import build_model
from simsearch.training.losses import LossWrapper, build_loss
from simsearch.training.optim import (
    build_optimizer,
    build_scheduler,
    param_groups_llrd,
    warmup_cosine_factor,
)


def _groups_by_name(model, loss, lr, decay, wd):
    opt = build_optimizer(model, loss, lr, decay, wd)
    names = {id(p): n for n, p in list(model.named_parameters()) +
             [(f"loss.{n}", p) for n, p in loss.named_parameters()]}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_llrd_learning_rates_match_hand_computation():
    cfg = load([CONFIGS / "tiny_test.yaml"], ["loss.name=arcface"])
    model = build_model(cfg)  # 2 ViT blocks -> layers: embed 0, blocks 1..2, top 3
    loss = LossWrapper(build_loss(cfg, num_classes=5, embed_dim=16))
    lr, d = 1.0, 0.5
    g = _groups_by_name(model, loss, lr, d, 0.05)
    # block i (0-based) of a depth-2 ViT gets lr * d^(2 - i); embeddings d^3; the rest the base LR
    assert g["backbone.visual.transformer.resblocks.0.attn.in_proj_weight"] == (lr * d ** 2, 0.05)
    assert g["backbone.visual.transformer.resblocks.1.attn.in_proj_weight"] == (lr * d ** 1, 0.05)
    assert g["backbone.visual.conv1.weight"] == (lr * d ** 3, 0.05)
    assert g["backbone.visual.positional_embedding"][0] == lr * d ** 3
    assert g["head.fc.weight"] == (lr, 0.05)
    assert g["loss.loss.W"] == (lr, 0.05)                      # ArcFace centres: base LR, decayed
    # norms, biases and GeM p: no weight decay
    assert g["pool.p"] == (lr, 0.0)
    assert g["head.fc.bias"] == (lr, 0.0)
    assert g["backbone.visual.transformer.resblocks.0.ln_1.weight"] == (lr * d ** 2, 0.0)


def test_llrd_cnn_decays_by_stage():
    from simsearch.models import EmbeddingModel, create_backbone

    model = EmbeddingModel(create_backbone("timm:resnet18", None), embed_dim=8)
    n = model.backbone.num_layers  # stem 0, layer1..layer4 -> 1..4, head 5
    assert n == 4
    groups = param_groups_llrd(model.named_parameters(), model.layer_id, n, 1.0, 0.5, 0.1)
    by_name = {name: g["lr"] for g in groups for name in g["names"]}
    assert by_name["backbone.model.conv1.weight"] == 0.5 ** 5
    assert by_name["backbone.model.layer1.0.conv1.weight"] == 0.5 ** 4
    assert by_name["backbone.model.layer4.0.conv1.weight"] == 0.5 ** 1
    assert by_name["head.fc.weight"] == 1.0


def test_warmup_cosine_values_at_chosen_steps():
    total, warm, floor = 100, 15, 0.01
    f = [warmup_cosine_factor(s, total, warm, floor) for s in range(total + 1)]
    assert f[0] == pytest.approx(1 / 15)
    assert f[14] == pytest.approx(1.0)
    assert f[15] == pytest.approx(1.0)
    mid = 15 + 85 / 2
    assert warmup_cosine_factor(int(mid), total, warm, floor) == pytest.approx(
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (int(mid) - 15) / 85)))
    assert f[100] == pytest.approx(floor)
    assert all(a >= b for a, b in zip(f[15:], f[16:]))  # monotone decay after warm-up


def test_scheduler_scales_each_llrd_group():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.25}])
    sched = build_scheduler(opt, total_steps=10, warmup_frac=0.2, base_lr=1.0, min_lr=0.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.125])  # step 0 of 2 warm-up
    for _ in range(10):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0], abs=1e-9)
