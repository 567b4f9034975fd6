#!/usr/bin/env python
"""Turn a pytest-benchmark JSON into markdown tables in a section of benchmarks/RESULTS.md.

    python benchmarks/write_results.py RUN.json [--results benchmarks/RESULTS.md] [--section NAME]
                                       [--title TEXT] [--stdout]

Generic over benchmark files: one table row per benchmark, grouped by `benchmark.group`, sorted with the
reference row first. A row's name is extra_info["row"], else its "row" / "backend" parameter, else the
test name. "vs reference" is the reference row's median over this row's median (> 1: faster) in the same
group. Numeric extra_info keys listed in EXTRA_COLUMNS become columns when any benchmark has them.

The section is delimited by `<!-- write_results:begin NAME -->` / `<!-- write_results:end NAME -->`: a
rerun replaces it, a new NAME is appended. NAME defaults to "<bench file stems> <device>".
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# (extra_info key, column header, format)
EXTRA_COLUMNS = [
    ("device_ms", "device time (ms)", "{:.4f}"),
    ("gbps", "GB/s", "{:.1f}"),
    ("bandwidth_frac", "of peak BW", "{:.0%}"),
    ("peak_gbps", "peak BW: d2d copy (GB/s)", "{:.0f}"),
    ("capture_s", "capture (s)", "{:.3f}"),
    ("compile_s", "compile (s)", "{:.1f}"),
    ("export_s", "ONNX export (s)", "{:.0f}"),
    ("samples_per_s", "samples/s", "{:.1f}"),
    ("max_abs_err_vs_reference", "max abs err vs reference", "{:.1e}"),
]


def row_name(bench: dict) -> str:
    extra, params = bench.get("extra_info") or {}, bench.get("params") or {}
    for value in (extra.get("row"), params.get("row"), params.get("backend")):
        if value is not None:
            return str(value)
    return bench.get("name", "?")


def _unit(seconds: float):
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return scale, unit
    return 1e-9, "ns"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def header(data: dict) -> str:
    m, c = data.get("machine_info") or {}, data.get("commit_info") or {}
    dp = m.get("dp_fast") or {}
    cpu = (m.get("cpu") or {}).get("brand_raw") or m.get("processor") or "?"
    device = dp.get("cuda_device") or f"CPU {cpu}"
    parts = [f"Device: {device}" + (f" (host CPU {cpu})" if dp.get("cuda_device") else ""),
             f"Python {m.get('python_version', '?')}"]
    for key in ("torch", "triton"):
        if dp.get(key):
            parts.append(f"{key} {dp[key]}")
    if dp.get("torch_threads"):
        parts.append(f"{dp['torch_threads']} torch threads")
    sha = c.get("id")
    parts.append(f"git {sha[:10] if sha else '?'}" + (" (dirty)" if c.get("dirty") else ""))
    parts.append(f"run {data.get('datetime', '?')[:19]}")
    return "; ".join(parts) + "."


def tables(data: dict) -> str:
    groups: Dict[str, List[dict]] = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(b.get("group") or b.get("name", "?"), []).append(b)
    out = []
    for group, benches in groups.items():
        benches.sort(key=lambda b: (row_name(b) != "reference", b["stats"]["median"]))
        ref = next((b for b in benches if row_name(b) == "reference"), None)
        scale, unit = _unit(min(b["stats"]["median"] for b in benches))
        extra_cols = [col for col in EXTRA_COLUMNS
                      if any(isinstance((b.get("extra_info") or {}).get(col[0]), (int, float)) for b in benches)]
        head = ["row", f"min ({unit})", f"median ({unit})", f"max ({unit})", "rounds", "vs reference (median)"]
        head += [h for _, h, _ in extra_cols]
        lines = [f"### {group}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in benches:
            s = b["stats"]
            speed = f"{ref['stats']['median'] / s['median']:.2f}x" if ref else "n/a (no reference row)"
            cells = [row_name(b), _fmt(s["min"] / scale), _fmt(s["median"] / scale), _fmt(s["max"] / scale),
                     str(s.get("rounds", "?")), speed]
            extra = b.get("extra_info") or {}
            for key, _, fmt in extra_cols:
                v = extra.get(key)
                cells.append(fmt.format(v) if isinstance(v, (int, float)) else "")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def default_section(data: dict) -> str:
    stems = sorted({Path(b.get("fullname", "").split("::")[0]).stem for b in data.get("benchmarks", [])} - {""})
    dp = (data.get("machine_info") or {}).get("dp_fast") or {}
    return f"{' '.join(stems) or 'benchmarks'} {dp.get('cuda_device') or 'CPU'}"


def render(data: dict, section: str, title: Optional[str]) -> str:
    body = [f"## {title or section}", "", header(data), "", tables(data) or "(no benchmarks in the JSON)"]
    return (f"<!-- write_results:begin {section} -->\n" + "\n".join(body).rstrip() + "\n"
            f"<!-- write_results:end {section} -->\n")


def replace_section(text: str, section: str, block: str) -> str:
    pattern = re.compile(rf"<!-- write_results:begin {re.escape(section)} -->\n.*?"
                         rf"<!-- write_results:end {re.escape(section)} -->\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, help="pytest --benchmark-json output")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--section", help="section key (default: bench file stems + device)")
    ap.add_argument("--title", help="section heading (default: the section key)")
    ap.add_argument("--stdout", action="store_true", help="print the section instead of writing the file")
    args = ap.parse_args(argv)
    data = json.loads(args.json.read_text())
    section = args.section or default_section(data)
    block = render(data, section, args.title)
    if args.stdout:
        sys.stdout.write(block)
        return 0
    old = args.results.read_text() if args.results.exists() else "# Benchmark results\n"
    args.results.write_text(replace_section(old, section, block))
    print(f"write_results: section {section!r} ({len(data.get('benchmarks', []))} benchmarks) -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
