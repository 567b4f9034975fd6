"""NutAssemblySquare: grasp the square nut's handle, turn the nut to the peg's sides, carry it over the
peg, lower it down the peg, release."""
from __future__ import annotations

import math

import numpy as np

from .base import CLOSE, OPEN, ScriptedExpert
from .frames import down_rotation, gripper_yaw, nearest_equivalent, rz, wrap, yaw_of


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
        return rz(best[1]) @ r_eef

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
