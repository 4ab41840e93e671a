#!/usr/bin/env bash
# Wheel smoke: what `pip install .` gives a user, away from the checkout.
# 1. build the wheel from a copy of the package's sources (no build/ or egg-info left in the checkout);
# 2. check it holds every shipped config (configs/*.yaml), the tiny open_clip towers
#    (models/open_clip_configs/*.json) and the `simsearch` console command;
# 3. install it, not editable, into a fresh virtual environment in a temp folder, with its dependencies
#    pinned to the versions of the dev venv that the tests pass with (its `pip freeze`), which the
#    machine's local wheel indexes hold: no new versions, no large downloads (the CUDA torch stack is
#    hard-linked from the dev venv, see below);
# 4. from a folder outside the checkout: `simsearch --help` (every command listed), one training step
#    of the shipped tiny_test config on a generated class-folder set, infer and score.
# Uses $PY (default .venv/bin/python, made by `make install`) to build; prints the time of each part.
# KEEP_WHEEL_SMOKE=1 keeps the temp folder for a look; otherwise it is removed at the end.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
export NO_ALBUMENTATIONS_UPDATE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH
WORK="$(mktemp -d "${TMPDIR:-/tmp}/simsearch-wheel.XXXXXX")"
if [ "${KEEP_WHEEL_SMOKE:-0}" = 1 ]; then
    trap 'echo "wheel smoke: kept $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi
