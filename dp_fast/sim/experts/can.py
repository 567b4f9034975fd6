"""PickPlaceCan: a top grasp on the can, carried over the bins' wall into its quadrant of bin 2."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .base import CLOSE, OPEN, Clearance, ScriptedExpert
from .frames import down_rotation, nearest_equivalent

# The can's collision mesh (robosuite's CanObject) reaches 40 mm above and below its body origin.
CAN_HALF_HEIGHT = 0.04
# The walls of robosuite's bins reach 10 cm above the bin's position (bin1_pos), as high as a standing
# can's top.
BIN_WALL_HEIGHT = 0.10
# Off the can's axis by more than this along the fingers' closing direction, a pad would land on the
# can's top (open, the pads clear a centred can by ~13 mm), so the fingers do not go down past it;
# across that direction the fingers pass beside the can. Unperturbed descents stayed within 11.5 mm
# and 18 mm of the axis above the can's top (60 seeds).
CAN_TOL_CLOSING = 0.014
CAN_TOL_SIDE = 0.03


class CanExpert(ScriptedExpert):
    """Grasp the can from the top, carry it over the bins' wall, lower it into its (near) quadrant of
    bin 2, release and back off upward (success requires the gripper away from the can).

    While closing in on the can the open fingers keep above its top and bin 1's walls unless the hand is
    centred over the can (`base.Clearance`): pushed off its path (`run_expert(perturb=...)`), the hand
    would otherwise catch on a wall, sweep into the can or land a finger on its rim, and knock the can
    over, which a top grasp cannot recover from.
    """

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

    def _can_pose(self):
        e = self.env.env
        return self.env.body_pose(e.objects[e.object_id].root_body)

    def _can(self) -> np.ndarray:
        return self._can_pose()[0]

    def _clearance(self, can: np.ndarray, rot: np.ndarray) -> Optional[Clearance]:
        """The can's top and bin 1's walls while the can stands (within ~25 degrees of upright)."""
        if rot[2, 2] < 0.9:
            return None
        wall_top = float(self.env.env.bin1_pos[2]) + BIN_WALL_HEIGHT
        return Clearance(top_z=max(float(can[2]) + CAN_HALF_HEIGHT, wall_top), tol_closing=CAN_TOL_CLOSING,
                         tol_side=CAN_TOL_SIDE)

    def _plan(self) -> np.ndarray:
        can, rot = self._can_pose()
        grasp = can + np.array([0, 0, self.grasp_dz])
        a = self._pick(grasp, can[2], xy_tol=0.012, rot_tol=0.1, descend_vmax=0.8, tol=0.008, late_tol=0.015,
                       clear=self._clearance(can, rot))
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
