"""Builders for tests that run the tools as a user does: a COCO json of one's own (any category
ids), a distillation yaml on disk, ``tools/train_net.py`` called in this process."""
import importlib.util
import json
import os
import shutil

from helpers import ROOT, distill_cfg

from gkd_d2.data.generated.synthetic import generate_synthetic_coco


def load_tool(name):
    """``tools/<name>.py`` as a module (its ``main`` runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"gkd_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def coco_with_category_ids(root, ids, num_images=6, image_size=64, seed=5):
    """A COCO dataset in ``root`` (``annotations.json``, ``images/``): the synthetic data with its
    categories folded onto ``ids`` (e.g. 3, 7, 42: not contiguous, not from 1); returns
    ``(json path, image folder)``."""
    json_file = generate_synthetic_coco(str(root), num_images=num_images, image_size=image_size, seed=seed)
    data = json.load(open(json_file))
    old = sorted(c["id"] for c in data["categories"])
    new_id = {o: ids[i % len(ids)] for i, o in enumerate(old)}
    data["categories"] = [{"id": i, "name": f"class_{i}"} for i in ids]
    for a in data["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, os.path.join(str(root), "images")


def copy_dataset(src_json, src_images, dst):
    """A private copy of a dataset (to damage one of its images)."""
    os.makedirs(dst, exist_ok=True)
    images = shutil.copytree(src_images, os.path.join(dst, "images"))
    json_file = shutil.copy(src_json, os.path.join(dst, "annotations.json"))
    return json_file, images


def distill_yaml(path, teacher, num_classes, **overrides):
    """A tiny distillation config (tests/helpers.distill_cfg) with ``num_classes`` written to
    ``path``; ``overrides``: ``{"SOLVER.MAX_ITER": 2, ...}``."""
    cfg = distill_cfg(teacher)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.DATASETS.TEST = ()
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    with open(path, "w") as f:
        f.write(cfg.dump())
    return str(path)


def earlier_run(out):
    """An OUTPUT_DIR holding an earlier run's files; returns ``{name: bytes}`` of them."""
    os.makedirs(out, exist_ok=True)
    files = {"config.yaml": b"# the config of an earlier run\n", "metrics.json": b'{"iteration": 99}\n',
             "model_final.pth": b"earlier weights"}
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    return files


def files_of(out, names):
    return {n: open(os.path.join(out, n), "rb").read() for n in names if os.path.exists(os.path.join(out, n))}
