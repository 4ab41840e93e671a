"""Inference: embed query and gallery sets (folders or CSV manifests), retrieve, write a submission
and its meta.

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
from simsearch.evaluation.ground_truth import ground_truth_from_labels, without_self
from simsearch.evaluation.leakage import HashCache, find_leaks
from simsearch.inference.ablation import ablation_markdown, ablation_rows
from simsearch.inference.enhancements import (
    embed_query_crops,
    multicrop_options,
    prepare_enhancements,
    validate_enhancements,
)
from simsearch.inference.folders import (
    EmbeddedFolder,
    embed_folder,
    rankings_from_ids,
    scores_from_ids,
    search_readable_scored,
)
from simsearch.inference.formats import submission_spec
from simsearch.inference.sources import ImageSet, as_image_set, self_matches
from simsearch.inference.submission import (
    gallery_label_map,
    gallery_labels_from_config,
    read_ground_truth,
    submission_format,
    write_submission,
)
from simsearch.models.checkpoint import checkpoint_hash, git_sha, load_model
from simsearch.retrieval.device import accelerate_precision, inference_device, place_model, resolve_precision
from simsearch.retrieval.embed import check_embedding_config
from simsearch.retrieval.index import check_factory
from simsearch.retrieval.pipeline import RetrievalOptions
from simsearch.utils.fs import check_writable, submission_meta_path, write_bytes_atomic, write_json_atomic

__all__ = ["check_inference_config", "check_leakage", "make_accelerator", "run_ablation", "run_inference"]

log = logging.getLogger("simsearch.infer")


def check_leakage(query: EmbeddedFolder, gallery: EmbeddedFolder, train_dir: str | None,
                  strict: bool, exclude_self: bool = False, cache_dir: str | Path | None = None) -> list[str]:
    """Warn about (or, with ``strict``, refuse) queries duplicated in the gallery or training data.

    ``exclude_self``: a query's own file in the gallery is no leak (it is left out of its ranking).
    ``cache_dir``: where file hashes are kept between runs (``infer.cache_dir``); None hashes every file.
    """
    others: dict[str, list[str | Path]] = {"gallery": list(gallery.paths)}
    if train_dir and Path(train_dir).is_dir():
        others["training"] = [Path(p) for p, _ in scan_class_folders(train_dir)[0]]
    leaks = find_leaks(query.paths, others, same_file_ok=exclude_self, cache=HashCache.in_dir(cache_dir))
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


def run_inference(cfg: DictConfig, checkpoint: str | Path, query_dir: str | Path | ImageSet,
                  gallery_dir: str | Path | ImageSet, out: str | Path, force: bool = False, strict: bool = False,
                  train_dir: str | None = None, accelerator=None, captioner=None,
                  fmt: str | None = None) -> dict[str, Any]:
    """The whole ``simsearch infer`` job; returns the meta that is written beside the submission.

    The submission's format follows the extension of ``out`` (.json or .csv); ``fmt``, a format name
    (json, csv or a preset such as landmark), when given, must write that extension; the
    ``infer.submission`` keys change its layout. Every output is checked (exists without ``force``,
    not writable) before anything is embedded.
    ``query_dir``/``gallery_dir``: folders (searched recursively) or ImageSets read from CSV
    manifests (:mod:`simsearch.inference.sources`). With ``infer.exclude_self`` a query that is also a
    gallery item is left out of its own ranking; the meta's ``self_excluded`` counts those queries.
    ``captioner``: a callable PIL images -> captions for text fusion, instead of loading
    ``infer.text.captioner`` (tests inject one).
    """
    timings: dict[str, float] = {}
    out = Path(out)
    query_set, gallery_set = as_image_set(query_dir, "--query-dir"), as_image_set(gallery_dir, "--gallery-dir")
    fmt = submission_format(out, fmt)
    spec = submission_spec(fmt, cfg.infer.submission)
    labels = gallery_labels_from_config(cfg.infer.submission) if spec.level == "class" else None
    if spec.level == "class" and labels is None:
        raise ValueError(f"infer.submission.gallery_labels: the {fmt} format writes gallery labels; set it to a "
                         "CSV of gallery names and labels")
    for path in (out, meta_path(out)):
        check_writable(path, what="the submission", force=force)
    if cfg.infer.cache_dir:
        check_writable(cfg.infer.cache_dir, folder=True, what="the embedding cache (infer.cache_dir)")
    opts = check_inference_config(cfg)
    if strict and not cfg.infer.leakage_check:
        raise ValueError("--strict refuses leaking queries, but infer.leakage_check=false switches the leakage "
                         "check off; drop one of them")
    t = time.perf_counter()
    model, _ = load_model(checkpoint)
    check_factory(opts.index, model.embed_dim)
    place_model(model, accelerator if accelerator is not None else inference_device(cfg.train.cpu))
    sha = checkpoint_hash(checkpoint)
    timings["load_s"] = time.perf_counter() - t
    scales = tuple(cfg.infer.tta_scales)
    cache = (cfg.infer.cache_dir, sha) if cfg.infer.cache_dir else None
    gallery = embed_folder(model, gallery_set, cfg, accelerator, cfg.infer.tta_flip, scales, cache, "gallery")
    query = embed_folder(model, query_set, cfg, accelerator, cfg.infer.tta_flip, scales, None, "queries")
    timings["embed_gallery_s"], timings["embed_queries_s"] = gallery.seconds, query.seconds
    crops, mc = None, multicrop_options(cfg)
    if mc is not None:  # every rank embeds its share of the crops
        crops = embed_query_crops(model, query, cfg, mc, None, accelerator, cfg.infer.tta_flip, scales)
        timings["embed_query_crops_s"] = crops.seconds
    if accelerator is not None and not accelerator.is_main_process:
        accelerator.wait_for_everyone()  # rank 0 retrieves and writes; stay until it is done
        return {}
    leaks = None  # the meta's "leaks": null = not checked (infer.leakage_check=false)
    if cfg.infer.leakage_check:
        t = time.perf_counter()
        leaks = check_leakage(query, gallery, train_dir if train_dir is not None else cfg.data.train_dir, strict,
                              opts.exclude_self, cfg.infer.cache_dir)
        timings["leakage_s"] = time.perf_counter() - t
    else:
        log.info("leakage check off (infer.leakage_check=false): no file hashed")
    n_self = int((self_matches(query, gallery) >= 0).sum()) if opts.exclude_self else 0
    enh = prepare_enhancements(cfg, query, gallery, device=model_device(model), captioner=captioner)
    timings.update(enh.seconds)
    ids, scores = search_readable_scored(query, gallery, opts, timings, enh, crops)
    rankings = rankings_from_ids(query, gallery, ids)
    if labels is not None:
        labels = gallery_label_map(labels, gallery.names, str(cfg.infer.submission.gallery_labels))
    write_submission(out, rankings, fmt=spec, force=force, scores=scores_from_ids(query, ids, scores),
                     labels=labels)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["infer"]["format"] = fmt  # what was written: the extension decides
    meta = {"config": config, "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha, "git_sha": git_sha(), "simsearch_version": __version__,
            "python": platform.python_version(), "retrieval": asdict(opts),
            "device": str(model_device(model)),
            "precision": resolve_precision(cfg.infer.precision, model_device(model)),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "sizes": {"queries": len(query.names), "gallery": len(gallery.names),
                      "unreadable_queries": int((~query.ok).sum()),
                      "unreadable_gallery": int((~gallery.ok).sum()), "dim": int(query.emb.shape[1]),
                      "top_k": int(ids.shape[1]), "query_crops": int(len(crops.owner)) if crops else None},
            "enhancements": {"multicrop": asdict(mc) if mc else None, **enh.describe()}, "leaks": leaks,
            "submission": asdict(spec), "self_excluded": n_self}
    write_json_atomic(meta_path(out), meta, force=True)
    log.info("wrote %s (%d queries) and %s", out, len(rankings), meta_path(out))
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return meta


def model_device(model) -> Any:
    return next(model.parameters()).device


def make_accelerator(cfg: DictConfig):
    """An Accelerator for inference in ``infer.precision`` (auto, or the launch flag: retrieval.device),
    whatever an earlier run set; a launch flag that disagrees with an explicit value fails here."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = resolve_precision(cfg.infer.precision, inference_device(cfg.train.cpu))
    AcceleratorState._reset_state()  # process-wide singleton: see engine.build_accelerator
    return Accelerator(cpu=cfg.train.cpu, mixed_precision=accelerate_precision(precision))


