import numpy as np
import pytest
import torch
from tools.export import main as export_main

from conftest import CONFIGS, train_tiny_checkpoint
from simsearch.config import load
from simsearch.models import build_model
from simsearch.models.checkpoint import load_model, save_checkpoint
from simsearch.models.export import export_onnx, onnx_embed, onnx_metadata


def _checkpoint(root, backbone: str, size: int, gem_p: float = 4.2):
    """A checkpoint of a random-init model whose GeM p and BatchNorm statistics are not the defaults."""
    cfg = load([CONFIGS / "tiny_test.yaml"], [f"model.backbone={backbone}", f"data.image_size={size}"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.pool.p.fill_(gem_p)
        model.head.bn.running_mean.normal_()
        model.head.bn.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(root / "best", model, torch.nn.Identity(), cfg, {"epoch": 0})


def _assert_matches_torch(checkpoint, onnx_path, size):
    model, _ = load_model(checkpoint)
    for batch in (1, 3):  # dynamic batch: neither size is the traced one (2)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x).numpy()
        got = onnx_embed(onnx_path, x.numpy())
        assert got.shape == (batch, model.embed_dim)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_tiny_vit_checkpoint_exports_through_the_tool(tmp_path, capsys):
    ckpt = train_tiny_checkpoint(tmp_path, n_classes=4)
    out = tmp_path / "model.onnx"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "dynamo exporter" in capsys.readouterr().out
    _assert_matches_torch(ckpt, out, 32)
    meta = onnx_metadata(out)
    assert meta["input_size"] == 32 and meta["embed_dim"] == 16
    assert meta["backbone"] == "open_clip:ViT-Tiny-Test" and len(meta["checkpoint_sha256"]) == 64
    assert not (tmp_path / "model.onnx.data").exists()  # small models keep their weights inside


@pytest.mark.parametrize("backbone,size", [("timm:test_efficientnet", 64), ("vae:tiny", 32)])
def test_cnn_and_vae_with_learned_gem_p_export(tmp_path, backbone, size):
    ckpt = _checkpoint(tmp_path, backbone, size)
    info = export_onnx(ckpt, tmp_path / "m.onnx")
    assert max(info["max_abs_diff"].values()) < 1e-4
    _assert_matches_torch(ckpt, tmp_path / "m.onnx", size)
    assert onnx_metadata(tmp_path / "m.onnx")["mean"] == list(load_model(ckpt)[0].data_config.mean)


def test_gem_p_is_in_the_graph_not_a_default(tmp_path):
    """Two checkpoints that differ only in GeM's p must export to models that differ."""
    a = export_onnx(_checkpoint(tmp_path / "a", "vae:tiny", 32, gem_p=6.0), tmp_path / "a.onnx")
    b = export_onnx(_checkpoint(tmp_path / "b", "vae:tiny", 32, gem_p=1.0), tmp_path / "b.onnx")
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    assert np.abs(onnx_embed(a["out"], x) - onnx_embed(b["out"], x)).max() > 0.05


def test_torchscript_exporter_also_matches(tmp_path):
    ckpt = _checkpoint(tmp_path, "timm:test_efficientnet", 64)
    export_onnx(ckpt, tmp_path / "m.onnx", exporter="torchscript", opset=17)
    _assert_matches_torch(ckpt, tmp_path / "m.onnx", 64)


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "timm:test_efficientnet", 64)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the user's file")
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "m.onnx exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's file"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out), "--force"]) == 0
    assert onnx_metadata(out)["embed_dim"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "m.onnx"]  # no temp files left


def test_missing_checkpoint_is_named(tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "nope/model.safetensors not found" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_mismatch_writes_nothing(tmp_path, monkeypatch):
    import simsearch.models.export as export

    ckpt = _checkpoint(tmp_path, "timm:test_efficientnet", 64)
    monkeypatch.setattr(export, "onnx_embed", lambda path, x: np.zeros((len(x), 16), np.float32))
    with pytest.raises(RuntimeError, match="ONNX check failed at batch 1"):
        export_onnx(ckpt, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_lora_checkpoint_exports_with_the_adapters_merged(tmp_path):
    """A LoRA run's checkpoint holds base weights + adapters; the export must embed like the trained model."""
    import onnx
    import peft  # noqa: F401  (the lora extra)
    cfg = load([CONFIGS / "tiny_test.yaml"], ["model.lora.enabled=true"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # peft starts lora_B at zero (a no-op); make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    ckpt = save_checkpoint(tmp_path / "best", model, torch.nn.Identity(), cfg, {"epoch": 0})
    export_onnx(ckpt, tmp_path / "m.onnx")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(onnx_embed(tmp_path / "m.onnx", x.numpy()), want, atol=1e-4, rtol=0)
    assert not any("lora" in t.name for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer)
