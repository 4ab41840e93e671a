"""End-to-end training through the real ``tools.train.main`` on generated image folders."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tools.train import main

from conftest import CONFIGS, kill_and_resume, make_class_folder, metrics_rows

TINY = str(CONFIGS / "tiny_test.yaml")


def _train(tmp_path: Path, data: Path, *extra: str) -> int:
    return main(["--config", TINY, f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
                 *extra])


def test_training_lowers_the_loss_and_writes_every_output(tmp_path):
    data = make_class_folder(tmp_path / "train", n_classes=16, per_class=6, seed=1)
    assert _train(tmp_path, data, "train.epochs=10", "train.miner_start_epoch=100") == 0
    run = tmp_path / "runs" / "tiny_test"
    rows = metrics_rows(run)
    assert len(rows) == 10
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
    for name in ("config.yaml", "metrics.csv", "train.log", "best/model.safetensors",
                 "best/config.yaml", "last/model.safetensors", "last/train_state.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert {"r1", "r5", "map"} <= set(rows[0])
    meta = json.loads((run / "best" / "meta.json").read_text())
    assert "git_sha" in meta and meta["metrics"]["map"] == max(float(r["map"]) for r in rows)
    assert "skipped 0 unreadable images" in (run / "train.log").read_text()


def test_checkpoint_state_loads_with_weights_only(tmp_path):
    import torch

    data = make_class_folder(tmp_path / "train")
    assert _train(tmp_path, data, "train.epochs=1") == 0
    state = torch.load(tmp_path / "runs/tiny_test/last/train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state and "rng" in state


def test_resume_after_a_stop_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "train", n_classes=8, per_class=6, seed=2)
    args = ["--config", TINY, f"data.train_dir={data}", "train.epochs=4", "train.miner_start_epoch=2",
            "loss.name=arcface"]
    run = kill_and_resume(monkeypatch, args, tmp_path, kill_at=3)
    assert run.rows_at_kill == 2
    full, resumed = metrics_rows(run.full), metrics_rows(run.resumed)
    assert len(full) == len(resumed) == 4
    for a, b in zip(full, resumed):
        for key in ("epoch", "step", "loss", "lr", "r1", "r5", "map", "miner"):
            assert a[key] == b[key], (key, a, b)


def test_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    data = make_class_folder(tmp_path / "train")
    assert _train(tmp_path, data, "train.epochs=1") == 0
    before = (tmp_path / "runs/tiny_test/last/model.safetensors").read_bytes()
    assert _train(tmp_path, data, "train.epochs=1") == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "runs/tiny_test/last/model.safetensors").read_bytes() == before


def _save_variants(folder: Path) -> None:
    """Awkward but valid images: each must load and train; the unreadable ones are skipped."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.dstack([arr, np.full((40, 40), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(arr[..., 0]).save(folder / "grey.png")
    Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(folder / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr[:, :20]).save(folder / "rotated.jpg", exif=exif.tobytes())


