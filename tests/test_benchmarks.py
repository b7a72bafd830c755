"""The benchmark scripts' own arithmetic (``benchmarks/``: the cost statistics, the replica's
plateau search and data folders, the results file update) and the schedule rule of the demo and
the replica (``gkd_d2.schedule``), on hand-made values."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_cost  # noqa: E402
import common  # noqa: E402
import replica  # noqa: E402

from gkd_d2.schedule import finetune_schedule, schedule  # noqa: E402


def _opts(pairs):
    return dict(zip(pairs[::2], pairs[1::2]))


def test_schedule_rule_scales_warmup_and_steps_with_the_run():
    assert _opts(schedule(1200)) == {"SOLVER.MAX_ITER": "1200", "SOLVER.STEPS": "(900, 1104)", "SOLVER.WARMUP_ITERS": "60"}
    assert _opts(finetune_schedule(1200)) == {
        "SOLVER.MAX_ITER": "1200", "SOLVER.STEPS": "(800, 1100)", "SOLVER.WARMUP_ITERS": "60"}
    assert _opts(schedule(10))["SOLVER.WARMUP_ITERS"] == "1"  # never zero warm-up iterations
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER=0"):
        schedule(0)


def test_replica_and_demo_use_the_one_rule():
    demo_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "demo.py")
    assert "from gkd_d2.schedule import METRICS, finetune_schedule, schedule" in open(demo_path).read()
    assert not hasattr(replica, "METRICS") or replica.METRICS is common.METRICS
    assert _opts(replica.solver(2400, 4, 0.01)) == {
        **_opts(schedule(2400)), "SOLVER.IMS_PER_BATCH": "4", "SOLVER.BASE_LR": "0.01"}


def test_median_iqr_of_rounds():
    assert bench_cost.median_iqr([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, [2.0, 4.0])
    assert bench_cost.median_iqr([0.5]) == (0.5, [0.5, 0.5])


def test_cost_overheads_are_per_round_fractions_of_the_student_step():
    # round 0: student 10, teacher 4, adapters 1, wrapper 16 -> beyond 0.2, share 0.1, excluding 0.1
    # round 1: student 20, teacher 8, adapters 4, wrapper 30 -> beyond 0.1, share 0.2, excluding -0.1
    # round 2: student 10, teacher 5, adapters 1, wrapper 18 -> beyond 0.3, share 0.1, excluding 0.2
    times = {"student": [10, 20, 10], "teacher": [4, 8, 5], "adapters": [1, 4, 1], "adapters_1x1": [0.5, 1, 0.2],
             "wrapper[x]": [16, 30, 18]}
    o = bench_cost.overheads(times, "x")
    assert o["overhead_beyond_teacher_forward"][0] == pytest.approx(0.2)
    assert o["adapters_share"][0] == pytest.approx(0.1)
    # the median of the per-round differences, not the difference of the medians (0.2 - 0.1)
    assert o["overhead_excluding_adapters"][0] == pytest.approx(0.1)
    assert o["overhead_excluding_adapters"][1] == pytest.approx([0.0, 0.15])
    assert o["adapters_1x1_share"][0] == pytest.approx(0.05)


def test_timed_rounds_alternate_the_order_and_skip_the_warmup():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = bench_cost.timed_rounds(fns, rounds=2, device="cpu", warmup=1)
    assert calls == ["c", "b", "a", "a", "b", "c", "c", "b", "a"]  # warm-up (round -1), rounds 0, 1
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}


def test_save_replaces_the_record_of_the_same_key(tmp_path):
    path = str(tmp_path / "r.json")
    common.save({"detector": "d", "method": "m", "seed": 0, "device": "cpu", "AP": 1.0}, path)
    common.save({"detector": "d", "method": "m", "seed": 1, "device": "cpu", "AP": 2.0}, path)
    common.save({"detector": "d", "method": "m", "seed": 0, "device": "cpu", "AP": 3.0}, path)
    records = json.load(open(path))
    assert [(r["seed"], r["AP"]) for r in records] == [(1, 2.0), (0, 3.0)]
    assert all("date" in r for r in records) and not os.path.exists(path + ".tmp")


def test_plateau_search_doubles_the_schedule_until_two_schedules_agree():
    aps = {100: 20.0, 200: 40.0, 400: 50.0, 800: 50.25, 1600: 50.3}
    calls = []

    def train(n):
        calls.append(n)
        return f"w{n}", aps[n]

    # 400 -> 800 gains 0.25 < 0.3: the plateau, and the 800-iteration model is the one used
    assert replica.plateau_search(train, 100, 0.3, 100000) == (
        "w800", 800, [[100, 20.0], [200, 40.0], [400, 50.0], [800, 50.25]], True)
    assert calls == [100, 200, 400, 800]
    # a cap below the plateau: the longest schedule allowed, not reached
    assert replica.plateau_search(train, 100, 0.3, 799) == ("w400", 400, [[100, 20.0], [200, 40.0], [400, 50.0]], False)
    # a tighter tolerance needs the next doubling
    assert replica.plateau_search(train, 100, 0.1, 100000)[1:] == (
        1600, [[100, 20.0], [200, 40.0], [400, 50.0], [800, 50.25], [1600, 50.3]], True)
    # no tolerance: one schedule, nothing checked
    calls.clear()
    assert replica.plateau_search(train, 200, 0.0, 100000) == ("w200", 200, [[200, 40.0]], None)
    assert calls == [200]


def test_replica_data_of_other_sizes_gets_its_own_folder():
    # a generated folder is regenerated when its parameters change: a tiny run must not replace
    # the images a full-size run is still reading
    def root_and_sizes(opts):
        pairs = dict(zip(opts[::2], opts[1::2]))
        return pairs["DATASETS.SHAPES.ROOT"], [pairs[f"DATASETS.SHAPES.{k}"] for k in ("NUM_TRAIN", "NUM_VAL", "IMAGE_SIZE")]

    assert root_and_sizes(common.data_opts("shapes", "cpu", 0)) == (
        os.path.join("output", "replica", "shapes", "data"), ["2000", "200", "160"])
    assert root_and_sizes(common.data_opts("shapes", "cpu", 0, 8, 4, 64)) == (
        os.path.join("output", "replica", "shapes", "data_8x64_val4"), ["8", "4", "64"])


def _demo_record(seed, gain, alone=10.0):
    stages = {"teacher": 20.0, "trained student": 2.0, "student fine-tuned alone": alone,
              "student + global knowledge": alone + gain}
    return {"seed": seed, "detector": "faster_rcnn", "gain_ap": gain, "seconds": 700.0, "stages_ap": stages,
            "date": "2026-12-03T00:00:00+00:00", "machine": {"hardware": "cpu", "cpu_count": 2, "code": "abc"}}


def test_demo_section_lists_every_seed_and_the_mean_gain():
    import report

    lines = report.demo_section([_demo_record(1, -0.5), _demo_record(0, 2.0)])
    rows = [line for line in lines if line.startswith("| faster_rcnn")]
    assert [row.split(" | ")[1] for row in rows] == ["0", "1"]  # sorted by seed
    assert "| +2.00 |" in rows[0] and "| -0.50 |" in rows[1] and "| 12.00 |" in rows[0]
    assert "Mean gain +0.75 AP over 2 seeds; 1 of 2 positive." in lines
    assert report.demo_section(None) == []


def test_demo_gain_records_replace_the_same_seed(tmp_path):
    import demo_gain

    path = str(tmp_path / "demo.json")
    for gain in (1.0, 3.0):  # the same seed run twice: its record replaced
        common.save(_demo_record(0, gain), path, key_fields=demo_gain.RECORD_KEY)
    common.save(_demo_record(1, 2.0), path, key_fields=demo_gain.RECORD_KEY)
    records = json.load(open(path))
    assert [(r["seed"], r["gain_ap"]) for r in records] == [(0, 3.0), (1, 2.0)]
