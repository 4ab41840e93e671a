"""Multi-crop, coarse-to-fine and text fusion through tools/infer.py, the ablation and tools/search.py,
on a tiny trained checkpoint."""
import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tools.index import main as index_main
from tools.infer import main as infer_main
from tools.search import main as search_main

from conftest import CONFIGS, make_class_folder, train_tiny_checkpoint
from simsearch.config import load
from simsearch.data.io import load_image
from simsearch.inference.predict import run_inference

WORDS = ["red dress", "blue jeans", "leather boots", "wool scarf", "silver ring", "straw hat"]


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    """Checkpoint, query/gallery of unseen images, ground truth, and a titles CSV (class words)."""
    root = tmp_path_factory.mktemp("enh")
    train_tiny_checkpoint(root, n_classes=6)
    test = make_class_folder(root / "testsrc", n_classes=6, per_class=4, seed=5)
    (root / "query").mkdir()
    (root / "gallery").mkdir()
    gt, rows, word_of_pixels = {}, [], {}
    for c, cls in enumerate(sorted(test.iterdir())):
        imgs = sorted(cls.iterdir())
        names = [("query", f"q_{c:03d}.jpg")] + [("gallery", f"g_{c:03d}_{i}.jpg") for i in range(3)]
        for img, (split, name) in zip(imgs, names):
            shutil.copy(img, root / split / name)
            rows.append((f"{split}/{name}", WORDS[c]))
            word_of_pixels[_digest(root / split / name)] = WORDS[c]
        gt[names[0][1]] = [n for _, n in names[1:]]
    (root / "gt.json").write_text(json.dumps(gt))
    with open(root / "titles.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "title"), *rows])
    return {"root": root, "ckpt": root / "runs/tiny_test/best", "gt": gt, "words": word_of_pixels}


def _digest(path: Path) -> str:
    return hashlib.sha256(np.asarray(load_image(path)).tobytes()).hexdigest()


def _infer(comp, out: Path, *extra: str) -> int:
    r = comp["root"]
    return infer_main(["--checkpoint", str(comp["ckpt"]), "--query-dir", str(r / "query"), "--gallery-dir",
                       str(r / "gallery"), "--out", str(out), "infer.cache_dir=null", *extra])


def _sub(path: Path) -> dict:
    return json.loads(path.read_text())


def test_multicrop_with_only_the_whole_image_equals_the_plain_search(comp, tmp_path):
    assert _infer(comp, tmp_path / "plain.json") == 0
    assert _infer(comp, tmp_path / "one.json", "infer.multicrop.enabled=true", "infer.multicrop.max_crops=1") == 0
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "plain.json").read_bytes()


@pytest.mark.parametrize("fusion", ["rrf", "max"])
def test_multicrop_grid_through_infer(comp, tmp_path, fusion):
    out = tmp_path / "mc.json"
    assert _infer(comp, out, "--add-config", str(CONFIGS / "multicrop.yaml"), f"infer.multicrop.fusion={fusion}",
                  "infer.rerank=false") == 0
    sub, meta = _sub(out), json.loads((tmp_path / "mc.meta.json").read_text())
    assert sorted(sub) == sorted(comp["gt"]) and all(len(set(r)) == len(r) == 10 for r in sub.values())
    assert meta["sizes"]["query_crops"] == 6 * 5  # whole image + centre + 2x2 grid
    assert meta["enhancements"]["multicrop"]["fusion"] == fusion and "fusion_s" in meta["timings_s"]
    # the companion of the whole-image-only test above: with real crops the rankings change
    assert _infer(comp, tmp_path / "plain.json", "infer.rerank=false") == 0
    assert sub != _sub(tmp_path / "plain.json")


def test_bad_enhancement_config_stops_before_work_naming_the_key(comp, tmp_path, capsys):
    assert _infer(comp, tmp_path / "x.json", "infer.multicrop.enabled=true", "infer.multicrop.fusion=mean") == 2
    assert "infer.multicrop.fusion" in capsys.readouterr().err
    assert _infer(comp, tmp_path / "x.json", "infer.second_stage.enabled=true") == 2
    assert "infer.second_stage.checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_second_stage_with_the_same_model_keeps_the_order(comp, tmp_path):
    assert _infer(comp, tmp_path / "first.json", "infer.rerank=false") == 0
    assert _infer(comp, tmp_path / "c2f.json", "infer.rerank=false", "infer.second_stage.enabled=true",
                  f"infer.second_stage.checkpoint={comp['ckpt']}", "infer.second_stage.weight=0.7") == 0
    assert _sub(tmp_path / "c2f.json") == _sub(tmp_path / "first.json")


