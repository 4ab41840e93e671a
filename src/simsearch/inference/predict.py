"""Inference: embed query and gallery folders, retrieve, write a submission and its meta.

Used by ``simsearch infer``; imports no training code (the engine), as open_clip keeps its
library apart from its training app.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from simsearch import __version__
from simsearch.data import scan_class_folders
from simsearch.evaluation.leakage import find_leaks
from simsearch.inference.ablation import ablation_markdown, ablation_rows
from simsearch.inference.enhancements import (
    embed_query_crops,
    multicrop_options,
    prepare_enhancements,
    validate_enhancements,
)
from simsearch.inference.folders import EmbeddedFolder, embed_folder, rankings_from_ids, search_readable
from simsearch.inference.submission import read_ground_truth, submission_format, write_submission
from simsearch.models.checkpoint import checkpoint_hash, git_sha, load_model
from simsearch.retrieval.embed import check_embedding_config
from simsearch.retrieval.index import check_factory
from simsearch.retrieval.pipeline import RetrievalOptions
from simsearch.utils.fs import check_writable, write_bytes_atomic, write_json_atomic

__all__ = ["check_inference_config", "check_leakage", "make_accelerator", "run_ablation", "run_inference"]

log = logging.getLogger("simsearch.infer")


def check_leakage(query: EmbeddedFolder, gallery: EmbeddedFolder, train_dir: str | None,
                  strict: bool) -> list[str]:
    """Warn about (or, with ``strict``, refuse) queries duplicated in the gallery or training data."""
    others: dict[str, list[Path]] = {"gallery": [gallery.folder / n for n in gallery.names]}
    if train_dir and Path(train_dir).is_dir():
        others["training"] = [Path(p) for p, _ in scan_class_folders(train_dir)[0]]
    leaks = find_leaks([query.folder / n for n in query.names], others)
    for message in leaks:
        log.warning("leakage: %s", message)
    if leaks and strict:
        raise ValueError(f"--strict: {len(leaks)} query file(s) leak into the gallery or training "
                         f"data, first: {leaks[0]}")
    return leaks


def check_inference_config(cfg: DictConfig) -> RetrievalOptions:
    """Every ``infer`` value (and the embedding keys) range-checked before any work; the retrieval options."""
    check_embedding_config(cfg)
    validate_enhancements(cfg)
    return RetrievalOptions.from_config(cfg.infer)


def run_inference(cfg: DictConfig, checkpoint: str | Path, query_dir: str | Path, gallery_dir: str | Path,
                  out: str | Path, force: bool = False, strict: bool = False, train_dir: str | None = None,
                  accelerator=None, captioner=None, fmt: str | None = None) -> dict[str, Any]:
    """The whole ``simsearch infer`` job; returns the meta that is written beside the submission.

    The submission's format follows the extension of ``out`` (.json or .csv); ``fmt``, when given,
    must agree with it. Every output is checked (exists without ``force``, not writable) before
    anything is embedded.
    ``captioner``: a callable PIL images -> captions for text fusion, instead of loading
    ``infer.text.captioner`` (tests inject one).
    """
    timings: dict[str, float] = {}
    out = Path(out)
    for folder, flag in ((query_dir, "--query-dir"), (gallery_dir, "--gallery-dir")):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag}: {folder} does not exist or is not a folder")
    fmt = submission_format(out, fmt)
    for path in (out, meta_path(out)):
        check_writable(path, what="the submission", force=force)
    if cfg.infer.cache_dir:
        check_writable(cfg.infer.cache_dir, folder=True, what="the embedding cache (infer.cache_dir)")
    opts = check_inference_config(cfg)
    t = time.perf_counter()
    model, _ = load_model(checkpoint)
    check_factory(opts.index, model.embed_dim)
    model.to(accelerator.device if accelerator is not None else "cpu")
    sha = checkpoint_hash(checkpoint)
    timings["load_s"] = time.perf_counter() - t
    scales = tuple(cfg.infer.tta_scales)
    cache = (cfg.infer.cache_dir, sha) if cfg.infer.cache_dir else None
    gallery = embed_folder(model, gallery_dir, cfg, accelerator, cfg.infer.tta_flip, scales, cache, "gallery")
    query = embed_folder(model, query_dir, cfg, accelerator, cfg.infer.tta_flip, scales, None, "queries")
    timings["embed_gallery_s"], timings["embed_queries_s"] = gallery.seconds, query.seconds
    crops, mc = None, multicrop_options(cfg)
    if mc is not None:  # every rank embeds its share of the crops
        crops = embed_query_crops(model, query, cfg, mc, None, accelerator, cfg.infer.tta_flip, scales)
        timings["embed_query_crops_s"] = crops.seconds
    if accelerator is not None and not accelerator.is_main_process:
        accelerator.wait_for_everyone()  # rank 0 retrieves and writes; stay until it is done
        return {}
    leaks = check_leakage(query, gallery, train_dir if train_dir is not None else cfg.data.train_dir, strict)
    enh = prepare_enhancements(cfg, query, gallery, device=model_device(model), captioner=captioner)
    timings.update(enh.seconds)
    ids = search_readable(query, gallery, opts, timings, enh, crops)
    rankings = rankings_from_ids(query, gallery, ids)
    write_submission(out, rankings, fmt=fmt, force=force)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["infer"]["format"] = fmt  # what was written: the extension decides
    meta = {"config": config, "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha, "git_sha": git_sha(), "simsearch_version": __version__,
            "python": platform.python_version(), "retrieval": asdict(opts),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "sizes": {"queries": len(query.names), "gallery": len(gallery.names),
                      "unreadable_queries": int((~query.ok).sum()),
                      "unreadable_gallery": int((~gallery.ok).sum()), "dim": int(query.emb.shape[1]),
                      "top_k": int(ids.shape[1]), "query_crops": int(len(crops.owner)) if crops else None},
            "enhancements": {"multicrop": asdict(mc) if mc else None, **enh.describe()}, "leaks": leaks}
    write_json_atomic(meta_path(out), meta, force=True)
    log.info("wrote %s (%d queries) and %s", out, len(rankings), meta_path(out))
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return meta


def model_device(model) -> Any:
    return next(model.parameters()).device


def make_accelerator(cfg: DictConfig):
    """An Accelerator for inference (no mixed precision), whatever an earlier run set."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # process-wide singleton: see engine.build_accelerator
    return Accelerator(cpu=cfg.train.cpu)


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")


