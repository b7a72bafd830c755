"""A synthetic detection dataset on which a detector *can* learn the classes, with a minority
of ambiguous instances, written as real COCO json + PNG images.

``synthetic.py`` (the "ambiguous instances" data) makes almost every instance hard, so a small
teacher trained on it barely knows the classes. Here class identity is learnable from the silhouette at normal sizes,
and only a stated minority of instances is made ambiguous, the way the paper describes
(small, blurred, occluded, truncated, and look-alike classes whose difference vanishes when
they are small).

Classes (``SHAPES_CLASSES``, ten)::

    disc, ring, square, notched_square, triangle, cross, star, crescent, ell, arrow

Two look-alike pairs (``SHAPES_LOOKALIKE_PAIRS``) differ only in one detail: ``ring`` is a
``disc`` with a central hole (radius 38-52% of the disc's), ``notched_square`` a ``square``
with a square bite out of one corner (30-40% of the side). At normal sizes (>= ``min_clear``
px) the detail is several pixels wide; on a small or blurred instance it washes out.

Within-class variation, all independent of the class: an affine deformation (a tilt of up
to 15 degrees from the upright pose, aspect ratio 0.8-1.25, shear up to 0.12) and a smooth
sinusoidal wobble of the outline (up to 4% of the radius); the shape's own proportions (the
ring's width, the cross's, star's, ell's and arrow's stroke widths, the crescent's bite, the
notch's size); colour (random, at least ``min_contrast`` from the background's where a few
draws find one); texture (flat, shaded, mottled or striped: the base colour modulated by 8-24
levels, for every class). The background is calm: a linear gradient that changes by at most 40
levels per channel along each axis, faint low-frequency clouds (up to 8 levels) and pixel noise
(no shape-like clutter).

Version 3 (``SHAPES_GENERATOR_VERSION``) made the classes learnable by the demo teacher in the
replica's schedule: version 2 (3-10 objects of 22-56 px, any rotation, shear 0.2, texture
12-40 levels, clouds and blobs on the background) left a from-scratch RetinaNet R34 at 7.4 AP
after 1200 iterations, its own classification of clear GT boxes at chance. Shapes are kept
near upright as most real objects are: in a quick check (a 4-layer CNN on 40 px crops of clear
instances, 600 steps of 32) any rotation gave 67% accuracy, +-45 degrees 91%, +-15 degrees 99%.

Each image: ``min_objects..max_objects`` objects (1-4), classes uniform (or, with
``lookalike_prob``, drawn that often among the look-alike pairs' classes). Each object is
*clear* with probability ``1 - ambiguous_prob``; otherwise one reason is drawn uniformly:

- ``small``: diameter log-uniform in ``[min_size, small_max]`` px;
- ``blurred``: Gaussian blur of sigma 9-16% of the diameter (at least 1.5 px);
- ``occluded``: an extra object (z-order on top) is placed over it, hiding part of it;
- ``truncated``: its centre is placed near a border so that part of it lies outside.

Clear objects (and the occluders) have a diameter log-uniform in
``[min_clear, max_size_frac * min(h, w)]`` px; every object but the occluders is placed apart
from the others (windows of 1.45 radii do not touch) and, unless truncated on purpose, fully
inside the image. Ambiguity is then *measured* on the rendered image, never assumed:
an annotation's ``ambiguity`` lists every reason that applies (``small``: diameter
``<= small_max``; ``blurred``; ``occluded``: ``visible_fraction < 0.75``; ``truncated``: less
than 80% of the object inside the image) and ``ambiguous`` is whether that list is non-empty.
With the defaults about 20% of the annotations are ambiguous (20% at 160 px, 2.0 annotations
per image; clear objects 28-80 px, median 42).

Annotations are COCO boxes ``[x, y, w, h]`` (pixel-edge coordinates, ``iscrowd = 0``,
``area`` = visible pixel count) with the extra fields ``SHAPES_EXTRA_ANNOTATION_KEYS``:
``visible_fraction``, ``blurred``, ``truncated`` (as in ``synthetic.py``: the box was clipped
at the border), ``ambiguous``, ``ambiguity`` (list of reasons) and ``object_size`` (the
diameter in px). Categories carry ``lookalike``: the name of the other class of their pair, or
``""``.

Determinism: image ``i`` draws from ``numpy.random.Generator(PCG64([seed, i]))`` (the first
images of a larger set are those of a smaller one); PNGs are written with fixed encoder
settings; the same arguments give a byte-identical json.

:func:`register_shapes_dataset` generates the files once into ``root`` (stamp ``params.json``
with every generator argument, ``SHAPES_GENERATOR_VERSION`` and the sha256 of the json, so a
truncated or edited json, or missing images, are regenerated) and registers the dataset with
the extra fields kept.
"""
import numpy as np
from scipy import ndimage

