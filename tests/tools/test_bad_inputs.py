"""Bad input, as a demanding new user gives it, to train, infer, score, index, search and the app's upload.

Every case must end in exit status 2 (the app: an error line on the page) with one ``error:`` line
that names the file or key at fault, no traceback, no file the user had changed, and no output
made (and nothing embedded) when the error is one that can be found before the work.
"""
from __future__ import annotations

import builtins
import fractions
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image
from tools.compare import main as compare_main
from tools.export import main as export_main
from tools.grid import main as grid_main
from tools.index import main as index_main
from tools.infer import main as infer_main
from tools.inshop import main as inshop_main
from tools.score import main as score_main
from tools.search import main as search_main
from tools.train import main as train_main

from conftest import CONFIGS, make_class_folder, train_tiny_checkpoint
from simsearch.apps.app import AppSettings, SearchService, md_escape
from simsearch.retrieval.store import build_index_dir

TINY = str(CONFIGS / "tiny_test.yaml")
TOOLS: dict[str, Callable[[list[str]], int]] = {"train": train_main, "infer": infer_main, "score": score_main,
                                                "index": index_main, "search": search_main, "export": export_main,
                                                "grid": grid_main, "inshop": inshop_main, "compare": compare_main}
ROOT = os.geteuid() == 0  # chmod does not stop root: there the tests deny the chmodded paths by patch
DENIED: dict[str, bool] = {}  # path -> reads denied too (chmod 0) or only writes (a chmod 555 folder)


@dataclass
class World:
    """What a user has: a trained run, query/gallery folders with ground truth, a submission, an index."""

    root: Path
    train: Path
    run: Path
    ckpt: Path
    query: Path
    gallery: Path
    gt: Path
    sub: Path
    catalog: Path
    index: Path


def _drop_log_handlers() -> None:
    """The tools' log handlers hold the stderr of the test that made them and a run's train.log; drop
    them so one case's logging never writes into another case's capture or into the world's files."""
    logger = logging.getLogger("simsearch")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    ckpt = train_tiny_checkpoint(root, n_classes=4)
    src = make_class_folder(root / "testsrc", n_classes=3, per_class=3, seed=5)
    query, gallery = root / "query", root / "gallery"
    query.mkdir()
    gallery.mkdir()
    gt: dict[str, list[str]] = {}
    for c, cls in enumerate(sorted(src.iterdir())):
        first, *rest = sorted(cls.iterdir())
        shutil.copy(first, query / f"q{c}.jpg")
        gt[f"q{c}.jpg"] = []
        for i, img in enumerate(rest):
            shutil.copy(img, gallery / f"g{c}{i}.jpg")
            gt[f"q{c}.jpg"].append(f"g{c}{i}.jpg")
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "sub.json").write_text(json.dumps({q: list(reversed(g)) for q, g in gt.items()}))
    catalog = make_class_folder(root / "catalog", n_classes=2, per_class=2, seed=7)
    build_index_dir(ckpt, catalog, root / "idx", clip_features=False)
    _drop_log_handlers()
    return World(root, root / "train", ckpt.parent, ckpt, query, gallery, root / "gt.json", root / "sub.json",
                 catalog, root / "idx")


@pytest.fixture(autouse=True)
def _fresh_logging():
    yield
    _drop_log_handlers()


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (what the user has, to compare before and after)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                try:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:  # a chmod 000 case, as another user than root
                    out[str(p)] = f"unreadable, mtime {p.stat().st_mtime_ns}"
    return out


def call(tool: str, argv: list[str]) -> int:
    try:
        return TOOLS[tool](argv)
    except SystemExit as exc:  # argparse refuses a bad option itself, with status 2
        return int(exc.code)


@dataclass
class Bad:
    argv: list[str]
    names: list[str]                                  # what stderr must name: the file(s) or key(s) at fault
    absent: list[Path] = field(default_factory=list)  # outputs that must not have been made
    quiet: bool = False                               # nothing on stdout (score: no scores before the error)
    embeds: bool = False                              # the error can only show once images are embedded
    forbid: list[str] = field(default_factory=list)   # what stderr must not say


CASES: list[tuple[str, Callable[[World, Path], Bad]]] = []


def case(tool: str) -> Callable:
    def register(fn: Callable[[World, Path], Bad]) -> Callable[[World, Path], Bad]:
        CASES.append((tool, fn))
        return fn
    return register


def truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def copy_ckpt(w: World, t: Path) -> Path:
    return Path(shutil.copytree(w.ckpt, t / "ckpt"))


def copy_index(w: World, t: Path) -> Path:
    return Path(shutil.copytree(w.index, t / "idx"))


