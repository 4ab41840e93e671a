"""Device and precision (retrieval/device.py): the resolution table, the launch flag in both Accelerators,
bf16 autocast against fp32 on the tiny model, and every embedding path placing its model where told."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CONFIGS, make_class_folder
from simsearch.config import ConfigError, load
from simsearch.models import build_model
from simsearch.models.checkpoint import save_checkpoint
from simsearch.retrieval import device as dev
from simsearch.retrieval.device import (
    LAUNCH_VARIABLE,
    TRAIN_PRECISIONS,
    accelerate_precision,
    place_model,
    precision_of,
    resolve_precision,
)
from simsearch.retrieval.embed import check_embedding_config, embed_batch, embed_dataset

# --------------------------------------------------------------------------- the resolution table


@pytest.mark.parametrize("value, device, bf16_ok, launched, expected", [
    ("auto", "cpu", True, None, "fp32"),      # auto on the CPU: fp32
    (None, "cpu", True, None, "fp32"),        # unset = auto
    ("auto", "cuda", True, None, "bf16"),     # a (fake) GPU with bf16
    ("auto", "cuda", False, None, "fp16"),    # a (fake) GPU without it
    ("bf16", "cpu", True, None, "bf16"),      # explicit values are kept
    ("fp32", "cuda", True, None, "fp32"),
    ("auto", "cpu", True, "fp16", "fp16"),    # the launch flag wins over auto, even on the CPU
    ("auto", "cuda", True, "fp16", "fp16"),
    (None, "cuda", True, "bf16", "bf16"),
    ("fp16", "cuda", True, "fp16", "fp16"),   # agreeing is fine
    ("bf16", "cpu", True, "no", "bf16"),      # 'no' is what the launcher writes without a flag: none
])
def test_precision_resolution_table(monkeypatch, value, device, bf16_ok, launched, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    env = {} if launched is None else {LAUNCH_VARIABLE: launched}
    assert resolve_precision(value, device, env=env) == expected


@pytest.mark.parametrize("value, launched, key, choices", [
    ("bf16", "fp16", "infer.precision", dev.INFER_PRECISIONS),
    ("fp32", "bf16", "infer.precision", dev.INFER_PRECISIONS),
    ("no", "bf16", "train.mixed_precision", TRAIN_PRECISIONS),
    ("fp16", "bf16", "train.mixed_precision", TRAIN_PRECISIONS),
])
def test_an_explicit_value_against_the_launch_flag_names_both(value, launched, key, choices):
    with pytest.raises(ConfigError) as err:
        resolve_precision(value, "cpu", key=key, choices=choices, env={LAUNCH_VARIABLE: launched})
    assert f"{key}={value}" in str(err.value) and f"--mixed_precision {launched}" in str(err.value)


def test_unknown_values_are_refused_naming_the_key_or_the_variable():
    with pytest.raises(ConfigError, match="infer.precision: 'fp64'"):
        resolve_precision("fp64", "cpu", env={})
    with pytest.raises(ConfigError, match="train.mixed_precision: 'fp32'"):  # training speaks Accelerate's 'no'
        resolve_precision("fp32", "cpu", key="train.mixed_precision", choices=TRAIN_PRECISIONS, env={})
    with pytest.raises(ConfigError, match=f"{LAUNCH_VARIABLE}=fp8"):
        resolve_precision("auto", "cpu", env={LAUNCH_VARIABLE: "fp8"})
    with pytest.raises(ConfigError, match="infer.precision: 'half'"):  # checked before any work
        check_embedding_config(load([CONFIGS / "tiny_test.yaml"], ["infer.precision=half"]))


def test_accelerate_names_and_an_accelerators_precision():
    assert [accelerate_precision(p) for p in ("fp32", "bf16", "fp16")] == ["no", "bf16", "fp16"]

    class Acc:
        mixed_precision = "bf16"

    assert precision_of(Acc()) == "bf16" and precision_of(object()) == "fp32"


# --------------------------------------------------------------------------- the launch flag in both Accelerators


def _tiny_cfg(tmp_path: Path, *overrides: str):
    return load([CONFIGS / "tiny_test.yaml"], [f"train.output_dir={tmp_path / 'runs'}", "train.cpu=true",
                                               "train.log_with=none", *overrides])


def test_training_accelerator_takes_the_launch_flag_over_auto_and_refuses_a_conflict(tmp_path, monkeypatch):
    from simsearch.training.engine import build_accelerator

    assert build_accelerator(_tiny_cfg(tmp_path)).mixed_precision == "no"  # auto on the CPU
    monkeypatch.setenv(LAUNCH_VARIABLE, "bf16")  # accelerate launch --mixed_precision bf16
    assert build_accelerator(_tiny_cfg(tmp_path)).mixed_precision == "bf16"
    assert build_accelerator(_tiny_cfg(tmp_path, "train.mixed_precision=bf16")).mixed_precision == "bf16"
    with pytest.raises(ConfigError, match="train.mixed_precision=fp16 disagrees with accelerate launch "
                                          "--mixed_precision bf16"):
        build_accelerator(_tiny_cfg(tmp_path, "train.mixed_precision=fp16"))


def test_inference_accelerator_follows_infer_precision_and_the_launch_flag(tmp_path, monkeypatch):
    from simsearch.inference.predict import make_accelerator

    monkeypatch.delenv(LAUNCH_VARIABLE, raising=False)
    assert make_accelerator(_tiny_cfg(tmp_path)).mixed_precision == "no"
    assert make_accelerator(_tiny_cfg(tmp_path, "infer.precision=bf16")).mixed_precision == "bf16"
    monkeypatch.setenv(LAUNCH_VARIABLE, "fp16")
    assert make_accelerator(_tiny_cfg(tmp_path)).mixed_precision == "fp16"
    with pytest.raises(ConfigError, match="infer.precision=fp32 disagrees with accelerate launch "
                                          "--mixed_precision fp16"):
        make_accelerator(_tiny_cfg(tmp_path, "infer.precision=fp32"))


# --------------------------------------------------------------------------- bf16 against fp32


@pytest.fixture(scope="module")
def tiny_model():
    cfg = load([CONFIGS / "tiny_test.yaml"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _linear_output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_bf16_autocast_on_cpu_is_close_to_fp32_and_comes_out_float32_unit_length(tiny_model):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seen = _linear_output_dtypes(tiny_model)
    ref = embed_batch(tiny_model, x, tta_flip=True)
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    low = embed_batch(tiny_model, x, tta_flip=True, precision="bf16")
    assert seen and set(seen) == {torch.bfloat16}  # the forward really ran under bf16 autocast
    assert low.dtype == torch.float32 and torch.allclose(low.norm(dim=1), torch.ones(6), atol=1e-5)
    cos = (low * ref).sum(dim=1)
    assert (cos > 0.99).all(), cos
    assert not torch.equal(low, ref)


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], -1, i


def test_embed_dataset_takes_the_config_precision_and_auto_is_fp32_on_cpu(tiny_model, monkeypatch):
    monkeypatch.delenv(LAUNCH_VARIABLE, raising=False)
    ds = _Tensors(torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    ref, ok = embed_dataset(tiny_model, ds, batch_size=2)
    auto, _ = embed_dataset(tiny_model, ds, batch_size=2, precision="auto")
    low, _ = embed_dataset(tiny_model, ds, batch_size=2, precision="bf16")
    assert ok.all() and ref.dtype == low.dtype == np.float32
    assert np.array_equal(auto, ref)
    assert (np.sum(low * ref, axis=1) > 0.99).all() and not np.array_equal(low, ref)
    np.testing.assert_allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)
    monkeypatch.setenv(LAUNCH_VARIABLE, "bf16")  # under accelerate launch --mixed_precision bf16, auto is bf16
    launched, _ = embed_dataset(tiny_model, ds, batch_size=2, precision="auto")
    assert np.array_equal(launched, low)


# --------------------------------------------------------------------------- every path places its model


DEVICE = torch.device("cpu")  # the one object the stand-in device decision returns


class Placements:
    """Stand-in for ``place_model`` (and the device decision) in one module: records what was placed
    where, places it for real, and notes the device of every input the placed model then sees."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.nn.Module, object]] = []
        self.inputs: list[torch.device] = []
        self.asked: list[bool] = []

    def place(self, model, where=None):
        self.calls.append((model, where))
        model.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].device))
        return place_model(model, where)

    def device(self, cpu: bool = False) -> torch.device:
        self.asked.append(cpu)
        return DEVICE


