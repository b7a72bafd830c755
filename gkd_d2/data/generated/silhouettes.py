"""The silhouettes of the "shapes" dataset's ten classes (``shapes.py``): an inside test per
class at unit coordinates, and the per-instance proportions that vary within a class."""
import numpy as np


def shape_params(rng, name, detail=1.0):
    """The class's own proportions (stroke widths, detail sizes), drawn per instance; ``detail``
    scales the look-alike details (the ring's hole, the square's notch)."""
    u = rng.uniform
    return {
        "ring": {"hole": u(0.38, 0.52) * detail},
        "notched_square": {"notch": u(0.45, 0.6) * detail},
        "cross": {"arm": u(0.2, 0.32)},
        "star": {"inner": u(0.4, 0.55), "points": 5},
        "crescent": {"offset": u(0.4, 0.6), "bite": u(0.75, 0.9)},
        "ell": {"thick": u(0.5, 0.7)},
        "arrow": {"shaft": u(0.16, 0.28), "head": u(0.55, 0.8)},
    }.get(name, {})


def shape_mask(name, u, v, **q):
    """Inside test of class ``name`` at unit coordinates ``u``, ``v`` (the shape fits the unit
    circle); ``q``: its proportions (see :func:`shape_params`; defaults are mid-range)."""
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    if name == "disc":
        return r2 <= 1.0
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= q.get("hole", 0.45) ** 2)
    if name in ("square", "notched_square"):
        inside = (au <= 0.75) & (av <= 0.75)
        if name == "square":
            return inside
        edge = 0.75 - q.get("notch", 0.52)  # the bite: a square of that side in the (+, +) corner
        return inside & ~((u > edge) & (v > edge))
    if name == "triangle":
        return (v >= -0.5) & (au * np.sqrt(3.0) <= 1.0 - v)
    if name == "cross":
        arm = q.get("arm", 0.26)
        return ((au <= arm) & (av <= 0.9)) | ((av <= arm) & (au <= 0.9))
    if name == "star":
        k = q.get("points", 5)
        t = (np.arctan2(v, u) * k / (2 * np.pi)) % 1.0
        tri = np.abs(2.0 * t - 1.0)  # 1 at the points, 0 between them
        inner = q.get("inner", 0.47)
        return np.sqrt(r2) <= inner + (1.0 - inner) * tri**1.6
    if name == "crescent":
        off, bite = q.get("offset", 0.5), q.get("bite", 0.82)
        return (r2 <= 1.0) & ((u - off) ** 2 + v * v > bite * bite)
    if name == "ell":
        t = 1.4 * 0.5 * q.get("thick", 0.6)
        return (au <= 0.7) & (av <= 0.7) & ((u <= -0.7 + t) | (v >= 0.7 - t))
    if name == "arrow":
        shaft, head = q.get("shaft", 0.22), q.get("head", 0.68)
        body = (u >= -0.9) & (u <= 0.1) & (av <= shaft)
        tip = (u >= 0.1) & (u <= 0.9) & (av <= head * (0.9 - u) / 0.8)
        return body | tip
    raise KeyError(f"unknown shape class '{name}'")
