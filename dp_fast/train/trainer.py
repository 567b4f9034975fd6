"""The training loop of the original TrainDiffusionTransformerHybridWorkspace, resumable at any batch.

Per batch: loss = compute_loss(batch) / gradient_accumulate_every, backward, an optimizer step + LR
step every gradient_accumulate_every batches, an EMA update every batch (as the original), a row in
OUT/steps.jsonl. Per epoch (epoch counted from 0, `epoch % every == 0` as the original), with the EMA
policy in eval mode: rollouts, validation loss, action MSE on the last training batch, top-k
checkpoint; then a row in OUT/logs.jsonl, OUT/curves.png (curves.py), and the resume checkpoint.
Before each checkpoint write the new rows go to the experiment tracker chosen by logging.backend
(tracker.py), so that the tracker holds what the checkpoint holds.
Under torchrun (distributed.py) the model is wrapped in DistributedDataParallel: every rank takes its
shard of each global batch (dataloader.batch_size per rank) with its slice of the batch's random numbers,
and only rank 0 evaluates, writes logs, curves, checkpoints and the tracker (docs/distributed.md).
Differences from the original, on purpose:
  * the optimizer steps after batches acc-1, 2acc-1, ... (the original steps after batch 0, acc, ...);
  * the LR schedule's length counts batches actually run (max_train_steps per epoch, max_total_steps);
  * the resume checkpoint is also written every checkpoint_every_steps batches and at every epoch end.
"""
from __future__ import annotations

import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data import BatchIterator, RobomimicImageDataset
from ..data.formats import dataset_shape_meta, load_dataset
from ..data.frames import with_image_size
from ..policy import DiffusionPolicy
from .build import compile_for_training, make_optimizer
from .config import TrainConfig, policy_config_for
from .console import TrainConsole
from .curves import plot_curves
from .distributed import rank_seed, setup, slice_draws
from .ema import EMAModel
from .log import JsonLinesLog
from .lr import LRSchedule
from .resume import CheckpointManager, rng_state, set_rng_state
from .rollouts import find_runner, rollout_row
from .tracker import Tracker, TrackerState, check_available, open_tracker, send_rows


# batch losses are read back from the device (one sync) every this many batches, and at every save
LOSS_READBACK_EVERY = 25


class _Loss(torch.nn.Module):
    """compute_loss as a module's forward, for DistributedDataParallel (which hooks forward)."""

    def __init__(self, policy: DiffusionPolicy, backend: Optional[str]):
        super().__init__()
        self.policy, self.backend = policy, backend

    def forward(self, batch, draws):
        return self.policy.compute_loss(batch, backend=self.backend, **draws)


