"""Export a checkpoint's embedding model to ONNX: ``simsearch export --checkpoint RUN/best --out model.onnx
[--opset N] [--exporter dynamo|torchscript] [--force]``.

Input ``images`` (B, 3, H, W), float32, normalised with the mean/std stored in the file's metadata;
output ``embeddings`` (B, D), unit length. The batch axis is dynamic.
"""
from __future__ import annotations

import argparse
import sys

from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from simsearch.models.export import DEFAULT_OPSET, EXPORTERS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run's best/ or last/ folder")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="dynamo (torch.export + onnxscript, the default) or the older TorchScript tracer")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest |onnx - torch| accepted by the check run before the file is moved in")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from simsearch.models.export import export_onnx

        info = export_onnx(args.checkpoint, args.out, opset=args.opset, force=args.force,
                           exporter=args.exporter, atol=args.atol)
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    diffs = ", ".join(f"batch {b}: {d:.1e}" for b, d in info["max_abs_diff"].items())
    print(f"wrote {info['out']}: images (B, 3, {info['input_size']}, {info['input_size']}) -> embeddings "
          f"(B, {info['embed_dim']}); {info['exporter']} exporter, opset {info['opset']}; "
          f"max |onnx - torch| {diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
