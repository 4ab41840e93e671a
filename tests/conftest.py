"""Shared fixtures: tiny generated image folders, the repo's configs, CPU only."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (REPO / "configs").resolve()  # the shipped configs (src/simsearch/configs)


def make_class_folder(root: Path, n_classes: int = 6, per_class: int = 6, size: int = 40,
                      seed: int = 0) -> Path:
    """Each class is a distinct colour pattern plus noise, so a model can learn it quickly."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        base = rng.integers(0, 256, size=(4, 4, 3))
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            big = np.kron(base, np.ones((size // 4, size // 4, 1)))
            img = np.clip(big + rng.normal(0, 25, big.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:02d}.jpg", quality=95)
    return root


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "train")


def train_tiny_checkpoint(root: Path, n_classes: int) -> Path:
    """One epoch of configs/tiny_test.yaml on a generated folder; returns the best/ checkpoint."""
    from tools.train import main as train_main

    train = make_class_folder(root / "train", n_classes=n_classes, per_class=6, seed=0)
    assert train_main(["--config", str(CONFIGS / "tiny_test.yaml"), f"data.train_dir={train}",
                       f"train.output_dir={root / 'runs'}", "train.epochs=1"]) == 0
    return root / "runs" / "tiny_test" / "best"


def metrics_rows(run: Path, name: str = "metrics.csv") -> list[dict]:
    """The rows of a run folder's metrics.csv (or another CSV it holds, e.g. wise.csv)."""
    import csv

    with open(run / name) as f:
        return list(csv.DictReader(f))


@dataclass
class KilledRun:
    full: Path          # the uninterrupted run folder
    resumed: Path       # the killed-then-resumed run folder
    rows_at_kill: int   # metrics.csv rows the killed run had written


def kill_and_resume(monkeypatch: pytest.MonkeyPatch, args: list[str], out: Path, kill_at: int,
                    run_name: str = "tiny_test") -> KilledRun:
    """Train ``args`` (tools/train.py arguments) to the end; train them again, killed (KeyboardInterrupt)
    when epoch ``kill_at`` starts (1-based); resume that run with --resume. Callers compare the two folders."""
    from tools.train import main as train_main

    from simsearch.training import engine

    assert train_main([*args, f"train.output_dir={out / 'full'}"]) == 0
    real, calls = engine.train_one_epoch, []

    def killed(*a, **k):
        calls.append(1)
        if len(calls) == kill_at:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    stopped = [*args, f"train.output_dir={out / 'stopped'}"]
    monkeypatch.setattr(engine, "train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train_main(stopped)
    monkeypatch.setattr(engine, "train_one_epoch", real)
    rows = len(metrics_rows(out / "stopped" / run_name))
    assert train_main([*stopped, "--resume"]) == 0
    return KilledRun(out / "full" / run_name, out / "stopped" / run_name, rows)
