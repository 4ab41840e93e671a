"""The re-ranking benchmark runs end to end at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

from simsearch.benchmarks.dense_reference import dense_memory_lower_bound
from simsearch.benchmarks.rerank import main


def test_benchmark_smoke(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--nq", "60", "--ng", "80", "--dim", "16", "--clusters", "10",
            "--dense-nq", "30", "--dense-ng", "40", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| sparse | 60 | 80 |" in text and "| dense | 30 | 40 |" in text
    summary = json.loads(out.read_text())
    assert [r["method"] for r in summary["runs"]] == ["sparse", "sparse", "dense"]
    assert summary["small_top1_agreement"] == 1.0
    assert summary["dense_full_size_lower_bound_gib"] == dense_memory_lower_bound(140) / 1024**3


def test_dense_memory_bound_is_four_float64_matrices() -> None:
    assert dense_memory_lower_bound(1000) == 1000 * 1000 * 8 * 4
