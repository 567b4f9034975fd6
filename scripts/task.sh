#!/usr/bin/env bash
# One seed task end to end on this machine: demonstrations -> training -> evaluation, resuming when re-run.
#
#   bash scripts/task.sh can|square|lift
#
#   1. `dp-fast demos`: N scripted-expert demonstrations with recovery data (--perturb), both cameras at
#      SIZE px, in robomimic's hdf5 layout (skipped when the file exists);
#   2. `dp-fast train`: the task's CPU preset (cpu-can, cpu-square; cpu for lift) on TRAIN_THREADS threads,
#      or the seed configuration on a GPU (both 84x84 cameras, 8 x 256 transformer, DDPM 100); re-running
#      resumes from OUT/run/checkpoints/latest.* and stops at the preset's step count;
#   3. `dp-fast eval`: EPISODES test episodes from seeds 100000.. plus TRAIN_EPISODES episodes from the
#      dataset's initial states, max_steps 400 (the original's ph configs), ENVS worker processes; the
#      success rate with its 95% interval and the policy latency land in OUT/eval.json.
#
# Environment (all optional): OUT (default out/<task>), DP_FAST_TASK_DEVICE (cpu | cuda), DP_FAST_TASK_N
# (demonstrations, default 200), DP_FAST_TASK_PERTURB (default 0.3), DP_FAST_TASK_STEPS (training steps,
# default the preset's), TRAIN_THREADS (default 2), EPISODES (default 100), TRAIN_EPISODES (default 20),
# ENVS (default 2), EVAL_MAX_STEPS (default: the task's, 400), DP_FAST_TASK_SKIP_SETUP=1 (use the existing
# .venv as it is).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TASK=${1:?usage: bash scripts/task.sh can|square|lift}
case "$TASK" in lift|can|square) ;; *) echo "unknown task '$TASK' (lift, can, square)" >&2; exit 2 ;; esac
. scripts/setup.sh
OUT=${OUT:-out/$TASK}

if [ "${DP_FAST_TASK_SKIP_SETUP:-0}" != 1 ]; then
  setup_and_install
fi
PY="$VENV/bin/python"
DPF="$VENV/bin/dp-fast"
mkdir -p "$OUT"

DEVICE=${DP_FAST_TASK_DEVICE:-$(default_device)}
N=${DP_FAST_TASK_N:-200}
PERTURB=${DP_FAST_TASK_PERTURB:-0.3}
EPISODES=${EPISODES:-100}
TRAIN_EPISODES=${TRAIN_EPISODES:-20}
ENVS=${ENVS:-2}
if [ "$DEVICE" = cuda ]; then
  PRESET=seed; SIZE=84; TRAIN_ARGS=(training.device=cuda)
else
  PRESET=$([ "$TASK" = lift ] && echo cpu || echo "cpu-$TASK"); SIZE=48
  TRAIN_ARGS=(training.num_threads="${TRAIN_THREADS:-2}")
fi
if [ -n "${DP_FAST_TASK_STEPS:-}" ]; then TRAIN_ARGS+=(training.max_total_steps="$DP_FAST_TASK_STEPS"); fi
DATA="$OUT/$TASK.hdf5"
EVAL_ARGS=()
if [ -n "${EVAL_MAX_STEPS:-}" ]; then EVAL_ARGS+=(--max-steps "$EVAL_MAX_STEPS"); fi

if [ ! -f "$DATA" ]; then
  stamp "demonstrations: $N scripted $TASK episodes, both cameras at ${SIZE}x${SIZE}, perturb $PERTURB"
  "$DPF" demos --task "$TASK" --n "$N" --out "$DATA" --workers 2 --cameras robot0_eye_in_hand agentview \
    --image-size "$SIZE" --seed 0 --perturb "$PERTURB" --no-progress
fi

stamp "training: preset $PRESET on $DEVICE (resumes if $OUT/run has a checkpoint)"
"$DPF" train --dataset "$DATA" --out "$OUT/run" --preset "$PRESET" "${TRAIN_ARGS[@]}"

stamp "evaluation: $EPISODES test + $TRAIN_EPISODES train episodes, $ENVS envs"
"$DPF" eval --policy "$OUT/run/checkpoints/latest.safetensors" --task "$TASK" --dataset "$DATA" \
  --episodes "$EPISODES" --train-episodes "$TRAIN_EPISODES" --envs "$ENVS" --device "$DEVICE" \
  --video "$OUT/videos" --n-videos 2 --json "$OUT/eval.json" --no-progress ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"}

stamp "done: $OUT/eval.json, curves $OUT/run/curves.png, videos $OUT/videos/"
