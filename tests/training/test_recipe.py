"""The training recipe's parts: identity head, feature-cached head stages, XBM, WiSE-FT, LP -> FT."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from safetensors.torch import load_file
from tools.train import main

from conftest import CONFIGS, make_class_folder, metrics_rows
from simsearch.config import load
from simsearch.models import build_model
from simsearch.training.engine import mix_weights, seed_everything
from simsearch.training.feature_cache import FeatureCache
from simsearch.training.losses import build_loss_wrapper

TINY = str(CONFIGS / "tiny_test.yaml")
# Deterministic training images: no flip or jitter, and the "random" resized crop of a square image
# at scale 1 falls back to the whole image, exactly what the eval transform gives at resize ratio 1.
DETERMINISTIC = ["data.hflip=0", "data.color_jitter=0", "data.train_scale_min=1.0",
                 "data.eval_resize_ratio=1.0"]
HEAD_STAGE = ["train.stages=[{epochs: 2, train: head}]", "train.epochs=2"]


def _train(tmp_path: Path, name: str, *overrides: str) -> Path:
    data = tmp_path / "train"
    if not data.exists():
        make_class_folder(data, n_classes=6, per_class=6)
    assert main(["--config", TINY, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
                 f"run_name={name}", *overrides]) == 0
    return tmp_path / "runs" / name


def test_identity_head_passes_pooled_features_through():
    cfg = load([TINY], ["model.embed_dim=null", "model.head_init=identity"])
    model = build_model(cfg).eval()
    width = model.backbone.num_features
    assert model.embed_dim == width and model.head.fc.out_features == width
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pooled = model.pool(model.backbone.forward_features(x))
        assert torch.allclose(model(x), F.normalize(pooled, dim=1), atol=1e-6)
        # the random head (the old default) is a different embedding
        random = build_model(load([TINY], ["model.embed_dim=null"])).eval()
        assert not torch.allclose(random(x), F.normalize(pooled, dim=1), atol=1e-2)


def test_identity_head_needs_the_feature_width():
    with pytest.raises(ValueError, match="model.head_init=identity needs model.embed_dim equal to"):
        build_model(load([TINY], ["model.embed_dim=8", "model.head_init=identity"]))


def test_cached_head_stage_trains_the_same_head_as_an_uncached_one(tmp_path):
    common = [*DETERMINISTIC, *HEAD_STAGE, "train.feature_cache.dtype=float32"]
    plain = _train(tmp_path, "plain", *common, "train.feature_cache.views=0")
    cached = _train(tmp_path, "cached", *common, "train.feature_cache.views=1")
    a = load_file(str(plain / "last" / "model.safetensors"))
    b = load_file(str(cached / "last" / "model.safetensors"))
    seed_everything(0)
    start = build_model(load([TINY])).state_dict()
    assert not torch.allclose(a["head.fc.weight"], start["head.fc.weight"])  # it did train
    # The Linear bias before BatchNorm has no effect in training (BN subtracts the batch mean), so its
    # gradient is float noise that Adam turns into full steps, different in the two runs; the BN
    # running mean follows it. Every other weight and statistic must agree.
    noise = {"head.fc.bias", "head.bn.running_mean"}
    assert noise < set(a)
    for k in set(a) - noise:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    ra, rb = metrics_rows(plain), metrics_rows(cached)
    assert [float(r["loss"]) for r in ra] == pytest.approx([float(r["loss"]) for r in rb], rel=1e-4)
    assert [float(r["map"]) for r in ra] == pytest.approx([float(r["map"]) for r in rb], abs=1e-6)


def test_cached_head_stage_runs_no_backbone_forward_per_epoch(tmp_path, monkeypatch):
    from simsearch.models.model import EmbeddingModel

    calls = []
    real = EmbeddingModel.backbone_features
    monkeypatch.setattr(EmbeddingModel, "backbone_features", lambda self, x: calls.append(len(x)) or real(self, x))
    _train(tmp_path, "cached", *HEAD_STAGE, "train.feature_cache.views=3", "train.epochs=2")
    # one probe image, then 3 views of the 24 training images and the 12 validation images, once
    assert sum(calls) == 1 + 3 * 24 + 12
    calls.clear()
    _train(tmp_path, "plain", *HEAD_STAGE, "train.feature_cache.views=0")
    assert sum(calls) > 2 * 24  # every epoch's batches and every validation pass run the backbone


def test_cache_views_are_a_function_of_seed_epoch_and_batch():
    cache = FeatureCache(torch.zeros(4, 10, 2), torch.ones(10, dtype=torch.bool).numpy(), torch.zeros(10), seed=3)
    assert (cache.view_of(2, 5, 10) == cache.view_of(2, 5, 10)).all()
    assert not (cache.view_of(2, 5, 50) == cache.view_of(2, 6, 50)).all()
    assert set(cache.view_of(0, 0, 200).tolist()) == {0, 1, 2, 3}


def test_oversized_feature_cache_is_refused_naming_the_key(tmp_path, capsys):
    data = make_class_folder(tmp_path / "train", n_classes=4, per_class=4)
    rc = main(["--config", TINY, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
               *HEAD_STAGE, "train.feature_cache.views=2", "train.feature_cache.max_gb=1.0e-9"])
    assert rc == 2
    assert "over train.feature_cache.max_gb" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["open_clip:ViT-Tiny-Test", "timm:tf_efficientnet_lite0",
                                  "timm:vit_tiny_patch16_224"])
def test_backbone_split_at_every_block_boundary_is_forward_features(spec):
    from simsearch.models.backbones import create_backbone

    torch.manual_seed(0)
    b = create_backbone(spec, None).eval()
    x = torch.randn(2, 3, 64, 64) if spec.startswith("timm:tf") else torch.randn(2, 3, b.data_config.input_size,
                                                                                b.data_config.input_size)
    with torch.no_grad():
        full = b.forward_features(x)
        for top in range(b.num_layers + 1):
            assert torch.allclose(b.forward_upper(b.forward_lower(x, top), top), full, atol=1e-5), top
        assert b.forward_lower(x, 1).shape != full.shape  # it really stops below the top block


def test_cached_lp_then_ft_trains_the_top_block_on_cached_features_then_drops_the_cache(tmp_path, monkeypatch):
    from simsearch.models.model import EmbeddingModel

    calls = []
    real = EmbeddingModel.backbone_features
    monkeypatch.setattr(EmbeddingModel, "backbone_features", lambda self, x: calls.append(len(x)) or real(self, x))
    run = _train(tmp_path, "lpft", "train.stages=[{epochs: 1, train: head}, {epochs: 1, unfreeze_last: 1}]",
                 "train.epochs=2", "train.feature_cache.views=2")
    log = (run / "train.log").read_text()
    assert log.count("feature cache: 2 view(s)") == 1  # one cache, below the last block, for both stages
    assert sum(calls) == 1 + 2 * 24 + 12
    seed_everything(0)  # the run's seed: the same initial weights
    start = build_model(load([TINY])).state_dict()
    end = load_file(str(run / "last" / "model.safetensors"))
    last_block = [k for k in end if k.startswith("backbone.") and ".resblocks.1." in k]
    first_block = [k for k in end if k.startswith("backbone.") and ".resblocks.0." in k]
    assert last_block and any(not torch.equal(end[k], start[k]) for k in last_block)
    assert all(torch.equal(end[k], start[k]) for k in first_block)
    # a stage that trains the whole backbone cannot use the cache: it runs the real forward
    calls.clear()
    _train(tmp_path, "full", "train.stages=[{epochs: 1, train: head}, {epochs: 1, train: all}]",
           "train.epochs=2", "train.feature_cache.views=1")
    assert sum(calls) > 1 + 24 + 12 + 24


def test_cached_stages_rule():
    from simsearch.training.engine import cached_stages
    from simsearch.training.stages import parse_stages

    def rule(stages: str, views: int = 2) -> tuple[int, int]:
        epochs = stages.count("epochs")
        return cached_stages(parse_stages(load([TINY], [f"train.stages={stages}", f"train.epochs={epochs}"]), 2),
                             views, 2)

    assert rule("[{epochs: 1, train: head}, {epochs: 1, unfreeze_last: 1}]") == (2, 1)
    assert rule("[{epochs: 1, train: head}, {epochs: 1, train: all}, {epochs: 1, train: head}]") == (1, 0)
    assert rule("[{epochs: 1, unfreeze_last: 2}, {epochs: 1, train: head}]") == (2, 2)
    assert rule("[{epochs: 1, train: head}]", views=0) == (0, 0)


# --------------------------------------------------------------------------- XBM


def test_xbm_compares_the_batch_with_the_memory():
    cfg = load([TINY], ["loss.xbm_size=64", "loss.miner=null"])
    wrapper = build_loss_wrapper(cfg, 4, 8)
    torch.manual_seed(0)
    e1, e2 = F.normalize(torch.randn(8, 8), dim=1), F.normalize(torch.randn(8, 8), dim=1)
    y1, y2 = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([0, 0, 1, 1, 4, 4, 5, 5])
    plain = pml_losses.CircleLoss(m=cfg.loss.circle_m, gamma=cfg.loss.circle_gamma)
    # first batch: the memory holds only the batch, so the loss is the plain in-batch loss
    assert wrapper(e1, y1).item() == pytest.approx(plain(e1, y1).item(), rel=1e-5)
    # second batch: every pair of (batch 2) x (batch 1 + batch 2) but an item with itself, by hand
    ref, ref_y = torch.cat([e1, e2]), torch.cat([y1, y2])
    same = y2[:, None] == ref_y[None, :]
    same[torch.arange(8), torch.arange(8) + 8] = False
    a1, p = torch.where(same)
    a2, n = torch.where(y2[:, None] != ref_y[None, :])
    by_hand = plain(e2, y2, (a1, p, a2, n), ref, ref_y)
    got = wrapper(e2, y2)
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert got.item() != pytest.approx(plain(e2, y2).item(), rel=1e-3)


def test_xbm_position_restores_exactly():
    cfg = load([TINY], ["loss.xbm_size=16", "loss.miner=null"])
    a, b = build_loss_wrapper(cfg, 4, 8), build_loss_wrapper(cfg, 4, 8)
    torch.manual_seed(1)
    batches = [(F.normalize(torch.randn(8, 8), dim=1), torch.randint(0, 3, (8,))) for _ in range(4)]
    for e, y in batches[:3]:
        a(e, y)
    b.set_xbm_position(a.xbm_position())
    e, y = batches[3]
    assert a(e, y).item() == pytest.approx(b(e, y).item(), rel=1e-6)
    assert "xbm.embedding_memory" not in a.state_dict()  # refilled in a few steps; not in the weights


@pytest.mark.parametrize("overrides,message", [
    (["loss.xbm_size=4"], "loss.xbm_size=4 must hold at least one batch (train.batch_p * train.batch_k = 8)"),
    (["loss.xbm_size=64", "loss.name=arcface"], "loss.xbm_size=64: a cross-batch memory works with"),
])
def test_bad_xbm_settings_are_refused(tmp_path, capsys, overrides, message):
    data = make_class_folder(tmp_path / "train", n_classes=4, per_class=4)
    rc = main(["--config", TINY, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}", *overrides])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_xbm_run_trains_and_resumes_with_its_memory(tmp_path):
    run = _train(tmp_path, "xbm", "loss.xbm_size=32", "train.epochs=1")
    state = torch.load(run / "last" / "train_state.pt", weights_only=True)
    assert state["xbm"]["filled"] or state["xbm"]["queue_idx"] > 0


# --------------------------------------------------------------------------- WiSE-FT


def test_mix_weights_by_hand():
    initial = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    tuned = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(7)}
    assert torch.equal(mix_weights(initial, tuned, 0.0)["w"], initial["w"])
    assert torch.equal(mix_weights(initial, tuned, 1.0)["w"], tuned["w"])
    assert torch.equal(mix_weights(initial, tuned, 0.25)["w"], torch.tensor([1.0, 3.0]))
    assert mix_weights(initial, tuned, 0.25)["n"].item() == 7  # counters are not averaged


def test_wise_alpha_zero_is_the_untrained_model_and_best_keeps_the_pick(tmp_path):
    run = _train(tmp_path, "wise", "model.embed_dim=null", "model.head_init=identity", "train.eval_at_start=true",
                 "train.epochs=2", "train.wise_alphas=[0, 0.5, 1]")
    rows = metrics_rows(run, "wise.csv")
    untrained = metrics_rows(run)[0]
    assert untrained["epoch"] == "-1"
    assert float(rows[0]["map"]) == pytest.approx(float(untrained["map"]), abs=1e-6)
    # alpha 1 is the fine-tuned best epoch itself, and the mixes differ from both ends
    best_epoch = max(float(r["map"]) for r in metrics_rows(run) if r["epoch"] != "-1")
    assert float(rows[-1]["map"]) == pytest.approx(best_epoch, abs=1e-6)
    import json

    meta = json.loads((run / "best" / "meta.json").read_text())
    pick = max(rows, key=lambda r: float(r["map"]))
    assert meta["wise_alpha"] == float(pick["alpha"])
    assert meta["metrics"]["map"] == pytest.approx(float(pick["map"]))


def test_wise_needs_validation(tmp_path, capsys):
    data = make_class_folder(tmp_path / "train", n_classes=4, per_class=4)
    rc = main(["--config", TINY, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
               "data.val_fraction=0", "train.wise_alphas=[0, 1]"])
    assert rc == 2
    assert "train.wise_alphas chooses the mix on validation" in capsys.readouterr().err
