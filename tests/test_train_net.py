"""tools/train_net.py and tools/export_student.py end to end, as a user runs them: training,
evaluation, --resume, export, the command line, and a failed build that leaves the output
folder as it was."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def tiny(tmp, out):
    """Overrides shrinking the demo configs to 64 px images and 8 training images."""
    return [
        "DATASETS.SYNTHETIC.ROOT", str(tmp / "data"),
        "DATASETS.SYNTHETIC.NUM_TRAIN", "8",
        "DATASETS.SYNTHETIC.NUM_VAL", "4",
        "DATASETS.SYNTHETIC.IMAGE_SIZE", "64",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "(100,)", "DATALOADER.NUM_WORKERS", "0",
        # keep every detection so an untrained model still gets a (small, exact) AP; GroupNorm
        # because BN statistics of a 3-step model make eval-mode outputs explode
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RESNETS.NORM", "GN",
        "OUTPUT_DIR", str(tmp / out),
    ]


def run(*args, cwd=ROOT):
    proc = subprocess.run(
        [PY, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def box_ap(log):
    """The AP row Detectron2's COCOEvaluator prints for bbox (the copypaste line)."""
    rows = re.findall(r"copypaste: ([\d.nan]+),([\d.nan]+),", log)
    assert rows, log[-2000:]
    return rows[-1]


