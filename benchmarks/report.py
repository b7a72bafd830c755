#!/usr/bin/env python
"""Write ``benchmarks/RESULTS.md``: the tables of the records in ``benchmarks/results``.

    python benchmarks/report.py

Reads ``demo.json`` (:mod:`demo_gain`), ``quality_finetune.json`` (:mod:`replica`), ``loss_scales.json`` (:mod:`loss_scales`),
``speed.json`` and ``cost_coco.json`` (:mod:`bench_cost`), ``refresh_coco_<device>.json``
(:mod:`bench_refresh_coco`), ``pgm_<device>.json`` (:mod:`bench_pgm`) and
``refresh_<detector>_<device>.json`` (:mod:`bench_refresh`); every table says on what machine and
when its figures were measured. What the figures mean is in ``benchmarks/NOTES.md``; the tables of
``benchmarks/investigations`` are written by ``benchmarks/investigations/report.py``.
"""
import collections
import glob
import itertools
import json
import math
import os
import statistics

from common import RESULTS, ROOT, SCALES, load_results, mean_spread, table_head, write_report

OUT = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def paired_differences(control, treated):
    """(mean, 95% half-width by Student's t, n, every difference positive) of treated - control
    over the seeds both have; control / treated: {seed: AP}."""
    from scipy import stats

    diffs = [treated[s] - control[s] for s in sorted(set(control) & set(treated))]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return mean, half, len(diffs), all(d > 0 for d in diffs)


def demo_section(records):
    """``make demo`` on several seeds (benchmarks/demo_gain.py): every stage's AP, the gain over
    the control and the whole demo's wall-clock time, one row per seed, then the mean gain."""
    if not records:
        return []
    lines = ["## `make demo` on several seeds (`demo_gain.py`, `results/demo.json`)", ""]
    stages = list(records[0]["stages_ap"])
    lines += table_head(["detector", "seed", *stages, "gain (AP)", "seconds", "machine", "date"])
    for r in sorted(records, key=lambda r: (r["detector"], r["seed"])):
        m = r["machine"]
        lines.append("| " + " | ".join([r["detector"], str(r["seed"]), *(f"{r['stages_ap'][s]:.2f}" for s in stages),
                                        f"{r['gain_ap']:+.2f}", f"{r['seconds']:.0f}",
                                        f"{m['hardware']}, {m.get('cpu_count', '?')} cores, code {m['code']}", r["date"]]) + " |")
    gains = [r["gain_ap"] for r in records]
    lines += ["", f"Mean gain {statistics.fmean(gains):+.2f} AP over {len(gains)} seeds; "
              f"{sum(g > 0 for g in gains)} of {len(gains)} positive.", ""]
    return lines


def finetune_section(records):
    """Replica v2 (benchmarks/replica.py): per (dataset, detector), every row against the
    student fine-tuned alone, paired by seed."""
    lines = ["## Quality in the paper's regime (replica v2: fine-tuning a trained student)", ""]
    if not records:
        return lines + ["No `quality_finetune.json` yet: run `benchmarks/replica.py` (see its docstring).", ""]
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r.get("dataset", "synth"), r["detector"])].append(r)
    for (dataset, detector), rows in sorted(groups.items()):
        by_method = collections.defaultdict(dict)
        for r in rows:
            by_method[r["method"]][r["seed"]] = r["AP"]
        lines += [f"### {detector}, dataset `{dataset}` ({rows[0]['device']}, last record {max(r['date'] for r in rows)})", "",
                  "| row | seeds | AP | minus `student-finetune` (mean, 95% interval) | every seed above |", "|---|---|---|---|---|"]
        for r in rows:
            if "curve" in r:
                last = ", ".join(f"{it} it. {ap:.2f}" for it, ap in r["curve"][-2:])
                lines.append(f"| {r['method']} (alone; AP at the last two evaluations: {last}) | 1 | {r['AP']:.2f} | | |")
        for method, seeds in sorted(by_method.items(), key=lambda kv: -statistics.fmean(kv[1].values())):
            if method.startswith(("teacher", "student-pretrained")):
                continue
            control = by_method.get(_control_of(method), {})
            diff = paired_differences(control, seeds) if method != _control_of(method) else None
            cell = "" if diff is None else f"{_interval(diff)} (n={diff[2]})"
            lines.append(f"| {method} | {len(seeds)} | {mean_spread(list(seeds.values()))} | {cell} | "
                         f"{'' if diff is None else ('yes' if diff[3] else 'no')} |")
        lines.append("")
    return lines


