"""Layered configuration: default.yaml <- experiment file <- command-line dotlist.

Every key must exist in ``configs/default.yaml``; an unknown key or a value of the wrong type
fails before any work starts, with the key and the file that set it in the message.
"""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from simsearch.utils.fs import write_text_atomic

__all__ = ["ConfigError", "check_choice", "check_number", "configs_dir", "default_config_path", "load",
           "resolve_config", "save", "section_values", "shipped_configs"]


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a wrong type."""


def configs_dir() -> Path:
    """The configs shipped inside the package (the checkout's top-level ``configs/`` links here)."""
    return Path(__file__).resolve().parent / "configs"


def default_config_path() -> Path:
    """The shipped ``configs/default.yaml`` (override with ``SIMSEARCH_DEFAULT_CONFIG``)."""
    env = os.environ.get("SIMSEARCH_DEFAULT_CONFIG")
    if env:
        return Path(env)
    return configs_dir() / "default.yaml"


def shipped_configs() -> list[str]:
    """The names of the shipped experiment configs (``simsearch train --config NAME`` takes them)."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml") if p.stem != "default")


def resolve_config(name: str | Path, key: str | None = None) -> Path:
    """A config file: ``name`` as a path when it exists, else a shipped config (``vit_l14_circle``,
    ``vit_l14_circle.yaml`` or ``configs/vit_l14_circle.yaml``), so the installed command finds them
    outside a checkout; anything else is refused with the shipped names (and ``key``, the setting
    that named it, when given)."""
    p = Path(name)
    if p.exists():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    shipped = configs_dir() / f"{stem}.yaml"
    if shipped.is_file() and (len(p.parts) == 1 or p.parent.name == "configs"):
        return shipped
    raise ConfigError(f"{key + ': ' if key else ''}config file not found: {name} "
                      "(nor a shipped config of that name; "
                      f"shipped: {', '.join(shipped_configs())})")


# Keys that also take one word besides their default's type.
_ALSO_ALLOWED = {"infer.top_k": ("all",)}

# The type of every key whose default in configs/default.yaml is null (a null default cannot say);
# null itself stays allowed. tests/test_config.py fails when a null-default key is missing here.
_NULL_TYPES: dict[str, type | tuple[type, ...]] = {
    "run_name": str,                        # a folder name under train.output_dir
    "data.train_dir": str,                  # a folder path
    "data.train_csv": str,                  # a file path
    "data.columns.id": str,                 # a CSV column name
    "data.path_template": str,              # a str.format template over a row's columns
    "data.image_root": str,                 # a folder path
    "data.image_size": int,                 # pixels
    "data.pk_rounds": int,                  # passes over all classes per epoch
    "data.pairs_per_batch": int,
    "data.query_domain_pattern": str,       # a folder name or a glob
    "model.lora.blocks": (str, list),       # "all", "last:N" or a list of block indices
    "train.time_limit_min": float,          # minutes (an int is fine)
    "train.max_steps_per_epoch": int,
    "train.gather_embeddings": bool,        # null = on with several processes
    "infer.text.captioner": str,            # a folder path
    "infer.text.titles_csv": str,           # a file path
    "infer.second_stage.checkpoint": str,   # a run's best/ folder
    "infer.second_stage.config": str,       # a config YAML path
    "infer.submission.header": list,        # two CSV column names
    "infer.submission.separator": str,
    "infer.submission.ids": str,            # name or stem
    "infer.submission.top_k": int,
    "infer.submission.threshold": float,    # a similarity in [-1, 1]
    "infer.submission.level": str,          # instance or class
    "infer.submission.unknown_label": str,
    "infer.submission.gallery_labels": str,  # a file path
}


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """``isinstance`` as the config means it: bool is not a number, an int is a float, any list is a list."""
    if isinstance(kind, tuple):
        return any(_is(value, k) for k in kind)
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        number = (int, float) if kind is float else int
        return isinstance(value, number) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, ListConfig))
    return isinstance(value, kind)


def _expected(default: Any, key: str) -> type | tuple[type, ...] | None:
    """The type(s) a key takes: its default's, or the declared one for a null default (None: any)."""
    if default is None:
        return _NULL_TYPES.get(key)
    if isinstance(default, (list, ListConfig)):
        return list
    if isinstance(default, (bool, int, float, str)):
        return type(default)
    return None


def _type_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def _type_ok(default: Any, value: Any, key: str = "") -> bool:
    if value is None or value in _ALSO_ALLOWED.get(key, ()):
        return True  # any key may be set back to null
    kind = _expected(default, key)
    return kind is None or _is(value, kind)


def _check(default: DictConfig, layer: DictConfig, source: str, prefix: str = "") -> None:
    for key in layer.keys():
        full = f"{prefix}{key}"
        if key not in default:
            known = ", ".join(sorted(str(k) for k in default.keys()))
            raise ConfigError(f"{source}: unknown config key '{full}' (known here: {known})")
        dval = OmegaConf.to_container(default, resolve=False)[key]
        node = layer._get_node(key)
        if isinstance(node, DictConfig):
            if not isinstance(default._get_node(key), DictConfig):
                raise ConfigError(f"{source}: '{full}' is a value, not a section")
            _check(default[key], node, source, prefix=f"{full}.")
            continue
        lval = OmegaConf.to_container(layer, resolve=False)[key]
        if isinstance(dval, dict):
            raise ConfigError(f"{source}: '{full}' is a section; set its keys, not a value")
        if _expected(dval, full) is str and isinstance(lval, (int, float)) and not isinstance(lval, bool):
            layer[key] = lval = str(lval)  # a file's `run_name: 2024` names a run '2024'
        if not _type_ok(dval, lval, full):
            kind = _type_name(_expected(dval, full))
            like = "(or null, the default)" if dval is None else f"like the default {dval!r}"
            raise ConfigError(f"{source}: '{full}' must be {kind} {like}, got {type(lval).__name__} {lval!r}")


def _read_yaml(path: Path) -> DictConfig:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; a config is a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return cfg


def _expected_at(default: DictConfig, key: str) -> type | tuple[type, ...] | None:
    """The type a dotted key takes (None: any, or not a key of default.yaml)."""
    node = OmegaConf.select(default, key, default="__missing__")
    return None if node == "__missing__" or isinstance(node, DictConfig) else _expected(node, key)


def _as_text(raw: str) -> str | None:
    """An override value for a text key, as typed: ``2024`` stays the folder name '2024', not the int."""
    raw = raw.strip()
    if raw in ("null", "~"):
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def _parse_overrides(overrides: Sequence[str], default: DictConfig) -> DictConfig:
    plain, text = [], {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        if _expected_at(default, key.strip()) is str:  # YAML would turn 2024 or 1e3 into a number
            text[key.strip()] = _as_text(raw)
        else:
            plain.append(item)
    try:
        layer = OmegaConf.from_dotlist(plain)
    except Exception as exc:
        raise ConfigError(f"command line: cannot parse overrides {plain}: {exc}") from exc
    for key, value in text.items():
        OmegaConf.update(layer, key, value, force_add=True)
    return layer


def load(files: Iterable[str | Path] = (), overrides: Sequence[str] = (),
         default: str | Path | None = None) -> DictConfig:
    """Merge default, experiment files (in order) and dotlist overrides into a read-only config.

    ``run_name`` defaults to the stem of the last experiment file (or ``default``).
    """
    default_path = Path(default) if default else default_config_path()
    cfg = base = _read_yaml(default_path)
    files = [resolve_config(f) for f in files]
    layers = [(str(f), _read_yaml(f)) for f in files]
    layers.append(("command line", _parse_overrides(overrides, base)))
    for source, layer in layers:
        _check(base, layer, source)  # types come from default.yaml, not from what an earlier layer set
        cfg = OmegaConf.merge(cfg, layer)
    if cfg.run_name is None:
        cfg.run_name = files[-1].stem if files else "default"
    OmegaConf.set_readonly(cfg, True)
    OmegaConf.set_struct(cfg, True)
    return cfg


def save(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config atomically (the run folder keeps what actually ran)."""
    write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True), force=True)


def section_values(cls: type, section: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config ``section`` that are fields of the dataclass ``cls``, then ``changes``.

    What every options dataclass's ``from_config`` starts from.
    """
    values = {f.name: section[f.name] for f in fields(cls) if f.name in section}
    values.update(changes)
    return values


def _bound(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, null_ok: bool = False,
                 words: Sequence[str] = (), why: str = "") -> None:
    """Raise ConfigError ``key: must be ..., got value`` unless ``value`` is a number in the range.

    The range is [low, high] (``low_open`` / ``high_open`` leave a bound out; None = unbounded);
    null passes with ``null_ok``, and so does each of ``words`` (``infer.top_k: all``). ``why``
    is added to the message (what the edge values mean).
    """
    if (value is None and null_ok) or (isinstance(value, str) and value in words):
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (low is None or value > low or (value == low and not low_open)) and (
            high is None or value < high or (value == high and not high_open)):
        return
    rule = _bound(low, high, low_open, high_open) + "".join(f" or {w}" for w in words)
    rule += " or null" if null_ok else ""
    raise ConfigError(f"{key}: must be {rule}, got {value!r}" + (f" ({why})" if why else ""))


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ConfigError ``key: 'x' must be one of ...`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} must be one of {', '.join(str(c) for c in choices)}")
