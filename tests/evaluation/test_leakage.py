"""The leakage guard: duplicates found by content, hashes cached between runs, the switch that skips it."""
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from tools.infer import main as infer_main

from conftest import make_class_folder, train_tiny_checkpoint
from simsearch.evaluation import leakage
from simsearch.evaluation.leakage import HASH_CACHE_FILE, HashCache, find_leaks

HOUR_NS = 3600 * 10**9


@pytest.fixture()
def hashed(monkeypatch) -> list[str]:
    """Every path the guard reads to hash, in order."""
    calls: list[str] = []
    real = leakage.file_sha256

    def spy(path):
        calls.append(os.path.abspath(path))
        return real(path)

    monkeypatch.setattr(leakage, "file_sha256", spy)
    return calls


def _age(path: Path, ns: int = HOUR_NS) -> None:
    """Set the file's mtime into the past (a file written just now is never cached: RACY_NS)."""
    t = path.stat().st_mtime_ns - ns
    os.utime(path, ns=(t, t))


@pytest.fixture()
def data(tmp_path) -> dict:
    """Two queries, a gallery holding a renamed copy of q0, training files holding a copy of q1."""
    root = tmp_path / "data"
    files = {"q0": b"query zero", "q1": b"query one", "g0": b"gallery zero", "g1": b"query zero",
             "g2": b"gallery two", "t0": b"training zero", "t1": b"query one"}
    for name, content in files.items():
        (root / name[0]).mkdir(parents=True, exist_ok=True)
        (root / name[0] / f"{name}.bin").write_bytes(content)
        _age(root / name[0] / f"{name}.bin")
    return {"queries": sorted((root / "q").iterdir()),
            "others": {"gallery": sorted((root / "g").iterdir()), "training": sorted((root / "t").iterdir())},
            "cache": tmp_path / "cache", "root": root}


def _run(data: dict, cache: bool = True) -> list[str]:
    return find_leaks(data["queries"], data["others"], cache=HashCache.in_dir(data["cache"]) if cache else None)


def test_duplicates_are_found_by_content_not_name(data):
    leaks = _run(data, cache=False)
    assert len(leaks) == 2
    assert "q0.bin" in leaks[0] and "gallery file" in leaks[0] and "g1.bin" in leaks[0]
    assert "q1.bin" in leaks[1] and "training file" in leaks[1] and "t1.bin" in leaks[1]


def test_second_run_reads_no_unchanged_file_and_finds_the_same_leaks(data, hashed):
    uncached = _run(data, cache=False)
    assert len(hashed) == 7
    hashed.clear()
    assert _run(data) == uncached and len(hashed) == 7  # the first cached run fills the cache
    assert (data["cache"] / HASH_CACHE_FILE).is_file()
    hashed.clear()
    cache = HashCache.in_dir(data["cache"])
    assert find_leaks(data["queries"], data["others"], cache=cache) == uncached
    assert hashed == [] and cache.hashed == 0 and cache.reused == 7


def test_a_touched_file_is_hashed_again(data, hashed):
    _run(data)
    g0, g2, q1 = data["others"]["gallery"][0], data["others"]["gallery"][2], data["queries"][1]
    # new mtime, same bytes
    os.utime(g2, ns=(g2.stat().st_atime_ns, g2.stat().st_mtime_ns + 10**9))
    # new size, the old mtime put back: the copy of q1 now leaks through the gallery too
    old = g0.stat().st_mtime_ns
    g0.write_bytes(b"query one")
    os.utime(g0, ns=(old, old))
    hashed.clear()
    leaks = _run(data)
    assert sorted(hashed) == sorted(os.path.abspath(p) for p in (g0, g2))
    assert leaks == _run(data, cache=False)
    assert any(f"query {q1} has the same content as gallery file {g0}" == m for m in leaks)