def test_second_stage_with_another_model_only_reorders_the_top_n(comp, tmp_path):
    common = ["infer.rerank=false", "infer.top_k=10"]
    assert _infer(comp, tmp_path / "first.json", *common) == 0
    assert _infer(comp, tmp_path / "c2f.json", *common, "infer.second_stage.enabled=true",
                  f"infer.second_stage.config={CONFIGS / 'tiny_test.yaml'}", "infer.second_stage.weight=1.0",
                  "infer.second_stage.candidates=5") == 0
    first, c2f = _sub(tmp_path / "first.json"), _sub(tmp_path / "c2f.json")
    assert c2f != first  # a random-init model disagrees with the trained one somewhere
    for q in first:
        assert sorted(c2f[q][:5]) == sorted(first[q][:5]) and c2f[q][5:] == first[q][5:]
    meta = json.loads((tmp_path / "c2f.meta.json").read_text())
    assert "tiny_test.yaml" in meta["enhancements"]["second_stage"]["model"]


def test_text_fusion_with_titles_ranks_same_title_items_first(comp, tmp_path):
    out = tmp_path / "text.json"
    assert _infer(comp, out, "--add-config", str(CONFIGS / "text_fusion.yaml"),
                  f"infer.text.titles_csv={comp['root'] / 'titles.csv'}", "infer.text.weight=1.0",
                  "infer.top_k=all", "infer.rerank=false") == 0
    for q, ranked in _sub(out).items():
        assert sorted(ranked[:3]) == sorted(comp["gt"][q])  # titles alone are a perfect ranker here


def test_text_fusion_with_an_injected_captioner(comp, tmp_path):
    words = comp["words"]

    def oracle_captioner(images):  # a "perfect" captioner: the class word of each image's pixels
        return [words[hashlib.sha256(np.asarray(im).tobytes()).hexdigest()] for im in images]

    r = comp["root"]
    cfg = load([comp["ckpt"] / "config.yaml"], ["infer.text.enabled=true", "infer.text.captioner=injected",
                                                 "infer.text.weight=1.0", "infer.top_k=all", "infer.rerank=false",
                                                 "infer.cache_dir=null"])
    meta = run_inference(cfg, comp["ckpt"], r / "query", r / "gallery", tmp_path / "cap.json",
                         captioner=oracle_captioner)
    assert meta["enhancements"]["text"]["weight"] == 1.0
    for q, ranked in _sub(tmp_path / "cap.json").items():
        assert sorted(ranked[:3]) == sorted(comp["gt"][q])


def test_ablation_has_a_row_per_enhancement(comp, tmp_path, capsys):
    r = comp["root"]
    md = tmp_path / "ablation.md"
    assert infer_main(["--checkpoint", str(comp["ckpt"]), "--query-dir", str(r / "query"), "--gallery-dir",
                       str(r / "gallery"), "--ablate", "--ground-truth", str(r / "gt.json"),
                       "--ablate-out", str(md),
                       "--add-config", str(CONFIGS / "multicrop.yaml"),
                       "--add-config", str(CONFIGS / "text_fusion.yaml"),
                       f"infer.text.titles_csv={r / 'titles.csv'}", "infer.text.weight=1.0",
                       "infer.second_stage.enabled=true", f"infer.second_stage.checkpoint={comp['ckpt']}"]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in md.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    names = list(rows)
    assert names[:5] == ["baseline", "+TTA", "+QE (alpha, k=2)", "+re-ranking (k1=4, k2=2, λ=0.3)", "all"]
    assert names[5:] == ["+multi-crop (grid, rrf, ≤5 crops)", "+coarse-to-fine (N=100, w=0.5)",
                         "+text (N=100, w=1.0)", "all + multi-crop + coarse-to-fine + text"]
    # the same model as second stage, on plain cosines, changes nothing; perfect titles give mAP 1
    assert rows["+coarse-to-fine (N=100, w=0.5)"] == rows["baseline"]
    assert float(rows["+text (N=100, w=1.0)"][2]) == pytest.approx(1.0)
    assert "+multi-crop" in capsys.readouterr().out


def test_search_multicrop_on_a_tiny_index(comp, tmp_path, capsys):
    r = comp["root"]
    assert index_main(["build", "--checkpoint", str(comp["ckpt"]), "--images", str(r / "gallery"),
                       "--out", str(tmp_path / "idx")]) == 0
    query = str(r / "query" / "q_000.jpg")
    capsys.readouterr()
    assert search_main(["--index", str(tmp_path / "idx"), "--query-image", query, "--top-k", "5"]) == 0
    plain = [line.split()[2] for line in capsys.readouterr().out.splitlines()]
    assert search_main(["--index", str(tmp_path / "idx"), "--query-image", query, "--top-k", "5",
                        "--multicrop", "grid", "--max-crops", "1"]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()] == plain
    grid = tmp_path / "grid.png"
    assert search_main(["--index", str(tmp_path / "idx"), "--query-image", query, "--top-k", "5",
                        "--multicrop", "grid", "--fusion", "max", "--grid", str(grid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and grid.is_file()
    assert search_main(["--index", str(tmp_path / "idx"), "--query-text", "x", "--multicrop", "grid"]) == 2