def _control_of(method):
    """The control of a replica row: ``student-finetune`` of the same fine-tuning schedule (the
    suffix ``~x`` of ``replica.py --schedule-tag``)."""
    _, tilde, schedule = method.partition("~")
    return "student-finetune" + tilde + schedule


def _teacher_variants(rows):
    """The teachers of one (dataset, detector): {tag: teacher AP}; '' is the untagged teacher,
    ``@x`` one reused with ``replica.py --tag @x`` (its record is ``teacher@x``)."""
    return {r["method"][len("teacher"):]: r["AP"] for r in rows if r["method"].startswith("teacher")}


def _cell(by_method, control, method):
    seeds = by_method.get(method)
    if not seeds:
        return "–"
    mean = statistics.fmean(seeds.values())
    if method == "student-finetune":
        return f"{mean:.2f} (n={len(seeds)})"
    d = paired_differences(control, seeds)
    if d is None:
        return f"{mean:.2f}"
    every = ", every seed +" if d[3] and d[2] > 1 else ""
    return f"{mean:.2f}: {_interval(d)} (n={d[2]}{every})"


def _contribution(by_method, with_term, without_term):
    """Paired (by seed) difference of two rows: mean [95% interval] (n), or '–'."""
    a, b = by_method.get(with_term, {}), by_method.get(without_term, {})
    d = paired_differences(b, a)
    if d is None:
        return "–"
    return f"{_interval(d)} (n={d[2]})"


def _interval(d):
    """'+mean [low, high]' of a paired difference; the mean alone for one seed."""
    if d[2] < 2:
        return f"{d[0]:+.2f}"
    return f"{d[0]:+.2f} [{d[0] - d[1]:+.2f}, {d[0] + d[1]:+.2f}]"


def _student_label(weights):
    """A short name for ``replica.py --student-weights``: the run directory of an exported
    student (``<run>/exported/model_final.pth``), else the file's path."""
    parts = weights.split(os.sep)
    return parts[-3] if len(parts) >= 3 and parts[-2] == "exported" else weights


def side_by_side_section(records):
    """Replica v2 per detector with a column per (dataset, teacher): each row's mean AP and its
    paired difference to ``student-finetune`` of that column; then the global term's share.
    Rows run with options other than the defaults (``opts``) are diagnostics: not shown here."""
    if not records:
        return []
    lines = ["## The paper's regime on both datasets, side by side", "",
             "Each cell: mean AP over the seeds, then the paired difference to `student-finetune` of the same "
             "column with its 95% interval. Both columns of a dataset share its trained student and its control "
             "(the control does not use the teacher).", ""]
    by_detector = collections.defaultdict(list)
    for r in records:
        by_detector[r["detector"]].append(r)
    order = ["student-finetune", "gkd", "response", "response+global", "feature+response", "feature", "global",
             "feature+global"]
    for detector, rows in sorted(by_detector.items()):
        columns = []  # (dataset, teacher tag, schedule tag, teacher AP, start, {method: {seed: AP}})
        for dataset in sorted({r.get("dataset", "synth") for r in rows}):
            drows = [r for r in rows if r.get("dataset", "synth") == dataset]
            schedules = sorted({r["method"].partition("~")[2] for r in drows})
            for (tag, teacher_ap), schedule in itertools.product(sorted(_teacher_variants(drows).items()), schedules):
                by_method, start = collections.defaultdict(dict), None
                for r in drows:
                    if "opts" in r or r["method"].startswith(("teacher", "student-pretrained")):
                        continue
                    name, _, row_schedule = r["method"].partition("~")
                    base, at, rest = name.partition("@")
                    # the control serves every teacher of its schedule
                    if row_schedule == schedule and (base == "student-finetune" or at + rest == tag):
                        by_method[base][r["seed"]] = r["AP"]
                        start = start or r.get("student_weights")
                if len(by_method) > 1:
                    columns.append((dataset, tag, schedule, teacher_ap, start, by_method))
        if not columns:
            continue
        student = {r.get("dataset", "synth"): r["AP"] for r in rows if r["method"] == "student-pretrained"}
        head = [f"`{d}`, teacher{t} {ap:.1f} AP, "
                + (f"student from `{_student_label(start)}`" if start else
                   f"trained student {student.get(d, float('nan')):.1f} AP")
                + (f", fine-tuning {sched}" if sched else "") for d, t, sched, ap, start, _ in columns]
        tables = [c[-1] for c in columns]
        methods = [m for m in order if any(m in by_method for by_method in tables)]
        methods += sorted({m for by_method in tables for m in by_method} - set(methods))
        lines += [f"### {detector}", "", *table_head(["row", *head])]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_cell(t, t.get("student-finetune", {}), m) for t in tables) + " |")
        lines += ["", "The global term's contribution (paired by seed, mean [95% interval]):", "",
                  *table_head(["difference", *head])]
        for a, b in (("response+global", "response"), ("gkd", "feature+response")):
            lines.append(f"| `{a}` - `{b}` | " + " | ".join(_contribution(t, a, b) for t in tables) + " |")
        lines.append("")
    return lines


