"""robosuite 1.5 environments with robomimic's observation layout.

`make_env("lift")` (or "can", "square", a robosuite env name, or a robomimic-style `env_args` dict)
returns a `SimEnv`: a thin wrapper around a robosuite environment (Panda, classic 7-d delta OSC_POSE
controller) whose observations are named and laid out as in robomimic's hdf5 datasets:

- `agentview_image`, `robot0_eye_in_hand_image`: (H, W, 3) uint8, rows top-to-bottom (robosuite renders
  OpenGL-style, bottom row first; robomimic stores them flipped, and so do we);
- `robot0_eef_pos` (3), `robot0_eef_quat` (4, xyzw, queried from the hand body as robomimic datasets
  were), `robot0_gripper_qpos` (2), a few more `robot0_*` proprioception keys and `object` (the task's
  object-state vector), all float64.

`obs_to_policy` converts such a dict to the policy's layout (images (3, H, W) uint8, low-dim float32).

Rendering is what makes stepping slow (software OpenGL here). `SimEnv.set_cameras(False)` switches the
camera observables off on a live env (nothing is rendered: ~6 ms a step instead of ~30 ms), and the
render settings in `env_args["dp_fast"]` (no multisampling and no reflection pass by default, which
together make rendering ~4x faster than robosuite's defaults) are applied to robosuite's render context.
"""
from __future__ import annotations

import copy
import json
import os
import platform
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

if platform.system() == "Linux":
    # Headless by default. Must be set before mujoco / robosuite import an OpenGL backend.
    os.environ.setdefault("MUJOCO_GL", "egl")

TASKS: Dict[str, str] = {"lift": "Lift", "can": "PickPlaceCan", "square": "NutAssemblySquare"}
DEFAULT_CAMERAS = ("agentview", "robot0_eye_in_hand")
# Proprioception keys kept from robosuite's observation (robomimic dataset names).
ROBOT_KEYS = (
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_gripper_qpos",
    "robot0_gripper_qvel",
    "robot0_joint_pos",
    "robot0_joint_pos_cos",
    "robot0_joint_pos_sin",
    "robot0_joint_vel",
)
# The seed policy's observation keys, in feature order.
POLICY_OBS_KEYS = (
    "agentview_image",
    "robot0_eye_in_hand_image",
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_gripper_qpos",
)
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


def _import_robosuite():
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
    robosuite = _import_robosuite()
    return robosuite.load_composite_controller_config(robot="Panda")


def make_env_args(task: str, image_size: int = 84, cameras: Sequence[str] = DEFAULT_CAMERAS,
                  render: bool = True, sim_settings: Optional[Mapping[str, Any]] = None) -> dict:
    """A robomimic-style env_args dict: {"env_name", "type": 1, "env_version", "env_kwargs", "dp_fast"}.

    `env_kwargs` can be passed to `robosuite.make` as is (hard_reset is off: a reset re-samples the
    object poses without rebuilding the model and the render context); "dp_fast" holds this package's
    settings (see DEFAULT_SETTINGS; `sim_settings` overrides them).
    """
    robosuite = _import_robosuite()
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


def make_env(task: Union[str, Mapping[str, Any]], image_size: int = 84,
             cameras: Sequence[str] = DEFAULT_CAMERAS, render: bool = True,
             seed: Optional[int] = None, sim_settings: Optional[Mapping[str, Any]] = None) -> "SimEnv":
    """Build a `SimEnv` from a task alias / robosuite env name, or from an env_args dict (or its JSON).

    With env_args, image size and cameras come from its env_kwargs; `render=False` still turns the
    cameras (and the offscreen renderer) off, e.g. for a fast scripted-expert env. robomimic env_args
    (e.g. read from a robomimic dataset) work too as long as their env_kwargs are valid for robosuite 1.5.
    """
    if isinstance(task, (Mapping, bytes)) or (isinstance(task, str) and task.lstrip().startswith("{")):
        env_args = env_args_from_json(task)
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
    else:
        env_args = make_env_args(task, image_size=image_size, cameras=cameras, render=render,
                                 sim_settings=sim_settings)
    return SimEnv(env_args, seed=seed)


