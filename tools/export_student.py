#!/usr/bin/env python
"""Export the student of a distillation run as a plain Detectron2 model.

    python tools/export_student.py --config-file configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml \
        --checkpoint output/demo/gkd_faster_rcnn/model_final.pth --output exported/

writes ``exported/model_final.pth`` (the student's weights, Detectron2 key names) and
``exported/config.yaml`` (the student's config: no DISTILL node, MODEL.META_ARCHITECTURE the
student's, MODEL.WEIGHTS the *absolute* path of the exported file, so the config loads from any
directory). Stock Detectron2 loads both without gkd_d2: ``DefaultPredictor``,
``tools/train_net.py --eval-only``.

For a LazyConfig run (``--config-file`` a ``.py``): ``exported/config.yaml`` is a stock
LazyConfig (``LazyConfig.load`` + ``instantiate`` without gkd_d2): ``model`` is the student's
own LazyConfig model, ``train.init_checkpoint`` the absolute path of the exported weights, and
``dataloader`` / ``optimizer`` / ``lr_multiplier`` / ``train`` are the run's, so Detectron2's
``tools/lazyconfig_train_net.py --eval-only`` evaluates it.

``DATASETS.TRAIN`` / ``TEST`` keep only the names stock Detectron2 knows (its builtin COCO,
VOC, ... names); gkd_d2's own datasets (``gkd_synth_*``, ``gkd_shapes_*``, the
``DATASETS.COCO_JSON`` entries) are removed, and a comment at the top of config.yaml gives the
``register_coco_instances`` line of each, for evaluating the exported model with them. The
export prints (and writes in that comment) the exact ``tools/train_net.py --eval-only`` command
that evaluates the exported student on the distillation config's ``DATASETS.TEST``.
"""
import argparse
import os
import shlex
import sys

import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from omegaconf import OmegaConf
from gkd_d2.config import load_config
from gkd_d2.data.builtin import gkd_dataset_files
from gkd_d2.data.coco import coco_json_datasets
from gkd_d2.data.generated.registration import SHAPES_SPLITS, SYNTHETIC_SPLITS
from gkd_d2.export import plain_detectron2_config
from gkd_d2.lazy import dataset_names, student_lazy_model
from gkd_d2.teacher import is_lazy_config

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")

PREFIX = "student."


def student_config(cfg, weights_path):
    """The plain Detectron2 config of the student of distillation config ``cfg``:
    ``MODEL.WEIGHTS`` = the absolute ``weights_path``, ``DATASETS.TRAIN`` / ``TEST`` without
    the datasets stock Detectron2 does not know (:func:`dropped_datasets`)."""
    out = plain_detectron2_config(cfg)
    out.MODEL.META_ARCHITECTURE = cfg.DISTILL.STUDENT_ARCHITECTURE
    out.MODEL.WEIGHTS = os.path.abspath(weights_path)
    dropped = dropped_datasets(cfg)
    for split in ("TRAIN", "TEST"):
        out.DATASETS[split] = tuple(n for n in cfg.DATASETS[split] if n not in dropped)
    return out


def dropped_datasets(cfg):
    """``{name: (json_file, image_root) or None}`` of the datasets of ``DATASETS.TRAIN`` /
    ``TEST`` that stock Detectron2 does not know: gkd_d2's own names (with their files), and
    names nobody registered in this process (user code registers them before training)."""
    own = gkd_dataset_files(cfg)
    known = set(DatasetCatalog.list())
    return {
        n: own.get(n)
        for n in dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        if n in own or n not in known
    }


def _generated_opts(cfg, name):
    """The ``DATASETS.SYNTHETIC`` / ``SHAPES`` options that make ``tools/train_net.py`` register
    the generated dataset ``name`` from the same files (root made absolute), or None."""
    for splits, node in ((SYNTHETIC_SPLITS, "SYNTHETIC"), (SHAPES_SPLITS, "SHAPES")):
        if name in splits and node in cfg.DATASETS:
            s = cfg.DATASETS[node]
            size_key = splits[name][0]
            return [f"DATASETS.{node}.ROOT", os.path.abspath(s.ROOT), f"DATASETS.{node}.{size_key}", str(s[size_key]),
                    f"DATASETS.{node}.IMAGE_SIZE", str(s.IMAGE_SIZE), f"DATASETS.{node}.SEED", str(s.SEED)]
    return None


def eval_command(cfg, config_path, output_dir):
    """``(command, unknown)``: the shell command (absolute paths) that evaluates the exported
    student (config ``config_path``) on ``cfg.DATASETS.TEST`` with gkd_d2's ``tools/train_net.py
    --eval-only``, registering gkd_d2's own datasets from the same files, its results in
    ``output_dir/eval``; ``unknown``: the test datasets registered by the user's own code (the
    command needs them registered first)."""
    coco = coco_json_datasets(cfg)
    entries, opts, unknown = [], [], []
    for name in cfg.DATASETS.TEST:
        generated = _generated_opts(cfg, name)
        if generated is not None:
            opts += generated
        elif name in coco:
            entries.append([name, *coco[name]])
        elif name not in DatasetCatalog.list():
            unknown.append(name)
    if entries:
        opts = ["DATASETS.COCO_JSON", str(entries)] + opts
    args = [sys.executable, TRAIN_NET, "--config-file", os.path.abspath(config_path), "--eval-only", *opts,
            "DATASETS.TEST", str(tuple(cfg.DATASETS.TEST)), "OUTPUT_DIR", os.path.abspath(os.path.join(output_dir, "eval"))]
    return " ".join(shlex.quote(a) for a in args), unknown


