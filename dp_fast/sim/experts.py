"""Scripted experts for Lift, PickPlaceCan and NutAssemblySquare (Panda, delta OSC_POSE actions).

Each expert is a small state machine over way-points computed from privileged simulator state (object
and end-effector poses), tracked with a proportional controller in the delta-OSC action space:

    a_pos = clip(kp * (p_target - p_eef) / 0.05)        (0.05 m = one action unit)
    a_rot = clip(kr * rotvec(R_target R_eef^T) / 0.5)    (0.5 rad = one action unit, world frame)
    a_grip = -1 (open) / +1 (close)

Given the simulator state and its seed an expert is deterministic; the seed draws the episode's style
(speeds, heights, grasp and placement offsets, short pauses) so that demonstrations vary across seeds.
All actions lie in [-1, 1].

`run_expert(env, expert)` rolls an expert out and returns its actions and whether the task was solved.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np

from .env import SimEnv

POS_UNIT = 0.05  # metres per unit of delta-position action (robosuite OSC_POSE output_max)
ROT_UNIT = 0.5   # radians per unit of delta-rotation action
OPEN, CLOSE = -1.0, 1.0

# Default episode lengths (control steps at 20 Hz).
MAX_STEPS = {"lift": 400, "can": 400, "square": 500}
# Gripper site frame when pointing down with yaw 0: columns are the site x (finger closing axis),
# y and z axes in world coordinates.
_R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def _rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def down_rotation(yaw: float) -> np.ndarray:
    """Gripper pointing down, finger closing axis at angle yaw + pi/2 in the table plane."""
    return _rz(yaw) @ _R_DOWN


def rotvec(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> rotation vector (axis * angle), robust near pi."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    if angle < 1e-7:
        return np.zeros(3)
    if angle > math.pi - 1e-4:
        # axis from the symmetric part: r = 2 n n^T - I at angle pi
        m = (r + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(m)))
        n = m[:, i] / math.sqrt(max(m[i, i], 1e-12))
        return n * angle
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return w * (angle / (2.0 * math.sin(angle)))


def wrap(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def yaw_of(r: np.ndarray) -> float:
    """Yaw of a body's x axis in the table plane."""
    return math.atan2(r[1, 0], r[0, 0])


def gripper_yaw(r_site: np.ndarray) -> float:
    """Yaw of the gripper as parametrised by down_rotation (closing axis = site x = (-sin, cos))."""
    x = r_site[:, 0]
    return math.atan2(-x[0], x[1])


def nearest_equivalent(target: float, current: float, period: float) -> float:
    """The angle congruent to target (mod period) closest to current."""
    return current + wrap((target - current) * 2.0 * math.pi / period) * period / (2.0 * math.pi)


