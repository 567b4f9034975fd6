"""Shared test setup: Triton interpreter on CPU-only machines, markers.

The repository root is on sys.path through `pythonpath` in pyproject.toml (so `tests.<helper>`
imports work under plain `pytest` too); dp_fast.kernels and dp_fast._C need the editable install.

Markers:
  gpu   needs a CUDA device; skipped without one
  slow  takes more than a few seconds; deselect with -m "not slow"
  sim   needs robosuite + mujoco (pip install -e ".[sim]"); skipped without them
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Triton decides between compiling and interpreting when a kernel is decorated, so this must happen
# before anything imports kernels/. Without a GPU, Triton has no driver at all ("0 active drivers").
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

def _sim_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("robosuite", "mujoco"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "sim: needs robosuite + mujoco (pip install -e '.[sim]'); skipped without")


def pytest_report_header(config):
    dev = torch.cuda.get_device_name(0) if HAS_CUDA else "none (Triton kernels run in TRITON_INTERPRET=1)"
    return [f"torch {torch.__version__}, CUDA device: {dev}"]


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    no_sim = pytest.mark.skip(reason="needs robosuite and mujoco: pip install -e '.[sim]'")
    sim_ok = None
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(no_gpu)
        if "sim" in item.keywords:
            if sim_ok is None:
                sim_ok = _sim_available()
            if not sim_ok:
                item.add_marker(no_sim)


from tests.fixtures_path import variant_ckpt  # noqa: E402,F401  (session fixture shared by test modules)
