from __future__ import annotations

import ast
import importlib
import json
from dataclasses import MISSING, fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from conftest import CONFIGS, REPO
from simsearch.config import _NULL_TYPES, ConfigError, _type_ok, load


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_merge_order_default_then_files_then_overrides(tmp_path):
    a = _write(tmp_path / "a.yaml", "train:\n  epochs: 3\n  lr: 0.5\n")
    b = _write(tmp_path / "b.yaml", "train:\n  epochs: 7\n")
    cfg = load([a, b], ["train.lr=0.25"])
    assert cfg.train.epochs == 7          # later file wins over earlier
    assert cfg.train.lr == 0.25           # command line wins over files
    assert cfg.train.batch_k == 4         # untouched default
    assert cfg.run_name == "b"            # last experiment file names the run


def test_every_default_key_has_a_comment():
    for line in (CONFIGS / "default.yaml").read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#") and not s.endswith(":"):
            assert "#" in line, f"default.yaml key without a comment: {line!r}"


def test_unknown_key_names_key_and_file(tmp_path):
    f = _write(tmp_path / "exp.yaml", "train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*train\.epocs"):
        load([f])
    with pytest.raises(ConfigError, match=r"command line.*model\.nope"):
        load([], ["model.nope=1"])


def test_wrong_type_names_key_and_file(tmp_path):
    f = _write(tmp_path / "exp.yaml", "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*train\.epochs.*int"):
        load([f])
    with pytest.raises(ConfigError, match="train.cpu"):
        load([], ["train.cpu=3"])
    # An int where a float is expected is fine; a null is always allowed.
    cfg = load([], ["train.lr=1", "train.clip_grad=null"])
    assert cfg.train.lr == 1 and cfg.train.clip_grad is None


def test_config_is_locked(tmp_path):
    cfg = load([])
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        cfg.train.epochs = 5
    assert OmegaConf.is_readonly(cfg)


def test_section_replaced_by_value_is_an_error():
    with pytest.raises(ConfigError, match="'train' is a section"):
        load([], ["train=3"])