class ScriptedExpert:
    """Base class: way-point tracking and the per-episode style draw. Subclasses implement `_plan`."""

    task = ""

    def __init__(self, env: SimEnv, seed: Optional[int] = None, noise: float = 0.0):
        self.env = env
        self.seed = seed
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.phase = "start"
        self.t = 0
        self._phase_t = 0
        self._pause = 0
        self._noise_state = np.zeros(6)

    # -------------------------------------------------------------- helpers
    def reset(self) -> None:
        """Call after env.reset()/reset_to(): re-draws the style from the seed and reads the scene."""
        self.rng = np.random.default_rng(self.seed)
        self.t = 0
        self._phase_t = 0
        self._pause = 0
        self._noise_state = np.zeros(6)
        self._prev_eef = self.env.eef_pos()
        self.target = self._prev_eef.copy()
        self.vel = np.zeros(3)
        self.kp = float(self.rng.uniform(0.9, 1.6))       # proportional gain (x 0.05 m per unit)
        self.vmax = float(self.rng.uniform(0.7, 1.0))     # translation speed cap (action units)
        self.kr = float(self.rng.uniform(1.0, 1.6))
        self.kd = 0.5
        self.retries = 0
        self.max_retries = 2
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def _goto(self, phase: str, pause_max: int = 0) -> None:
        self.phase = phase
        self._phase_t = 0
        self._pause = int(self.rng.integers(0, pause_max + 1)) if pause_max > 0 else 0

    def servo(self, p_target: np.ndarray, r_target: Optional[np.ndarray], grip: float,
              kp: Optional[float] = None, vmax: Optional[float] = None) -> np.ndarray:
        eef = self.env.eef_pos()
        kp = self.kp if kp is None else kp
        vmax = self.vmax if vmax is None else vmax
        a = np.zeros(7)
        self.target = np.asarray(p_target, dtype=np.float64)
        dp = (kp * (np.asarray(p_target) - eef) - self.kd * self.vel) / POS_UNIT
        m = np.max(np.abs(dp))
        if m > vmax:
            dp *= vmax / m
        a[:3] = dp
        if r_target is not None:
            e = rotvec(r_target @ self.env.eef_mat().T)
            a[3:6] = np.clip(self.kr * e / ROT_UNIT, -1.0, 1.0)
        a[6] = grip
        if self.noise > 0:
            # smooth (AR(1)) perturbation, a little variety in the paths without hurting precision
            self._noise_state = 0.8 * self._noise_state + self.noise * self.rng.standard_normal(6)
            a[:3] += self._noise_state[:3] * min(1.0, float(np.linalg.norm(np.asarray(p_target) - eef)) / 0.05)
        return np.clip(a, -1.0, 1.0)

    def _start_lift(self, obj_z: float) -> None:
        self._grasp_eef_z = float(self.env.eef_pos()[2])
        self._grasp_obj_z = float(obj_z)
        self._goto("lift")

    def _grasp_failed(self, obj_z: float) -> bool:
        """In the lift phase: the hand rose 4 cm but the object did not follow, or the fingers met."""
        if self.retries >= self.max_retries:
            return False
        rose = self.env.eef_pos()[2] - self._grasp_eef_z > 0.04
        missed = float(np.sum(np.abs(self.env.gripper_qpos()))) < 0.004
        if (rose and obj_z - self._grasp_obj_z < 0.01) or (missed and self._phase_t > 3):
            self.retries += 1
            self._goto("approach")
            return True
        return False

    def _pick(self, grasp: np.ndarray, obj_z: float, xy_tol: float, rot_tol: float, descend_vmax: float,
              tol: float, late_tol: float) -> Optional[np.ndarray]:
        """The phases every expert starts with: hover `self.hover` above the grasp point (gripper open,
        turned to r_grasp) until within xy_tol / 3 cm / rot_tol, descend onto it (vmax <= descend_vmax)
        until within tol (late_tol after 60 steps), close for close_steps, then `_start_lift(obj_z)`.
        Returns the action, or None once the expert is past these phases."""
        hover = grasp + np.array([0, 0, self.hover])
        if self.phase == "approach":
            a = self.servo(hover, self.r_grasp, OPEN)
            e = self.err(hover)
            if np.linalg.norm(e[:2]) < xy_tol and abs(e[2]) < 0.03 and self.rot_err(self.r_grasp) < rot_tol:
                self._goto("descend", pause_max=3)
            return a
        if self.phase == "descend":
            if self._pause > 0:
                self._pause -= 1
                return self.servo(hover, self.r_grasp, OPEN)
            a = self.servo(grasp, self.r_grasp, OPEN, vmax=min(self.vmax, descend_vmax))
            e = float(np.linalg.norm(self.err(grasp)))
            if e < tol or (self._phase_t > 60 and e < late_tol):
                self._goto("grasp")
            return a
        if self.phase == "grasp":
            a = self.servo(grasp, self.r_grasp, CLOSE)
            if self._phase_t >= self.close_steps:
                self._start_lift(obj_z)
            return a
        return None

    def err(self, p_target: np.ndarray) -> np.ndarray:
        return np.asarray(p_target) - self.env.eef_pos()

    def rot_err(self, r_target: np.ndarray) -> float:
        return float(np.linalg.norm(rotvec(r_target @ self.env.eef_mat().T)))

    def act(self) -> np.ndarray:
        eef = self.env.eef_pos()
        self.vel = eef - self._prev_eef  # metres per control step
        self._prev_eef = eef
        a = self._plan()
        self.t += 1
        self._phase_t += 1
        return a

    def _plan(self) -> np.ndarray:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- Lift
