"""Siamese, classifier (CE, ArcFace) and domain-augmentation configs: train, resume, infer, end to end.

Each shipped config runs through the real tools/train.py and tools/infer.py with the tiny
random-init model of configs/tiny_test.yaml layered on top (it replaces the backbone and batch size).
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tools.infer import main as infer_main
from tools.train import main as train_main

from conftest import CONFIGS, make_class_folder

TINY = str(CONFIGS / "tiny_test.yaml")
# tiny_test has no image_size, so the shipped configs' 160 px would reach the 32 px ViT
SMALL = ["data.image_size=null", "train.eval_at_start=false", "train.epochs=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Training classes, plus a query/gallery split of unseen images of the same patterns."""
    root = tmp_path_factory.mktemp("zoo")
    make_class_folder(root / "train", n_classes=6, per_class=6, seed=0)
    test = make_class_folder(root / "testsrc", n_classes=6, per_class=3, seed=5)
    for sub in ("query", "gallery"):
        (root / sub).mkdir()
    for c, cls in enumerate(sorted(test.iterdir())):
        first, *rest = sorted(cls.iterdir())
        shutil.copy(first, root / "query" / f"q_{c}.jpg")
        for i, img in enumerate(rest):
            shutil.copy(img, root / "gallery" / f"g_{c}_{i}.jpg")
    return root


def _train_resume_infer(data: Path, tmp_path: Path, config: str, *args: str) -> Path:
    """One epoch, a resumed second epoch, then a submission; returns the run folder."""
    common = ["--config", str(CONFIGS / config), "--config", TINY, *SMALL, *args,
              f"train.output_dir={tmp_path / 'runs'}", "run_name=zoo"]
    assert train_main(common) == 0
    run = tmp_path / "runs" / "zoo"
    assert torch.load(run / "last" / "train_state.pt", weights_only=True)["epoch"] == 1
    assert train_main([*common, "--resume", "train.epochs=2"]) == 0
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    out = tmp_path / "sub.json"
    assert infer_main(["--checkpoint", str(run / "best"), "--query-dir", str(data / "query"),
                       "--gallery-dir", str(data / "gallery"), "--out", str(out),
                       f"infer.cache_dir={tmp_path / 'cache'}"]) == 0
    sub = json.loads(out.read_text())
    assert sorted(sub) == [f"q_{c}.jpg" for c in range(6)]
    assert all(len(ranked) == 10 for ranked in sub.values())
    return run


def test_siamese_pairs_train_resume_infer(data, tmp_path):
    run = _train_resume_infer(data, tmp_path, "siamese.yaml", f"data.train_dir={data / 'train'}")
    state = torch.load(run / "last" / "train_state.pt", weights_only=True)
    assert state["sampler"]["sampler"] == "pairs" and state["epoch"] == 2
    assert "loss.safetensors" not in {p.name for p in (run / "last").iterdir()}  # no parameters


@pytest.mark.parametrize("config,weight", [("classifier_ce.yaml", "loss.classifier.weight"),
                                           ("arcface.yaml", "loss.W")])
def test_classifier_train_resume_infer(data, tmp_path, config, weight):
    run = _train_resume_infer(data, tmp_path, config, f"data.train_dir={data / 'train'}")
    # the classifier lives in the loss checkpoint; the model's output (16-d here) is the embedding
    shape = tuple(load_file(str(run / "last" / "loss.safetensors"))[weight].shape)
    assert sorted(shape) == [6, 16]


def test_domain_aug_manifest_train_resume_infer(data, tmp_path):
    rows = ["path,label,domain"]
    for cls in sorted((data / "train").iterdir()):
        for i, img in enumerate(sorted(cls.iterdir())):
            rows.append(f"{img.relative_to(data)},{cls.name},{'query' if i % 3 == 0 else 'gallery'}")
    manifest = data / "train_domains.csv"
    manifest.write_text("\n".join(rows) + "\n")
    run = _train_resume_infer(data, tmp_path, "domain_aug.yaml", f"data.train_csv={manifest}",
                              "data.val_split=image")
    log = (run / "train.log").read_text()
    n_train = int(re.search(r"data: 6 classes, (\d+) training", log).group(1))
    n_query, n_gallery = map(int, re.search(r"domain augmentation: (\d+) query-domain \(strong\) and "
                                            r"(\d+) gallery-domain \(light\)", log).groups())
    assert n_query + n_gallery == n_train and 0 < n_query < n_gallery  # a third are street photos


@pytest.mark.parametrize("overrides,message", [
    (["data.sampler=pairs", "loss.name=arcface", "loss.miner=null"],
     "loss.name=arcface does not learn from pairs"),
    (["data.domain_aug=true"], "data.domain_aug=true with data.train_dir needs data.query_domain_pattern"),
])
def test_bad_combinations_stop_before_any_work(data, tmp_path, capsys, overrides, message):
    assert train_main(["--config", TINY, f"data.train_dir={data / 'train'}",
                       f"train.output_dir={tmp_path / 'runs'}", *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
