import numpy as np
import pytest
import torch

from conftest import CONFIGS
from simsearch.config import load
from simsearch.models import EmbeddingModel, build_model, create_backbone
from simsearch.models.lite0_weights import STAGE_DEPTHS, lite0_weights_path, map_lukemelas_to_timm


def test_tiny_open_clip_returns_unit_norm_embeddings_train_and_eval():
    model = build_model(load([CONFIGS / "tiny_test.yaml"]))
    x = torch.randn(4, 3, 32, 32)
    for mode in (True, False):
        model.train(mode)
        out = model(x)
        assert out.shape == (4, 16)
        assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)


def test_open_clip_patch_tokens_drop_cls():
    b = create_backbone("open_clip:ViT-Tiny-Test", None)
    feats = b.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, (32 // 8) ** 2, 64)  # 16 patch tokens, CLS dropped
    assert b.data_config.input_size == 32 and len(b.data_config.mean) == 3


@pytest.mark.parametrize("pooling", ["gem", "avg", "cls"])
def test_pooling_options(pooling):
    m = EmbeddingModel(create_backbone("open_clip:ViT-Tiny-Test", None), pooling=pooling, embed_dim=8)
    assert m.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 8)


def test_timm_cnn_and_vit_backbones():
    cnn = create_backbone("timm:resnet18", None)
    assert cnn.forward_features(torch.randn(1, 3, 64, 64)).dim() == 4
    assert cnn.layer_id("model.conv1.weight") == 0
    assert cnn.layer_id("model.layer4.0.conv1.weight") > cnn.layer_id("model.layer1.0.conv1.weight")
    vit = create_backbone("timm:vit_tiny_patch16_224", None)
    tokens = vit.forward_features(torch.randn(1, 3, 224, 224))
    assert tokens.shape == (1, 196, 192)  # class token dropped
    assert vit.layer_id("model.blocks.3.attn.qkv.weight") == 4
    assert vit.layer_id("model.patch_embed.proj.weight") == 0


@pytest.mark.parametrize("spec,match", [
    ("timm:resnet_does_not_exist", "unknown timm model 'resnet_does_not_exist'"),
    ("open_clip:ViT-Nope-1", "unknown OpenCLIP model 'ViT-Nope-1'"),
    ("resnet50", "must be open_clip:NAME"),
])
def test_unknown_backbone_names(spec, match):
    with pytest.raises(ValueError, match=match):
        create_backbone(spec, None)


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_backbone("timm:resnet18", str(tmp_path / "nowhere.pth"))


def test_unfetchable_weights_explain_what_was_tried(tmp_path, monkeypatch):
    import timm

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(RuntimeError, match="tried timm's default weights.*model.pretrained=/path"):
        create_backbone("timm:resnet18", "default")


def test_lite0_key_map_is_complete_and_strict():
    import timm

    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    mapped = map_lukemelas_to_timm(src)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert set(mapped) == set(target)  # nothing missing, nothing unexpected
    for k, v in mapped.items():
        assert v.shape == target[k].shape, k
    assert sum(STAGE_DEPTHS) == 16


