#!/usr/bin/env bash
# The main job, end to end on a small default (README, first command):
#   0. set up .venv with the simulator extra (as scripts/test.sh does, plus robosuite + mujoco);
#   1. fidelity: load the original-format diffusion_policy checkpoint recorded in ../shared/fixtures (when
#      this checkout has it), check its actions against the original code's recorded ones, time backends;
#   2. `dp-fast demos`: scripted-expert demonstrations of robosuite Lift in robomimic's hdf5 layout;
#   3. `dp-fast train`: train the policy on them (CPU: the `cpu` preset; GPU: the seed configuration);
#   4. `dp-fast eval`: roll the trained policy out in parallel envs, print the success rate and the
#      policy latency, write videos.
# Outputs in $OUT (default out/demo): lift.hdf5, run/ (checkpoints/, logs.jsonl, curves.png), videos/,
# eval.json. Re-running resumes training where it stopped and regenerates nothing that exists.
#
#   bash scripts/demo.sh
#
# Environment (all optional):
#   OUT                      output folder (default out/demo)
#   DP_FAST_DEMO_DEVICE      cpu | cuda (default: cuda when torch sees a GPU, else cpu)
#   DP_FAST_DEMO_N           demonstrations (default 100)
#   DP_FAST_DEMO_PERTURB     recovery data: std of the push off the expert's path, action units (default
#                            0.3; 0 = the expert's plain runs); see `dp-fast demos --help`
#   DP_FAST_DEMO_STEPS       training steps (default: cpu 4800, cuda 20000)
#   DP_FAST_DEMO_BUDGET      CPU: the demo's minutes in all (default 20). Training stops (and checkpoints)
#                            when what is left of them is what the evaluation needs (~2.5 min), if its
#                            steps are not done by then: 4800 steps take ~11 min on a Zen 4 core pair,
#                            ~21 without AVX-512. Re-running the script continues the training.
#   DP_FAST_DEMO_EPISODES    evaluation episodes (default 50)
#   DP_FAST_DEMO_FIDELITY=0  skip step 1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
OUT=${OUT:-out/demo}

setup_and_install
PY="$VENV/bin/python"
DPF="$VENV/bin/dp-fast"
mkdir -p "$OUT"

DEVICE=${DP_FAST_DEMO_DEVICE:-$(default_device)}
N=${DP_FAST_DEMO_N:-100}
EPISODES=${DP_FAST_DEMO_EPISODES:-50}
PERTURB=${DP_FAST_DEMO_PERTURB:-0.3}
if [ "$DEVICE" = cuda ]; then
  # the seed configuration: both 84x84 cameras, 8 x 256 transformer, DDPM 100 steps
  PRESET=seed; STEPS=${DP_FAST_DEMO_STEPS:-20000}; CAMERAS=(agentview robot0_eye_in_hand); SIZE=84
  TRAIN_ARGS=(training.device=cuda)
else
  # sized for a 2-core CPU: the wrist camera at 48 px, narrow ResNet, 4 x 128 transformer, horizon 16, DDIM 10
  PRESET=cpu; STEPS=${DP_FAST_DEMO_STEPS:-4800}; CAMERAS=(robot0_eye_in_hand); SIZE=48
  TRAIN_ARGS=(training.num_threads="$("$PY" -c 'import os; print(min(2, os.cpu_count() or 1))')")
fi

if [ "${DP_FAST_DEMO_FIDELITY:-1}" != 0 ]; then
  for dir in "${DP_FAST_FIXTURES:-}" ../shared/fixtures /work/shared/fixtures; do
    if [ -n "$dir" ] && [ -f "$dir/dp_variant_ckpt/variant.ckpt.zst" ]; then
      stamp "fidelity: an original diffusion_policy checkpoint vs the original code's recorded actions"
      "$DPF" demo --checkpoint "$dir/dp_variant_ckpt/variant.ckpt.zst" \
        --expected "$dir/dp_variant_ckpt/variant_expected.pt" --workdir "$OUT/fidelity" --repeats 3
      break
    fi
  done
fi

if [ ! -f "$OUT/lift.hdf5" ]; then
  stamp "demonstrations: $N scripted Lift episodes, camera(s) ${CAMERAS[*]} at ${SIZE}x${SIZE}, perturb $PERTURB"
  "$DPF" demos --task lift --n "$N" --out "$OUT/lift.hdf5" --workers 2 --cameras "${CAMERAS[@]}" \
    --image-size "$SIZE" --seed 0 --perturb "$PERTURB"
fi

if [ "$DEVICE" = cpu ]; then
  # what is left of the budget once the evaluation's share (150 s) is kept back, at least 2 minutes
  LEFT=$(( ${DP_FAST_DEMO_BUDGET:-20} * 60 - ($(date +%s) - SETUP_T0) - 150 ))
  TRAIN_MIN=$(( LEFT > 120 ? LEFT / 60 : 2 ))
  TRAIN_ARGS+=(training.max_train_minutes="$TRAIN_MIN")
  stamp "training: preset $PRESET, $STEPS steps on $DEVICE, at most $TRAIN_MIN min (resumes if $OUT/run has a checkpoint)"
else
  stamp "training: preset $PRESET, $STEPS steps on $DEVICE (resumes if $OUT/run has a checkpoint)"
fi
"$DPF" train --dataset "$OUT/lift.hdf5" --out "$OUT/run" --preset "$PRESET" \
  training.max_total_steps="$STEPS" "${TRAIN_ARGS[@]}"

stamp "evaluation: $EPISODES Lift episodes from unseen seeds, 2 envs"
"$DPF" eval --policy "$OUT/run/checkpoints/latest.safetensors" --task lift --episodes "$EPISODES" --envs 2 \
  --device "$DEVICE" --video "$OUT/videos" --json "$OUT/eval.json"

stamp "done: training curves $OUT/run/curves.png, videos $OUT/videos/, metrics $OUT/eval.json"
