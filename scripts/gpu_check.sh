#!/usr/bin/env bash
# One call on a lent GPU (about 4 minutes expected; every part is time-boxed, 7 at most): the Triton backend's tests on CUDA,
# a sweep of its plans, the benchmark against cuDNN (default precision and --tf32), and the other
# tests that have a CUDA parametrisation. Logs go to $OUT (default ./gpu_out, 8 files at most);
# a short summary is printed last. Installs nothing; run from anywhere:  bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# The C++ CPU kernels build into a private cache; Triton's cache too. Nothing is interpreted.
export TORCH_EXTENSIONS_DIR=/tmp/phased_lstm_torch_extensions TRITON_CACHE_DIR=/tmp/phased_lstm_triton
export PYTHONDONTWRITEBYTECODE=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
began=$SECONDS
step() { echo "[$((SECONDS - began)) s] $*" >&2; }

step "environment"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    timeout 30 "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, \
'|', torch.cuda.get_device_name(), 'cc', torch.cuda.get_device_capability())"
} > "$OUT/env.txt" 2>&1

# The C++ CPU kernels are not needed on the GPU, but collecting the other tests builds them:
# build them now on the CPU cores, beside the GPU work; a failure only shows in its log.
step "C++ kernels: building in the background"
( timeout 200 "$PY" -c "from phased_lstm.ops import fused; print(fused.build_error() or 'C++ kernels built')" \
    > "$OUT/cpp_build.log" 2>&1 ) &
build=$!

step "(a) tests/test_triton.py on CUDA"
timeout 140 "$PY" -m pytest tests/test_triton.py -q -p no:cacheprovider -rfE \
    > "$OUT/test_triton.log" 2>&1
echo "exit $?" >> "$OUT/test_triton.log"

step "(c) sweep of the plans"
timeout 90 "$PY" scripts/gpu_check.py sweep > "$OUT/sweep.txt" 2>&1
echo "exit $?" >> "$OUT/sweep.txt"

step "(d) benchmark against cuDNN"
timeout 70 "$PY" -m phased_lstm_experiments.bench --device cuda --repeats 5 --warmup 2 \
    --configs paper-train,h512-train,paper-eval,h512-eval,lengths-train,stream-eval,batch-eval \
    > "$OUT/bench.txt" 2>&1
echo "exit $?" >> "$OUT/bench.txt"
timeout 40 "$PY" -m phased_lstm_experiments.bench --device cuda --tf32 --repeats 5 --warmup 2 \
    --configs paper-train,h512-train,paper-eval,h512-eval > "$OUT/bench_tf32.txt" 2>&1
echo "exit $?" >> "$OUT/bench_tf32.txt"

step "(b) other tests with a CUDA parametrisation"
wait "$build"
timeout 60 "$PY" -m pytest tests -q -p no:cacheprovider -rfE -k cuda \
    --ignore=tests/test_triton.py --continue-on-collection-errors > "$OUT/tests_cuda.log" 2>&1
echo "exit $?" >> "$OUT/tests_cuda.log"

step "summary"
"$PY" scripts/gpu_check.py summary "$OUT" | tee "$OUT/summary.txt"
echo "total $((SECONDS - began)) s; logs in $OUT"