def spy(monkeypatch, *modules) -> Placements:
    rec = Placements()
    for module in modules:
        monkeypatch.setattr(module, "place_model", rec.place)
        if hasattr(module, "inference_device"):
            monkeypatch.setattr(module, "inference_device", rec.device)
    return rec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random checkpoint (saved as training saves one) and a competition's test split."""
    root = tmp_path_factory.mktemp("device")
    cfg = load([CONFIGS / "tiny_test.yaml"], ["train.cpu=true"])
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "best", build_model(cfg), torch.nn.Module(), cfg, {"epoch": 0})
    test = root / "test"
    make_class_folder(test / "gallery", n_classes=3, per_class=3, size=32, seed=3)
    make_class_folder(test / "query", n_classes=3, per_class=1, size=32, seed=4)
    gt = {f"class_{c:02d}/img_00.jpg": [f"class_{c:02d}/img_{i:02d}.jpg" for i in range(3)] for c in range(3)}
    (test / "ground_truth.json").write_text(json.dumps(gt))
    return {"root": root, "ckpt": ckpt, "test": test, "gt": gt,
            "cfg": load([ckpt / "config.yaml"], ["infer.cache_dir=null", "infer.rerank=false"])}


def _embedded_where_placed(rec: Placements, n: int = 1) -> None:
    assert len(rec.calls) == n, rec.calls
    assert rec.inputs and set(rec.inputs) == {DEVICE}  # the placed model is the one that embedded


