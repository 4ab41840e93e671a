"""The offline demo competition: caltech101-like layout, no shared bytes, deterministic, safe."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import skimage  # noqa: F401  (the `offline` extra; missing, the file fails to import instead of skipping)

from simsearch.data.demo import build_demo_competition

VIEWS = 3  # fewer views than the default keeps each build around a second


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "comp"
    return out, build_demo_competition(out, seed=0, views_per_item=VIEWS)


def test_layout_and_ground_truth(built: tuple[Path, dict]) -> None:
    out, info = built
    classes = sorted(p for p in (out / "training").iterdir())
    assert classes and all(p.is_dir() and p.name.startswith("item_") for p in classes)
    assert all(len(list(p.glob("*.jpg"))) >= 2 for p in classes)
    queries = {p.name for p in (out / "test" / "query").iterdir()}
    gallery = {p.name for p in (out / "test" / "gallery").iterdir()}
    assert all(n.startswith("q_") and n.endswith(".jpg") for n in queries)
    assert all(n.startswith("g_") and n.endswith(".jpg") for n in gallery)
    truth = json.loads((out / "test" / "ground_truth.json").read_text())
    assert set(truth) == queries
    assert all(rel and set(rel) <= gallery for rel in truth.values())
    assert set().union(*map(set, truth.values())) == gallery  # no unjudged gallery image
    assert info["train_items"] == len(classes) and info["queries"] == len(queries)
    assert info["gallery"] == len(gallery) == info["test_items"] * (VIEWS - 1)
    assert info["items"] == info["train_items"] + info["test_items"] >= 60
    assert info["train_images"] == info["train_items"] * VIEWS
    readme = (out / "README.md").read_text()
    assert "scikit-image" in readme and str(info["queries"]) in readme


def test_no_bytes_shared_between_splits(built: tuple[Path, dict]) -> None:
    out, _ = built
    digests = _hashes(out / "training") | _hashes(out / "test" / "query") | _hashes(out / "test" / "gallery")
    groups = [set(_hashes(out / d).values()) for d in ("training", "test/query", "test/gallery")]
    assert sum(len(g) for g in groups) == len(set(digests.values()))  # also: no duplicate within a split
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_deterministic_per_seed(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    again = tmp_path / "again"
    build_demo_competition(again, seed=0, views_per_item=VIEWS)
    assert _hashes(again) == _hashes(out)
    other = tmp_path / "other"
    build_demo_competition(other, seed=1, views_per_item=VIEWS)
    assert set(_hashes(other).values()).isdisjoint(
        h for k, h in _hashes(out).items() if k.endswith(".jpg"))


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "comp"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="comp"):
        build_demo_competition(out, views_per_item=2)
    assert (out / "keep.txt").read_text() == "mine"
    info = build_demo_competition(out, views_per_item=2, force=True)
    assert not (out / "keep.txt").exists() and (out / "README.md").is_file()
    assert info["out_dir"] == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comp"]  # no temporary folder left


def test_cli_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.make_demo_data import main

    out = tmp_path / "cli"
    assert main(["--out", str(out), "--views-per-item", "2"]) == 0
    assert "queries:" in capsys.readouterr().out and (out / "test" / "ground_truth.json").is_file()
    assert main(["--out", str(out), "--views-per-item", "2"]) == 1


def test_view_style_changes_the_views_and_is_recorded(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from simsearch.data.demo import ViewStyle, _render_view

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))

    def view(style: ViewStyle) -> bytes:
        return _render_view(photo, 0, (50, 50, 250, 250), np.random.default_rng(1), style)

    easy, hard = ViewStyle(min_area=1.0, max_rotation=0.0), ViewStyle(min_area=0.3, max_rotation=40.0)
    assert view(easy) == view(easy) and view(easy) != view(hard)
    assert Image.open(io.BytesIO(view(hard))).size[0] <= 160
    out = tmp_path / "hard"
    build_demo_competition(out, views_per_item=2, crop_grid=1, style=hard)
    assert "min_area 0.3, max_rotation 40" in (out / "README.md").read_text()


def test_bad_view_style_is_refused(tmp_path: Path) -> None:
    from simsearch.data.demo import ViewStyle

    with pytest.raises(ValueError, match="min_area must be in"):
        build_demo_competition(tmp_path / "x", views_per_item=2, style=ViewStyle(min_area=0.0))


def test_seen_item_protocol(tmp_path: Path) -> None:
    """Every item trains on 3 views; each test query's relevant images are its item's other views."""
    out = tmp_path / "seen"
    info = build_demo_competition(out, seed=0, views_per_item=5, crop_grid=1, seen_items=3)
    items = sorted((out / "training").iterdir())
    assert len(items) == info["items"] == info["train_items"]
    assert all(len(list(d.glob("*.jpg"))) == 3 for d in items)
    truth = json.loads((out / "test" / "ground_truth.json").read_text())
    assert len(truth) == info["queries"] == info["test_items"]
    assert all(len(rel) == 5 - 3 - 1 for rel in truth.values())
    hashes = _hashes(out)
    train = {h for k, h in hashes.items() if k.startswith("training/")}
    test = {h for k, h in hashes.items() if k.startswith("test/") and k.endswith(".jpg")}
    assert train.isdisjoint(test)
    assert "Seen items (a known catalogue)" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="seen_items=4 must leave at least 2 views"):
        build_demo_competition(tmp_path / "bad", views_per_item=5, seen_items=4)