from .raster import SS, coarse_noise, distinct_colour, overlap
from .silhouettes import shape_mask, shape_params
from .storage import generator_params, register_generated_dataset, write_coco

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_EXTRA_ANNOTATION_KEYS",
    "SHAPES_GENERATOR_VERSION",
    "SHAPES_LOOKALIKE_PAIRS",
    "AMBIGUITY_REASONS",
    "generate_shapes_coco",
    "register_shapes_dataset",
    "shape_mask",
]

SHAPES_CLASSES = (
    "disc", "ring", "square", "notched_square", "triangle", "cross", "star", "crescent", "ell", "arrow",
)
SHAPES_LOOKALIKE_PAIRS = (("disc", "ring"), ("square", "notched_square"))
AMBIGUITY_REASONS = ("small", "blurred", "occluded", "truncated")
SHAPES_EXTRA_ANNOTATION_KEYS = (
    "visible_fraction", "blurred", "truncated", "ambiguous", "ambiguity", "object_size",
)
#: bump when the generator's output changes, so stale generated folders are regenerated
SHAPES_GENERATOR_VERSION = 3

_OCCLUDED_BELOW = 0.75  # visible fraction under which an instance counts as occluded
_TRUNCATED_BELOW = 0.8  # share inside the image under which it counts as truncated
_EXTENT = 1.45  # half-width of an object's window, in radii (deformation included)
_LOOKALIKE = {a: b for pair in SHAPES_LOOKALIKE_PAIRS for a, b in (pair, pair[::-1])}
_LOOKALIKE_IDS = [SHAPES_CLASSES.index(n) for pair in SHAPES_LOOKALIKE_PAIRS for n in pair]
_ROTATION = np.radians(15.0)  # largest tilt of a shape (radians) from its upright pose
_ASPECT = (0.8, 1.25)  # aspect-ratio range of the affine deformation
_SHEAR = 0.12  # largest shear of the affine deformation
_WOBBLE = 0.04  # largest amplitude of the outline's sinusoidal wobble (unit radius)
_TEXTURE = (8.0, 24.0)  # range of the texture's modulation of the base colour (grey levels)
_CLOUDS = 8.0  # largest amplitude of the background's low-frequency clouds (grey levels)


def _modulation(rng, u, v, size):
    """A texture field in [-1, 1] over the object's unit coordinates."""
    kind = int(rng.integers(4))
    if kind == 0:  # flat, faint grain
        return rng.uniform(-0.15, 0.15, size=u.shape)
    if kind == 1:  # linear shading
        a = rng.uniform(0, 2 * np.pi)
        return np.clip(u * np.cos(a) + v * np.sin(a), -1, 1)
    if kind == 2:  # mottled
        return coarse_noise(rng, u.shape[0], u.shape[1], 4)
    period = rng.uniform(3.0, max(3.5, min(size / 3.0, 9.0))) / (size / 2.0)  # stripes
    a, phase = rng.uniform(0, np.pi), rng.uniform(0, 1)
    t = (u * np.cos(a) + v * np.sin(a)) / period + phase
    return np.where(t - np.floor(t) < 0.5, 1.0, -1.0)


def _paint(rng, u, v, size, base):
    """Colour (..., 3) of an object: ``base`` modulated by a class-independent texture."""
    m = _modulation(rng, u, v, size)
    amp = rng.uniform(*_TEXTURE) * rng.choice([-1.0, 1.0], size=3)
    return base + m[..., None] * amp


def _background(rng, h, w, noise):
    """A calm background: a linear gradient (at most 40 levels per channel along each axis) and
    faint low-frequency clouds; nothing shaped like an object."""
    s = float(max(h, w))
    c0 = rng.uniform(25, 230, size=3)
    c = np.stack([c0, *np.clip(c0 + rng.uniform(-40, 40, size=(2, 3)), 0, 255)]).astype(np.float32)
    gx = (np.arange(w, dtype=np.float32) / s)[None, :, None]
    gy = (np.arange(h, dtype=np.float32) / s)[:, None, None]
    img = c[0] + (c[1] - c[0]) * gx + (c[2] - c[0]) * gy
    clouds = coarse_noise(rng, h, w, int(rng.integers(3, 6))).astype(np.float32)
    img += clouds[..., None] * rng.uniform(0, _CLOUDS, size=3).astype(np.float32)
    return img, float(rng.uniform(0.3, 1.0) * noise)


