"""Generated COCO datasets on disk, shared by the synthetic generators (``synthetic.py``,
``shapes.py``): the stamp, atomic placement, loading with clear errors, registration.

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


def load_coco_json_checked(json_file, image_root, dataset_name=None, extra_annotation_keys=None):
    """Detectron2's ``load_coco_json``, with errors that name the file: a missing json raises
    ``FileNotFoundError``, a truncated or otherwise unreadable one ``ValueError``, both naming
    ``json_file`` and the dataset (a bare ``JSONDecodeError`` names neither)."""
    from detectron2.data.datasets import load_coco_json

    what = f" (dataset '{dataset_name}')" if dataset_name else ""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json file '{json_file}'{what}: no such file.")
    try:
        return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=extra_annotation_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"COCO json file '{json_file}'{what} is not valid json ({type(e).__name__}: {e}); "
            "it is truncated or corrupt: regenerate or download it again."
        ) from e


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
