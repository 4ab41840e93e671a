"""The `simsearch` console command: `simsearch bench NAME` runs the shipped benchmarks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simsearch.benchmarks.all import BENCHMARKS, PRESETS
from simsearch.cli import COMMANDS, benchmark_names, main


def test_bench_list_names_every_benchmark_of_the_suite(capsys) -> None:
    assert main(["bench", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == benchmark_names()
    # the suite's benchmarks and the ones that need data; helpers (common, compare, ...) are not listed
    assert set(BENCHMARKS) | {"all", "incremental", "quality", "whitening"} == set(names)


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


def test_help_lists_every_command_and_each_runs_its_module(capsys) -> None:
    import pkgutil

    import simsearch.commands as pkg

    modules = {m.name.replace("_", "-") for m in pkgutil.iter_modules(pkg.__path__)}
    assert set(COMMANDS) == modules | {"bench"}
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    # a command's own --help goes through its parser, under the command's name
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--help"])
    assert exit_.value.code == 0
    assert "usage: simsearch score" in capsys.readouterr().out


def test_unknown_command_is_refused_naming_the_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["trian"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "trian" in err and "train" in err


def test_shipped_configs_are_found_by_name_outside_a_checkout(tmp_path, monkeypatch) -> None:
    from simsearch.config import ConfigError, configs_dir, load, resolve_config

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert resolve_config("vit_l14_circle") == configs_dir() / "vit_l14_circle.yaml"
    assert resolve_config("configs/tiny_test.yaml") == configs_dir() / "tiny_test.yaml"
    assert load(["tiny_test"]).run_name == "tiny_test"
    with pytest.raises(ConfigError, match="config file not found: nope.*shipped: .*vit_l14_circle"):
        load(["nope"])
    # a path that exists wins over a shipped name
    (tmp_path / "tiny_test.yaml").write_text("run_name: mine\n")
    assert load(["tiny_test.yaml"]).run_name == "mine"
