"""CSV manifests: column mapping, path templates over nested folders, and errors naming file, line, column."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CONFIGS
from simsearch.config import ConfigError, load
from simsearch.data.datasets import read_manifest
from simsearch.data.manifest import (
    ManifestError,
    ManifestSpec,
    MissingImagesError,
    parse_flag,
    read_items,
    split_query_gallery,
)
from simsearch.utils.errors import InputFileError

from .conftest import write_image

TEMPLATE = "train/{id[0]}/{id[1]}/{id[2]}/{id}.jpg"


def _landmarks(root: Path) -> Path:
    """A Kaggle-style train.csv (id,landmark_id) with images at train/a/b/c/abc123.jpg."""
    for image_id in ("abc123", "f00d42", "abd999"):
        write_image(root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg")
    csv = root / "train.csv"
    csv.write_text("id,landmark_id\nabc123,7\nf00d42,3\nabd999,7\n")
    return csv


def test_path_template_over_nested_folders_resolves_each_row(tmp_path: Path) -> None:
    csv = _landmarks(tmp_path)
    spec = ManifestSpec(label="landmark_id", id="id", path_template=TEMPLATE)
    items = read_items(csv, spec, label=True)
    assert [i.name for i in items] == ["abc123", "f00d42", "abd999"]
    assert [Path(i.path) for i in items] == [tmp_path / "train/a/b/c/abc123.jpg",
                                             tmp_path / "train/f/0/0/f00d42.jpg",
                                             tmp_path / "train/a/b/d/abd999.jpg"]
    assert [(i.line, i.label) for i in items] == [(2, "7"), (3, "3"), (4, "7")]
    samples, classes = read_manifest(csv, spec)  # training reads the same mapping
    assert classes == ["3", "7"] and [s.label for s in samples] == [1, 0, 1]
    assert samples[1].path == str(tmp_path / "train/f/0/0/f00d42.jpg")


def test_columns_and_image_root_come_from_the_config(tmp_path: Path) -> None:
    images = tmp_path / "elsewhere"
    write_image(images / "x" / "1.jpg")
    csv = tmp_path / "lists" / "train.csv"
    csv.parent.mkdir()
    csv.write_text("image,class\nx/1.jpg,cat\n")
    cfg = load([CONFIGS / "tiny_test.yaml"], ["data.columns.path=image", "data.columns.label=class",
                                              f"data.image_root={images}"])
    spec = ManifestSpec.from_config(cfg.data)
    assert spec == ManifestSpec(path="image", label="class", image_root=str(images))
    samples, classes = read_manifest(csv, spec)
    assert samples[0].path == str(images / "x" / "1.jpg") and classes == ["cat"]
    assert ManifestSpec.from_config(load().data) == ManifestSpec()  # the defaults read path,label


def test_missing_column_names_file_line_and_column(tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text("image_id,landmark_id\nabc123,7\n")
    with pytest.raises(ManifestError, match=r"train\.csv: line 1: missing column 'id' \(found: image_id, "
                                            r"landmark_id\); data\.path_template uses it"):
        read_items(csv, ManifestSpec(id="id", path_template=TEMPLATE))
    with pytest.raises(ManifestError, match=r"train\.csv: line 1: missing column 'label' .*data\.columns\.label"):
        read_items(csv, ManifestSpec(path="image_id"), label=True)


def test_every_missing_file_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    csv = _landmarks(tmp_path)
    csv.write_text("id,landmark_id\nabc123,7\ngone01,3\nf00d42,3\ngone02,7\n")
    spec = ManifestSpec(label="landmark_id", id="id", path_template=TEMPLATE)
    with pytest.raises(MissingImagesError) as info:
        read_items(csv, spec)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    assert [(line, name) for line, name, _ in err.missing] == [(3, "gone01"), (5, "gone02")]
    assert err.missing[0][2] == str(tmp_path / "train/g/o/n/gone01.jpg")
    message = str(err)
    assert message.startswith(f"{csv}: 2 image files do not exist (from data.path_template")
    assert "line 3: 'gone01' -> " in message and "line 5: 'gone02' -> " in message


def test_duplicate_id_names_both_lines_and_the_column(tmp_path: Path) -> None:
    csv = _landmarks(tmp_path)
    csv.write_text("id,landmark_id\nabc123,7\nf00d42,3\nabc123,9\n")
    with pytest.raises(ManifestError, match=r"train\.csv: line 4: column 'id': 'abc123' repeats line 2"):
        read_items(csv, ManifestSpec(id="id", path_template=TEMPLATE))
    # without an id column the path value is the name; a training manifest may list an image twice
    rows = tmp_path / "rows.csv"
    rows.write_text("path,label\ntrain/a/b/c/abc123.jpg,1\ntrain/a/b/c/abc123.jpg,1\n")
    with pytest.raises(ManifestError, match=r"rows\.csv: line 3: column 'path': .* repeats line 2"):
        read_items(rows)
    assert len(read_manifest(rows)[0]) == 2


def test_empty_value_bad_template_row_and_bad_flag_name_line_and_column(tmp_path: Path) -> None:
    csv = _landmarks(tmp_path)
    spec = ManifestSpec(id="id", path_template=TEMPLATE)
    csv.write_text("id,landmark_id\nabc123,7\n,3\n")
    with pytest.raises(ManifestError, match=r"train\.csv: line 3: column 'id': empty value"):
        read_items(csv, spec)
    csv.write_text("id,landmark_id\nab,7\n")  # id[2] does not exist
    with pytest.raises(ManifestError, match=r"train\.csv: line 2: column 'id': data\.path_template .* fails on "
                                            r"this row \(IndexError"):
        read_items(csv, spec)
    csv.write_text("id,is_query,is_gallery\nabc123,1,1\nf00d42,maybe,0\n")
    with pytest.raises(ManifestError, match=r"train\.csv: line 3: column 'is_query': 'maybe' is not 1, 0"):
        read_items(csv, spec, roles=True)
    assert issubclass(ManifestError, InputFileError) and issubclass(ManifestError, ValueError)


def test_bad_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data.path_template"):
        ManifestSpec(path_template="{}/{0}.jpg").needed_columns()
    with pytest.raises(ConfigError, match="data.path_template"):
        ManifestSpec(path_template="images/fixed.jpg").needed_columns()


def test_test_csv_roles_split_queries_and_gallery(tmp_path: Path) -> None:
    csv = _landmarks(tmp_path)
    csv.write_text("id,is_query,is_gallery\nabc123,1,1\nf00d42,true,False\nabd999,0,YES\n")
    items = read_items(csv, ManifestSpec(id="id", path_template=TEMPLATE), roles=True)
    query, gallery = split_query_gallery(csv, items)
    assert [i.name for i in query] == ["abc123", "f00d42"] and [i.name for i in gallery] == ["abc123", "abd999"]
    assert [parse_flag(v) for v in ("1", "0", "True", "no", "2", "")] == [True, False, True, False, None, None]
    csv.write_text("id,is_query,is_gallery\nabc123,0,1\n")
    with pytest.raises(ManifestError, match=r"train\.csv: no query row: column 'is_query'"):
        split_query_gallery(csv, read_items(csv, ManifestSpec(id="id", path_template=TEMPLATE), roles=True))


def test_files_are_not_needed_to_read_labels(tmp_path: Path) -> None:
    csv = tmp_path / "test.csv"
    csv.write_text("id,label,is_query,is_gallery\nnope1,a,1,1\n")
    items = read_items(csv, ManifestSpec(id="id", path_template="{id}.jpg"), label=True, roles=True,
                       check_files=False)
    assert [(i.name, i.label, i.is_query, i.is_gallery) for i in items] == [("nope1", "a", True, True)]
