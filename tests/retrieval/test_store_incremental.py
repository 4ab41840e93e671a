"""Appending to index folders (no model: synthetic unit vectors through the store's own writers):
searches equal a fresh build, only the new shard is written, crashes leave the old index, the old
one-file layout still loads."""
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from simsearch.retrieval import store
from simsearch.retrieval.index import build_index, search
from simsearch.retrieval.store import append_rows, load_index_dir, search_vectors, write_index_dir
from simsearch.utils.errors import InputFileError
from simsearch.utils.synthetic import clustered_unit_vectors

DIM = 16


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    """(queries, 400 rows) of clustered unit vectors; rows 0-199 are the base, the rest are added."""
    return clustered_unit_vectors(20, 400, DIM, n_clusters=8, noise=0.3, seed=3)


def _ids(start: int, stop: int) -> list[str]:
    return [f"img_{i:04d}.jpg" for i in range(start, stop)]


def _manifest() -> dict:
    return {"checkpoint": "/nowhere/best", "checkpoint_sha256": "0" * 64, "images_dir": "/catalogue",
            "factory": "Flat", "embedding": {}, "clip": None, "unreadable": [], "config": {}}


def _build(folder: Path, x: np.ndarray, factory: str = "Flat", clip: np.ndarray | None = None) -> dict:
    return write_index_dir(folder, {**_manifest(), "factory": factory}, _ids(0, len(x)), x,
                           build_index(x, factory, nprobe=4), clip)


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.parametrize("compact", [False, True, None])
def test_appended_index_searches_like_a_fresh_build(vectors, tmp_path, compact):
    q, x = vectors
    _build(tmp_path / "grown", x[:200])
    for start, stop in ((200, 230), (230, 300), (300, 400)):  # None: the third add passes 25% and compacts
        append_rows(load_index_dir(tmp_path / "grown"), _ids(start, stop), x[start:stop], compact=compact)
    _build(tmp_path / "fresh", x)
    grown, fresh = load_index_dir(tmp_path / "grown"), load_index_dir(tmp_path / "fresh")
    assert grown.ids == fresh.ids and grown.index.ntotal == 400
    assert grown.emb.tobytes() == fresh.emb.tobytes()
    (gs, gi), (fs, fi) = search(grown.index, q, 10), search(fresh.index, q, 10)
    assert np.array_equal(gi, fi) and np.allclose(gs, fs, atol=1e-6)
    assert search_vectors(grown, q, 5) == search_vectors(fresh, q, 5)
    m = grown.manifest
    assert [s["rows"] for s in m["shards"]] == [200, 30, 70, 100] and m["count"] == 400
    assert m["index_rows"] == {False: 200, True: 400, None: 400}[compact]


def test_an_add_writes_only_the_new_shard_and_the_manifest(vectors, tmp_path, monkeypatch):
    q, x = vectors
    idx = tmp_path / "idx"
    _build(idx, x[:200])
    before = _stamps(idx)
    writes: list[str] = []
    real_write = faiss.write_index
    monkeypatch.setattr(faiss, "write_index", lambda index, path: (writes.append(path), real_write(index, path)))
    loaded = load_index_dir(idx)
    manifest = append_rows(loaded, _ids(200, 240), x[200:240])  # 40 rows: 20% of the index, no compaction
    after = _stamps(idx)
    assert writes == []  # the FAISS index file is not rewritten
    assert set(after) - set(before) == {"embeddings-00001.npy", "ids-00001.json"}
    unchanged = {n: s for n, s in before.items() if n != "manifest.json"}
    assert {n: after[n] for n in unchanged} == unchanged  # same inode, same mtime: not touched
    assert after["manifest.json"] != before["manifest.json"]
    assert np.load(idx / "embeddings-00001.npy").tobytes() == x[200:240].tobytes()
    assert json.loads((idx / "ids-00001.json").read_text()) == _ids(200, 240)
    assert manifest["index_file"] == "index.faiss" and manifest["index_rows"] == 200 and manifest["count"] == 240
    # the loaded index was updated in memory and a fresh load adds the shard to the FAISS index
    assert loaded.index.ntotal == 240 and loaded.ids[-1] == "img_0239.jpg" and loaded.emb.shape == (240, DIM)
    again = load_index_dir(idx)
    assert again.index.ntotal == 240 and search_vectors(again, q, 5) == search_vectors(loaded, q, 5)


