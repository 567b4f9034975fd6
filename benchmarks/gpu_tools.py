#!/usr/bin/env python3
"""The Python half of benchmarks/gpu_first.sh: what the script needs that is easier in Python than in bash.

    gpu_tools.py envinfo [--dry] [--facts FILE]     versions, device, clocks (torch); KEY=value facts for bash
    gpu_tools.py build-check                        the extension loads, has CUDA kernels, matches this torch
    gpu_tools.py junit XML [--allow RE] [--label L] [--skips-ok]
                                                    counts of a pytest --junitxml; fails on a disallowed skip
    gpu_tools.py table --out MD [--status TSV] [--mode M] [--hint TEXT] JSON...
                                                    Markdown for benchmarks/RESULTS.md (benchmarks/write_results.py)
    gpu_tools.py collect DIR --main LOG [--max-files 8]
                                                    keep DIR within what comes back from the GPU machine
    gpu_tools.py stub KIND ...                      dry-run stand-ins for the GPU phases (no torch, no GPU)

Only `envinfo` and `build-check` need site-packages (torch, with `envinfo` only without --dry); the other
commands use the standard library alone, and the script runs them with `python -S` (no site start-up), so
the dry run of the script (tests/test_gpu_first.py) takes seconds on a CPU machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import signal
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
# what a skip of a GPU test may say and still count as fine: the machine has too few GPUs
ALLOWED_SKIP = r"\b(?:needs?|requires?) (?:at least )?\d+ (?:CUDA )?(?:GPUs?|devices)\b"
MiB = 1 << 20
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


# ------------------------------------------------------------------------------------------- envinfo
def _version(dist: str) -> str:
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:  # noqa: BLE001 - absent or broken metadata
        return "absent"


def cmd_envinfo(args) -> int:
    import platform

    print(f"python {platform.python_version()} ({sys.executable})")
    dists = ["torch", "triton", "numpy", "pytest", "pytest-benchmark", "pytest-timeout", "setuptools", "pip",
             "ninja", "safetensors", "h5py", "tqdm", "nvtx", "zstandard"]
    print("packages: " + ", ".join(f"{d} {_version(d)}" for d in dists))
    facts = {
        "HAVE_PYTEST_TIMEOUT": int(importlib.util.find_spec("pytest_timeout") is not None),
        "HAVE_ZSTANDARD": int(importlib.util.find_spec("zstandard") is not None),
        "HAVE_XDIST": int(importlib.util.find_spec("xdist") is not None),
        "CUDA_CAP": "9.0",
        "GPU_NAME": "none",
    }
    rc = 0
    if args.dry:
        # the dry run plans the commands of the GPU machine, whose image has both plugins (KINDS.md)
        facts.update(HAVE_PYTEST_TIMEOUT=1, HAVE_XDIST=1, GPU_NAME="dry-run")
        print("dry run: torch not imported, no device queried; pytest-timeout and pytest-xdist taken as installed, "
              "as on the GPU machines")
    else:
        import torch

        print(f"torch {torch.__version__}, built with CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
              f"{torch.get_num_threads()} threads")
        try:
            import triton
            print(f"triton {triton.__version__}")
        except Exception as e:  # noqa: BLE001
            print(f"triton does not import: {type(e).__name__}: {e}")
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            for i in range(n):
                p = torch.cuda.get_device_properties(i)
                print(f"cuda:{i} {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                      f"{p.total_memory / 2**30:.1f} GiB")
            p = torch.cuda.get_device_properties(0)
            facts["CUDA_CAP"] = f"{p.major}.{p.minor}"
            facts["GPU_NAME"] = p.name
        else:
            print("torch.cuda.is_available() is False: no usable GPU here")
            rc = 1
    if args.facts:
        Path(args.facts).write_text("".join(f"{k}={shlex.quote(str(v))}\n" for k, v in facts.items()))
    return rc


# --------------------------------------------------------------------------------------- build-check
def cmd_build_check(args) -> int:
    import torch

    from dp_fast import _ext

    info = _ext.build_info()
    if not info:
        print(f"build-check: dp_fast._C is not available: {_ext.unavailable_reason()}")
        return 1
    print("dp_fast._C: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    problems = []
    if info.get("cuda") != "1":
        problems.append("built without CUDA kernels")
    if info.get("torch") and info["torch"] != torch.__version__:
        problems.append(f"built against torch {info['torch']}, this is {torch.__version__}")
    try:
        import dp_fast.kernels  # noqa: F401  (installed as dp_fast.kernels by the editable install)
    except Exception as e:  # noqa: BLE001
        problems.append(f"dp_fast.kernels does not import ({type(e).__name__}: {e}): the editable install is missing")
    import dp_fast

    try:
        for name, b in dp_fast.available_backends().items():
            print(f"  backend {name:10s} {'available' if b.get('available') else 'UNAVAILABLE':12s} "
                  f"{b.get('reason', '')}")
    except Exception as e:  # noqa: BLE001 - a listing is a report, not the check
        print(f"  (backend listing failed: {type(e).__name__}: {e})")
    for p in problems:
        print(f"build-check: {p}")
    return 1 if problems else 0


# --------------------------------------------------------------------------------------------- junit
def junit_counts(path: Path) -> Dict[str, list]:
    """{"passed": [...], "failed": [...], "error": [...], "skipped": [(name, reason)], "xfailed": [...],
    "incomplete": [...]} from a pytest --junitxml file."""
    out: Dict[str, list] = {k: [] for k in ("passed", "failed", "error", "skipped", "xfailed", "incomplete")}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = case.get("name")
        if not name:  # the test that was running when the session was interrupted
            out["incomplete"].append("(interrupted test)")
            continue
        full = f"{case.get('classname', '')}::{name}".lstrip(":")
        tags = {child.tag: child for child in case}
        if "failure" in tags:
            out["failed"].append(full)
        elif "error" in tags:
            out["error"].append(full)
        elif "skipped" in tags:
            sk = tags["skipped"]
            if (sk.get("type") or "").endswith("xfail"):
                out["xfailed"].append(full)
            else:
                reason = sk.get("message") or (sk.text or "").strip()
                out["skipped"].append((full, reason))
        else:
            out["passed"].append(full)
    return out


def cmd_junit(args) -> int:
    label = args.label
    path = Path(args.xml)
    if not path.is_file() or path.stat().st_size == 0:
        print(f"{label}: no junit XML ({path}): pytest did not get to the end of its session")
        return 1
    try:
        c = junit_counts(path)
    except ET.ParseError as e:
        print(f"{label}: unreadable junit XML {path}: {e}")
        return 1
    allow = re.compile(args.allow)
    allowed = [(n, r) for n, r in c["skipped"] if allow.search(r)]
    bad = [(n, r) for n, r in c["skipped"] if not allow.search(r)]
    print(f"{label}: {len(c['passed'])} passed, {len(c['failed'])} failed, {len(c['error'])} errors, "
          f"{len(c['skipped'])} skipped ({len(allowed)} allowed: too few GPUs), {len(c['xfailed'])} xfailed"
          + (f", {len(c['incomplete'])} interrupted" if c["incomplete"] else ""))
    for kind in ("failed", "error"):
        for n in c[kind][:20]:
            print(f"  {kind.upper()}: {n}")
    if bad:
        by_reason: Dict[str, List[str]] = {}
        for n, r in bad:
            by_reason.setdefault(r, []).append(n)
        print(f"  skips that {'are reported' if args.skips_ok else 'fail this run'} (only 'needs N GPUs' may skip):")
        for r, names in by_reason.items():
            print(f"    {len(names)} x {r[:300]}")
            for n in names[:3]:
                print(f"        e.g. {n}")
    counts = f"{len(c['passed'])} passed"
    if allowed:
        counts += f", {len(allowed)} skipped (too few GPUs)"
    if bad and args.skips_ok:
        counts += f", {len(bad)} skipped"
    if c["failed"] or c["error"] or c["incomplete"] or (bad and not args.skips_ok):
        parts = [f"{len(c[k])} {k}" for k in ("failed", "error", "incomplete") if c[k]]
        if bad and not args.skips_ok:
            parts.append(f"{len(bad)} skipped for a reason other than too few GPUs")
        print(f"STATUS: {', '.join(parts)}; {counts}")
        return 1
    if not c["passed"]:
        if c["skipped"] and args.skips_ok:
            # nothing ran, for a reason the caller accepts (e.g. the sanitizer refused the device)
            print(f"STATUS: skipped: {c['skipped'][0][1][:200]}")
            return 3
        print(f"STATUS: no test passed ({label})")
        return 1
    print(f"STATUS: {counts}")
    return 0


# --------------------------------------------------------------------------------------------- table
def _write_results():
    spec = importlib.util.spec_from_file_location("dp_fast_write_results", HERE / "write_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_status(path: Optional[str]) -> List[List[str]]:
    if not path or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(line.split("\t"))
    return rows


def cmd_table(args) -> int:
    wr = _write_results()
    status = read_status(args.status)
    by_phase = {r[0]: r for r in status}
    dry = args.mode.endswith("dry-run")
    lines = [f"<!-- benchmarks/gpu_first.sh ({args.mode}), written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
             "     Each write_results section below can be pasted into benchmarks/RESULTS.md as it is; or, on the",
             "     machine that holds the repository, run `python benchmarks/write_results.py FILE.json` for each",
             "     JSON that came back (same sections). -->"]
    if dry:
        lines += ["", "**DRY RUN: stand-in numbers, not measurements. Do not paste.**"]
    if status:
        lines += ["", f"### GPU run summary ({args.mode})", "", "| phase | status | seconds | bound (s) |",
                  "|---|---|---|---|"]
        for r in status:
            r = (r + ["", "", "", ""])[:4]
            lines.append("| " + " | ".join(x.replace("|", "/") for x in r) + " |")
    if args.run_info:
        lines += ["", args.run_info]
    if args.hint:
        lines += ["", f"Next, on the same warm machine: `{args.hint}`."]
    written = 0
    for j in args.json:
        p = Path(j)
        if not p.is_file() or p.stat().st_size == 0:
            continue
        try:
            data = json.loads(p.read_text())
        except ValueError as e:
            lines += ["", f"({p.name}: unreadable JSON: {e})"]
            continue
        stem = p.stem
        device = ((data.get("machine_info") or {}).get("dp_fast") or {}).get("cuda_device") or "CPU"
        section = wr.default_section(data) if data.get("benchmarks") else f"{stem} {device}"
        note = ""
        st = by_phase.get(stem)
        if st and len(st) > 1 and st[1].startswith(("timed out", "FAILED")):
            note = f" [{st[1]}: the rows that finished]"
        title = f"{stem}, {device} (benchmarks/gpu_first.sh){note}"
        lines += ["", wr.render(data, section, title).rstrip("\n")]
        written += 1
    if not written:
        lines += ["", "(no benchmark JSON yet)"]
    Path(args.out).write_text("\n".join(lines).rstrip("\n") + "\n")
    print(f"table: {written} benchmark file(s) -> {args.out}")
    return 0


# ------------------------------------------------------------------------------------------- collect
def _strip_data(path: Path) -> bool:
    """Drop the per-round samples of a pytest-benchmark JSON (the tables use only the stats)."""
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return False
    changed = False
    for b in data.get("benchmarks", []):
        if isinstance(b.get("stats"), dict) and "data" in b["stats"]:
            del b["stats"]["data"]
            changed = True
    if changed:
        data.setdefault("dp_fast_note", "per-round samples dropped to fit the size limit of the GPU run")
        path.write_text(json.dumps(data, indent=1))
    return changed


def _truncate_text(path: Path, limit: int) -> None:
    raw = path.read_bytes()
    keep = limit // 2 - 256
    marker = f"\n\n[... {len(raw) - 2 * keep} bytes cut to fit the size limit ...]\n\n".encode()
    path.write_bytes(raw[:keep] + marker + raw[-keep:])


def cmd_collect(args) -> int:
    out = Path(args.dir)
    main = out / args.main
    problems = []
    for sub in sorted(p for p in out.iterdir() if p.is_dir()):
        problems.append(f"folder {sub.name}/ in the output (keep the output flat)")
    files = sorted(p for p in out.iterdir() if p.is_file())
    for p in files:
        if not NAME_OK.match(p.name):
            problems.append(f"{p.name!r}: only letters, digits, '.', '_' and '-' come back")
    # size per file
    for p in files:
        if p.stat().st_size > args.max_file_bytes:
            if p.suffix == ".json" and _strip_data(p) and p.stat().st_size <= args.max_file_bytes:
                print(f"collect: {p.name}: per-round samples dropped ({p.stat().st_size} bytes now)")
            if p.stat().st_size > args.max_file_bytes:
                _truncate_text(p, args.max_file_bytes)
                print(f"collect: {p.name}: cut to {p.stat().st_size} bytes")
    # count: fold the extra logs into the main log, the least important first
    files = sorted(p for p in out.iterdir() if p.is_file())
    if len(files) > args.max_files:
        order = {n: i for i, n in enumerate(args.fold_first)}
        foldable = [p for p in files if p != main and p.suffix in (".log", ".txt", ".xml")]
        foldable.sort(key=lambda p: (order.get(p.name, -1), p.stat().st_size))
        with open(main, "a") as fmain:
            for p in foldable:
                if len([f for f in out.iterdir() if f.is_file()]) <= args.max_files:
                    break
                fmain.write(f"\n\n===== {p.name} (folded into {main.name}: at most {args.max_files} files come back)"
                            f" =====\n")
                fmain.write(p.read_text(errors="replace"))
                p.unlink()
                print(f"collect: {p.name} folded into {main.name}")
    files = sorted(p for p in out.iterdir() if p.is_file())
    if len(files) > args.max_files:
        problems.append(f"{len(files)} files, at most {args.max_files} come back: "
                        f"{', '.join(p.name for p in files[args.max_files:])} may be lost")
    total = sum(p.stat().st_size for p in files)
    if total > args.max_total_bytes:
        problems.append(f"{total} bytes in all, more than {args.max_total_bytes}")
    print(f"collect: {len(files)} file(s), {total / MiB:.2f} MiB in {out}:")
    for p in files:
        print(f"  {p.name:28s} {p.stat().st_size:>10d} bytes")
    for msg in problems:
        print(f"collect: PROBLEM: {msg}")
    return 1 if problems else 0


# ---------------------------------------------------------------------------------------------- stub
def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _stub_junit(path: Path, passed: int, skips: List[str], fails: List[str]) -> None:
    cases = [f'<testcase classname="dry.stub" name="test_pass_{i}" time="0.001" />' for i in range(passed)]
    cases += [f'<testcase classname="dry.stub" name="test_skip_{i}" time="0.0"><skipped type="pytest.skip" '
              f'message="{_xml_text(r)}">{_xml_text(r)}</skipped></testcase>' for i, r in enumerate(skips)]
    cases += [f'<testcase classname="dry.stub" name="test_fail_{i}" time="0.0"><failure message="{_xml_text(r)}">'
              f'{_xml_text(r)}</failure></testcase>' for i, r in enumerate(fails)]
    path.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
                    + "".join(cases) + "</testsuite></testsuites>")


def _stub_bench_json(path: Path, stem: str, rows: List[dict]) -> None:
    data = {
        "machine_info": {"python_version": sys.version.split()[0], "cpu": {"brand_raw": "dry run"},
                         "dp_fast": {"cuda_device": "dry-run stand-in (no GPU)", "torch": "n/a", "triton": "n/a"}},
        "commit_info": {"id": None},
        "benchmarks": rows,
        "datetime": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "version": "stub",
    }
    path.write_text(json.dumps(data, indent=1))


def cmd_stub(args) -> int:
    """Stand-ins for the GPU phases: sleep like the phase would, write its artifacts."""
    print(f"[stub {args.kind}] standing in for the GPU phase ({args.sleep:.2f} s)", flush=True)
    if args.kind in ("tests", "sanitizer", "fidelity"):
        _sleep(args.sleep)
        _stub_junit(Path(args.junit), args.passed, args.skip, args.fail)
        print(f"[stub {args.kind}] {args.passed} passed, {len(args.skip)} skipped, {len(args.fail)} failed")
        return 1 if args.fail else 0
    if args.kind == "bench":
        stem = Path(args.json).stem
        rows: List[dict] = []
        names = ["reference", "fast"]

        def save(*_):
            if rows:
                _stub_bench_json(Path(args.json), stem, rows)
            print(f"[stub bench] stopped: {len(rows)} row(s) saved", flush=True)
            sys.exit(2)

        signal.signal(signal.SIGTERM, save)
        for i, row in enumerate(names):
            _sleep(args.sleep / len(names))
            med = 1e-3 * (i + 1)
            rows.append({"group": f"{stem}_dry_cuda", "name": f"test_{row}", "fullname": f"benchmarks/{stem}.py::test_{row}",
                         "params": {"row": row}, "extra_info": {"row": row},
                         "stats": {"min": med * 0.9, "max": med * 1.2, "mean": med, "median": med, "rounds": 5,
                                   "data": [med] * 5}})
        _stub_bench_json(Path(args.json), stem, rows)
        print(f"[stub bench] {len(rows)} rows -> {args.json}")
        return 0
    _sleep(args.sleep)  # build and anything else: no artifact
    return 0


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("envinfo")
    p.add_argument("--dry", action="store_true")
    p.add_argument("--facts")
    p.set_defaults(fn=cmd_envinfo)
    p = sub.add_parser("build-check")
    p.set_defaults(fn=cmd_build_check)
    p = sub.add_parser("junit")
    p.add_argument("xml")
    p.add_argument("--allow", default=ALLOWED_SKIP)
    p.add_argument("--label", default="tests")
    p.add_argument("--skips-ok", action="store_true", help="report disallowed skips without failing")
    p.set_defaults(fn=cmd_junit)
    p = sub.add_parser("table")
    p.add_argument("--out", required=True)
    p.add_argument("--status")
    p.add_argument("--mode", default="first")
    p.add_argument("--hint", default="")
    p.add_argument("--run-info", default="", help="a line about the run (device, git, budget)")
    p.add_argument("json", nargs="*")
    p.set_defaults(fn=cmd_table)
    p = sub.add_parser("collect")
    p.add_argument("dir")
    p.add_argument("--main", required=True)
    p.add_argument("--max-files", type=int, default=8)
    p.add_argument("--max-file-bytes", type=int, default=15 * MiB)
    p.add_argument("--max-total-bytes", type=int, default=60 * MiB)
    p.add_argument("--fold-first", nargs="*", default=["build.log", "tests.log"])
    p.set_defaults(fn=cmd_collect)
    p = sub.add_parser("stub")
    p.add_argument("kind", choices=["build", "tests", "sanitizer", "fidelity", "bench", "other"])
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--junit")
    p.add_argument("--json")
    p.add_argument("--passed", type=int, default=3)
    p.add_argument("--skip", action="append", default=[])
    p.add_argument("--fail", action="append", default=[])
    p.set_defaults(fn=cmd_stub)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
