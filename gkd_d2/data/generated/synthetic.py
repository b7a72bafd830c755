"""A synthetic but hard detection dataset, written as real COCO json + PNG images.

The global-knowledge distillation demo is about *ambiguous instances* -- small, occluded,
blurred and truncated objects on which a teacher's local knowledge is noisy -- so this
generator makes plenty of them, on purpose, while keeping every object recognisable in
principle (ground truth is exact; nothing is drawn that is not annotated unless it is at most
``min_visible`` visible).

Classes (``SYNTHETIC_CLASSES``)::

    disc, ring, square, striped_square, triangle

They differ by shape *and* by texture: ``ring`` is a ``disc`` with a hole, and
``striped_square`` is a ``square`` with a two-colour grating (period 3-9 px); the other
classes are never striped (flat, shaded or mottled). When an instance is small or blurred, the
hole and the stripes wash out, so ring/disc and striped/plain square become genuinely
ambiguous -- local evidence alone cannot settle them. Colour is random and independent of the
class; squares, striped squares and triangles are rotated.

Each image (``image_size``: int or ``(h, w)``):

- **background clutter**: a two-colour linear gradient, low-frequency "clouds", soft blobs,
  anti-aliased distractor lines and short arcs, hard-edged elongated ellipses, sometimes a
  faint striped band, and pixel noise -- none of them objects;
- **objects**: ``1..max_objects`` of them, classes uniform, size (the shape's diameter)
  log-uniform from ``min_size`` px to ``max_size_frac`` of the shorter image side, so many
  are small (at 256 px about a third have a box shorter side < 20 px);
- **occlusion**: objects are painted in z-order and later ones cover earlier ones; a fraction
  ``cluster_prob`` is placed next to an earlier object to make overlaps frequent. The box stays
  the full *amodal* box; an annotation whose ``visible_fraction`` falls below ``min_visible``
  is dropped;
- **blur**: a fraction ``blur_prob`` of the objects is Gaussian-blurred (sigma 4-12% of the
  object's size, clipped to 0.8-5 px; the object is blurred over the sharp background, not
  the background with it);
- **truncation**: centres may lie up to ``0.6`` radius outside the image; the box is clipped to
  the image, and an object keeping less than ``min_inside`` of its area inside is dropped.

Annotations are COCO boxes ``[x, y, w, h]`` (pixel-edge coordinates, ``iscrowd = 0``,
``area`` = the object's visible pixel count) with three extra fields that benchmarks use to
find the ambiguous instances:

- ``visible_fraction`` (float): unoccluded share of the object's pixels *inside the image*
  (occlusion only; truncation is reported by ``truncated``);
- ``blurred`` (bool);
- ``truncated`` (bool): the object extends beyond the image border (its box was clipped).

Everything is deterministic by ``seed``: image ``i`` draws from
``numpy.random.Generator(PCG64([seed, i]))`` (so the first images of a larger set are those of
a smaller one) and PNGs are written with fixed encoder settings, so the same arguments give a
byte-identical json and identical PNG files.

:func:`register_synthetic_dataset` generates the files once (a ``params.json`` stamp beside
the annotations records the parameters, ``GENERATOR_VERSION`` and the sha256 of
``annotations.json``, so a truncated or edited json is regenerated) and registers the dataset in
Detectron2 the way ``register_coco_instances`` does, except that it passes
``extra_annotation_keys=EXTRA_ANNOTATION_KEYS`` to ``load_coco_json`` so the three extra
fields survive into the dataset dicts (``register_coco_instances`` would drop them).
"""
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .raster import SS, coarse_noise, distinct_colour, window
from .storage import generator_params, register_generated_dataset, write_coco

__all__ = [
    "EXTRA_ANNOTATION_KEYS",
    "GENERATOR_VERSION",
    "SYNTHETIC_CLASSES",
    "generate_synthetic_coco",
    "register_synthetic_dataset",
]

SYNTHETIC_CLASSES = ("disc", "ring", "square", "striped_square", "triangle")
#: per-annotation fields kept in Detectron2's dataset dicts by ``register_synthetic_dataset``
EXTRA_ANNOTATION_KEYS = ("visible_fraction", "blurred", "truncated")
#: bump when the generator's output changes, so stale generated folders are regenerated
GENERATOR_VERSION = 2