def test_compaction_writes_a_new_index_file_and_drops_the_old(vectors, tmp_path):
    _, x = vectors
    idx = tmp_path / "idx"
    _build(idx, x[:200])
    m = append_rows(load_index_dir(idx), _ids(200, 260), x[200:260])  # 60 > 25% of 200
    assert m["index_file"] == "index-00001.faiss" and m["index_rows"] == 260
    assert not (idx / "index.faiss").exists() and (idx / "embeddings.npy").is_file()
    assert faiss.read_index(str(idx / "index-00001.faiss")).ntotal == 260
    assert load_index_dir(idx).index.ntotal == 260


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW32"])
def test_approximate_indexes_get_the_rows_added_to_the_trained_index(vectors, tmp_path, factory):
    """No retraining: the appended folder searches like the base index with ``index.add`` of the rows."""
    q, x = vectors
    idx = tmp_path / "idx"
    _build(idx, x[:200], factory)
    expected = load_index_dir(idx).index
    expected.add(x[200:250])
    append_rows(load_index_dir(idx), _ids(200, 250), x[200:250], compact=False)
    loaded = load_index_dir(idx)
    (ls, li), (es, ei) = search(loaded.index, q, 10), search(expected, q, 10)
    assert np.array_equal(li, ei) and np.allclose(ls, es, atol=1e-6)


def test_clip_features_are_appended_in_their_own_shard(vectors, tmp_path):
    _, x = vectors
    clip = np.ascontiguousarray(x[:, ::-1])
    idx = tmp_path / "idx"
    _build(idx, x[:200], clip=clip[:200])
    m = json.loads((idx / "manifest.json").read_text())
    m["clip"] = {"model": "ViT-Tiny-Test", "pretrained": None, "dim": DIM}
    (idx / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="CLIP features"):
        append_rows(load_index_dir(idx), _ids(200, 210), x[200:210])
    append_rows(load_index_dir(idx), _ids(200, 210), x[200:210], clip[200:210])
    assert (idx / "clip_image_emb-00001.npy").is_file()
    assert load_index_dir(idx).clip_emb.tobytes() == clip[:210].tobytes()


def test_a_crash_before_the_manifest_leaves_the_previous_index(vectors, tmp_path, monkeypatch):
    q, x = vectors
    idx = tmp_path / "idx"
    _build(idx, x[:200])
    append_rows(load_index_dir(idx), _ids(200, 220), x[200:220])
    expected = search_vectors(load_index_dir(idx), q, 5)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for target in ("write_json_atomic", "faiss.write_index"):  # before the manifest; while compacting
        with monkeypatch.context() as mp:
            if target == "write_json_atomic":
                mp.setattr(store, "write_json_atomic", crash)
            else:
                mp.setattr(faiss, "write_index", crash)
            with pytest.raises(OSError, match="No space"):
                append_rows(load_index_dir(idx), _ids(220, 300), x[220:300])
        loaded = load_index_dir(idx)
        assert loaded.index.ntotal == 220 and loaded.ids == _ids(0, 220)
        assert search_vectors(loaded, q, 5) == expected
    assert (idx / "embeddings-00002.npy").is_file()  # an orphan of the crashed add ...
    append_rows(load_index_dir(idx), _ids(220, 230), x[220:230])  # ... overwritten by the next add
    assert np.load(idx / "embeddings-00002.npy").shape == (10, DIM)
    assert load_index_dir(idx).ids == _ids(0, 230)
    assert not [p.name for p in idx.iterdir() if p.name.endswith(".tmp")]


