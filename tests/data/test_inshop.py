"""The DeepFashion In-shop reader on a small fabricated partition list with tiny images."""
import json
import os

import pytest
from PIL import Image
from tools.inshop import main as inshop_main

from simsearch.data import scan_class_folders
from simsearch.data.inshop import build_inshop, flat_name, read_partition
from simsearch.inference.submission import read_ground_truth

ROWS = [
    ("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
    ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
    ("img/MEN/Denim/id_00000002/01_1_front.jpg", "id_00000002", "query"),
    ("img/MEN/Denim/id_00000002/01_2_side.jpg", "id_00000002", "gallery"),
    ("img/MEN/Denim/id_00000002/01_3_back.jpg", "id_00000002", "gallery"),
    ("img/WOMEN/Tees/id_00000003/02_1_front.jpg", "id_00000003", "query"),
    ("img/WOMEN/Tees/id_00000003/02_2_side.jpg", "id_00000003", "gallery"),
    ("img/WOMEN/Tees/id_00000004/01_1_front.jpg", "id_00000004", "query"),  # item without gallery
]


def _write_list(path, rows, count=None, header="image_name item_id evaluation_status"):
    body = "\n".join(f"{a}   {b} {c}" for a, b, c in rows)
    path.write_text(f"{len(rows) if count is None else count}\n{header}\n{body}\n")
    return path


@pytest.fixture()
def inshop(tmp_path):
    root = tmp_path / "inshop"
    for i, (image, _, _) in enumerate(ROWS):
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 8), (i * 30, 0, 0)).save(root / image)
    (root / "Eval").mkdir()
    _write_list(root / "Eval" / "list_eval_partition.txt", ROWS)
    return root


def test_build_writes_the_competition_layout(inshop, tmp_path):
    counts = build_inshop(inshop, tmp_path / "out")
    assert counts == {"train_images": 2, "train_items": 1, "queries": 2, "gallery": 3,
                      "queries_without_gallery": 1}
    out = tmp_path / "out"
    gt = read_ground_truth(out / "test" / "ground_truth.json")
    assert gt == {"MEN__Denim__id_00000002__01_1_front.jpg": ["MEN__Denim__id_00000002__01_2_side.jpg",
                                                              "MEN__Denim__id_00000002__01_3_back.jpg"],
                  "WOMEN__Tees__id_00000003__02_1_front.jpg": ["WOMEN__Tees__id_00000003__02_2_side.jpg"]}
    assert sorted(os.listdir(out / "test" / "query")) == sorted(gt)
    assert len(os.listdir(out / "test" / "gallery")) == 3
    samples, classes = scan_class_folders(out / "training")
    assert classes == ["id_00000001"] and len(samples) == 2
    q = out / "test" / "query" / "MEN__Denim__id_00000002__01_1_front.jpg"
    assert q.is_symlink() and os.readlink(q) == str((inshop / ROWS[2][0]).resolve())


def test_copy_force_and_the_tool(inshop, tmp_path, capsys):
    out = tmp_path / "out"
    assert inshop_main(["--root", str(inshop), "--out", str(out), "--copy"]) == 0
    assert "2 queries, 3 gallery images (1 queries without gallery left out)" in capsys.readouterr().out
    g = out / "test" / "gallery" / "MEN__Denim__id_00000002__01_2_side.jpg"
    assert g.is_file() and not g.is_symlink()
    assert inshop_main(["--root", str(inshop), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert inshop_main(["--root", str(inshop), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "test" / "ground_truth.json").read_text())


@pytest.mark.parametrize("rows, count, header, match", [
    (ROWS[:2], "2x", None, r"line 1: expected the number of images"),
    (ROWS[:2], None, "image_name item_id", r"line 2: expected the header"),
    ([*ROWS[:2], ("img/a.jpg", "id_1", "test")], None, None, r"line 5: evaluation_status 'test'"),
    ([*ROWS[:2], ("img/a.jpg", "id_1")], None, None, r"line 5: expected 3 fields"),
    ([*ROWS[:2], ROWS[0]], None, None, r"line 5: .* already listed on line 3"),
    (ROWS[:2], 5, None, r"line 1 says 5 images but 2 are listed"),
])
def test_bad_lists_name_the_file_and_line(tmp_path, rows, count, header, match):
    path = tmp_path / "list_eval_partition.txt"
    body = "\n".join(" ".join(r) for r in rows)
    path.write_text(f"{len(rows) if count is None else count}\n"
                    f"{header or 'image_name item_id evaluation_status'}\n{body}\n")
    with pytest.raises(ValueError, match=f"list_eval_partition.txt: {match}"):
        read_partition(path)


def test_missing_images_are_listed_with_their_line(inshop, tmp_path):
    os.remove(inshop / ROWS[4][0])
    with pytest.raises(FileNotFoundError, match=r"1 listed image\(s\) do not exist: line 7: .*01_3_back.jpg"):
        build_inshop(inshop, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_flat_name():
    flat = "WOMEN__Dresses__id_00000002__02_1_front.jpg"
    assert flat_name("img/WOMEN/Dresses/id_00000002/02_1_front.jpg") == flat
    assert flat_name("WOMEN/Dresses/id_00000002/02_1_front.jpg") == flat