class LiftExpert(ScriptedExpert):
    """Top grasp on the cube (yaw matched to the cube's faces), then lift."""

    task = "lift"

    def _setup(self) -> None:
        env = self.env
        pos, rot = env.body_pose(env.env.cube.root_body)
        yaw_now = gripper_yaw(env.eef_mat())
        # fingers close across a pair of cube faces: gripper yaw = cube yaw (mod pi/2)
        self.yaw = nearest_equivalent(yaw_of(rot), yaw_now, math.pi / 2)
        self.r_grasp = down_rotation(self.yaw)
        self.hover = float(self.rng.uniform(0.06, 0.12))
        self.grasp_dz = float(self.rng.uniform(-0.004, 0.006))
        self.grasp_dxy = self.rng.uniform(-0.004, 0.004, size=2)
        self.lift_h = float(self.rng.uniform(0.12, 0.22))
        self.close_steps = int(self.rng.integers(6, 11))
        self._goto("approach")

    def _start_lift(self, obj_z: float) -> None:
        self.lift_target = self.env.eef_pos() + np.array([0, 0, self.lift_h])
        super()._start_lift(obj_z)

    def _cube(self) -> np.ndarray:
        return self.env.body_pose(self.env.env.cube.root_body)[0]

    def _plan(self) -> np.ndarray:
        cube = self._cube()
        grasp = cube + np.array([self.grasp_dxy[0], self.grasp_dxy[1], self.grasp_dz])
        a = self._pick(grasp, cube[2], xy_tol=0.012, rot_tol=0.1, descend_vmax=0.8, tol=0.006, late_tol=0.012)
        if a is not None:
            return a
        # lift (and hold)
        if self._grasp_failed(cube[2]):
            return self._plan()
        return self.servo(self.lift_target, self.r_grasp, CLOSE, vmax=min(self.vmax, 0.8))


