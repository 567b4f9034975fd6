#!/usr/bin/env bash
# The GPU run that fits a short slot on a lent GPU machine (one H200 or H100, ~15 minutes of device time in
# all including its start, at most 10 minutes a command, no internet, at most 8 files back from $OUT).
#
#   bash benchmarks/gpu_first.sh                       first slot: 8 minutes at most (--budget 480)
#   bash benchmarks/gpu_first.sh --rerun --fixtures DIR [--wheels DIR] [--compile] [--phases "..."]
#                                                      second call on the same warm machine (--budget 200)
#   bash benchmarks/gpu_first.sh --dry-run ...         or DP_FAST_GPU_DRYRUN=1: everything that needs no GPU
#
# Phases, in order; each one starts only if the time it needs is left of the budget, and runs under
# `timeout` with min(its bound, the time left) (seconds: needed / bound):
#   env              always: GPU, driver, clocks, nvcc, gcc, ninja, compute-sanitizer, python packages,
#                    torch, triton; CUDA_HOME from where nvcc is (an existing CUDA_HOME with bin/nvcc is kept)
#   build    60/240  always (rerun: only when dp_fast._C is missing or stale): pip install --no-build-isolation
#                    --no-deps --no-index -e . against the machine's own torch, then a load check
#   first slot (default phases):
#     tests          60/150  pytest tests -m gpu (pytest-xdist workers when installed, pytest-timeout per test);
#                            fails when a GPU test skips for any reason but "needs N GPUs"
#     bench_ops      20/60   } one pytest per file, GPU rows only (DP_FAST_BENCH_GPU_ONLY=1), rounds bounded by
#     bench_predict  45/120  } --benchmark-max-time, each file's JSON written as it finishes (also when its
#     bench_attention 30/75  } bound stops it: benchmarks/pytest_bounded.py)
#     bench_data     15/60   }
#     sanitizer      60/150  compute-sanitizer memcheck of the ops, last and only if time is left; skipped (not
#                            failed) where the sanitizer refuses the device
#   rerun (default phases):
#     fidelity       30/120  the recorded original checkpoint (dp_variant_ckpt) on the GPU, every backend
#     bench_train    60/180  training step; compile rows only with --compile (then 120/420)
#   --phases "LIST" replaces the default phases (any of: tests fidelity bench_ops bench_predict
#   bench_attention bench_data bench_train sanitizer); env and build always run, sanitizer always last.
#   20 s of the budget are kept for the tables and the file check, and 10 s for timeout's grace period.
#
# Files, flat in the output folder ($OUT, else --out, else build/gpu_first), at most 8:
#   gpu_first.log | gpu_rerun.log   this run: environment, phases, benchmark output, summary
#   build.log                       the extension build (pip -v)
#   tests.log                       GPU tests, fidelity check and sanitizer
#   bench_<file>.json               pytest-benchmark JSON, one per benchmark file
#   results_first.md | results_rerun.md   Markdown sections for benchmarks/RESULTS.md (write_results.py)
# If more than 8 would be there, the logs are folded into the run's log (benchmarks/gpu_tools.py collect).
#
# Options:
#   --out DIR        output folder (default: $OUT, else build/gpu_first[_dry])
#   --budget S       total seconds (default 480 first, 200 rerun)
#   --phases LIST    phases to run after env and build (space or comma separated)
#   --fixtures DIR   the recorded fixtures (DIR/dp_variant_ckpt/{variant.ckpt.zst,variant_expected.pt}),
#                    carried into the repo; default $DP_FAST_FIXTURES, else ../shared/fixtures
#   --wheels DIR     wheels to install first (pip --no-index --target, e.g. zstandard for the fidelity check)
#   --compile        bench_train with its torch.compile rows
#   --python PY      interpreter (default $PYTHON, else python3)
#   --dry-run        stand-ins for everything that needs a GPU; the rest runs for real
# Environment: DP_FAST_GIT_SHA (recorded when the copy has no .git), TORCH_CUDA_ARCH_LIST (default: the
# device's capability; setup.py always adds 9.0), MAX_JOBS, DP_FAST_GPU_TEST_WORKERS (xdist workers for the
# tests, default 4, 0 = none). For the dry-run test: DP_FAST_GPU_TIME_SCALE (multiplies every time
# constant), DP_FAST_GPU_DRYRUN_SLEEP="phase=seconds,...", DP_FAST_GPU_DRYRUN_SKIP / _FAIL (a stand-in
# GPU test skips / fails with that message).
# Exit status: 0 all ran and passed; 1 something failed; 2 bad arguments; 3 nothing failed but some phases
# did not run or were cut short (the summary prints the command that runs them).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 2
cd "$REPO" || exit 2
TOOLS=benchmarks/gpu_tools.py
SANITIZER_TEST=tests/gpu/test_ops_gpu.py::test_compute_sanitizer_memcheck
FIDELITY_TEST=tests/gpu/test_fidelity_gpu.py
KNOWN_PHASES="tests fidelity bench_ops bench_predict bench_attention bench_data bench_train sanitizer"
FIRST_PHASES="tests bench_ops bench_predict bench_attention bench_data sanitizer"
RERUN_PHASES="fidelity bench_train"

