"""robosuite simulation: environments with robomimic's observation layout, scripted experts, demo files,
policy rollouts.

Needs the `sim` extra (robosuite 1.5.2, mujoco 3.3-3.9). Importing this package does not import
robosuite; it is imported when an environment is built.
"""
from .demos import generate_demos
from .env import (DEFAULT_CAMERAS, POLICY_OBS_KEYS, SimEnv, env_name_for, make_env, make_env_args,
                  obs_to_policy, robosuite_available)
from .experts import make_expert, run_expert
from .runner import run_rollouts
from .tasks import TASK_TABLE, TASKS

__all__ = [
    "DEFAULT_CAMERAS", "POLICY_OBS_KEYS", "TASKS", "TASK_TABLE", "SimEnv", "env_name_for", "make_env",
    "make_env_args", "obs_to_policy", "robosuite_available",
    "make_expert", "run_expert", "generate_demos", "run_rollouts",
]