case "$WORK" in "$REPO"/*) echo "error: the temp folder $WORK lies inside the checkout" >&2; exit 1 ;; esac
t0=$SECONDS
step() { echo "wheel smoke [$((SECONDS - t0)) s]: $*"; }

# --- build
step "building the wheel"
mkdir -p "$WORK/src" "$WORK/dist"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.egg-info' -cf - setup.cfg pyproject.toml README.md LICENSE src |
    tar -C "$WORK/src" -xf -
"$PY" -m pip wheel --no-deps -q -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/simsearch-*.whl)"
"$PY" - "$WHEEL" "$REPO/src/simsearch" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel, src = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
data = [*src.glob("configs/*.yaml"), *src.glob("models/open_clip_configs/*.json")]
code = [p for p in src.rglob("*.py") if "__pycache__" not in p.parts]  # a folder without __init__.py is left out
missing = [w for w in (f"simsearch/{p.relative_to(src).as_posix()}" for p in data + code) if w not in names]
entry = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
if missing or "simsearch = simsearch.cli:main" not in entry or len(data) < 2:
    sys.exit(f"wheel {wheel}: missing {missing or 'the simsearch console command'}")
print(f"wheel ok: {Path(wheel).name}: {len(code)} modules, {len(data)} configs and open_clip towers, the command")
EOF
t_build=$((SECONDS - t0))

# --- fresh venv, deps pinned to the dev venv's
step "installing it into a fresh venv in $WORK/venv"
"$("$PY" -c 'import sys; print(sys._base_executable)')" -m venv --without-pip "$WORK/venv"
"$PY" -m pip freeze --exclude-editable | grep -v -i -e '^simsearch' -e ' @ ' >"$WORK/pins.txt" || true
if [ "${WHEEL_SMOKE_SEED:-1}" = 1 ]; then
    # Seed the fresh venv with the dev venv's CUDA torch stack (torch, triton, nvidia-*, cuda-*: 5 GB of
    # the 6) as hard links: the same files, in the fresh venv's own folders, with their dist-info, so pip
    # finds them installed at the pinned versions and installs everything else itself. Unpacking and
    # later deleting those 5 GB took minutes of this smoke on 2 cores; links take seconds. Another file
    # system (no hard links) or WHEEL_SMOKE_SEED=0 installs them from the wheels like the rest.
    "$PY" - "$WORK/venv" <<'EOF'
import importlib.metadata as md
import os
import re
import sys
import sysconfig
from pathlib import Path

site = Path(sysconfig.get_path("purelib"))
dest = Path(sys.argv[1]) / site.relative_to(sys.prefix)
heavy = [d for d in md.distributions(path=[str(site)])
         if re.fullmatch(r"torch|triton|nvidia-.*|cuda-.*", d.metadata["Name"].lower())]
files = [f for d in heavy for f in d.files or [] if not str(f).startswith("..")]  # not bin/ scripts
linked = 0
try:
    for f in files:
        src, dst = site / f, dest / f
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
            linked += 1
except OSError as exc:
    if linked:  # a half-seeded venv would be neither one thing nor the other
        raise
    print(f"seeding skipped ({exc}): torch installs from the wheels")
    sys.exit(0)
print(f"seeded {len(heavy)} distributions ({linked} files, hard links) from {site}")
EOF
fi
# the dev venv's (current) pip installs into it (--python); --no-compile: torch's thousands of modules are
# not byte-compiled up front (imports compile what they use). The local indexes' missing folders are noise.
"$PY" -m pip --python "$WORK/venv/bin/python" install -q --no-compile -c "$WORK/pins.txt" "$WHEEL" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
t_install=$((SECONDS - t0 - t_build))

# --- the installed command, from a folder outside the checkout
mkdir "$WORK/run" && cd "$WORK/run"
V="$WORK/venv/bin"
step "running the installed command from $PWD"
"$V/python" - "$REPO" <<'EOF'
import sys
from pathlib import Path

import simsearch

where = Path(simsearch.__file__).resolve()
if Path(sys.argv[1]).resolve() in where.parents or "site-packages" not in where.parts:
    sys.exit(f"simsearch imported from {where}, not from the fresh venv's site-packages")
print(f"simsearch {simsearch.__version__} from {where.parent}")
EOF
"$V/simsearch" --help >help.txt
cat help.txt
"$V/python" - <<'EOF'
import pkgutil, sys

import simsearch.commands

names = [m.name.replace("_", "-") for m in pkgutil.iter_modules(simsearch.commands.__path__)] + ["bench"]
text = open("help.txt").read()
missing = [n for n in names if f"\n    {n} " not in text and f"\n    {n}\n" not in text]
if missing or len(names) < 10:
    sys.exit(f"simsearch --help does not list: {missing}")
print(f"--help lists all {len(names)} commands")
EOF

# a tiny competition: 6 classes of colour patterns to train on; unseen images of the same classes
# split into one query per class and its gallery, with the ground truth
"$V/python" - <<'EOF'
import json
from pathlib import Path

import numpy as np
from PIL import Image

def classes(root: Path, seed: int, per_class: int) -> list[list[Path]]:
    rng, out = np.random.default_rng(seed), []
    for c in range(6):
        base = np.random.default_rng(c).integers(0, 256, size=(4, 4, 3))
        (root / f"class_{c}").mkdir(parents=True)
        out.append([])
        for i in range(per_class):
            img = np.clip(np.kron(base, np.ones((10, 10, 1))) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
            out[-1].append(root / f"class_{c}" / f"{i}.jpg")
            Image.fromarray(img.astype(np.uint8)).save(out[-1][-1])
    return out

classes(Path("train"), seed=0, per_class=6)
gt = {}
for c, imgs in enumerate(classes(Path("unseen"), seed=1, per_class=4)):
    for d in ("query", "gallery"):
        Path(d).mkdir(exist_ok=True)
    imgs[0].rename(f"query/q{c}.jpg")
    gt[f"q{c}.jpg"] = [f"g{c}_{i}.jpg" for i in range(len(imgs) - 1)]
    for i, p in enumerate(imgs[1:]):
        p.rename(f"gallery/g{c}_{i}.jpg")
Path("gt.json").write_text(json.dumps(gt))
EOF
step "simsearch train (one step of tiny_test)"
"$V/simsearch" train --config tiny_test data.train_dir=train train.output_dir=runs train.epochs=1 \
    train.max_steps_per_epoch=1
for f in config.yaml metrics.csv train.log curves.png best/model.safetensors last/train_state.pt; do
    test -s "runs/tiny_test/$f" || { echo "error: simsearch train wrote no runs/tiny_test/$f" >&2; exit 1; }
done
ls runs/tiny_test/tb/events.out.tfevents.* >/dev/null
step "simsearch infer"
"$V/simsearch" infer --checkpoint runs/tiny_test/best --query-dir query --gallery-dir gallery --out sub.json
step "simsearch score"
"$V/simsearch" score sub.json --ground-truth gt.json --gallery-dir gallery --leaderboard leaderboard.csv \
    | tee score.txt
grep -q -i "map" score.txt && test -s leaderboard.csv
t_run=$((SECONDS - t0 - t_build - t_install))
echo "wheel smoke passed in $((SECONDS - t0)) s: build ${t_build} s, fresh venv install ${t_install} s," \
    "commands ${t_run} s; removing $WORK"