def test_index_build_add_and_the_app_place_their_model(setup, tmp_path, monkeypatch):
    from simsearch.apps.app import SearchService
    from simsearch.retrieval import store

    rec = spy(monkeypatch, store)
    out = tmp_path / "idx"
    m = store.build_index_dir(setup["ckpt"], setup["test"] / "gallery", out, cfg=setup["cfg"], clip_features=False)
    _embedded_where_placed(rec)
    assert rec.calls[0][1] is DEVICE and rec.asked == [True]  # train.cpu reached the device decision
    assert m["embedding"]["precision"] == "auto"
    rec.calls.clear(), rec.inputs.clear()
    store.add_to_index(out, setup["test"] / "query")
    _embedded_where_placed(rec)
    assert rec.calls[0][1] is DEVICE
    rec.calls.clear(), rec.inputs.clear()
    service = SearchService(out)  # loads the model at start
    assert len(rec.calls) == 1 and rec.calls[0][1] is DEVICE and rec.calls[0][0] is service.index._model


def test_ablation_and_its_second_stage_place_their_models(setup, monkeypatch):
    from simsearch.inference import predict
    from simsearch.retrieval import second_stage

    main, second = spy(monkeypatch, predict), spy(monkeypatch, second_stage)
    cfg = load([setup["ckpt"] / "config.yaml"], ["infer.cache_dir=null", "infer.rerank=false",
                                                  "infer.second_stage.enabled=true",
                                                  f"infer.second_stage.checkpoint={setup['ckpt']}"])
    table = predict.run_ablation(cfg, setup["ckpt"], setup["test"] / "query", setup["test"] / "gallery",
                                 setup["test"] / "ground_truth.json")
    assert "coarse-to-fine" in table
    _embedded_where_placed(main)
    assert main.calls[0][1] is DEVICE and main.asked == [True]
    _embedded_where_placed(second)
    assert second.calls[0][1] == DEVICE  # where the first model sits