_DISC, _RING, _SQUARE, _STRIPED, _TRIANGLE = range(5)
_ROTATED = (_SQUARE, _STRIPED, _TRIANGLE)
_SQRT3 = float(np.sqrt(3.0))


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _shape_mask(cls, u, v, hole):
    """Inside test of class ``cls`` at rotated unit coordinates (shape radius 1)."""
    if cls in (_DISC, _RING):
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= hole * hole) if cls == _RING else r2 <= 1.0
    if cls in (_SQUARE, _STRIPED):
        return (np.abs(u) <= 0.75) & (np.abs(v) <= 0.75)
    # equilateral triangle inscribed in the unit circle, centroid at the origin
    return (v >= -0.5) & (np.abs(u) * _SQRT3 <= 1.0 - v)


def _texture(rng, cls, u, v, size, base):
    """Colour (..., 3) of an object at its rotated unit coordinates ``u``, ``v``."""
    shape = u.shape + (3,)
    if cls == _STRIPED:
        other = distinct_colour(rng, base, 70.0)
        period = rng.uniform(3.0, float(np.clip(size / 3.0, 3.5, 9.0))) / (size / 2.0)  # unit coords
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 1)
        t = (u * np.cos(angle) + v * np.sin(angle)) / period + phase
        stripes = (t - np.floor(t)) < 0.5
        return np.where(stripes[..., None], base, other)
    kind = rng.integers(3)
    if kind == 0:  # flat, faint grain
        return np.broadcast_to(base, shape) + rng.normal(0, rng.uniform(2, 8), size=shape)
    if kind == 1:  # linear shading across the object
        a = rng.uniform(0, 2 * np.pi)
        return base + (u * np.cos(a) + v * np.sin(a))[..., None] * rng.uniform(15, 45)
    # mottled: smooth low-frequency colour variation (no stripes)
    n = coarse_noise(rng, u.shape[0], u.shape[1], 4)
    return base + n[..., None] * rng.uniform(15, 35) * rng.choice([-1.0, 1.0], size=3)


