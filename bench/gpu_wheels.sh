#!/usr/bin/env bash
# Make the wheel folder that bench/gpu_check.sh installs from on a CUDA machine without network
# (Linux x86_64, Python 3.12, torch already there):
#
#   bash bench/gpu_wheels.sh [DIR] [BUDGET_MIB]        (default: bench/wheels, 56)
#   GPU_WHEELS_SKIP="numpy ..." to leave out what the target has (default: pillow_heif hf_xet, which the
#   check never imports); PY312=/path/to/python3.12 to build pdqhash's wheel.
#
# Downloads binary wheels of pixdex's core dependencies (read from pyproject.toml; torch and
# open_clip_torch left out: the machine has torch, and pixdex's own encoders need no open_clip) with
# their dependencies (pdqhash, source only, built with a local python3.12), plus pytest, then the largest FAISS that still fits in BUDGET_MIB: faiss-gpu-cu12
# (about 48 MB, without its CUDA libraries, which torch brings), else faiss-cpu, else none (then
# gpu_check.sh says "not run" for faiss and `pixdex index` cannot run). The folder is git-ignored; give
# it to the device machine as a carried path (run's `carry: ["bench/wheels"]`, 64 MiB with the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-bench/wheels}
BUDGET=$(( ${2:-56} * 1024 * 1024 ))
PY=${PYTHON:-python3}
PLAT=(--python-version 3.12 --implementation cp --only-binary=:all:
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p "$DIR"

mapfile -t deps < <($PY - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
skip = {"torch", "open_clip_torch", "open-clip-torch", "pdqhash"}  # pdqhash: source only, built below
for d in deps:
    if re.split(r"[<>=!~; \[]", d, 1)[0] not in skip:
        print(d)
EOF
)
$PY -m pip download -q "${PLAT[@]}" -d "$DIR" "${deps[@]}" pytest pytest-timeout

# pdqhash publishes no wheels: build one with a local Python 3.12 when there is one (else gpu_check.sh
# indexes without copy hashes, PIXDEX_COPY_HASHES=0)
py312=${PY312:-python3.12}
if "$py312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  "$py312" -m pip wheel -q --no-deps -w "$DIR" "pdqhash>=0.2.8" || echo "pdqhash: could not build a 3.12 wheel"
else
  echo "pdqhash: no python3.12 here to build its wheel; the check indexes without copy hashes"
fi

for skip in ${GPU_WHEELS_SKIP-pillow_heif hf_xet}; do rm -f "$DIR/$skip"-*.whl; done

size() { du -cb "$DIR"/*.whl | tail -n 1 | cut -f1; }
base=$(size)
echo "pixdex's dependencies: $(ls "$DIR"/*.whl | wc -l) wheels, $((base / 1048576)) MiB"
for faiss in faiss-gpu-cu12 faiss-cpu; do
  tmp=$(mktemp -d)
  $PY -m pip download -q "${PLAT[@]}" --no-deps -d "$tmp" "$faiss"
  f=$(ls "$tmp"/*.whl)
  if [ $((base + $(stat -c %s "$f"))) -le "$BUDGET" ]; then
    mv "$f" "$DIR"/
    echo "$faiss: $(( $(stat -c %s "$DIR/$(basename "$f")") / 1048576 )) MiB, kept"
    rm -rf "$tmp"
    break
  fi
  echo "$faiss: $(( $(stat -c %s "$f") / 1048576 )) MiB, over the budget of $((BUDGET / 1048576)) MiB"
  rm -rf "$tmp"
done
echo "total $(( $(size) / 1048576 )) MiB in $DIR"
