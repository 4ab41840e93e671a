"""ONNX export of a checkpoint's embedding model: images (B, 3, H, W) -> unit-norm embeddings (B, D).

The batch axis is dynamic; H and W are fixed to the checkpoint's input size. The preprocessing a
consumer needs (input size, mean, std, interpolation) goes into the model's metadata_props, so
the .onnx file alone is enough to serve it. Before the file is moved into place, onnxruntime
must reproduce PyTorch's embeddings at two batch sizes; a mismatch leaves nothing behind.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simsearch import __version__
from simsearch.models.checkpoint import checkpoint_hash, load_model
from simsearch.utils.fs import replace_file

__all__ = ["EXPORTERS", "export_onnx", "onnx_metadata", "onnx_embed"]

log = logging.getLogger("simsearch.models.export")
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a single file at 2 GiB; bigger weights go beside it


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str,
            external: bool) -> None:
    names = dict(input_names=["images"], output_names=["embeddings"], opset_version=opset)
    if exporter == "dynamo":
        # torch.export (onnxscript): the current exporter. The example batch is 2, not 1, since
        # torch.export specialises dimensions of size 0 and 1 to constants.
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=external,
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, **names)
    elif exporter == "torchscript":
        torch.onnx.export(model, (example,), str(path), dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, **names)
    else:
        raise ValueError(f"--exporter: '{exporter}' must be one of {', '.join(EXPORTERS)}")


def _add_metadata(path: Path, meta: dict[str, str], external: bool) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data")
    else:
        onnx.save_model(proto, str(path))


def onnx_embed(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Embeddings of a float32 (B, 3, H, W) batch from an exported file, on onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embeddings"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The simsearch metadata of an exported file (input size, mean, std, embed_dim, ...), parsed."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def _verify(model: torch.nn.Module, path: Path, size: int, atol: float, seed: int = 0) -> dict[int, float]:
    """Max |onnx - torch| at batch 1 and 3 (batches the trace never saw); raises above ``atol``."""
    g = torch.Generator().manual_seed(seed)
    diffs = {}
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size, generator=g)
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = onnx_embed(path, x.numpy())
        diffs[batch] = float(np.abs(got - ref).max())
        if got.shape != ref.shape or diffs[batch] > atol:
            raise RuntimeError(f"ONNX check failed at batch {batch}: output {got.shape} vs {ref.shape}, "
                               f"max |onnx - torch| {diffs[batch]:.2e} > {atol:.0e}; nothing was written")
    return diffs


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, force: bool = False,
                exporter: str = "dynamo", atol: float = 1e-4) -> dict[str, Any]:
    """Export ``checkpoint`` (a run's best/ or last/) to ``out``; returns what was written and checked."""
    out = Path(out)
    data_file = out.with_name(f"{out.name}.data")
    if not force:
        for path in (out, data_file):
            if path.exists():
                raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    if exporter not in EXPORTERS:
        raise ValueError(f"--exporter: '{exporter}' must be one of {', '.join(EXPORTERS)}")
    model, cfg = load_model(checkpoint)
    model = model.float().eval()
    dc = model.data_config
    size = int(cfg.data.image_size or dc.input_size)
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
    meta = {"input_size": size, "mean": list(dc.mean), "std": list(dc.std), "interpolation": dc.interpolation,
            "eval_resize_ratio": float(cfg.data.eval_resize_ratio), "embed_dim": int(model.embed_dim),
            "backbone": str(cfg.model.backbone), "checkpoint_sha256": checkpoint_hash(checkpoint),
            "simsearch_version": __version__, "exporter": exporter, "opset": opset}
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built in a temp folder under the final file name, so an external data reference stays valid after the move.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp") as build:
        tmp = Path(build) / out.name
        _export(model, torch.randn(2, 3, size, size), tmp, opset, exporter, external)
        _add_metadata(tmp, {k: json.dumps(v) for k, v in meta.items()}, external)
        diffs = _verify(model, tmp, size, atol)
        if (Path(build) / data_file.name).exists():
            replace_file(Path(build) / data_file.name, data_file)
        replace_file(tmp, out)
    log.info("exported %s to %s (%s exporter, opset %d); max |onnx - torch| %s", checkpoint, out,
             exporter, opset, {b: f"{d:.1e}" for b, d in diffs.items()})
    return {"out": str(out), "external_data": str(data_file) if external else None,
            "max_abs_diff": diffs, **meta}
