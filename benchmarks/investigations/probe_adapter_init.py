#!/usr/bin/env python
"""Where the size of the default feature term comes from, at the start of a fine-tuning.

Builds the ``gkd`` row of ``replica.py`` (defaults, a trained teacher and a trained student, the
replica's data) and evaluates ``loss_kd_feature`` at iteration 0 on the same ``--batches`` real
training batches with three initialisations of the adaptation layers:

- ``kaiming``: gkd_d2's (``kaiming_normal_``, fan-out, zero bias; ``knowledge/adapters.py``);
- ``pytorch``: PyTorch's ``Conv2d`` default, what the authors' release actually trains (its
  explicit ``normal_().fmod_(2).mul_(1e-4)`` init tests ``isinstance(..., nn.Conv2d)`` on an
  ``nn.Sequential`` and never runs);
- ``zero``: a zero adapter (what that dead init intended, to 1e-4): the loss is then the
  teacher's own masked feature energy, the part no adapter init can remove.

It also reports the root mean square of the teacher's and the student's FPN maps per level.
Compare with the detection losses Detectron2 logged in the real run (``loss_scales.json``).

    OMP_NUM_THREADS=1 python benchmarks/investigations/probe_adapter_init.py --detector retinanet --dataset shapes \
        --teacher-weights output/probe_data_v3_t4800/retinanet/teacher/model_final.pth \
        --student-weights output/replica/shapes/retinanet/student-pretrained/model_final.pth

Writes ``benchmarks/investigations/results/probe_adapter_init.json`` (one record per detector, dataset, weights).
"""
import argparse
import os
import sys

import torch
from detectron2.utils.events import EventStorage

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from common import DEMO_CONFIGS, INVESTIGATION_RESULTS as RESULTS, data_opts, load_cfg, machine, save  # noqa: E402

from gkd_d2 import DistillTrainer  # noqa: E402
from gkd_d2.data.builtin import register_datasets_from_cfg  # noqa: E402
from gkd_d2.data.generated import GENERATED_DATASETS  # noqa: E402
from gkd_d2.knowledge.adapters import init_adapter  # noqa: E402
from gkd_d2.prototypes.refresh import PrototypeRefreshHook  # noqa: E402

INITS = ("kaiming", "pytorch", "zero")


def init_adapters(convs, how):
    torch.manual_seed(0)
    for c in convs:
        if how == "pytorch":
            c.reset_parameters()
        elif how == "zero":
            torch.nn.init.zeros_(c.weight)
            torch.nn.init.zeros_(c.bias)
        else:
            init_adapter(c)


@torch.no_grad()
def feature_loss(model, batches):
    """Mean ``loss_kd_feature`` over ``batches`` at iteration 0 (attenuation 1)."""
    return sum(float(model(b)["loss_kd_feature"]) for b in batches) / len(batches)


@torch.no_grad()
def feature_rms(model, batches):
    """{level: (teacher RMS, student RMS)} of the FPN maps on ``batches``."""
    sums = {}
    for b in batches:
        fs = model.student.backbone(model.student.preprocess_image(b).tensor)
        ft = model.teacher.backbone(model.teacher.preprocess_image(b).tensor)
        for k in model.knowledge["feature"].adapters:
            t, s = sums.get(k, (0.0, 0.0))
            sums[k] = (t + float(ft[k].pow(2).mean()), s + float(fs[k].pow(2).mean()))
    return {k: [round((t / len(batches)) ** 0.5, 4), round((s / len(batches)) ** 0.5, 4)] for k, (t, s) in sums.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="retinanet")
    p.add_argument("--dataset", choices=sorted(GENERATED_DATASETS), default="shapes")
    p.add_argument("--teacher-weights", required=True)
    p.add_argument("--student-weights", required=True)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--results", default=os.path.join(RESULTS, "probe_adapter_init.json"))
    args = p.parse_args()
    for path in (args.teacher_weights, args.student_weights):
        if not os.path.isfile(path):
            raise SystemExit(f"no such checkpoint: {path}")
    opts = data_opts(args.dataset, "cpu", 0) + [
        "OUTPUT_DIR", os.path.join("output", "probe_adapter_init"),
        "MODEL.WEIGHTS", args.student_weights, "DISTILL.TEACHER.WEIGHTS", args.teacher_weights]
    teacher_yaml, _, gkd_yaml = DEMO_CONFIGS[args.detector]
    register_datasets_from_cfg(load_cfg(teacher_yaml, opts))
    cfg = load_cfg(gkd_yaml, opts)
    torch.manual_seed(0)
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with EventStorage(0):
        for h in trainer._hooks:
            if isinstance(h, PrototypeRefreshHook):
                h.before_train()  # the prototypes of iteration 0
        model = trainer.model
        batches = [next(trainer._trainer._data_loader_iter) for _ in range(args.batches)]
        convs = [m for m in model.knowledge["feature"].adapters.modules() if isinstance(m, torch.nn.Conv2d)]
        result = {}
        for how in INITS:
            init_adapters(convs, how)
            result[how] = round(feature_loss(model, batches), 4)
            print(how, result[how], flush=True)
        rms = feature_rms(model, batches)
    print("RMS (teacher, student) per level:", rms)
    record = {"detector": args.detector, "dataset": args.dataset, "teacher_weights": args.teacher_weights,
              "student_weights": args.student_weights, "batches": args.batches, "loss_kd_feature": result, "rms": rms,
              "device": machine("cpu")["hardware"]}
    save(record, args.results, ("detector", "dataset", "teacher_weights", "student_weights"))


if __name__ == "__main__":
    main()