def test_shipped_configs_load():
    for f in sorted(CONFIGS.glob("*.yaml")):
        load([f])
    cfg = load([CONFIGS / "vit_l14_circle.yaml"])
    assert (cfg.train.batch_p, cfg.train.batch_k) == (32, 4)
    assert (cfg.loss.circle_m, cfg.loss.circle_gamma) == (0.4, 80.0)
    assert cfg.train.miner_start_epoch == 5 and cfg.train.warmup_frac == 0.15
    assert cfg.model.dropout == 0.1 and cfg.train.weight_decay == 0.05
    # the recipe: identity head at the backbone's width, head first, then the whole model, WiSE-FT
    assert cfg.model.embed_dim is None and cfg.model.head_init == "identity"
    assert [dict(s) for s in cfg.train.stages] == [{"epochs": 2, "train": "head", "lr": 1e-3},
                                                   {"epochs": 18, "lr": 1e-4}]
    assert cfg.train.wise_alphas[0] == 0.0 and cfg.train.wise_alphas[-1] == 1.0


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load([tmp_path / "missing.yaml"])
    bad = _write(tmp_path / "bad.yaml", "train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load([bad])


def test_top_k_takes_all_but_no_other_word():
    assert load([], ["infer.top_k=all"]).infer.top_k == "all"
    with pytest.raises(ConfigError, match="infer.top_k"):
        load([], ["infer.top_k=many"])


# --- defaults: every key typed, every key read, options dataclasses agree with default.yaml ----------

SOURCES = sorted((REPO / "src" / "simsearch").rglob("*.py")) + sorted((REPO / "tools").rglob("*.py"))

# The options dataclasses whose from_config starts from section_values(), and the config section
# their callers hand them (e.g. ``MultiCropOptions.from_config(cfg.infer.multicrop)``).
OPTIONS_SECTIONS = {
    "simsearch.retrieval.pipeline.RetrievalOptions": "infer",
    "simsearch.retrieval.multicrop.MultiCropOptions": "infer.multicrop",
    "simsearch.retrieval.second_stage.SecondStageOptions": "infer.second_stage",
    "simsearch.retrieval.text_expansion.TextOptions": "infer.text",
}

# Keys read in a way the source scan below cannot see, each with the reason. Empty today; an entry
# must name a real key that the scan misses (test_read_unseen_entries_are_needed checks both).
READ_UNSEEN: dict[str, str] = {}


@cache
def _default() -> DictConfig:
    return OmegaConf.load(CONFIGS / "default.yaml")


def _tree(node: DictConfig, prefix: str = "") -> dict[str, Any]:
    """{dotted name: value} of every key and section (a section's value is its DictConfig)."""
    out: dict[str, Any] = {}
    for key in node.keys():
        full = f"{prefix}{key}"
        if isinstance(node._get_node(key), DictConfig):
            out[full] = node[key]
            out.update(_tree(node[key], f"{full}."))
        else:
            out[full] = OmegaConf.to_container(node, resolve=False)[key]
    return out


def _leaves() -> dict[str, Any]:
    """{dotted key: default value} of every leaf of default.yaml."""
    return {k: v for k, v in _tree(_default()).items() if not isinstance(v, DictConfig)}


def _section_named(name: str) -> str:
    """The one default.yaml section whose last name is ``name``."""
    found = [k for k, v in _tree(_default()).items() if isinstance(v, DictConfig) and k.split(".")[-1] == name]
    assert len(found) == 1, f"section name {name!r} matches {found}"
    return found[0]


def _last_name(node: ast.AST) -> str | None:
    """``c`` of ``a.b.c``, ``a["c"]`` or ``c``: the name a value is known by."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return node.slice.value if isinstance(node.slice.value, str) else None
    return None


def _module(path: Path) -> str:
    rel = path.relative_to(REPO / "src") if path.is_relative_to(REPO / "src") else path.relative_to(REPO)
    return ".".join(rel.with_suffix("").parts)


@cache
def _parsed() -> tuple[tuple[Path, ast.Module], ...]:
    return tuple((f, ast.parse(f.read_text(), str(f))) for f in SOURCES)


@cache
def _options_classes() -> dict[str, tuple[str, ...]]:
    """{module.Class: field names} of the classes whose ``from_config`` calls ``section_values``."""
    out = {}
    for path, tree in _parsed():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            methods = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "from_config"]
            if any(isinstance(c, ast.Call) and _last_name(c.func) == "section_values"
                   for m in methods for c in ast.walk(m)):
                names = tuple(n.target.id for n in cls.body
                              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
                out[f"{_module(path)}.{cls.name}"] = names
    return out


@cache
def _options_callers() -> dict[str, set[str]]:
    """{module.Class: sections its callers pass}, from every ``Class.from_config(<cfg>.<section>)``."""
    by_name = {qual.rsplit(".", 1)[1]: qual for qual in _options_classes()}
    out: dict[str, set[str]] = {qual: set() for qual in by_name.values()}
    for _, tree in _parsed():
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            f = call.func
            if (isinstance(f, ast.Attribute) and f.attr == "from_config" and isinstance(f.value, ast.Name)
                    and f.value.id in by_name and call.args):
                section = _last_name(call.args[0])
                if section is not None:  # a literal ({}) is no config section
                    out[by_name[f.value.id]].add(_section_named(section))
    return out


@cache
def _source_reads() -> frozenset[tuple[str, str]]:
    """(owner, key) pairs the sources read, owner being the name the section goes by there.

    Seen: ``owner.key`` (not a method call), ``owner["key"]``, ``owner.get("key")``, ``getattr(owner, "key")``;
    ``x.key`` where ``x = <...>.owner`` (tuple assignments too) or ``x`` is named ``owner_cfg``;
    ``OmegaConf.select(cfg, "a.owner.key")``; and the fields of an options dataclass for the section its
    callers pass to ``from_config`` (``section_values`` reads them all).
    """
    reads: set[tuple[str, str]] = set()
    for _, tree in _parsed():
        nodes = list(ast.walk(tree))
        called = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
        aliases: dict[str, set[str]] = {}
        for n in nodes:
            if isinstance(n, ast.Assign):
                pairs = []
                for t in n.targets:
                    if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple):
                        pairs += list(zip(t.elts, n.value.elts))
                    else:
                        pairs.append((t, n.value))
                for target, value in pairs:
                    if isinstance(target, ast.Name) and not isinstance(value, ast.Name) and _last_name(value):
                        aliases.setdefault(target.id, set()).add(_last_name(value))
        for n in nodes:
            owner = key = None
            if isinstance(n, ast.Attribute) and id(n) not in called:
                owner, key = n.value, n.attr
            elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant):
                owner, key = n.value, n.slice.value
            elif isinstance(n, ast.Call):
                func, args = n.func, [a.value if isinstance(a, ast.Constant) else None for a in n.args]
                if isinstance(func, ast.Attribute) and func.attr == "get" and 1 <= len(args) <= 2:
                    owner, key = func.value, args[0]
                elif isinstance(func, ast.Name) and func.id == "getattr" and len(args) >= 2:
                    owner, key = n.args[0], args[1]
                elif isinstance(func, ast.Attribute) and func.attr == "select" and len(args) >= 2:
                    if isinstance(args[1], str):  # OmegaConf.select(cfg, "a.b.key")
                        parts = ["cfg", *args[1].split(".")]
                        reads.add((parts[-2], parts[-1]))
            name = _last_name(owner) if owner is not None else None
            if name is None or not isinstance(key, str):
                continue
            owners = {name} | (aliases.get(name, set()) if isinstance(owner, ast.Name) else set())
            if name.endswith("_cfg"):
                owners.add(name[: -len("_cfg")])
            reads.update((o, key) for o in owners)
    for qual, sections in _options_callers().items():
        for section in sections:
            reads.update((section.split(".")[-1], f) for f in _options_classes()[qual])
    return frozenset(reads)


def _unread(keys: list[str]) -> list[str]:
    """The dotted keys with no sign in the sources of being read (top-level keys are read off ``cfg``)."""
    reads = _source_reads()
    out = []
    for key in keys:
        parts = ["cfg", *key.split(".")]
        if (parts[-2], parts[-1]) not in reads:
            out.append(key)
    return out


def test_null_types_cover_exactly_the_null_default_keys():
    null_keys = {k for k, v in _leaves().items() if v is None}
    assert null_keys - set(_NULL_TYPES) == set(), "give these null-default keys a type in config._NULL_TYPES"
    assert set(_NULL_TYPES) - null_keys == set(), "these _NULL_TYPES keys are not null-default keys"


def test_null_default_key_rejects_a_wrong_type_naming_key_source_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: 'data\.image_size' must be int .*'abc'"):
        load(overrides=["data.image_size=abc"])
    f = _write(tmp_path / "exp.yaml", "data:\n  image_size: abc\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: 'data\.image_size' must be int .*str 'abc'"):
        load([f])
    with pytest.raises(ConfigError, match=r"'model\.lora\.blocks' must be str or list .*int 3"):
        load(overrides=["model.lora.blocks=3"])
    f = _write(tmp_path / "list.yaml", "infer:\n  text:\n    titles_csv: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: 'infer\.text\.titles_csv' must be str .*list"):
        load([f])
    assert load(overrides=["data.image_size=224"]).data.image_size == 224
    assert load(overrides=["data.image_size=null"]).data.image_size is None
    cfg = load(overrides=["model.lora.blocks=last:4", "train.time_limit_min=5", "data.train_dir=some/dir"])
    assert (cfg.model.lora.blocks, cfg.train.time_limit_min, cfg.data.train_dir) == ("last:4", 5, "some/dir")
    assert list(load(overrides=["model.lora.blocks=[0,2]"]).model.lora.blocks) == [0, 2]


def test_text_keys_keep_what_was_typed_even_when_it_looks_like_a_number(tmp_path):
    """A folder named 2024 or 007, a run named 123: the dotlist and YAML would make them numbers."""
    cfg = load(overrides=["data.train_dir=2024", "run_name=007", "infer.text.titles_csv='1e3'"])
    assert (cfg.data.train_dir, cfg.run_name, cfg.infer.text.titles_csv) == ("2024", "007", "1e3")
    assert load(overrides=["data.train_dir=null"]).data.train_dir is None
    f = _write(tmp_path / "exp.yaml", "run_name: 123\ndata:\n  train_dir: 2024\n")
    cfg = load([f])
    assert (cfg.run_name, cfg.data.train_dir) == ("123", "2024")
    assert load(overrides=["data.image_size=224"]).data.image_size == 224  # number keys still parse numbers


def test_types_come_from_default_yaml_not_from_an_earlier_layer(tmp_path):
    text = "train:\n  time_limit_min: 30\n  lr: 1\nmodel:\n  lora:\n    blocks: last:4\n"
    f = _write(tmp_path / "exp.yaml", text)
    cfg = load([f], ["train.time_limit_min=2.5", "train.lr=0.5", "model.lora.blocks=[0,1]"])
    assert (cfg.train.time_limit_min, cfg.train.lr, list(cfg.model.lora.blocks)) == (2.5, 0.5, [0, 1])


@pytest.mark.parametrize("key", sorted(_NULL_TYPES))
def test_every_null_default_key_takes_its_type_or_null_and_nothing_else(key):
    kind = _NULL_TYPES[key]
    first = kind[0] if isinstance(kind, tuple) else kind
    samples = {int: ("3", 3), float: ("2.5", 2.5), str: ("some/name", "some/name"), list: ("[1, 2]", [1, 2]),
               bool: ("false", False)}
    text, value = samples[first]
    assert OmegaConf.select(load(overrides=[f"{key}={text}"]), key) == value
    null = OmegaConf.select(load(overrides=[f"{key}=null"]), key)
    assert null is None or key == "run_name"  # load() names a null run after its experiment file
    if kind is str:  # a text key keeps what was typed: a folder may be called "true"
        assert OmegaConf.select(load(overrides=[f"{key}=true"]), key) == "true"
        return
    if kind is bool:  # a switch with a null default (null = decided at run time) takes no number
        with pytest.raises(ConfigError, match=rf"command line: '{key}' must be .*int 3"):
            load(overrides=[f"{key}=3"])
        return
    with pytest.raises(ConfigError, match=rf"command line: '{key}' must be .*bool True"):
        load(overrides=[f"{key}=true"])


def _options_fields() -> list[Any]:
    params = []
    for qual in OPTIONS_SECTIONS:
        for name in _options_classes().get(qual, ()):
            params.append(pytest.param(qual, name, id=f"{qual.rsplit('.', 1)[1]}.{name}"))
    return params


def test_options_classes_and_the_sections_their_callers_pass():
    assert {q: sorted(s) for q, s in _options_callers().items()} == {q: [s] for q, s in OPTIONS_SECTIONS.items()}


@pytest.mark.parametrize(("qual", "name"), _options_fields())
def test_options_field_default_is_the_default_yaml_value(qual, name):
    module, cls_name = qual.rsplit(".", 1)
    field = {f.name: f for f in fields(getattr(importlib.import_module(module), cls_name))}[name]
    default = field.default if field.default_factory is MISSING else field.default_factory()
    key = f"{OPTIONS_SECTIONS[qual]}.{name}"
    assert key in _leaves(), f"{cls_name}.{name} reads {key}, which default.yaml does not have"
    yaml_value = _leaves()[key]
    assert default == yaml_value and _type_ok(yaml_value, default, key), (
        f"{cls_name}.{name} defaults to {default!r}, default.yaml {key} is {yaml_value!r}")


def test_every_default_key_is_read_by_some_code():
    unread = [k for k in _unread(list(_leaves())) if k not in READ_UNSEEN]
    assert unread == [], f"default.yaml keys no code in src/simsearch or tools reads: {unread}"


def test_read_unseen_entries_are_needed():
    assert set(READ_UNSEEN) <= set(_leaves())
    assert sorted(READ_UNSEEN) == _unread(sorted(READ_UNSEEN)), "the scan sees these now; drop them"


def test_the_read_scan_tells_read_keys_from_unread_ones():
    assert _unread(["data.image_size", "seed", "model.lora.rank", "infer.multicrop.rrf_k", "train.stages"]) == []
    # a leaf read elsewhere under another owner (args.primary, opts.index) does not count for this section
    assert _unread(["data.nobody_reads_this", "data.primary", "score.index"]) == [
        "data.nobody_reads_this", "data.primary", "score.index"]


def test_score_tool_defaults_come_from_the_score_section(tmp_path, monkeypatch, capsys):
    from tools.score import main, parse_args

    cfg = OmegaConf.load(CONFIGS / "default.yaml")
    cfg.score.primary, cfg.score.leaderboard = "r1", str(tmp_path / "board.csv")
    OmegaConf.save(cfg, tmp_path / "default.yaml")
    monkeypatch.setenv("SIMSEARCH_DEFAULT_CONFIG", str(tmp_path / "default.yaml"))
    args = parse_args(["sub.json", "--ground-truth", "gt.json"])
    assert (args.primary, args.leaderboard) == ("r1", tmp_path / "board.csv")
    args = parse_args(["sub.json", "--ground-truth", "gt.json", "--primary", "mrr", "--leaderboard", "x.csv"])
    assert (args.primary, args.leaderboard) == ("mrr", Path("x.csv"))  # the flags still win

    gt, sub = tmp_path / "gt.json", tmp_path / "sub.json"
    gt.write_text(json.dumps({"q1": ["a"]}))
    sub.write_text(json.dumps({"q1": ["a", "b"]}))
    assert main([str(sub), "--ground-truth", str(gt)]) == 0
    assert f"leaderboard ({tmp_path / 'board.csv'}, by r1)" in capsys.readouterr().out
    assert (tmp_path / "board.csv").read_text().startswith("name,")
    monkeypatch.setenv("SIMSEARCH_DEFAULT_CONFIG", str(tmp_path / "missing.yaml"))
    assert main([str(sub), "--ground-truth", str(gt)]) == 2
    assert "missing.yaml" in capsys.readouterr().err
