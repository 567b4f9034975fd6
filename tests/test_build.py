"""The build machinery: the optional extension reports its state, dp_fast imports without it,
kernels/ is installed as dp_fast.kernels, and the Triton ahead-of-time check script works."""
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dp_fast import _ext

REPO = Path(__file__).resolve().parents[1]


def test_extension_status_is_reported():
    if os.environ.get("DP_FAST_REQUIRE_EXT") == "1":  # set by scripts/test.sh: CI must build it
        assert _ext.available(), _ext.unavailable_reason()
    if _ext.available():
        assert _ext.unavailable_reason() == ""
        _ext.require()
    else:
        reason = _ext.unavailable_reason()
        assert "dp_fast._C" in reason and "pip install --no-build-isolation" in reason
        with pytest.raises(RuntimeError, match="dp_fast._C"):
            _ext.require()


def test_build_info():
    if not _ext.available():
        pytest.skip(_ext.unavailable_reason())
    raw = torch.ops.dp_fast.build_info()
    info = _ext.build_info()
    assert raw.startswith("cpu=1;") and info["cpu"] == "1"
    assert info["torch"] == torch.__version__, "extension built against another torch"
    assert info["cuda"] in ("0", "1") and _ext.has_cuda_kernels() == (info["cuda"] == "1")
    if _ext.has_cuda_kernels():
        assert "9.0" in info["cuda_archs"].split(",")
        assert torch._C._dispatch_has_kernel_for_dispatch_key("dp_fast::ddpm_step", "CUDA")
    if sys.platform.startswith("linux"):
        assert info["openmp"] == "1", "built without OpenMP: at::parallel_for would run on one thread"


_HIDE_EXTENSION = textwrap.dedent("""
    import importlib.abc, sys

    class HideExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "dp_fast._C":
                raise ImportError("hidden by test_build")
            return None

    sys.meta_path.insert(0, HideExtension())
""")


def test_import_without_extension():
    code = _HIDE_EXTENSION + textwrap.dedent("""
        import dp_fast
        from dp_fast import _ext
        assert not _ext.available()
        assert not _ext.has_cuda_kernels() and _ext.build_info() == {}
        try:
            _ext.require()
        except RuntimeError as e:
            assert str(e) == _ext.unavailable_reason()
        else:
            raise AssertionError("require() did not raise")
        print(_ext.unavailable_reason())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reason = proc.stdout.strip()
    assert "dp_fast._C" in reason and "hidden by test_build" in reason
    assert "pip install --no-build-isolation -e ." in reason


def test_kernels_dir_is_installed_as_dp_fast_kernels():
    if not (REPO / "kernels").is_dir():
        pytest.skip("no kernels/ directory yet")
    pkg = importlib.import_module("dp_fast.kernels")
    assert Path(list(pkg.__path__)[0]).resolve() == (REPO / "kernels").resolve()
    for path in sorted((REPO / "kernels").glob("*.py")):
        if path.stem != "__init__":
            importlib.import_module(f"dp_fast.kernels.{path.stem}")


# ---------------------------------------------------------------------------------------------
# .ci/check_triton_aot.py against throwaway kernel modules

_KERNEL = '''
import triton
import triton.language as tl


@triton.jit
def _scale_kernel(x_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * alpha, mask=mask)
'''
_SPECS = '''
AOT_SPECS = [
    {"fn": _scale_kernel, "signature": {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "alpha": "fp32"},
     "constexprs": {"BLOCK": 256}, "label": "fp32"},
    {"fn": _scale_kernel, "signature": {"x_ptr": "*bf16", "out_ptr": "*bf16", "n": "i32", "alpha": "fp32"},
     "constexprs": {"BLOCK": %d}, "divisible_by_16": ["x_ptr", "out_ptr"], "options": {"num_warps": 2},
     "label": "bf16"},
]
'''


def _run_aot_check(kernels_dir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(REPO / ".ci" / "check_triton_aot.py"), "--kernels-dir",
                           str(kernels_dir)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def triton_available():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")


def test_triton_aot_check_compiles_specs(tmp_path, triton_available):
    (tmp_path / "scale.py").write_text(_KERNEL + _SPECS % 512)
    proc = _run_aot_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if "_scale_kernel" in line]
    assert [(r[0], r[2], r[3]) for r in rows] == [("scale", "fp32", "ok"), ("scale", "bf16", "ok")]
    assert "all 2 spec(s) compiled to PTX and cubin" in proc.stdout


def test_triton_aot_check_fails_without_specs(tmp_path, triton_available):
    (tmp_path / "scale.py").write_text(_KERNEL)
    proc = _run_aot_check(tmp_path)
    assert proc.returncode != 0
    assert "scale.py defines @triton.jit ['_scale_kernel'] but no AOT_SPECS" in proc.stdout


def test_triton_aot_check_fails_on_compile_error(tmp_path, triton_available):
    (tmp_path / "scale.py").write_text(_KERNEL + _SPECS % 300)  # tl.arange needs a power of 2
    proc = _run_aot_check(tmp_path)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout and "scale.py _scale_kernel [bf16]" in proc.stdout
