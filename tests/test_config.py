from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONFIGS
from simsearch.config import ConfigError, load


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