# --------------------------------------------------------------------------------------------
# layout and rendering
# --------------------------------------------------------------------------------------------
def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))))


def _is_free(c, r, placed):
    """Whether an object of radius ``r`` at ``c`` keeps its window off every placed one's."""
    return all(np.hypot(*(c - pc)) >= _EXTENT * (r + pr) + 1.0 for pc, pr in placed)


def _free_spot(rng, r, placed, lo, hi):
    """A free centre (:func:`_is_free`) in the box ``lo..hi`` (per axis, x then y), or None
    after 30 tries."""
    for _ in range(30):
        c = rng.uniform(lo, hi)
        if _is_free(c, r, placed):
            return c
    return None


def _layout(rng, h, w, p):
    """The objects of one image: list of dicts (cls, size, centre, blur sigma), in z-order."""
    n_cls = len(SHAPES_CLASSES)
    big = max(float(p["min_clear"]), float(p["max_size_frac"]) * min(h, w))
    objects, occluders, placed = [], [], []
    for _ in range(int(rng.integers(p["min_objects"], p["max_objects"] + 1))):
        cls = int(rng.integers(n_cls))
        if p["lookalike_prob"] > 0 and rng.random() < p["lookalike_prob"]:  # no draw at the default 0
            cls = _LOOKALIKE_IDS[int(rng.integers(len(_LOOKALIKE_IDS)))]
        reason = AMBIGUITY_REASONS[int(rng.integers(4))] if rng.random() < p["ambiguous_prob"] else ""
        lo_size = float(p["min_size"]) if reason == "small" else float(p["min_clear"])
        size = _log_uniform(rng, lo_size, float(p["small_max"]) if reason == "small" else big)
        r = size / 2.0
        m = _EXTENT * r
        if reason == "truncated":  # centre between 0.45 r outside and 0.5 r inside one border
            side, d = int(rng.integers(4)), rng.uniform(-0.45, 0.5) * r
            along = rng.uniform(m, max(m, (h if side < 2 else w) - m))  # along that border
            x = d if side == 0 else w - d if side == 1 else along
            y = d if side == 2 else h - d if side == 3 else along
            c = np.array([x, y]) if _is_free(np.array([x, y]), r, placed) else None
        else:
            c = _free_spot(rng, r, placed, np.array([m, m]), np.array([max(m, w - m), max(m, h - m)]))
        if c is None:
            continue
        sigma = 0.0
        if reason == "blurred":
            sigma = max(1.5, size * rng.uniform(0.09, 0.16))
        placed.append((c, r))
        objects.append(dict(cls=cls, size=size, centre=c, sigma=sigma))
        if reason == "occluded":  # an object on top, at 0.25-0.6 of the radii apart
            oc_size = _log_uniform(rng, max(float(p["min_clear"]), 0.8 * size), big)
            a = rng.uniform(0, 2 * np.pi)
            dist = (r + oc_size / 2.0) * rng.uniform(0.25, 0.6)
            oc = c + dist * np.array([np.cos(a), np.sin(a)])
            occluders.append(dict(cls=int(rng.integers(n_cls)), size=oc_size, centre=oc, sigma=0.0))
    return objects + occluders


def _deformed_coords(rng, o, x0, y0, x1, y1):
    """Supersampled unit coordinates (u, v) of the window [x0, x1) x [y0, y1) of object ``o``:
    rotation, aspect ratio, shear, and a sinusoidal wobble of the outline."""
    r = o["size"] / 2.0
    cx, cy = o["centre"]
    ys = ((np.arange((y1 - y0) * SS) + 0.5) / SS + y0 - cy) / r
    xs = ((np.arange((x1 - x0) * SS) + 0.5) / SS + x0 - cx) / r
    angle = rng.uniform(-_ROTATION, _ROTATION)
    aspect = np.exp(rng.uniform(np.log(_ASPECT[0]), np.log(_ASPECT[1])))
    shear = rng.uniform(-_SHEAR, _SHEAR)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xs[None, :] * ca + ys[:, None] * sa) * np.sqrt(aspect)
    v = (-xs[None, :] * sa + ys[:, None] * ca) / np.sqrt(aspect)
    u = u + shear * v
    amp, freq, ph = rng.uniform(0, _WOBBLE, size=2), rng.uniform(2, 5, size=2), rng.uniform(0, 2 * np.pi, size=2)
    return u + amp[0] * np.sin(freq[0] * v + ph[0]), v + amp[1] * np.sin(freq[1] * u + ph[1])


