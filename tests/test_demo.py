"""tools/demo.py end to end at a toy size: the four stages, their configs and the table."""
import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "tools", "demo.py")


def run_demo(cwd, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, DEMO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_demo_runs_the_four_stages_with_a_control_that_needs_no_teacher(tmp_path):
    """From another working directory, on 8 + 4 shapes images: four rows in the table and in
    results.json; the control fine-tunes the trained student without knowledge terms, its unused
    teacher being that student (so it can run beside the teacher); the distilled stage fine-tunes
    the same student with the default terms and the trained teacher."""
    r = run_demo(tmp_path, "--num-train", "8", "--num-val", "4", "--teacher-iters", "10", "--iters", "10",
                 "--finetune-iters", "10", "--threads", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "output" / "demo" / "faster_rcnn"
    table = json.loads((out / "results.json").read_text())
    assert list(table) == ["teacher", "trained student", "student fine-tuned alone", "student + global knowledge"]
    assert "distillation gain:" in r.stdout
    cfg = {stage: yaml.safe_load((out / stage / "config.yaml").read_text()) for stage in ("finetune", "gkd")}
    student_weights = str(out / "student" / "model_final.pth").replace(str(tmp_path) + "/", "")
    for c in cfg.values():
        assert c["MODEL"]["WEIGHTS"] == student_weights and c["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 10
        assert c["SOLVER"]["MAX_ITER"] == 10 and c["DATASETS"]["TRAIN"] == ["gkd_shapes_train"]
    assert cfg["finetune"]["DISTILL"]["KNOWLEDGE"] == [] and not cfg["finetune"]["DISTILL"]["PGM"]["ENABLED"]
    assert cfg["finetune"]["DISTILL"]["TEACHER"]["WEIGHTS"] == student_weights
    assert cfg["finetune"]["DISTILL"]["TEACHER"]["CONFIG_FILE"] == os.path.join(
        ROOT, "configs/MakeDemo/student_faster_rcnn_R18w32_FPN.yaml")
    assert cfg["gkd"]["DISTILL"]["TEACHER"]["CONFIG_FILE"] == os.path.join(ROOT, "configs/MakeDemo/teacher_faster_rcnn_R34_FPN.yaml")
    assert cfg["gkd"]["DISTILL"]["KNOWLEDGE"] == ["feature", "response", "global"]
    assert cfg["gkd"]["DISTILL"]["TEACHER"]["WEIGHTS"] == student_weights.replace("student", "teacher")
    assert table["student + global knowledge"]["params_M"] == table["trained student"]["params_M"]
    assert table["trained student"]["params_M"] < table["teacher"]["params_M"] / 4  # the narrow student
    # every stage's progress reaches the console, its last step included
    for stage in table:
        assert f"[demo]   {stage}: iteration 10/10," in r.stdout, r.stdout[-3000:]


@pytest.mark.slow
def test_demo_rejects_a_schedule_too_short_by_name(tmp_path):
    r = run_demo(tmp_path, "--finetune-iters", "4")
    assert r.returncode == 2 and "every schedule needs at least 10 iterations (got {'finetune_iters': 4})" in r.stderr


class _Trainer:
    iter, start_iter, max_iter = 9, 0, 40


def test_more_threads_raises_the_thread_count_once_the_event_is_set():
    import threading

    import torch

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from demo import MoreThreads

    before = torch.get_num_threads()
    event, hook = threading.Event(), MoreThreads(None, before + 1, period=10)
    hook.event, hook.trainer = event, _Trainer()
    try:
        hook.trainer.iter = 10
        hook.after_step()  # not set yet: unchanged
        assert torch.get_num_threads() == before and hook.event is event
        event.set()
        hook.trainer.iter = 11
        hook.after_step()  # set, but checked every 10 iterations only
        assert torch.get_num_threads() == before
        hook.trainer.iter = 20
        hook.after_step()
        assert torch.get_num_threads() == before + 1 and hook.event is None  # then never checked again
    finally:
        torch.set_num_threads(before)


def test_console_progress_prints_iterations_and_time_left(capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from demo import ConsoleProgress

    hook = ConsoleProgress("teacher", sys.stdout, every=3600)
    hook.trainer = _Trainer()
    hook.before_train()
    hook.trainer.iter = 0
    hook.after_step()  # the first step (its set-up, e.g. the prototypes, left out of the rate): silent
    hook._first = (hook._first[0] - 19.5, 1)  # the 39 steps after it took 19.5 s
    hook.trainer.iter = 9
    hook.after_step()  # within the period: silent
    assert capsys.readouterr().out == ""
    hook.trainer.iter = 39  # the last step always prints
    hook.after_step()
    out = capsys.readouterr().out
    assert out.startswith("[demo]   teacher: iteration 40/40, 0.5") and "about 0 s left" in out
