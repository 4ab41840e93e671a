"""The run's curves PNG (simsearch.training.curves): from hand-written metrics.csv files and a real tiny run."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tools.train import main as train_main

from conftest import make_class_folder
from simsearch.training import engine
from simsearch.training.curves import CURVES_DPI, CURVES_SIZE_IN, plot_curves, read_curves

HEADER = "epoch,step,loss,lr,images_per_s,seconds,r1,r5,map,miner\n"
ROWS = ["-1,0,,,,,0.20,0.50,0.25,\n",        # the untrained baseline: validation only
        "0,4,3.0,0.001,50.0,1.0,0.30,0.60,0.35,0\n",
        "1,8,2.0,0.0008,50.0,1.0,0.40,0.70,0.45,1\n",
        "2,12,1.0,0.0004,50.0,1.0,0.50,0.80,0.55,1\n"]
SIZE = (round(CURVES_SIZE_IN[0] * CURVES_DPI), round(CURVES_SIZE_IN[1] * CURVES_DPI))
# matplotlib's first three colours: the loss (and R@1), R@5, mAP
COLOURS = {"C0": (0x1F, 0x77, 0xB4), "C1": (0xFF, 0x7F, 0x0E), "C2": (0x2C, 0xA0, 0x2C)}


def _csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text(header + "".join(rows))
    return path


def _png(path: Path) -> np.ndarray:
    """The PNG as RGB pixels, after checking it is a whole PNG of the fixed size."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()  # the whole file: chunks and checksums
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == SIZE
        return np.asarray(im.convert("RGB")).astype(int)


def _coloured(pixels: np.ndarray, colour: str, half: str) -> int:
    """Pixels of one line colour in the left (loss) or right (validation) panel."""
    w = pixels.shape[1] // 2
    part = pixels[:, :w] if half == "left" else pixels[:, w:]
    return int((np.abs(part - np.array(COLOURS[colour])).sum(-1) <= 30).sum())


def test_loss_and_validation_panels(tmp_path):
    out = plot_curves(_csv(tmp_path / "metrics.csv", *ROWS), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    px = _png(out)
    assert _coloured(px, "C0", "left") > 100  # the loss line
    assert _coloured(px, "C1", "left") == _coloured(px, "C2", "left") == 0
    assert min(_coloured(px, c, "right") for c in COLOURS) > 100  # R@1, R@5 and mAP lines


def test_read_curves_blank_cells_are_gaps(tmp_path):
    cols = read_curves(_csv(tmp_path / "metrics.csv", *ROWS))
    assert cols["epoch"] == [-1, 0, 1, 2]
    assert math.isnan(cols["loss"][0]) and cols["loss"][1:] == [3.0, 2.0, 1.0]
    assert cols["map"] == [0.25, 0.35, 0.45, 0.55]


def test_one_epoch(tmp_path):
    px = _png(plot_curves(_csv(tmp_path / "metrics.csv", ROWS[1]), tmp_path / "curves.png"))
    assert _coloured(px, "C0", "left") > 10  # a single marker
    assert _coloured(px, "C2", "right") > 10


@pytest.mark.parametrize("header,rows", [
    ("epoch,step,loss,lr\n", ["0,4,3.0,0.001\n", "1,8,2.0,0.0008\n"]),            # no validation columns
    (HEADER, ["0,4,3.0,0.001,50,1,,,,0\n", "1,8,2.0,0.0008,50,1,,,,0\n"]),      # the columns, left blank
], ids=["no-columns", "blank-cells"])
def test_without_validation(tmp_path, header, rows):
    px = _png(plot_curves(_csv(tmp_path / "metrics.csv", *rows, header=header), tmp_path / "curves.png"))
    assert _coloured(px, "C0", "left") > 100
    assert all(_coloured(px, c, "right") == 0 for c in COLOURS)  # only the note, no line


def test_rewrite_replaces_the_file_whole(tmp_path):
    """The new PNG is renamed onto the old one: a reader holding the old file still has all of it."""
    metrics = _csv(tmp_path / "metrics.csv", *ROWS[:2])
    out = plot_curves(metrics, tmp_path / "curves.png")
    old_bytes = out.read_bytes()
    os.link(out, tmp_path / "reader.png")  # what an open reader sees: the old inode
    _csv(metrics, *ROWS)
    plot_curves(metrics, out)
    assert out.read_bytes() != old_bytes
    assert (tmp_path / "reader.png").read_bytes() == old_bytes  # not rewritten in place
    assert os.stat(out).st_ino != os.stat(tmp_path / "reader.png").st_ino
    _png(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.csv", "reader.png"]


def test_no_rows_is_refused_and_leaves_the_old_png(tmp_path):
    out = plot_curves(_csv(tmp_path / "metrics.csv", *ROWS), tmp_path / "curves.png")
    before = out.read_bytes()
    with pytest.raises(ValueError, match="no metrics rows"):
        plot_curves(_csv(tmp_path / "metrics.csv"), out)
    assert out.read_bytes() == before


def test_a_training_run_draws_its_curves_each_epoch_and_names_them_in_train_log(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(engine, "plot_curves", lambda csv, out: drawn.append(out) or plot_curves(csv, out))
    data = make_class_folder(tmp_path / "train", n_classes=6, per_class=6)
    assert train_main(["--config", "tiny_test", f"data.train_dir={data}", f"train.output_dir={tmp_path / 'runs'}",
                       "train.epochs=2"]) == 0
    run = tmp_path / "runs" / "tiny_test"
    png = run / "curves.png"
    assert drawn == [png, png]
    _png(png)
    # the last drawing is of the whole metrics.csv (matplotlib's PNG has no time stamp)
    assert png.read_bytes() == plot_curves(run / "metrics.csv", tmp_path / "again.png").read_bytes()
    log = (run / "train.log").read_text()
    assert f"loss and validation curves (redrawn each epoch): {png}" in log
    assert log.count("curves (redrawn") == 1
