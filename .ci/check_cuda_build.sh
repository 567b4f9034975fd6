#!/usr/bin/env bash
# Compile-only check of the CUDA extension for sm_90 (Hopper), on a machine without a GPU.
#
#   bash .ci/check_cuda_build.sh
#
# Builds dp_fast._C from csrc/*.cpp + csrc/*.cu with setup.py (DP_FAST_STRICT_BUILD=1, so any
# compile error fails) against the CUDA 13 build of torch in a separate venv, into a temporary
# directory (the CPU build in dp_fast/ is left alone). Then checks that every csrc/*.cu produced
# sm_90 machine code and prints registers / stack per kernel.
#
# Environment: DP_FAST_CUDA_VENV (default .venv-cuda, ~5.5 GB, created on first use and reused),
# DP_FAST_CUDA_TORCH (default torch==2.14.1), CUDA_HOME (default /usr/local/cuda), PYTHON.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
VENV=${DP_FAST_CUDA_VENV:-$REPO/.venv-cuda}
TORCH_SPEC=${DP_FAST_CUDA_TORCH:-torch==2.14.1}
PYTHON=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

shopt -s nullglob
CU_SOURCES=(csrc/*.cu)
if [ ${#CU_SOURCES[@]} -eq 0 ]; then
  echo "check_cuda_build: no csrc/*.cu, nothing to check"
  exit 0
fi
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "check_cuda_build: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi

quiet_pip() {  # pip's warnings about index directories that lack a package are noise here
  "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "check_cuda_build: creating $VENV with $TORCH_SPEC (CUDA build, ~5.5 GB)"
  "$PYTHON" -m venv "$VENV"
  printf '*\n' > "$VENV/.gitignore"  # keeps the venv out of git without touching .gitignore
fi
quiet_pip "$TORCH_SPEC" "setuptools>=70.1" ninja numpy
"$VENV/bin/python" - <<'EOF'
import sys, torch
if not torch.version.cuda:
    sys.exit(f"check_cuda_build: {torch.__version__} in this venv is not a CUDA build of torch")
print(f"check_cuda_build: torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The toolkit here is compiler-only; CUDA library headers (cublas, cusparse, ... needed by
# ATen/cuda/CUDAContext.h) come with the torch wheels. CPATH puts them after every -I directory,
# so they only supply what the toolkit lacks.
for inc in "$SITE"/nvidia/*/include; do CPATH="${CPATH:+$CPATH:}$inc"; done
export CPATH="${CPATH:-}"
export TORCH_CUDA_ARCH_LIST=9.0 DP_FAST_CUDA=1 DP_FAST_STRICT_BUILD=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

WORK=$(mktemp -d /tmp/dp_fast_cuda_build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "check_cuda_build: compiling ${CU_SOURCES[*]} (+ csrc/*.cpp) for sm_90 with $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
start=$(date +%s)
if ! "$VENV/bin/python" setup.py -q build_ext --build-temp "$WORK/temp" --build-lib "$WORK/lib" > "$WORK/build.log" 2>&1; then
  # the compiler's messages, not the Python traceback that follows them
  grep -v "is ignored: it is neither" "$WORK/build.log" | grep -E -A3 "error|FAILED:" | cut -c1-400 | head -n 80
  echo "check_cuda_build: FAILED to build the CUDA extension" >&2
  exit 1
fi
SO=$(ls "$WORK"/lib/dp_fast/_C*.so)
echo "check_cuda_build: built $(basename "$SO") ($(du -h "$SO" | cut -f1)) in $(( $(date +%s) - start )) s"

CUOBJDUMP="$SITE/triton/backends/nvidia/bin/cuobjdump"
[ -x "$CUOBJDUMP" ] || CUOBJDUMP=$(command -v cuobjdump || true)
if [ -z "$CUOBJDUMP" ]; then
  readelf -SW "$SO" | grep -q '\.nv_fatbin' || { echo "check_cuda_build: no device code in $SO" >&2; exit 1; }
  echo "check_cuda_build: device code present (no cuobjdump here to list it per kernel)"
  exit 0
fi
"$CUOBJDUMP" -res-usage "$SO" > "$WORK/res.txt"
"$VENV/bin/python" - "$WORK/res.txt" "${CU_SOURCES[@]}" <<'EOF'
"""Per-kernel registers / stack from `cuobjdump -res-usage`; fail when a .cu has no sm_90 code."""
import os, re, subprocess, sys

text = open(sys.argv[1]).read()
sources = sys.argv[2:]
rows, archs_by_file = [], {}
for block in text.split("Fatbin ")[1:]:
    arch = re.search(r"arch = (\S+)", block)
    ident = re.search(r"identifier = (\S+)", block)
    if not (arch and ident):
        continue
    name = os.path.basename(ident.group(1))
    archs_by_file.setdefault(name, set()).add(arch.group(1))
    for fn, usage in re.findall(r"Function (\S+):\n\s+(.*)", block):
        fields = dict(kv.split(":", 1) for kv in usage.split() if ":" in kv)
        try:
            fn = subprocess.run(["c++filt", fn], capture_output=True, text=True).stdout.strip() or fn
        except OSError:
            pass
        fn = fn.replace("(anonymous namespace)::", "").removeprefix("void ")
        fn = re.sub(r"\([^()]*\)$", "", fn)  # the parameter list
        rows.append((name, arch.group(1), fn, fields.get("REG", "?"), fields.get("STACK", "?"),
                     fields.get("SHARED", "?")))
header = ("source", "arch", "kernel", "regs", "stack", "smem")
widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
for r in [header] + sorted(rows):
    print("  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
missing = [s for s in sources if "sm_90" not in archs_by_file.get(os.path.basename(s), set())]
if missing:
    sys.exit(f"check_cuda_build: no sm_90 code from {missing} (found {archs_by_file})")
print(f"check_cuda_build: OK, {len(rows)} kernel(s) from {len(sources)} .cu file(s) compiled for sm_90")
EOF
