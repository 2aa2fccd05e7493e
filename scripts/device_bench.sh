#!/usr/bin/env bash
# On a GPU machine (Python 3.12, torch, timm, transformers; no registry): install
# what is missing from ./wheels (scripts/device_wheels.sh makes it), run
# `bench features` (ViT-L/16, UNI-sized, bf16) and `bench dp`, and print ONE JSON
# line with both. About 3 minutes on an H100/H200.
#     scripts/device_bench.sh     # env: ENCODER SIZE WORKERS BATCH REPS (PYTHON: no venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ENCODER="${ENCODER:-timm:vit_large_patch16_224}"
SIZE="${SIZE:-16384}"
WORKERS="${WORKERS:-$(nproc)}"
BATCH="${BATCH:-256}"
REPS="${REPS:-3}"
VENV="${VENV:-/tmp/slidefed-device-venv}"
LOG="${LOG:-/tmp/slidefed-device.log}"
: >"$LOG"

if [ -n "${PYTHON:-}" ]; then  # an interpreter that has (most of) it already
    PY="$PYTHON"
else  # the machine's Python and packages, plus what ./wheels adds
    python3 -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1
    PY="$VENV/bin/python"
fi
grep -v '^#' scripts/device_wheels.txt | while read -r module req; do
    [ -n "$module" ] || continue
    if ! "$PY" -c "import $module" >/dev/null 2>&1; then
        name=$(echo "${req%%==*}" | tr '-' '_')
        wheel=$(ls wheels/ 2>/dev/null | grep -i "^${name}-${req##*==}-" | head -1 || true)
        if [ -z "$wheel" ]; then echo "missing wheel for $req" >>"$LOG"; continue; fi
        "$PY" -m pip install --quiet --no-index --no-deps "wheels/$wheel" >>"$LOG" 2>&1
    fi
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

feat=$(timeout 420 "$PY" -m slidefed.cli bench features --json --encoder "$ENCODER" \
    --size "$SIZE" --workers "$WORKERS" --batch-size "$BATCH" --reps "$REPS" 2>>"$LOG" \
    || echo '{"error": "bench features failed; see the log"}')
dp=$(timeout 120 "$PY" -m slidefed.cli bench dp --json --reps 5 2>>"$LOG" \
    || echo '{"error": "bench dp failed; see the log"}')
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo none)
"$PY" - "$feat" "$dp" "$gpu" "$LOG" <<'PYEOF'
import json, sys
import torch
def parse(text):
    try:
        return json.loads(text)
    except ValueError:
        return {"error": text[-500:]}
feat, dp, gpu, log = sys.argv[1:5]
tail = open(log, errors="replace").read()[-1500:]
print(json.dumps({
    "gpu": gpu, "torch": torch.__version__,
    "features": parse(feat), "dp": parse(dp),
    "log_tail": tail if ("error" in feat or "error" in dp) else "",
}))
PYEOF
