"""The machinery every scripted expert shares: the per-episode style draw, the way-point servo in the
delta-OSC action space, and the pick phases (approach, descend, grasp) with grasp-failure retries.

    a_pos = clip(kp * (p_target - p_eef) - kd * v) / 0.05     (0.05 m = one action unit)
    a_rot = clip(kr * rotvec(R_target R_eef^T) / 0.5)          (0.5 rad = one action unit, world frame)
    a_grip = -1 (open) / +1 (close)

A task's expert subclasses `ScriptedExpert` and implements `_setup` (read the scene, draw the style) and
`_plan` (one action of its state machine).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..env import SimEnv
from .frames import rotvec

POS_UNIT = 0.05  # metres per unit of delta-position action (robosuite OSC_POSE output_max)
ROT_UNIT = 0.5   # radians per unit of delta-rotation action
OPEN, CLOSE = -1.0, 1.0
# How far the Panda's finger meshes reach below the gripper's grip site (the eef site), and the gap the
# fingertips keep above an obstacle's top while the hand is not centred over the object.
FINGER_DEPTH = 0.0125
TOP_CLEARANCE = 0.005


@dataclass(frozen=True)
class Clearance:
    """Keeps the open fingers above `top_z` while the hand is off the grasp axis (see `_pick`).

    top_z: the top of the object and of anything around it the hand could catch on (world z).
    tol_closing, tol_side: how far the hand may be off the grasp axis along the fingers' closing
    direction (where a finger meets the object) and across it, and still go lower.
    """

    top_z: float
    tol_closing: float
    tol_side: float

    @property
    def safe_z(self) -> float:
        """Lowest grip-site height at which the fingertips clear `top_z`."""
        return self.top_z + TOP_CLEARANCE + FINGER_DEPTH


class ScriptedExpert:
    """Base class: way-point tracking and the per-episode style draw. Subclasses implement `_setup` and
    `_plan`; `act()` returns the next action. Deterministic given the simulator state and `seed`."""

    task = ""

    def __init__(self, env: SimEnv, seed: Optional[int] = None):
        self.env = env
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.phase = "start"
        self.t = 0
        self._phase_t = 0
        self._pause = 0

    # -------------------------------------------------------------- episode start
    def reset(self) -> None:
        """Call after env.reset()/reset_to(): re-draws the style from the seed and reads the scene."""
        self.rng = np.random.default_rng(self.seed)
        self.t = 0
        self._phase_t = 0
        self._pause = 0
        self._prev_eef = self.env.eef_pos()
        self.target = self._prev_eef.copy()
        self.vel = np.zeros(3)
        self.kp = float(self.rng.uniform(0.9, 1.6))       # proportional gain (x 0.05 m per unit)
        self.vmax = float(self.rng.uniform(0.7, 1.0))     # translation speed cap (action units)
        self.kr = float(self.rng.uniform(1.0, 1.6))
        self.kd = 0.5
        self.retries = 0
        self.max_retries = 2
        self._around = False  # the open fingers are down around the object's top (see _clear_descent)
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def _plan(self) -> np.ndarray:
        raise NotImplementedError

    def act(self) -> np.ndarray:
        eef = self.env.eef_pos()
        self.vel = eef - self._prev_eef  # metres per control step
        self._prev_eef = eef
        a = self._plan()
        self.t += 1
        self._phase_t += 1
        return a

    def _goto(self, phase: str, pause_max: int = 0) -> None:
        self.phase = phase
        self._phase_t = 0
        self._pause = int(self.rng.integers(0, pause_max + 1)) if pause_max > 0 else 0

    # -------------------------------------------------------------- servo
    def servo(self, p_target: np.ndarray, r_target: Optional[np.ndarray], grip: float,
              kp: Optional[float] = None, vmax: Optional[float] = None) -> np.ndarray:
        """Action towards the way-point p_target (and rotation r_target), gripper command `grip`.
        Sets `self.target` (what `Perturbation` measures its distance from)."""
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
        return np.clip(a, -1.0, 1.0)

    def err(self, p_target: np.ndarray) -> np.ndarray:
        return np.asarray(p_target) - self.env.eef_pos()

    def rot_err(self, r_target: np.ndarray) -> float:
        return float(np.linalg.norm(rotvec(r_target @ self.env.eef_mat().T)))

    # -------------------------------------------------------------- picking
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

    def _off_axis(self, point: np.ndarray, clear: Clearance) -> bool:
        """Whether the hand is off the vertical through `point` by more than clear's tolerances."""
        off = self.env.eef_pos()[:2] - np.asarray(point)[:2]
        x = self.env.eef_mat()[:2, 0]  # the fingers' closing direction
        x = x / max(float(np.linalg.norm(x)), 1e-9)
        along = abs(float(off @ x))
        across = abs(float(off[1] * x[0] - off[0] * x[1]))
        return along > clear.tol_closing or across > clear.tol_side

    def _clear_approach(self, hover: np.ndarray, clear: Optional[Clearance]) -> np.ndarray:
        """Approach way-point: the hover point, or straight up (braking sideways) while the hand is low
        off the grasp axis: below the clearance height and 1 cm below the hover point. Moving on
        sideways there, it would catch on the object or what surrounds it (Can: bin 1's walls)."""
        self._around = False
        if clear is None:
            return hover
        eef = self.env.eef_pos()
        if eef[2] < min(clear.safe_z, hover[2] - 0.01) and self._off_axis(hover, clear):
            return np.array([eef[0], eef[1], max(hover[2], clear.safe_z)])
        return hover

    def _clear_descent(self, grasp: np.ndarray, clear: Optional[Clearance]) -> np.ndarray:
        """Descent way-point: the grasp point, but no lower than the clearance height while the hand is
        off the grasp axis (a finger would land on the object's rim), until the fingers have gone down
        around the object's top centred (then they straddle it, and centring cannot tip it)."""
        if clear is None:
            return grasp
        off_axis = self._off_axis(grasp, clear)
        if not off_axis and self.env.eef_pos()[2] < clear.top_z:
            self._around = True
        if off_axis and not self._around:
            return np.array([grasp[0], grasp[1], max(grasp[2], clear.safe_z)])
        return grasp

    def _pick(self, grasp: np.ndarray, obj_z: float, xy_tol: float, rot_tol: float, descend_vmax: float,
              tol: float, late_tol: float, clear: Optional[Clearance] = None) -> Optional[np.ndarray]:
        """The phases every expert starts with: hover `self.hover` above the grasp point (gripper open,
        turned to r_grasp) until within xy_tol / 3 cm / rot_tol, descend onto it (vmax <= descend_vmax)
        until within tol (late_tol after 60 steps), close for close_steps, then `_start_lift(obj_z)`.
        With `clear`, the hand keeps the fingertips above the object's top unless it is centred over
        it (states an unperturbed expert does not reach). Returns the action, or None once the expert
        is past these phases."""
        hover = grasp + np.array([0, 0, self.hover])
        if self.phase == "approach":
            a = self.servo(self._clear_approach(hover, clear), self.r_grasp, OPEN)
            e = self.err(hover)
            if np.linalg.norm(e[:2]) < xy_tol and abs(e[2]) < 0.03 and self.rot_err(self.r_grasp) < rot_tol:
                self._goto("descend", pause_max=3)
            return a
        if self.phase == "descend":
            if self._pause > 0:
                self._pause -= 1
                return self.servo(hover, self.r_grasp, OPEN)
            a = self.servo(self._clear_descent(grasp, clear), self.r_grasp, OPEN,
                           vmax=min(self.vmax, descend_vmax))
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
