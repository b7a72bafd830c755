#!/usr/bin/env python
"""Export the student of a distillation run as a plain Detectron2 model.

    python tools/export_student.py --config-file configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml \
        --checkpoint output/demo/gkd_faster_rcnn/model_final.pth --output exported/

writes ``exported/model_final.pth`` (the student's weights, Detectron2 key names) and
``exported/config.yaml`` (the student's config: no DISTILL node, MODEL.META_ARCHITECTURE the
student's, MODEL.WEIGHTS pointing at the exported file). Stock Detectron2 loads both without
gkd_d2: ``DefaultPredictor``, ``tools/train_net.py --eval-only``.
"""
import argparse
import os
import sys

import torch
from gkd_d2.config import load_config, plain_detectron2_config

PREFIX = "student."


def student_config(cfg, weights_path):
    """The plain Detectron2 config of the student of distillation config ``cfg``."""
    out = plain_detectron2_config(cfg)
    out.MODEL.META_ARCHITECTURE = cfg.DISTILL.STUDENT_ARCHITECTURE
    out.MODEL.WEIGHTS = weights_path
    return out


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


def export(config_file, checkpoint, output_dir, opts=()):
    cfg = load_config(config_file, opts)
    state = student_state_dict(checkpoint)
    os.makedirs(output_dir, exist_ok=True)
    weights = os.path.join(output_dir, "model_final.pth")
    torch.save({"model": state, "__author__": "gkd_d2 export_student"}, weights)
    config = os.path.join(output_dir, "config.yaml")
    with open(config, "w") as f:
        f.write(student_config(cfg, weights).dump())
    return config, weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the distillation config")
    parser.add_argument("--checkpoint", required=True, help="a gkd_d2 checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="folder for model_final.pth + config.yaml")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    config, weights = export(args.config_file, args.checkpoint, args.output, args.opts)
    print(f"student weights: {weights}\nstudent config:  {config}")


if __name__ == "__main__":
    sys.exit(main())
