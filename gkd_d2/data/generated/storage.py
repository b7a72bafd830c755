"""Generated COCO datasets on disk, shared by the generators (``synthetic.py``, ``shapes.py``):
writing the files, the stamp, atomic placement, registration.

A generated dataset lives in one folder: ``annotations.json``, ``images/*.png`` and
``params.json``, the stamp, written last, holding every generator argument (defaults included),
the generator's version and the sha256 of ``annotations.json``. The files are reused when the
stamp matches, the json's content matches its hash and every image is there; otherwise they are
generated again in a temporary sibling folder that is renamed into place atomically (a matching
folder another process put there first is used; a folder holding anything but generated files is
never replaced).
"""
import hashlib
import inspect
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from ..coco import load_coco_json_checked

STAMP_FILES = {"images", "annotations.json", "params.json"}


def image_hw(image_size):
    """``image_size`` (int or (h, w)) as (h, w) ints."""
    if isinstance(image_size, (tuple, list)):
        h, w = image_size
        return int(h), int(w)
    return int(image_size), int(image_size)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_coco(out_dir, num_images, image_size, seed, render, categories, info):
    """Write ``out_dir/images/{image_id:06d}.png`` (ids ``1..num_images``) and
    ``out_dir/annotations.json``; ``out_dir`` is created, same-named files are overwritten.

    Image ``i`` is ``render(rng, h, w)`` -> (uint8 (h, w, 3) image, COCO annotations without
    ids) with ``rng = numpy.random.Generator(PCG64([seed, i]))``, so the first images of a larger
    set are those of a smaller one. PNGs are written with fixed encoder settings and the json
    with sorted keys: the same arguments give byte-identical files. The json's ``info`` is
    ``info`` with ``seed`` and ``image_size`` ([h, w]). Returns the path of the json file.
    """
    h, w = image_hw(image_size)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(int(num_images)):
        img, anns = render(np.random.Generator(np.random.PCG64([int(seed), i])), h, w)
        name = f"{i + 1:06d}.png"
        Image.fromarray(img).save(os.path.join(image_dir, name), format="PNG", compress_level=1, optimize=False)
        images.append(dict(id=i + 1, file_name=name, height=h, width=w))
        annotations += [dict(id=len(annotations) + j + 1, image_id=i + 1, **a) for j, a in enumerate(anns)]
    coco = dict(
        info=dict(info, seed=int(seed), image_size=[h, w]),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=categories,
    )
    path = os.path.join(out_dir, "annotations.json")
    with open(path, "w") as f:
        json.dump(coco, f, sort_keys=True)
    return path


def read_stamp(root):
    """The stamp (``params.json``) of ``root``, or None."""
    try:
        with open(os.path.join(root, "params.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generator_params(generate, num_images, image_size, seed, kwargs, version):
    """Every argument of ``generate(out_dir, num_images, image_size, seed, **kwargs)`` (defaults
    filled in) and ``generator_version``, normalised as json stores them."""
    try:
        bound = inspect.signature(generate).bind(None, num_images, image_size, seed, **kwargs)
    except TypeError as e:
        raise TypeError(f"{generate.__name__}: {e}") from None
    bound.apply_defaults()
    params = {k: v for k, v in bound.arguments.items() if k != "out_dir"}
    params.update(
        num_images=int(num_images), seed=int(seed), image_size=list(image_hw(image_size)), generator_version=version
    )
    return json.loads(json.dumps(params, sort_keys=True))


def is_current(root, params):
    """Whether ``root`` holds the complete dataset of ``params`` (stamp, json hash, images)."""
    stamp = read_stamp(root)
    if not isinstance(stamp, dict) or "annotations_sha256" not in stamp:
        return False
    if {k: v for k, v in stamp.items() if k != "annotations_sha256"} != params:
        return False
    try:
        if sha256(os.path.join(root, "annotations.json")) != stamp["annotations_sha256"]:
            return False
        names = set(os.listdir(os.path.join(root, "images")))
    except OSError:
        return False
    return all(f"{i:06d}.png" in names for i in range(1, int(params["num_images"]) + 1))


def ensure_generated(root, params, generate):
    """Make ``root`` hold the dataset ``generate(out_dir, **params)`` writes (``generate``
    returns the json's path); atomic and safe across processes."""
    if is_current(root, params):
        return
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        json_file = generate(tmp, **{k: v for k, v in params.items() if k != "generator_version"})
        with open(os.path.join(tmp, "params.json"), "w") as f:  # written last: complete folder
            json.dump(dict(params, annotations_sha256=sha256(json_file)), f, sort_keys=True, indent=1)
        for _ in range(5):
            try:
                os.rename(tmp, root)  # atomic; replaces a missing or empty folder only
                return
            except OSError:
                pass
            if is_current(root, params):  # another process finished first: use its files
                return
            # stale (other parameters or generator version): move it aside, then retry
            if not os.path.isdir(root) or not set(os.listdir(root)) <= STAMP_FILES:
                raise RuntimeError(
                    f"{root} exists and does not look like a generated dataset; refusing to replace it"
                )
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old-", dir=parent)
            try:
                os.rename(root, os.path.join(trash, "data"))
            except OSError:
                pass  # someone else moved or replaced it meanwhile
            shutil.rmtree(trash, ignore_errors=True)
        if not is_current(root, params):
            raise RuntimeError(f"could not place the generated dataset at {root}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register_generated_dataset(name, root, params, generate, classes, extra_annotation_keys, params_key, **metadata):
    """Generate (once) into ``root`` and register ``name`` like ``register_coco_instances``, but
    keeping ``extra_annotation_keys`` in the dataset dicts. Metadata: ``json_file``,
    ``image_root``, ``evaluator_type="coco"``, ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id``, ``<params_key>`` = ``params`` and ``metadata``.
    Registering the same name again with the same root and parameters is a no-op; with other
    ones it raises ``ValueError`` naming the dataset."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = os.path.abspath(os.fspath(root))
    json_file, image_root = os.path.join(root, "annotations.json"), os.path.join(root, "images")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get(params_key) == params and meta.get("image_root") == image_root:
            return
        raise ValueError(
            f"Dataset '{name}' is already registered with other files or parameters "
            f"(registered: root={os.path.dirname(meta.get('image_root', '?'))}, "
            f"params={meta.get(params_key)}; requested: root={root}, params={params}); "
            "use another dataset name."
        )
    ensure_generated(root, params, generate)
    keys = list(extra_annotation_keys)
    DatasetCatalog.register(name, lambda: load_coco_json_checked(json_file, image_root, name, keys))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=list(classes),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(classes))},
        **{params_key: params},
        **metadata,
    )
