"""What a `SimEnv` is built from: robomimic-style env_args dicts and the robosuite import.

    make_env_args("can", image_size=84)   # {"env_name", "type", "env_version", "env_kwargs", "dp_fast"}

robosuite (and with it mujoco) is imported only when a function here needs it, so that `dp_fast.sim`
imports without the `sim` extra. Importing this module sets two things up for that import: MUJOCO_GL
(headless rendering) and the filter for robosuite's known import-time messages (`robosuite_log`).
"""
from __future__ import annotations

import copy
import json
import os
import platform
from typing import Any, Mapping, Optional, Sequence, Union

from . import robosuite_log
from .tasks import TASKS

if platform.system() == "Linux":
    # Headless by default. Must be set before mujoco / robosuite import an OpenGL backend.
    os.environ.setdefault("MUJOCO_GL", "egl")
# robosuite's known import-time messages (robosuite_log): filtered before it is first imported
robosuite_log.install()

DEFAULT_CAMERAS = ("agentview", "robot0_eye_in_hand")
# This package's settings, recorded in env_args["dp_fast"] (not robosuite kwargs; robomimic ignores them):
# - offsamples: multisampling of the offscreen buffer. robosuite's models ask for 4; 0 halves the render
#   time in software OpenGL (edges are not anti-aliased).
# - reflections: mujoco's reflection pass (the floor / table reflect the scene). Off halves the render
#   time again; at 84x84 the frames differ by ~0.2-1 intensity levels on average.
# - model_seed: seed of the env's construction, which draws the model itself (Lift's cube size), so
#   that every env built from the same env_args has the same model xml. Episodes are seeded
#   separately (`SimEnv.reset(seed)`).
# Images are only comparable between envs with the same settings: build evaluation envs from the
# env_args stored in the dataset.
DEFAULT_SETTINGS = {"offsamples": 0, "reflections": False, "model_seed": 0}


def robosuite_available() -> bool:
    try:
        import robosuite  # noqa: F401
    except Exception:
        return False
    return True


def import_robosuite():
    try:
        import robosuite
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "dp_fast.sim needs robosuite: pip install 'robosuite==1.5.2' 'mujoco>=3.3,<3.10' "
            "(or `pip install dp-fast[sim]`)") from e
    return robosuite


def env_name_for(task: str) -> str:
    """'lift' / 'can' / 'square' (or a robosuite env name) -> robosuite env name."""
    key = task.lower()
    if key in TASKS:
        return TASKS[key]
    for name in TASKS.values():
        if task == name:
            return name
    raise ValueError(f"unknown task {task!r}: expected one of {sorted(TASKS)} or {sorted(TASKS.values())}")


def task_for(env_name: str) -> str:
    """robosuite env name -> short task alias ('Lift' -> 'lift')."""
    for k, v in TASKS.items():
        if v == env_name:
            return k
    raise ValueError(f"no task alias for env {env_name!r}")


def controller_config() -> dict:
    """The classic 7-d delta OSC_POSE composite controller config for the Panda (robosuite 1.5)."""
    robosuite = import_robosuite()
    return robosuite.load_composite_controller_config(robot="Panda")


def make_env_args(task: str, image_size: int = 84, cameras: Sequence[str] = DEFAULT_CAMERAS,
                  render: bool = True, sim_settings: Optional[Mapping[str, Any]] = None) -> dict:
    """A robomimic-style env_args dict: {"env_name", "type": 1, "env_version", "env_kwargs", "dp_fast"}.

    `env_kwargs` can be passed to `robosuite.make` as is (hard_reset is off: a reset re-samples the
    object poses without rebuilding the model and the render context); "dp_fast" holds this package's
    settings (see DEFAULT_SETTINGS; `sim_settings` overrides them).
    """
    robosuite = import_robosuite()
    cameras = list(cameras) if render else []
    use_cams = bool(render and cameras)
    env_kwargs = {
        "has_renderer": False,
        "has_offscreen_renderer": use_cams,
        "ignore_done": True,
        "use_object_obs": True,
        "use_camera_obs": use_cams,
        "camera_depths": False,
        "camera_names": cameras,
        "camera_heights": int(image_size),
        "camera_widths": int(image_size),
        "control_freq": 20,
        "reward_shaping": False,
        "reward_scale": 1.0,
        "robots": ["Panda"],
        "controller_configs": controller_config(),
        "hard_reset": False,
        "lite_physics": True,
        "render_gpu_device_id": -1,
    }
    settings = dict(DEFAULT_SETTINGS)
    settings.update(sim_settings or {})
    return {
        "env_name": env_name_for(task),
        "type": 1,  # robomimic EnvType.ROBOSUITE_TYPE
        "env_version": robosuite.__version__,
        "env_kwargs": env_kwargs,
        "dp_fast": settings,
    }


def env_args_from_json(text: Union[str, bytes, Mapping]) -> dict:
    if isinstance(text, Mapping):
        return copy.deepcopy(dict(text))
    if isinstance(text, bytes):
        text = text.decode()
    return json.loads(text)


def camera_size(env_kwargs: Mapping[str, Any]) -> int:
    """The (first) camera's height in robosuite env kwargs: camera_heights is an int or one per camera."""
    h = env_kwargs.get("camera_heights", 84)
    return int(h[0] if isinstance(h, (list, tuple)) else h)


def env_args_for_robosuite(env_args: Union[str, bytes, Mapping[str, Any]], render: bool = True,
                           sim_settings: Optional[Mapping[str, Any]] = None) -> dict:
    """A copy of env_args (a dict or its JSON, robomimic's or ours) that robosuite 1.5 can build, as
    `make_env` does: this package's settings filled in (`sim_settings` over the stored ones over
    DEFAULT_SETTINGS), the 1.5 controller config where an older one is stored, hard_reset off, and the
    offscreen renderer on exactly when cameras are (all off with render=False)."""
    env_args = env_args_from_json(env_args)
    settings = dict(DEFAULT_SETTINGS)
    settings.update(env_args.get("dp_fast") or {})
    settings.update(sim_settings or {})
    env_args["dp_fast"] = settings
    kw = env_args["env_kwargs"]
    cc = kw.get("controller_configs")
    if not isinstance(cc, Mapping) or "body_parts" not in cc:
        # robomimic files from robosuite <= 1.4 store {"type": "OSC_POSE", ...}, which 1.5 ignores
        kw["controller_configs"] = controller_config()
    # robosuite's hard reset rebuilds the sim and its GL context at every reset; the old context is
    # freed later by a finalizer that releases the thread's current one (blank frames)
    kw["hard_reset"] = False
    if not render:
        kw.update(has_offscreen_renderer=False, use_camera_obs=False, camera_names=[])
    else:
        # A robomimic file may only list cameras in camera_names; rendering needs the renderer on.
        cams = kw.get("camera_names") or []
        if isinstance(cams, str):
            cams = [cams]
        kw["camera_names"] = list(cams)
        kw["use_camera_obs"] = bool(cams)
        kw["has_offscreen_renderer"] = bool(cams)
    return env_args