# ---------------------------------------------------------------------------------------------- Can
class CanExpert(ScriptedExpert):
    """Grasp the can from the top, carry it over the bins' wall, lower it into its (near) quadrant of
    bin 2, release and back off upward (success requires the gripper away from the can)."""

    task = "can"

    def _setup(self) -> None:
        env = self.env
        e = env.env
        pos = self._can()
        self.can0 = pos
        # finger closing direction: the one that keeps the open fingers farthest from bin 1's walls
        lo = e.bin1_pos[:2] - e.bin_size[:2] / 2 + 0.01
        hi = e.bin1_pos[:2] + e.bin_size[:2] / 2 - 0.01
        best, best_clear = 0.0, -1.0
        for phi in np.linspace(0, math.pi, 12, endpoint=False):
            d = np.array([math.cos(phi), math.sin(phi)]) * 0.05
            pts = np.stack([pos[:2] + d, pos[:2] - d])
            clear = float(min((pts - lo).min(), (hi - pts).min()))
            clear += 0.002 * math.cos(2 * phi)  # mild tie-break towards the default yaw
            if clear > best_clear + 1e-9:
                best, best_clear = phi, clear
        phi = best + float(self.rng.uniform(-0.15, 0.15)) * (best_clear > 0.03)
        # Of the two equivalent yaws (mod pi) take the one nearest 0.5 rad: carrying the can to bin 2
        # turns the arm's base joint, which the wrist (joint 7, limit +-2.9) must undo; measured here,
        # joint 7 ends near 1.45 - yaw at the place pose and near 0.1..0.8 - yaw at the grasp.
        self.yaw = nearest_equivalent(phi - math.pi / 2, 0.5, math.pi)
        self.r_grasp = down_rotation(self.yaw)
        self.hover = float(self.rng.uniform(0.07, 0.12))
        self.grasp_dz = float(self.rng.uniform(-0.005, 0.01))
        self.close_steps = int(self.rng.integers(6, 10))
        self.carry_z = float(self.rng.uniform(1.02, 1.08))
        # target: the reachable (robot-side) part of the can's quadrant of bin 2
        x_lo = e.bin2_pos[0] + 0.045
        y_lo = e.bin2_pos[1] + 0.045
        self.place_xy = np.array([x_lo + self.rng.uniform(0.0, 0.04), y_lo + self.rng.uniform(0.0, 0.04)])
        self.place_z = float(e.bin2_pos[2] + self.rng.uniform(0.065, 0.085))
        self.r_place = down_rotation(self.yaw + float(self.rng.uniform(-0.2, 0.2)))
        self.retreat_h = float(self.rng.uniform(0.1, 0.15))
        self._goto("approach")

    def _can(self) -> np.ndarray:
        e = self.env.env
        return self.env.body_pose(e.objects[e.object_id].root_body)[0]

    def _plan(self) -> np.ndarray:
        can = self._can()
        grasp = can + np.array([0, 0, self.grasp_dz])
        a = self._pick(grasp, can[2], xy_tol=0.012, rot_tol=0.1, descend_vmax=0.8, tol=0.008, late_tol=0.015)
        if a is not None:
            return a
        if self.phase == "lift":
            if self._grasp_failed(can[2]):
                return self._plan()
            p = self.env.eef_pos()
            target = np.array([p[0], p[1], self.carry_z])
            a = self.servo(target, self.r_grasp, CLOSE)
            if self.env.eef_pos()[2] > self.carry_z - 0.05:
                self._goto("carry")
            return a
        if self.phase == "carry":
            # servo the can (not the hand) over the target
            off = self.env.eef_pos() - can
            target = np.array([self.place_xy[0] + off[0], self.place_xy[1] + off[1], self.carry_z])
            a = self.servo(target, self.r_place, CLOSE)
            if np.linalg.norm(can[:2] - self.place_xy) < 0.015:
                self._goto("lower")
            return a
        if self.phase == "lower":
            off = self.env.eef_pos() - can
            target = np.array([self.place_xy[0] + off[0], self.place_xy[1] + off[1], self.place_z + off[2]])
            a = self.servo(target, self.r_place, CLOSE, vmax=min(self.vmax, 0.7))
            if can[2] < self.place_z + 0.01 or (self._phase_t > 60):
                self._goto("release", pause_max=2)
            return a
        if self.phase == "release":
            p = self.env.eef_pos()
            a = self.servo(p, self.r_place, OPEN)
            if self._phase_t >= 6 + self._pause:
                self.retreat = p + np.array([0, 0, self.retreat_h])
                self._goto("retreat")
            return a
        return self.servo(self.retreat, self.r_place, OPEN)