def run_ablation(cfg: DictConfig, checkpoint: str | Path, query_dir: str | Path, gallery_dir: str | Path,
                 ground_truth: str | Path, out_md: str | Path | None = None, force: bool = False,
                 captioner=None) -> str:
    """Extract plain and flip-TTA embeddings once each, then score every retrieval variant.

    Switched-on enhancements add rows: their crops (plain and TTA), the second model's embeddings
    of every query and gallery image (plain) and the texts are also made once, before the rows.
    """

    if out_md:
        check_writable(out_md, what="the ablation table (--ablate-out)", force=force)
    opts = check_inference_config(cfg)
    gt = read_ground_truth(ground_truth)
    model, _ = load_model(checkpoint)
    check_factory(opts.index, model.embed_dim)
    scales = tuple(cfg.infer.tta_scales)
    # No cache here: the table's times must include real extraction.
    plain = {"query": embed_folder(model, query_dir, cfg, None, False, (1.0,), None, "queries"),
             "gallery": embed_folder(model, gallery_dir, cfg, None, False, (1.0,), None, "gallery")}
    tta = {"query": embed_folder(model, query_dir, cfg, None, True, scales, None, "queries+TTA"),
           "gallery": embed_folder(model, gallery_dir, cfg, None, True, scales, None, "gallery+TTA")}
    crops, mc = None, multicrop_options(cfg)
    if mc is not None:
        crops = {"plain": embed_query_crops(model, plain["query"], cfg, mc),
                 "tta": embed_query_crops(model, tta["query"], cfg, mc, tta_flip=True, scales=scales)}
    enh = prepare_enhancements(cfg, plain["query"], plain["gallery"], second_tta=False, captioner=captioner)
    if enh.second is not None:  # its load time plus the extraction of every query and gallery image
        enh.second.embed([str(f.folder / n) for f in plain.values() for n in f.names])
        enh.seconds["second_embed_s"] = enh.second.seconds
    rows = ablation_rows(plain, tta, gt, opts, enh, crops)
    table = ablation_markdown(rows, f"{cfg.run_name}: {Path(checkpoint)} on {Path(query_dir).parent}")
    if out_md:
        write_bytes_atomic(out_md, table.encode(), force=force)
    return table
