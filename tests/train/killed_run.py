"""`python -m tests.train.killed_run KILL train ARGS...`: `dp-fast train ARGS...` that SIGKILLs itself.

KILL is one of
  step:N   right after batch N (global step N) was trained, before anything of it reached the disk
           (its loss row, a checkpoint of that step);
  save:N   during the N-th resume-state write of this process: the temporary file is complete, the
           rename onto latest.train.pt has not happened;
  raise:N  like step:N, but a RuntimeError is raised instead of the SIGKILL;
followed by @R to act only in the process of torchrun rank R (RANK), e.g. step:7@1.

The kill is patched into this process only (Trainer.train_batch, os.replace); dp_fast itself has no
test hook. Used by test_resume.py to prove that a SIGKILLed run resumes exactly.
"""
import os
import signal
import sys
from pathlib import Path

from dp_fast.cli import main
from dp_fast.train.resume import LATEST_STATE
from dp_fast.train.trainer import Trainer


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill: str) -> None:
    kill, _, rank = kill.partition("@")
    if rank and int(rank) != int(os.environ.get("RANK", "0")):
        return
    event, n = kill.split(":")
    n = int(n)
    if event in ("step", "raise"):
        train_batch = Trainer.train_batch

        def train_batch_then_die(self, idx):
            loss = train_batch(self, idx)
            if self.global_step + 1 == n:  # the loop counts the batch after train_batch returns
                if event == "raise":
                    raise RuntimeError(f"killed_run: raised at step {n}")
                _die()
            return loss

        Trainer.train_batch = train_batch_then_die
    elif event == "save":
        replace, count = os.replace, [0]

        def replace_or_die(src, dst, *args, **kwargs):
            if Path(dst).name == LATEST_STATE:
                count[0] += 1
                if count[0] == n:
                    _die()
            return replace(src, dst, *args, **kwargs)

        os.replace = replace_or_die  # atomic_file.atomic_write looks it up on every write
    else:
        raise SystemExit(f"unknown kill {kill!r}: expected step:N, save:N or raise:N (optionally @RANK)")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