def test_lite0_offline_weights_classify_a_real_photo():
    """Chelsea (scikit-image's photo of a tabby cat) must land in ImageNet's cat classes 281-285."""
    import timm
    from PIL import Image
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(map_lukemelas_to_timm(
        torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)), strict=True)
    img = Image.fromarray(data.chelsea()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        probs = model.eval()(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in range(281, 286), top5
    assert probs[281:286].sum() > 0.5


def test_lite0_backbone_through_config():
    cfg = load([CONFIGS / "effnet_lite0_offline.yaml"])
    model = build_model(cfg)
    assert model.data_config.mean == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        out = model.eval()(x)
        # the recipe's identity head: the embedding is the backbone's normalised GeM feature
        gem = model.pool(model.backbone.forward_features(x))
    assert out.shape == (2, 1280)
    assert torch.allclose(out, torch.nn.functional.normalize(gem, dim=1), atol=1e-5)


@pytest.mark.slow
def test_vit_l14_config_builds_and_trains_one_step_on_cpu():
    from simsearch.training.losses import LossWrapper, build_loss
    from simsearch.training.optim import build_optimizer

    cfg = load([CONFIGS / "vit_l14_circle.yaml"], ["model.pretrained=null"])
    model = build_model(cfg)
    assert model.backbone.num_layers == 24
    assert model.embed_dim == 1024  # identity head at ViT-L/14's width
    loss = LossWrapper(build_loss(cfg, 2, model.embed_dim))
    opt = build_optimizer(model, loss, 1e-4, 0.75, 0.05)
    x, y = torch.randn(4, 3, 224, 224), torch.tensor([0, 0, 1, 1])
    value = loss(model.train()(x), y)
    value.backward()
    opt.step()
    assert torch.isfinite(value)


# --- CNN backbones (issue 5, item 5): the same GeM and head over timm feature maps ---------------

@pytest.mark.parametrize("config,stages,param,param_id,mean,size", [
    ("resnet50.yaml", 4, "layer4.2.conv3.weight", 4, (0.485, 0.456, 0.406), 224),
    ("xception.yaml", 13, "block12.rep.4.pointwise.weight", 12, (0.5, 0.5, 0.5), 299),  # exit flow: 13
    ("effnet_b0.yaml", 7, "blocks.5.3.conv_pwl.weight", 6, (0.485, 0.456, 0.406), 224),
])
def test_cnn_configs_build_with_gem_head_and_stage_layer_ids(config, stages, param, param_id, mean, size):
    cfg = load([CONFIGS / config], ["model.pretrained=null", "model.embed_dim=8"])
    model = build_model(cfg).eval()
    b = model.backbone
    assert b.data_config.mean == mean and b.data_config.input_size == size
    x = torch.randn(2, 3, 64, 64)
    feats = b.forward_features(x)
    assert feats.dim() == 4 and feats.shape[:2] == (2, b.num_features)  # a map, for GeM
    out = model(x)
    assert out.shape == (2, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    # LLRD: stem 0, then stages 1..L in the order the image flows through them
    ids = [model.layer_id(n) for n, _ in model.backbone.named_parameters(prefix="backbone")]
    assert b.num_layers == stages
    assert ids[0] == 0 and ids == sorted(ids) and set(ids) == set(range(stages + 1))
    assert model.layer_id(f"backbone.model.{param}") == param_id
    assert model.layer_id("head.fc.weight") == stages + 1


def test_cnn_llrd_gives_the_stem_the_smallest_lr():
    from simsearch.training.optim import build_optimizer

    model = build_model(load([CONFIGS / "resnet50.yaml"], ["model.pretrained=null"]))
    opt = build_optimizer(model, torch.nn.Identity(), 1.0, 0.5, 0.0)
    lr_of = {g["layer_id"]: g["lr"] for g in opt.param_groups}
    assert lr_of == {i: 0.5 ** (5 - i) for i in range(6)}  # stem, 4 stages, head


# --- VAE encoder baseline (issue 5, item 6) -------------------------------------------------------

def test_vae_tiny_features_are_the_latent_mean():
    b = create_backbone("vae:tiny", None)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        moments = b.vae.quant_conv(b.vae.encoder(x))  # mean and log-variance, stacked on channels
        feats = b.forward_features(x)
    assert feats.shape == (2, 4, 16, 16) and b.num_features == 4
    assert torch.allclose(feats, moments[:, :4])
    assert b.data_config.mean == (0.5, 0.5, 0.5) and b.data_config.std == (0.5, 0.5, 0.5)  # to [-1, 1]
    assert not any(n.startswith("vae.decoder") for n, _ in b.named_parameters())


@pytest.mark.parametrize("pooling", ["gem", "avg"])
def test_vae_through_pooling_and_head(pooling):
    model = EmbeddingModel(create_backbone("vae:tiny", None), pooling=pooling, embed_dim=8)
    out = model.train()(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 8) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="cls needs a ViT"):
        EmbeddingModel(create_backbone("vae:tiny", None), pooling="cls")(torch.randn(2, 3, 32, 32))


def test_vae_layer_ids_follow_the_down_blocks():
    b = create_backbone("vae:tiny", None)
    ids = [b.layer_id(n) for n, _ in b.named_parameters()]
    assert b.num_layers == 3 and ids == sorted(ids) and set(ids) == {0, 1, 2, 3}
    assert b.layer_id("vae.encoder.conv_in.weight") == 0
    assert b.layer_id("vae.encoder.down_blocks.1.resnets.0.conv1.weight") == 2
    assert b.layer_id("vae.encoder.mid_block.resnets.0.conv1.weight") == 3
    assert b.layer_id("vae.quant_conv.weight") == 3


@pytest.mark.parametrize("layout", ["folder", "pipeline"])
def test_vae_loads_a_local_folder(tmp_path, layout):
    from diffusers import AutoencoderKL

    from simsearch.models.vae import tiny_vae_config

    torch.manual_seed(1)
    saved = AutoencoderKL(**tiny_vae_config())
    root = tmp_path / "my_vae"
    saved.save_pretrained(root if layout == "folder" else root / "vae")
    loaded = create_backbone(f"vae:{root}", "default").vae.state_dict()
    expected = {k: v for k, v in saved.state_dict().items() if not k.startswith(("decoder.", "post_quant"))}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # pretrained=null: the folder's architecture with fresh weights (a checkpoint loads its own next)
    fresh = create_backbone(f"vae:{root}", None).vae.state_dict()
    assert fresh.keys() == expected.keys()
    assert not torch.equal(fresh["encoder.conv_in.weight"], expected["encoder.conv_in.weight"])


def test_vae_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder.*not a hub id"):
        create_backbone(f"vae:{tmp_path / 'nowhere'}", "default")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no AutoencoderKL config.json"):
        create_backbone(f"vae:{tmp_path / 'empty'}", "default")
    with pytest.raises(ValueError, match="vae:tiny has no weights"):
        create_backbone("vae:tiny", "weights.pth")


def test_vae_hub_id_offline_says_what_was_tried(monkeypatch):
    import diffusers

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", offline)
    with pytest.raises(RuntimeError, match="'vae:stabilityai/sd-vae-ft-mse'.*vae:/path/to/folder"):
        create_backbone("vae:stabilityai/sd-vae-ft-mse", "default")


def test_vae_without_diffusers_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(RuntimeError, match=r"needs diffusers.*\.\[vae\]"):
        create_backbone("vae:tiny", None)


def test_vae_config_builds_with_the_tiny_vae():
    cfg = load([CONFIGS / "vae.yaml"], ["model.backbone=vae:tiny"])
    model = build_model(cfg).eval()
    assert model.pooling_name == "avg"
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, cfg.model.embed_dim)


def test_vae_tiny_trains_saves_and_reloads(tmp_path):
    from tools.train import main as train_main

    from conftest import make_class_folder
    from simsearch.models.checkpoint import load_model

    data = make_class_folder(tmp_path / "train", n_classes=4, per_class=4, size=32)
    assert train_main(["--config", str(CONFIGS / "tiny_test.yaml"), "model.backbone=vae:tiny",
                       "data.image_size=32", f"data.train_dir={data}", f"train.output_dir={tmp_path}",
                       "train.epochs=1", "run_name=vae"]) == 0
    model, cfg = load_model(tmp_path / "vae" / "best")  # strict load into a fresh vae:tiny
    assert cfg.model.backbone == "vae:tiny"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16)