usage() { sed -n '2,/^set -uo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
bad_usage() { echo "gpu_first.sh: $*" >&2; echo "gpu_first.sh: see --help" >&2; exit 2; }
is_number() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
ncpus() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 4; }  # nproc obeys OMP_NUM_THREADS

# ------------------------------------------------------------------------------------------ arguments
MODE=first
case "${DP_FAST_GPU_DRYRUN:-0}" in
  1|true|yes|on) DRY=1 ;;
  0|""|false|no|off) DRY=0 ;;
  *) bad_usage "DP_FAST_GPU_DRYRUN must be 0 or 1, got '${DP_FAST_GPU_DRYRUN}'" ;;
esac
OUT_DIR=${OUT:-}
BUDGET_S=""
PHASES=""
FIXTURES=""
WHEELS=""
COMPILE=0
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  arg=$1
  if [[ $arg == --*=* ]]; then  # --opt=value
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg=$1
  fi
  case $arg in
    --dry-run) DRY=1 ;;
    --rerun) MODE=rerun ;;
    --compile) COMPILE=1 ;;
    --out|--budget|--phases|--fixtures|--wheels|--python)
      [ $# -ge 2 ] && [ -n "$2" ] || bad_usage "$arg needs a value"
      case $arg in
        --out) OUT_DIR=$2 ;;
        --budget) BUDGET_S=$2 ;;
        --phases) PHASES=$2 ;;
        --fixtures) FIXTURES=$2 ;;
        --wheels) WHEELS=$2 ;;
        --python) PY=$2 ;;
      esac
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) bad_usage "unknown argument '$arg'" ;;
  esac
  shift
done

SCALE=${DP_FAST_GPU_TIME_SCALE:-1}
is_number "$SCALE" || bad_usage "DP_FAST_GPU_TIME_SCALE must be a number, got '$SCALE'"
[ -n "$BUDGET_S" ] || BUDGET_S=$([ "$MODE" = rerun ] && echo 200 || echo 480)
is_number "$BUDGET_S" || bad_usage "--budget must be a number of seconds, got '$BUDGET_S'"
command -v timeout >/dev/null || bad_usage "needs coreutils' timeout"
command -v "$PY" >/dev/null || bad_usage "no Python interpreter '$PY' (--python)"

[ -n "$PHASES" ] || PHASES=$([ "$MODE" = rerun ] && echo "$RERUN_PHASES" || echo "$FIRST_PHASES")
PLAN=()
want_sanitizer=0
for p in ${PHASES//,/ }; do
  case " $KNOWN_PHASES env build " in *" $p "*) ;; *) bad_usage "unknown phase '$p' (known: $KNOWN_PHASES)" ;; esac
  case $p in env|build) continue ;; sanitizer) want_sanitizer=1; continue ;; esac
  case " ${PLAN[*]:-} " in *" $p "*) ;; *) PLAN+=("$p") ;; esac
done
[ "$want_sanitizer" = 1 ] && PLAN+=(sanitizer)

