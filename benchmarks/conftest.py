"""pytest-benchmark setup shared by benchmarks/bench_*.py: library versions and the device in the JSON's
machine_info, which benchmarks/write_results.py prints above each table."""
from __future__ import annotations


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    info = {"torch": torch.__version__, "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None, "torch_threads": torch.get_num_threads()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - not installed or broken: just not reported
        info["triton"] = None
    try:
        from dp_fast import _ext
        info["dp_fast_C"] = _ext.build_info() or _ext.unavailable_reason()
    except Exception as e:  # noqa: BLE001
        info["dp_fast_C"] = f"{type(e).__name__}: {e}"
    machine_info["dp_fast"] = info
