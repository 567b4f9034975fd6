"""benchmarks/gpu_first.sh without a GPU: its dry run (stand-ins for the GPU phases, everything else real:
arguments, time budget, phase bounds, the skip check, tables, the 8-file limit), and the helpers it uses
(benchmarks/gpu_tools.py, benchmarks/_common.py). A failure here is one the GPU slot would have hit.

No torch import in the script's dry run; each run takes about a second.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_first.sh"
FIRST_FILES = {"gpu_first.log", "build.log", "tests.log", "bench_ops.json", "bench_predict.json",
               "bench_attention.json", "bench_data.json", "results_first.md"}

needs_shell = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and coreutils' timeout")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_t_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_script(out, *args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("DP_FAST_GPU_") and k != "OUT"}
    e.update(OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), "--python", sys.executable, *args],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)
    return proc, proc.stdout + proc.stderr


def summary(text):
    return text[text.index("==> summary"):]


@needs_shell
def test_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@needs_shell
def test_dry_run_first_slot(tmp_path):
    proc, text = run_script(tmp_path)
    assert proc.returncode == 0, text
    assert {p.name for p in tmp_path.iterdir()} == FIRST_FILES
    log = (tmp_path / "gpu_first.log").read_text()
    # what would run on the GPU machine
    assert "pip install -v --no-build-isolation --no-deps --no-index -e ." in log
    assert "-m pytest tests -m gpu" in log and "--deselect tests/gpu/test_ops_gpu.py::test_compute_sanitizer_memcheck" in log
    assert "--ignore tests/gpu/test_fidelity_gpu.py" in log and "-p benchmarks.pytest_bounded" in log
    assert "-n 4 --dist load --timeout=120 --timeout-method=signal" in log  # xdist and pytest-timeout, as there
    for stem in ("bench_ops", "bench_predict", "bench_attention", "bench_data"):
        assert f"env DP_FAST_BENCH_GPU_ONLY=1 {sys.executable} -m pytest benchmarks/{stem}.py --benchmark-only" in log
        assert f"--benchmark-json={tmp_path}/{stem}.json" in log
    assert "DP_FAST_BENCH_COMPILE" not in log and "bench_train" not in log.split("==> summary")[0]
    s = summary(text)
    assert "tests            ok: 3 passed, 1 skipped (too few GPUs)" in s
    assert "sanitizer        skipped: compute-sanitizer refuses" in s  # a refusal is a skip, not a failure
    assert '--rerun --fixtures .gpu_carry/fixtures --wheels .gpu_carry/whl --phases "fidelity bench_train"' in s
    assert "collect: 8 file(s)" in s
    md = (tmp_path / "results_first.md").read_text()
    assert "DRY RUN" in md and md.count("<!-- write_results:begin ") == 4
    assert "| reference | 0.9 | 1 | 1.2 | 5 | 1.00x |" in md


@needs_shell
def test_dry_run_rerun_with_fixtures_and_compile(tmp_path):
    fx = tmp_path / "fx"
    (fx / "dp_variant_ckpt").mkdir(parents=True)
    for name in ("variant.ckpt.zst", "variant_expected.pt"):
        (fx / "dp_variant_ckpt" / name).write_bytes(b"")
    out = tmp_path / "out"
    proc, text = run_script(out, "--rerun", "--fixtures", str(fx), "--compile")
    assert proc.returncode == 0, text
    log = (out / "gpu_rerun.log").read_text()
    assert f"env DP_FAST_FIXTURES={fx} {sys.executable} -m pytest tests/gpu/test_fidelity_gpu.py -m gpu" in log
    assert "env DP_FAST_BENCH_GPU_ONLY=1 DP_FAST_BENCH_COMPILE=1" in log
    assert {p.name for p in out.iterdir()} == {"gpu_rerun.log", "build.log", "tests.log", "bench_train.json",
                                              "results_rerun.md"}
    assert "fidelity         ok: 3 passed" in summary(text)


@needs_shell
def test_a_skip_other_than_too_few_gpus_fails_the_run(tmp_path):
    proc, text = run_script(tmp_path, "--phases", "tests", env={"DP_FAST_GPU_DRYRUN_SKIP": "needs a CUDA device"})
    assert proc.returncode == 1, text
    assert "tests            FAILED: 1 skipped for a reason other than too few GPUs" in summary(text)
    assert "1 x needs a CUDA device" in (tmp_path / "tests.log").read_text()


@needs_shell
def test_phases_that_do_not_fit_the_budget_are_not_started(tmp_path):
    proc, text = run_script(tmp_path, "--budget", "40", "--phases", "bench_data,tests sanitizer")
    assert proc.returncode == 3, text  # incomplete, nothing failed
    s = summary(text)
    for phase in ("build", "bench_data", "tests", "sanitizer"):
        assert f"{phase:16s} skipped: " in s, phase
    assert '--phases "fidelity bench_train bench_data tests sanitizer"' in s
    assert (tmp_path / "results_first.md").is_file() and (tmp_path / "gpu_first.log").is_file()


@needs_shell
def test_a_phase_cut_by_its_bound_keeps_the_rows_that_finished(tmp_path):
    # scale 0.05: bench_ops is bounded at 3 s; its stand-in writes a row at ~2 s and would write the next at ~4 s
    proc, text = run_script(tmp_path, "--phases", "bench_ops",
                            env={"DP_FAST_GPU_TIME_SCALE": "0.05", "DP_FAST_GPU_DRYRUN_SLEEP": "bench_ops=4"})
    assert proc.returncode == 3, text
    assert "bench_ops        timed out after" in summary(text)
    data = json.loads((tmp_path / "bench_ops.json").read_text())
    assert [b["extra_info"]["row"] for b in data["benchmarks"]] == ["reference"]
    assert "the rows that finished" in (tmp_path / "results_first.md").read_text()


@needs_shell
@pytest.mark.parametrize("args", [["--bogus"], ["--phases", "bench_nothing"], ["--budget", "soon"], ["--budget", "25"],
                                  ["--fixtures", "/nonexistent/fixtures"]])
def test_bad_arguments(tmp_path, args):
    proc, text = run_script(tmp_path, *args)
    assert proc.returncode == 2, text


@needs_shell
def test_dry_run_from_the_environment(tmp_path):
    e = {k: v for k, v in os.environ.items() if k != "OUT"}
    e.update(DP_FAST_GPU_DRYRUN="maybe")
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], cwd=REPO, env=e, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "DP_FAST_GPU_DRYRUN must be 0 or 1" in proc.stderr


# ------------------------------------------------------------------------------------------ helpers
def _junit(path, cases):
    path.write_text("<testsuites><testsuite>" + "".join(cases) + "</testsuite></testsuites>")
    return path


def test_junit_counts_and_allowed_skips(tmp_path, capsys):
    tools = _load("gpu_tools")
    ok = '<testcase classname="t" name="a"/>'
    few = '<testcase classname="t" name="b"><skipped type="pytest.skip" message="needs 2 GPUs"/></testcase>'
    cuda = '<testcase classname="t" name="c"><skipped type="pytest.skip" message="needs a CUDA device"/></testcase>'
    xfail = '<testcase classname="t" name="d"><skipped type="pytest.xfail" message="known"/></testcase>'
    cut = '<testcase time="0.0"/>'
    assert tools.main(["junit", str(_junit(tmp_path / "1.xml", [ok, few, xfail]))]) == 0
    assert tools.main(["junit", str(_junit(tmp_path / "2.xml", [ok, few, cuda]))]) == 1
    assert tools.main(["junit", str(_junit(tmp_path / "3.xml", [ok, cut]))]) == 1  # interrupted test
    assert tools.main(["junit", str(_junit(tmp_path / "4.xml", [few]))]) == 1      # nothing passed
    assert tools.main(["junit", str(_junit(tmp_path / "5.xml", [cuda])), "--skips-ok"]) == 3
    assert tools.main(["junit", str(tmp_path / "missing.xml")]) == 1
    out = capsys.readouterr().out
    assert "STATUS: 1 passed, 1 skipped (too few GPUs)" in out
    assert "STATUS: skipped: needs a CUDA device" in out


def test_collect_folds_logs_and_shrinks_json(tmp_path, capsys):
    tools = _load("gpu_tools")
    (tmp_path / "run.log").write_text("main\n")
    for i in range(5):
        (tmp_path / f"bench_{i}.json").write_text(json.dumps({"benchmarks": [{"stats": {"median": 1.0,
                                                                                     "data": [1.0] * 20000}}]}))
    for name in ("build.log", "tests.log", "results.md"):
        (tmp_path / name).write_text(f"{name} text\n")
    assert len(list(tmp_path.iterdir())) == 9
    assert tools.main(["collect", str(tmp_path), "--main", "run.log", "--max-file-bytes", "100000"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert len(names) == 8 and "build.log" not in names and "tests.log" in names
    assert "build.log text" in (tmp_path / "run.log").read_text()
    data = json.loads((tmp_path / "bench_0.json").read_text())
    assert "data" not in data["benchmarks"][0]["stats"] and data["benchmarks"][0]["stats"]["median"] == 1.0
    (tmp_path / "sub").mkdir()
    assert tools.main(["collect", str(tmp_path), "--main", "run.log"]) == 1  # a folder is reported


class _FakeBenchmark:
    def __init__(self, max_time, min_rounds=5):
        self._max_time, self._min_rounds, self.disabled, self.extra_info = max_time, min_rounds, False, {}
        self.rounds = None

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        self.rounds = rounds


def test_pedantic_rounds_bounded_on_cuda_only(monkeypatch):
    common = _load("_common")
    clock = iter(range(100))
    monkeypatch.setattr(common.time, "perf_counter", lambda: float(next(clock)) * 0.1)  # each call: 0.1 s
    b = _FakeBenchmark(max_time=1.0)
    common.pedantic(b, lambda: None, rounds=100, cuda=True)
    assert b.rounds == 10 and b.extra_info["rounds_requested"] == 100
    b = _FakeBenchmark(max_time=0.05)
    common.pedantic(b, lambda: None, rounds=100, cuda=True)
    assert b.rounds == 5  # never under --benchmark-min-rounds
    b = _FakeBenchmark(max_time=1.0)
    common.pedantic(b, lambda: None, rounds=100, cuda=False)
    assert b.rounds == 100 and not b.extra_info


def test_gpu_only_switch(monkeypatch):
    common = _load("_common")
    monkeypatch.setenv("DP_FAST_BENCH_GPU_ONLY", "1")
    assert "cpu" not in common.devices()
    monkeypatch.delenv("DP_FAST_BENCH_GPU_ONLY")
    assert common.devices()[0] == "cpu"


def test_bounded_plugin_keeps_finished_benchmarks_when_cut(tmp_path):
    """A benchmark run stopped by `timeout` (SIGTERM) still writes its JSON with the rows that finished."""
    started = tmp_path / "slow_started"
    (tmp_path / "bench_cut.py").write_text(
        "import pathlib, time\n\n"
        "def test_fast(benchmark):\n    benchmark.pedantic(lambda: sum(range(100)), rounds=3, iterations=1)\n\n"
        "def test_slow(benchmark):\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    benchmark.pedantic(lambda: time.sleep(60), rounds=1, iterations=1)\n")
    out = tmp_path / "cut.json"
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.pytest_bounded", "-p",
                             "no:cacheprovider", "bench_cut.py", f"--benchmark-json={out}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), "the slow benchmark never started"
    proc.send_signal(signal.SIGTERM)   # what `timeout` sends when the bound is reached
    text, _ = proc.communicate(timeout=60)
    names = [b["name"] for b in json.loads(out.read_text())["benchmarks"]]
    assert names == ["test_fast"], (names, text[-2000:])