def _render_image(rng, h, w, p):
    """One image (uint8 HxWx3) and its annotations (without ids)."""
    img, noise = _background(rng, h, w, p["noise"])
    owner = np.full((h, w), -1, dtype=np.int64)
    drawn = []
    for k, o in enumerate(_layout(rng, h, w, p)):
        r, pad = o["size"] / 2.0, int(np.ceil(3 * o["sigma"])) + 1
        cx, cy = o["centre"]
        x0, y0 = int(np.floor(cx - _EXTENT * r)) - pad, int(np.floor(cy - _EXTENT * r)) - pad
        x1, y1 = int(np.ceil(cx + _EXTENT * r)) + 1 + pad, int(np.ceil(cy + _EXTENT * r)) + 1 + pad
        name = SHAPES_CLASSES[o["cls"]]
        u, v = _deformed_coords(rng, o, x0, y0, x1, y1)
        cells = (y1 - y0, SS, x1 - x0, SS)
        q = shape_params(rng, name, p["lookalike_detail"])
        alpha = shape_mask(name, u, v, **q).reshape(cells).mean(axis=(1, 3))
        mask = alpha >= 0.5
        at, crop = overlap(x0, y0, x1, y1, h, w)
        total, inside = int(mask.sum()), int(mask[crop].sum())
        if total == 0 or inside < max(1, p["min_inside"] * total):
            continue
        region = img[at]
        base = distinct_colour(rng, region[mask[crop]].mean(axis=0), p["min_contrast"])
        pu, pv = (t.reshape(cells).mean(axis=(1, 3)) for t in (u, v))  # pixel centres
        colour = np.clip(_paint(rng, pu, pv, o["size"], base), 0, 255)
        premult = alpha[..., None] * colour
        if o["sigma"] > 0:
            alpha = ndimage.gaussian_filter(alpha, o["sigma"], mode="constant")
            premult = ndimage.gaussian_filter(premult, (o["sigma"], o["sigma"], 0), mode="constant")
        img[at] = premult[crop] + (1.0 - alpha[crop][..., None]) * region
        owner[at][mask[crop]] = k
        rows, cols = np.nonzero(mask)
        amodal = (x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1)
        drawn.append(dict(index=k, o=o, amodal=amodal, inside=inside, total=total))
    if noise > 0:
        img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(noise)
    visible = np.bincount(owner[owner >= 0], minlength=len(drawn) + 1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), _annotations(drawn, visible, h, w, p)


def _annotations(drawn, visible, h, w, p):
    """COCO annotations (without ids) of the drawn objects, with the measured ambiguity."""
    anns = []
    for d in drawn:
        o, (ax0, ay0, ax1, ay1) = d["o"], d["amodal"]
        frac = float(visible[d["index"]]) / d["inside"]
        if frac < p["min_visible"]:
            continue
        bx0, by0, bx1, by1 = max(ax0, 0), max(ay0, 0), min(ax1, w), min(ay1, h)
        flags = {
            "small": o["size"] <= p["small_max"],
            "blurred": o["sigma"] > 0,
            "occluded": frac < _OCCLUDED_BELOW,
            "truncated": d["inside"] < _TRUNCATED_BELOW * d["total"],
        }
        reasons = [k for k in AMBIGUITY_REASONS if flags[k]]
        box = [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)]
        ann = {"category_id": o["cls"] + 1, "bbox": box, "iscrowd": 0, "area": float(visible[d["index"]])}
        ann.update(visible_fraction=round(frac, 4), blurred=flags["blurred"], ambiguous=bool(reasons),
                   truncated=bool(ax0 < 0 or ay0 < 0 or ax1 > w or ay1 > h), ambiguity=reasons,
                   object_size=round(float(o["size"]), 2))
        anns.append(ann)
    return anns