# A 2-iteration teacher has untrained BN statistics and huge feature maps: scale the feature
# term down so 3 student steps do not diverge (the code path is unchanged).
# The demo config fine-tunes a trained student (MODEL.WEIGHTS); here the student starts from
# scratch, so its BatchNorm trains.
DISTILL_OPTS = [
    "MODEL.WEIGHTS", "", "DISTILL.FREEZE_STUDENT_BN", "False",
    "DISTILL.PGM.MIN_SIZE", "4", "DISTILL.FEATURE.WEIGHT", "1e-4",
    "DISTILL.TEACHER.OPTS", "['MODEL.RESNETS.NORM', 'GN']",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_net")
    teacher_log = run(
        "tools/train_net.py", "--config-file", "configs/Demo/teacher_faster_rcnn_R34_FPN.yaml",
        *tiny(tmp, "teacher"), "SOLVER.MAX_ITER", "2",
    )
    teacher = tmp / "teacher" / "model_final.pth"
    log = run(
        "tools/train_net.py", "--config-file", "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml",
        *tiny(tmp, "gkd"), "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DISTILL.TEACHER.WEIGHTS", str(teacher), *DISTILL_OPTS,
    )
    return tmp, teacher_log, log


@pytest.mark.slow
def test_train_and_evaluate_distillation_config(trained):
    tmp, teacher_log, log = trained
    assert "copypaste: Task: bbox" in teacher_log
    assert "PGM refresh at iter 0" in log
    assert "copypaste: Task: bbox" in log and box_ap(log)[0] != "nan"
    metrics = [json.loads(l) for l in open(tmp / "gkd" / "metrics.json")]
    for key in ("loss_kd_feature", "loss_kd_response", "loss_kd_global", "loss_cls"):
        assert any(key in m for m in metrics), key
    ckpt = torch.load(tmp / "gkd" / "model_final.pth", weights_only=False)
    assert ckpt["iteration"] == 2 and "prototypes.teacher" in ckpt["model"]


@pytest.mark.slow
def test_eval_only_and_resume(trained):
    tmp, _, log = trained
    cfg = "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml"
    teacher = str(tmp / "teacher" / "model_final.pth")
    common = [*tiny(tmp, "gkd"), "DISTILL.TEACHER.WEIGHTS", teacher, *DISTILL_OPTS]
    eval_log = run(
        "tools/train_net.py", "--config-file", cfg, "--eval-only",
        *common, "MODEL.WEIGHTS", str(tmp / "gkd" / "model_final.pth"),
    )
    assert box_ap(eval_log) == box_ap(log)  # same checkpoint, same AP
    shutil.copytree(tmp / "gkd", tmp / "gkd_resume")  # keep the original for the export test
    resume_log = run(
        "tools/train_net.py", "--config-file", cfg, "--resume", *common,
        "OUTPUT_DIR", str(tmp / "gkd_resume"), "SOLVER.MAX_ITER", "5",
    )
    assert "Starting training from iteration 3" in resume_log
    # prototypes came back with the checkpoint: no refresh at the restart
    assert "PGM refresh at iter 3" not in resume_log


@pytest.mark.slow
def test_exported_student_runs_in_stock_detectron2(trained):
    tmp, _, log = trained
    out = tmp / "exported"
    # exported from one directory with a relative --output, loaded from another below
    run(
        os.path.join(ROOT, "tools/export_student.py"),
        "--config-file", os.path.join(ROOT, "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml"),
        "--checkpoint", str(tmp / "gkd" / "model_final.pth"), "--output", "exported", *tiny(tmp, "gkd"),
        cwd=tmp,
    )
    text = (out / "config.yaml").read_text()
    assert "DISTILL" not in text and "META_ARCHITECTURE: GeneralizedRCNN" in text
    assert f"WEIGHTS: {out / 'model_final.pth'}" in text  # absolute
    # gkd_d2's synthetic datasets are unknown to stock Detectron2: none named, a comment says how
    assert "  TEST: []" in text and "  TRAIN: []" in text and "gkd_synth" not in text.split("\nCUDNN")[1]
    assert f"register_coco_instances('gkd_synth_val', {{}}, '{tmp}/data/val/annotations.json'" in text
    # Stock Detectron2, no gkd_d2 import, in another directory: the config loads as it is
    # (DefaultPredictor); register the val set the plain COCO way and evaluate.
    script = f"""
import sys
sys.modules['gkd_d2'] = None  # importing gkd_d2 here would fail loudly
import torch
from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, DefaultPredictor
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import setup_logger
setup_logger()
cfg = get_cfg(); cfg.merge_from_file(r'{out}/config.yaml')
predictor = DefaultPredictor(cfg)
image = torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8).numpy()
print('predicted', len(predictor(image)['instances']), 'boxes')
register_coco_instances('gkd_synth_val', {{}}, r'{tmp}/data/val/annotations.json', r'{tmp}/data/val/images')
cfg.DATASETS.TEST = ('gkd_synth_val',)
DefaultTrainer.test(cfg, predictor.model, [COCOEvaluator('gkd_synth_val', output_dir=r'{tmp}/stock')])
"""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    stock_log = run("-c", script, cwd=elsewhere)
    assert "predicted" in stock_log
    assert box_ap(stock_log) == box_ap(log)


def _load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_and_eval_only_after_key_value_pairs():
    train_net = _load_module(os.path.join(ROOT, "tools", "train_net.py"), "gkd_train_net_tool")
    args = train_net.parse_args(["--config-file", "c.yaml", "SOLVER.MAX_ITER", "5", "--resume"])
    assert args.resume and args.opts == ["SOLVER.MAX_ITER", "5"]
    args = train_net.parse_args(["--config-file", "c.yaml", "A", "1", "--eval-only", "B", "2"])
    assert args.eval_only and not args.resume and args.opts == ["A", "1", "B", "2"]
    with pytest.raises(SystemExit):  # any other option after the pairs: an error with a hint
        train_net.parse_args(["--config-file", "c.yaml", "A", "1", "--num-gpus", "2"])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_failed_build_keeps_config_yaml_and_names_the_json(coco_json_files, tmp_path, damage):
    """A truncated json fails at registration, one corrupt in the middle when the trainer builds
    its data loader: both name the file, and an earlier run's config.yaml stays as it was."""
    text, _, images = coco_json_files
    bad = tmp_path / f"{damage}.json"
    bad.write_text(text[: len(text) // 2] if damage == "truncated" else text[:100] + "#" + text[101:])
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("# the config of an earlier run\n")
    (out / "model_final.pth").write_bytes(b"earlier weights")
    proc = subprocess.run(
        [
            sys.executable, "tools/train_net.py",
            "--config-file", "configs/Demo/student_faster_rcnn_R18_FPN.yaml",
            "DATASETS.COCO_JSON", f"[['user_run_train', '{bad}', '{images}']]",
            "DATASETS.TRAIN", "('user_run_train',)", "DATASETS.TEST", "()",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "SOLVER.MAX_ITER", "1",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
            "--resume",  # after the KEY VALUE pairs: taken as the flag
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "odd length" not in log
    assert str(bad) in log.splitlines()[-1], log[-3000:]  # the error itself names the json
    assert (out / "config.yaml").read_text() == "# the config of an earlier run\n"
    assert (out / "model_final.pth").read_bytes() == b"earlier weights"
