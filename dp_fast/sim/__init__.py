"""robosuite simulation: environments with robomimic's observation layout, scripted experts, demo files.

Needs the `sim` extra (robosuite 1.5.2, mujoco 3.3-3.9). Importing this package does not import
robosuite; the submodules do so when an environment is built.
"""
from .env import (DEFAULT_CAMERAS, POLICY_OBS_KEYS, TASKS, SimEnv, env_name_for, make_env,
                  make_env_args, obs_to_policy, robosuite_available)

__all__ = [
    "DEFAULT_CAMERAS", "POLICY_OBS_KEYS", "TASKS", "SimEnv", "env_name_for", "make_env", "make_env_args",
    "obs_to_policy", "robosuite_available",
    "make_expert", "run_expert", "generate_demos",
]


def __getattr__(name):
    if name in ("make_expert", "run_expert"):
        from . import experts
        return getattr(experts, name)
    if name == "generate_demos":
        from .demos import generate_demos
        return generate_demos
    raise AttributeError(name)
