#!/usr/bin/env python
"""Compile every Triton kernel in kernels/ ahead of time for sm_90 (Hopper), without a GPU.

    python .ci/check_triton_aot.py [--kernels-dir DIR] [--arch 90]

On a CPU-only machine Triton can still lower a kernel to PTX and assemble a cubin when it is given
an explicit target: triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda",
90, 32)). The tests run kernels in the interpreter, which checks their numbers but not that they
compile; this script checks that they compile, into a fresh TRITON_CACHE_DIR so nothing is reused.

Convention: every module kernels/<name>.py (helpers starting with "_" included) that defines a
@triton.jit function at top level declares AOT_SPECS, a list of dicts, one per configuration the
library launches (dtype, constexpr block sizes, ...):

    AOT_SPECS = [
        {
            "fn": _ddpm_step_kernel,                 # required: the @triton.jit kernel
            "signature": {                           # required: Triton type of each runtime
                "x_ptr": "*fp32", "out_ptr": "*fp32",  #   parameter ("*fp32", "*bf16", "*fp16",
                "table_ptr": "*fp32", "n": "i32",      #   "*i64", "i32", "i64", "fp32", ...)
            },
            "constexprs": {"BLOCK": 1024},           # required if the kernel has tl.constexpr
                                                     #   parameters: their values
            "divisible_by_16": ["x_ptr", "out_ptr"],  # optional: arguments the launcher guarantees
                                                     #   16-divisible (pointers aligned), as the JIT
                                                     #   would specialise them
            "options": {"num_warps": 4, "num_stages": 2},  # optional: compile options
            "label": "fp32",                         # optional: shown in the report
        },
    ]

Constexpr parameters may be left out of "signature" (they are filled in as "constexpr").
@triton.jit device helpers called by kernels need no spec of their own (they compile as part of
the kernels); a module holding only such helpers declares AOT_SPECS = [] to say so.
TRITON_INTERPRET is switched off here: interpreted functions cannot be compiled.

Prints one row per spec (registers and spills from the cubin when cuobjdump is available) and
exits non-zero when a spec fails to compile, a spec is malformed, or a module with @triton.jit
functions lacks AOT_SPECS.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

# Before triton (and any kernel module) is imported: @triton.jit must produce JITFunctions.
os.environ.pop("TRITON_INTERPRET", None)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "_dp_fast_aot_kernels"  # the kernels dir is imported under this name (relative imports work)


def _import_kernels(kernels_dir: Path):
    """[(module name, module or exception)] for every kernels_dir/*.py, imported as one package."""
    init = kernels_dir / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(kernels_dir)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pkg
        spec.loader.exec_module(pkg)
    else:
        pkg = types.ModuleType(PACKAGE)
        pkg.__path__ = [str(kernels_dir)]
        sys.modules[PACKAGE] = pkg
    out = []
    for path in sorted(kernels_dir.glob("*.py")):
        name = path.stem
        if name == "__init__":
            out.append(("__init__", pkg))
            continue
        try:
            mspec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", path)
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[mspec.name] = mod
            mspec.loader.exec_module(mod)
            out.append((name, mod))
        except Exception as e:  # noqa: BLE001 - reported as a failure row
            out.append((name, e))
    return out


def _jit_functions(mod, jit_type):
    return {k: v for k, v in vars(mod).items() if isinstance(v, jit_type) and
            getattr(v, "__module__", mod.__name__) == mod.__name__}


def _full_signature(fn, spec):
    """Signature over all parameters in order, constexpr parameters marked "constexpr"."""
    sig = dict(spec["signature"])
    constexprs = spec.get("constexprs", {})
    unknown = (set(sig) | set(constexprs)) - set(fn.arg_names)
    if unknown:
        raise ValueError(f"names not among the kernel's parameters {fn.arg_names}: {sorted(unknown)}")
    full = {}
    for name in fn.arg_names:
        if name in constexprs:
            if sig.get(name, "constexpr") != "constexpr":
                raise ValueError(f"{name!r} is in constexprs but typed {sig[name]!r} in signature")
            full[name] = "constexpr"
        elif name in sig:
            full[name] = sig[name]
        else:
            raise ValueError(f"parameter {name!r} is in neither signature nor constexprs")
    return full


def _resource_usage(cubin: bytes, workdir: Path, cuobjdump):
    """(registers, spill bytes) from `cuobjdump -res-usage`, or (None, None)."""
    if not cuobjdump:
        return None, None
    path = workdir / "k.cubin"
    path.write_bytes(cubin)
    try:
        text = subprocess.run([cuobjdump, "-res-usage", str(path)], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    regs = re.search(r"REG:(\d+)", text)
    spill = re.search(r"STACK:(\d+)", text)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels-dir", type=Path, default=REPO / "kernels")
    ap.add_argument("--arch", type=int, default=90, help="compute capability as an int (90 = sm_90)")
    args = ap.parse_args(argv)

    kernels_dir = args.kernels_dir.resolve()
    if not kernels_dir.is_dir():
        print(f"check_triton_aot: no kernels directory at {kernels_dir}; nothing to compile")
        return 0

    cache = Path(tempfile.mkdtemp(prefix="dp_fast_triton_aot_"))
    os.environ["TRITON_CACHE_DIR"] = str(cache / "cache")
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction
    except ImportError as e:
        print(f"check_triton_aot: triton is not importable ({e}); install it: pip install 'triton>=3.6'")
        return 1
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    cuobjdump = str(cuobjdump) if cuobjdump.exists() else shutil.which("cuobjdump")
    target = GPUTarget("cuda", args.arch, 32)

    rows, failures = [], []
    sys.path.insert(0, str(REPO))
    try:
        for name, mod in _import_kernels(kernels_dir):
            if isinstance(mod, Exception):
                failures.append(f"{name}.py: import failed: {type(mod).__name__}: {mod}")
                rows.append((name, "-", "-", "IMPORT ERROR", "", "", "", "", ""))
                continue
            jits = _jit_functions(mod, JITFunction)
            specs = getattr(mod, "AOT_SPECS", None)
            if specs is None:
                if jits:
                    failures.append(f"{name}.py defines @triton.jit {sorted(jits)} but no AOT_SPECS")
                    rows.append((name, ",".join(sorted(jits)), "-", "NO AOT_SPECS", "", "", "", "", ""))
                continue
            covered = set()
            for i, spec in enumerate(specs):
                fn = spec.get("fn") if isinstance(spec, dict) else None
                kname = getattr(fn, "__name__", "?")
                label = spec.get("label", f"#{i}") if isinstance(spec, dict) else f"#{i}"
                t0 = time.perf_counter()
                try:
                    if not isinstance(fn, JITFunction):
                        raise TypeError(f"AOT_SPECS[{i}]['fn'] must be a @triton.jit function, got {fn!r}")
                    covered.add(kname)
                    signature = _full_signature(fn, spec)
                    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
                             for a in spec.get("divisible_by_16", [])}
                    src = ASTSource(fn=fn, signature=signature, constexprs=spec.get("constexprs", {}),
                                    attrs=attrs)
                    compiled = triton.compile(src, target=target, options=dict(spec.get("options", {})))
                    ptx, cubin = compiled.asm.get("ptx", ""), compiled.asm.get("cubin", b"")
                    if not ptx or not cubin:
                        raise RuntimeError(f"no {'PTX' if not ptx else 'cubin'} produced")
                    regs, stack = _resource_usage(cubin, cache, cuobjdump)
                    md = compiled.metadata
                    rows.append((name, kname, label, "ok", f"{len(ptx) // 1024} KiB", f"{len(cubin) // 1024} KiB",
                                 f"{md.num_warps}/{md.num_stages}", f"{regs if regs is not None else '?'}"
                                 f"/{stack if stack is not None else '?'}/{md.shared}",
                                 f"{time.perf_counter() - t0:.2f}s"))
                except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                    failures.append(f"{name}.py {kname} [{label}]: {type(e).__name__}: {e}\n"
                                    + "".join(traceback.format_exception(e)[-6:]))
                    rows.append((name, kname, label, "FAILED", "", "", "", "", f"{time.perf_counter() - t0:.2f}s"))
            for helper in sorted(set(jits) - covered):
                rows.append((name, helper, "-", "no spec (device helper?)", "", "", "", "", ""))
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    header = ("module", "kernel", "spec", "status", "ptx", "cubin", "warps/stages", "regs/stack/smem", "time")
    print(f"Triton {triton.__version__} ahead-of-time compile for sm_{args.arch} ({kernels_dir}):")
    if rows:
        widths = [max(len(str(r[c])) for r in rows + [header]) for c in range(len(header))]
        for r in [header, tuple("-" * w for w in widths)] + rows:
            print("  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    else:
        print("  (no kernel modules)")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for f in failures:
            print("  - " + f.rstrip().replace("\n", "\n    "))
        return 1
    n_ok = sum(r[3] == "ok" for r in rows)
    print(f"\nall {n_ok} spec(s) compiled to PTX and cubin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