def loss_scales_section(records):
    """benchmarks/loss_scales.py: each default loss_kd_* over the sum of the detection losses."""
    lines = ["## Loss scales with the default options", ""]
    if not records:
        return lines + ["No `loss_scales.json` yet: run `benchmarks/loss_scales.py`.", ""]
    lines += ["| scale | detector | weights | iteration | detection losses | " + " | ".join(
        f"`{k}` / detection" for k in ("loss_kd_feature", "loss_kd_response", "loss_kd_global")) + " |",
        "|---|---|---|---|---|---|---|---|"]
    for r in records:
        for key in sorted((k for k in r if k[4:].isdigit() and k.startswith("iter")), key=lambda k: int(k[4:])):
            it = r[key]
            ratios = " | ".join(f"{it['ratio'].get(k, float('nan')):.3g}" for k in ("loss_kd_feature", "loss_kd_response", "loss_kd_global"))
            lines.append(f"| {r['scale']} | {r['detector']} | {r['weights']} | {key[4:]} | {it['detection_losses']:.3f} | {ratios} |")
    lines += ["", f"Measured on {records[0]['device']}, {min(r['date'] for r in records)} to {max(r['date'] for r in records)}.", ""]
    return lines


def speed_section(speed):
    """``speed.json`` of ``bench_cost.py`` (demo scale): one table per device kind and detector."""
    lines = ["## Cost of distilling, demo configurations (`bench_cost.py`, `results/speed.json`)", ""]
    if not speed:
        return lines + ["No results yet.", ""]
    for kind, s in sorted(speed.items()):
        n = f"median of {s['rounds']} interleaved rounds ({s.get('clock', 'wall')} clock)" if "rounds" in s \
            else f"median of {s['iters']} interleaved steps (wall clock)"
        lines += [f"### {kind}: {s['hardware']}, {s['cpu_threads']} threads, torch {s['torch']}, {s['date']}", "",
                  f"{s.get('models', SCALES['demo'][3])}, batch of {s['batch']}, {n}.", ""]
        for det in ("faster_rcnn", "retinanet"):
            if det not in s:
                continue
            d = s[det]
            beyond = d.get("overhead_beyond_teacher_forward", d.get("kd_overhead_vs_full_teacher", {}))
            teacher = d.get("teacher_forward_s", d.get("teacher_full_fwd_s"))
            lines += [f"**{det}**: student step {d['student_step_s'] * 1e3:.0f} ms"
                      + (f", whole teacher forward {teacher * 1e3:.0f} ms" if teacher else "")
                      + (f", 3x3 adapters {d['adapters_share'] * 100:.1f}% of a student step" if "adapters_share" in d
                         else "") + ".", "",
                      *table_head(["knowledge terms", "distillation step (ms)", "beyond student step + teacher forward"])]
            for name, t in d["wrapper_step_s"].items():
                lines.append(f"| {name} | {t * 1e3:.0f} | {f'{beyond[name] * 100:+.0f}%' if name in beyond else 'n/a'} |")
            mem, inf, par = d.get("peak_memory_MiB") or {}, d.get("inference_s_per_image"), d["params_M"]
            fmt = lambda v: "n/a" if v is None else f"{v:.0f} MiB"  # noqa: E731
            lines += ["", f"Peak memory of a step above what is resident: student {fmt(mem.get('student_step'))}, "
                      f"distillation {fmt(mem.get('distillation_step'))}."
                      + (f" Inference per image: teacher {inf['teacher'] * 1e3:.0f} ms, student "
                         f"{inf['student'] * 1e3:.0f} ms." if inf else "")
                      + f" Parameters: teacher {par['teacher']:.1f} M, student {par['student']:.1f} M.", ""]
    return lines


