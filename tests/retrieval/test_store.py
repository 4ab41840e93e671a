"""Index folders, incremental add, image and text search, result grids, on a tiny trained checkpoint."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from tools.grid import main as grid_main
from tools.index import main as index_main
from tools.search import main as search_main

from conftest import make_class_folder, train_tiny_checkpoint
from simsearch.apps.grid import GREEN, QUERY_BLUE, RED, grid_size, result_grid, submission_grid, tile_box
from simsearch.retrieval.store import (
    add_to_index,
    build_index_dir,
    list_images,
    load_index_dir,
    require_text_search,
    search_index,
    search_text,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny trained OpenCLIP checkpoint, a nested catalogue of unseen images and its Flat index."""
    root = tmp_path_factory.mktemp("index")
    ckpt = train_tiny_checkpoint(root, n_classes=4)
    catalog = make_class_folder(root / "catalog", n_classes=4, per_class=3, seed=5)
    assert index_main(["build", "--checkpoint", str(ckpt), "--images", str(catalog),
                       "--out", str(root / "idx"), "infer.tta_flip=false"]) == 0
    return {"root": root, "ckpt": ckpt, "catalog": catalog, "index": root / "idx"}


def _png(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _copy_index(built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built["index"], tmp_path / "idx"))


def test_build_writes_consistent_files_and_manifest(built):
    idx = built["index"]
    for name in ("embeddings.npy", "ids.json", "index.faiss", "manifest.json", "clip_image_emb.npy"):
        assert (idx / name).is_file(), name
    m = json.loads((idx / "manifest.json").read_text())
    assert m["count"] == 12 and m["dim"] == 16 and m["factory"] == "Flat"
    assert len(m["checkpoint_sha256"]) == 64 and m["simsearch_version"] and m["created"]
    assert m["images_dir"] == str(built["catalog"].resolve())
    assert m["config"]["model"]["backbone"] == "open_clip:ViT-Tiny-Test"
    assert m["embedding"]["tta_flip"] is False  # the override reached the embedding settings
    loaded = load_index_dir(idx)
    assert loaded.ids == list_images(built["catalog"]) and loaded.ids[0] == "class_00/img_00.jpg"
    assert loaded.emb.shape == (12, 16) and loaded.clip_emb.shape == (12, 32)
    assert np.allclose(np.linalg.norm(loaded.emb, axis=1), 1.0, atol=1e-5)


