#!/usr/bin/env bash
# The GPU items of issues 3 and 4 as one prepared device call (`run` tool; ~10 min on an H200 at most):
#   1. versions and devices;
#   2. a real d12 BetterWin training step at T = 65,536 (forward + backward + Muon/Adam update), its tokens/s and
#      MFU against a bf16 matmul timed in the same rounds (benchmarks/train_step.py);
#   3. the kernel and loss equivalence tests on the GPU (attention "auto" = dense or scanned 2,048-query chunks
#      there, 2^28-logit chunks);
#   4. the main job's code path end to end on the GPU at the tiny preset, two tiers;
#   5. with more than one GPU visible: the sharded-training equality test on the GPUs, a tiny tier on
#      --mesh=data:N and on data:N/2,fsdp:2, and the memory plan of d12 on those GPUs' compiler.
# Each part has its own time limit, so a hang in one still leaves the others' output. Logs go to $OUT (the
# device tool's folder that comes back; default /tmp/gpu_checks).
#
#   bash benchmarks/gpu_checks.sh                  # on the GPU machine, from the repository root
#   PRESET=tiny bash benchmarks/gpu_checks.sh      # dry run of the script itself on a CPU
#
# No install step: the H200 image has jax (CUDA), flax, optax, orbax-checkpoint, absl-py, tiktoken, matplotlib
# (/work/.library/device/KINDS.md); grain is imported only by the shard loader, which these checks do not use.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_checks}
PRESET=${PRESET:-d12}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # one process at a time, but tests and benchmarks share nothing

part() {  # part NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, report its exit code
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "== $name: rc $rc in $((SECONDS - t0)) s"
  echo "$name rc=$rc seconds=$((SECONDS - t0))" >> "$OUT/parts.txt"
}

part env 60 "$PY" -c "
import sys, jax, flax, optax, numpy
print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'numpy', numpy.__version__)
print(jax.devices(), jax.default_backend())
"
if [ "$PRESET" = tiny ]; then batch=4; else batch=1; fi
part train_step 300 "$PY" benchmarks/train_step.py --preset="$PRESET" --batch="$batch" --family=betterwin \
  --repeats=5 --components=false
# -o addopts=: pyproject's addopts name pytest-xdist options, and the device image may not have xdist
part kernel_tests 150 "$PY" -m pytest -q -o addopts= -m "not slow" -p no:cacheprovider tests/test_attention.py \
  tests/test_head.py
part tiny_sweep 150 "$PY" -m experiments.batch_sweep --family=betterwin --tiers=1,4 --out="$OUT/sweep"
# only the summary comes back (the device tool returns at most 8 files, 2 folders down)
if [ -f "$OUT/sweep/summary.json" ]; then cp "$OUT/sweep/summary.json" "$OUT/tiny_sweep_summary.json"; fi
rm -rf "$OUT/sweep"
n_gpu=$("$PY" -c "import jax; print(sum(d.platform == 'gpu' for d in jax.devices()))" 2>/dev/null || echo 0)
if [ "${n_gpu:-0}" -gt 1 ]; then
  half=$((n_gpu / 2))
  part mesh_data 200 "$PY" -m experiments.batch_sweep --family=betterwin --tiers=8 --mesh="data:$n_gpu" \
    --out="$OUT/mesh_data"
  part mesh_fsdp 200 "$PY" -m experiments.batch_sweep --family=betterwin --tiers=8 --mesh="data:$half,fsdp:2" \
    --out="$OUT/mesh_fsdp"
  for m in mesh_data mesh_fsdp; do
    if [ -f "$OUT/$m/summary.json" ]; then cp "$OUT/$m/summary.json" "$OUT/${m}_summary.json"; fi
    rm -rf "${OUT:?}/$m"
  done
  part plan_d12 300 "$PY" -m experiments.plan --preset=d12 --mesh="fsdp:$n_gpu"
fi
cat "$OUT/parts.txt"
