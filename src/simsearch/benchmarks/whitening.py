"""Learned linear maps on frozen features: does a map fitted on the training images transfer?

    simsearch bench whitening --data ROOT [--config effnet_lite0_offline] [--folds 5] [--json OUT]

The untrained model (the config with ``train.epochs=0``: the identity head over the backbone's GeM
features) embeds ``ROOT/training`` and the test split once, plain and with flip TTA. Then each map
is fitted on training embeddings and applied before the L2 normalisation: centring, per-dimension
standardisation (what a BatchNorm head converges to) and PCA whitening with eigenvalue power β,
shrinkage and optional dimension cut (learned whitening, Radenović, Tolias and Chum, "Fine-tuning
CNN Image Retrieval with No Human Annotation", TPAMI 2018; shrinkage as Ledoit-Wolf-style
regularisation of small eigenvalues). Supervised maps too, trained from the identity on the
training labels: a weight per dimension, a low-rank update I + UV^T, or a full matrix, with the NCA
softmax loss over in-batch neighbours (Goldberger et al., NIPS 2004, as in supervised contrastive
learning, Khosla et al. 2020) for a fixed number of Adam steps: the smallest learned heads, to see
whether any supervision from the training classes transfers. Maps are chosen on a class-split
validation (``--folds`` seeded draws of 20% of the training classes held out, each image querying
the other held-out ones), and every one is reported on the test split, plain (exact cosine) and
with the config's post-processing, so the chosen row can be compared with the untrained ``raw``
one honestly.
numpy's eigh is enough here (sklearn's PCA whitening has no power or shrinkage); written by hand.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.benchmarks.common import header, write_json
from simsearch.config import load
from simsearch.data.datasets import FlatImageDataset, ImageDataset, scan_class_folders
from simsearch.data.transforms import eval_transform
from simsearch.evaluation.metrics import retrieval_metrics_from_embeddings, score_rankings
from simsearch.models import build_model
from simsearch.retrieval.embed import embed_dataset
from simsearch.retrieval.pipeline import RetrievalOptions, retrieve
from simsearch.utils.errors import USER_ERRORS, user_error

__all__ = ["LinearMap", "fit_map", "main", "map_names", "validate_map"]

LinearMap = Callable[[np.ndarray], np.ndarray]


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


NCA_KINDS = {"diag": 3e-3, "lowrank8": 1e-3, "full": 1e-4}  # kind: Adam learning rate
NCA_STEPS = (25, 100, 400)
_NCA_BATCH, _NCA_TEMPERATURE = 256, 0.1


def _fit_nca(kind: str, lr: float, steps: int, x: np.ndarray, labels: np.ndarray, seed: int = 0) -> LinearMap:
    """A map trained from the identity with the NCA loss: each image's softmax over its batch's other
    images (temperature 0.1) should put its mass on its own class. Written by hand: a few lines of
    torch on frozen features, where PML's losses would need a model and a loader."""
    import torch

    dim = x.shape[1]
    gen = torch.Generator().manual_seed(seed)
    if kind == "diag":
        params = {"a": torch.zeros(dim)}  # weights exp(a): 1 at the start
    elif kind.startswith("lowrank"):
        rank = int(kind.removeprefix("lowrank"))
        params = {"u": torch.randn(dim, rank, generator=gen) * 1e-3, "v": torch.zeros(dim, rank)}
    elif kind == "full":
        params = {"w": torch.eye(dim)}
    else:
        raise ValueError(f"unknown supervised map kind {kind!r} ({', '.join(NCA_KINDS)})")
    for t in params.values():
        t.requires_grad_(True)

    def apply(z: torch.Tensor) -> torch.Tensor:
        if kind == "diag":
            z = z * params["a"].exp()
        elif kind == "full":
            z = z @ params["w"]
        else:
            z = z + (z @ params["u"]) @ params["v"].T
        return torch.nn.functional.normalize(z, dim=1)

    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels)
    opt = torch.optim.Adam(params.values(), lr=lr)
    for _ in range(steps):
        idx = torch.randperm(len(xt), generator=gen)[:_NCA_BATCH]
        z, y = apply(xt[idx]), yt[idx]
        eye = torch.eye(len(idx), dtype=torch.bool)
        logp = (z @ z.T / _NCA_TEMPERATURE).masked_fill(eye, -1e9).log_softmax(dim=1)
        same = (y[:, None] == y[None]) & ~eye
        has = same.any(dim=1)
        loss = -logp.masked_fill(~same, -1e9).logsumexp(dim=1)[has].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def f(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return apply(torch.as_tensor(np.asarray(z), dtype=torch.float32)).numpy().astype(np.float32)

    return f


def fit_map(name: str, x: np.ndarray, labels: np.ndarray | None = None) -> LinearMap:
    """The map ``name`` fitted on the rows of ``x`` (and their ``labels``, for supervised maps); it
    returns L2-normalised rows.

    ``raw`` (identity), ``center``, ``std``, ``pca b{β} d{dim} s{shrink}``: project on the
    covariance's eigenvectors (the first ``dim``; 0 = all) and scale each by (λ + shrink·mean λ)^(-β/2),
    or ``nca {kind} s{steps}``: a supervised map of :data:`NCA_KINDS` trained for ``steps``.
    """
    if name.startswith("nca "):
        _, kind, steps = name.split()
        if labels is None:
            raise ValueError(f"map {name!r} is supervised: it needs the training labels")
        return _fit_nca(kind, NCA_KINDS.get(kind, 0.0), int(steps.removeprefix("s")), x, labels)
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    if name == "raw":
        return _l2
    if name == "center":
        return lambda z: _l2(z - mu)
    if name == "std":
        sd = x.std(axis=0) + 1e-6
        return lambda z: _l2((z - mu) / sd)
    if not name.startswith("pca "):
        raise ValueError(f"unknown map {name!r} (raw, center, std, 'pca bB dD sS' or 'nca KIND sN')")
    parts = dict((p[0], float(p[1:])) for p in name.split()[1:])
    beta, dim, shrink = parts["b"], int(parts["d"]), parts["s"]
    vals, vecs = np.linalg.eigh(np.cov((x - mu).T))
    vals, vecs = vals[::-1].clip(0.0), vecs[:, ::-1]
    vals = vals + shrink * vals.mean()
    if dim:
        vals, vecs = vals[:dim], vecs[:, :dim]
    proj = vecs * (vals.clip(1e-12) ** (-beta / 2))
    return lambda z: _l2((z - mu) @ proj)


def map_names() -> list[str]:
    """The maps the benchmark compares."""
    pca = [f"pca b{b} d{d} s{s}" for b in (0.25, 0.5, 1.0) for d in (0, 512, 256) for s in (0.0, 0.1, 1.0)]
    nca = [f"nca {kind} s{steps}" for kind in NCA_KINDS for steps in NCA_STEPS]
    return ["raw", "center", "std", *pca, *nca]


def validate_map(name: str, x: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0,
                 held_share: float = 0.2) -> dict[str, float]:
    """Mean R@1 and mAP of ``name`` over ``folds`` class splits: fitted on the kept classes, scored on
    the held-out ones (each image queries the others of the held-out classes)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    n_held = max(2, round(held_share * len(classes)))
    r1, mean_ap = [], []
    for _ in range(folds):
        held = np.isin(labels, rng.permutation(classes)[:n_held])
        z = fit_map(name, x[~held], labels[~held])(x[held])
        m = retrieval_metrics_from_embeddings(z, labels[held], z, labels[held], ks=(1,), exclude_self=True)
        r1.append(m["r1"])
        mean_ap.append(m["map"])
    return {"r1": float(np.mean(r1)), "map": float(np.mean(mean_ap))}


def _embed_all(cfg, root: Path) -> dict[str, Any]:
    model = build_model(cfg).eval()
    tf = eval_transform(cfg, model.data_config)
    samples, _ = scan_class_folders(root / "training")
    sets = {"train": ImageDataset(samples, tf), "query": FlatImageDataset(root / "test" / "query", tf),
            "gallery": FlatImageDataset(root / "test" / "gallery", tf)}
    out: dict[str, Any] = {"labels": np.array([s.label for s in samples])}
    for name, ds in sets.items():
        for tta in (False, True):
            out[name, tta] = embed_dataset(model, ds, None, batch_size=cfg.infer.batch_size,
                                           num_workers=cfg.data.num_workers, tta_flip=tta, desc=name)[0]
        out[name, "names"] = list(getattr(ds, "names", []))
    return out


def _test_scores(f: LinearMap, e: dict[str, Any], gt: dict[str, list[str]], opts: RetrievalOptions,
                 tta: bool) -> dict[str, float]:
    ids, _ = retrieve(f(e["query", tta]), f(e["gallery", tta]), opts)
    qn, gn = e["query", "names"], e["gallery", "names"]
    m = score_rankings({q: [gn[j] for j in row if j >= 0] for q, row in zip(qn, ids)}, gt, ks=(1, 5))
    return {k: m[k] for k in ("r1", "r5", "map", "mrr")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="competition folder (training/<class>/*, test/)")
    p.add_argument("--config", default="effnet_lite0_offline", help="config (shipped name or path)")
    p.add_argument("--folds", type=int, default=5, help="class-split validation draws")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.data)
    try:
        cfg = load([args.config], [*args.overrides, "train.epochs=0"])
        from simsearch.inference.submission import read_ground_truth

        gt = read_ground_truth(root / "test" / "ground_truth.json")
        e = _embed_all(cfg, root)
    except USER_ERRORS as exc:
        return user_error(exc)
    post = replace(RetrievalOptions.from_config(cfg.infer), top_k=0, index="Flat")
    plain = replace(post, qe="none", dba_k=0, rerank=False)
    tta = bool(cfg.infer.tta_flip)
    rows = []
    for name in map_names():
        val = validate_map(name, e["train", False], e["labels"], args.folds)
        both = np.concatenate([e["train", False], e["train", True]]) if tta else e["train", False]
        both_labels = np.concatenate([e["labels"], e["labels"]]) if tta else e["labels"]
        plain_map = fit_map(name, e["train", False], e["labels"])
        rows.append({"map": name, "val": val, "plain": _test_scores(plain_map, e, gt, plain, False),
                     "post": _test_scores(fit_map(name, both, both_labels), e, gt, post, tta)})
    best = max(rows, key=lambda r: r["val"]["map"])
    print(header(f"Learned linear maps on frozen features: {Path(args.config).stem} on {root.name}",
                 notes=[f"chosen on {args.folds} class-split validation folds (20% of the training classes "
                        f"held out): {best['map']}", "post = the config's post-processing"]))
    print("| map | val R@1 | val mAP | plain R@1 | plain mAP | plain MRR | post R@1 | post mAP | post MRR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: -r["val"]["map"]):
        v, p, q = r["val"], r["plain"], r["post"]
        mark = " (chosen)" if r is best else ""
        print(f"| {r['map']}{mark} | {v['r1']:.4f} | {v['map']:.4f} | {p['r1']:.4f} | {p['map']:.4f} | "
              f"{p['mrr']:.4f} | {q['r1']:.4f} | {q['map']:.4f} | {q['mrr']:.4f} |")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
