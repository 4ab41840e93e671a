"""The incremental-work benchmark runs end to end at tiny sizes and reports every row."""
from __future__ import annotations

import json
from pathlib import Path

from simsearch.benchmarks.incremental import main


def test_benchmark_smoke(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("## Incremental work") and "Machine:" in text
    assert "| no cache (every file read: the guard before) | 420 | 420 |" in text
    assert "| second run, nothing changed | 420 | 0 |" in text
    assert "| after 1% of the files got a new mtime | 420 | 4 |" in text
    for n in ("100", "1,000"):
        for path in ("append: new shard + manifest", "append + whole FAISS index (compaction)",
                     "before: whole folder rewritten"):
            assert f"| {n} | {path} |" in text
    result = json.loads(out.read_text())
    assert all(r["same_leaks"] for r in result["leakage"])
    mb = {(r["added"], r["path"].split(":")[0]): r["mb"]["median"] for r in result["add"]}
    # an append writes about the new rows (100 x 32 float32 = 12.5 KiB, plus ids and the manifest) ...
    assert mb[(100, "append")] < 0.1 < mb[(100, "before")]
    assert mb[(1000, "append")] > mb[(100, "append")]
    # ... the old path rewrites the whole folder, the base's rows included
    assert mb[(100, "before")] > 4000 * 32 * 4 * 2 / 2**20
    assert not list((tmp_path / "work").iterdir())  # its files and folders are removed
