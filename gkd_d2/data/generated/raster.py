"""Rasterising helpers shared by the generators: supersampling, smooth noise, a colour that
stands out from the background, and the part of an object's window inside the image."""
import numpy as np
from scipy import ndimage

#: supersampling factor per axis for anti-aliased shape edges and stripes
SS = 2


def coarse_noise(rng, h, w, cells):
    """Smooth noise (h, w) in [-1, 1]: a ``cells``-wide random grid, bilinearly upsampled."""
    gh, gw = max(2, int(round(cells * h / max(h, w)))), max(2, int(round(cells * w / max(h, w))))
    grid = rng.uniform(-1, 1, size=(gh, gw))
    return ndimage.zoom(grid, (h / gh, w / gw), order=1, mode="nearest", grid_mode=True)[:h, :w]


def distinct_colour(rng, ref, min_dist):
    """A random RGB colour (3,) at least ``min_dist`` away from ``ref`` (best of a few tries)."""
    best, best_d = None, -1.0
    for _ in range(6):
        c = rng.uniform(0, 255, size=3)
        d = float(np.linalg.norm(c - ref))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def window(cx, cy, r, h, w):
    """Integer window (y0, y1, x0, x1) of radius ``r`` around (cx, cy), clipped to the image."""
    return (max(int(cy - r), 0), min(int(cy + r) + 2, h), max(int(cx - r), 0), min(int(cx + r) + 2, w))


def overlap(x0, y0, x1, y1, h, w):
    """(image slices, window slices) of the part of the window [x0, x1) x [y0, y1) that lies
    in an h x w image (both empty where none does)."""
    iy0, iy1, ix0, ix1 = min(max(y0, 0), h), max(min(y1, h), 0), min(max(x0, 0), w), max(min(x1, w), 0)
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
