"""Train an embedding model: ``simsearch train --config FILE [key=value ...]``."""
from __future__ import annotations

import argparse
import sys

from simsearch.config import load
from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", action="append", default=[],
                   help="experiment YAML (repeatable; merged in order over configs/default.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run from its last/ checkpoint")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    add_debug_flag(p)
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
        from simsearch.training.engine import fit

        result = fit(cfg, resume=args.resume)
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    if result["is_main_process"]:
        print(f"run folder: {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
