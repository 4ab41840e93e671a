"""The re-ranking benchmark runs end to end at a tiny size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # tools/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench.dense_reference import dense_memory_lower_bound  # noqa: E402
from tools.bench.rerank import main  # noqa: E402


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
