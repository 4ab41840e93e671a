"""train.log_with: the experiment tracker goes through Accelerate's log_with / init_trackers / log."""
from pathlib import Path

import pytest
from tools.train import main as train_main

from conftest import make_class_folder, metrics_rows
from simsearch.training import engine


def _train(tmp_path: Path, *extra: str) -> int:
    data = make_class_folder(tmp_path / "train", n_classes=6, per_class=6)
    return train_main(["--config", "tiny_test", f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
                       "train.epochs=2", *extra])


def _scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_every_step_and_the_validation_of_each_epoch(tmp_path):
    assert _train(tmp_path) == 0  # the default: train.log_with=tensorboard
    run = tmp_path / "runs" / "tiny_test"
    rows = metrics_rows(run)
    got = _scalars(run / "tb")
    last_step = int(rows[-1]["step"])
    assert [s for s, _ in got["train/loss"]] == list(range(1, last_step + 1))  # tiny_test: log_every 1
    assert [s for s, _ in got["train/lr"]] == list(range(1, last_step + 1))
    assert [(s, round(v, 5)) for s, v in got["val/map"]] == [(int(r["step"]), round(float(r["map"]), 5))
                                                            for r in rows]
    assert "experiment tracker: tensorboard" in (run / "train.log").read_text()


@pytest.mark.parametrize("value", ["none", "null"])
def test_none_starts_no_tracker(tmp_path, value):
    assert _train(tmp_path, f"train.log_with={value}") == 0
    run = tmp_path / "runs" / "tiny_test"
    assert not (run / "tb").exists() and (run / "curves.png").is_file()
    assert len(metrics_rows(run)) == 2
    assert "experiment tracker" not in (run / "train.log").read_text()


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_is_refused_before_any_work(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setitem(engine.TRACKERS, name, (lambda: False, name))  # as where the package is missing
    assert _train(tmp_path, f"train.log_with={name}") == 2
    err = capsys.readouterr().err
    assert f"train.log_with: {name} is not installed; pip install {name}" in err
    assert not (tmp_path / "runs").exists()


def test_an_unknown_tracker_names_the_choices(tmp_path, capsys):
    assert _train(tmp_path, "train.log_with=comet") == 2
    assert "train.log_with: 'comet' must be one of tensorboard, wandb, mlflow, none" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
