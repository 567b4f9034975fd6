"""Triton kernels of dp_fast, installed as `dp_fast.kernels` (setup.py maps kernels/ -> dp_fast.kernels).

One module per op, `<op>.py`, holding `_<op>_kernel` (@triton.jit) and the launcher `<op>_triton`.
Launchers assume validated inputs: argument checks live in dp_fast/ops/<op>.py, which is the public API.
Every module with @triton.jit functions declares AOT_SPECS (see .ci/check_triton_aot.py).
"""