def config_header(cfg, config_file, checkpoint, command=None):
    """The comment written at the top of the exported config.yaml."""
    lines = [
        f"# Student exported by gkd_d2 (tools/export_student.py) from {os.path.abspath(config_file)}",
        f"# and {os.path.abspath(checkpoint)}: a plain Detectron2 config, MODEL.WEIGHTS absolute.",
    ]
    dropped = dropped_datasets(cfg)
    if dropped:
        lines += [
            f"# DATASETS.TRAIN / TEST named {sorted(dropped)}, which stock Detectron2 does not know:",
            "# they are removed here. To evaluate on them, register them and set DATASETS.TEST:",
            "#   from detectron2.data.datasets import register_coco_instances",
        ]
        for name, files in dropped.items():
            if files:
                lines.append(f"#   register_coco_instances({name!r}, {{}}, {files[0]!r}, {files[1]!r})")
            else:
                lines.append(f"#   ({name!r}: registered by your own code)")
    if command:
        lines += ["# Evaluate this student on the distillation config's DATASETS.TEST with gkd_d2:", f"#   {command}"]
    return "\n".join(lines) + "\n"


def student_state_dict(checkpoint_path):
    """The ``student.*`` entries of a gkd_d2 checkpoint, prefix removed."""
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"--checkpoint '{checkpoint_path}': no such file.")
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt)
    student = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not student:
        raise ValueError(
            f"--checkpoint '{checkpoint_path}' holds no 'student.*' weights: it is not a gkd_d2 "
            "distillation checkpoint."
        )
    return student


def export_lazy(config_file, checkpoint, output_dir, opts=()):
    """The LazyConfig export (module doc): ``(config path, weights path)``."""
    lazy = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
    student = student_lazy_model(lazy)
    state = student_state_dict(checkpoint)
    os.makedirs(output_dir, exist_ok=True)
    weights = os.path.abspath(os.path.join(output_dir, "model_final.pth"))
    torch.save({"model": state, "__author__": "gkd_d2 export_student"}, weights)
    out = OmegaConf.create(flags={"allow_objects": True})
    out.model = student
    for key in ("dataloader", "optimizer", "lr_multiplier", "train"):
        if key in lazy:
            out[key] = lazy[key]
    if "train" in out:
        out.train.init_checkpoint = weights
    config = os.path.join(output_dir, "config.yaml")
    LazyConfig.save(out, config)
    with open(config) as f:
        text = f.read()
    names = dataset_names(lazy.dataloader.train) + dataset_names(lazy.dataloader.get("test", {}))
    header = [
        f"# Student exported by gkd_d2 (tools/export_student.py) from {os.path.abspath(config_file)}",
        f"# and {os.path.abspath(checkpoint)}: a stock Detectron2 LazyConfig, train.init_checkpoint absolute.",
        f"# Its datasets {sorted(set(names))} must be registered before instantiating the dataloaders.",
    ]
    with open(config, "w") as f:
        f.write("\n".join(header) + "\n" + text)
    return config, weights


def export(config_file, checkpoint, output_dir, opts=()):
    if is_lazy_config(config_file):
        return export_lazy(config_file, checkpoint, output_dir, opts)
    cfg = load_config(config_file, opts)
    state = student_state_dict(checkpoint)
    os.makedirs(output_dir, exist_ok=True)
    weights = os.path.join(output_dir, "model_final.pth")
    torch.save({"model": state, "__author__": "gkd_d2 export_student"}, weights)
    config = os.path.join(output_dir, "config.yaml")
    command = eval_command(cfg, config, output_dir)[0] if cfg.DATASETS.TEST else None
    with open(config, "w") as f:
        f.write(config_header(cfg, config_file, checkpoint, command) + student_config(cfg, weights).dump())
    return config, os.path.abspath(weights)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the distillation config (yaml or LazyConfig .py)")
    parser.add_argument("--checkpoint", required=True, help="a gkd_d2 checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="folder for model_final.pth + config.yaml")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE (yaml) or key=value (LazyConfig) overrides")
    args = parser.parse_args(argv)
    config, weights = export(args.config_file, args.checkpoint, args.output, args.opts)
    print(f"student weights: {weights}\nstudent config:  {config}")
    if is_lazy_config(args.config_file):
        return
    cfg = load_config(args.config_file, args.opts)
    if not cfg.DATASETS.TEST:
        print("DATASETS.TEST of the distillation config is empty: to evaluate the student, run "
              f"{TRAIN_NET} --config-file {os.path.abspath(config)} --eval-only DATASETS.TEST \"('your_val',)\"")
        return
    command, unknown = eval_command(cfg, config, args.output)
    if unknown:
        print(f"register {unknown} (your own code registers them during training) before evaluating:")
    print(f"evaluate it: {command}")


if __name__ == "__main__":
    sys.exit(main())
