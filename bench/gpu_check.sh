#!/usr/bin/env bash
# The GPU check: one table of everything pixdex's CUDA path promises, on a CUDA machine with no network.
#
#   bash bench/gpu_check.sh [WHEEL_DIR]        (default: $PIXDEX_WHEELS, else bench/wheels)
#
# 1. installs what is missing from WHEEL_DIR (pip --no-index --find-links; made by bench/gpu_wheels.sh),
#    torch excepted (the machine's own); pixdex itself runs from this checkout (PYTHONPATH);
# 2. runs the CUDA tests (pytest -m gpu);
# 3. bf16 parity and image-tower images/s at batch 256, ViT-B-32 and ViT-L-14 (random weights);
# 4. `pixdex index` on 5,000 generated 256 px JPEGs and 1,000 12 MP JPEGs (decode in the loop);
# 5. faiss IVF train/add/search on 1M vectors on the GPU ("not run" without a faiss with GPU support,
#    e.g. when its 48 MB wheel did not fit in the folder);
# and prints one table. Each part has its own time box (about 8 minutes in all). Without CUDA every
# GPU part says "not run (no CUDA)" and the script exits 0 at once: CI runs it that way
# (tests/test_gpu_check.py). GPU_CHECK_QUICK=1 shrinks every part (a check of the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
WHEELS=${1:-${PIXDEX_WHEELS:-bench/wheels}}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

row() { printf '%s\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$OUT"; }

# part NAME SECONDS COMMAND...: run a part with its time box; its rows (name<TAB>value<TAB>note) go to
# the table, a failure or a timeout becomes a row of its own.
part() {
  local name=$1 secs=$2
  shift 2
  local log
  log=$(mktemp)
  timeout --kill-after=10 "$secs" "$@" >"$log" 2>"$log.err"
  local rc=$?
  grep -P '^[^\t]+\t[^\t]*\t' "$log" >>"$OUT"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    row "$name" "timed out" "after ${secs} s"
  elif [ $rc -ne 0 ]; then
    row "$name" "failed (exit $rc)" "$(tail -n 1 "$log.err" | cut -c1-120)"
  fi
  rm -f "$log" "$log.err"
}

has_cuda=$($PY -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
quick=${GPU_CHECK_QUICK:-0}

# 1. install
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  # the carried wheels of projects not installed yet (torch and what came with it stay as they are),
  # without dependency resolution: the folder is the set; faiss separately, below
  mapfile -t todo < <($PY - "$WHEELS" <<'EOF_PY'
import sys
from importlib import metadata
from pathlib import Path

def norm(name):
    return name.lower().replace("-", "_").replace(".", "_")

have = {norm(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]}
for w in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = norm(w.name.split("-")[0])
    if not name.startswith("faiss") and name not in have:
        print(w)
EOF_PY
)
  if [ ${#todo[@]} -eq 0 ]; then
    row "install" "ok" "everything carried is installed already"
  elif timeout 120 $PY -m pip install -q --no-index --no-deps "${todo[@]}" >/dev/null 2>&1; then
    row "install" "ok" "${#todo[@]} wheels from $WHEELS"
  else
    row "install" "failed" "pip install --no-index --no-deps ($WHEELS)"
  fi
  if ! $PY -c 'import faiss' 2>/dev/null; then
    fw=$(ls "$WHEELS"/faiss_gpu*.whl "$WHEELS"/faiss_cpu*.whl 2>/dev/null | head -n 1)
    if [ -n "$fw" ] && timeout 60 $PY -m pip install -q --no-index --no-deps "$fw" >/dev/null 2>&1; then
      row "install faiss" "ok" "$(basename "$fw")"
    else
      row "install faiss" "not run" "no faiss wheel carried"
    fi
  fi
else
  row "install" "not run" "no wheel folder $WHEELS (bench/gpu_wheels.sh makes one)"
fi

part env 60 $PY bench/gpu_check.py env

# 2. CUDA tests
if [ "$has_cuda" = 1 ]; then
  tlog=$(mktemp)
  timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests >"$tlog" 2>&1
  rc=$?
  row "pytest -m gpu" "$(tail -n 1 "$tlog" | sed 's/=//g; s/^ *//; s/ *$//')" "exit $rc"
  rm -f "$tlog"
else
  row "pytest -m gpu" "not run (no CUDA)"
fi

# 3-5. the benchmarks
if [ "$has_cuda" != 1 ]; then
  part plan 60 $PY bench/gpu_check.py plan
elif [ "$quick" = 1 ]; then
  part encode 60 $PY bench/gpu_check.py encode --models tiny-vit --batch 32 --seconds 1
  part index 60 $PY bench/gpu_check.py index --n 50 --kind 256px --timeout 50
  part faiss 60 $PY bench/gpu_check.py faiss --n 20000
else
  part encode 100 $PY bench/gpu_check.py encode --models ViT-B-32,ViT-L-14 --batch 256 --seconds 8
  part "index 256px" 100 $PY bench/gpu_check.py index --n 5000 --kind 256px --timeout 90
  part "index 12mp" 110 $PY bench/gpu_check.py index --n 1000 --kind 12mp --timeout 100
  part faiss 100 $PY bench/gpu_check.py faiss --n 1000000
fi

echo "pixdex GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
awk -F'\t' '{ printf "%-28s %-26s %s\n", $1, $2, $3 }' "$OUT"
exit 0
