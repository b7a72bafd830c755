"""A synthetic but hard detection dataset, written as real COCO json + PNG images.

Five shape classes (``SYNTHETIC_CLASSES``) drawn on cluttered backgrounds (gradients, noise,
distractor lines and blobs that are not objects), with the "ambiguous instances" the paper
is about:

- **small**: sizes are log-uniform from ``min_size`` px to 45% of the image side;
- **occluded**: objects are painted in z-order, later ones cover earlier ones; the box stays the
  amodal box, and an annotation whose visible fraction falls below ``min_visible`` is dropped;
- **blurred**: a fraction ``blur_prob`` of objects is Gaussian-blurred;
- **truncated**: objects may cross the image border; the box is clipped to the image and an
  annotation keeping less than 30% of its area inside is dropped;
- texture (solid, striped, noisy) and colour are random and independent of the class.

Each annotation carries ``visible_fraction`` (float), ``blurred`` and ``truncated`` (bool) so
benchmarks can find the ambiguous instances; :func:`register_synthetic_dataset` keeps them in
Detectron2's dataset dicts (``extra_annotation_keys``). Everything is deterministic by seed:
the same arguments give byte-identical json and PNG files.
"""
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageFilter

SYNTHETIC_CLASSES = ("disc", "square", "triangle", "ring", "cross")
EXTRA_KEYS = ["visible_fraction", "blurred", "truncated"]


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of class ``cls`` in rotated unit coordinates (object radius 1)."""
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    if cls == 0:  # disc
        return r2 <= 1.0
    if cls == 1:  # square
        return (au <= 0.8) & (av <= 0.8)
    if cls == 2:  # triangle, apex up
        return (v <= 0.7) & (au <= (v + 0.95) * 0.55)
    if cls == 3:  # ring
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))  # cross


def _texture(rng, h, w):
    """Per-pixel colour (h, w, 3) of an object: solid, striped or noisy."""
    base = rng.uniform(0, 255, size=3)
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(base, (h, w, 3)).copy()
    if kind == 1:
        other = rng.uniform(0, 255, size=3)
        period = rng.uniform(3, 8)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)
        return np.where(stripes[..., None], base, other)
    return np.clip(base + rng.normal(0, 35, size=(h, w, 3)), 0, 255)


def _background(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    c0, c1, c2 = rng.uniform(0, 255, size=(3, 3))
    img = c0 + (c1 - c0) * xx[..., None] + (c2 - c0) * yy[..., None]
    img = img + rng.normal(0, rng.uniform(5, 25), size=(h, w, 3))
    for _ in range(rng.integers(2, 7)):  # distractor lines
        x0, x1 = rng.uniform(0, w, 2)
        y0, y1 = rng.uniform(0, h, 2)
        t = np.linspace(0, 1, 2 * max(h, w))
        xs = np.clip((x0 + (x1 - x0) * t).astype(int), 0, w - 1)
        ys = np.clip((y0 + (y1 - y0) * t).astype(int), 0, h - 1)
        img[ys, xs] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(0, 4)):  # soft blobs (not objects)
        cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 0.15 * max(h, w))
        blob = np.exp(-(((xx * max(h, w) - cx) ** 2 + (yy * max(h, w) - cy) ** 2) / (2 * s * s)))
        img += blob[..., None] * rng.uniform(-80, 80, 3)
    return img


def _render_image(rng, h, w, max_objects, min_size, blur_prob, min_visible):
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int64)  # top-most object index per pixel
    objects = []
    for k in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(SYNTHETIC_CLASSES)))
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(0.45 * min(h, w)))))
        radius = size / 2
        cx, cy = rng.uniform(-0.05 * w, 1.05 * w), rng.uniform(-0.05 * h, 1.05 * h)
        angle = rng.uniform(0, 2 * np.pi) if cls in (1, 2, 4) else 0.0
        x0, y0 = int(np.floor(cx - radius)), int(np.floor(cy - radius))
        x1, y1 = int(np.ceil(cx + radius)) + 1, int(np.ceil(cy + radius)) + 1
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        du, dv = (xx + 0.5 - cx) / radius, (yy + 0.5 - cy) / radius
        u = du * np.cos(angle) + dv * np.sin(angle)
        v = -du * np.sin(angle) + dv * np.cos(angle)
        mask = _shape_mask(cls, u, v)
        total = int(mask.sum())
        if total == 0:
            continue
        # part of the window inside the image
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        inside = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        if inside.sum() < 0.3 * total:
            continue
        region = img[iy0:iy1, ix0:ix1]
        tex = _texture(rng, iy1 - iy0, ix1 - ix0)
        blurred = bool(rng.random() < blur_prob)
        paint = np.where(inside[..., None], tex, region)
        if blurred:
            radius_px = float(rng.uniform(1.0, max(1.5, size / 8)))
            pil = Image.fromarray(np.clip(paint, 0, 255).astype(np.uint8))
            paint = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius_px)), dtype=np.float64)
            soft = np.asarray(
                Image.fromarray((inside * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius_px)),
                dtype=np.float64,
            )[..., None] / 255.0
            paint = soft * paint + (1 - soft) * region
        img[iy0:iy1, ix0:ix1] = np.where((inside | blurred)[..., None], paint, region)
        owner[iy0:iy1, ix0:ix1][inside] = k
        ys, xs = np.nonzero(mask)
        box = [
            max(float(xs.min() + x0), 0.0),
            max(float(ys.min() + y0), 0.0),
            min(float(xs.max() + x0 + 1), float(w)),
            min(float(ys.max() + y0 + 1), float(h)),
        ]
        objects.append(
            dict(index=k, cls=cls, box=box, total=total, truncated=bool(inside.sum() < total), blurred=blurred)
        )
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=max_objects + 1)
    anns = []
    for o in objects:
        frac = float(visible[o["index"]]) / o["total"]
        if frac < min_visible:
            continue
        x0, y0, x1, y1 = o["box"]
        anns.append(
            dict(
                category_id=o["cls"] + 1,
                bbox=[x0, y0, x1 - x0, y1 - y0],
                area=float(visible[o["index"]]),
                iscrowd=0,
                visible_fraction=round(frac, 4),
                blurred=o["blurred"],
                truncated=o["truncated"],
            )
        )
    return np.clip(img, 0, 255).astype(np.uint8), anns


def generate_synthetic_coco(
    out_dir,
    num_images,
    image_size=256,
    seed=0,
    max_objects=8,
    min_size=8,
    blur_prob=0.25,
    min_visible=0.25,
):
    """Write ``out_dir/images/%06d.png`` and ``out_dir/annotations.json``; return the json path.

    image_size: int or (h, w). Deterministic by ``seed`` (numpy PCG64, fixed PNG settings).
    """
    h, w = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    rng = np.random.Generator(np.random.PCG64(seed))
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img, anns = _render_image(rng, h, w, max_objects, min_size, blur_prob, min_visible)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(os.path.join(out_dir, "images", name), compress_level=6)
        images.append(dict(id=i + 1, file_name=name, height=h, width=w))
        for a in anns:
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, **a))
    coco = dict(
        info=dict(description="gkd_d2 synthetic ambiguous-instances dataset", seed=seed),
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(SYNTHETIC_CLASSES)],
    )
    path = os.path.join(out_dir, "annotations.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path


def register_synthetic_dataset(name, root, num_images, image_size=256, seed=0, **kwargs):
    """Generate (unless ``root`` already holds these exact parameters) and register ``name``.

    Registration mirrors ``register_coco_instances`` but keeps the annotations' extra fields.
    Registering the same name again with the same parameters is a no-op; with different
    parameters it is an error naming the dataset. Safe when several processes start at once.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    params = dict(num_images=num_images, image_size=image_size, seed=seed, **kwargs)
    params = json.loads(json.dumps(params))  # tuples -> lists, as stored in params.json
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("synthetic_params") == params and MetadataCatalog.get(
            name
        ).get("image_root") == os.path.join(root, "images"):
            return
        raise ValueError(
            f"Dataset '{name}' is already registered with other parameters or files; "
            "use another name."
        )
    stamp = os.path.join(root, "params.json")
    if not (os.path.isfile(stamp) and json.load(open(stamp)) == params):
        parent = os.path.dirname(os.path.abspath(root))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".gkd_synth_", dir=parent)
        generate_synthetic_coco(tmp, **params)
        with open(os.path.join(tmp, "params.json"), "w") as f:
            json.dump(params, f)
        if os.path.isdir(root):
            if os.path.isfile(stamp) and json.load(open(stamp)) == params:
                shutil.rmtree(tmp)  # another process finished first
            else:
                shutil.rmtree(root)
                os.replace(tmp, root)
        else:
            try:
                os.replace(tmp, root)
            except OSError:  # another process created it meanwhile
                shutil.rmtree(tmp)
    json_file = os.path.join(root, "annotations.json")
    image_root = os.path.join(root, "images")
    DatasetCatalog.register(
        name, lambda: load_coco_json(json_file, image_root, name, extra_annotation_keys=EXTRA_KEYS)
    )
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=list(SYNTHETIC_CLASSES),
        synthetic_params=params,
    )