declare -A DRY_SLEEP=()
for kv in ${DP_FAST_GPU_DRYRUN_SLEEP:+${DP_FAST_GPU_DRYRUN_SLEEP//,/ }}; do
  k=${kv%%=*}; v=${kv#*=}
  is_number "$v" || bad_usage "DP_FAST_GPU_DRYRUN_SLEEP: '$kv' is not phase=seconds"
  DRY_SLEEP[$k]=$v
done
stub_sleep() { echo "${DRY_SLEEP[$1]:-0}"; }

[ -n "$FIXTURES" ] && { [ -d "$FIXTURES" ] || bad_usage "--fixtures $FIXTURES: no such folder"; FIXTURES=$(cd "$FIXTURES" && pwd); }
[ -n "$WHEELS" ] && { [ -d "$WHEELS" ] || bad_usage "--wheels $WHEELS: no such folder"; WHEELS=$(cd "$WHEELS" && pwd); }

if [ -z "$OUT_DIR" ]; then
  OUT_DIR=$REPO/build/gpu_first$([ "$DRY" = 1 ] && echo _dry)
fi
mkdir -p "$OUT_DIR" || bad_usage "cannot create $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu_$MODE.log
BUILD_LOG=$OUT_DIR/build.log
TESTS_LOG=$OUT_DIR/tests.log
MD=$OUT_DIR/results_$MODE.md
rm -f "$LOG" "$BUILD_LOG" "$TESTS_LOG" "$MD"
for p in "${PLAN[@]}"; do [[ $p == bench_* ]] && rm -f "$OUT_DIR/$p.json"; done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dp_fast_gpu.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
STATUS_TSV=$WORK/status.tsv
: > "$STATUS_TSV"

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
GIT_SHA=${DP_FAST_GIT_SHA:-$(git rev-parse --short=10 HEAD 2>/dev/null || echo 'unknown (no .git here; set DP_FAST_GIT_SHA)')}
unset TRITON_INTERPRET  # conftest sets it only where there is no GPU; compiled Triton is what is tested here

# ---------------------------------------------------------------------------------------------- time
to_ms() { awk -v x="$1" -v s="$SCALE" 'BEGIN { printf "%d", x * s * 1000 + 0.5 }'; }
secs() { awk -v m="$1" 'BEGIN { printf "%.1f", m / 1000 }'; }
if [[ $(date +%s%3N) =~ ^[0-9]+$ ]]; then
  now_ms() { date +%s%3N; }
else
  now_ms() { "$PY" -c 'import time; print(int(time.time() * 1000))'; }
fi
BUDGET_MS=$(to_ms "$BUDGET_S")
RESERVE_MS=$(to_ms 20)   # the tables, the file check and the summary
GRACE_MS=$(to_ms 10)     # timeout -k: after SIGTERM a phase gets this long to write its reports
GRACE=$(awk -v m="$GRACE_MS" 'BEGIN { printf "%.3f", m / 1000 }')
[ "$BUDGET_MS" -gt $(( RESERVE_MS + GRACE_MS )) ] || bad_usage "--budget $BUDGET_S leaves no time for any phase"
T0=$(now_ms)
DEADLINE=$(( T0 + BUDGET_MS ))
left_ms() { echo $(( DEADLINE - $(now_ms) )); }

limits() {  # limits PHASE -> "NEEDED BOUND" in seconds (before DP_FAST_GPU_TIME_SCALE)
  case $1 in
    build) echo "60 240" ;;
    tests) echo "60 150" ;;
    fidelity) echo "30 120" ;;
    bench_ops) echo "20 60" ;;
    bench_predict) echo "45 120" ;;
    bench_attention) echo "30 75" ;;
    bench_data) echo "15 60" ;;
    bench_train) if [ "$COMPILE" = 1 ]; then echo "120 420"; else echo "60 180"; fi ;;
    sanitizer) echo "60 150" ;;
    *) echo "5 60" ;;
  esac
}
bench_max_time() { case $1 in bench_predict|bench_train) echo 1.0 ;; *) echo 0.5 ;; esac; }

# ------------------------------------------------------------------------------------------- records
say() { printf '%s\n' "$*" | tee -a "$LOG"; }
ORDER=()
declare -A STATUS=() TOOK=() BOUND=()
NOT_RUN=()
FAILED=0
NO_GPU=0
record() {  # record PHASE STATUS SECONDS BOUND
  case " ${ORDER[*]:-} " in *" $1 "*) ;; *) ORDER+=("$1") ;; esac
  STATUS[$1]=$2; TOOK[$1]=$3; BOUND[$1]=$4
  local p
  : > "$STATUS_TSV"
  for p in "${ORDER[@]}"; do printf '%s\t%s\t%s\t%s\n' "$p" "${STATUS[$p]}" "${TOOK[$p]}" "${BOUND[$p]}" >> "$STATUS_TSV"; done
  case $2 in
    FAILED*) FAILED=1 ;;
    "timed out"*|"skipped: "*" s left"*|"not run"*) NOT_RUN+=("$1") ;;
  esac
}