def _to(batch, device):
    return {"obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
            "action": batch["action"].to(device, non_blocking=True)}


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir, quiet: bool = False):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.quiet = quiet
        if cfg.task.dataset_path is None:
            raise ValueError("no dataset: pass --dataset FILE.hdf5 (or task.dataset_path=...)")
        check_available(cfg.logging.backend)
        t = cfg.training
        if t.num_threads is not None:
            torch.set_num_threads(t.num_threads)
        # torchrun's ranks (world_size 1 without torchrun); every rank seeds alike: the random numbers of
        # each global batch are drawn whole on every rank (train_batch)
        self.dist, self.device = setup(t.device, t.dist_timeout_minutes)
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)

        path = cfg.task.dataset_path
        # a robomimic hdf5 file or a LeRobot v3.0 folder (dp_fast.data.formats tells them apart)
        shape_meta = with_image_size(cfg.task.fixed_shape_meta or dataset_shape_meta(path, cfg.task.obs_keys),
                                     cfg.task.image_size)
        self.policy_config = policy_config_for(cfg, shape_meta)
        pc = self.policy_config
        data_device = self.device if cfg.task.gpu_resident else torch.device("cpu")
        buffer = load_dataset(path, shape_meta, device=data_device, resize=cfg.task.image_size is not None)
        self.env_args = buffer.env_args
        self.dataset = RobomimicImageDataset.from_policy_config(
            path, pc, val_ratio=cfg.task.val_ratio, seed=cfg.task.seed, max_train_episodes=cfg.task.max_train_episodes,
            device=data_device, action_norm=cfg.task.action_norm, buffer=buffer)
        self.val_dataset = self.dataset.get_validation_dataset()
        if len(self.dataset) == 0:
            raise ValueError(f"{path}: no training windows (episodes shorter than the horizon?)")

        self.policy = DiffusionPolicy(pc)
        self.policy.set_normalizer(self.dataset.get_normalizer())
        # the loss's crop and forward noising: the policy's resolved ops, or plain PyTorch (the default)
        self.loss_backend = None if t.use_fast_ops else "reference"
        self.policy.to(self.device)
        if t.channels_last:
            self.policy.obs_encoder.to(memory_format=torch.channels_last)
        self.ema = None
        if t.use_ema:
            e = cfg.ema
            self.ema = EMAModel(self.policy, e.update_after_step, e.inv_gamma, e.power, e.min_value, e.max_value)
        self.optimizer = make_optimizer(self.policy, cfg)
        self._group_hparams = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]

        dl = cfg.dataloader
        # dataloader.batch_size is per rank (as the DataLoader's under DDP): the global batch is world_size times it
        self.batches = BatchIterator(len(self.dataset), dl.batch_size * self.dist.world_size, shuffle=dl.shuffle,
                                     seed=t.seed, drop_last=dl.drop_last)
        n = len(self.batches)
        self.steps_per_epoch = min(n, t.max_train_steps) if t.max_train_steps is not None else n
        total_batches = self.steps_per_epoch * t.num_epochs
        if t.max_total_steps is not None:
            total_batches = min(total_batches, t.max_total_steps)
        self.total_batches = total_batches
        self.lr_schedule = LRSchedule(self.optimizer, t.lr_scheduler, t.lr_warmup_steps,
                                      total_batches // t.gradient_accumulate_every)

        # rank 0 alone touches the output folder
        self.step_log = JsonLinesLog(self.out / "steps.jsonl") if main else None
        self.epoch_log = JsonLinesLog(self.out / "logs.jsonl") if main else None
        monitor, mode = cfg.checkpoint.topk.monitor_key, cfg.checkpoint.topk.mode
        self._rollout_fn, self.rollout_skip_reason = find_runner(t.rollout_every, self.env_args)
        if monitor == "auto":
            monitor = "test_mean_score" if self._rollout_fn is not None else "val_loss"
        if mode == "auto":
            mode = "max" if "score" in monitor else "min"
        self.ckpt = CheckpointManager(self.out, monitor, mode, cfg.checkpoint.topk.k) if main else None

        self.epoch = 0
        self.global_step = 0
        self.batch_in_epoch = 0
        self.epoch_losses: List[float] = []
        # (global_step, epoch, lr, loss tensor) of batches whose loss is not read back yet: reading it
        # every batch would make the host wait for the device each step (see _flush_losses)
        self._pending: List[tuple] = []
        self.last_batch_idx: Optional[torch.Tensor] = None
        self.resumed_from: Optional[int] = None
        # the tracker is open while run() runs; tracker_state says what it was sent (kept in the checkpoint)
        self.tracker: Optional[Tracker] = None
        self.tracker_state: Optional[TrackerState] = None
        self.console = TrainConsole(quiet or not main)
        # rank 0 reads the resume state and hands it to the others (no shared filesystem needed)
        state = self.ckpt.load_state() if main and t.resume and self.ckpt.has_state() else None
        state = self.dist.broadcast(state)
        if state is not None:
            self._load(state)
        elif main:
            if not t.resume:
                self.ckpt.clear()
            # a fresh start, in a folder that may hold logs of a run without checkpoint
            self.step_log.truncate(0)
            self.epoch_log.truncate(0)

        if t.compile:
            compile_for_training(self.policy)
        self.ddp: Optional[torch.nn.Module] = None
        if self.dist.enabled:
            # the parameters are equal on every rank already (same seed, same resume state)
            # obs as inpainting (policy.obs_as_cond=False) detaches the features, as the original does: the
            # obs encoder then gets no gradient, which DDP must be told of
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                _Loss(self.policy, self.loss_backend), device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=not self.policy_config.obs_as_cond)

    # ------------------------------------------------------------------ state
    def _state(self) -> Dict[str, Any]:
        return {
            "format": "dp_fast_train/1",
            "policy_config": self.policy_config.to_dict(),
            "model": self.policy.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            # gradients accumulated towards the next optimizer step (gradient_accumulate_every > 1)
            "grads": {n: p.grad.detach().cpu() for n, p in self.policy.named_parameters() if p.grad is not None},
            "lr_schedule": self.lr_schedule.state_dict(),
            "epoch": self.epoch, "global_step": self.global_step, "batch_in_epoch": self.batch_in_epoch,
            "epoch_losses": list(self.epoch_losses),
            "last_batch_idx": self.last_batch_idx,
            "batches": self.batches.state_dict(),
            "rng": rng_state(self.device),
            "world_size": self.dist.world_size,
            "log_offsets": {"steps": self.step_log.offset(), "logs": self.epoch_log.offset()},
            "tracker": self.tracker_state.to_dict() if self.tracker_state is not None else None,
        }

    def _load(self, s: Dict[str, Any]) -> None:
        where = self.out / "checkpoints"
        if s["policy_config"] != self.policy_config.to_dict():
            raise ValueError(f"{where}: the checkpoint's policy config differs from this run's; "
                             f"use the same settings, another --out, or training.resume=False")
        saved_world = int(s.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise ValueError(f"{where}: the checkpoint was written by a run of world_size {saved_world}, this run "
                             f"has {self.dist.world_size}; resume with {saved_world} process(es) (the global batch and "
                             f"the batch order depend on it), or start anew with another --out or training.resume=False")
        self.policy.load_state_dict(s["model"])
        if self.ema is not None and s["ema"] is not None:
            self.ema.load_state_dict(s["ema"])
        self.optimizer.load_state_dict(s["optimizer"])
        params = dict(self.policy.named_parameters())
        for n, g in s.get("grads", {}).items():
            params[n].grad = g.to(params[n].device)
        for g, hp in zip(self.optimizer.param_groups, self._group_hparams):
            g.update(hp)  # this run's lr / weight decay / betas, as the original rebuilds them
        self.lr_schedule.last_step = int(s["lr_schedule"]["last_step"])
        self.lr_schedule._apply()
        self.epoch, self.global_step = int(s["epoch"]), int(s["global_step"])
        self.batch_in_epoch = int(s["batch_in_epoch"])
        self.epoch_losses = [float(v) for v in s["epoch_losses"]]
        self.last_batch_idx = s["last_batch_idx"]
        self.batches.load_state_dict(s["batches"])
        if self.dist.is_main:
            self.step_log.truncate(int(s["log_offsets"]["steps"]))
            self.epoch_log.truncate(int(s["log_offsets"]["logs"]))
        set_rng_state(s["rng"], self.device)
        # checkpoints written before trackers existed hold no "tracker": a new tracker run gets everything
        saved = s.get("tracker")
        self.tracker_state = TrackerState.from_dict(saved) if saved is not None else None
        self.resumed_from = self.global_step

    def save(self) -> None:
        """Write the resume state and the EMA policy (rank 0; every rank calls it)."""
        self._flush_losses()
        if self.dist.enabled and self.global_step % self.cfg.training.gradient_accumulate_every != 0:
            # gradients accumulated under no_sync differ per rank; their mean continues the same (the
            # synchronising step averages the rest) and is the one state rank 0 can save for every rank
            self.dist.average_([p.grad for p in self.policy.parameters() if p.grad is not None])
        if self.dist.is_main:
            self._send_to_tracker()
            self.ckpt.save(self._state(), self.eval_policy)

    # ------------------------------------------------------------------ tracker
    def _open_tracker(self) -> None:
        if not self.dist.is_main:
            return
        self.tracker, self.tracker_state = open_tracker(self.cfg.logging, self.out, self.cfg.to_dict(),
                                                        self.tracker_state)

    def _send_to_tracker(self) -> None:
        """Send the rows written since the last send (tracker.py: before the checkpoint that records it)."""
        if self.tracker is None:
            return
        st = self.tracker_state
        last = send_rows(self.tracker, self.out, self.step_log.rows(st.offsets["steps"]),
                         self.epoch_log.rows(st.offsets["logs"]))
        st.offsets = {"steps": self.step_log.offset(), "logs": self.epoch_log.offset()}
        if last is not None:
            st.step = last

    def _close_tracker(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def _flush_losses(self) -> Optional[float]:
        """Read the pending losses back in one transfer, log their rows; returns the last loss."""
        if not self._pending:
            return None
        # each rank holds its share of every global batch's loss: their sum is the batch's loss
        values = self.dist.sum_(torch.stack([p[3] for p in self._pending]).float()).cpu().tolist()
        for (step, epoch, lr, _), loss in zip(self._pending, values):
            self.epoch_losses.append(loss)
            if self.dist.is_main:
                self.step_log.write({"global_step": step, "epoch": epoch, "train_loss": loss, "lr": lr})
        self._pending = []
        return values[-1]

    @property
    def eval_policy(self) -> DiffusionPolicy:
        return self.ema.averaged_model if self.ema is not None else self.policy

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.cfg.training.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def loss(self, policy, batch) -> torch.Tensor:
        return policy.compute_loss(batch, backend=self.loss_backend)

    def _stop_reason(self, t0: Optional[float]) -> Optional[str]:
        """Why to stop now, if at all; t0=None checks the step budget only (every run trains >= 1 batch)."""
        t = self.cfg.training
        if t.max_total_steps is not None and self.global_step >= t.max_total_steps:
            return f"training.max_total_steps={t.max_total_steps} reached"
        if t0 is not None and t.max_train_minutes is not None:
            # the ranks' clocks differ: they stop together when any of them is out of time
            if self.dist.any(time.monotonic() - t0 >= 60.0 * t.max_train_minutes):
                return f"training.max_train_minutes={t.max_train_minutes} reached"
        return None

    def train_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """One global batch; returns this rank's share of its (undivided) loss as a 0-d tensor on the
        device, not read back (single process: the loss)."""
        acc = self.cfg.training.gradient_accumulate_every
        sync = (self.global_step + 1) % acc == 0
        if self.dist.enabled:
            share = self._ddp_backward(idx, acc, sync)
        else:
            batch = _to(self.dataset.get_batch(idx), self.device)
            with self._autocast():
                share = self.loss(self.policy, batch)
            (share / acc).backward()
            share = share.detach()
        if sync:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.lr_schedule.step()
        if self.ema is not None:
            self.ema.step(self.policy)
        return share

    def _ddp_backward(self, idx: torch.Tensor, acc: int, sync: bool) -> torch.Tensor:
        """This rank's forward / backward of its shard of the global batch `idx`. The batch's crops, noise
        and timesteps are drawn whole (the same numbers on every rank and as one process would draw) and
        sliced; dropout draws from a stream of this rank's own. The loss is weighted by the shard's size
        so that DDP's mean of the ranks' gradients is the gradient of the global batch's mean loss (a rank
        whose shard is empty runs one sample at weight 0: every rank must join the all-reduce)."""
        t, n_all = self.cfg.training, len(idx)
        local, start = self.dist.shard(idx)
        n = len(local)
        if n == 0:
            local, start = idx[:1], 0
        draws = slice_draws(self.policy.loss_draws(n_all), n_all, start, max(n, 1))
        batch = _to(self.dataset.get_batch(local), self.device)
        cuda = [self.device] if self.device.type == "cuda" else []
        with self.ddp.no_sync() if not sync else nullcontext():
            with torch.random.fork_rng(devices=cuda):
                seed = rank_seed(t.seed, self.global_step, self.dist.rank)
                torch.default_generator.manual_seed(seed)
                if cuda:
                    torch.cuda.manual_seed(seed)
                with self._autocast():
                    loss = self.ddp(batch, draws)
            (loss * (n * self.dist.world_size / n_all / acc)).backward()
        return loss.detach() * (n / n_all)

    def run(self) -> Dict[str, Any]:
        """Train to the end or to a budget; the experiment tracker is open meanwhile. Returns the last
        epoch row with epoch, global_step, stopped (the reason, or None) and seconds."""
        t0 = time.monotonic()
        self._open_tracker()
        try:
            result = self._run(t0)
        finally:
            self._close_tracker()
        # after a success only: a failing rank must exit (torchrun then stops the others), not wait here
        self.dist.close()
        return {**result, "seconds": time.monotonic() - t0}

    def _run(self, t0: float) -> Dict[str, Any]:
        t = self.cfg.training
        self.policy.train()
        last_row: Dict[str, Any] = {}
        stop = self._stop_reason(None)
        # one bar for the whole run (the batches this configuration trains in all), its postfix the
        # latest epoch, loss and evaluation numbers
        self.console.open(self.total_batches, self.global_step, t.tqdm_interval_sec, disable=stop is not None)
        try:
            while self.epoch < t.num_epochs and stop is None:
                self.console.show(epoch=str(self.epoch))
                epoch_t0, epoch_b0 = time.monotonic(), self.batch_in_epoch
                it = iter(self.batches)
                while self.batch_in_epoch < self.steps_per_epoch:
                    idx = next(it)
                    lr = self.lr_schedule.get_last_lr()[0]
                    loss = self.train_batch(idx)
                    self.global_step += 1
                    self.batch_in_epoch += 1
                    self._pending.append((self.global_step, self.epoch, lr, loss))
                    self.last_batch_idx = idx
                    if len(self._pending) >= LOSS_READBACK_EVERY:
                        self.console.show(loss=f"{self._flush_losses():.4f}", lr=f"{lr:.2e}")
                    self.console.update()
                    stop = self._stop_reason(t0)
                    if stop is not None:
                        break
                    every = t.checkpoint_every_steps
                    if every and self.global_step % every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                        self.save()
                if stop is not None and self.batch_in_epoch < self.steps_per_epoch:
                    break
                if self.batches.position != 0:  # max_train_steps cut the epoch short: next epoch starts fresh
                    self.batches.load_state_dict(dict(self.batches.state_dict(), epoch=self.batches.epoch + 1,
                                                      position=0))
                dt = time.monotonic() - epoch_t0
                last_row = self.end_epoch(steps_per_s=(self.batch_in_epoch - epoch_b0) / max(dt, 1e-9))
                stop = stop or self._stop_reason(t0)
            if stop is not None:
                self.save()
                if self.dist.is_main:
                    self.plot()
                    self.epoch_log.write({"event": "stopped", "reason": stop, "epoch": self.epoch,
                                          "global_step": self.global_step, "world_size": self.dist.world_size})
        finally:
            self.console.close()
        return {**last_row, "epoch": self.epoch, "global_step": self.global_step, "stopped": stop}

    @torch.no_grad()
    def _val_loss(self, policy) -> Optional[float]:
        if len(self.val_dataset) == 0:
            return None
        vd = self.cfg.val_dataloader
        val_batches = BatchIterator(len(self.val_dataset), vd.batch_size, shuffle=vd.shuffle,
                                    seed=self.cfg.training.seed, drop_last=vd.drop_last)
        losses = []
        for i, idx in enumerate(val_batches):
            if self.cfg.training.max_val_steps is not None and i >= self.cfg.training.max_val_steps:
                break
            with self._autocast():
                losses.append(float(self.loss(policy, _to(self.val_dataset.get_batch(idx), self.device))))
        return float(np.mean(losses)) if losses else None

    @torch.no_grad()
    def _action_mse(self, policy) -> Optional[float]:
        if self.last_batch_idx is None:
            return None
        batch = _to(self.dataset.get_batch(self.last_batch_idx), self.device)
        pred = policy.predict_action(batch["obs"])["action_pred"]  # the policy's own inference precision
        return float(F.mse_loss(pred.float(), batch["action"]))

    def end_epoch(self, steps_per_s: float) -> Dict[str, Any]:
        self._flush_losses()
        row: Dict[str, Any] = {"epoch": self.epoch, "global_step": self.global_step,
                               "train_loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else None,
                               "lr": self.lr_schedule.get_last_lr()[0], "steps_per_s": steps_per_s,
                               "world_size": self.dist.world_size}
        if self.dist.is_main:
            self._evaluate(row)
        if self.dist.enabled:
            # the others wait while rank 0 evaluates (at most training.dist_timeout_minutes), then take its
            # RNG state: evaluation drew from it, and every rank must draw the next batches alike
            self.dist.barrier()
            set_rng_state(self.dist.broadcast(rng_state(self.device)), self.device)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_losses = []
        self.save()
        return row

    def _evaluate(self, row: Dict[str, Any]) -> None:
        """The epoch's evaluation into `row`, the row to logs.jsonl, the console and the curves (rank 0)."""
        t = self.cfg.training
        policy = self.eval_policy
        policy.eval()
        due = lambda every: every > 0 and self.epoch % every == 0  # noqa: E731
        if due(t.rollout_every):
            row.update(rollout_row(self._rollout_fn, policy, self.cfg, self.out, self.epoch, not self.quiet,
                                   self.console.say) if self._rollout_fn is not None
                       else {"rollout_skipped": self.rollout_skip_reason})
        if due(t.val_every):
            row["val_loss"] = self._val_loss(policy)
        if due(t.sample_every):
            row["train_action_mse_error"] = self._action_mse(policy)
        if due(t.checkpoint_every):
            saved = self.ckpt.update_topk(self.epoch, row, policy)
            if saved:
                row["topk_saved"] = saved
        self.policy.train()
        self.epoch_log.write(row)
        self.console.report_epoch(row)
        self.plot()

    def plot(self) -> None:
        plot_curves(self.out / "curves.png", self.step_log.rows(), self.epoch_log.rows(), title=str(self.out))