def test_orphans_of_a_crashed_add_are_removed_by_the_next(vectors, tmp_path):
    _, x = vectors
    idx = tmp_path / "idx"
    _build(idx, x[:200])
    for orphan in ("ids-00007.json", "embeddings-00007.npy", "index-00007.faiss", ".ids-00001.json.x1y2.tmp"):
        (idx / orphan).write_bytes(b"half")
    (idx / "notes.txt").write_text("not ours")
    append_rows(load_index_dir(idx), _ids(200, 210), x[200:210])
    assert sorted(p.name for p in idx.iterdir()) == sorted(
        ["manifest.json", "index.faiss", "ids.json", "embeddings.npy", "ids-00001.json", "embeddings-00001.npy",
         "notes.txt"])


def _old_layout(folder: Path, x: np.ndarray) -> None:
    """A folder as simsearch wrote it before shards: format_version 1, no layout in the manifest."""
    folder.mkdir()
    np.save(folder / "embeddings.npy", x)
    (folder / "ids.json").write_text(json.dumps(_ids(0, len(x)), indent=0) + "\n")
    faiss.write_index(build_index(x, "Flat"), str(folder / "index.faiss"))
    (folder / "manifest.json").write_text(json.dumps(
        {**_manifest(), "format_version": 1, "count": len(x), "dim": DIM, "created": "2026-01-01T00:00:00+00:00",
         "simsearch_version": "0.1.0"}, indent=2))


def test_the_old_one_file_layout_loads_and_takes_adds(vectors, tmp_path):
    q, x = vectors
    old = tmp_path / "old"
    _old_layout(old, x[:200])
    loaded = load_index_dir(old)
    assert loaded.ids == _ids(0, 200) and loaded.index.ntotal == 200 and loaded.emb.tobytes() == x[:200].tobytes()
    before = _stamps(old)
    m = append_rows(loaded, _ids(200, 250), x[200:250], compact=False)
    assert m["format_version"] == 2 and m["shards"][0] == {"ids": "ids.json", "embeddings": "embeddings.npy",
                                                            "clip": None, "rows": 200}
    assert {n: _stamps(old)[n] for n in ("embeddings.npy", "ids.json", "index.faiss")} == {
        n: before[n] for n in ("embeddings.npy", "ids.json", "index.faiss")}
    _build(tmp_path / "fresh", x[:250])
    assert search_vectors(load_index_dir(old), q, 10) == search_vectors(load_index_dir(tmp_path / "fresh"), q, 10)


def test_a_manifest_whose_shards_disagree_names_the_file(vectors, tmp_path):
    _, x = vectors
    idx = tmp_path / "idx"
    _build(idx, x[:200])
    append_rows(load_index_dir(idx), _ids(200, 210), x[200:210])
    good = json.loads((idx / "manifest.json").read_text())
    bad_manifests = {
        "rows": {**good, "shards": [good["shards"][0], {**good["shards"][1], "rows": 11}]},
        "name": {**good, "shards": [good["shards"][0], {**good["shards"][1], "ids": "../../etc/passwd"}]},
        "index": {**good, "index_rows": 0},
    }
    for case, manifest in bad_manifests.items():
        (idx / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(InputFileError, match="manifest.json") as exc:
            load_index_dir(idx)
        assert "rebuild" in str(exc.value), case
    (idx / "manifest.json").write_text(json.dumps(good))
    np.save(idx / "embeddings-00001.npy", x[200:209])  # a shard file that lost a row
    with pytest.raises(InputFileError, match=r"embeddings-00001\.npy.*\(9, 16\)"):
        load_index_dir(idx)
    data = (idx / "embeddings.npy").read_bytes()
    (idx / "embeddings.npy").write_bytes(data[: len(data) // 2])  # truncated: the memory map is refused
    with pytest.raises(InputFileError, match=r"embeddings\.npy: not the index's embeddings"):
        load_index_dir(idx)
    (idx / "embeddings.npy").write_bytes(data)
    (idx / "ids-00001.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ids-00001\.json: does not exist; rebuild"):
        load_index_dir(idx)