plan() {  # plan PHASE: BOUND_MS for it, or record it as not run for lack of time and return 1
  local min bound left avail
  read -r min bound <<<"$(limits "$1")"
  min=$(to_ms "$min"); bound=$(to_ms "$bound")
  left=$(left_ms)
  avail=$(( left - RESERVE_MS - GRACE_MS ))
  if [ "$avail" -lt "$min" ]; then
    say ""
    say "==> $1: not started, $(secs "$avail") s available, it needs $(secs "$min") s"
    record "$1" "skipped: $(secs "$avail") s left" 0 "$(secs "$bound")"
    return 1
  fi
  BOUND_MS=$(( bound < avail ? bound : avail ))
  PHASE_START=$(now_ms)
  say ""
  say "==> $1 (bound $(secs "$BOUND_MS") s; $(secs "$left") s of the budget left)"
  return 0
}

took() { secs $(( $(now_ms) - PHASE_START )); }
remaining_ms() {  # remaining_ms [KEEP_MS]: what is left of this phase's bound, less KEEP_MS (at least 1 ms)
  local r=$(( BOUND_MS - ($(now_ms) - PHASE_START) - ${1:-0} ))
  [ "$r" -gt 0 ] && echo "$r" || echo 1
}

STUB=()
run_bounded() {  # run_bounded MS LOGFILE|- CMD...: CMD under timeout (a dry run runs the stand-in STUB); sets RC
  local ms=$1 log=$2 t
  shift 2
  t=$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')
  if [ "$DRY" = 1 ]; then
    local line
    line="[dry-run] would run (timeout $t s): $(printf '%q ' "$@")"
    printf '%s\n' "$line" >> "$LOG"
    [ "$log" = - ] || [ "$log" = "$LOG" ] || printf '%s\n' "$line" >> "$log"
    if [ ${#STUB[@]} -gt 0 ]; then set -- "$PY" -S "$TOOLS" stub "${STUB[@]}"; else set -- true; fi
  fi
  if [ "$log" = - ]; then
    timeout -k "$GRACE" "$t" "$@" < /dev/null 2>&1 | tee -a "$LOG"
    RC=${PIPESTATUS[0]}
  else
    timeout -k "$GRACE" "$t" "$@" < /dev/null >> "$log" 2>&1
    RC=$?
  fi
  STUB=()
  return 0
}

rc_text() {  # rc_text RC: how a bounded command ended
  case $1 in
    0) echo ok ;;
    124) echo "timed out after $(took) s" ;;
    137) echo "killed after $(took) s (did not stop within the grace period)" ;;
    *) echo "exit $1" ;;
  esac
}

JUNIT_STATUS=""
junit_check() {  # junit_check XML LABEL [--skips-ok]: prints the counts, sets JUNIT_STATUS; returns 0 / 1 / 3
  local out rc
  out=$(timeout 60 "$PY" -S "$TOOLS" junit "$1" --label "$2" "${@:3}" 2>&1)
  rc=$?
  printf '%s\n' "$out" | tee -a "$LOG" "$TESTS_LOG"
  JUNIT_STATUS=$(printf '%s\n' "$out" | sed -n 's/^STATUS: //p' | tail -n 1)
  [ -n "$JUNIT_STATUS" ] || JUNIT_STATUS=$(printf '%s\n' "$out" | head -n 1)
  return $rc
}

timeout_args() {  # pytest-timeout per test, when installed (it is on the GPU machines)
  if [ "${HAVE_PYTEST_TIMEOUT:-0}" = 1 ]; then echo "--timeout=$1 --timeout-method=signal"; fi
}

