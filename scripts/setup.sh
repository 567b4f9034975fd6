# Sourced by scripts/test.sh and scripts/demo.sh: the project's .venv with CPU torch, triton and dp_fast
# installed editable with its C++ extension. Defines setup_venv, install_project and pip_install.
#
# Environment:
#   PYTHON                          interpreter for a new .venv (default python3)
#   DP_FAST_TORCH / DP_FAST_TRITON  pins (default torch==2.13.0, triton==3.6.0: CPU torch; the Triton
#                                   version of the GPU machines)
#   DP_FAST_EXTRAS                  extras to install (default dev,triton,sim,lerobot,track,export: tests, Triton
#                                   interpreter, robosuite + mujoco for the simulation tests and the demo, PyAV +
#                                   pyarrow for LeRobot datasets and their tests, wandb + tensorboard for
#                                   logging.backend and the tracker tests, onnx + onnxscript for dp-fast export)
PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_SPEC=${DP_FAST_TORCH:-torch==2.13.0}
TRITON_SPEC=${DP_FAST_TRITON:-triton==3.6.0}
DP_FAST_EXTRAS=${DP_FAST_EXTRAS:-dev,triton,sim,lerobot,track,export}

pip_install() {  # pip's warnings about index directories that lack a package are noise here
  "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || return 1
  fi
  # torch first: with it installed, the project's `torch>=2.4` does not pull a CUDA build.
  pip_install "$TORCH_SPEC" "$TRITON_SPEC" "setuptools>=70.1" ninja
}

install_project() {
  pip_install --no-build-isolation -e ".[$DP_FAST_EXTRAS]"
}


# For the end-to-end scripts (demo.sh, task.sh): timestamped phase headers, the venv set up and the
# project installed, and the device torch sees.
SETUP_T0=$(date +%s)
stamp() { echo; echo "==> [$(( $(date +%s) - SETUP_T0 )) s] $*"; }

setup_and_install() {
  stamp "venv + torch + triton"; setup_venv
  stamp "install (builds dp_fast._C; extras $DP_FAST_EXTRAS)"; install_project
}

default_device() {
  "$VENV/bin/python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")'
}
