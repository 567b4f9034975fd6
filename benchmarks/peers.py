"""The peers of bench_predict.py: what a user would run instead of dp_fast's fast paths, same weights.

  torch_compile        the reference policy with its denoiser under torch.compile (inductor); the
                       compile (first call) is timed apart, in extra_info["compile_s"]
  <runtime>_loop       the exported encoder.onnx + denoiser.onnx (dp_fast.export_onnx) in the runtime,
                       the K-step loop in Python (numpy) from export.json's step table
  <runtime>_graph      the exported policy.onnx: the whole predict_action, loop unrolled, in the runtime
runtime: onnxruntime (CPU execution provider) or openvino (CPU plugin, f32 precision hint), both with
torch's intra-op thread count. Each is an optional package (the `peers` extra); a row whose package is
missing is skipped. Exports are made once per (batch, K) into a temporary folder; their time is in
extra_info["export_s"].
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch

from dp_fast import export_onnx

_exports: Dict[tuple, tuple] = {}
_tmp = tempfile.TemporaryDirectory(prefix="dp_fast_bench_onnx_")
# policy.onnx unrolls the K steps; the exporter's time grows with K (~80 s for K = 10 here), so the whole
# graph is exported for small K only
GRAPH_MAX_K = 10


def export_for(policy, batch: int, parts: List[str]):
    """(folder, manifest, seconds) of an export of `parts` for this policy's (batch, K, scheduler)."""
    c = policy.config
    key = (batch, policy.num_inference_steps, c.scheduler.kind, tuple(parts))
    if key not in _exports:
        pytest.importorskip("onnxscript", reason="the export extra (pip install 'dp-fast[export]')")
        out = Path(_tmp.name) / "_".join(map(str, key))
        t0 = time.perf_counter()
        export_onnx(policy, out, batch=batch, parts=parts)
        _exports[key] = (out, json.loads((out / "export.json").read_text()), time.perf_counter() - t0)
    return _exports[key]


def session_factory(runtime: str) -> Callable[[Path], Callable[[Dict[str, np.ndarray]], List[np.ndarray]]]:
    """runtime -> (model path -> run(feed) -> outputs in the graph's order)."""
    threads = torch.get_num_threads()
    if runtime == "onnxruntime":
        ort = pytest.importorskip("onnxruntime", reason="the peers extra (pip install 'dp-fast[peers]')")

        def load(path):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            return lambda feed: sess.run(None, feed)
        return load
    ov = pytest.importorskip("openvino", reason="the peers extra (pip install 'dp-fast[peers]')")
    core = ov.Core()

    def load(path):
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)

        def run(feed):
            res = request.infer(feed)
            return [np.asarray(res[o]) for o in outputs]
        return run
    return load


def obs_feed(manifest, obs: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """The graphs take float32 images in [0, 1]: uint8 camera frames are divided by 255 here (timed)."""
    feed = {}
    for spec in manifest["observations"]:
        x = obs[spec["name"]].numpy()
        feed[spec["name"]] = (x.astype(np.float32) / np.float32(255.0)) if x.dtype == np.uint8 else \
            np.ascontiguousarray(x, dtype=np.float32)
    return feed


class RuntimeLoop:
    """encoder.onnx once, then denoiser.onnx K times with the scheduler step in numpy (export.json)."""

    def __init__(self, policy, runtime: str, batch: int):
        if not policy.config.obs_as_cond:
            pytest.skip("the host loop covers obs_as_cond policies (policy.onnx covers inpainting)")
        out, self.m, self.export_s = export_for(policy, batch, ["encoder", "denoiser"])
        load = session_factory(runtime)
        self.encoder, self.denoiser = load(out / "encoder.onnx"), load(out / "denoiser.onnx")
        s = self.m["scheduler"]
        cols = s["step_table_columns"]
        self.rows = [dict(zip(cols, np.asarray(r, np.float32))) for r in s["step_table"]]
        self.steps = [(np.full(batch, t, np.int64), j) for t, j in zip(s["timesteps"], s["noise_plan"])]
        un = self.m["action_unnormalize"]
        self.scale, self.offset = np.asarray(un["scale"], np.float32), np.asarray(un["offset"], np.float32)
        self.start, self.count = self.m["action_steps"]["start"], self.m["action_steps"]["count"]

    def predict_action(self, obs, noise):
        (cond,) = self.encoder(obs_feed(self.m, obs))
        noise = noise.numpy()
        x = noise[0]
        for r, (t, j) in zip(self.rows, self.steps):
            (eps,) = self.denoiser({"sample": x, "timestep": t, "cond": cond})
            x0 = np.clip(r["a"] * x + r["b"] * eps, r["lo"], r["hi"])
            x = r["e"] * x0 + r["f"] * x + r["g"] * (r["c"] * x + r["d"] * eps)
            if j >= 0:
                x = x + r["sigma"] * noise[j]
        pred = (x[..., :self.scale.shape[0]] - self.offset) / self.scale
        return {"action": torch.from_numpy(np.ascontiguousarray(pred[:, self.start:self.start + self.count]))}


class RuntimeGraph:
    """policy.onnx: observations + noise -> action, in one call of the runtime."""

    def __init__(self, policy, runtime: str, batch: int):
        if policy.num_inference_steps > GRAPH_MAX_K:
            pytest.skip(f"policy.onnx unrolls K = {policy.num_inference_steps} steps; exported for K <= "
                        f"{GRAPH_MAX_K} only (the exporter's time grows with K)")
        out, self.m, self.export_s = export_for(policy, batch, ["policy"])
        self.run = session_factory(runtime)(out / "policy.onnx")

    def predict_action(self, obs, noise):
        feed = obs_feed(self.m, obs)
        feed["noise"] = noise.numpy()
        action, _ = self.run(feed)
        return {"action": torch.from_numpy(action)}


class Compiled:
    """The reference policy with torch.compile(model); the first call compiles (timed in compile_s)."""

    def __init__(self, policy):
        self.policy = copy.deepcopy(policy)
        self.policy.model = torch.compile(self.policy.model)
        self.compile_s = None

    def predict_action(self, obs, noise):
        if self.compile_s is None:
            t0 = time.perf_counter()
            out = self.policy.predict_action(obs, noise=noise)
            self.compile_s = time.perf_counter() - t0
            return out
        return self.policy.predict_action(obs, noise=noise)


def peer_rows() -> Dict[str, Callable]:
    """Row factories (policy, batch) -> runner for bench_predict's ROW_FACTORIES (CPU rows only)."""
    def cpu_only(make):
        def factory(policy, batch):
            if policy.device.type != "cpu":
                pytest.skip("the peers are CPU rows")
            return make(policy, batch)
        return factory
    rows = {"torch_compile": cpu_only(lambda p, b: Compiled(p))}
    for runtime in ("onnxruntime", "openvino"):
        rows[f"{runtime}_loop"] = cpu_only(lambda p, b, r=runtime: RuntimeLoop(p, r, b))
        rows[f"{runtime}_graph"] = cpu_only(lambda p, b, r=runtime: RuntimeGraph(p, r, b))
    return rows
