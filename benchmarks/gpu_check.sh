#!/usr/bin/env bash
# Everything a GPU session runs, in one go: build the extension with CUDA, run the GPU tests, run the
# benchmarks and write their tables into benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default OUT_DIR: $OUT, else build/gpu_check)
#
# Logs, the benchmark JSON and a copy of RESULTS.md land in OUT_DIR. Expects a CUDA build of torch with
# triton and a CUDA toolkit (nvcc) on the machine (ENVIRONMENT.md: GPU machines have Python 3.12, torch
# 2.11 + CUDA 13, triton 3.6, no internet). Python packages the tests need and the machine lacks are
# installed from wheels in .whl/ (pip download them elsewhere: pytest pytest-benchmark safetensors h5py
# tqdm nvtx ...).
#
# Environment:
#   PYTHON                 interpreter (default python3)
#   CUDA_HOME              toolkit (default /usr/local/cuda)
#   GPU_CHECK_TESTS        pytest args of the GPU test phase (default: tests -m gpu)
#   GPU_CHECK_BENCH        benchmark files / -k filters (default: benchmarks)
#   GPU_CHECK_BENCH_ARGS   extra pytest-benchmark args (default: --benchmark-max-time=0.5)
#   GPU_CHECK_SKIP_BUILD=1 use the extension already built
# Every phase runs even if an earlier one failed (except that nothing runs without a GPU); the exit
# status is non-zero if any failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-$REPO/build/gpu_check}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"  # nvcc, compute-sanitizer
unset TRITON_INTERPRET

T0=$(date +%s)
SUMMARY=()
FAILED=0
phase() {  # phase NAME COMMAND...: run, time and record one phase
  local name=$1 start rc
  shift
  echo
  echo "==> $name"
  start=$(date +%s)
  "$@"
  rc=$?
  SUMMARY+=("$(printf '%-22s %-6s %5d s' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAILED)" $(( $(date +%s) - start )))")
  [ $rc -eq 0 ] || FAILED=1
  return $rc
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 || true
  "$PY" - <<'EOF'
import sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError as e:
    print(f"triton not importable: {e}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch.cuda.is_available() is False: nothing to check here")
print(f"device: {torch.cuda.get_device_name()}")
EOF
}

dependencies() {
  local missing
  missing=$("$PY" - <<'EOF2'
import importlib.util
# ninja is optional (it only parallelises the build); the rest is needed by the build, tests or benchmarks
mods = {"pytest": "pytest", "pytest_benchmark": "pytest-benchmark", "numpy": "numpy", "safetensors": "safetensors",
        "h5py": "h5py", "tqdm": "tqdm", "nvtx": "nvtx", "setuptools": "setuptools", "ninja": "ninja"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
EOF2
)
  [ -z "$missing" ] && { echo "all Python dependencies present"; return 0; }
  echo "missing: $missing"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --find-links .whl $missing && return 0
  fi
  local required=${missing//ninja/}
  if [ -n "${required// /}" ]; then
    echo "gpu_check: cannot install $required: put their wheels in .whl/ (the GPU machine has no internet)" >&2
    return 1
  fi
  echo "ninja missing: the build runs without it (slower)"
}

build() {
  [ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ] && { echo "GPU_CHECK_SKIP_BUILD=1: not rebuilding"; return 0; }
  # sm_90 is always built (setup.py); the arch list adds nothing for Hopper but keeps torch from probing.
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} DP_FAST_CUDA=1 DP_FAST_STRICT_BUILD=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . > "$OUT_DIR/build.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    grep -E -A3 "error|FAILED:" "$OUT_DIR/build.log" | cut -c1-400 | head -n 60
    echo "gpu_check: the CUDA build failed; full log in $OUT_DIR/build.log" >&2
    return $rc
  fi
  "$PY" - <<'EOF'
import importlib, sys
from dp_fast import _ext
print("dp_fast._C:", _ext.build_info() or _ext.unavailable_reason())
for name, info in importlib.import_module("dp_fast.backends").backends().items():
    print(f"  {name:10s} {'available' if info['available'] else 'UNAVAILABLE':12s} {info['reason']}")
if not _ext.has_cuda_kernels():
    sys.exit("gpu_check: the extension has no CUDA kernels")
EOF
}

gpu_tests() {
  # shellcheck disable=SC2086
  "$PY" -m pytest -q ${GPU_CHECK_TESTS:-tests -m gpu} -p no:cacheprovider 2>&1 | tee "$OUT_DIR/tests_gpu.log"
}

op_tests() {  # the op and backend tests on this machine (CPU tensors via the C++ ops; Triton is not interpreted)
  "$PY" -m pytest -q tests/ops tests/test_backends.py -p no:cacheprovider 2>&1 | tee "$OUT_DIR/tests_ops.log"
}

aot_check() {  # Triton kernels compile for this machine's Triton too
  "$PY" .ci/check_triton_aot.py 2>&1 | tee "$OUT_DIR/triton_aot.log"
}

benchmarks() {
  # shellcheck disable=SC2086
  "$PY" -m pytest ${GPU_CHECK_BENCH:-benchmarks} --benchmark-only ${GPU_CHECK_BENCH_ARGS:---benchmark-max-time=0.5} \
    --benchmark-json="$OUT_DIR/bench.json" -p no:cacheprovider 2>&1 | tee "$OUT_DIR/bench.log"
}

results() {
  [ -s "$OUT_DIR/bench.json" ] || { echo "gpu_check: no benchmark JSON" >&2; return 1; }
  "$PY" benchmarks/write_results.py "$OUT_DIR/bench.json" && cp benchmarks/RESULTS.md "$OUT_DIR/RESULTS.md"
}

phase environment environment || { echo "gpu_check: no usable GPU, stopping" >&2; exit 1; }
phase dependencies dependencies
phase build build
phase "gpu tests" gpu_tests
phase "op tests" op_tests
phase "triton aot" aot_check
phase benchmarks benchmarks
phase results results

echo
echo "==> summary (total $(( $(date +%s) - T0 )) s; outputs in $OUT_DIR)"
printf '  %s\n' "${SUMMARY[@]}"
exit $FAILED
