"""`simsearch bench gpu`: the --smoke run (tiny model, CPU) goes through every loop of the GPU run,
its table and JSON agree, and the ratios are the rates' ratios; without CUDA the full run refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simsearch.benchmarks import all as bench_all
from simsearch.benchmarks.common import fmt
from simsearch.benchmarks.gpu import TARGET_IMG_S, TARGET_RATIO, main

EXTRACTION = ["bare", "embed_batch", "embed_dataset", "embed_infer"]
TRAINING = ["bare", "train_one_epoch"]


def test_smoke_runs_every_loop_and_reports_what_it_measured(tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "gpu.json"
    # P-K 8x2 instead of 32x4: the overrides reach the config the training loops read
    assert main(["--smoke", "--json", str(out_json), "train.batch_p=8", "train.batch_k=2"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    assert "Machine: " in out and "open_clip:ViT-Tiny-Test (random init) at 32px" in out
    assert res["smoke"] and res["image_size"] == 32 and res["machine"]["cores"] >= 1
    rows = res["rows"]
    assert [(r["part"], r["key"]) for r in rows] == ([("extraction", k) for k in EXTRACTION]
                                                     + [("training", k) for k in TRAINING])
    bare = {r["part"]: r["rate"]["median"] for r in rows if r["key"] == "bare"}
    for r in rows:
        # smoke sizes: 8 images x 2 batches a repeat; 2 steps of 8 x 2 samples; 1 timed repeat
        assert r["count"] == (16 if r["part"] == "extraction" else 2 * 16)
        assert r["batch"] == (8 if r["part"] == "extraction" else 16)
        assert len(r["seconds"]["values"]) == 1 and all(t > 0 for t in r["seconds"]["values"])
        assert r["rate"]["values"] == pytest.approx([r["count"] / t for t in r["seconds"]["values"]])
        assert r["ratio"] == pytest.approx(r["rate"]["median"] / bare[r["part"]])
        assert (r["peak_gpu_bytes"] > 0) if torch.cuda.is_available() else r["peak_gpu_bytes"] is None
        # the printed row carries the JSON's figures
        assert f"| {r['batch']} | {fmt(r['rate'], 1)} {r['unit']} | {r['ratio']:.1%} |" in out
    assert [r["ratio"] for r in rows if r["key"] == "bare"] == [1.0, 1.0]
    by = {(r["part"], r["key"]): r for r in rows}
    expected = {}
    for key in ("embed_batch", "embed_dataset", "embed_infer"):
        expected[f"extraction {key} bf16 >= 3,000 img/s"] = by["extraction", key]["rate"]["median"] >= TARGET_IMG_S
        expected[f"extraction {key} >= 90% of bare"] = by["extraction", key]["ratio"] >= TARGET_RATIO
    train = by["training", "train_one_epoch"]
    expected["training train_one_epoch >= 90% of bare"] = train["ratio"] >= TARGET_RATIO
    assert {c["name"]: c["ok"] for c in res["checks"]} == expected
    assert "apply to the full run on a GPU" in out and "(measured " not in out  # no verdicts at smoke sizes


def test_without_cuda_the_full_run_refuses_with_a_clear_message(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "no CUDA GPU" in captured.err and "--smoke" in captured.err and captured.out == ""


def test_bench_all_skips_the_gpu_benchmark_without_cuda(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_all.main(["--quick", "--only", "gpu"]) == 0
    out = capsys.readouterr().out
    command = " ".join(["simsearch bench gpu", *bench_all.PRESETS["quick"]["gpu"]])
    assert f"| gpu | `{command}` | 0.0 | skipped: no CUDA GPU |" in out
