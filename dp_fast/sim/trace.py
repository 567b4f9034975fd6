"""Per-step traces of rollout episodes and what they say about the failed ones.

`dp-fast eval --trace DIR` has every episode's worker record, per env step, the action it executed and
the state after it, read from the simulator: the hand's position (the eef site), the gripper's finger
joints, the task object's grasp point (`SimEnv.object_pos`: the cube's centre in Lift, the can's
centre in Can, the nut's handle in Square) and the reward. One JSON-lines file per episode: a header
line ({"index", "split", "seed" | "demo"}), then one line per state, the first being the reset state
(step 0, no action).

`classify` sorts a failed episode by how far it got in a pick-and-place task, which is the question a
failure table answers first:

    not_reached      the hand never came within REACH_M of the object
    not_grasped      it came close, but never closed the gripper there
    not_lifted       it closed the gripper near the object, which never rose LIFT_M above its start
    lifted_dropped   the object rose, and was back within LIFT_M of its start height at the end
    lifted_not_placed  the object rose and was still up (held, or on something) at the end

The two lifted modes go by the object's height alone: a can held near its top is lifted with the hand
farther than REACH_M from its centre.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from ..atomic_file import atomic_write

REACH_M = 0.03       # eef-to-grasp-point distance counted as "at the object"
LIFT_M = 0.02        # rise of the object counted as lifted
MODES = ("not_reached", "not_grasped", "not_lifted", "lifted_dropped", "lifted_not_placed")


class EpisodeTrace:
    """The records of one episode, written at its end (atomically: a reader never sees half a trace)."""

    def __init__(self, path, header: Mapping[str, Any]):
        self.path = Path(path)
        self.lines: List[str] = [json.dumps(dict(header))]

    def record(self, step: int, env, action=None, reward: float = 0.0) -> None:
        """The state of `env` (a SimEnv) after `action` (None at the reset state)."""
        rec = {"step": int(step),
               "eef": np.asarray(env.eef_pos(), dtype=float).round(5).tolist(),
               "grip": np.asarray(env.gripper_qpos(), dtype=float).round(5).tolist(),
               "obj": np.asarray(env.object_pos(), dtype=float).round(5).tolist(),
               "reward": round(float(reward), 5)}
        if action is not None:
            rec["action"] = np.asarray(action, dtype=float).round(4).tolist()
        self.lines.append(json.dumps(rec))

    def write(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as tmp:
            tmp.write_text("\n".join(self.lines) + "\n")
        return str(self.path)


def read_trace(path) -> Dict[str, Any]:
    """A trace file -> {"header": {...}, "steps": [records]}."""
    lines = [json.loads(s) for s in Path(path).read_text().splitlines() if s.strip()]
    if not lines:
        raise ValueError(f"{path}: empty trace")
    return {"header": lines[0], "steps": lines[1:]}


def classify(steps: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """A failed episode's records -> {"mode" (one of MODES), "min_dist_m", "max_rise_m", "first_reach",
    "first_close_near"} (steps of the first time at the object and of the first close command there;
    None when it never happened). The gripper command is the action's last entry (> 0: close)."""
    if not steps:
        raise ValueError("a trace with no records")
    eef = np.array([s["eef"] for s in steps])
    obj = np.array([s["obj"] for s in steps])
    dist = np.linalg.norm(eef - obj, axis=1)
    rise = obj[:, 2] - obj[0, 2]
    closing = np.array([bool(s.get("action")) and s["action"][-1] > 0 for s in steps])
    near = dist < REACH_M
    out = {"min_dist_m": round(float(dist.min()), 4), "max_rise_m": round(float(rise.max()), 4),
           "first_reach": _first(near, steps), "first_close_near": _first(near & closing, steps)}
    if rise.max() >= LIFT_M:  # lifted, wherever the hand held it (a can grasped high is > REACH_M off)
        mode = "lifted_dropped" if rise[-1] < LIFT_M else "lifted_not_placed"
    elif not near.any():
        mode = "not_reached"
    elif not (near & closing).any():
        mode = "not_grasped"
    else:
        mode = "not_lifted"
    out["mode"] = mode
    return out


def _first(mask: np.ndarray, steps) -> Optional[int]:
    idx = np.flatnonzero(mask)
    return int(steps[idx[0]]["step"]) if len(idx) else None


def failure_modes(episodes: Iterable[Tuple[Optional[str], bool]]) -> Dict[str, Any]:
    """(trace path, success) per episode -> the failed episodes' traces classified:
    {"counts": {mode: n}, "episodes": [header + classify + "trace"]} (episodes without a trace skipped)."""
    rows = []
    for path, ok in episodes:
        if ok or path is None:
            continue
        tr = read_trace(path)
        rows.append({**tr["header"], **classify(tr["steps"]), "trace": str(path)})
    counts = Counter(r["mode"] for r in rows)
    return {"counts": {m: counts.get(m, 0) for m in MODES}, "episodes": rows}


def format_failure_modes(fm: Mapping[str, Any]) -> str:
    n = len(fm["episodes"])
    lines = [f"failure modes of {n} failed episodes (traces): "
             + ", ".join(f"{m} {c}" for m, c in fm["counts"].items())]
    for r in fm["episodes"]:
        where = f"demo {r['demo']}" if "demo" in r else f"seed {r.get('seed')}"
        lines.append(f"  {r['split']} {where}: {r['mode']} (closest {r['min_dist_m'] * 100:.1f} cm, "
                     f"rise {r['max_rise_m'] * 100:.1f} cm, at object from step {r['first_reach']}, "
                     f"first close there {r['first_close_near']})")
    return "\n".join(lines)
