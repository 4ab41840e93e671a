"""Qdrant collections (retrieval.vectordb) against index folders: the same hits as a Flat folder, add,
refusals, option mixes, the app, and the error when the extra is missing. Qdrant's local mode, on disk
under tmp_path: exact search, no server."""
import shutil
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from tools.app import parse_args as app_args
from tools.index import main as index_main
from tools.search import main as search_main

from conftest import make_class_folder, train_tiny_checkpoint
from simsearch.apps.app import AppSettings, SearchService, build_app
from simsearch.retrieval import store, vectordb
from simsearch.retrieval.vectordb import DbLocation, add_to_collection, open_collection, search_index, search_text

TOL = 1e-5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny trained OpenCLIP checkpoint, a catalogue of unseen images, its Flat folder and its collection."""
    root = tmp_path_factory.mktemp("vectordb")
    ckpt = train_tiny_checkpoint(root, n_classes=4)
    catalog = make_class_folder(root / "catalog", n_classes=4, per_class=3, seed=5)
    common = ["build", "--checkpoint", str(ckpt), "--images", str(catalog)]
    assert index_main([*common, "--out", str(root / "idx"), "infer.tta_flip=false", "infer.index=Flat"]) == 0
    loc = DbLocation(str(root / "qdrant"), "catalog")
    assert index_main([*common, "--backend", "qdrant", "--uri", loc.uri, "--collection", loc.collection,
                       "infer.tta_flip=false"]) == 0
    yield {"root": root, "ckpt": ckpt, "catalog": catalog, "folder": root / "idx", "loc": loc}
    vectordb.close_clients()


def build_args(built, images: Path, loc: DbLocation) -> list[str]:
    return ["build", "--checkpoint", str(built["ckpt"]), "--images", str(images), "--backend", "qdrant",
            "--uri", loc.uri, "--collection", loc.collection, "infer.tta_flip=false"]


def assert_same_hits(got, want) -> None:
    """The same scores rank by rank, and the same path at each rank unless the reference ties there."""
    assert len(got) == len(want) > 0
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=TOL)
    for g, w in zip(got, want):
        assert g.path == w.path or g.path in {h.path for h in want if abs(h.score - w.score) <= TOL}


def other_checkpoint(built, tmp_path: Path) -> Path:
    other = Path(shutil.copytree(built["ckpt"], tmp_path / "other"))
    weights = load_file(str(other / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, str(other / "model.safetensors"))
    return other


def test_the_collection_finds_what_the_flat_folder_finds(built, tmp_path):
    folder, collection = store.load_index_dir(built["folder"]), open_collection(built["loc"])
    assert collection.count == len(folder.ids) == 12
    m = collection.manifest
    for key in ("checkpoint", "checkpoint_sha256", "images_dir", "embedding", "clip", "dim"):
        assert m[key] == folder.manifest[key], key
    assert m["complete"] is True and m["embedding"]["tta_flip"] is False  # the override reached the embedding
    unseen = make_class_folder(tmp_path / "queries", n_classes=2, per_class=1, seed=7)
    queries = [built["catalog"] / "class_00/img_01.jpg", built["catalog"] / "class_03/img_02.jpg",
               unseen / "class_01/img_00.jpg"]
    for query in queries:
        for k in (12, 3):
            assert_same_hits(search_index(collection, query, top_k=k), store.search_index(folder, query, top_k=k))
    assert search_index(collection, queries[0], top_k=1)[0].path == str(queries[0].resolve())
    for text in ("red dress", "a striped shoe"):  # the clip vectors, through Qdrant
        assert_same_hits(search_text(collection, text, top_k=12), store.search_text(folder, text, top_k=12))


def test_the_search_command_reads_a_collection(built, capsys):
    query = built["catalog"] / "class_02/img_00.jpg"
    loc = built["loc"]
    assert search_main(["--backend", "qdrant", "--uri", loc.uri, "--collection", loc.collection,
                        "--query-image", str(query), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["1", "1.0000", str(query.resolve())]
    assert search_main(["--backend", "qdrant", "--uri", loc.uri, "--collection", "nope", "--query-image",
                        str(query)]) == 2
    assert "no such collection" in capsys.readouterr().err


def test_add_appends_only_new_images_and_matches_a_fresh_build(built, tmp_path, capsys):
    images = Path(shutil.copytree(built["catalog"], tmp_path / "images"))
    loc = DbLocation(str(tmp_path / "qdrant"), "two-step")
    assert index_main(build_args(built, images, loc)) == 0
    make_class_folder(images / "new", n_classes=2, per_class=2, seed=9)
    add = ["add", "--backend", "qdrant", "--uri", loc.uri, "--collection", loc.collection, "--images"]
    assert index_main([*add, str(images / "new")]) == 0
    assert capsys.readouterr().out.strip().endswith("(16 images)")
    collection = open_collection(loc)
    assert collection.count == collection.manifest["count"] == 16
    assert add_to_collection(collection, images)["count"] == 16 and collection.count == 16  # nothing new
    one_step = tmp_path / "one"
    assert index_main(["build", "--checkpoint", str(built["ckpt"]), "--images", str(images), "--out",
                       str(one_step), "infer.tta_flip=false", "infer.index=Flat"]) == 0
    for image_id in ("new/class_01/img_00.jpg", "class_02/img_01.jpg"):
        assert_same_hits(search_index(collection, images / image_id, top_k=16),
                         store.search_index(one_step, images / image_id, top_k=16))


def test_another_checkpoint_is_refused_naming_both_hashes(built, tmp_path, capsys):
    other = other_checkpoint(built, tmp_path)
    collection = open_collection(built["loc"])
    sha = collection.manifest["checkpoint_sha256"]
    from simsearch.models.checkpoint import checkpoint_hash

    other_sha = checkpoint_hash(other)
    new = make_class_folder(tmp_path / "new", n_classes=1, per_class=2, seed=11)
    with pytest.raises(ValueError, match="refusing to add to") as exc:
        add_to_collection(built["loc"], new, checkpoint=other)
    assert sha in str(exc.value) and other_sha in str(exc.value) and "catalog" in str(exc.value)
    loc = built["loc"]
    assert index_main(["add", "--backend", "qdrant", "--uri", loc.uri, "--collection", loc.collection,
                       "--images", str(new), "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and sha in err and other_sha in err
    assert collection.count == 12
    with pytest.raises(ValueError, match="refusing to search"):
        search_index(open_collection(loc), new / "class_00/img_00.jpg", checkpoint=other)


def test_build_refuses_to_replace_without_force_or_what_it_did_not_write(built, tmp_path, capsys):
    loc = DbLocation(str(tmp_path / "qdrant"), "c")
    args = build_args(built, built["catalog"], loc)
    assert index_main(args) == 0
    assert index_main(args) == 2 and "exists; pass --force" in capsys.readouterr().err
    assert index_main([*args, "--force"]) == 0 and open_collection(loc).count == 12
    client = vectordb.connect(loc.uri)
    from qdrant_client import models

    client.create_collection("foreign", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    client.upsert("foreign", [models.PointStruct(id=7, vector=[1.0, 0.0], payload={"theirs": True})])
    foreign = build_args(built, built["catalog"], loc._replace(collection="foreign"))
    assert index_main([*foreign, "--force"]) == 2 and "simsearch did not write it" in capsys.readouterr().err
    assert client.count("foreign").count == 1
    with pytest.raises(ValueError, match="not a simsearch collection"):
        open_collection(loc._replace(collection="foreign"))


def test_an_interrupted_build_is_not_searched_and_force_replaces_it(built, tmp_path, monkeypatch, capsys):
    loc = DbLocation(str(tmp_path / "qdrant"), "c")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(vectordb, "_upsert", crash)
        with pytest.raises(KeyboardInterrupt):
            index_main(build_args(built, built["catalog"], loc))
    with pytest.raises(ValueError, match="its build did not finish"):
        open_collection(loc)
    assert index_main(build_args(built, built["catalog"], loc)) == 2  # still refused without --force
    assert index_main([*build_args(built, built["catalog"], loc), "--force"]) == 0
    assert open_collection(loc).count == 12


@pytest.mark.parametrize("argv, message", [
    (["--out", "x", "--backend", "qdrant", "--uri", "u", "--collection", "c"], "--out names an index folder"),
    (["--backend", "qdrant", "--uri", "u"], "needs --uri and --collection"),
    (["--out", "x", "--uri", "u"], "go with --backend qdrant"),
    (["--backend", "qdrant", "--uri", "u", "--collection", "c", "--factory", "HNSW32"], "--factory is a FAISS"),
    ([], "--out is required"),
])
def test_index_options_name_one_kind_of_index(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        index_main(["build", "--checkpoint", "ck", "--images", "im", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_main(["--query-text", "x", "--backend", "qdrant", "--uri", "u", "--collection", "c",
                     "--multicrop", "grid"])
    assert "--multicrop searches index folders only" in capsys.readouterr().err


def test_the_app_searches_a_collection(built):
    loc = built["loc"]
    args = app_args(["--backend", "qdrant", "--uri", loc.uri, "--collection", loc.collection])
    assert args.location == loc and args.index is None
    service = SearchService(args.location, AppSettings(top_k=4))
    query = built["catalog"].resolve() / "class_02" / "img_01.jpg"
    items, status = service.search_upload(str(query))
    assert len(items) == 4 and items[0] == (str(query), "1. class_02/img_01.jpg · 1.000")
    assert status.splitlines()[0] == "Top 4 of 12 images for the uploaded image."
    items, status = service.search_text("red dress")
    assert service.text_search_error is None and len(items) == 4 and status.startswith("Top 4 of 12 images")
    ids = {getattr(b, "elem_id", None) for b in build_app(service).blocks.values()}
    assert "query-text" in ids


def test_a_missing_extra_is_one_error_naming_it(built, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # import qdrant_client now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'simsearch\[vectordb\]'"):
        open_collection(DbLocation(str(tmp_path / "q"), "c"))
    assert index_main(build_args(built, built["catalog"], DbLocation(str(tmp_path / "q"), "c"))) == 2
    assert "pip install 'simsearch[vectordb]'" in capsys.readouterr().err
    query = built["catalog"] / "class_01/img_00.jpg"  # index folders need no extra
    assert search_main(["--index", str(built["folder"]), "--query-image", str(query), "--top-k", "1"]) == 0