def test_bad_images_are_skipped_and_reported(tmp_path):
    data = make_class_folder(tmp_path / "train", n_classes=6, per_class=6)
    _save_variants(data / "class_00")
    (data / "class_01" / "notes.jpg").write_text("this is not an image")
    good = (data / "class_02" / "img_00.jpg").read_bytes()
    (data / "class_02" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (data / "class_03" / "corrupt.jpg").write_bytes(os.urandom(500))
    single = data / "lonely"
    single.mkdir()
    shutil.copy(data / "class_04" / "img_00.jpg", single / "only.jpg")
    assert _train(tmp_path, data, "train.epochs=2", "data.val_fraction=0.0", "train.batch_p=6",
                  "train.batch_k=4") == 0
    log = (tmp_path / "runs/tiny_test/train.log").read_text()
    assert "dropped 1 class" in log
    skipped_line = next(line for line in log.splitlines() if "skipped 3 unreadable image(s):" in line)
    for name in ("notes.jpg", "truncated.jpg", "corrupt.jpg"):
        assert name in skipped_line
    for name in ("cmyk.jpg", "rgba.png", "grey.png", "deep.png", "rotated.jpg"):
        assert name not in skipped_line


@pytest.mark.parametrize("override,message", [
    ("train.epocs=3", "unknown config key 'train.epocs'"),
    ("train.epochs=three", "'train.epochs' must be int"),
    ("model.backbone=timm:not_a_net", "unknown timm model 'not_a_net'"),
])
def test_bad_config_gives_a_clear_error(tmp_path, capsys, override, message):
    data = make_class_folder(tmp_path / "train")
    assert _train(tmp_path, data, override) == 2
    assert message in capsys.readouterr().err


def test_missing_and_empty_folders(tmp_path, capsys):
    assert _train(tmp_path, tmp_path / "nowhere") == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _train(tmp_path, tmp_path / "empty") == 2
    assert "empty" in capsys.readouterr().err


def test_csv_manifest_and_sample_ratio(tmp_path):
    data = make_class_folder(tmp_path / "train", n_classes=6, per_class=6)
    lines = ["path,label"] + [f"{p.relative_to(tmp_path)},{p.parent.name}"
                              for p in sorted(data.rglob("*.jpg"))]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    assert main(["--config", TINY, f"data.train_csv={tmp_path / 'train.csv'}", "data.sample_ratio=0.5",
                 f"train.output_dir={tmp_path / 'runs'}", "train.epochs=1"]) == 0
    log = (tmp_path / "runs/tiny_test/train.log").read_text()
    assert "6 classes, 14 training and 4 validation images" in log or "6 classes" in log


def test_two_process_cpu_training(tmp_path):
    data = make_class_folder(tmp_path / "train", n_classes=8, per_class=6)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    # `accelerate launch --cpu` starts one process unless MPI is set up; torchrun's launcher
    # (--multi_gpu) with no visible GPU starts two gloo CPU processes. `-m simsearch.commands.train`:
    # the documented form for an installed package (tools/train.py is an alias of the same module).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "simsearch.commands.train", "--config", TINY, f"data.train_dir={data}",
           f"train.output_dir={tmp_path / 'runs'}", "train.epochs=2", "train.cpu=true"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "runs/tiny_test/train.log").read_text()
    assert "2 process(es)" in log
    assert "all 2 processes' batches" in log  # train.gather_embeddings=null: on with two processes
    assert len(metrics_rows(tmp_path / "runs" / "tiny_test")) == 2


def test_zero_epochs_saves_the_untrained_model_as_the_baseline(tmp_path):
    from safetensors.torch import load_file

    from simsearch.config import load
    from simsearch.models import build_model
    from simsearch.training.engine import seed_everything

    data = make_class_folder(tmp_path / "train")
    assert _train(tmp_path, data, "train.epochs=0") == 0
    run = tmp_path / "runs" / "tiny_test"
    rows = metrics_rows(run)
    assert [r["epoch"] for r in rows] == ["-1"] and float(rows[0]["map"]) > 0
    seed_everything(0)
    fresh = build_model(load([TINY])).state_dict()
    saved = load_file(str(run / "best" / "model.safetensors"))
    assert all((saved[k] == fresh[k]).all() for k in fresh)


def test_early_stopping_gradient_accumulation_and_bf16(tmp_path):
    # The colour-block classes are separable from the start, so validation mAP is 1.0 at
    # epoch 0 and cannot improve: patience 1 stops after epoch 1.
    data = make_class_folder(tmp_path / "train", n_classes=8, per_class=6)
    assert _train(tmp_path, data, "train.epochs=5", "train.early_stop_patience=1",
                  "train.grad_accum=2", "train.mixed_precision=bf16") == 0
    run = tmp_path / "runs" / "tiny_test"
    rows = metrics_rows(run)
    assert float(rows[0]["map"]) == 1.0
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert "early stop" in (run / "train.log").read_text()
    assert "mixed precision bf16" in (run / "train.log").read_text()
    # 8 classes keep 4 training images each (2 of 6 held out): one pass over the classes is
    # 8/4 = 2 batches of 4x2, auto rounds = round(32 / 8 / 2) = 2, so 4 batches an epoch;
    # accumulating 2 of them gives 2 optimizer (and scheduler) steps an epoch.
    import torch

    assert [int(r["step"]) for r in rows] == [2, 4]
    state = torch.load(run / "last" / "train_state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 4
