#!/usr/bin/env bash
# One call on a lent GPU, from a copy of the repository (no network, installs nothing):
#   bash scripts/gpu_check.sh            (OUT=<folder> for the logs; default ./gpu_out)
# It runs, most important first, each part under `timeout` and all of them within a budget of
# GPU_CHECK_BUDGET seconds (default 320; what is left when a part's turn comes caps it, and a part
# with under 10 s left is skipped and says so):
#   (a) the CUDA parity tests: tests/lib/test_triton.py, then the CUDA cases of test_dtypes_devices.py,
#       test_backends.py and test_bench.py (pytest if it imports, else scripts/gpu_check.py parity);
#   (b) phased-lstm bench --device cuda against cuDNN nn.LSTM at the targets' shapes, then the same
#       with --tf32, then the other configs;
#   (c) scripts/gpu_check.py sweep: closed-neuron skipping at inference, the time gate, and the
#       recurrence's plans at both shapes.
# The C++ CPU kernels build in the background while the first tests run (the other test files load
# them; a failed build is logged, not fatal); the benchmark starts once that build has ended.
# A summary is printed last and written to $OUT/summary.txt; the exit status is 1 if any part
# failed, timed out or was skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-320}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Private caches: the C++ build and Triton's compiled kernels never touch the machine's defaults.
export TORCH_EXTENSIONS_DIR=/tmp/phased_lstm_gpu_check/torch_extensions
export TRITON_CACHE_DIR=/tmp/phased_lstm_gpu_check/triton
# A build killed by its timeout leaves its lock file: the tests then give up on it after 20 s
# (and skip what needs the kernels) instead of waiting for it.
export PHASED_LSTM_BUILD_LOCK_TIMEOUT=20 MAX_JOBS=12
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
began=$SECONDS
failures=()

note() { echo "[$((SECONDS - began)) s] $*" >&2; }

# part NAME LIMIT LOG COMMAND...: run COMMAND under timeout, capped by what is left of the budget,
# with its output in $OUT/LOG and its exit status appended there.
part() {
    local name=$1 limit=$2 log=$OUT/$3
    shift 3
    local left=$((BUDGET - (SECONDS - began)))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        note "$name: skipped, out of time"
        echo "skipped: out of time (budget ${BUDGET} s)" >> "$log"
        failures+=("$name (skipped)")
        return
    fi
    note "$name (at most $limit s)"
    timeout --kill-after=5 "$limit" "$@" >> "$log" 2>&1
    local status=$?
    echo "exit $status$( ((status == 124 || status == 137)) && echo " (timed out after $limit s)")" \
        >> "$log"
    ((status == 0)) || failures+=("$name (exit $status)")
}

note "environment"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    timeout 60 "$PY" - <<'EOF'
import importlib.util, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(), "cc", torch.cuda.get_device_capability())
import triton
print("triton", triton.__version__)
for name in ("pytest", "hypothesis", "ninja"):
    print(name, "present" if importlib.util.find_spec(name) else "absent")
import phased_lstm
print("phased_lstm", phased_lstm.__version__, "from", phased_lstm.__file__)
EOF
} > "$OUT/env.txt" 2>&1 || {
    cat "$OUT/env.txt"
    echo "gpu_check: the environment check failed (above): no CUDA torch, Triton or sources" >&2
    exit 1
}

# Niced, beside the first tests (which compile Triton kernels); the benchmark waits for it, so that
# no compiler competes with the host side of the timed steps.
note "C++ CPU kernels: building in the background"
(timeout --kill-after=5 240 nice -n 19 "$PY" -m phased_lstm.ops.build > "$OUT/cpp_build.log" 2>&1
 echo "exit $?" >> "$OUT/cpp_build.log") &
build=$!

if "$PY" -c "import pytest" 2> /dev/null; then
    PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts= -rfEs)
    # Two processes, so that Triton compiles the kernels of the large-shape tests (H 110 and 300,
    # every mode) beside those of the others: compiling, not running, is most of this part.
    part "(a) tests/lib/test_triton.py on CUDA" 150 tests_triton.log bash -c '
        "$@" -k "not gpu_shapes" & small=$!
        "$@" -k gpu_shapes > "$OUT/tests_triton_shapes.log" 2>&1
        large=$?
        echo "exit $large" >> "$OUT/tests_triton_shapes.log"
        wait $small
        small=$?
        exit $((small || large))' part "${PYTEST[@]}" tests/lib/test_triton.py
else
    part "(a) parity on CUDA (no pytest)" 150 tests_triton.log \
        "$PY" scripts/gpu_check.py parity --device cuda
fi

note "waiting for the C++ build (it has its own time limit)"
wait "$build"

# phased-lstm bench, from these sources (the console script may belong to another install).
BENCH=("$PY" -m phased_lstm_experiments.cli bench --device cuda --repeats 5 --warmup 2)
TARGETS=paper-train,h512-train,paper-eval,h512-eval
part "(b) bench, targets" 75 bench.txt "${BENCH[@]}" --configs "$TARGETS"
part "(b) bench --tf32, targets" 50 bench_tf32.txt "${BENCH[@]}" --tf32 --configs "$TARGETS"

if [[ -n ${PYTEST[*]-} ]]; then
    part "(a) CUDA cases of the other tests" 60 tests_cuda.log "${PYTEST[@]}" \
        tests/lib/test_dtypes_devices.py tests/lib/test_backends.py tests/experiments/test_bench.py -k cuda
fi

part "(c) sweep: skipping, time gate, plans" 75 sweep.txt "$PY" scripts/gpu_check.py sweep
part "(b) bench, other configs" 45 bench_more.txt \
    "${BENCH[@]}" --configs lengths-train,stream-eval,batch-eval --no-memory

"$PY" scripts/gpu_check.py summary "$OUT" | tee "$OUT/summary.txt"
echo "total $((SECONDS - began)) s; logs in $OUT"
if ((${#failures[@]})); then
    printf 'gpu_check: FAILED or cut short: %s\n' "${failures[@]}" | tee -a "$OUT/summary.txt" >&2
    exit 1
fi
echo "gpu_check: every part passed" | tee -a "$OUT/summary.txt"
