"""Your own COCO-format datasets: the ``DATASETS.COCO_JSON`` entries of a config, registered as
Detectron2's ``register_coco_instances`` does, with errors that name the file and the option."""
import json
import os


def coco_json_datasets(cfg):
    """``DATASETS.COCO_JSON`` as ``{name: (json_file, image_root)}`` (absolute paths, from the
    working directory); a malformed entry is a ``ValueError`` naming the option."""
    out = {}
    for i, entry in enumerate(cfg.DATASETS.get("COCO_JSON", [])):
        parts = list(entry) if isinstance(entry, (list, tuple)) else None
        if not parts or len(parts) != 3 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(
                f"DATASETS.COCO_JSON[{i}] = {entry!r}: each entry must be a [name, json_file, "
                "image_root] triple of non-empty strings, e.g. "
                '[["my_train", "data/train.json", "data/train_images"]].'
            )
        name, json_file, image_root = parts
        if name in out:
            raise ValueError(f"DATASETS.COCO_JSON: dataset '{name}' is listed twice.")
        out[name] = (os.path.abspath(os.path.expanduser(json_file)), os.path.abspath(os.path.expanduser(image_root)))
    return out


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


def _check_json_end(json_file, name):
    """A cheap test for a truncated json (the whole file is parsed only when the dataset is
    loaded): a COCO json is one object, so its last non-blank byte is ``}``."""
    with open(json_file, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 256))
        tail = f.read().rstrip()
    if not tail.endswith(b"}"):
        raise ValueError(
            f"DATASETS.COCO_JSON: the json file '{json_file}' of dataset '{name}' is truncated "
            "or not a COCO json (it does not end with '}')."
        )


def register_coco_json_datasets(cfg):
    """Register every ``DATASETS.COCO_JSON`` entry as Detectron2's ``register_coco_instances``
    does (metadata ``json_file``, ``image_root``, ``evaluator_type="coco"``; ``thing_classes``
    once loaded), with errors that name the path: a missing json file or image folder at once,
    a truncated json at once, any other corrupt json when the dataset is loaded. Registering the
    same entry again is a no-op; a name already registered with other files is an error."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, (json_file, image_root) in coco_json_datasets(cfg).items():
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("json_file", None), meta.get("image_root", None)) == (json_file, image_root):
                continue
            raise ValueError(
                f"DATASETS.COCO_JSON: dataset '{name}' is already registered (json_file="
                f"{meta.get('json_file', None)}, image_root={meta.get('image_root', None)}); "
                "use another name."
            )
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"DATASETS.COCO_JSON: the json file '{json_file}' of dataset '{name}' does not exist."
            )
        if not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"DATASETS.COCO_JSON: the image folder '{image_root}' of dataset '{name}' does not exist."
            )
        _check_json_end(json_file, name)
        DatasetCatalog.register(
            name, lambda j=json_file, r=image_root, n=name: load_coco_json_checked(j, r, n)
        )
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