# ---------------------------------------------------------------------------------------------- Square
class SquareExpert(ScriptedExpert):
    """Grasp the square nut's handle across its width, lift, turn it so that its sides line up with the
    peg's, carry its centre over the peg, lower it down the peg, release and back off."""

    task = "square"
    HANDLE = 0.054  # handle site, from the nut centre along the nut's x axis

    def _setup(self) -> None:
        env = self.env
        e = env.env
        nut = e.nuts[e.nut_id]
        self.nut_body = nut.root_body
        self.peg = np.array(env.body_pose("peg1")[0])
        pos, rot = env.body_pose(self.nut_body)
        yaw_nut = yaw_of(rot)
        yaw_now = gripper_yaw(env.eef_mat())
        # fingers close across the handle (along the nut's y axis): gripper yaw = nut yaw (mod pi)
        self.yaw = nearest_equivalent(yaw_nut, yaw_now, math.pi)
        self.r_grasp = down_rotation(self.yaw)
        self.grip_along = float(self.rng.uniform(0.058, 0.066))  # grasp point along the handle
        self.hover = float(self.rng.uniform(0.06, 0.1))
        # the finger meshes reach 12.5 mm below the grip site: grasp the handle's upper part so that
        # they clear the table (nut centre is 10 mm above it)
        self.grasp_dz = float(self.rng.uniform(0.004, 0.008))
        self.close_steps = int(self.rng.integers(7, 11))
        self.carry_z = float(self.rng.uniform(1.03, 1.08))  # nut centre height while carrying
        self.place_off = self.rng.uniform(-0.003, 0.003, size=2)
        self._goto("approach")

    def _nut(self):
        return self.env.body_pose(self.nut_body)

    def _grasp_point(self):
        pos, rot = self._nut()
        return pos + rot[:, 0] * self.grip_along + np.array([0, 0, self.grasp_dz])

    def _place_rotation(self, nut_rot: np.ndarray) -> np.ndarray:
        """Target gripper rotation that turns the held nut to the nearest peg-aligned yaw, handle not
        pointing away from the robot (keeps the hand within reach)."""
        yaw_nut = yaw_of(nut_rot)
        best = None
        for k in range(4):
            cand = k * math.pi / 2
            d = wrap(cand - yaw_nut)
            # handle direction cand: +x (away from the robot) is out of reach
            cost = abs(d) + (10.0 if abs(wrap(cand)) < 1e-6 else 0.0)
            if best is None or cost < best[0]:
                best = (cost, d)
        r_eef = self.env.eef_mat()
        return _rz(best[1]) @ r_eef

    def _plan(self) -> np.ndarray:
        nut_pos, nut_rot = self._nut()
        grasp = self._grasp_point()
        a = self._pick(grasp, nut_pos[2], xy_tol=0.01, rot_tol=0.08, descend_vmax=0.7, tol=0.005, late_tol=0.01)
        if a is not None:
            return a
        if self.phase == "lift":
            if self._grasp_failed(nut_pos[2]):
                return self._plan()
            p = self.env.eef_pos()
            off = p - nut_pos
            target = np.array([p[0], p[1], self.carry_z + off[2]])
            a = self.servo(target, self.r_grasp, CLOSE)
            if nut_pos[2] > self.carry_z - 0.04:
                self.r_place = self._place_rotation(nut_rot)
                self._goto("carry")
            return a
        if self.phase == "carry":
            off = self.env.eef_pos() - nut_pos
            goal = self.peg[:2] + self.place_off
            target = np.array([goal[0] + off[0], goal[1] + off[1], self.carry_z + off[2]])
            a = self.servo(target, self.r_place, CLOSE)
            settled = np.linalg.norm(self.vel) < 0.002
            if (np.linalg.norm(nut_pos[:2] - goal) < 0.004 and self.rot_err(self.r_place) < 0.05 and settled) \
                    or (self._phase_t > 150 and np.linalg.norm(nut_pos[:2] - goal) < 0.008):
                self._goto("lower")
            return a
        if self.phase == "lower":
            off = self.env.eef_pos() - nut_pos
            goal = self.peg[:2] + self.place_off
            target = np.array([goal[0] + off[0], goal[1] + off[1], 0.84 + off[2]])
            # keep the nut centred over the peg first; descend only while it is
            xy_err = float(np.linalg.norm(nut_pos[:2] - goal))
            if xy_err > 0.004 and nut_pos[2] > 0.955:
                target[2] = self.env.eef_pos()[2]
            a = self.servo(target, self.r_place, CLOSE, vmax=min(self.vmax, 0.5))
            if nut_pos[2] < 0.855 or self._phase_t > 80:
                self._goto("release", pause_max=2)
            return a
        if self.phase == "release":
            p = self.env.eef_pos()
            a = self.servo(p, self.r_place, OPEN)
            if self._phase_t >= 6 + self._pause:
                self.retreat = p + np.array([0, 0, 0.12])
                self._goto("retreat")
            return a
        return self.servo(self.retreat, self.r_place, OPEN)


EXPERTS = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert}


