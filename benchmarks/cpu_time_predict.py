"""CPU time of predict_action (seed configuration, B=1, 1 thread) in a given checkout, for comparing two
commits on a shared machine, where wall time is too noisy (benchmarks/RESULTS.md, "One inference path").

    git worktree add /tmp/old <commit>; cp dp_fast/_C*.so /tmp/old/dp_fast/   # same extension binary
    python benchmarks/cpu_time_predict.py /tmp/old; python benchmarks/cpu_time_predict.py .

Prints {row: [min CPU ms, sum of |action|]}: the second number must agree between the checkouts.
"""
import json
import sys
import time
from pathlib import Path

ROOT = str(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import dp_fast  # noqa: E402
from dp_fast import DiffusionPolicy, PolicyConfig, SchedulerConfig  # noqa: E402

assert dp_fast.__file__.startswith(ROOT), f"imported {dp_fast.__file__}, not the checkout {ROOT}"
torch.set_num_threads(1)
CONFIGS = {"ddpm100": PolicyConfig(),
           "ddim10": PolicyConfig(num_inference_steps=10, scheduler=SchedulerConfig(kind="ddim"))}
out = {}
for name, cfg in CONFIGS.items():
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        policy = DiffusionPolicy(cfg, backend=backend).eval()
        g = torch.Generator().manual_seed(0)
        obs = {k: (torch.randint(0, 256, (1, 2, *m["shape"]), generator=g, dtype=torch.uint8)
                   if m.get("type") == "rgb" else torch.randn(1, 2, *m["shape"], generator=g))
               for k, m in cfg.shape_meta["obs"].items()}
        noise = torch.randn(policy.noise_draws(), 1, cfg.horizon, cfg.action_dim, generator=g)
        with torch.no_grad():
            policy.predict_action(obs, noise=noise)  # warm-up: packing, caches
            times = []
            for _ in range(5 if backend == "cpu" else 2):
                t0 = time.process_time()
                action = policy.predict_action(obs, noise=noise)["action"]
                times.append(time.process_time() - t0)
        out[f"{name}_{backend}"] = [round(min(times) * 1e3, 1), float(action.abs().sum())]
print(json.dumps(out))
