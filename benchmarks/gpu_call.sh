#!/usr/bin/env bash
# The one command for a GPU machine (README "GPU"): environment, probes, ours vs nanoGPT, in one call.
#
#   bash benchmarks/gpu_call.sh              # on the GPU machine, from the repository root (< 8 minutes)
#   TINY=1 bash benchmarks/gpu_call.sh       # the same steps on the CPU with tiny shapes (tests/test_gpu_check.py)
#
# Needs only python3 with torch and numpy (tensorboard for our training's events); no network, nothing installed.
# nanoGPT comes from $NANOGPT_REF, default benchmarks/reference/nanoGPT (git-ignored: a checkout, or just its
# train.py, model.py, configurator.py, bench.py and config/). Everything lands in $OUT (default
# benchmarks/out/gpu_call): gpu_call.log (this output), env.txt, gpu_check.json (every number) and logs.tar.gz
# (each step's own log, nanoGPT's output included).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out/gpu_call}
REF=${NANOGPT_REF:-benchmarks/reference/nanoGPT}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_call.XXXXXX")
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_call.log") 2>&1

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
    || echo "nvidia-smi: not available"
  echo "cpus: $(nproc)"
  "$PYTHON" - <<'PY'
import importlib.util, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"| cc {p.major}.{p.minor} | {p.total_memory / 2**30:.0f} GiB | {p.multi_processor_count} SMs")
print("packages:", {n: importlib.util.find_spec(n) is not None for n in ("numpy", "tensorboard", "yaml", "tiktoken", "triton")})
PY
} | tee "$OUT/env.txt"

args=(--work "$WORK" --out "$OUT/gpu_check.json")
[ -f "$REF/model.py" ] && args+=(--nanogpt "$REF") || echo "no nanoGPT at $REF: its side is skipped"
if [ "${TINY:-0}" = 1 ]; then
  args+=(--tiny)
else
  args+=(--budget "${BUDGET:-450}")
fi
# GPU_CHECK_ARGS: more options for gpu_check.py, e.g. "--only probes,decode" for a follow-up call
# shellcheck disable=SC2206
args+=(${GPU_CHECK_ARGS:-})
PYTHONUNBUFFERED=1 env -u NANOGPT_REF -u NANOGPT_REFERENCE "$PYTHON" benchmarks/gpu_check.py "${args[@]}"
status=$?
tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.bin' --exclude='events.*' . 2>/dev/null
echo "gpu_call: exit $status; results in $OUT"
exit $status