def test_gallery_image_finds_itself_first(built):
    loaded = load_index_dir(built["index"])
    for image_id in ("class_00/img_01.jpg", "class_03/img_02.jpg"):
        query = built["catalog"] / image_id
        hits = search_index(loaded, query, top_k=5)
        assert len(hits) == 5 and hits[0].path == str(query.resolve())
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_build_refuses_existing_folder_and_non_index_folders(built, tmp_path):
    with pytest.raises(FileExistsError, match="--force"):
        build_index_dir(built["ckpt"], built["catalog"], built["index"])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an index folder"):
        build_index_dir(built["ckpt"], built["catalog"], precious, force=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_index_dir(precious)


def test_add_embeds_only_new_images_and_keeps_old_rows(built, tmp_path):
    idx = _copy_index(built, tmp_path)
    before = load_index_dir(idx)
    new = make_class_folder(tmp_path / "new", n_classes=1, per_class=2, seed=9)
    manifest = add_to_index(idx, [built["catalog"], new])  # the catalogue's images are skipped
    after = load_index_dir(idx)
    assert manifest["count"] == 14 and after.index.ntotal == 14 and len(after.ids) == 14
    assert after.emb[:12].tobytes() == before.emb.tobytes()
    assert after.clip_emb[:12].tobytes() == before.clip_emb.tobytes()
    assert after.ids[:12] == before.ids and after.ids[12] == (new / "class_00/img_00.jpg").resolve().as_posix()
    query = new / "class_00/img_01.jpg"
    hits = search_index(after, query, top_k=3)
    assert hits[0].path == str(query.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert index_main(["add", "--index", str(idx), "--images", str(new)]) == 0  # nothing new
    assert load_index_dir(idx).index.ntotal == 14


def test_add_appends_a_shard_and_searches_like_a_fresh_build(built, tmp_path):
    """The same images, indexed in two steps (build, then add) or in one: the same hits, the same scores."""
    images = Path(shutil.copytree(built["catalog"], tmp_path / "images"))
    two_step, one_step = tmp_path / "two", tmp_path / "one"
    build = ["build", "--checkpoint", str(built["ckpt"]), "--images", str(images), "infer.tta_flip=false",
             "infer.index=Flat", "--out"]
    assert index_main([*build, str(two_step)]) == 0
    make_class_folder(images / "new", n_classes=2, per_class=2, seed=9)  # new images in the catalogue
    old = {n: (two_step / n).stat().st_mtime_ns for n in ("embeddings.npy", "ids.json", "clip_image_emb.npy")}
    assert index_main(["add", "--index", str(two_step), "--images", str(images / "new")]) == 0
    assert {n: (two_step / n).stat().st_mtime_ns for n in old} == old  # the old shard is not rewritten
    assert (two_step / "embeddings-00001.npy").is_file() and (two_step / "ids-00001.json").is_file()
    manifest = json.loads((two_step / "manifest.json").read_text())
    assert manifest["shards"][1]["rows"] == 4  # 4 rows on 12: over a quarter, so the FAISS index was rewritten
    assert manifest["index_file"] == "index-00001.faiss" and not (two_step / "index.faiss").exists()
    assert index_main([*build, str(one_step)]) == 0
    a, b = load_index_dir(two_step), load_index_dir(one_step)
    assert a.index.ntotal == b.index.ntotal == 16 and sorted(a.ids) == sorted(b.ids)
    for image_id in ("new/class_01/img_00.jpg", "class_02/img_01.jpg"):
        hits_a, hits_b = (search_index(x, images / image_id, top_k=16) for x in (a, b))
        assert [h.path for h in hits_a] == [h.path for h in hits_b]
        assert [h.score for h in hits_a] == pytest.approx([h.score for h in hits_b], abs=1e-5)


def test_add_refuses_another_checkpoint_naming_both_hashes(built, tmp_path, capsys):
    idx = _copy_index(built, tmp_path)
    other = Path(shutil.copytree(built["ckpt"], tmp_path / "other"))
    weights = load_file(str(other / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, str(other / "model.safetensors"))
    sha = json.loads((idx / "manifest.json").read_text())["checkpoint_sha256"]
    from simsearch.models.checkpoint import checkpoint_hash

    other_sha = checkpoint_hash(other)
    with pytest.raises(ValueError, match="refusing to add to") as exc:
        add_to_index(idx, built["catalog"], checkpoint=other)
    assert sha in str(exc.value) and other_sha in str(exc.value)
    assert index_main(["add", "--index", str(idx), "--images", str(built["catalog"]),
                       "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and sha in err and other_sha in err
    assert load_index_dir(idx).index.ntotal == 12


@pytest.mark.parametrize("factory", ["HNSW32", "IVF2,Flat"])
def test_other_factories_build_search_and_add(built, tmp_path, factory):
    idx = tmp_path / "idx"
    m = build_index_dir(built["ckpt"], built["catalog"], idx, factory=factory, clip_features=False)
    assert m["factory"] == factory and m["clip"] is None and not (idx / "clip_image_emb.npy").exists()
    query = built["catalog"] / "class_02/img_00.jpg"
    hits = search_index(idx, query, top_k=4)
    assert hits[0].path == str(query.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    new = make_class_folder(tmp_path / "new", n_classes=1, per_class=1, seed=11)
    assert add_to_index(idx, new)["count"] == 13
    loaded = load_index_dir(idx)
    assert loaded.index.ntotal == 13
    with pytest.raises(ValueError, match="without CLIP image features"):
        search_text(loaded, "red dress")


def test_search_cli_prints_ranked_paths_and_saves_a_grid(built, tmp_path, capsys):
    query = built["catalog"] / "class_01/img_00.jpg"
    png = tmp_path / "grid.png"
    assert search_main(["--index", str(built["index"]), "--query-image", str(query), "--top-k", "4",
                        "--grid", str(png), "--thumb", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ranked = [line.split() for line in lines if not line.startswith("grid:")]
    assert len(ranked) == 4 and ranked[0][0] == "1" and ranked[0][2] == str(query.resolve())
    assert float(ranked[0][1]) == pytest.approx(1.0, abs=1e-3)
    assert _png(png).size == grid_size(1, 5, thumb=64)
    assert search_main(["--index", str(built["index"]), "--query-image", str(query), "--grid", str(png)]) == 2
    assert "--force" in capsys.readouterr().err
    assert search_main(["--index", str(built["index"]), "--query-image", str(tmp_path / "nope.jpg")]) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_result_grid_marks_hits_green_and_misses_red(built, tmp_path):
    cat = built["catalog"]
    results = [(str(cat / "class_00/img_01.jpg"), 0.9), (str(cat / "class_01/img_00.jpg"), 0.5),
               (str(cat / "class_00/img_02.jpg"), 0.4)]
    out = tmp_path / "r.png"
    relevant = {"img_01.jpg", str(cat / "class_00/img_02.jpg")}  # a name and a full path
    result_grid(cat / "class_00/img_00.jpg", results, out, relevant=relevant, thumb=48)
    img = _png(out)
    assert img.size == grid_size(1, 4, thumb=48)
    expected = [QUERY_BLUE, GREEN, RED, GREEN]
    for col, colour in enumerate(expected):
        x0, y0, x1, y1 = tile_box(0, col, thumb=48)
        assert img.getpixel((x0 + 1, y0 + 1)) == colour and img.getpixel((x1 - 1, y1 - 1)) == colour
    with pytest.raises(FileExistsError):
        result_grid(cat / "class_00/img_00.jpg", results, out)
    result_grid(None, results[:1], out, thumb=48, force=True, query_text="red summer dress")
    assert _png(out).size == grid_size(1, 2, thumb=48)


def test_submission_grid(built, tmp_path, capsys):
    cat = built["catalog"]
    qdir, gdir = cat / "class_00", cat / "class_01"
    sub = {"img_00.jpg": ["img_00", "img_01.jpg", "missing.jpg"], "img_01.jpg": ["img_02.jpg", "img_00.jpg"],
           "img_02.jpg": ["img_01.jpg"]}
    gt = {"img_00.jpg": ["img_01.jpg"], "img_01.jpg": ["img_00"]}
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = submission_grid(tmp_path / "sub.json", qdir, gdir, tmp_path / "s.png", first_n=2, top_k=3,
                          ground_truth=tmp_path / "gt.json", thumb=32)
    img = _png(out)
    assert img.size == grid_size(2, 4, thumb=32)
    colours = {(0, 1): RED, (0, 2): GREEN, (0, 3): RED, (1, 1): RED, (1, 2): GREEN}
    for (row, col), colour in colours.items():
        x0, y0, _, _ = tile_box(row, col, thumb=32)
        assert img.getpixel((x0 + 1, y0 + 1)) == colour, (row, col)
    args = ["--submission", str(tmp_path / "sub.json"), "--query-dir", str(qdir), "--gallery-dir", str(gdir),
            "--out", str(tmp_path / "s.png"), "--thumb", "32"]
    assert grid_main(args) == 2 and "--force" in capsys.readouterr().err
    assert grid_main([*args, "--force", "--first-n", "3"]) == 0
    assert _png(tmp_path / "s.png").size == grid_size(3, 4, thumb=32)


def test_text_search_on_a_clip_backbone(built, tmp_path, capsys):
    hits = search_text(built["index"], "red summer dress", top_k=5)
    assert len(hits) == 5 and len({h.path for h in hits}) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(-1.0 - 1e-5 <= h.score <= 1.0 + 1e-5 for h in hits)
    assert search_text(load_index_dir(built["index"]), "red summer dress", top_k=5) == hits  # same CLIP
    png = tmp_path / "t.png"
    assert search_main(["--index", str(built["index"]), "--query-text", "red summer dress", "--top-k", "3",
                        "--grid", str(png), "--thumb", "32"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if not line.startswith("grid:")]) == 3
    assert _png(png).size == grid_size(1, 4, thumb=32)


def test_text_search_needs_a_clip_model(built, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"text search needs a CLIP model \(open_clip"):
        require_text_search({"config": {"model": {"backbone": "timm:resnet18"}}, "clip": None})
    idx = _copy_index(built, tmp_path)
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["config"]["model"]["backbone"] = "timm:resnet18"
    (idx / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="timm:resnet18"):
        search_text(idx, "red dress")
    assert search_main(["--index", str(idx), "--query-text", "red dress"]) == 2
    err = capsys.readouterr().err
    assert "text search needs a CLIP model" in err and str(idx) in err  # names the index at fault