def meta_path(out: str | Path) -> Path:
    """The meta file beside a submission (``NAME.meta.json``)."""
    return submission_meta_path(out)


def _ablation_ground_truth(ground_truth: str | Path | None, query: ImageSet, gallery: ImageSet) -> dict:
    """The ground truth file, or the labels of the query and gallery manifests (without self)."""
    if ground_truth is not None:
        return read_ground_truth(ground_truth)
    if query.labels is None or gallery.labels is None:
        raise ValueError("--ablate needs --ground-truth GT.json, or manifests with a label column "
                         "(data.columns.label)")
    return ground_truth_from_labels(list(zip(query.names, query.labels)), list(zip(gallery.names, gallery.labels)))


def run_ablation(cfg: DictConfig, checkpoint: str | Path, query_dir: str | Path | ImageSet,
                 gallery_dir: str | Path | ImageSet, ground_truth: str | Path | None,
                 out_md: str | Path | None = None, force: bool = False, captioner=None) -> str:
    """Extract plain and flip-TTA embeddings once each, then score every retrieval variant.

    Switched-on enhancements add rows: their crops (plain and TTA), the second model's embeddings
    of every query and gallery image (plain) and the texts are also made once, before the rows.
    ``ground_truth`` None: from the labels of the manifests. With ``infer.exclude_self`` a query is
    left out of its own ranking and of its own relevant list.
    """

    if out_md:
        check_writable(out_md, what="the ablation table (--ablate-out)", force=force)
    opts = check_inference_config(cfg)
    query_set, gallery_set = as_image_set(query_dir, "--query-dir"), as_image_set(gallery_dir, "--gallery-dir")
    gt = _ablation_ground_truth(ground_truth, query_set, gallery_set)
    model, _ = load_model(checkpoint)
    check_factory(opts.index, model.embed_dim)
    place_model(model, inference_device(cfg.train.cpu))
    scales = tuple(cfg.infer.tta_scales)
    # No cache here: the table's times must include real extraction.
    plain = {"query": embed_folder(model, query_set, cfg, None, False, (1.0,), None, "queries"),
             "gallery": embed_folder(model, gallery_set, cfg, None, False, (1.0,), None, "gallery")}
    tta = {"query": embed_folder(model, query_set, cfg, None, True, scales, None, "queries+TTA"),
           "gallery": embed_folder(model, gallery_set, cfg, None, True, scales, None, "gallery+TTA")}
    if opts.exclude_self and (self_matches(plain["query"], plain["gallery"]) >= 0).any():
        gt, n = without_self(gt)
        log.info("ablation: queries are left out of their own rankings (%d ground-truth lists held themselves)", n)
    crops, mc = None, multicrop_options(cfg)
    if mc is not None:
        crops = {"plain": embed_query_crops(model, plain["query"], cfg, mc),
                 "tta": embed_query_crops(model, tta["query"], cfg, mc, tta_flip=True, scales=scales)}
    enh = prepare_enhancements(cfg, plain["query"], plain["gallery"], device=model_device(model), second_tta=False,
                               captioner=captioner)
    if enh.second is not None:  # its load time plus the extraction of every query and gallery image
        enh.second.embed([str(p) for f in plain.values() for p in f.paths])
        enh.seconds["second_embed_s"] = enh.second.seconds
    rows = ablation_rows(plain, tta, gt, opts, enh, crops)
    where = query_set.source.parent if query_set.source.is_dir() else query_set.source
    table = ablation_markdown(rows, f"{cfg.run_name}: {Path(checkpoint)} on {where}")
    if out_md:
        write_bytes_atomic(out_md, table.encode(), force=force)
    return table
