"""Training: config + presets, EMA, LR schedule, resumable checkpoints, logs, the trainer, `dp-fast train`."""
