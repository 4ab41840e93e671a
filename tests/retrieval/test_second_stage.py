"""Coarse-to-fine: options, the shipped configs, and the second model's embedding cache."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONFIGS
from simsearch.config import ConfigError, load
from simsearch.models import build_model
from simsearch.retrieval.second_stage import SecondStage, SecondStageOptions, resolve_config_path


@pytest.mark.parametrize("section, match", [
    ({"enabled": True}, "exactly one of infer.second_stage.checkpoint"),
    ({"enabled": True, "checkpoint": "a", "config": "b"}, "exactly one of"),
    ({"enabled": True, "checkpoint": "a", "weight": -0.1}, "infer.second_stage.weight"),
    ({"enabled": True, "checkpoint": "a", "candidates": 0}, "infer.second_stage.candidates"),
])
def test_bad_options_name_the_key(section, match):
    with pytest.raises(ValueError, match=match):
        SecondStageOptions.from_config(section)


def test_shipped_coarse_to_fine_config_names_mobilevit_which_builds():
    cfg = load([CONFIGS / "coarse_to_fine.yaml"])
    opts = SecondStageOptions.from_config(cfg.infer.second_stage)
    assert opts.enabled and opts.weight == 0.5 and opts.candidates == 100
    path = resolve_config_path(opts.config)
    assert path.resolve() == CONFIGS / "mobilevit_xxs.yaml"
    second = load([path], ["model.pretrained=null"])  # timm's weights need a download; the model builds
    model = build_model(second).eval()
    assert second.model.backbone == "timm:mobilevit_xxs" and second.data.image_size == 256
    with torch.no_grad():
        emb = model(torch.rand(1, 3, 64, 64))
    assert emb.shape == (1, 512) and torch.allclose(emb.norm(dim=1), torch.ones(1), atol=1e-5)


def test_resolve_config_path_falls_back_to_the_configs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("tiny_test.yaml") == CONFIGS / "tiny_test.yaml"
    with pytest.raises(ConfigError, match="infer.second_stage.config: config file not found: nope.yaml"):
        resolve_config_path("nope.yaml")


class _Counting(torch.nn.Module):
    """A stand-in embedding model: mean colour, counting the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.embed_dim, self.seen = 3, 0
        self.data_config = OmegaConf.create({"input_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]})

    def forward(self, x):
        self.seen += len(x)
        return torch.nn.functional.normalize(x.mean(dim=(2, 3)) * self.w, dim=1)


def test_second_stage_embeds_only_candidates_once_and_scores_them(tmp_path):
    colours = {"q": (255, 0, 0), "a": (250, 10, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    for name, rgb in colours.items():
        Image.new("RGB", (8, 8), rgb).save(tmp_path / f"{name}.png")
    model = _Counting()
    cfg = OmegaConf.create({"data": {"image_size": None, "eval_resize_ratio": 1.0}})
    stage = SecondStage(model, cfg, SecondStageOptions(enabled=True, checkpoint="x", candidates=2))
    gallery = [str(tmp_path / f"{n}.png") for n in "abc"]
    ids = np.array([[1, 0, 2]])  # first stage: b, a, c; the head is {b, a}
    sims = stage.scores([str(tmp_path / "q.png")], gallery, ids)
    assert model.seen == 3  # the query, b and a; never c
    assert sims.shape == (1, 2) and sims[0, 1] > 0.99 and sims[0, 0] < 0.1  # a is red like the query
    stage.scores([str(tmp_path / "q.png")], gallery, ids)
    assert model.seen == 3  # cached