def generate_shapes_coco(
    out_dir,
    num_images,
    image_size=160,
    seed=0,
    min_objects=1,
    max_objects=4,
    ambiguous_prob=0.25,
    min_size=6.0,
    small_max=12.0,
    min_clear=28.0,
    max_size_frac=0.5,
    min_visible=0.25,
    min_inside=0.35,
    min_contrast=100.0,
    noise=3.0,
    lookalike_prob=0.0,
    lookalike_detail=1.0,
):
    """Write the PNGs ``out_dir/images/{image_id:06d}.png`` (ids ``1..num_images``) and
    ``out_dir/annotations.json``; ``out_dir`` is created, same-named files are overwritten.
    ``image_size`` is an int or ``(h, w)``; the output is a deterministic function of the
    arguments (``seed`` included).

    Args:
        min_objects, max_objects: objects attempted per image, uniform in
            ``min_objects..max_objects``, plus one
            occluder per object made ``occluded``; an object finding no free spot is skipped.
        ambiguous_prob: probability that an object is made ambiguous (small, blurred,
            occluded or truncated, one reason drawn uniformly).
        min_size, small_max: diameter range (px, log-uniform) of the small objects.
        min_clear, max_size_frac: diameter range of the others,
            ``[min_clear, max_size_frac * min(h, w)]`` px.
        min_visible, min_inside: an annotation is dropped when less than ``min_visible`` of
            its pixels in the image are unoccluded, or less than ``min_inside`` of the object
            lies inside the image.
        min_contrast: preferred minimal RGB distance between an object's colour and the
            background under it.
        noise: largest standard deviation of the per-image pixel noise.
        lookalike_prob: probability that an object's class is drawn among the look-alike
            pairs' four classes (otherwise among all ten, uniformly).
        lookalike_detail: scale, in (0, 1], of the detail that tells a look-alike pair apart
            (the ring's hole radius, the notch's side).

    Returns:
        The path of the json file.
    """
    params = dict(
        min_objects=int(min_objects), max_objects=int(max_objects), ambiguous_prob=float(ambiguous_prob),
        min_size=float(min_size),
        small_max=float(small_max), min_clear=float(min_clear), max_size_frac=float(max_size_frac),
        min_visible=float(min_visible), min_inside=float(min_inside), min_contrast=float(min_contrast),
        noise=float(noise), lookalike_prob=float(lookalike_prob), lookalike_detail=float(lookalike_detail),
    )
    if not 1 <= params["min_objects"] <= params["max_objects"] or not 0 < min_size <= small_max < min_clear:
        raise ValueError("need 1 <= min_objects <= max_objects and 0 < min_size <= small_max < min_clear")
    if not 0 <= lookalike_prob <= 1 or not 0 < lookalike_detail <= 1:
        raise ValueError("need 0 <= lookalike_prob <= 1 and 0 < lookalike_detail <= 1")
    categories = [
        dict(id=i + 1, name=n, supercategory="shape", lookalike=_LOOKALIKE.get(n, ""))
        for i, n in enumerate(SHAPES_CLASSES)
    ]
    info = dict(description="gkd_d2 synthetic shapes dataset (learnable classes, ambiguous minority)",
                version=str(SHAPES_GENERATOR_VERSION), **params)
    return write_coco(
        out_dir, num_images, image_size, seed, lambda rng, h, w: _render_image(rng, h, w, params), categories, info
    )


# --------------------------------------------------------------------------------------------
# registration (the files and the stamp: storage.py)
# --------------------------------------------------------------------------------------------
def register_shapes_dataset(name, root, num_images, image_size=160, seed=0, **kwargs):
    """Generate the shapes dataset into ``root`` (once) and register it as ``name``.

    ``root`` gets ``annotations.json``, ``images/*.png`` and ``params.json`` (every generator
    argument, defaults included, ``SHAPES_GENERATOR_VERSION`` and the json's sha256). Files are
    reused when the stamp, the json's hash and the image files all match, and regenerated
    otherwise (in a temporary sibling folder renamed into place; a folder holding anything
    else than generated files is never replaced).

    Like ``register_coco_instances`` but with ``extra_annotation_keys`` =
    ``SHAPES_EXTRA_ANNOTATION_KEYS``, so the dataset dicts keep ``ambiguous``, ``ambiguity``,
    ``visible_fraction``, ``blurred``, ``truncated`` and ``object_size``. Metadata:
    ``json_file``, ``image_root``, ``evaluator_type="coco"``, ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id``, ``lookalike_pairs`` (contiguous ids) and
    ``shapes_params``. Registering a name again with the same root and parameters is a no-op;
    with other ones it raises ``ValueError``.
    """
    params = generator_params(generate_shapes_coco, num_images, image_size, seed, kwargs, SHAPES_GENERATOR_VERSION)
    classes = list(SHAPES_CLASSES)
    register_generated_dataset(
        name, root, params, generate_shapes_coco, classes, SHAPES_EXTRA_ANNOTATION_KEYS, "shapes_params",
        lookalike_pairs=[(classes.index(a), classes.index(b)) for a, b in SHAPES_LOOKALIKE_PAIRS],
    )
