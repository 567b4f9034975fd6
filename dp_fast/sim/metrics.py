"""Rollout bookkeeping: what happened to each episode, each policy call and each chunk, and the summary.

`RolloutLog` is filled while the rollouts run (and drives the optional progress bar); `summary` turns it
into the metrics dict run_rollouts returns:

    "<split>/mean_score", "/success_rate", "/success_ci95" (Wilson score interval), "/scores",
    "/successes", "/lengths", and "train/demos" or "test/seeds" (split = train, test; a split without
    episodes is left out), "/traces" (the episodes' trace files, None where none was written) when traced
    "latency_ms_p50" / "_p90" / "_p99" / "_max" / "_mean" (per policy call), "n_policy_calls", "mean_batch"
    with a control rate: "control_hz", "async_inference", "deadline_misses" (calls whose chunk came late),
    "deadline_miss_ticks" (hold ticks they cost), "deadline_miss_rate", "n_chunk_requests"
    with run_rollouts' action_steps: "action_steps" (actions executed per chunk)
    "n_episodes", "max_steps", "errors", "video_paths", "worker_restarts", "env_steps" (of the episodes
    that ended normally), "startup_s", "warmup_ms" (if warmed up), "wall_s"

A score is the episode's best reward (1.0 on success); a failed episode (worker fault, policy error)
scores 0 with its error in "errors".
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .timing import ChunkPlan


def wilson_interval(successes: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """The Wilson score interval of a success rate (95% for z = 1.96): unlike the normal approximation it
    stays inside [0, 1] and is not empty at 0 / n or n / n. (0.0, 1.0) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


class RolloutLog:
    def __init__(self, n_episodes: int, progress: bool = True):
        self.results: Dict[int, Dict[str, Any]] = {}
        self.errors: List[Dict[str, Any]] = []
        self.latencies: List[float] = []
        self.batches: List[int] = []
        self.misses = self.miss_ticks = self.chunk_requests = 0
        self.restarts = 0
        self.env_steps = 0
        self.startup_s = 0.0
        self.warmup_s: Optional[float] = None
        self.bar = tqdm(total=n_episodes, desc="rollouts", unit="ep", dynamic_ncols=True) if progress else None

    def episode_done(self, ep: Mapping[str, Any], info: Optional[Mapping[str, Any]] = None,
                     error: Optional[str] = None) -> None:
        """Episode `ep` ended: normally (the worker's final `info`) or failed (`error`, score 0)."""
        r = {"score": 0.0, "success": False, "steps": 0, "error": error, "video": None, "trace": None}
        if info is not None:
            r.update(score=float(info["reward"]), success=bool(info["success"]), steps=int(info["steps"]),
                     video=info.get("video"), trace=info.get("trace"))
            self.env_steps += int(info["steps"])
        if error is not None:
            where = {"demo": ep["demo"]} if "demo" in ep else {"seed": ep["seed"]}
            self.errors.append({"episode": ep["index"], "split": ep["split"], **where, "error": error})
        self.results[ep["index"]] = r
        if self.bar is not None:
            self.bar.update(1)
            done = list(self.results.values())
            self.bar.set_postfix(success=f"{sum(x['success'] for x in done)}/{len(done)}")

    def policy_call(self, latency_s: float, batch: int) -> None:
        self.latencies.append(latency_s)
        self.batches.append(batch)

    def chunk_request(self, plan: ChunkPlan) -> None:
        """A chunk delivered in control-rate mode (see timing.plan_chunk)."""
        self.chunk_requests += 1
        if plan.late:
            self.misses += 1
            self.miss_ticks += plan.holds

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary(self, episodes: Sequence[Mapping[str, Any]], control_hz: Optional[float], async_inference: bool,
                wall_s: float, max_steps: int) -> Dict[str, Any]:
        m: Dict[str, Any] = {}
        for split in ("train", "test"):
            eps = [e for e in episodes if e["split"] == split]
            if not eps:
                continue
            res = [self.results[e["index"]] for e in eps]
            scores = [r["score"] for r in res]
            m[f"{split}/mean_score"] = float(np.mean(scores))
            m[f"{split}/success_rate"] = float(np.mean([r["success"] for r in res]))
            m[f"{split}/success_ci95"] = list(wilson_interval(sum(bool(r["success"]) for r in res), len(res)))
            m[f"{split}/scores"] = scores
            m[f"{split}/successes"] = [r["success"] for r in res]
            m[f"{split}/lengths"] = [r["steps"] for r in res]
            if any(r["trace"] for r in res):
                m[f"{split}/traces"] = [r["trace"] for r in res]
            key = "demos" if split == "train" else "seeds"
            m[f"{split}/{key}"] = [e["demo" if split == "train" else "seed"] for e in eps]
        lat = np.asarray(self.latencies, dtype=np.float64) * 1e3
        if len(lat):
            for q in (50, 90, 99):
                m[f"latency_ms_p{q}"] = float(np.percentile(lat, q))
            m["latency_ms_max"] = float(lat.max())
            m["latency_ms_mean"] = float(lat.mean())
        m["n_policy_calls"] = len(self.latencies)
        m["mean_batch"] = float(np.mean(self.batches)) if self.batches else 0.0
        if control_hz:
            m["control_hz"] = float(control_hz)
            m["async_inference"] = bool(async_inference)
            m["deadline_misses"] = self.misses
            m["deadline_miss_ticks"] = self.miss_ticks
            m["deadline_miss_rate"] = self.misses / max(1, self.chunk_requests)
            m["n_chunk_requests"] = self.chunk_requests
        m["n_episodes"] = len(episodes)
        m["max_steps"] = max_steps
        m["errors"] = self.errors
        m["video_paths"] = [self.results[e["index"]]["video"] for e in episodes if self.results[e["index"]]["video"]]
        m["worker_restarts"] = self.restarts
        m["env_steps"] = self.env_steps
        m["startup_s"] = self.startup_s
        if self.warmup_s is not None:
            m["warmup_ms"] = self.warmup_s * 1e3
        m["wall_s"] = wall_s
        return m
