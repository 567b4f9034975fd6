"""Training: config + presets, EMA, LR schedule, resumable checkpoints, logs, the trainer, `dp-fast train`.

Heavy imports (torch) happen in the submodules; `dp_fast.train.cli` stays importable without them.
"""
