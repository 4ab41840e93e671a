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
    out = model.eval()(torch.randn(2, 3, 160, 160))
    assert out.shape == (2, 512)


@pytest.mark.slow
def test_vit_l14_config_builds_and_trains_one_step_on_cpu():
    from simsearch.losses import LossWrapper, build_loss
    from simsearch.optim import build_optimizer

    cfg = load([CONFIGS / "vit_l14_circle.yaml"], ["model.pretrained=null"])
    model = build_model(cfg)
    assert model.backbone.num_layers == 24
    loss = LossWrapper(build_loss(cfg, 2, 512))
    opt = build_optimizer(model, loss, 1e-4, 0.75, 0.05)
    x, y = torch.randn(4, 3, 224, 224), torch.tensor([0, 0, 1, 1])
    value = loss(model.train()(x), y)
    value.backward()
    opt.step()
    assert torch.isfinite(value)
