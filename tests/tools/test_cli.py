"""The `simsearch` console command: `simsearch bench NAME` runs the shipped benchmarks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from simsearch.benchmarks.all import BENCHMARKS, PRESETS
from simsearch.cli import benchmark_names, main


def test_bench_list_names_every_benchmark_of_the_suite(capsys) -> None:
    assert main(["bench", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == benchmark_names()
    assert set(BENCHMARKS) | {"all", "quality"} == set(names)  # helpers (common, compare, ...) are not listed


def test_bench_runs_the_named_benchmark_with_its_arguments(capsys) -> None:
    assert main(["bench", "rerank", *PRESETS["smallest"]["rerank"]]) == 0
    assert "| sparse | 60 | 80 |" in capsys.readouterr().out


def test_unknown_benchmark_is_one_clear_error(capsys) -> None:
    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'" in err and "quality" in err


def test_help_and_no_arguments(capsys) -> None:
    assert main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    assert main([]) == 2


def test_the_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("simsearch")  # pip puts it beside the interpreter
    run = subprocess.run([str(exe), "bench", "--list"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "quality" in run.stdout.split()
