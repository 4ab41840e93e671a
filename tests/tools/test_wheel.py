"""The wheel that `pip install .` builds holds the whole package: every module (a folder without
``__init__.py`` is silently left out by setup.cfg's ``packages = find:``), every shipped config and
open_clip tower (``[options.package_data]``), and the ``simsearch`` command. Built offline from a copy
of the sources with the dev venv's setuptools; .ci/wheel_smoke.sh installs and runs such a wheel."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "simsearch"


def _build(tmp_path: Path) -> zipfile.ZipFile:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("simsearch-*.whl")
    return zipfile.ZipFile(wheel)


def _source_files() -> set[str]:
    return {f"simsearch/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_every_file_of_the_package_and_the_command(tmp_path):
    wheel = _build(tmp_path)
    names = set(wheel.namelist())
    shipped = {n for n in names if n.startswith("simsearch/")}
    source = _source_files()
    assert source - shipped == set()  # not shipped: a folder without __init__.py, a data file no pattern names
    assert shipped - source == set()  # shipped but not in the sources (a stale build/ would do this)
    # what the installed command needs outside a checkout
    assert {"simsearch/configs/default.yaml", "simsearch/configs/tiny_test.yaml",
            "simsearch/models/open_clip_configs/ViT-Tiny-Test.json", "simsearch/commands/__init__.py"} <= shipped
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "simsearch = simsearch.cli:main" in wheel.read(entry).decode()
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [line for line in wheel.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
    assert any(r.startswith("Requires-Dist: matplotlib") and "extra" not in r for r in requires)  # curves.png