def copy_run(w: World, t: Path) -> Path:
    shutil.copytree(w.run.parent, t / "runs")
    return t / "runs" / w.run.name


def no_access(path: Path, reads: bool = True) -> Path:
    """Note a path the case chmods (0, or 555 with ``reads=False``): as root (CI), where chmod does not
    bite, the test function also denies it by patching os.access and open, so the case runs everywhere
    instead of being skipped."""
    DENIED[str(path.absolute())] = reads
    return path


def deny_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the noted paths unreadable and unwritable to this process, as chmod does for other users."""
    if not (ROOT and DENIED):
        return
    denied = dict(DENIED)
    real_access, real_open = os.access, io.open

    def under(p: object, writing: bool) -> bool:
        if not isinstance(p, (str, os.PathLike)):
            return False
        s = str(Path(p).absolute())
        return any((s == d or s.startswith(d + os.sep)) and (reads or writing) for d, reads in denied.items())

    def access(p, mode, *a, **k):
        return False if under(p, bool(mode & os.W_OK)) else real_access(p, mode, *a, **k)

    def opener(file, *a, **k):
        mode = a[0] if a else k.get("mode", "r")
        if under(file, any(c in mode for c in "wax+")):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(builtins, "open", opener)


# --------------------------------------------------------------------------- train


def train_argv(w: World, t: Path, *extra: str) -> list[str]:
    return ["--config", TINY, f"data.train_dir={w.train}", f"train.output_dir={t / 'runs'}", "train.epochs=1",
            *extra]


def key_cases(tool: str, make: Callable[[World, Path, str, str], Bad], pairs: list[tuple[str, str]]) -> None:
    """One case per (override, key): the override is refused with a message naming the key."""
    for override, key in pairs:
        def build(w: World, t: Path, override: str = override, key: str = key) -> Bad:
            return make(w, t, override, key)
        build.__name__ = override.replace("=", "_").replace(".", "_").replace("-", "minus")
        case(tool)(build)


key_cases("train", lambda w, t, override, key: Bad(train_argv(w, t, override), [key], absent=[t / "runs"]), [
    ("train.epocs=3", "train.epocs"), ("train.epochs=abc", "train.epochs"), ("train.epochs=-1", "train.epochs"),
    ("train.batch_p=0", "train.batch_p"), ("train.batch_k=1", "train.batch_k"), ("train.lr=0", "train.lr"),
    ("data.num_workers=-1", "data.num_workers"), ("train.log_every=0", "train.log_every"),
    ("data.val_fraction=1.5", "data.val_fraction"), ("data.sample_ratio=0", "data.sample_ratio"),
    ("train.best_metric=ndcg", "train.best_metric"), ("train.warmup_frac=1", "train.warmup_frac"),
    ("data.image_size=0", "data.image_size"), ("infer.batch_size=0", "infer.batch_size")])


@case("train")
def train_dir_missing(w: World, t: Path) -> Bad:
    return Bad(["--config", TINY, f"data.train_dir={t / 'nowhere'}", f"train.output_dir={t / 'runs'}"],
               [str(t / "nowhere")])


@case("train")
def train_dir_is_a_file(w: World, t: Path) -> Bad:
    return Bad(["--config", TINY, f"data.train_dir={w.gt}", f"train.output_dir={t / 'runs'}"], [str(w.gt)])


@case("train")
def train_dir_empty(w: World, t: Path) -> Bad:
    (t / "empty").mkdir()
    return Bad(["--config", TINY, f"data.train_dir={t / 'empty'}", f"train.output_dir={t / 'runs'}"],
               [str(t / "empty")])


@case("train")
def config_file_missing(w: World, t: Path) -> Bad:
    return Bad(train_argv(w, t, "--config", str(t / "missing.yaml")), [str(t / "missing.yaml")], [t / "runs"])


@case("train")
def config_file_not_yaml(w: World, t: Path) -> Bad:
    (t / "bad.yaml").write_text("train: [1, 2\n")
    return Bad(train_argv(w, t, "--config", str(t / "bad.yaml")), [str(t / "bad.yaml")], [t / "runs"])


@case("train")
def config_file_is_a_folder(w: World, t: Path) -> Bad:
    (t / "cfg.yaml").mkdir()
    return Bad(train_argv(w, t, "--config", str(t / "cfg.yaml")), [str(t / "cfg.yaml")], [t / "runs"])


@case("train")
def manifest_not_utf8(w: World, t: Path) -> Bad:
    (t / "train.csv").write_bytes(b"path,label\n\xff\xfe.jpg,a\n")
    return Bad(["--config", TINY, f"data.train_csv={t / 'train.csv'}", f"train.output_dir={t / 'runs'}"],
               [str(t / "train.csv")], [t / "runs"])


@case("train")
def output_dir_is_a_file(w: World, t: Path) -> Bad:
    (t / "runs.txt").write_text("not a folder")
    return Bad(["--config", TINY, f"data.train_dir={w.train}", f"train.output_dir={t / 'runs.txt'}"],
               [str(t / "runs.txt")])


@case("train")
def output_dir_read_only(w: World, t: Path) -> Bad:
    no_access(t / "ro", reads=False).mkdir()
    (t / "ro").chmod(0o555)
    return Bad(["--config", TINY, f"data.train_dir={w.train}", f"train.output_dir={t / 'ro'}"], [str(t / "ro")])


@case("train")
def existing_run_without_resume(w: World, t: Path) -> Bad:
    run = copy_run(w, t)
    return Bad(train_argv(w, t), [str(run), "--resume"])


@case("train")
def resume_without_a_run(w: World, t: Path) -> Bad:
    return Bad(train_argv(w, t, "--resume"), [str(t / "runs" / "tiny_test" / "last" / "train_state.pt")],
               absent=[t / "runs"])


@case("train")
def resume_truncated_train_state(w: World, t: Path) -> Bad:
    state = truncated(copy_run(w, t) / "last" / "train_state.pt")
    return Bad(train_argv(w, t, "--resume"), [str(state)], forbid=["weights_only"])


@case("train")
def resume_refused_pickle(w: World, t: Path) -> Bad:
    state = copy_run(w, t) / "last" / "train_state.pt"
    torch.save({"epoch": 1, "payload": fractions.Fraction(1, 3)}, state)  # a global weights_only refuses
    return Bad(train_argv(w, t, "--resume"), [str(state)], forbid=["weights_only"])


@case("train")
def resume_truncated_weights(w: World, t: Path) -> Bad:
    weights = truncated(copy_run(w, t) / "last" / "model.safetensors")
    return Bad(train_argv(w, t, "--resume"), [str(weights)])


@case("train")
def resume_with_another_model_shape(w: World, t: Path) -> Bad:
    run = copy_run(w, t)
    return Bad(train_argv(w, t, "--resume", "model.embed_dim=8"), [str(run / "last" / "model.safetensors")])


# --------------------------------------------------------------------------- infer


def infer_bad(w: World, t: Path, names: list[str], *extra: str, ckpt: Path | None = None,
              out: Path | None = None, query: Path | None = None, gallery: Path | None = None,
              embeds: bool = False) -> Bad:
    out = out or t / "sub.json"
    argv = ["--checkpoint", str(ckpt or w.ckpt), "--query-dir", str(query or w.query), "--gallery-dir",
            str(gallery or w.gallery), "--out", str(out), "infer.cache_dir=null", *extra]
    return Bad(argv, names, absent=[t / "sub.json", t / "sub.meta.json"], embeds=embeds)


key_cases("infer", lambda w, t, override, key: infer_bad(w, t, [key], override), [
    ("infer.top_k=-1", "infer.top_k"), ("infer.qe_k=0", "infer.qe_k"), ("infer.k1=0", "infer.k1"),
    ("infer.lambda_value=2", "infer.lambda_value"), ("infer.batch_size=0", "infer.batch_size"),
    ("infer.tta_scales=[]", "infer.tta_scales"), ("infer.topk=5", "infer.topk"),
    ("infer.index=Bogus", "infer.index"), ("infer.rerank_candidates=0", "infer.rerank_candidates"),
    ("infer.multicrop.max_crops=0", "infer.multicrop.max_crops")])


@case("infer")
def second_stage_checkpoint_missing(w: World, t: Path) -> Bad:
    return infer_bad(w, t, ["infer.second_stage.checkpoint", str(t / "gone")], "infer.second_stage.enabled=true",
                     f"infer.second_stage.checkpoint={t / 'gone'}")


@case("infer")
def second_stage_config_missing(w: World, t: Path) -> Bad:
    return infer_bad(w, t, ["infer.second_stage.config", str(t / "gone.yaml")], "infer.second_stage.enabled=true",
                     f"infer.second_stage.config={t / 'gone.yaml'}")


@case("infer")
def titles_csv_missing(w: World, t: Path) -> Bad:
    return infer_bad(w, t, ["infer.text.titles_csv", str(t / "titles.csv")], "infer.text.enabled=true",
                     f"infer.text.titles_csv={t / 'titles.csv'}")


@case("infer")
def checkpoint_missing(w: World, t: Path) -> Bad:
    return infer_bad(w, t, [str(t / "nope")], ckpt=t / "nope")


@case("infer")
def checkpoint_is_the_weights_file(w: World, t: Path) -> Bad:
    return infer_bad(w, t, [str(w.ckpt / "model.safetensors")], ckpt=w.ckpt / "model.safetensors")


@case("infer")
def checkpoint_truncated_weights(w: World, t: Path) -> Bad:
    ckpt = copy_ckpt(w, t)
    truncated(ckpt / "model.safetensors")
    return infer_bad(w, t, [str(ckpt / "model.safetensors"), "safetensors"], ckpt=ckpt)


@case("infer")
def checkpoint_config_not_yaml(w: World, t: Path) -> Bad:
    ckpt = copy_ckpt(w, t)
    (ckpt / "config.yaml").write_text("model: {backbone: [\n")
    return infer_bad(w, t, [str(ckpt / "config.yaml")], ckpt=ckpt)


@case("infer")
def checkpoint_config_of_another_shape(w: World, t: Path) -> Bad:
    ckpt = copy_ckpt(w, t)
    text = (ckpt / "config.yaml").read_text()
    assert "embed_dim: 16" in text
    (ckpt / "config.yaml").write_text(text.replace("embed_dim: 16", "embed_dim: 8"))
    return infer_bad(w, t, [str(ckpt / "model.safetensors")], ckpt=ckpt)


@case("infer")
def query_dir_missing(w: World, t: Path) -> Bad:
    return infer_bad(w, t, [str(t / "noq"), "--query-dir"], query=t / "noq")


@case("infer")
def gallery_dir_is_a_file(w: World, t: Path) -> Bad:
    return infer_bad(w, t, [str(w.gt), "--gallery-dir"], gallery=w.gt)


@case("infer")
def query_dir_without_images(w: World, t: Path) -> Bad:
    (t / "q").mkdir()
    (t / "q" / "notes.txt").write_text("no images here")
    return infer_bad(w, t, [str(t / "q")], query=t / "q", embeds=True)


@case("infer")
def out_exists_without_force(w: World, t: Path) -> Bad:
    (t / "mine.json").write_text("precious")
    return infer_bad(w, t, [str(t / "mine.json"), "--force"], out=t / "mine.json")


@case("infer")
def out_is_a_folder(w: World, t: Path) -> Bad:
    (t / "dir.json").mkdir()
    return infer_bad(w, t, [str(t / "dir.json")], out=t / "dir.json")


@case("infer")
def out_under_a_file(w: World, t: Path) -> Bad:
    return infer_bad(w, t, [str(w.gt)], out=w.gt / "sub.json")


@case("infer")
def out_read_only_folder(w: World, t: Path) -> Bad:
    no_access(t / "ro", reads=False).mkdir()
    (t / "ro").chmod(0o555)
    return infer_bad(w, t, [str(t / "ro")], out=t / "ro" / "sub.json")


@case("infer")
def out_extension_disagrees_with_format(w: World, t: Path) -> Bad:
    bad = infer_bad(w, t, [str(t / "sub.csv"), "infer.format"], "infer.format=json", out=t / "sub.csv")
    bad.absent.append(t / "sub.csv")
    return bad


@case("infer")
def out_unknown_extension(w: World, t: Path) -> Bad:
    bad = infer_bad(w, t, [str(t / "sub.txt")], out=t / "sub.txt")
    bad.absent.append(t / "sub.txt")
    return bad


@case("infer")
def format_unknown(w: World, t: Path) -> Bad:
    argv = ["--checkpoint", str(w.ckpt), "--query-dir", str(w.query), "--gallery-dir", str(w.gallery),
            "infer.format=xml", "infer.cache_dir=null"]
    return Bad(argv, ["infer.format"], absent=[t / "submissions"])


@case("infer")
def cache_dir_under_a_file(w: World, t: Path) -> Bad:
    return infer_bad(w, t, [str(w.gt), "infer.cache_dir"], f"infer.cache_dir={w.gt / 'cache'}")


@case("infer")
def extra_config_missing(w: World, t: Path) -> Bad:
    return infer_bad(w, t, [str(t / "extra.yaml")], "--add-config", str(t / "extra.yaml"))


@case("infer")
def ablate_without_ground_truth(w: World, t: Path) -> Bad:
    return infer_bad(w, t, ["--ablate", "--ground-truth"], "--ablate")


@case("infer")
def ablate_ground_truth_duplicate_key(w: World, t: Path) -> Bad:
    (t / "gt.json").write_text('{"q0.jpg": ["g00.jpg"], "q0.jpg": ["g01.jpg"]}')
    return infer_bad(w, t, [str(t / "gt.json"), "'q0.jpg' appears twice"], "--ablate", "--ground-truth",
                     str(t / "gt.json"))


@case("infer")
def ablate_out_exists(w: World, t: Path) -> Bad:
    (t / "table.md").write_text("my notes")
    return infer_bad(w, t, [str(t / "table.md")], "--ablate", "--ground-truth", str(w.gt), "--ablate-out",
                     str(t / "table.md"))


# --------------------------------------------------------------------------- score


def score_bad(w: World, t: Path, names: list[str], sub: Path | None = None, gt: Path | None = None,
              *extra: str, board: Path | None = None) -> Bad:
    board = board or t / "board.csv"
    argv = [str(sub or w.sub), "--ground-truth", str(gt or w.gt), "--leaderboard", str(board), *extra]
    return Bad(argv, names, quiet=True)


@case("score")
def submission_missing(w: World, t: Path) -> Bad:
    return score_bad(w, t, [str(t / "nope.json")], t / "nope.json")


@case("score")
def submission_is_a_folder(w: World, t: Path) -> Bad:
    (t / "sub.json").mkdir()
    return score_bad(w, t, [str(t / "sub.json")], t / "sub.json")


@case("score")
def submission_csv_not_utf8(w: World, t: Path) -> Bad:
    (t / "sub.csv").write_bytes(b"query,ranked_gallery\nq0.jpg,g\xff\xfe.jpg\n")
    return score_bad(w, t, [str(t / "sub.csv"), "UTF-8"], t / "sub.csv")


@case("score")
def submission_malformed_json(w: World, t: Path) -> Bad:
    (t / "sub.json").write_text('{"q0.jpg": ["g00.jpg",]}')
    return score_bad(w, t, [str(t / "sub.json"), "line 1"], t / "sub.json")


@case("score")
def submission_wrong_extension(w: World, t: Path) -> Bad:
    (t / "sub.txt").write_text(w.sub.read_text())
    return score_bad(w, t, [str(t / "sub.txt")], t / "sub.txt")


@case("score")
def submission_unknown_query(w: World, t: Path) -> Bad:
    sub = json.loads(w.sub.read_text())
    sub["stranger.jpg"] = ["g00.jpg"]
    (t / "sub.json").write_text(json.dumps(sub))
    return score_bad(w, t, [str(t / "sub.json"), "stranger.jpg"], t / "sub.json")


@case("score")
def submission_unreadable(w: World, t: Path) -> Bad:
    shutil.copy(w.sub, no_access(t / "sub.json"))
    (t / "sub.json").chmod(0)
    return score_bad(w, t, [str(t / "sub.json")], t / "sub.json")


@case("score")
def ground_truth_malformed_json(w: World, t: Path) -> Bad:
    (t / "gt.json").write_text("{\n")
    return score_bad(w, t, [str(t / "gt.json")], gt=t / "gt.json")


@case("score")
def ground_truth_duplicate_key(w: World, t: Path) -> Bad:
    (t / "gt.json").write_text('{"q0.jpg": ["g00.jpg"], "q0.jpg": ["g01.jpg"]}')
    return score_bad(w, t, [str(t / "gt.json"), "appears twice"], gt=t / "gt.json")


@case("score")
def ground_truth_is_a_list(w: World, t: Path) -> Bad:
    (t / "gt.json").write_text('[["q0.jpg", "g00.jpg"]]')
    return score_bad(w, t, [str(t / "gt.json")], gt=t / "gt.json")


@case("score")
def ground_truth_csv_bad_header(w: World, t: Path) -> Bad:
    (t / "gt.csv").write_text("id\nq0.jpg\n")
    return score_bad(w, t, [str(t / "gt.csv"), "header"], gt=t / "gt.csv")


@case("score")
def leaderboard_is_a_folder(w: World, t: Path) -> Bad:
    (t / "board.csv").mkdir()
    return score_bad(w, t, [str(t / "board.csv")])


@case("score")
def leaderboard_not_utf8(w: World, t: Path) -> Bad:
    (t / "board.csv").write_bytes(b"name,map\n\xff\xfe,0.5\n")
    return score_bad(w, t, [str(t / "board.csv"), "UTF-8"])


@case("score")
def leaderboard_more_cells_than_header(w: World, t: Path) -> Bad:
    (t / "board.csv").write_text("name,map\nold,0.5,extra\n")
    return score_bad(w, t, [str(t / "board.csv"), "line 2"])


@case("score")
def leaderboard_under_a_file(w: World, t: Path) -> Bad:
    return score_bad(w, t, [str(w.gt)], board=w.gt / "board.csv")


@case("score")
def gallery_dir_missing(w: World, t: Path) -> Bad:
    return score_bad(w, t, [str(t / "nogallery")], None, None, "--gallery-dir", str(t / "nogallery"))


@case("score")
def primary_unknown(w: World, t: Path) -> Bad:
    return score_bad(w, t, ["--primary", "ndcg99"], None, None, "--primary", "ndcg99")


@case("score")
def cut_off_zero(w: World, t: Path) -> Bad:
    return score_bad(w, t, ["--k"], None, None, "--k", "0", "5")


@case("score")
def option_unknown(w: World, t: Path) -> Bad:
    return score_bad(w, t, ["--bogus"], None, None, "--bogus")


# --------------------------------------------------------------------------- index


def build_bad(w: World, t: Path, names: list[str], *extra: str, ckpt: Path | None = None,
              images: Path | None = None, out: Path | None = None) -> Bad:
    out = out or t / "newidx"
    argv = ["build", "--checkpoint", str(ckpt or w.ckpt), "--images", str(images or w.catalog), "--out", str(out),
            *extra]
    return Bad(argv, names, absent=[t / "newidx"])


@case("index")
def build_checkpoint_missing(w: World, t: Path) -> Bad:
    return build_bad(w, t, [str(t / "nope")], ckpt=t / "nope")


@case("index")
def build_checkpoint_truncated_weights(w: World, t: Path) -> Bad:
    ckpt = copy_ckpt(w, t)
    truncated(ckpt / "model.safetensors")
    return build_bad(w, t, [str(ckpt / "model.safetensors")], ckpt=ckpt)


@case("index")
def build_images_missing(w: World, t: Path) -> Bad:
    return build_bad(w, t, [str(t / "noimages")], images=t / "noimages")


@case("index")
def build_images_empty(w: World, t: Path) -> Bad:
    (t / "empty").mkdir()
    return build_bad(w, t, [str(t / "empty")], images=t / "empty")


@case("index")
def build_out_is_a_file(w: World, t: Path) -> Bad:
    (t / "idx.txt").write_text("mine")
    return build_bad(w, t, [str(t / "idx.txt")], out=t / "idx.txt")


@case("index")
def build_out_exists_without_force(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    return build_bad(w, t, [str(idx), "--force"], out=idx)


@case("index")
def build_out_not_an_index_with_force(w: World, t: Path) -> Bad:
    (t / "notes").mkdir()
    (t / "notes" / "keep.txt").write_text("keep me")
    return build_bad(w, t, [str(t / "notes"), "not an index folder"], "--force", out=t / "notes")


@case("index")
def build_out_under_a_file(w: World, t: Path) -> Bad:
    return build_bad(w, t, [str(w.gt)], out=w.gt / "idx")


@case("index")
def build_factory_unknown(w: World, t: Path) -> Bad:
    return build_bad(w, t, ["--factory", "Bogus"], "--factory", "Bogus")


@case("index")
def build_unknown_config_key(w: World, t: Path) -> Bad:
    return build_bad(w, t, ["infer.tta_flop"], "infer.tta_flop=false")


@case("index")
def build_batch_size_zero(w: World, t: Path) -> Bad:
    return build_bad(w, t, ["infer.batch_size"], "infer.batch_size=0")


@case("index")
def add_index_missing(w: World, t: Path) -> Bad:
    return Bad(["add", "--index", str(t / "noidx"), "--images", str(w.catalog)], [str(t / "noidx")])


@case("index")
def add_manifest_not_json(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    truncated(idx / "manifest.json")
    return Bad(["add", "--index", str(idx), "--images", str(w.query)], [str(idx / "manifest.json"), "rebuild"])


@case("index")
def add_manifest_other_format_version(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    manifest = json.loads((idx / "manifest.json").read_text())
    (idx / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    return Bad(["add", "--index", str(idx), "--images", str(w.query)], [str(idx / "manifest.json")])


@case("index")
def add_index_file_truncated(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    truncated(idx / "index.faiss")
    return Bad(["add", "--index", str(idx), "--images", str(w.query)], [str(idx / "index.faiss"), "rebuild"])


@case("index")
def add_ids_missing(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    (idx / "ids.json").unlink()
    return Bad(["add", "--index", str(idx), "--images", str(w.query)], [str(idx / "ids.json")])


@case("index")
def add_not_an_image(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    (t / "notes.txt").write_text("words")
    return Bad(["add", "--index", str(idx), "--images", str(t / "notes.txt")], [str(t / "notes.txt")])


@case("index")
def add_image_missing(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    return Bad(["add", "--index", str(idx), "--images", str(t / "gone.jpg")], [str(t / "gone.jpg")])


@case("index")
def add_read_only_index(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    no_access(t, reads=False)
    t.chmod(0o555)  # the swap renames inside the index's parent
    return Bad(["add", "--index", str(idx), "--images", str(w.query)], [str(t)])


# --------------------------------------------------------------------------- search


def search_bad(w: World, t: Path, names: list[str], *extra: str, index: Path | None = None,
               query: Path | None = None, embeds: bool = False) -> Bad:
    argv = ["--index", str(index or w.index), "--query-image", str(query or w.query / "q0.jpg"), *extra]
    return Bad(argv, names, quiet=True, embeds=embeds)


@case("search")
def search_index_missing(w: World, t: Path) -> Bad:
    return search_bad(w, t, [str(t / "noidx")], index=t / "noidx")


@case("search")
def search_index_is_a_file(w: World, t: Path) -> Bad:
    return search_bad(w, t, [str(w.gt)], index=w.gt)


@case("search")
def search_manifest_not_an_object(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    (idx / "manifest.json").write_text("[1, 2, 3]")
    return search_bad(w, t, [str(idx / "manifest.json")], index=idx)


@case("search")
def search_index_file_truncated(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    truncated(idx / "index.faiss", 0.3)
    return search_bad(w, t, [str(idx / "index.faiss")], index=idx)


@case("search")
def search_embeddings_corrupt(w: World, t: Path) -> Bad:
    idx = copy_index(w, t)
    (idx / "embeddings.npy").write_bytes(b"\x93NUMPY garbage")
    return search_bad(w, t, [str(idx / "embeddings.npy")], index=idx)


@case("search")
def search_query_missing(w: World, t: Path) -> Bad:
    return search_bad(w, t, [str(t / "gone.jpg")], query=t / "gone.jpg")


@case("search")
def search_query_is_a_folder(w: World, t: Path) -> Bad:
    return search_bad(w, t, [str(w.query)], query=w.query)


@case("search")
def search_query_not_an_image(w: World, t: Path) -> Bad:
    (t / "photo.jpg").write_text("not really a photo")
    return search_bad(w, t, [str(t / "photo.jpg")], query=t / "photo.jpg", embeds=True)


@case("search")
def search_top_k_zero(w: World, t: Path) -> Bad:
    return search_bad(w, t, ["--top-k"], "--top-k", "0")


@case("search")
def search_grid_not_png(w: World, t: Path) -> Bad:
    return search_bad(w, t, [str(t / "grid.jpg")], "--grid", str(t / "grid.jpg"))


@case("search")
def search_grid_exists_without_force(w: World, t: Path) -> Bad:
    (t / "grid.png").write_bytes(b"my picture")
    return search_bad(w, t, [str(t / "grid.png"), "--force"], "--grid", str(t / "grid.png"))


@case("search")
def search_grid_under_a_file(w: World, t: Path) -> Bad:
    return search_bad(w, t, [str(w.gt)], "--grid", str(w.gt / "grid.png"))


@case("search")
def search_max_crops_zero(w: World, t: Path) -> Bad:
    return search_bad(w, t, ["--max-crops"], "--multicrop", "grid", "--max-crops", "0")


@case("search")
def search_checkpoint_elsewhere_missing(w: World, t: Path) -> Bad:
    return search_bad(w, t, [str(t / "moved")], "--checkpoint", str(t / "moved"))


# --------------------------------------------------------------------------- the battery


@pytest.mark.parametrize("tool, make", CASES, ids=[f"{tool}-{fn.__name__}" for tool, fn in CASES])
def test_bad_input_is_one_clear_error(tool, make, world, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs (submissions/, runs/, .cache/) land here, never in the repo
    monkeypatch.delenv("SIMSEARCH_DEBUG", raising=False)
    DENIED.clear()
    bad = make(world, tmp_path)
    deny_as_root(monkeypatch)
    if not bad.embeds:  # errors that can be found first must be found before any image is embedded
        def refuse(*args, **kwargs):
            raise AssertionError("images were embedded before the bad input was found")
        for module in ("simsearch.inference.folders", "simsearch.retrieval.store", "simsearch.training.engine"):
            monkeypatch.setattr(f"{module}.embed_dataset", refuse)
    before = snapshot(world.root, tmp_path)
    try:
        code = call(tool, bad.argv)
    finally:
        tmp_path.chmod(0o755)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err, err
    for name in bad.names:
        assert name in err, (name, err)
    for word in bad.forbid:
        assert word not in err, (word, err)
    after = snapshot(world.root, tmp_path)
    assert {k: after.get(k) for k in before} == before  # every file the user had, byte for byte
    for path in bad.absent:
        assert not path.exists(), path
    if bad.quiet:
        assert out == "", out


def test_a_failed_resume_leaves_the_run_folder_as_it_was(world, tmp_path, capsys) -> None:
    run = copy_run(world, tmp_path)
    before = snapshot(run)
    assert train_main(train_argv(world, tmp_path, "--resume", "model.embed_dim=8")) == 2
    err = capsys.readouterr().err
    assert "last/model.safetensors" in err and "config.yaml" in err  # what to do: the run's own config
    assert snapshot(run) == before  # config.yaml and train.log byte for byte, no new file
    assert (run / "config.yaml").read_bytes() == (world.run / "config.yaml").read_bytes()


def test_the_format_follows_the_extension_of_out(world, tmp_path) -> None:
    out = tmp_path / "sub.csv"
    assert infer_main(["--checkpoint", str(world.ckpt), "--query-dir", str(world.query), "--gallery-dir",
                       str(world.gallery), "--out", str(out), "infer.cache_dir=null", "infer.top_k=3"]) == 0
    assert out.read_text().splitlines()[0] == "query,ranked_gallery"
    assert json.loads((tmp_path / "sub.meta.json").read_text())["config"]["infer"]["format"] == "csv"


@pytest.mark.parametrize("tool, argv", [
    ("train", ["--config", "missing.yaml"]),
    ("infer", ["--checkpoint", "nope", "--query-dir", "q", "--gallery-dir", "g"]),
    ("score", ["missing.json", "--ground-truth", "gt.json", "--no-leaderboard"]),
    ("index", ["add", "--index", "noidx", "--images", "x.jpg"]),
    ("search", ["--index", "noidx", "--query-image", "x.jpg"]),
    ("export", ["--checkpoint", "nope", "--out", "m.onnx"]),
    ("grid", ["--submission", "missing.json", "--query-dir", "q", "--gallery-dir", "g", "--out", "g.png"]),
    ("inshop", ["--root", "nowhere", "--out", "inshop"]),
    ("compare", ["--configs", "missing.yaml", "--data", "nowhere"]),
])
def test_debug_shows_the_traceback(tool, argv, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIMSEARCH_DEBUG", raising=False)
    assert call(tool, argv) == 2
    with pytest.raises((ValueError, OSError)):
        call(tool, [*argv, "--debug"])
    monkeypatch.setenv("SIMSEARCH_DEBUG", "1")
    with pytest.raises((ValueError, OSError)):
        call(tool, argv)
    monkeypatch.setenv("SIMSEARCH_DEBUG", "0")
    assert call(tool, argv) == 2


# --------------------------------------------------------------------------- the app's upload


@pytest.fixture(scope="module")
def service(world) -> SearchService:
    svc = SearchService(world.index, AppSettings(top_k=3))
    _drop_log_handlers()
    return svc


def _jpeg(w: World, t: Path, name: str) -> Path:
    return Path(shutil.copy(w.query / "q0.jpg", t / name))


APP_CASES: list[Callable] = []


def upload(fn: Callable) -> Callable:
    APP_CASES.append(fn)
    return fn


@upload
def upload_missing(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    return t / "gone.jpg", "gone.jpg", None


@upload
def upload_folder(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    (t / "folder.jpg").mkdir()
    return t / "folder.jpg", "folder.jpg", None


@upload
def upload_text_named_jpg(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    (t / "notes.jpg").write_text("not an image")
    return t / "notes.jpg", "notes.jpg", None


@upload
def upload_empty(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    (t / "empty.png").write_bytes(b"")
    return t / "empty.png", "empty.png", None


@upload
def upload_truncated(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    return truncated(_jpeg(w, t, "cut.jpg"), 0.6), "cut.jpg", None


@upload
def upload_over_the_byte_cap(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    path = _jpeg(w, t, "big.jpg")
    return path, "big.jpg", AppSettings(max_upload_mb=path.stat().st_size / 2**21)


@upload
def upload_over_the_pixel_cap(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    return _jpeg(w, t, "wide.jpg"), "wide.jpg", AppSettings(max_pixels=100)


@upload
def upload_decompression_bomb(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    mp.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    return _jpeg(w, t, "bomb.jpg"), "bomb.jpg", None


@upload
def upload_unreadable(w: World, t: Path, mp: pytest.MonkeyPatch) -> tuple[Path, str, AppSettings | None]:
    path = no_access(_jpeg(w, t, "locked.jpg"))
    path.chmod(0)
    return path, "locked.jpg", None


@pytest.mark.parametrize("make", APP_CASES, ids=[fn.__name__ for fn in APP_CASES])
def test_bad_upload_is_one_clear_message(make, world, service, tmp_path, monkeypatch) -> None:
    DENIED.clear()
    path, name, settings = make(world, tmp_path, monkeypatch)
    deny_as_root(monkeypatch)
    svc = service if settings is None else SearchService(service.index, settings)
    before = snapshot(world.root, tmp_path)
    items, status = svc.search_upload(str(path))
    assert items == [] and status.startswith("**Error:** "), status
    assert md_escape(name) in status and "Traceback" not in status, status
    assert snapshot(world.root, tmp_path) == before
