"""`python -m tests.train.rank_guard OUT ARGS...`: `dp-fast ARGS...` in which every process but torchrun's
rank 0 exits at once (status 97) if it creates, writes, renames, truncates or removes anything under OUT.

Python's audit hooks see every file operation made through Python (open, os.open, os.mkdir, os.replace,
os.remove, os.truncate, ...). Used by test_distributed.py: rank 0 alone writes a run's folder.
"""
import os
import sys
from pathlib import Path

from dp_fast.cli import main

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"os.mkdir": (0,), "os.rename": (0, 1), "os.replace": (0, 1), "os.remove": (0,), "os.rmdir": (0,),
          "os.truncate": (0,), "os.chmod": (0,), "os.link": (0, 1), "os.symlink": (1,), "shutil.rmtree": (0,)}


def install(out: Path) -> None:
    out = out.resolve()

    def under(p) -> bool:
        if isinstance(p, int):
            return False
        try:
            return Path(os.fsdecode(p)).resolve().is_relative_to(out)
        except (TypeError, ValueError):
            return False

    def hook(event, args):
        paths = ()
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS)
            paths = (path,) if writing else ()
        elif event in EVENTS:
            paths = tuple(args[i] for i in EVENTS[event] if i < len(args))
        for p in paths:
            if under(p):
                # exit at once: an exception could be caught (Path.mkdir(exist_ok=True) swallows OSErrors)
                sys.stderr.write(f"rank_guard: rank {os.environ.get('RANK')} wrote ({event}) {p!r} under {out}\n")
                sys.stderr.flush()
                os._exit(97)

    sys.addaudithook(hook)


if __name__ == "__main__":
    if os.environ.get("RANK", "0") != "0":
        install(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
