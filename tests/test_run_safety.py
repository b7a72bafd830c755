"""What a failed or interrupted run leaves behind: config.yaml written only once the first step
has succeeded (a run failing on an image at the first refresh or the first batch leaves the
earlier run's untouched), --eval-only without DATASETS.TEST refused, the loss-scale warning of
a started run, and exit status 130 for an interrupted multi-process run."""
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from detectron2.utils.events import get_event_storage
from helpers import ROOT, make_teacher, tiny_cfg
from user_runs import coco_with_category_ids, copy_dataset, distill_yaml, earlier_run, files_of, load_tool

from gkd_d2.data.images import ImageReadError

train_net = load_tool("train_net")


@pytest.fixture(scope="module")
def ids_3_7_42(tmp_path_factory):
    return coco_with_category_ids(tmp_path_factory.mktemp("ids_3_7_42"), [3, 7, 42])


def coco_opts(name, json_file, images):
    return ["DATASETS.COCO_JSON", f"[['{name}', '{json_file}', '{images}']]", "DATASETS.TRAIN", f"('{name}',)"]


def first_image(json_file):
    import json

    data = json.load(open(json_file))
    return os.path.join(os.path.dirname(json_file), "images", data["images"][0]["file_name"])


# ------------------------------------------------------------------------------ config.yaml
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_failure_at_the_first_refresh_keeps_the_earlier_config(ids_3_7_42, rcnn_teacher, tmp_path, damage):
    json_file, images = copy_dataset(*ids_3_7_42, tmp_path / "data")
    bad = first_image(json_file)
    if damage == "truncated":
        data = open(bad, "rb").read()
        open(bad, "wb").write(data[: len(data) // 2])
    else:
        os.remove(bad)
    yaml = distill_yaml(tmp_path / "gkd.yaml", rcnn_teacher, 3)
    out = tmp_path / "out"
    before = earlier_run(out)
    args = train_net.parse_args(["--config-file", yaml, *coco_opts(f"edge_safety_{damage}", json_file, images),
                                 "OUTPUT_DIR", str(out)])
    reason = "OSError: image file is truncated" if damage == "truncated" else "no such file"
    with pytest.raises(ImageReadError, match=f"^Cannot read image '{bad}' \\({reason}\\)"):
        train_net.main(args)
    assert files_of(out, before) == before


def student_without_test_set(tmp_path):
    """A tiny student config without DATASETS.TEST in tmp_path/student.yaml, and an earlier run's
    files in tmp_path/out: (yaml path, output folder, earlier_run's record of them)."""
    cfg = tiny_cfg()
    cfg.DATASETS.TEST = ()
    yaml = tmp_path / "student.yaml"
    yaml.write_text(cfg.dump())
    out = tmp_path / "out"
    return yaml, out, earlier_run(out)


def test_failure_at_the_first_batch_keeps_the_earlier_config(ids_3_7_42, tmp_path):
    """A student trained alone (no refresh): the data loader's first batch meets the missing image."""
    json_file, images = copy_dataset(*ids_3_7_42, tmp_path / "data")
    for name in os.listdir(images):  # every image gone: the first batch reads one of them
        os.remove(os.path.join(images, name))
    yaml, out, before = student_without_test_set(tmp_path)
    args = train_net.parse_args(["--config-file", str(yaml), *coco_opts("edge_safety_batch", json_file, images),
                                 "OUTPUT_DIR", str(out)])
    with pytest.raises(ImageReadError, match=f"^Cannot read image '{images}/0000\\d\\d.png' \\(no such file\\)"):
        train_net.main(args)
    assert files_of(out, before) == before


def test_started_run_writes_config_after_its_first_step_and_warns_loss_scale(
    ids_3_7_42, rcnn_teacher, tmp_path, monkeypatch
):
    """Category ids 3, 7, 42 with NUM_CLASSES 3 train; config.yaml replaces the earlier one
    right after the first step (the first refresh done); a feature weight 10^4 too large gives
    one loss-scale warning naming the term."""
    saved = []
    save_config = train_net.save_config

    def recording_save_config(cfg):
        storage = get_event_storage()
        saved.append((storage.iter, "kd/pgm_prototypes" in storage.latest()))
        save_config(cfg)

    monkeypatch.setattr(train_net, "save_config", recording_save_config)
    yaml = distill_yaml(tmp_path / "gkd.yaml", rcnn_teacher, 3, **{
        "SOLVER.MAX_ITER": 3, "SOLVER.BASE_LR": 0.0, "DISTILL.FEATURE.WEIGHT": 1e4,  # lr 0: no divergence
    })
    out = tmp_path / "out"
    earlier_run(out)
    args = train_net.parse_args(["--config-file", yaml, *coco_opts("edge_safety_ok", *ids_3_7_42),
                                 "OUTPUT_DIR", str(out)])
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: warnings.append(r.getMessage())
    logging.getLogger("gkd_d2.loss_scale").addHandler(handler)
    try:
        train_net.main(args)
    finally:
        logging.getLogger("gkd_d2.loss_scale").removeHandler(handler)
    assert saved == [(0, True)]  # once, after step 0, the refresh of step 0 done
    assert "edge_safety_ok" in (out / "config.yaml").read_text()
    assert len(warnings) == 1 and warnings[0].startswith("Loss scale at iteration 0: loss_kd_feature = ")
    assert "(DISTILL.FEATURE options; docs/tuning.md)" in warnings[0]


# ------------------------------------------------------------------------------- --eval-only
def test_eval_only_without_test_set_is_an_error(tmp_path, monkeypatch):
    yaml, out, before = student_without_test_set(tmp_path)
    built = []
    monkeypatch.setattr(train_net.DistillTrainer, "build_model", classmethod(lambda cls, c: built.append(c)))
    args = train_net.parse_args(["--config-file", str(yaml), "--eval-only", "OUTPUT_DIR", str(out)])
    with pytest.raises(ValueError, match=r"^--eval-only: DATASETS.TEST is empty, there is nothing to evaluate"):
        train_net.main(args)
    assert not built and files_of(out, before) == before


# --------------------------------------------------------------------- interrupted, 2 processes
LAUNCHED = textwrap.dedent(
    """
    import sys
    from gkd_d2.resume import TrainingInterrupted, launch

    def main(mode):
        from detectron2.utils import comm
        comm.synchronize()
        if mode == "interrupt":
            raise TrainingInterrupted(3, "out/model_0000003.pth")
        raise ValueError(f"rank {comm.get_rank()} failed")

    if __name__ == "__main__":
        launch(main, 2, dist_url="auto", args=(sys.argv[1],))
    """
)


def launched(tmp_path, mode):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    return subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )


@pytest.mark.slow
def test_launch_exits_130_when_the_workers_are_interrupted(tmp_path):
    proc = launched(tmp_path, "interrupt")
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ProcessExitedException" not in proc.stderr, proc.stderr[-3000:]
    assert "Training interrupted: exit status 130" in proc.stderr
    other = launched(tmp_path, "fail")  # any other failure: Detectron2's report, status 1
    assert other.returncode == 1 and "ValueError: rank " in other.stderr and "failed" in other.stderr


def _wait_for(path, text, proc, timeout=400):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            return False
        if os.path.exists(path) and text in open(path).read():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_ctrl_c_of_a_two_process_run_exits_130(tmp_path):
    """tools/train_net.py --num-gpus 2 (gloo on the CPU); Ctrl-C (SIGINT to the whole process
    group, as a terminal sends it) once training runs: checkpoint, status 130, no traceback."""
    from test_multiprocess import CONFIG, options

    teacher = make_teacher(tmp_path, "GeneralizedRCNN", num_classes=5)
    opts = options(tmp_path, teacher) + ["SOLVER.MAX_ITER", "500", "DISTILL.PGM.PERIOD", "1000"]
    proc = subprocess.Popen(
        [sys.executable, "tools/train_net.py", "--num-gpus", "2", "--dist-url", "auto", "--config-file", CONFIG, *opts],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    out = tmp_path / "gkd"
    try:
        assert _wait_for(out / "log.txt", "PGM refresh at iter 0", proc), proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "ProcessExitedException" not in stderr, stderr[-3000:]
    last = (out / "last_checkpoint").read_text().strip()
    assert last.startswith("model_0") and (out / last).is_file()