# --------------------------------------------------------------------------------------------- phases
find_cuda_home() {
  local nvcc="" here c
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    nvcc=$CUDA_HOME/bin/nvcc
  elif command -v nvcc >/dev/null; then
    nvcc=$(command -v nvcc)
  else
    for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc /opt/cuda/bin/nvcc; do
      [ -x "$c" ] && { nvcc=$c; break; }
    done
  fi
  if [ -z "$nvcc" ]; then
    say "nvcc: not found (CUDA_HOME=${CUDA_HOME:-unset}): the extension would build without CUDA kernels"
    return 1
  fi
  # nvcc may be a wrapper script: ask it where it lives
  here=$(timeout 10 "$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)
  [ -n "$here" ] && [ -d "$here" ] || here=$(dirname "$(readlink -f "$nvcc")")
  export CUDA_HOME=${here%/bin}
  case ":$PATH:" in *":$CUDA_HOME/bin:"*) ;; *) export PATH="$PATH:$CUDA_HOME/bin" ;; esac
  say "CUDA_HOME=$CUDA_HOME (nvcc: $nvcc)"
  say "nvcc: $(timeout 10 "$CUDA_HOME/bin/nvcc" --version 2>&1 | grep -i release | head -n 1)"
}

phase_env() {
  PHASE_START=$(now_ms)
  say "==> env ($MODE$([ "$DRY" = 1 ] && echo ', DRY RUN'); budget $(secs "$BUDGET_MS") s; output in $OUT_DIR)"
  say "date $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host $(uname -srm); $(ncpus) CPUs; $(free -g 2>/dev/null | awk '/^Mem:/ { print $2 " GiB memory" }')"
  say "git $GIT_SHA"
  if command -v nvidia-smi >/dev/null; then
    timeout 10 nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total,persistence_mode,compute_mode \
      --format=csv 2>&1 | tee -a "$LOG"
    timeout 10 nvidia-smi --query-gpu=pstate,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,temperature.gpu \
      --format=csv 2>&1 | tee -a "$LOG"
    timeout 10 nvidia-smi -q -d CLOCK,PERFORMANCE >> "$LOG" 2>&1
  else
    say "nvidia-smi: not found"
  fi
  find_cuda_home
  say "gcc: $(timeout 10 gcc --version 2>&1 | head -n 1)"
  say "ninja: $(timeout 10 ninja --version 2>&1 | head -n 1)"
  if command -v compute-sanitizer >/dev/null; then
    say "compute-sanitizer: $(timeout 10 compute-sanitizer --version 2>&1 | grep -i version | head -n 1)"
  else
    say "compute-sanitizer: not on PATH"
  fi
  if [ -n "$WHEELS" ] && ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "wheels: no *.whl in $WHEELS: nothing to install"
  elif [ -n "$WHEELS" ]; then
    STUB=(other)
    run_bounded "$(to_ms 60)" "$LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$WHEELS"/*.whl
    if [ "$RC" = 0 ]; then
      export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
      say "wheels from $WHEELS installed into $WORK/site (PYTHONPATH)"
    else
      say "wheels from $WHEELS: pip install failed ($(rc_text "$RC")); see the log"
    fi
  fi
  local dry=()
  [ "$DRY" = 1 ] && dry=(--dry)
  timeout 60 "$PY" "$TOOLS" envinfo "${dry[@]}" --facts "$WORK/facts.sh" < /dev/null 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  # shellcheck disable=SC1091
  [ -f "$WORK/facts.sh" ] && . "$WORK/facts.sh"
  if [ "$rc" != 0 ]; then
    record env "FAILED: no usable GPU ($(rc_text "$rc"))" "$(took)" -
    return 1
  fi
  record env ok "$(took)" -
}

phase_build() {
  plan build || return 1
  if [ "$MODE" = rerun ] && [ "$DRY" = 0 ] && timeout 60 "$PY" "$TOOLS" build-check >> "$LOG" 2>&1; then
    say "dp_fast._C is built for this torch with CUDA kernels: not rebuilt"
    record build "ok (up to date, not rebuilt)" "$(took)" "$(secs "$BOUND_MS")"
    return 0
  fi
  local check_ms
  check_ms=$(to_ms 30)  # kept for the load check after the build
  STUB=(build --sleep "$(stub_sleep build)")
  run_bounded "$(remaining_ms "$check_ms")" "$BUILD_LOG" env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${CUDA_CAP:-9.0}}" \
    DP_FAST_CUDA=1 DP_FAST_STRICT_BUILD=0 MAX_JOBS="${MAX_JOBS:-$(ncpus)}" \
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e .
  local build_rc=$RC
  if [ "$build_rc" != 0 ] || grep -q "building dp_fast._C failed" "$BUILD_LOG" 2>/dev/null; then
    say "build: $(rc_text "$build_rc"); the compiler's complaints (all of it in build.log):"
    grep -E -A3 "error|FAILED:|dp-fast:" "$BUILD_LOG" 2>/dev/null | cut -c1-300 | head -n 40 | tee -a "$LOG"
  fi
  STUB=(other)
  run_bounded "$(remaining_ms)" - "$PY" "$TOOLS" build-check
  if [ "$build_rc" = 0 ] && [ "$RC" = 0 ]; then
    record build ok "$(took)" "$(secs "$BOUND_MS")"
  elif [ "$build_rc" = 124 ] || [ "$build_rc" = 137 ]; then
    record build "FAILED: $(rc_text "$build_rc")" "$(took)" "$(secs "$BOUND_MS")"
  else
    record build "FAILED: pip $(rc_text "$build_rc"), load check $(rc_text "$RC") (build.log)" "$(took)" "$(secs "$BOUND_MS")"
  fi
}

phase_tests() {
  plan tests || return
  local xml=$WORK/tests.xml workers=${DP_FAST_GPU_TEST_WORKERS:-4} xdist=()
  if [ "${HAVE_XDIST:-0}" = 1 ] && [ "$workers" != 0 ]; then xdist=(-n "$workers" --dist load); fi
  STUB=(tests --junit "$xml" --sleep "$(stub_sleep tests)" --skip "needs 2 GPUs")
  [ -n "${DP_FAST_GPU_DRYRUN_SKIP:-}" ] && STUB+=(--skip "$DP_FAST_GPU_DRYRUN_SKIP")
  [ -n "${DP_FAST_GPU_DRYRUN_FAIL:-}" ] && STUB+=(--fail "$DP_FAST_GPU_DRYRUN_FAIL")
  # shellcheck disable=SC2046
  run_bounded "$BOUND_MS" "$TESTS_LOG" "$PY" -m pytest tests -m gpu -q -rfEs -p no:cacheprovider \
    -p benchmarks.pytest_bounded --continue-on-collection-errors --deselect "$SANITIZER_TEST" \
    --ignore "$FIDELITY_TEST" --junitxml "$xml" "${xdist[@]}" $(timeout_args 120)
  local rc=$RC
  say "   pytest: $(rc_text "$rc"); $(grep -E '(passed|failed|error|skipped)' "$TESTS_LOG" | tail -n 1)"
  junit_check "$xml" "gpu tests"
  case $? in
    0) if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record tests "timed out: $JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")"
       else record tests "ok: $JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")"; fi ;;
    *) if [ "$rc" = 124 ] || [ "$rc" = 137 ] && [ ! -s "$xml" ]; then
         record tests "timed out after $(took) s, no counts" "$(took)" "$(secs "$BOUND_MS")"
       else
         record tests "FAILED: $JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")"
       fi ;;
  esac
}

phase_bench() {
  local p=$1
  plan "$p" || return
  local json=$OUT_DIR/$p.json envs=(DP_FAST_BENCH_GPU_ONLY=1) per_test=120 rows
  if [ "$p" = bench_train ] && [ "$COMPILE" = 1 ]; then envs+=(DP_FAST_BENCH_COMPILE=1); per_test=400; fi
  STUB=(bench --json "$json" --sleep "$(stub_sleep "$p")")
  # shellcheck disable=SC2046
  run_bounded "$BOUND_MS" "$LOG" env "${envs[@]}" "$PY" -m pytest "benchmarks/$p.py" --benchmark-only \
    --benchmark-max-time="$(bench_max_time "$p")" --benchmark-json="$json" -q -p no:cacheprovider \
    -p benchmarks.pytest_bounded $(timeout_args "$per_test")
  rows=$(grep -c '"fullname"' "$json" 2>/dev/null) || rows=0
  say "   $(rc_text "$RC"); $rows row(s) in $(basename "$json")"
  case $RC in
    0) record "$p" "ok: $rows rows" "$(took)" "$(secs "$BOUND_MS")" ;;
    124|137) record "$p" "timed out after $(took) s: $rows rows saved" "$(took)" "$(secs "$BOUND_MS")" ;;
    *) record "$p" "FAILED: pytest exit $RC, $rows rows saved (see $(basename "$LOG"))" "$(took)" "$(secs "$BOUND_MS")" ;;
  esac
  write_table
}

phase_sanitizer() {
  plan sanitizer || return
  local xml=$WORK/sanitizer.xml inner
  inner=$(( BOUND_MS / 1000 - 20 ))
  [ "$inner" -ge 10 ] || inner=10
  STUB=(sanitizer --junit "$xml" --passed 0 --sleep "$(stub_sleep sanitizer)"
        --skip "compute-sanitizer refuses this device (dry-run stand-in)")
  run_bounded "$BOUND_MS" "$TESTS_LOG" env DP_FAST_SANITIZER_TIMEOUT="$inner" "$PY" -m pytest "$SANITIZER_TEST" \
    -m gpu -q -rs -p no:cacheprovider -p benchmarks.pytest_bounded --junitxml "$xml"
  local rc=$RC
  junit_check "$xml" "compute-sanitizer" --skips-ok
  case $? in
    0) record sanitizer "ok: $JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")" ;;
    3) record sanitizer "$JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")" ;;
    *) if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record sanitizer "timed out after $(took) s" "$(took)" "$(secs "$BOUND_MS")"
       else record sanitizer "FAILED: $JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")"; fi ;;
  esac
}

phase_fidelity() {
  local fx=${FIXTURES:-${DP_FAST_FIXTURES:-}}
  [ -z "$fx" ] && [ -d "$REPO/../shared/fixtures" ] && fx=$(cd "$REPO/../shared/fixtures" && pwd)
  local d=$fx/dp_variant_ckpt
  if [ -z "$fx" ] || [ ! -f "$d/variant_expected.pt" ] || { [ ! -f "$d/variant.ckpt.zst" ] && [ ! -f "$d/variant.ckpt" ]; }; then
    say ""
    say "==> fidelity: not run: no fixtures (--fixtures DIR holding dp_variant_ckpt/variant.ckpt.zst and"
    say "    dp_variant_ckpt/variant_expected.pt, carried into the repository: README, 'GPU runs')"
    record fidelity "not run: no fixtures (--fixtures DIR)" 0 -
    return
  fi
  plan fidelity || return
  local xml=$WORK/fidelity.xml envs=(DP_FAST_FIXTURES="$fx")
  if [ -f "$d/variant.ckpt" ]; then
    envs+=(DP_FAST_VARIANT_CKPT="$d/variant.ckpt")
  elif [ "${HAVE_ZSTANDARD:-0}" != 1 ]; then
    if command -v zstd >/dev/null; then
      STUB=(other)
      run_bounded "$(remaining_ms "$(to_ms 20)")" "$LOG" zstd -q -d --long=28 -f -o "$WORK/variant.ckpt" "$d/variant.ckpt.zst"
      [ "$RC" = 0 ] && envs+=(DP_FAST_VARIANT_CKPT="$WORK/variant.ckpt")
    else
      say "fidelity: neither the zstandard module nor the zstd program is here: carry a zstandard wheel"
      say "    (--wheels DIR; README, 'GPU runs'); the check will skip and so fail"
    fi
  fi
  STUB=(fidelity --junit "$xml" --sleep "$(stub_sleep fidelity)")
  # shellcheck disable=SC2046
  run_bounded "$(remaining_ms)" "$TESTS_LOG" env "${envs[@]}" "$PY" -m pytest "$FIDELITY_TEST" -m gpu -q -rA \
    -p no:cacheprovider -p benchmarks.pytest_bounded --junitxml "$xml" $(timeout_args 100)
  local rc=$RC
  grep -E "^fidelity " "$TESTS_LOG" 2>/dev/null | tail -n 6 | sed 's/^/   /' | tee -a "$LOG"
  junit_check "$xml" "fidelity"
  case $? in
    0) record fidelity "ok: $JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")" ;;
    *) if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record fidelity "timed out after $(took) s" "$(took)" "$(secs "$BOUND_MS")"
       else record fidelity "FAILED: $JUNIT_STATUS" "$(took)" "$(secs "$BOUND_MS")"; fi ;;
  esac
}

# ------------------------------------------------------------------------------------------- results
rerun_hint() {
  local phases=() p fx wh
  if [ "$MODE" = first ]; then phases=($RERUN_PHASES); fi
  for p in "${NOT_RUN[@]:-}"; do
    case $p in ""|env|build) continue ;; esac  # env and build run anyway
    case " ${phases[*]:-} " in *" $p "*) ;; *) phases+=("$p") ;; esac
  done
  [ ${#phases[@]} -gt 0 ] && [ "$NO_GPU" = 0 ] || return 0
  # the folders README ("GPU runs") says to carry, unless this run was given others
  fx=${FIXTURES:-$REPO/.gpu_carry/fixtures}
  wh=${WHEELS:-$REPO/.gpu_carry/whl}
  printf 'bash benchmarks/gpu_first.sh --rerun --fixtures %s --wheels %s --phases "%s"' "${fx#"$REPO"/}" \
    "${wh#"$REPO"/}" "${phases[*]}"
}

write_table() {
  local jsons=() p mode=$MODE
  [ "$DRY" = 1 ] && mode="$MODE, dry-run"
  for p in "${PLAN[@]}"; do [[ $p == bench_* ]] && [ -s "$OUT_DIR/$p.json" ] && jsons+=("$OUT_DIR/$p.json"); done
  timeout 60 "$PY" -S "$TOOLS" table --out "$MD" --status "$STATUS_TSV" --mode "$mode" --hint "$(rerun_hint)" \
    --run-info "Device ${GPU_NAME:-?}, git $GIT_SHA, budget $(secs "$BUDGET_MS") s, $(secs $(( $(now_ms) - T0 ))) s so far." \
    "${jsons[@]}" >> "$LOG" 2>&1 || say "table: writing $(basename "$MD") failed (see the log)"
}

finish() {
  say ""
  say "==> results"
  if command -v nvidia-smi >/dev/null; then
    say "clocks at the end: $(timeout 10 nvidia-smi --query-gpu=pstate,clocks.sm,clocks.mem,power.draw,temperature.gpu \
      --format=csv,noheader 2>&1 | head -n 1)"
  fi
  write_table
  local hint status p
  hint=$(rerun_hint)
  status=0
  [ "$FAILED" = 1 ] && status=1
  for p in "${NOT_RUN[@]:-}"; do [ -n "$p" ] && [ "$p" != sanitizer ] && [ "$status" = 0 ] && status=3; done
  {
    echo ""
    echo "==> summary: $MODE$([ "$DRY" = 1 ] && echo ' (DRY RUN)'), $(secs $(( $(now_ms) - T0 ))) s of a $(secs "$BUDGET_MS") s budget"
    for p in "${ORDER[@]}"; do printf '  %-16s %-70s %7s s\n' "$p" "${STATUS[$p]:0:70}" "${TOOK[$p]}"; done
    if [ -n "$hint" ]; then
      echo "  not run or cut short: ${NOT_RUN[*]:-none}"
      echo "  next, on the warm machine: $hint"
    fi
  } | tee -a "$LOG"
  timeout 60 "$PY" -S "$TOOLS" collect "$OUT_DIR" --main "$(basename "$LOG")" 2>&1 | tee "$WORK/collect.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  cat "$WORK/collect.txt" >> "$LOG"
  echo "exit status $status (0 all passed, 1 a failure, 3 incomplete)" | tee -a "$LOG"
  exit "$status"
}

preflight() {  # the files and tests this script names exist (a rename elsewhere fails here, not on the GPU)
  local missing=() p
  for p in "$TOOLS" benchmarks/pytest_bounded.py benchmarks/write_results.py setup.py "${SANITIZER_TEST%%::*}" \
           "$FIDELITY_TEST"; do
    [ -f "$p" ] || missing+=("$p")
  done
  for p in "${PLAN[@]}"; do [[ $p == bench_* ]] && { [ -f "benchmarks/$p.py" ] || missing+=("benchmarks/$p.py"); }; done
  grep -q "^def ${SANITIZER_TEST##*::}(" "${SANITIZER_TEST%%::*}" 2>/dev/null || missing+=("$SANITIZER_TEST")
  if [ ${#missing[@]} -gt 0 ]; then
    say "gpu_first.sh: missing, so this run would fail: ${missing[*]}"
    exit 1
  fi
}

# ------------------------------------------------------------------------------------------------ run
preflight
if ! phase_env && [ "$DRY" = 0 ]; then
  say "no usable GPU: stopping before the build"
  NO_GPU=1
  for p in build "${PLAN[@]}"; do record "$p" "not run: no GPU" 0 -; done
  finish
fi
phase_build
for p in "${PLAN[@]}"; do
  case $p in
    tests) phase_tests ;;
    fidelity) phase_fidelity ;;
    sanitizer) phase_sanitizer ;;
    bench_*) phase_bench "$p" ;;
  esac
done
finish
