"""``tools/train_net.py --num-gpus 2`` on the CPU: Detectron2's launch, gloo, DDP without
device ids; training, evaluation, checkpoints and prototypes identical on every process."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from helpers import make_teacher
from gkd_d2 import DistillationCheckpointer, PrototypeRefresher
from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.prototypes.agreement import prototype_fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml"


def options(tmp, teacher):
    """The demo config at 64 px on 8 images, 3 iterations; prototypes refreshed at iterations 0
    and 2, a checkpoint after iteration 1 (the weights the refresh at 2 reads). GroupNorm
    everywhere in the student: DDP does not synchronise BatchNorm statistics
    (broadcast_buffers=False), so one process could not redo rank 1's share of the refresh."""
    return [
        "DATASETS.SYNTHETIC.ROOT", str(tmp / "data"),
        "DATASETS.SYNTHETIC.NUM_TRAIN", "8", "DATASETS.SYNTHETIC.NUM_VAL", "4",
        "DATASETS.SYNTHETIC.IMAGE_SIZE", "64",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "(100,)", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATALOADER.NUM_WORKERS", "0",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN",
        "MODEL.WEIGHTS", "", "DISTILL.FREEZE_STUDENT_BN", "False",
        "DISTILL.TEACHER.CONFIG_FILE", teacher[0], "DISTILL.TEACHER.WEIGHTS", teacher[1],
        "DISTILL.PGM.MIN_SIZE", "4", "DISTILL.PGM.PERIOD", "2", "DISTILL.FEATURE.WEIGHT", "1e-4",
        "OUTPUT_DIR", str(tmp / "gkd"),
    ]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiprocess")
    teacher = make_teacher(tmp, "GeneralizedRCNN", num_classes=5)  # the demo's 5 classes
    opts = options(tmp, teacher)
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--num-gpus", "2", "--dist-url", "auto",
         "--config-file", CONFIG, *opts],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp / "gkd", opts, proc.stdout + proc.stderr


def rank_logs(out):
    """Detectron2's per-process log files: log.txt (rank 0), log.txt.rank1."""
    return [(out / name).read_text() for name in ("log.txt", "log.txt.rank1")]


@pytest.mark.slow
def test_two_processes_train_evaluate_and_checkpoint(two_process_run):
    out, _, log = two_process_run
    rank0, rank1 = rank_logs(out)
    assert "Rank of current process: 0. World size: 2" in rank0
    assert "Rank of current process: 1. World size: 2" in rank1
    assert "copypaste: Task: bbox" in log  # Detectron2's evaluation, gathered from both ranks
    assert "on 2 devices" in log
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    for key in ("loss_kd_feature", "loss_kd_response", "loss_kd_global", "loss_cls"):
        values = [m[key] for m in metrics if key in m]
        assert values and all(torch.isfinite(torch.tensor(values))), key
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 2
    assert int(final["model"]["prototypes.last_refresh_iter"]) == 2
    assert (out / "model_0000001.pth").is_file()


@pytest.mark.slow
def test_every_process_holds_the_same_prototypes(two_process_run):
    out, opts, _ = two_process_run
    pattern = r"Prototypes of iter (\d+) identical on 2 processes \(fingerprint (\w+)\)"
    per_rank = [re.findall(pattern, text) for text in rank_logs(out)]
    assert [it for it, _ in per_rank[0]] == ["0", "2"]
    assert per_rank[0] == per_rank[1]
    for text in rank_logs(out):
        assert "PGM refresh at iter 0" in text and "PGM refresh at iter 2" in text

    # The checkpoint (rank 0) holds the prototypes both ranks reported.
    cfg = load_config(os.path.join(ROOT, CONFIG), opts)
    register_datasets_from_cfg(cfg)
    model = build_model(cfg)
    DistillationCheckpointer(model).load(str(out / "model_final.pth"))
    assert prototype_fingerprint(model.prototypes) == per_rank[0][1][1]
    final = {k: v.clone() for k, v in model.prototypes.state_dict().items()}
    assert final["valid"].sum() > 0

    # One process refreshing from the weights the refresh at iteration 2 read (the checkpoint
    # after iteration 1) gets the same prototypes as the two processes did together: each
    # rank pooled its share of the instances with identical (DDP-synchronised) weights.
    DistillationCheckpointer(model).load(str(out / "model_0000001.pth"))
    PrototypeRefresher(cfg).refresh(model, 2)
    single = model.prototypes.state_dict()
    for key in ("valid", "source", "last_refresh_iter"):
        assert torch.equal(single[key], final[key]), key
    for key in ("teacher", "student"):
        assert torch.allclose(single[key], final[key], atol=1e-5), key
