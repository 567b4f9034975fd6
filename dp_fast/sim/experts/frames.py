"""Rotation and angle helpers for the scripted experts: gripper frames pointing down, yaw of a body,
rotation vectors. Pure numpy, no simulator."""
from __future__ import annotations

import math

import numpy as np

# Gripper site frame when pointing down with yaw 0: columns are the site x (finger closing axis),
# y and z axes in world coordinates.
_R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def rz(angle: float) -> np.ndarray:
    """Rotation about the world z axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def down_rotation(yaw: float) -> np.ndarray:
    """Gripper pointing down, finger closing axis at angle yaw + pi/2 in the table plane."""
    return rz(yaw) @ _R_DOWN


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
    """Angle in [-pi, pi)."""
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
