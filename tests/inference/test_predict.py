"""tools/infer.py end to end on a tiny trained checkpoint: submission, meta, cache, guards."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tools.infer import main as infer_main
from tools.score import main as score_main

from conftest import REPO, make_class_folder, train_tiny_checkpoint


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """A trained tiny checkpoint plus a query/gallery split of unseen images with ground truth."""
    root = tmp_path_factory.mktemp("comp")
    train_tiny_checkpoint(root, n_classes=6)
    test = make_class_folder(root / "testsrc", n_classes=6, per_class=4, seed=5)  # unseen images
    (root / "query").mkdir()
    (root / "gallery").mkdir()
    gt: dict[str, list[str]] = {}
    for c, cls in enumerate(sorted(test.iterdir())):
        imgs = sorted(cls.iterdir())
        q = f"q_{c:03d}.jpg"
        shutil.copy(imgs[0], root / "query" / q)
        gt[q] = []
        for i, img in enumerate(imgs[1:]):
            g = f"g_{c:03d}_{i}.jpg"
            shutil.copy(img, root / "gallery" / g)
            gt[q].append(g)
    (root / "gt.json").write_text(json.dumps(gt))
    return root


def _infer(comp: Path, out: Path, *extra: str) -> int:
    return infer_main(["--checkpoint", str(comp / "runs/tiny_test/best"), "--query-dir", str(comp / "query"),
                       "--gallery-dir", str(comp / "gallery"), "--out", str(out),
                       f"infer.cache_dir={out.parent / 'cache'}", *extra])


def test_submission_and_meta(competition, tmp_path):
    out = tmp_path / "sub.json"
    assert _infer(competition, out) == 0
    sub = json.loads(out.read_text())
    gallery = sorted(os.listdir(competition / "gallery"))
    assert sorted(sub) == sorted(os.listdir(competition / "query"))
    for ranked in sub.values():
        assert len(ranked) == min(10, len(gallery)) and len(set(ranked)) == len(ranked)
        assert set(ranked) <= set(gallery)
    meta = json.loads((tmp_path / "sub.meta.json").read_text())
    assert len(meta["checkpoint_sha256"]) == 64 and meta["git_sha"] and meta["simsearch_version"]
    assert meta["sizes"]["queries"] == 6 and meta["sizes"]["gallery"] == 18
    assert {"embed_gallery_s", "embed_queries_s", "search_s", "rerank_s"} <= set(meta["timings_s"])
    assert meta["config"]["infer"]["rerank"] is True


def test_same_config_gives_byte_identical_submissions_and_reuses_the_cache(competition, tmp_path, caplog):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _infer(competition, a) == 0
    caplog.clear()
    with caplog.at_level("INFO", logger="simsearch"):
        assert _infer(competition, b) == 0
    assert a.read_bytes() == b.read_bytes()
    assert "reused from cache" in caplog.text
    # touching a gallery file invalidates the cache key
    g = sorted((competition / "gallery").iterdir())[0]
    st = g.stat()
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    with caplog.at_level("INFO", logger="simsearch"):
        assert _infer(competition, tmp_path / "c.json") == 0
    assert "reused from cache" not in caplog.text
    assert (tmp_path / "c.json").read_bytes() == a.read_bytes()


def test_existing_file_needs_force(competition, tmp_path, capsys):
    out = tmp_path / "sub.json"
    out.write_text("precious")
    assert _infer(competition, out) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "precious"
    assert _infer(competition, out, "--force") == 0
    assert out.read_text() != "precious"


def test_csv_whole_gallery_and_score_roundtrip(competition, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert _infer(competition, out, "infer.format=csv", "infer.top_k=all", "infer.rerank=false") == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "query,ranked_gallery" and len(lines) == 7
    assert all(len(line.split(",")[1].split()) == 18 for line in lines[1:])
    board = tmp_path / "board.csv"
    assert score_main([str(out), "--ground-truth", str(competition / "gt.json"),
                       "--gallery-dir", str(competition / "gallery"), "--leaderboard", str(board)]) == 0
    assert "map" in capsys.readouterr().out and board.read_text().count("\n") == 2


def test_leakage_warns_and_strict_refuses(competition, tmp_path, capsys):
    leaky = tmp_path / "leaky_gallery"
    shutil.copytree(competition / "gallery", leaky)
    shutil.copy(competition / "query" / "q_000.jpg", leaky / "renamed.jpg")  # same bytes, new name
    args = ["--checkpoint", str(competition / "runs/tiny_test/best"), "--query-dir",
            str(competition / "query"), "--gallery-dir", str(leaky), "infer.cache_dir=null"]
    assert infer_main([*args, "--out", str(tmp_path / "warn.json")]) == 0
    leaks = json.loads((tmp_path / "warn.meta.json").read_text())["leaks"]
    assert len(leaks) == 1 and "q_000.jpg" in leaks[0] and "renamed.jpg" in leaks[0]
    assert infer_main([*args, "--out", str(tmp_path / "strict.json"), "--strict"]) == 2
    assert "--strict" in capsys.readouterr().err
    assert not (tmp_path / "strict.json").exists()


def test_training_data_leak_is_found_by_content(competition, tmp_path):
    train_img = sorted((competition / "train" / "class_00").iterdir())[0]
    q = tmp_path / "q"
    shutil.copytree(competition / "query", q)
    shutil.copy(train_img, q / "q_999.jpg")
    out = tmp_path / "t.json"
    assert infer_main(["--checkpoint", str(competition / "runs/tiny_test/best"), "--query-dir", str(q),
                       "--gallery-dir", str(competition / "gallery"), "--out", str(out),
                       "--train-dir", str(competition / "train"), "infer.cache_dir=null"]) == 0
    leaks = json.loads((tmp_path / "t.meta.json").read_text())["leaks"]
    assert any("q_999.jpg" in m and "training" in m for m in leaks)


def test_unreadable_images(competition, tmp_path):
    q, g = tmp_path / "q", tmp_path / "g"
    shutil.copytree(competition / "query", q)
    shutil.copytree(competition / "gallery", g)
    (q / "q_bad.jpg").write_text("not an image")
    (g / "g_bad.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(100))
    out = tmp_path / "s.json"
    assert infer_main(["--checkpoint", str(competition / "runs/tiny_test/best"), "--query-dir", str(q),
                       "--gallery-dir", str(g), "--out", str(out), "infer.cache_dir=null"]) == 0
    sub = json.loads(out.read_text())
    assert "q_bad.jpg" in sub  # every query is answered
    assert all("g_bad.jpg" not in r for r in sub.values())  # an unreadable gallery image never ranks


def test_ablation_table(competition, tmp_path, capsys):
    md = tmp_path / "ablation.md"
    assert infer_main(["--checkpoint", str(competition / "runs/tiny_test/best"), "--query-dir",
                       str(competition / "query"), "--gallery-dir", str(competition / "gallery"),
                       "--ablate", "--ground-truth", str(competition / "gt.json"),
                       "--ablate-out", str(md)]) == 0
    table = md.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [r.split("|")[1].strip().split(" ")[0] for r in rows] == [
        "baseline", "+TTA", "+QE", "+re-ranking", "all"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[2:6]]
        assert all(0.0 <= float(c) for c in cells)
    assert table in capsys.readouterr().out


def test_two_processes_give_the_single_process_submission(competition, tmp_path):
    single = tmp_path / "single.json"
    assert _infer(competition, single, "infer.cache_dir=null") == 0
    double = tmp_path / "double.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "tools" / "infer.py"), "--checkpoint", str(competition / "runs/tiny_test/best"),
           "--query-dir", str(competition / "query"), "--gallery-dir", str(competition / "gallery"),
           "--out", str(double), "infer.cache_dir=null", "train.cpu=true"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = json.loads(single.read_text()), json.loads(double.read_text())
    assert a.keys() == b.keys()
    # Same images, same model: identical up to float summation order; compare the sets of top-3.
    agree = np.mean([set(a[q][:3]) == set(b[q][:3]) for q in a])
    assert agree == 1.0


def test_competition_formats_from_infer_to_score(competition, tmp_path, capsys):
    gt, gallery = str(competition / "gt.json"), str(competition / "gallery")
    plain, gld = tmp_path / "plain.json", tmp_path / "gld.csv"
    assert _infer(competition, plain, "infer.top_k=5") == 0
    assert _infer(competition, gld, "--format", "landmark", "infer.top_k=5") == 0
    lines = gld.read_text().splitlines()
    assert lines[0] == "id,images"
    assert [line.split(",")[0] for line in lines[1:]] == [f"q_{c:03d}" for c in range(6)]
    ranked = json.loads(plain.read_text())
    assert all(line.split(",")[1] == " ".join(g[:-4] for g in ranked[line.split(",")[0] + ".jpg"])
               for line in lines[1:])  # the same ranking, ids without extension
    capsys.readouterr()
    scores = []
    for sub in (plain, gld):
        assert score_main([str(sub), "--ground-truth", gt, "--gallery-dir", gallery, "--no-leaderboard"]) == 0
        scores.append(capsys.readouterr().out.split("\n", 1)[1])
    assert scores[0] == scores[1]

    labels = tmp_path / "labels.csv"
    labels.write_text("name,label\n" + "".join(f"{g},c{g[2:5]}\n" for g in sorted(os.listdir(gallery))))
    whale = tmp_path / "whale.csv"
    assert _infer(competition, whale, "--format", "whale") == 2  # no gallery labels: refused before any work
    assert "infer.submission.gallery_labels" in capsys.readouterr().err and not whale.exists()
    assert _infer(competition, whale, "--format", "whale", f"infer.submission.gallery_labels={labels}",
                  "infer.submission.threshold=1.0", "infer.rerank=false", "infer.top_k=all") == 0
    rows = [line.split(",")[1].split() for line in whale.read_text().splitlines()[1:]]
    # every cosine is below 1: new_whale first, then 4 distinct labels of the 6 classes
    assert all(row[0] == "new_whale" and len(set(row)) == 5 and set(row[1:]) < {f"c{c:03d}" for c in range(6)}
               for row in rows)
    assert json.loads((tmp_path / "whale.meta.json").read_text())["submission"]["name"] == "whale"
    assert score_main([str(whale), "--ground-truth", gt, "--gallery-labels", str(labels), "--no-leaderboard"]) == 0
    assert "map5" in capsys.readouterr().out