def _background(rng, h, w):
    s = max(h, w)
    c0, c1, c2 = rng.uniform(20, 235, size=(3, 3)).astype(np.float32)
    gx = (np.arange(w, dtype=np.float32) / s)[None, :, None]
    gy = (np.arange(h, dtype=np.float32) / s)[:, None, None]
    img = c0 + (c1 - c0) * gx + (c2 - c0) * gy
    clouds = coarse_noise(rng, h, w, rng.integers(3, 8)).astype(np.float32)
    img += clouds[..., None] * rng.uniform(10, 35, size=3).astype(np.float32)
    for _ in range(rng.integers(0, 4)):  # soft blobs
        cx, cy, sd = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 0.12 * s)
        tint = rng.uniform(-70, 70, size=3)
        y0, y1, x0, x1 = window(cx, cy, 3 * sd, h, w)
        if y0 < y1 and x0 < x1:
            yy, xx = np.ogrid[y0:y1, x0:x1]
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sd * sd))
            img[y0:y1, x0:x1] += (blob[..., None] * tint).astype(np.float32)
    if rng.random() < 0.3:  # faint striped band: stripes alone do not make a striped_square
        a, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
        off, half, tint = rng.uniform(0, s), rng.uniform(4, 0.12 * s), rng.uniform(-45, 45, size=3)
        yy, xx = np.ogrid[0:h, 0:w]
        t = (xx * np.cos(a) + yy * np.sin(a)) / period
        d = -xx * np.sin(a) + yy * np.cos(a) - off + s / 2
        band = (np.abs(d) < half) & (t % 1.0 < 0.5)
        img[band] += tint.astype(np.float32)
    for _ in range(rng.integers(0, 3)):  # hard-edged elongated ellipses (never disc-like)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ra = rng.uniform(6, 0.2 * s)
        rb = ra / rng.uniform(3, 8)
        a = rng.uniform(0, np.pi)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        y0, y1, x0, x1 = window(cx, cy, ra, h, w)
        if y0 < y1 and x0 < x1:
            yy, xx = np.ogrid[y0:y1, x0:x1]
            du, dv = xx - cx, yy - cy
            e = ((du * np.cos(a) + dv * np.sin(a)) / ra) ** 2 + ((-du * np.sin(a) + dv * np.cos(a)) / rb) ** 2
            img[y0:y1, x0:x1][e <= 1] = colour
    # anti-aliased lines and short arcs, drawn at 2x and downsampled
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((2 * w, 2 * h), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(2, 8)):
        x0, x1 = rng.uniform(-0.1 * w, 1.1 * w, size=2) * 2
        y0, y1 = rng.uniform(-0.1 * h, 1.1 * h, size=2) * 2
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 6)))
    for _ in range(rng.integers(0, 3)):  # arcs of at most 150 degrees: never a full ring
        cx, cy, r = rng.uniform(0, w) * 2, rng.uniform(0, h) * 2, rng.uniform(5, 0.2 * s) * 2
        start = rng.uniform(0, 360)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.arc(
            [cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(40, 150), fill=colour,
            width=int(rng.integers(2, 7)),
        )
    return np.asarray(canvas.resize((w, h), Image.BOX), dtype=np.float32)


def _render_image(rng, h, w, p):
    """One image (uint8 HxWx3) and its annotations (without ids)."""
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int64)  # top-most object per pixel
    placed, objects = [], []
    min_size = float(p["min_size"])
    max_size = max(min_size, float(p["max_size_frac"]) * min(h, w))
    for k in range(int(rng.integers(1, p["max_objects"] + 1))):
        cls = int(rng.integers(len(SYNTHETIC_CLASSES)))
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        r = size / 2.0
        if placed and rng.random() < p["cluster_prob"]:  # next to an earlier object: overlaps
            pcx, pcy, pr = placed[int(rng.integers(len(placed)))]
            a = rng.uniform(0, 2 * np.pi)
            dist = (pr + r) * rng.uniform(0.3, 0.9)
            cx, cy = pcx + dist * np.cos(a), pcy + dist * np.sin(a)
        else:
            cx, cy = rng.uniform(-0.6 * r, w + 0.6 * r), rng.uniform(-0.6 * r, h + 0.6 * r)
        angle = rng.uniform(0, 2 * np.pi) if cls in _ROTATED else 0.0
        hole = rng.uniform(0.45, 0.62)
        blurred = bool(rng.random() < p["blur_prob"])
        sigma = float(np.clip(size * rng.uniform(0.04, 0.12), 0.8, 5.0)) if blurred else 0.0
        pad = int(np.ceil(3 * sigma)) + 1
        # full (amodal) window, possibly beyond the image; supersampled coordinates
        x0, y0 = int(np.floor(cx - r)) - pad, int(np.floor(cy - r)) - pad
        x1, y1 = int(np.ceil(cx + r)) + 1 + pad, int(np.ceil(cy + r)) + 1 + pad
        ys = (np.arange((y1 - y0) * SS) + 0.5) / SS + y0
        xs = (np.arange((x1 - x0) * SS) + 0.5) / SS + x0
        dv, du = (ys[:, None] - cy) / r, (xs[None, :] - cx) / r
        u = du * np.cos(angle) + dv * np.sin(angle)
        v = -du * np.sin(angle) + dv * np.cos(angle)
        cover = _shape_mask(cls, u, v, hole).astype(np.float64)
        hw = (y1 - y0, SS, x1 - x0, SS)
        alpha = cover.reshape(hw).mean(axis=(1, 3))
        mask = alpha >= 0.5  # the object's pixels
        total = int(mask.sum())
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if total == 0 or ix0 >= ix1 or iy0 >= iy1:
            continue
        crop = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        inside = int(mask[crop].sum())
        if inside < p["min_inside"] * total:
            continue
        region = img[iy0:iy1, ix0:ix1]
        ref = region[mask[crop]].mean(axis=0)
        base = distinct_colour(rng, ref, p["min_contrast"])
        colour = _texture(rng, cls, u, v, size, base).reshape(hw + (3,)).mean(axis=(1, 3))
        colour = np.clip(colour, 0, 255)
        premult = alpha[..., None] * colour
        if blurred:
            alpha = ndimage.gaussian_filter(alpha, sigma, mode="constant")
            premult = ndimage.gaussian_filter(premult, (sigma, sigma, 0), mode="constant")
        img[iy0:iy1, ix0:ix1] = premult[crop] + (1.0 - alpha[crop][..., None]) * region
        owner[iy0:iy1, ix0:ix1][mask[crop]] = k
        placed.append((cx, cy, r))
        rows, cols = np.nonzero(mask)
        box = (
            max(x0 + int(cols.min()), 0),
            max(y0 + int(rows.min()), 0),
            min(x0 + int(cols.max()) + 1, w),
            min(y0 + int(rows.max()) + 1, h),
        )
        truncated = bool(
            x0 + cols.min() < 0 or y0 + rows.min() < 0 or x0 + cols.max() + 1 > w or y0 + rows.max() + 1 > h
        )
        objects.append(dict(index=k, cls=cls, box=box, inside=inside, blurred=blurred, truncated=truncated))
    if p["noise"] > 0:  # sensor noise over everything, objects included
        img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(rng.uniform(0.3, 1.0) * p["noise"])
    visible = np.bincount(owner[owner >= 0], minlength=int(p["max_objects"]) + 1)
    anns = []
    for o in objects:
        frac = float(visible[o["index"]]) / o["inside"]
        if frac < p["min_visible"]:
            continue
        bx0, by0, bx1, by1 = o["box"]
        anns.append(
            dict(
                category_id=o["cls"] + 1,
                bbox=[float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                area=float(visible[o["index"]]),
                iscrowd=0,
                visible_fraction=round(frac, 4),
                blurred=o["blurred"],
                truncated=o["truncated"],
            )
        )
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), anns


