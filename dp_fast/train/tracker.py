"""Experiment trackers: the rows of OUT/steps.jsonl and OUT/logs.jsonl sent to Weights & Biases or TensorBoard.

`logging.backend` picks one: `none` (the default: the JSON lines only, which are always written), `wandb`
or `tensorboard`. The other `logging.*` keys are those of the original workspace's wandb section
(project, name, mode, tags, group, id, resume); wandb honours all of them, TensorBoard none but resume.
wandb and TensorBoard are the optional `track` extra and are imported only when chosen.

What a tracker receives (`tracked_rows`), with the global step as its step:
  * every number of a logs.jsonl row under the row's own key (epoch, train_loss, lr, val_loss,
    train_action_mse_error, test_mean_score, test_success_rate, ...), so the tracker and logs.jsonl hold
    the same values under the same names;
  * every number of a steps.jsonl row under `batch/<key>` (batch/train_loss, batch/lr);
  * the rollout videos listed in a row's `video_paths` (relative to OUT) under `rollout/<file stem>`:
    wandb gets the mp4, TensorBoard the still PNG written next to it (its add_video needs moviepy).

When: the trainer sends the rows written since the last send right before it writes a checkpoint, and
the checkpoint records what was sent (`TrackerState`: backend, run id, the two files' offsets, the last
step). A tracker therefore holds what the checkpoint holds: after a kill the resumed run sends the rows
it replays once. The run continues (logging.resume=True, the same backend): wandb with the run id kept in
the checkpoint (logging.id when given), TensorBoard in OUT/tensorboard with purge_step = last sent step
+ 1, so that events a killed run wrote after its checkpoint are dropped by TensorBoard's reader. Otherwise
a new run starts and receives the whole history in the files. A kill between a send and the checkpoint
write (milliseconds) leaves rows that the resumed run sends again: TensorBoard drops the first copies
(purge_step); a wandb run may hold those few steps twice (online, wandb ignores rows whose step is lower
than the run's current step).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..sim.video import still_path

BACKENDS = ("none", "wandb", "tensorboard")
WANDB_MODES = ("online", "offline", "disabled")
# the module each backend needs, and the pip package that brings it
_NEEDS = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}


@dataclass
class TrackerState:
    """What the checkpoint records about the tracker (see module doc)."""
    backend: str = "none"
    run_id: Optional[str] = None
    offsets: Dict[str, int] = field(default_factory=lambda: {"steps": 0, "logs": 0})
    step: int = 0  # the last global step sent (0: nothing yet)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrackerState":
        return cls(backend=str(d["backend"]), run_id=d.get("run_id"),
                   offsets={k: int(v) for k, v in d["offsets"].items()}, step=int(d["step"]))


def check_available(backend: str) -> None:
    """ValueError naming the missing package when `backend` cannot be used here (nothing is imported)."""
    if backend not in _NEEDS:
        return
    module, package = _NEEDS[backend]
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"logging.backend={backend} needs the {package} package, which is not installed: "
                         f"pip install 'dp-fast[track]' (or logging.backend=none)")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or not math.isnan(v))


def tracked_rows(step_rows: Sequence[Mapping[str, Any]], epoch_rows: Sequence[Mapping[str, Any]]
                 ) -> List[Tuple[int, Dict[str, float], List[str]]]:
    """(step, scalars, video paths) in step order (a step's batch row before its epoch row): see module doc.
    Rows without a global_step (events) are skipped; NaN values too (nothing to draw)."""
    out = []
    for order, rows, prefix in ((0, step_rows, "batch/"), (1, epoch_rows, "")):
        for r in rows:
            if "global_step" not in r or "event" in r:
                continue
            skip = ("global_step", "epoch") if prefix else ("global_step",)
            scalars = {prefix + k: float(v) for k, v in r.items() if k not in skip and _number(v)}
            out.append((int(r["global_step"]), order, scalars, list(r.get("video_paths") or [])))
    out.sort(key=lambda t: (t[0], t[1]))
    return [(step, scalars, videos) for step, _, scalars, videos in out]


class Tracker:
    """The `none` backend, and the interface of the others."""
    backend = "none"
    run_id: Optional[str] = None

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        pass

    def log_video(self, key: str, path: Path, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class WandbTracker(Tracker):
    backend = "wandb"

    def __init__(self, section, out_dir: Path, config: Mapping[str, Any], run_id: Optional[str]):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(project=section.project, name=section.name, tags=list(section.tags) or None,
                              group=section.group, id=run_id, resume="allow" if run_id else None,
                              mode=section.mode, dir=str(out_dir), config=dict(config))
        self.run_id = self.run.id

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        if scalars:
            self.run.log(dict(scalars), step=step)

    def log_video(self, key: str, path: Path, step: int) -> None:
        if path.suffix == ".mp4" and path.is_file():
            self.run.log({key: self._wandb.Video(str(path), format="mp4")}, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardTracker(Tracker):
    backend = "tensorboard"

    def __init__(self, log_dir: Path, purge_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, global_step=step)

    def log_video(self, key: str, path: Path, step: int) -> None:
        from matplotlib.image import imread

        still = still_path(path)
        if still.is_file():
            self.writer.add_image(key, imread(still)[..., :3], global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(section, out_dir, config: Mapping[str, Any], saved: Optional[TrackerState]
                 ) -> Tuple[Tracker, TrackerState]:
    """The tracker of `section` (the config's logging section) and the state to continue from: the saved
    one when it is the same backend and section.resume, else a fresh state (everything in the files is
    sent to a new run)."""
    out_dir = Path(out_dir)
    check_available(section.backend)
    if saved is not None and saved.backend == section.backend and section.resume:
        state = TrackerState.from_dict(saved.to_dict())
    else:
        state = TrackerState(backend=section.backend)
    if section.backend == "wandb":
        tracker: Tracker = WandbTracker(section, out_dir, dict(config, output_dir=str(out_dir)),
                                        section.id or state.run_id)
    elif section.backend == "tensorboard":
        tracker = TensorBoardTracker(out_dir / "tensorboard", purge_step=state.step + 1)
    else:
        tracker = Tracker()
    state.run_id = tracker.run_id
    return tracker, state


def send_rows(tracker: Tracker, out_dir, step_rows, epoch_rows) -> Optional[int]:
    """Log the rows (see tracked_rows) and flush; returns the last step sent (None: no rows)."""
    last = None
    for step, scalars, videos in tracked_rows(step_rows, epoch_rows):
        tracker.log(scalars, step)
        for v in videos:
            tracker.log_video(f"rollout/{Path(v).stem}", Path(out_dir) / v, step)
        last = step
    tracker.flush()
    return last
