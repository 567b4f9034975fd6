#!/usr/bin/env bash
# The main job on a small default: set up .venv (as scripts/test.sh does), then `dp-fast demo`:
# load the original-format diffusion_policy checkpoint recorded in ../shared/fixtures (when this
# checkout has it; otherwise the seed configuration with random weights), predict an action chunk
# with each available backend, check them against the recorded actions of the original code and
# print them with their latency.
#
#   bash scripts/demo.sh [dp-fast demo args...]     e.g. --batch 8 --repeats 5
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
echo "==> venv + torch + triton"; setup_venv
echo "==> install (builds dp_fast._C)"; install_project
ARGS=()
for dir in "${DP_FAST_FIXTURES:-}" ../shared/fixtures /work/shared/fixtures; do
  if [ -n "$dir" ] && [ -f "$dir/dp_variant_ckpt/variant.ckpt.zst" ]; then
    ARGS=(--checkpoint "$dir/dp_variant_ckpt/variant.ckpt.zst" --expected "$dir/dp_variant_ckpt/variant_expected.pt")
    break
  fi
done
echo "==> dp-fast demo ${ARGS[*]} $*"
exec "$VENV/bin/dp-fast" demo "${ARGS[@]}" "$@"
