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

__all__ = ["ConfigError", "default_config_path", "load", "save", "section_values"]


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a wrong type."""


def default_config_path() -> Path:
    """The repository's ``configs/default.yaml`` (override with ``SIMSEARCH_DEFAULT_CONFIG``)."""
    env = os.environ.get("SIMSEARCH_DEFAULT_CONFIG")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs" / "default.yaml"


# Keys that also take one word besides their default's type.
_ALSO_ALLOWED = {"infer.top_k": ("all",)}


def _type_ok(default: Any, value: Any, key: str = "") -> bool:
    if value in _ALSO_ALLOWED.get(key, ()):
        return True
    if value is None or default is None:
        return True  # a null default accepts any scalar; any key may be set back to null
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, ListConfig)):
        return isinstance(value, (list, ListConfig))
    return True


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
        if not _type_ok(dval, lval, full):
            raise ConfigError(
                f"{source}: '{full}' must be {type(dval).__name__} like the default {dval!r}, "
                f"got {type(lval).__name__} {lval!r}"
            )


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return cfg


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise ConfigError(f"command line: cannot parse overrides {list(overrides)}: {exc}") from exc


def load(files: Iterable[str | Path] = (), overrides: Sequence[str] = (),
         default: str | Path | None = None) -> DictConfig:
    """Merge default, experiment files (in order) and dotlist overrides into a read-only config.

    ``run_name`` defaults to the stem of the last experiment file (or ``default``).
    """
    default_path = Path(default) if default else default_config_path()
    cfg = _read_yaml(default_path)
    files = [Path(f) for f in files]
    layers = [(str(f), _read_yaml(f)) for f in files]
    layers.append(("command line", _parse_overrides(overrides)))
    for source, layer in layers:
        _check(cfg, layer, source)
        cfg = OmegaConf.merge(cfg, layer)
    if cfg.run_name is None:
        cfg.run_name = files[-1].stem if files else "default"
    OmegaConf.set_readonly(cfg, True)
    OmegaConf.set_struct(cfg, True)
    return cfg


def save(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config atomically (the run folder keeps what actually ran)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)


def section_values(cls: type, section: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config ``section`` that are fields of the dataclass ``cls``, then ``changes``.

    What every options dataclass's ``from_config`` starts from.
    """
    values = {f.name: section[f.name] for f in fields(cls) if f.name in section}
    values.update(changes)
    return values