def test_same_size_and_mtime_but_new_bytes_is_hashed_again(data, hashed):
    """Rewritten in place with its mtime restored (cp -p, touch -r): the ctime still moves."""
    _run(data)
    g2 = data["others"]["gallery"][2]
    st = g2.stat()
    g2.write_bytes(b"query zer0!")  # same length as "gallery two"
    os.utime(g2, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert g2.stat().st_size == st.st_size and g2.stat().st_mtime_ns == st.st_mtime_ns
    hashed.clear()
    assert _run(data) == _run(data, cache=False)
    assert os.path.abspath(g2) in hashed


def test_a_link_to_another_file_is_hashed_again(data, hashed):
    """Same path, size and times, another file behind it: the inode differs."""
    g2 = data["others"]["gallery"][2]
    target_a, target_b = data["root"] / "a.bin", data["root"] / "b.bin"
    target_a.write_bytes(b"gallery two")
    target_b.write_bytes(b"query zero!")  # as long, other bytes
    _age(target_a)
    os.utime(target_b, ns=(target_a.stat().st_atime_ns, target_a.stat().st_mtime_ns))
    g2.unlink()
    g2.symlink_to(target_a)
    _run(data)
    g2.unlink()
    g2.symlink_to(target_b)
    hashed.clear()
    leaks = _run(data)
    assert hashed == [os.path.abspath(g2)] and leaks == _run(data, cache=False)


def test_a_file_written_just_now_is_not_cached(data, hashed):
    fresh = data["root"] / "g" / "g3.bin"
    fresh.write_bytes(b"just written")
    data["others"]["gallery"].append(fresh)
    _run(data)
    hashed.clear()
    _run(data)
    assert hashed == [os.path.abspath(fresh)]


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(data, hashed, caplog):
    expected = _run(data, cache=False)
    for garbage in ('{"version": 1, "files": {"x": [1, 2]}}', "[1, 2]", "\xff\xfe not json",
                    '{"version": 99, "files": {}}'):
        data["cache"].mkdir(exist_ok=True)
        (data["cache"] / HASH_CACHE_FILE).write_text(garbage, encoding="latin-1")
        hashed.clear()
        with caplog.at_level(logging.WARNING, logger="simsearch.leakage"):
            assert _run(data) == expected
        assert "leakage hash cache" in caplog.text and "ignoring it" in caplog.text
        caplog.clear()
        assert len(hashed) == 7
        saved = json.loads((data["cache"] / HASH_CACHE_FILE).read_text())
        assert saved["version"] == 1 and len(saved["files"]) == 7


def test_deleted_files_leave_the_cache(data):
    _run(data)
    gone = data["others"]["gallery"].pop()
    gone.unlink()
    (data["root"] / "g" / "g9.bin").write_bytes(b"new")  # something changed: the cache is written again
    _age(data["root"] / "g" / "g9.bin")
    data["others"]["gallery"].append(data["root"] / "g" / "g9.bin")
    _run(data)
    files = json.loads((data["cache"] / HASH_CACHE_FILE).read_text())["files"]
    assert os.path.abspath(gone) not in files and len(files) == 7


# --------------------------------------------------------------------------- through simsearch infer


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    ckpt = train_tiny_checkpoint(root, n_classes=4)
    images = make_class_folder(root / "images", n_classes=4, per_class=3, seed=4)
    (root / "query").mkdir()
    gallery = Path(shutil.copytree(images, root / "gallery"))
    for i, cls in enumerate(sorted(images.iterdir())):
        shutil.copy(sorted(cls.iterdir())[0], root / "query" / f"q{i}.jpg")  # every query leaks
    for p in [*gallery.rglob("*.jpg"), *(root / "query").iterdir(), *(root / "train").rglob("*.jpg")]:
        _age(p)
    return {"root": root, "ckpt": ckpt}


def _infer(c: dict, out: Path, *extra: str) -> int:
    return infer_main(["--checkpoint", str(c["ckpt"]), "--query-dir", str(c["root"] / "query"),
                       "--gallery-dir", str(c["root"] / "gallery"), "--out", str(out),
                       f"infer.cache_dir={out.parent / 'cache'}", "infer.rerank=false", *extra])


def test_infer_caches_hashes_in_the_cache_dir(competition, tmp_path, hashed):
    assert _infer(competition, tmp_path / "a.json") == 0
    # queries, gallery and the training images of the checkpoint's data.train_dir
    assert len(hashed) == 4 + 12 + 24 and (tmp_path / "cache" / HASH_CACHE_FILE).is_file()
    hashed.clear()
    assert _infer(competition, tmp_path / "b.json") == 0
    assert hashed == []
    a, b = (json.loads((tmp_path / f"{n}.meta.json").read_text()) for n in "ab")
    assert len(a["leaks"]) == 4 and a["leaks"] == b["leaks"] and "leakage_s" in b["timings_s"]


def test_infer_leakage_check_false_hashes_nothing_and_says_so(competition, tmp_path, hashed, capsys):
    assert _infer(competition, tmp_path / "off.json", "infer.leakage_check=false") == 0
    meta = json.loads((tmp_path / "off.meta.json").read_text())
    assert hashed == [] and meta["leaks"] is None and meta["config"]["infer"]["leakage_check"] is False
    assert not (tmp_path / "cache" / HASH_CACHE_FILE).exists() and "leakage_s" not in meta["timings_s"]
    assert _infer(competition, tmp_path / "strict.json", "infer.leakage_check=false", "--strict") == 2
    assert "infer.leakage_check=false" in capsys.readouterr().err and not (tmp_path / "strict.json").exists()