def generate_synthetic_coco(
    out_dir,
    num_images,
    image_size=256,
    seed=0,
    max_objects=8,
    min_size=8.0,
    max_size_frac=0.45,
    blur_prob=0.25,
    min_visible=0.25,
    min_inside=0.3,
    cluster_prob=0.35,
    min_contrast=55.0,
    noise=6.0,
):
    """Write ``out_dir/images/{image_id:06d}.png`` and ``out_dir/annotations.json``.

    Args:
        out_dir: output folder (created; existing files of the same names are overwritten).
        num_images: number of images; image ids are ``1..num_images``.
        image_size: int or ``(h, w)``.
        seed: everything is a deterministic function of the arguments.
        max_objects: objects attempted per image, uniform in ``1..max_objects`` (some are
            dropped: too occluded or too truncated).
        min_size, max_size_frac: object diameter is log-uniform in
            ``[min_size, max_size_frac * min(h, w)]`` pixels.
        blur_prob: probability that an object is Gaussian-blurred.
        min_visible: drop annotations whose visible (unoccluded) fraction is below this.
        min_inside: drop objects with less than this fraction of their area inside the image.
        cluster_prob: probability that an object is placed next to an earlier one.
        min_contrast: preferred minimal RGB distance between an object's colour and the
            background under it (lower = harder).
        noise: maximal standard deviation of the per-image pixel noise.

    Returns:
        The path of the json file.
    """
    params = dict(
        max_objects=int(max_objects), min_size=min_size, max_size_frac=max_size_frac, blur_prob=blur_prob,
        min_visible=min_visible, min_inside=min_inside, cluster_prob=cluster_prob, min_contrast=min_contrast,
        noise=noise,
    )
    if params["max_objects"] < 1 or min_size <= 0:
        raise ValueError("max_objects must be >= 1 and min_size > 0")
    categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(SYNTHETIC_CLASSES)]
    info = dict(description="gkd_d2 synthetic ambiguous-instances dataset", version=str(GENERATOR_VERSION), **params)
    return write_coco(
        out_dir, num_images, image_size, seed, lambda rng, h, w: _render_image(rng, h, w, params), categories, info
    )


# --------------------------------------------------------------------------------------------
# registration (the files and the stamp: storage.py)
# --------------------------------------------------------------------------------------------
def register_synthetic_dataset(name, root, num_images, image_size=256, seed=0, **kwargs):
    """Generate the synthetic dataset into ``root`` (once) and register it as ``name``.

    Files: ``root/annotations.json``, ``root/images/*.png`` and ``root/params.json``, a stamp
    of every generator argument (defaults included), ``GENERATOR_VERSION`` and the sha256 of
    ``annotations.json``. Existing files are reused when the stamp matches exactly, the json's
    content matches its hash and every image is there, and regenerated otherwise. Generation happens in
    a temporary sibling folder that is renamed into place atomically; if another process puts
    a matching folder there first, that one is used. A stale folder is only replaced when it
    holds nothing but these generated files.

    Registration mirrors ``detectron2.data.datasets.register_coco_instances`` but passes
    ``extra_annotation_keys=EXTRA_ANNOTATION_KEYS`` to ``load_coco_json``, so each annotation of
    ``DatasetCatalog.get(name)`` keeps ``visible_fraction``, ``blurred`` and ``truncated``.
    The metadata gets ``json_file``, ``image_root``, ``evaluator_type="coco"``,
    ``thing_classes`` (= ``SYNTHETIC_CLASSES``, as load_coco_json would set them),
    ``thing_dataset_id_to_contiguous_id`` and ``synthetic_params``.

    Registering the same name again with the same root and parameters is a no-op; with other
    ones it raises ``ValueError`` naming the dataset.

    Args:
        name: dataset name in Detectron2's catalogs.
        root: folder of the generated files.
        num_images, image_size, seed, **kwargs: arguments of :func:`generate_synthetic_coco`.
    """
    params = generator_params(generate_synthetic_coco, num_images, image_size, seed, kwargs, GENERATOR_VERSION)
    register_generated_dataset(
        name, root, params, generate_synthetic_coco, SYNTHETIC_CLASSES, EXTRA_ANNOTATION_KEYS, "synthetic_params"
    )
