#!/usr/bin/env bash
# Every GPU check and figure of the benchmarks in one command, for a machine with a CUDA GPU and a
# CUDA build of torch (plus tlc's dependencies) already installed; about 8 minutes on an H200.
#
#   bash bench/gpu.sh                 # writes bench/results/*_cuda.csv
#   PY=/path/to/python bash bench/gpu.sh
#   COPY_TO=/some/dir bash bench/gpu.sh   # also copies the CSVs there after every step
#
# Steps run in order of importance: correctness on the device first (bench/gpu_check.py and the
# CUDA tests), then the local ops, then the networks. Each is the CPU benchmark script run with
# --device cuda (CUDA synchronisation around every timed call, see bench/common.py); each step has
# its own time limit so one slow step cannot take the others' time, and a failed step does not stop
# the rest (the exit code says whether any did).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=0
step() {  # step SECONDS COMMAND...
  local limit=$1; shift
  echo "== $* ($(date +%T))"
  timeout "$limit" "$@" || { echo "!! failed ($?): $*"; failed=1; }
  if [ -n "${COPY_TO:-}" ]; then cp bench/results/*_cuda.csv "$COPY_TO"/ 2>/dev/null; fi
}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)" || exit 2
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv 2>/dev/null
# Correct on the device: every local op and every corpus model against the CPU in float64.
step 150 "$PY" bench/gpu_check.py --device cuda
# Local mean vs the reference's exact algorithm and its fast_imp, float32 (exact: float64 sums).
step 45 "$PY" bench/local_mean.py --device cuda --shapes 1x32x720x1280,1x64x720x1280,1x16x2160x3840,1x64x2160x3840
# Converted vs plain at the released widths (NAFNet width 64, HINet, MPRNet, Restormer).
NETS=NAFNet-width64,HINet,MPRNet,Restormer
for dtype in float16 float32; do
  step 70 "$PY" bench/networks.py --device cuda --full --only $NETS --dtype "$dtype" --size 720x1280
done
# What each GPU form buys: Triton kernels on / off, the attention's blocks at once / in a loop.
step 90 "$PY" bench/gpu_ab.py --device cuda --dtype float16
# Where the converted networks' time goes (torch profiler, plain against converted).
step 60 "$PY" bench/gpu_profile.py --device cuda --dtype float16 --only Restormer,MPRNet,NAFNet-width64
step 120 "$PY" bench/networks.py --device cuda --full --only $NETS --dtype float16 --size 2160x3840
# The test suite's CUDA cases.
step 60 "$PY" -m pytest -q -p no:cacheprovider -x tests/test_pool.py tests/test_norm.py tests/test_attention.py \
  tests/test_local_context.py tests/test_local_extrema.py tests/test_triton.py -k cuda
step 60 "$PY" bench/networks.py --device cuda --full --only $NETS --dtype bfloat16 --size 720x1280
# Restormer's local attention vs the reference loop over windows: levels 1 and 2 at 720p, and 4K.
step 40 "$PY" bench/attention.py --device cuda --dim 48 --heads 1
step 40 "$PY" bench/attention.py --device cuda --dim 96 --heads 2 --height 360 --width 640 --window 192
step 60 "$PY" bench/attention.py --device cuda --dim 48 --heads 1 --height 2160 --width 3840
exit $failed
