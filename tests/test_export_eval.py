"""The exported student can be evaluated as the distillation run was: the export prints (and
writes atop the exported config.yaml) the exact command, which registers the run's own
evaluation dataset from the same files."""
import os
import shlex
import subprocess

import pytest
from detectron2.modeling import build_model
from helpers import distill_cfg
from user_runs import coco_with_category_ids, load_tool

from gkd_d2 import DistillationCheckpointer

export_student = load_tool("export_student")


@pytest.mark.slow
def test_export_prints_the_command_that_evaluates_the_student(rcnn_teacher, tmp_path, capsys):
    json_file, images = coco_with_category_ids(tmp_path / "data", [3, 7, 42])
    cfg = distill_cfg(rcnn_teacher, norm="GN")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained student still has boxes to score
    cfg.DATASETS.COCO_JSON = [["exp_train", json_file, images], ["exp_val", json_file, images]]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("exp_train",), ("exp_val",)
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    yaml = tmp_path / "gkd.yaml"
    yaml.write_text(cfg.dump())
    DistillationCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model_final")

    export_student.main(["--config-file", str(yaml), "--checkpoint", str(tmp_path / "model_final.pth"),
                         "--output", str(tmp_path / "exported")])
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("evaluate it: ")]
    assert len(lines) == 1
    command = lines[0][len("evaluate it: "):]
    args = shlex.split(command)
    exported = tmp_path / "exported"
    assert args[1:] == [
        os.path.join(os.path.dirname(export_student.__file__), "train_net.py"),
        "--config-file", str(exported / "config.yaml"), "--eval-only",
        "DATASETS.COCO_JSON", f"[['exp_val', '{json_file}', '{images}']]",
        "DATASETS.TEST", "('exp_val',)", "OUTPUT_DIR", str(exported / "eval"),
    ]
    header = (exported / "config.yaml").read_text().split("\nCUDNN")[0]
    assert f"#   {command}" in header
    # run it from elsewhere, as printed
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Evaluation results for bbox" in log and "copypaste: Task: bbox" in log, log[-3000:]
    assert "exp_val" in (exported / "eval" / "config.yaml").read_text()
