"""LoRA on the tiny random-init OpenCLIP ViT (and a timm test ViT): only q/v move, merge is exact."""
import copy
import json
import shutil

import peft  # noqa: F401  (the `lora` extra: a missing one fails the file, it is not skipped)
import pytest
import torch
import torch.nn as nn

from conftest import CONFIGS, kill_and_resume, make_class_folder, metrics_rows
from simsearch.config import load
from simsearch.models import build_model
from simsearch.models.lora import SplitAttention, SplitQKV, merge_lora
from simsearch.models.model import count_parameters

TINY = CONFIGS / "tiny_test.yaml"
LORA = CONFIGS / "lora_clip.yaml"
D = 64  # ViT-Tiny-Test width


def _model(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load([TINY], ["model.lora.enabled=true", *overrides]))


def _blocks(model):
    return model.backbone.visual.transformer.resblocks


def _train_steps(model, steps: int = 3) -> None:
    """A few AdamW steps of a loss that pulls images 0/1 together and pushes 0/2 apart."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        e = model(x)
        loss = -(e[0] * e[1]).sum() + (e[0] * e[2]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "causal_float", "bool", "per_head", "key_padding"])
def test_split_attention_equals_multihead_attention(batch_first, mask):
    torch.manual_seed(0)
    b, n, d, h = 3, 7, 32, 4
    mha = nn.MultiheadAttention(d, h, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()  # zero by default: make the bias slicing count
    split = SplitAttention(mha).eval()
    x = torch.randn(b, n, d) if batch_first else torch.randn(n, b, d)
    kw = {}
    if mask == "causal_float":  # what open_clip's text tower passes (additive, -inf above the diagonal)
        kw["attn_mask"] = torch.full((n, n), float("-inf")).triu(1)
    elif mask == "bool":
        kw["attn_mask"] = torch.rand(n, n) > 0.7
        kw["attn_mask"].fill_diagonal_(False)
    elif mask == "per_head":
        kw["attn_mask"] = torch.randn(b * h, n, n)
    elif mask == "key_padding":
        kw["key_padding_mask"] = torch.zeros(b, n, dtype=torch.bool)
        kw["key_padding_mask"][:, -2:] = True
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False, **kw)[0]
        got = split(x, x, x, need_weights=False, **kw)[0]
        refused = split.to_multihead().eval()(x, x, x, need_weights=False, **kw)[0]
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.equal(refused, want)


def test_split_qkv_equals_the_fused_linear():
    torch.manual_seed(0)
    qkv = nn.Linear(16, 48)
    split = SplitQKV(qkv)
    x = torch.randn(2, 5, 16)
    assert torch.allclose(split(x), qkv(x), atol=1e-6)
    fused = split.to_linear()
    assert torch.equal(fused.weight, qkv.weight) and torch.equal(fused.bias, qkv.bias)


def test_open_clip_tower_with_split_attention_gives_the_same_features():
    torch.manual_seed(0)
    plain = build_model(load([TINY])).eval()
    adapted = _model().eval()  # same seed: same backbone weights; LoRA B = 0 at start
    assert isinstance(_blocks(adapted)[0].attn, SplitAttention)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = plain.backbone.forward_features(x)
        assert torch.allclose(adapted.backbone.forward_features(x), want, atol=1e-5)


@pytest.mark.parametrize("blocks,targeted", [("[1]", [1]), ("null", [0, 1])])
def test_training_changes_only_the_q_and_v_slices_of_targeted_blocks(blocks, targeted):
    torch.manual_seed(0)
    plain = build_model(load([TINY])).state_dict()
    model = _model(f"model.lora.blocks={blocks}")
    before = merge_lora(copy.deepcopy(model)).state_dict()  # untrained adapters (B = 0) merge to the original
    assert all(torch.equal(before[k], v) for k, v in plain.items() if k.startswith("backbone."))
    for i, block in enumerate(_blocks(model)):  # untargeted blocks keep open_clip's own attention
        assert isinstance(block.attn, SplitAttention if i in targeted else nn.MultiheadAttention)
    _train_steps(model)
    merged = merge_lora(copy.deepcopy(model)).state_dict()
    assert set(merged) == set(before)  # a plain open_clip model again
    for i in targeted:
        key = f"backbone.visual.transformer.resblocks.{i}.attn.in_proj_weight"
        w0, w1 = before[key], merged[key]
        assert not torch.equal(w1[:D], w0[:D])                  # q moved
        assert torch.equal(w1[D:2 * D], w0[D:2 * D])            # k bit-identical
        assert not torch.equal(w1[2 * D:], w0[2 * D:])          # v moved
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    assert changed == {f"backbone.visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in targeted} | {
        "pool.p", "head.fc.weight", "head.fc.bias", "head.bn.weight", "head.bn.bias",
        "head.bn.running_mean", "head.bn.running_var", "head.bn.num_batches_tracked"}


def test_merged_model_gives_the_unmerged_embeddings():
    model = _model("model.lora.dropout=0.1")
    _train_steps(model)
    model.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        merged = merge_lora(model)
        got = merged(x)
    assert not any("lora" in k for k in merged.state_dict())
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in _blocks(merged))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_trainable_parameter_count_matches_hand_computation():
    torch.manual_seed(0)
    base_total = count_parameters(build_model(load([TINY])))[1]
    r, embed = 4, 16
    trainable, total = count_parameters(_model(f"model.lora.rank={r}"))
    adapters = r * (D + D) * 2 * 2          # rank * (d_in + d_out), q and v, 2 blocks
    head = D * embed + embed + 2 * embed    # Linear weight + bias, BatchNorm weight + bias
    assert trainable == adapters + head + 1  # + GeM p
    assert total == base_total + adapters
    trainable, _ = count_parameters(_model("model.lora.targets=[q]", "model.lora.blocks=last:1",
                                           "model.gem_learnable=false"))
    assert trainable == 8 * (D + D) + head


@pytest.mark.parametrize("override,message", [
    ("model.lora.targets=[x]", "model.lora.targets: 'x'"),
    ("model.lora.targets=[]", "model.lora.targets: empty"),
    ("model.lora.blocks=[0,5]", "model.lora.blocks: block 5 does not exist (backbone has 2 blocks"),
    ("model.lora.blocks=last:3", "model.lora.blocks: 'last:3'"),
    ("model.lora.rank=0", "model.lora.rank"),
    ("model.backbone=timm:resnet18", "model.lora: LoRA needs an OpenCLIP ViT"),
])
def test_bad_lora_config_names_the_key(override, message):
    with pytest.raises(ValueError) as err:
        _model(override)
    assert message in str(err.value)


def test_timm_vit_with_a_fused_qkv_linear():
    cfg = load([TINY], ["model.backbone=timm:test_vit", "model.lora.enabled=true", "model.lora.blocks=last:2"])
    torch.manual_seed(0)
    model = build_model(cfg)
    blocks = model.backbone.model.blocks
    assert isinstance(blocks[5].attn.qkv, SplitQKV) and isinstance(blocks[3].attn.qkv, nn.Linear)
    lora_names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    assert lora_names and all(".attn.qkv.q." in n or ".attn.qkv.v." in n for n in lora_names)
    # LLRD depth of an adapter is its block's (blocks.5 -> 6), not the top of the model
    assert model.layer_id("backbone.model.blocks.5.attn.qkv.q.lora_A.default.weight") == 6
    _train_steps_timm(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        merge_lora(model)
        got = model(x)
    assert isinstance(blocks[5].attn.qkv, nn.Linear) and torch.allclose(got, want, atol=1e-5)


def _train_steps_timm(model) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        e = model(x)
        loss = -(e[0] * e[1]).sum() + (e[0] * e[2]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_lora_config_trains_resumes_and_infers(tmp_path, monkeypatch, capsys):
    """configs/lora_clip.yaml's LoRA settings on the tiny ViT through tools/train.py and tools/infer.py."""
    from tools.infer import main as infer_main

    from simsearch.models.checkpoint import load_model

    data = make_class_folder(tmp_path / "train", n_classes=6, per_class=6, seed=3)
    base = ["--config", str(LORA), "--config", str(TINY), f"data.train_dir={data}", "train.epochs=2",
            "train.max_steps_per_epoch=2"]
    # trained to the end, and again killed in the second epoch then resumed
    killed = kill_and_resume(monkeypatch, base, tmp_path, kill_at=2)
    run = killed.full
    meta = json.loads((run / "best" / "meta.json").read_text())
    assert meta["parameters"]["trainable"] == 8 * (D + D) * 4 + (D * 16 + 16 + 32) + 1
    assert f"parameters: {meta['parameters']['trainable']:,} trainable" in (run / "train.log").read_text()

    # the killed-and-resumed run wrote the same rows as the uninterrupted one
    assert killed.rows_at_kill == 1
    full, resumed = metrics_rows(run), metrics_rows(killed.resumed)
    key = ("epoch", "step", "loss", "lr", "map")
    assert [[r[k] for k in key] for r in full] == [[r[k] for k in key] for r in resumed]

    # inference loads the checkpoint merged: a plain open_clip model, same embeddings as unmerged
    merged, _ = load_model(run / "last")
    unmerged, _ = load_model(run / "last", merge=False)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(merged(x), unmerged(x), atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())
    (tmp_path / "q").mkdir()
    (tmp_path / "g").mkdir()
    for i, img in enumerate(sorted(data.rglob("*.jpg"))):
        shutil.copy(img, (tmp_path / ("q" if i % 6 == 0 else "g")) / f"{i:03d}.jpg")
    out = tmp_path / "sub.json"
    assert infer_main(["--checkpoint", str(run / "best"), "--query-dir", str(tmp_path / "q"),
                       "--gallery-dir", str(tmp_path / "g"), "--out", str(out), "infer.cache_dir=null"]) == 0
    sub = json.loads(out.read_text())
    assert len(sub) == 6 and all(len(v) == 10 for v in sub.values())
