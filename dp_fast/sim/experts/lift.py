"""Lift: a top grasp on the cube (yaw matched to the cube's faces), then lift."""
from __future__ import annotations

import math

import numpy as np

from .base import CLOSE, ScriptedExpert
from .frames import down_rotation, gripper_yaw, nearest_equivalent, yaw_of


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
