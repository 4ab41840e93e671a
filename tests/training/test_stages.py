"""Staged training (train.stages): what each stage trains, at what LR, and exact resume across stages."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tools.train import main

from conftest import CONFIGS, kill_and_resume, make_class_folder, metrics_rows
from simsearch.config import load
from simsearch.models import build_model
from simsearch.models import checkpoint as ckpt
from simsearch.training import engine
from simsearch.training.engine import seed_everything
from simsearch.training.losses import build_loss_wrapper
from simsearch.training.optim import build_optimizer
from simsearch.training.stages import apply_stage, parse_stages, stage_index

TINY = str(CONFIGS / "tiny_test.yaml")
STAGED = str(CONFIGS / "triplet_staged.yaml")
# tiny ViT: 2 blocks; block 1 is the last (layer id 2), ln_post sits above it (layer id 3)
TWO_STAGES = ["train.stages=[{epochs: 1, train: head}, {epochs: 2, unfreeze_last: 1, backbone_lr: 0.002}]",
              "train.epochs=3"]


def test_stages_parse_with_defaults_and_epoch_ranges():
    cfg = load([TINY], ["train.stages=[{epochs: 2, train: head}, {epochs: 3, unfreeze_last: 2, "
                        "backbone_lr: 1.0e-5}, {epochs: 1, lr: 0.5}]", "train.epochs=6"])
    s = parse_stages(cfg, num_blocks=2)
    assert [(x.first_epoch, x.epochs, x.unfreeze, x.lr, x.backbone_lr) for x in s] == [
        (0, 2, 0, 1e-3, None), (2, 3, 2, 1e-3, 1e-5), (5, 1, 3, 0.5, None)]
    assert [stage_index(s, e) for e in range(6)] == [0, 0, 1, 1, 1, 2]
    implicit = parse_stages(load([TINY]), num_blocks=2)  # no stages: one stage of train.epochs, nothing frozen
    assert len(implicit) == 1 and implicit[0].epochs == 2 and implicit[0].unfreeze is None


@pytest.mark.parametrize("stages,epochs,message", [
    ("[{epochs: 1, train: head}, {epochs: 1, unfreez_last: 1}]", 2,
     "train.stages[1].unfreez_last: unknown stage key"),
    ("[{epochs: 1, train: head}, {epochs: 1, unfreeze_last: 3}]", 2,
     "train.stages[1].unfreeze_last: 3 blocks do not exist (backbone has 2 blocks)"),
    ("[{train: head}]", 1, "train.stages[0].epochs: missing"),
    ("[{epochs: 0}]", 0, "train.stages[0].epochs: 0 must be a positive integer"),
    ("[{epochs: 1, train: backbone}]", 1, "train.stages[0].train: 'backbone' must be head"),
    ("[{epochs: 1, train: head, unfreeze_last: 1}]", 1, "train.stages[0].unfreeze_last: give either"),
    ("[{epochs: 1, train: head, backbone_lr: 0.1}]", 1, "train.stages[0].backbone_lr: this stage trains the head"),
    ("[{epochs: 1, unfreeze_last: 1, backbone_lr: -1}]", 1, "train.stages[0].backbone_lr: -1 must be a positive"),
    ("[3]", 3, "train.stages[0]: 3 must be a mapping"),
    ("[{epochs: 2, train: head}]", 5, "train.epochs=5 but train.stages add up to 2 epochs"),
])
def test_bad_stages_are_rejected_naming_the_key(tmp_path, capsys, stages, epochs, message):
    data = make_class_folder(tmp_path / "train", n_classes=4, per_class=4)
    rc = main(["--config", TINY, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
               f"train.stages={stages}", f"train.epochs={epochs}"])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_stages_and_lora_together_are_rejected():
    cfg = load([TINY], ["model.lora.enabled=true", "train.stages=[{epochs: 2, train: head}]"])
    with pytest.raises(ValueError, match="train.stages: staged unfreezing cannot be combined with model.lora"):
        parse_stages(cfg, 2)


def _named_lrs(model, loss, optimizer, key: str = "lr") -> dict[str, float]:
    named = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss.named_parameters()]
    names = {id(p): n for n, p in named}
    return {names[id(p)]: g[key] for g in optimizer.param_groups for p in g["params"]}


def test_unfrozen_blocks_get_the_stage_backbone_lr_on_efficientnet():
    cfg = load([STAGED], ["model.pretrained=null"])
    model = build_model(cfg)
    assert model.backbone.num_layers == 7 and model.head.fc.out_features == 128
    loss = build_loss_wrapper(cfg, 5, cfg.model.embed_dim)
    s1, s2 = parse_stages(cfg, model.backbone.num_layers)
    apply_stage(model, s1)
    lrs = _named_lrs(model, loss, build_optimizer(model, loss, s1.lr, cfg.train.llrd, 0.05, s1.backbone_lr))
    assert not any(n.startswith("backbone.") for n in lrs) and lrs["head.fc.weight"] == 1e-3
    apply_stage(model, s2)
    lrs = _named_lrs(model, loss, build_optimizer(model, loss, s2.lr, cfg.train.llrd, 0.05, s2.backbone_lr))
    backbone = {n.removeprefix("backbone.model.") for n in lrs if n.startswith("backbone.")}
    # the last 2 of the 7 EfficientNet stages (blocks.5, blocks.6) and the final conv_head/bn2 train
    assert backbone == {n for n, _ in model.backbone.model.named_parameters()
                        if n.startswith(("blocks.5.", "blocks.6.", "conv_head.", "bn2."))}
    assert all(lrs[n] == 1e-4 for n in lrs if n.startswith("backbone."))
    assert lrs["head.fc.weight"] == 3e-4 and lrs["pool.p"] == 3e-4


class _Snapshots:
    """Records the model weights every time the engine writes last/ (once per epoch)."""

    def __init__(self, monkeypatch):
        self.states: list[dict[str, torch.Tensor]] = []
        self.optimizers: list = []
        real_save, real_opt = ckpt.save_checkpoint, engine.build_optimizer

        def save(folder, model, *a, **k):
            if Path(folder).name == "last":
                self.states.append({n: t.detach().clone() for n, t in model.state_dict().items()})
            return real_save(folder, model, *a, **k)

        def build(model, loss, *a, **k):
            opt = real_opt(model, loss, *a, **k)
            self.optimizers.append((model, loss, opt))
            return opt

        monkeypatch.setattr(ckpt, "save_checkpoint", save)
        monkeypatch.setattr(engine, "build_optimizer", build)


def _changed(a: dict, b: dict, prefix: str = "backbone.") -> set[str]:
    return {k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])}


def test_head_stage_then_last_block_stage_on_the_tiny_vit(tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "train", n_classes=6, per_class=6)
    snap = _Snapshots(monkeypatch)
    assert main(["--config", TINY, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
                 "train.max_steps_per_epoch=2", "train.warmup_frac=0", *TWO_STAGES]) == 0
    seed_everything(0)
    init = build_model(load([TINY])).state_dict()
    after1, after2 = snap.states[0], snap.states[1]
    assert _changed(init, after1) == set()                                   # stage 1: backbone untouched
    assert not torch.equal(init["head.fc.weight"], after1["head.fc.weight"])  # ... the head trained
    moved = _changed(after1, after2)
    assert moved and all(k.startswith(("backbone.visual.transformer.resblocks.1.", "backbone.visual.ln_post"))
                         for k in moved)                                     # stage 2: the last block only
    assert "backbone.visual.transformer.resblocks.1.attn.in_proj_weight" in moved
    assert not torch.equal(after1["head.fc.weight"], after2["head.fc.weight"])
    (_, _, opt1), (model, loss, opt2) = snap.optimizers
    lrs = _named_lrs(model, loss, opt2, "initial_lr")  # before the schedule scales it
    assert {n for n in lrs if n.startswith("backbone.")} == {
        n for n, _ in model.named_parameters() if n.startswith(("backbone.visual.transformer.resblocks.1.",
                                                                "backbone.visual.ln_post"))}
    assert all(lr == 0.002 for n, lr in lrs.items() if n.startswith("backbone."))
    assert lrs["head.fc.weight"] == 1e-3
    assert set(_named_lrs(model, loss, opt1, "initial_lr").values()) == {1e-3}
    assert not any(n.startswith("backbone.") for n in _named_lrs(model, loss, opt1))
    log = (tmp_path / "runs/tiny_test/train.log").read_text()
    assert "stage 1/2, epochs 0-0: head only (backbone frozen)" in log
    assert "stage 2/2, epochs 1-2: head + last 1 of 2 backbone blocks" in log


@pytest.mark.parametrize("extra", [[], ["train.feature_cache.views=2", "loss.xbm_size=16",
                                         "train.wise_alphas=[0, 0.5, 1]"]], ids=["plain", "cached-xbm-wise"])
@pytest.mark.parametrize("kill_at", [2, 3], ids=["at-the-stage-boundary", "mid-stage-2"])
def test_resume_across_stages_matches_an_uninterrupted_run(tmp_path, monkeypatch, kill_at, extra):
    data = make_class_folder(tmp_path / "train", n_classes=6, per_class=6, seed=2)
    args = ["--config", TINY, f"data.train_dir={data}", "train.max_steps_per_epoch=2", *TWO_STAGES, *extra]
    run = kill_and_resume(monkeypatch, args, tmp_path, kill_at)
    assert run.rows_at_kill == kill_at - 1
    full, resumed = metrics_rows(run.full), metrics_rows(run.resumed)
    assert len(full) == len(resumed) == 3
    for a, b in zip(full, resumed):
        for key in ("epoch", "step", "loss", "lr", "r1", "r5", "map"):
            assert a[key] == b[key], (key, a, b)
    for folder in ("last", "best"):  # best/: the WiSE-FT mix, when switched on
        wa = load_file(str(run.full / folder / "model.safetensors"))
        wb = load_file(str(run.resumed / folder / "model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), folder


def test_triplet_staged_config_trains_efficientnet_in_two_stages(tmp_path, monkeypatch):
    """configs/triplet_staged.yaml (random init, small images): stage 1 leaves every backbone weight
    and BatchNorm statistic as it was; stage 2 moves only blocks.5, blocks.6 and conv_head/bn2."""
    data = make_class_folder(tmp_path / "train", n_classes=4, per_class=4)
    snap = _Snapshots(monkeypatch)
    assert main(["--config", STAGED, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
                 "model.pretrained=null", "data.image_size=32", "data.num_workers=0", "train.batch_p=4",
                 "train.batch_k=2", "train.max_steps_per_epoch=2", "train.eval_at_start=false",
                 "train.stages=[{epochs: 1, train: head}, {epochs: 1, unfreeze_last: 2, backbone_lr: 0.01}]",
                 "train.epochs=2"]) == 0
    seed_everything(0)
    init = build_model(load([STAGED], ["model.pretrained=null"])).state_dict()
    after1, after2 = snap.states
    assert _changed(init, after1) == set()
    assert after2["head.fc.weight"].shape == (128, 1280)
    moved = {k.removeprefix("backbone.model.") for k in _changed(after1, after2)}
    assert moved and all(k.startswith(("blocks.5.", "blocks.6.", "conv_head.", "bn2.")) for k in moved)
    assert "blocks.6.0.bn3.running_mean" in moved  # BatchNorm of an unfrozen block trains in train mode
