#!/usr/bin/env bash
# Issue 10's GPU checks in one run (about 8 minutes on one H100/H200; every step has its own time limit):
#   1. the correctness tests on CUDA (tests/test_devices.py: F.conv2d, autograd, gradcheck, direct DFT);
#   2. scripts/bench_models.py --device cuda (op counts, step time and peak-memory ratios, profiles,
#      torch.compile) -> bench_models_cuda.md;
#   3. scripts/bench_layers.py --device cuda -> bench_layers_cuda.md.
# Results and logs go to $OUT (default ./gpu_results); copy the two .md files into docs/ and run
# `python scripts/update_readme.py` to put the GPU tables in the README next to the CPU ones.
#
#   bash scripts/gpu_checks.sh                 # on a machine with torch and a GPU; needs no network
#   DEVICE=cpu ONLY=speclenet bash scripts/gpu_checks.sh   # a quick smoke run of the script itself
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
DEVICE=${DEVICE:-cuda}
ONLY=${ONLY:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

"$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
step tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_devices.py
only=()
[ -n "$ONLY" ] && only=(--only $ONLY)
compile=(speclenet specalexnet specvgg16 specdensenet)
[ -n "$ONLY" ] && compile=($ONLY)
step bench_models 300 "$PYTHON" scripts/bench_models.py --device "$DEVICE" "${only[@]}" \
    --markdown "$OUT/bench_models_$DEVICE.md" --compile "${compile[@]}"
step bench_layers 90 "$PYTHON" scripts/bench_layers.py --device "$DEVICE" --quick --markdown "$OUT/bench_layers_$DEVICE.md"
exit $status
