"""The benchmark suite runs end to end at its smallest size (the CI smoke test of issue 4)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # tools/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench.all import BENCHMARKS, main  # noqa: E402
from tools.bench.index import CALTECH  # noqa: E402


def test_all_benchmarks_smallest(tmp_path: Path, capsys) -> None:
    assert main(["--smallest", "--json", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # the summary table: one row per benchmark, each run to the end
    for name in BENCHMARKS:
        assert f"| {name} | `python -m tools.bench.{name} " in out
        assert json.loads((tmp_path / f"{name}.json").read_text())["machine"]["cores"] >= 1
    assert out.count("| ok |") == len(BENCHMARKS)
    # every benchmark's own table, headed by the machine
    assert out.count("Machine: ") == len(BENCHMARKS) + 1
    assert "| sparse | 60 | 80 |" in out  # re-ranking
    assert "| timm:tf_efficientnet_lite0 | 64 |" in out  # extraction
    assert "| ours | " in out and "| plain | " in out  # training step
    assert "| clustered 2000 | 2000 | Flat | exact |" in out  # index
    # the real-embedding rows run exactly when the dev data set sits beside the checkout
    if (CALTECH / "gallery").is_dir():
        assert "| caltech101 | 16 | Flat | exact |" in out
    else:
        assert "caltech101 not found" in out and "| caltech101 |" not in out
    summary = json.loads((tmp_path / "all.json").read_text())
    assert [r["benchmark"] for r in summary["results"]] == list(BENCHMARKS)