class SimEnv:
    """A robosuite env with robomimic's observation names / layout, flattened-state save and restore.

    Attributes: `env` (the robosuite env), `env_args`, `env_name`, `task`, `camera_names`, `image_size`,
    `action_dim` (7), `action_low` / `action_high` (-1 / 1).
    """

    def __init__(self, env_args: Mapping[str, Any], seed: Optional[int] = None):
        robosuite = _import_robosuite()
        from robosuite import macros

        self.env_args = copy.deepcopy(dict(env_args))
        self.env_name = self.env_args["env_name"]
        try:
            self.task = task_for(self.env_name)
        except ValueError:
            self.task = self.env_name
        kw = dict(self.env_args["env_kwargs"])
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update(self.env_args.get("dp_fast") or {})
        cams = kw.get("camera_names") or []
        self.camera_names = [cams] if isinstance(cams, str) else list(cams)
        self.image_size = camera_size(kw)
        if not kw.get("use_camera_obs", False):
            self.camera_names = []
        self._flip = macros.IMAGE_CONVENTION == "opengl"
        kw.pop("seed", None)
        self.env = robosuite.make(self.env_name, seed=int(self.settings["model_seed"]), **kw)
        if seed is not None:
            self._reseed(seed)
        self._configured_ctx = None
        self._model_xml = self._source_xml(None)
        self._loaded_xml: Optional[str] = None  # last xml passed to reset_to that caused a reload
        self._patch_sim_init()
        self._active_cameras = list(self.camera_names)
        self._cameras_on = bool(self.camera_names)
        self._enable_camera_observables(False)
        self.action_dim = int(self.env.action_dim)
        low, high = self.env.action_spec
        self.action_low, self.action_high = np.asarray(low), np.asarray(high)

    # ------------------------------------------------------------------ model xml, rendering settings
    def _source_xml(self, xml_string: Optional[str]) -> str:
        """The MJCF robosuite compiles (its model's xml after its xml processors), as
        `robosuite.environments.base.MujocoEnv._initialize_sim` computes it."""
        xml = xml_string if xml_string else self.env.model.get_xml()
        for processor in self.env._xml_processors:
            xml = processor(xml)
        return xml

    def _patch_sim_init(self):
        """Record the compiled xml and apply offsamples whenever robosuite (re)builds the sim, before
        its render context exists; fix the render context robosuite's constructor already made."""
        env = self.env
        orig = env._initialize_sim
        offsamples = int(self.settings.get("offsamples", 0))

        def _initialize_sim(xml_string=None):
            self._model_xml = self._source_xml(xml_string)
            orig(xml_string)
            env.sim.model.vis.quality.offsamples = offsamples

        env._initialize_sim = _initialize_sim  # instance attribute shadows the class method
        env.sim.model.vis.quality.offsamples = offsamples
        ctx = env.sim._render_context_offscreen
        if ctx is not None:
            # The context was created in robosuite's __init__ with the default 4x multisampling:
            # rebuild its mujoco buffers in place (a second EGL context cannot be made beside it).
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()
        self._after_reload()

    def _after_reload(self):
        ctx = self.env.sim._render_context_offscreen
        if ctx is None or ctx is self._configured_ctx:
            return
        import mujoco

        if not self.settings.get("reflections", False):
            ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._configured_ctx = ctx

    # ------------------------------------------------------------------ cameras
    @property
    def cameras_on(self) -> bool:
        return self._cameras_on

    def set_cameras(self, on: bool, names: Optional[Sequence[str]] = None) -> None:
        """Switch the camera images on / off. While off nothing is rendered and observations have no
        image keys (a step costs ~6 ms instead of ~30 ms with two 84x84 cameras). `names`: render only
        these of the env's cameras (default: all)."""
        if names is not None:
            unknown = [c for c in names if c not in self.camera_names]
            if unknown:
                raise ValueError(f"set_cameras: {unknown} not among this env's cameras {self.camera_names}")
        self._active_cameras = list(self.camera_names if names is None else names)
        self._cameras_on = bool(on) and bool(self._active_cameras)

    def _enable_camera_observables(self, on: bool) -> None:
        obs = self.env._observables
        for cam in (self._active_cameras if on else self.camera_names):
            o = obs.get(f"{cam}_image")
            if o is not None:
                o.set_enabled(on)
                o.set_active(on)

    # ------------------------------------------------------------------ core API
    def _observe(self) -> Dict[str, np.ndarray]:
        """Observation of the current simulator state.

        Camera observables stay disabled while robosuite steps (it would otherwise render inside the
        physics sub-steps, at a phase that shifts whenever an observation is forced), and a warm-up pass
        fills robosuite's observation cache first, so that sensors reading other sensors' cached
        values (the object-to-eef poses in `object`) see the current state. The result depends on the
        simulator state alone: `reset_to(get_state())` reproduces it exactly.
        """
        self.env._get_observations(force_update=True)
        if self._cameras_on:
            # Several envs (or a freed one) in a process share the thread's current GL context;
            # robosuite never re-selects its own before drawing.
            self.env.sim._render_context_offscreen.gl_ctx.make_current()
            self._enable_camera_observables(True)
            try:
                raw = self.env._get_observations(force_update=True)
            finally:
                self._enable_camera_observables(False)
        else:
            raw = self.env._get_observations(force_update=True)
        return self._convert(raw)

    def _convert(self, raw: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        obs: Dict[str, np.ndarray] = {}
        if self._cameras_on:
            for cam in self._active_cameras:
                img = raw[f"{cam}_image"]
                obs[f"{cam}_image"] = np.ascontiguousarray(img[::-1] if self._flip else img)
        for k in ROBOT_KEYS:
            if k in raw:
                obs[k] = np.array(raw[k], dtype=np.float64)
        if "object-state" in raw:
            obs["object"] = np.array(raw["object-state"], dtype=np.float64)
        return obs

    def reset(self, seed: Optional[int] = None) -> Dict[str, np.ndarray]:
        """New episode. With `seed`, the initial state (object placement, joint noise) is a function of
        the seed alone: the env's random generator is re-seeded in place. Without, the env's generator
        continues (seeded by make_env's `seed`, else by the fixed model_seed).

        robosuite builds the controllers here from a slightly different intermediate state than
        `reset_to` does: the same actions after `reset()` and after `reset_to(get_state())` give
        trajectories that start ~1e-8 apart (and drift to ~1e-2 over an episode). Episodes meant to be
        replayed exactly (the demos) start with `reset_to`."""
        if seed is not None:
            self._reseed(seed)
        self._enable_camera_observables(False)
        self.env.reset()
        self._after_reload()
        return self._observe()

    def _reseed(self, seed: int) -> None:
        # in place: the placement samplers hold references to this generator
        self.env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state

    def step(self, action) -> tuple:
        """-> (obs, reward, done, info); obs is that of the state after the step; done is always False
        (ignore_done), as in robomimic; info["success"] is is_success(); reward is robosuite's reward of
        the state after the step (sparse: 1.0 on success)."""
        action = np.asarray(action, dtype=np.float64)
        _, reward, done, info = self.env.step(action)
        # mj_step leaves positions (xpos, site_xpos, ...) computed before its last integration:
        # bring them up to date so that observations and success are functions of the state
        # (what `reset_to(get_state())` reproduces). Does not change the dynamics' inputs.
        self.env.sim.forward()
        reward = self.env.reward(action)
        info = dict(info)
        info["success"] = self.is_success()
        return self._observe(), float(reward), bool(done), info

    def get_observation(self) -> Dict[str, np.ndarray]:
        return self._observe()

    def model_xml(self) -> str:
        """The MJCF the current model was compiled from.

        Not mujoco's `mj_saveLastXML` (robomimic's choice): that one writes the process's last
        *loaded* model with its run-time edits (robosuite hides sites at reset by editing rgba), so
        it changes over an episode and is wrong once a second env exists in the process. This
        string is the same for every env built from the same env_args, and compiling it gives
        exactly this model."""
        return self._model_xml

    def get_state(self, with_model: bool = True) -> dict:
        """{"states": flattened mujoco state (time, qpos, qvel) float64, "model": model xml}."""
        out = {"states": np.array(self.env.sim.get_state().flatten(), dtype=np.float64)}
        if with_model:
            out["model"] = self.model_xml()
        return out

    def reset_to(self, state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        """Reset to a stored state, as robomimic's EnvRobosuite.reset_to: {"states": flat, "model": xml?}.

        The model is reloaded only when `state["model"]` differs from the current one (a reload costs
        ~1 s: a new sim and render context). The env is reset, the flattened (time, qpos, qvel) state
        set, and the controllers rebuilt from it (the gripper command starts open/neutral, as after
        any reset). Returns the observation at that state. Treats the state as an episode start.
        """
        xml = state.get("model")
        self._enable_camera_observables(False)
        if xml is not None:
            if isinstance(xml, bytes):
                xml = xml.decode()
            if xml != self._model_xml and xml != self._loaded_xml:
                self._free_render_context()
                self.env.reset_from_xml_string(xml)
                self._loaded_xml = xml
                self._after_reload()
                self._enable_camera_observables(False)
        self.env.reset()
        if "states" in state:
            self.env.sim.set_state_from_flattened(np.asarray(state["states"], dtype=np.float64))
            self.env.sim.forward()
            # robosuite builds the controllers at reset from the joint configuration of that moment
            # (OSC keeps it as its null-space posture): rebuild them from the restored one, so that
            # the controller state is a function of the restored state alone and actions replayed
            # from here reproduce an episode that started here bit for bit.
            for robot in self.env.robots:
                robot._load_controller()
                robot.composite_controller.update_state()
                robot.composite_controller.reset()
            self.env.update_state()
        return self._observe()

    def _free_render_context(self):
        """Free the GL context now: robosuite frees it from a finalizer, which (running after the new
        context was made) would release the thread's current context and leave images blank."""
        ctx = self.env.sim._render_context_offscreen if self.env.sim is not None else None
        if ctx is not None:
            try:
                ctx.gl_ctx.make_current()
                ctx.con.free()
                ctx.gl_ctx.free()
            except Exception:
                pass
        self._configured_ctx = None

    def is_success(self) -> bool:
        return bool(self.env._check_success())

    def close(self) -> None:
        try:
            if self.env.sim is not None:
                self._free_render_context()
            self.env.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ privileged state for experts
    @property
    def sim(self):
        return self.env.sim

    def eef_pos(self) -> np.ndarray:
        r = self.env.robots[0]
        return np.array(self.env.sim.data.site_xpos[r.eef_site_id["right"]])

    def eef_mat(self) -> np.ndarray:
        r = self.env.robots[0]
        return np.array(self.env.sim.data.site_xmat[r.eef_site_id["right"]]).reshape(3, 3)

    def gripper_qpos(self) -> np.ndarray:
        r = self.env.robots[0]
        return np.array(self.env.sim.data.qpos[r._ref_gripper_joint_pos_indexes["right"]])

    def body_pose(self, body: str) -> tuple:
        """(pos (3,), rotation matrix (3, 3)) of a body in the world frame."""
        bid = self.env.sim.model.body_name2id(body)
        return (np.array(self.env.sim.data.body_xpos[bid]),
                np.array(self.env.sim.data.body_xmat[bid]).reshape(3, 3))


def obs_to_policy(obs: Mapping[str, np.ndarray], keys: Optional[Iterable[str]] = POLICY_OBS_KEYS,
                  image_dtype: str = "uint8") -> Dict[str, np.ndarray]:
    """robomimic-layout obs dict -> the policy's layout: images (3, H, W) (uint8, or float32 in [0, 1]
    with image_dtype="float32"), low-dim float32. Works on a single obs or a stacked (T, ...) one.
    `keys=None` converts every key."""
    out = {}
    for k in (obs.keys() if keys is None else keys):
        x = np.asarray(obs[k])
        if k.endswith("_image"):
            x = np.moveaxis(x, -1, -3)
            x = np.ascontiguousarray(x)
            if image_dtype != "uint8":
                x = x.astype(np.float32) / 255.0
        else:
            x = x.astype(np.float32)
        out[k] = x
    return out
