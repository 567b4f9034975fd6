"""dp_fast.profiling.nvtx_range: a shared no-op unless profiling; nvtx package, else torch.cuda.nvtx."""
import sys
import types

import pytest
import torch

from dp_fast import profiling


@pytest.fixture(autouse=True)
def fresh_decision(monkeypatch):
    monkeypatch.delenv("DP_FAST_NVTX", raising=False)
    monkeypatch.delenv("NSYS_PROFILING_SESSION_ID", raising=False)
    profiling.set_nvtx(None)
    yield
    profiling.set_nvtx(None)


def test_off_by_default_is_one_shared_noop():
    a, b = profiling.nvtx_range("x"), profiling.nvtx_range("y")
    assert a is b
    with a:
        pass
    assert not profiling.nvtx_enabled() and profiling.nvtx_backend() == "off"


def test_nvtx_package_used_when_importable(monkeypatch):
    calls = []
    fake = types.ModuleType("nvtx")
    fake.annotate = lambda message, domain: calls.append((message, domain)) or profiling._NULL
    monkeypatch.setitem(sys.modules, "nvtx", fake)
    monkeypatch.setenv("DP_FAST_NVTX", "1")
    with profiling.nvtx_range("sample"):
        pass
    assert calls == [("dp_fast/sample", "dp_fast")]
    assert profiling.nvtx_backend() == "nvtx"


def test_torch_cuda_nvtx_without_the_package(monkeypatch):
    pushed = []
    monkeypatch.setitem(sys.modules, "nvtx", None)  # import nvtx -> ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: pushed.append(("push", name)))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: pushed.append(("pop",)))
    monkeypatch.setenv("NSYS_PROFILING_SESSION_ID", "7")
    with profiling.nvtx_range("step"):
        pushed.append("body")
    assert pushed == [("push", "dp_fast/step"), "body", ("pop",)]
    assert profiling.nvtx_backend() == "torch.cuda.nvtx"


def test_nothing_to_emit_stays_noop(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvtx", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profiling.set_nvtx(True)
    assert profiling.nvtx_range("a") is profiling.nvtx_range("b")
    assert profiling.nvtx_backend().startswith("unavailable")


def test_forced_off_ignores_environment(monkeypatch):
    monkeypatch.setenv("DP_FAST_NVTX", "1")
    profiling.set_nvtx(False)
    assert not profiling.nvtx_enabled()
