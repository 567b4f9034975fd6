"""robosuite 1.5 environments with robomimic's observation layout.

`make_env("lift")` (or "can", "square", a robosuite env name, or a robomimic-style `env_args` dict)
returns a `SimEnv`: a thin wrapper around a robosuite environment (Panda, classic 7-d delta OSC_POSE
controller) whose observations are named and laid out as in robomimic's hdf5 datasets (see
`observations`); `obs_to_policy` converts them to the policy's layout. The env_args helpers live in
`env_args` and are re-exported here.

Rendering is what makes stepping slow (software OpenGL here). `SimEnv.set_cameras(False)` switches the
camera observables off on a live env (nothing is rendered: ~6 ms a step instead of ~30 ms), and the
render settings in `env_args["dp_fast"]` (no multisampling and no reflection pass by default, which
together make rendering ~4x faster than robosuite's defaults) are applied to robosuite's render context.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from .env_args import (DEFAULT_CAMERAS, DEFAULT_SETTINGS, camera_size, controller_config, env_args_for_robosuite,
                       env_args_from_json, env_name_for, import_robosuite, make_env_args, robosuite_available,
                       task_for)
from .observations import POLICY_OBS_KEYS, ROBOT_KEYS, obs_to_policy, robomimic_obs
from .tasks import TASKS

__all__ = [
    "SimEnv", "make_env", "obs_to_policy", "make_env_args", "env_args_for_robosuite", "env_args_from_json",
    "env_name_for", "task_for", "controller_config", "camera_size", "robosuite_available", "import_robosuite",
    "DEFAULT_CAMERAS", "DEFAULT_SETTINGS", "POLICY_OBS_KEYS", "ROBOT_KEYS", "TASKS",
]


def make_env(task: Union[str, Mapping[str, Any]], image_size: int = 84,
             cameras: Sequence[str] = DEFAULT_CAMERAS, render: bool = True,
             seed: Optional[int] = None, sim_settings: Optional[Mapping[str, Any]] = None) -> "SimEnv":
    """Build a `SimEnv` from a task alias / robosuite env name, or from an env_args dict (or its JSON).

    With env_args, image size and cameras come from its env_kwargs; `render=False` still turns the
    cameras (and the offscreen renderer) off, e.g. for a fast scripted-expert env. robomimic env_args
    (e.g. read from a robomimic dataset) work too as long as their env_kwargs are valid for robosuite 1.5.
    """
    if isinstance(task, (Mapping, bytes)) or (isinstance(task, str) and task.lstrip().startswith("{")):
        env_args = env_args_for_robosuite(task, render=render, sim_settings=sim_settings)
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
        robosuite = import_robosuite()
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
        return robomimic_obs(raw, self._active_cameras if self._cameras_on else (), self._flip)

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

    def object_pos(self) -> np.ndarray:
        """Where the task's object is grasped, in the world frame: the cube's centre (lift), the can's
        centre (can), the nut's handle site (square)."""
        e = self.env
        if self.task == "lift":
            return self.body_pose(e.cube.root_body)[0]
        if self.task == "can":
            return self.body_pose(e.objects[e.object_id].root_body)[0]
        if self.task == "square":
            site = e.nuts[e.nut_id].important_sites["handle"]
            return np.array(e.sim.data.site_xpos[e.sim.model.site_name2id(site)])
        raise ValueError(f"object_pos: no grasp point known for task {self.task!r} "
                         f"(known: lift, can, square)")

    def body_pose(self, body: str) -> tuple:
        """(pos (3,), rotation matrix (3, 3)) of a body in the world frame."""
        bid = self.env.sim.model.body_name2id(body)
        return (np.array(self.env.sim.data.body_xpos[bid]),
                np.array(self.env.sim.data.body_xmat[bid]).reshape(3, 3))