def json_table(title, pattern, header, row):
    """A section with one table row per results file matching ``pattern`` (``row(record)``)."""
    lines = [title, ""]
    files = sorted(glob.glob(os.path.join(RESULTS, pattern)))
    if not files:
        return lines + ["No results yet.", ""]
    lines += table_head(header)
    lines += ["| " + " | ".join(map(str, row(json.load(open(f))))) + " |" for f in files]
    return lines + [""]


def pgm_section():
    return json_table(
        "## PGM: inner-product formulation vs the direct candidates x D x N formula (`bench_pgm.py`)",
        "pgm_*.json",
        ["device", "N", "D", "candidates", "K", "gkd_d2 (s)", "direct (s)", "speed-up",
         "peak MiB (gkd_d2 / direct)", "memory ratio", "same indices", "date"],
        lambda r: [
            f"{r['hardware']} ({r['device']})", r["N"], r["D"], r["candidates"], r["K"],
            f"{r['time_gkd_d2_s']:.4f}", f"{r['time_reference_s']:.4f}", f"{r['speedup']:.0f}x",
            f"{r['peak_mem_gkd_d2_MiB']:.0f} / {r['peak_mem_reference_MiB']:.0f}",
            f"{r['memory_ratio']:.0f}x", r["indices_identical"], r["date"],
        ],
    )


def refresh_section():
    return json_table(
        "## Prototype refresh, demo configuration (`bench_refresh.py`)",
        "refresh_[!c]*.json",
        ["detector", "device", "images", "instances", "prototypes", "first refresh (s)",
         "cached teacher (s)", "cache speed-up", "date"],
        lambda r: [
            r["detector"], f"{r['hardware']} ({r['device']})", r["train_images"], r["instances"],
            r["prototypes"], r["first_refresh_s (teacher + student features, PGM)"],
            r["cached_refresh_s (student features, PGM)"], f"{r['teacher_cache_speedup']}x", r["date"],
        ],
    )


def cost_coco_section():
    """``cost_coco.json`` of ``bench_cost.py --scale coco``, then the block-timed records of
    ``cost_coco_superseded.json``."""
    records = load_results("cost_coco.json") or []
    lines = ["## Cost of distilling at COCO scale (`bench_cost.py --scale coco`, `results/cost_coco.json`)", ""]
    if not records:
        return lines + ["No results yet.", ""]
    lines += table_head(["detector", "device", "clock", "rounds", "student step (s)", "teacher forward (s)",
                         "distillation step (s)", "beyond student + teacher forward", "3x3 adapters",
                         "excluding the adapters", "1x1 adapters", "code", "date"])
    pct = lambda r, k: f"{100 * r[k]:+.1f}% [{100 * r['iqr'][k][0]:+.1f}, {100 * r['iqr'][k][1]:+.1f}]"  # noqa: E731
    for r in sorted(records, key=lambda r: (r["detector"], r["device"], r["date"])):
        lines.append("| " + " | ".join(map(str, [
            r["detector"], f"{r['hardware']} ({r['device']}, {r['cpu_threads']} thread(s))", r["clock"], r["rounds"],
            f"{r['student_step_s']:.2f}", f"{r['teacher_forward_s']:.2f}", f"{r['wrapper_step_s']:.2f}",
            pct(r, "overhead_beyond_teacher_forward"), pct(r, "adapters_share"), pct(r, "overhead_excluding_adapters"),
            pct(r, "adapters_1x1_share"), r["code"], r["date"]])) + " |")
    lines += ["", "The paper's configurations (ResNet-101 FPN teacher, ResNet-50 FPN student, 80 classes, two 800 px "
              "images per step), random weights, the full method with the defaults. Fractions of the student's own "
              "step: median over the rounds [interquartile range]. Excluding the adapters: what the method adds "
              "beyond a whole teacher forward and the adaptation convolutions (forward + backward).", ""]
    superseded = load_results("cost_coco_superseded.json") or []
    if superseded:
        lines += ["Block-timed records (the student and the distillation step in separate 3-step blocks; "
                  "`results/cost_coco_superseded.json`):", "",
                  *table_head(["detector", "method", "student step (s)", "teacher forward (s)", "distillation step (s)",
                               "beyond student + teacher forward", "code", "date"])]
        for r in sorted(superseded, key=lambda r: (r["detector"], r["method"], r["date"])):
            lines.append("| " + " | ".join(map(str, [
                r["detector"], r["method"], f"{r['student_step_s']:.2f}", f"{r['teacher_forward_s']:.2f}",
                f"{r['wrapper_step_s']:.2f}", f"{100 * r['overhead_beyond_teacher_forward']:+.1f}%", r.get("code", ""),
                r["date"]])) + " |")
        lines.append("")
    return lines