def test_inference_places_its_model_where_the_accelerator_says(setup, tmp_path, monkeypatch):
    from simsearch.inference import predict

    rec = spy(monkeypatch, predict)
    accelerator = predict.make_accelerator(setup["cfg"])
    meta = predict.run_inference(setup["cfg"], setup["ckpt"], setup["test"] / "query", setup["test"] / "gallery",
                                 tmp_path / "sub.json", accelerator=accelerator)
    _embedded_where_placed(rec)
    assert rec.calls[0][1] is accelerator
    assert meta["device"] == "cpu" and meta["precision"] == "fp32"


def test_compare_and_the_quality_benchmark_place_their_model(setup, monkeypatch):
    from simsearch.benchmarks import compare, quality

    rec = spy(monkeypatch, compare, quality)
    comp = compare.Competition.from_root(setup["test"].parent, need_training=False)
    row = compare.evaluate_checkpoint(compare.Approach("tiny", checkpoint=setup["ckpt"]), setup["cfg"], comp,
                                      setup["gt"])
    assert 0 <= row["map"] <= 1
    _embedded_where_placed(rec)
    assert rec.calls[0][1] is DEVICE and rec.asked == [True]
    rec.calls.clear(), rec.inputs.clear(), rec.asked.clear()
    scores = quality.score_checkpoint(setup["ckpt"], setup["test"], setup["cfg"])
    assert set(scores) == {"plain", "post"}
    _embedded_where_placed(rec)
    assert rec.calls[0][1] is DEVICE and rec.asked == [True]


def test_the_text_models_go_where_the_image_model_is(setup, monkeypatch):
    """Text fusion's captioner and sentence encoder load on the image model's device, and so do the text
    search's CLIP model and its tokens."""
    from types import SimpleNamespace

    from simsearch.inference import enhancements
    from simsearch.retrieval import store

    asked: list[tuple[str, str]] = []

    def encoder_loader(spec, device="cpu"):
        asked.append(("encoder", device))
        return lambda texts: np.ones((len(texts), 4), dtype=np.float32) / 2

    def captioner_loader(path, device="cpu"):
        asked.append(("captioner", device))
        return lambda images: ["a caption"] * len(images)

    monkeypatch.setattr(enhancements, "load_sentence_encoder", encoder_loader)
    monkeypatch.setattr(enhancements, "load_blip_captioner", captioner_loader)
    cfg = load([setup["ckpt"] / "config.yaml"], ["infer.text.enabled=true", "infer.text.captioner=somewhere"])
    folder = SimpleNamespace(paths=sorted((setup["test"] / "query").rglob("*.jpg")))
    enh = enhancements.prepare_enhancements(cfg, folder, folder, device=torch.device("meta"))
    assert asked == [("captioner", "meta"), ("encoder", "meta")] and enh.text_q.shape == (3, 4)
    asked.clear()
    monkeypatch.setattr(enhancements, "inference_device", lambda cpu=False: torch.device("meta"))
    enhancements.prepare_enhancements(cfg, folder, folder)  # no device given: the inference device
    assert asked == [("captioner", "meta"), ("encoder", "meta")]

    class FakeClip(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.token_devices: list[torch.device] = []

        def encode_text(self, tokens, normalize=True):
            self.token_devices.append(tokens.device)
            return self.w[None] / self.w.norm()

    rec = spy(monkeypatch, store)
    clip = FakeClip()
    monkeypatch.setattr(store, "load_clip", lambda spec: (clip, lambda texts: torch.zeros(len(texts), 5)))
    monkeypatch.setattr(store, "require_text_search", lambda manifest, folder=None: {"model": "fake"})
    holder = SimpleNamespace(manifest={}, folder=Path("index"), _model=None, _clip=None)
    model, _ = store.QueryModels.clip_model(holder)
    assert model is clip and rec.calls == [(clip, DEVICE)]  # placed where the device decision says
    out = store.embed_text_query("a red bicycle", 3, lambda: holder._clip)
    assert clip.token_devices == [DEVICE] and out.shape == (3,)
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, atol=1e-6)
