"""The benchmark suite runs end to end at its smallest size (the CI smoke test of issue 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from simsearch.benchmarks.all import BENCHMARKS, PRESETS, main


def _fake_caltech(root: Path) -> Path:
    """A stand-in for ../shared/data/caltech101/test: 16 gallery and 8 query images."""
    rng = np.random.default_rng(0)
    for sub, n in (("gallery", 16), ("query", 8)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / sub / f"{i}.png")
    return root


def test_all_benchmarks_smallest(tmp_path: Path, capsys, monkeypatch) -> None:
    # the index benchmark embeds a real image folder too: give it one, so the test needs no dev data
    caltech = _fake_caltech(tmp_path / "caltech")
    monkeypatch.setitem(PRESETS["smallest"], "index", [*PRESETS["smallest"]["index"], "--caltech", str(caltech)])
    assert main(["--smallest", "--json", str(tmp_path / "json")]) == 0
    out = capsys.readouterr().out
    # the summary table: one row per benchmark, each run to the end
    for name in BENCHMARKS:
        assert f"| {name} | `simsearch bench {name} " in out
        assert json.loads((tmp_path / "json" / f"{name}.json").read_text())["machine"]["cores"] >= 1
    assert out.count("| ok |") == len(BENCHMARKS)
    # every benchmark's own table, headed by the machine
    assert out.count("Machine: ") == len(BENCHMARKS) + 1
    assert "| sparse | 60 | 80 |" in out  # re-ranking
    assert "| timm:tf_efficientnet_lite0 | 64 |" in out  # extraction
    assert "| ours | " in out and "| plain | " in out  # training step
    assert "| clustered 2000 | 2000 | Flat | exact |" in out  # index
    assert "| caltech101 | 16 | Flat | exact |" in out  # index, real images
    assert "index IVF8,Flat -> IVF8,Flat" in out and "| **total** |" in out  # million-image gallery
    summary = json.loads((tmp_path / "json" / "all.json").read_text())
    assert [r["benchmark"] for r in summary["results"]] == list(BENCHMARKS)


def test_index_benchmark_says_when_the_image_folder_is_missing(tmp_path: Path, capsys) -> None:
    from simsearch.benchmarks.index import main as index_main

    assert index_main([*PRESETS["smallest"]["index"], "--caltech", str(tmp_path / "nowhere")]) == 0
    out = capsys.readouterr().out
    assert "caltech101 not found" in out and "| caltech101 |" not in out