def refresh_coco_section():
    """``refresh_coco_<device>.json`` of ``bench_refresh_coco.py``."""
    lines = ["## Prototype refresh at COCO scale (`bench_refresh_coco.py`)", ""]
    files = sorted(glob.glob(os.path.join(RESULTS, "refresh_coco_*.json")))
    if not files:
        return lines + ["No results yet.", ""]
    header = ["device", "sampling", "images read", "instances", "student extraction (s / image)",
              "PGM, 80 classes x 5 levels (s)", "refresh (s)", "epoch (s)", "refresh / epoch",
              "first refresh: + teacher / epoch", "date"]
    lines += table_head(header)
    for f in files:
        r = json.load(open(f))
        for name, x in r["sampling"].items():
            lines.append("| " + " | ".join(map(str, [
                f"{r['hardware']} ({r['device']})", name, x["images_read"], x["instances"],
                f"{r['student_extraction_s_per_image']:.2f}", x["pgm_s"], x["refresh_s"], f"{r['epoch_s']:.0f}",
                f"{100 * x['refresh_fraction_of_epoch']:.1f}%", f"{100 * x['first_refresh_extra_fraction_of_epoch']:.1f}%",
                r["date"],
            ])) + " |")
        lines += ["", f"Annotations: {r['annotations']}; {r['train_images']} training images, at most "
                  f"{r['max_samples']} instances per class of shorter side >= {r['min_size']} px at the test scale "
                  f"{r['test_scale']}. Epoch: {r['train_images']} images x the distillation step per image "
                  f"({r['distillation_step_s_per_image']:.2f} s; the student alone "
                  f"{r['student_step_s_per_image']:.2f} s). Extraction timed on {r['extraction_timed_on']}.", ""]
    return lines


COMMANDS = """## Reproducing

```bash
make bootstrap
.venv/bin/python benchmarks/replica.py --detector faster_rcnn --dataset shapes --seeds 0 1 2 \\
    --rows student-finetune gkd response response+global feature+response   # quality_finetune.json
.venv/bin/python benchmarks/loss_scales.py --scale coco   # loss_scales.json
.venv/bin/python benchmarks/bench_cost.py                 # speed.json; --device cuda on a GPU
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cost.py --scale coco --clock cpu --no-memory   # cost_coco.json
.venv/bin/python benchmarks/bench_refresh_coco.py         # refresh_coco_<device>.json
.venv/bin/python benchmarks/bench_pgm.py                  # pgm_<device>.json; --device cuda on a GPU
.venv/bin/python benchmarks/bench_refresh.py --detector faster_rcnn   # refresh_<detector>_<device>.json
.venv/bin/python benchmarks/report.py                     # this file
```
"""


def main():
    lines = ["# Benchmark tables", "",
             "Generated by `benchmarks/report.py` from the records in `benchmarks/results/`; what they show is in "
             "`benchmarks/NOTES.md`.", ""]
    finetune = load_results("quality_finetune.json")
    lines += demo_section(load_results("demo.json"))
    lines += side_by_side_section(finetune)
    lines += finetune_section(finetune)
    lines += loss_scales_section(load_results("loss_scales.json"))
    lines += cost_coco_section()
    lines += speed_section(load_results("speed.json"))
    lines += refresh_coco_section()
    lines += pgm_section()
    lines += refresh_section()
    lines += COMMANDS.splitlines()
    write_report(OUT, lines)


if __name__ == "__main__":
    main()