def make_expert(env: SimEnv, seed: Optional[int] = None, noise: float = 0.0) -> ScriptedExpert:
    """The scripted expert for env's task; call `expert.reset()` after each env reset."""
    try:
        cls = EXPERTS[env.task]
    except KeyError:
        raise ValueError(f"no scripted expert for task {env.task!r}") from None
    return cls(env, seed=seed, noise=noise)


# Phases in which `run_expert(..., perturb=...)` perturbs the executed action: reaching the object, where a
# learnt policy's errors start (every expert begins with _pick's approach / descend).
PERTURB_PHASES = ("approach", "descend")
PERTURB_RHO = 0.9  # AR(1) correlation per control step (~10 steps = 0.5 s)


class Perturbation:
    """Smooth zero-mean disturbance of the translation part of an action (DART-style recovery data).

    An AR(1) process per axis with stationary standard deviation `sigma` action units, active only while
    the expert is in PERTURB_PHASES and scaled by min(1, max(0.25, distance to the expert's current
    way-point / 4 cm)), so that the expert keeps its precision at the object. Deterministic given `seed`.
    """

    def __init__(self, sigma: float, seed: Optional[int]):
        if sigma < 0:
            raise ValueError(f"perturb sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.rng = np.random.default_rng(None if seed is None else [int(seed), 0xDA27])
        self.state = np.zeros(3)

    def __call__(self, expert: ScriptedExpert, a: np.ndarray) -> np.ndarray:
        innov = self.sigma * math.sqrt(1.0 - PERTURB_RHO ** 2) * self.rng.standard_normal(3)
        self.state = PERTURB_RHO * self.state + innov
        if self.sigma == 0.0 or expert.phase not in PERTURB_PHASES:
            return a
        dist = float(np.linalg.norm(expert.target - expert.env.eef_pos()))
        out = np.array(a, dtype=np.float64)
        out[:3] += self.state * min(1.0, max(0.25, dist / 0.04))
        return np.clip(out, -1.0, 1.0)


def run_expert(env: SimEnv, expert: ScriptedExpert, max_steps: Optional[int] = None,
               hold_steps: int = 5, record_obs: bool = False, perturb: float = 0.0) -> Dict[str, object]:
    """Roll `expert` out from env's current state (call env.reset/reset_to first).

    Stops `hold_steps` steps after the first success (the episode must still be a success then) or at
    max_steps (default: MAX_STEPS[task]). Returns {"actions": (T, 7), "executed": (T, 7), "success": bool,
    "steps": T, "first_success": step index or -1, "rewards": (T,), "obs": list of obs dicts (if
    record_obs)}.

    With perturb > 0 the env executes the expert's action plus a `Perturbation(perturb, expert.seed)`
    while reaching the object, and "actions" holds the expert's own (unperturbed) action in each visited
    state, the label a policy should learn; "executed" is what was stepped (replaying it reproduces the
    episode). Without, the two are equal.
    """
    max_steps = MAX_STEPS.get(env.task, 500) if max_steps is None else int(max_steps)
    expert.reset()
    disturb = Perturbation(perturb, expert.seed) if perturb > 0 else None
    actions: List[np.ndarray] = []
    executed: List[np.ndarray] = []
    rewards: List[float] = []
    obs_list = []
    first = -1
    success = False
    for t in range(max_steps):
        a = expert.act()
        a_exec = a if disturb is None else disturb(expert, a)
        obs, r, _, info = env.step(a_exec)
        actions.append(a)
        executed.append(a_exec)
        rewards.append(r)
        if record_obs:
            obs_list.append(obs)
        success = bool(info["success"])
        if success and first < 0:
            first = t
        if first >= 0 and t - first >= hold_steps:
            break
    out = {
        "actions": np.asarray(actions, dtype=np.float64).reshape(-1, 7),
        "executed": np.asarray(executed, dtype=np.float64).reshape(-1, 7),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "success": bool(success and first >= 0),
        "steps": len(actions),
        "first_success": first,
    }
    if record_obs:
        out["obs"] = obs_list
    return out
