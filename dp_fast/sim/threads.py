"""Child processes started inside `single_threaded_children()` get one BLAS / OpenMP thread each: the env
workers of rollouts and demonstrations share a few cores, and more threads per process only make them
wait on each other. The parent's environment is restored on exit."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextmanager
def single_threaded_children() -> Iterator[None]:
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, val in saved.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val
