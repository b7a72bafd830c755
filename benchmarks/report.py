#!/usr/bin/env python
"""Write ``benchmarks/RESULTS.md`` (and ``results/quality_ap.png``) from ``benchmarks/results``.

    python benchmarks/report.py

Reads ``quality.json`` and ``quality_teacher3600.json`` (records of :mod:`quality`), the
``probe_*.json`` of :mod:`probe_global`, :mod:`probe_feature`, :mod:`probe_data`, :mod:`probe_robust` and :mod:`probe_gradients`, ``speed.json`` (:mod:`bench_cost`),
``anchor_kl.json`` (:mod:`bench_anchor_kl`), ``pgm_<device>.json`` (:mod:`bench_pgm`) and ``refresh_<detector>_<device>.json``
(:mod:`bench_refresh`); every table says on what machine and when its figures were measured.
"""
import collections
import glob
import itertools
import json
import math
import os
import statistics

from common import RESULTS, ROOT

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
OUT = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def load(name):
    path = os.path.join(RESULTS, name)
    return json.load(open(path)) if os.path.isfile(path) else None


def mean_spread(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "nan"  # e.g. APl: no large object in the validation set
    m = statistics.fmean(values)
    return f"{m:.2f} ± {statistics.pstdev(values):.2f}" if len(values) > 1 else f"{m:.2f}"


def table_head(header):
    """The first two lines of a Markdown table with these column names."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]


def quality_section(records, title="## Quality (replica of Tables 1, 3, 4, 6)", plot=True):
    lines = [title, ""]
    if not records:
        return lines + ["No `quality.json` yet: run `benchmarks/quality.py` (see its docstring).", ""]
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r["detector"], r["device"], r["method"])].append(r)
    by_table = collections.defaultdict(list)
    for (det, dev, method), rs in groups.items():
        by_table[(det, dev)].append((method, rs))
    for (det, dev), rows in sorted(by_table.items()):
        first = rows[0][1][0]
        lines += [
            f"### {det} on {dev}",
            "",
            f"{first.get('train_images', '?')} training / {first.get('val_images', '?')} validation "
            f"synthetic images of {first.get('image_size', '?')} px; latest record {max(r['date'] for _, rs in rows for r in rs)}. "
            "Mean ± spread (population std) over seeds.",
            "",
            *table_head(["method", "seeds", *METRICS]),
        ]
        order = {"teacher": 0, "student": 1, "gkd": 2}
        for method, rs in sorted(rows, key=lambda x: (order.get(x[0], 3), x[0])):
            cells = [mean_spread([r[m] for r in rs]) for m in METRICS]
            seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
            lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    path = plot_quality(by_table) if plot else None
    if path:
        lines += [f"![AP per method]({os.path.relpath(path, os.path.dirname(OUT))})", ""]
    return lines


PROBE_GLOBAL_COLUMNS = (
    ("ncm_mean", "NCM, pooled"), ("ncm_mean_pairs", "NCM, look-alike pairs"), ("ncm_spatial", "NCM, 7x7 cells"),
    ("ncm_box_head", "NCM, box head"), ("cls_acc", "own classifier"), ("r_class", "r_class"),
    ("r_colour", "r_colour"), ("rel_gap", "rel_gap"), ("global", "L_global, fresh prototypes"),
    ("global_stored", "L_global, run's prototypes"), ("w", "mean w"),
)


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


def data_probe_section():
    """benchmarks/probe_data.py: can the demo teacher learn the classes of the shapes data?"""
    rows = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "probe_data_*.json"))):
        r = json.load(open(path))
        rows += [dict(p, detector=r["detector"]) for p in r.get("previous", [])] + [r]
    if not rows:
        return []
    lines = ["## The shapes data: does the demo teacher learn its classes? (`probe_data.py`)", "",
             "Target of the replica-data issue: teacher AP >= 35, nearest-class-mean (NCM) accuracy of its pooled "
             "GT features >= 0.8 on clear instances and visibly lower on ambiguous ones (10 classes: chance 0.1). "
             "NCM of the instance vectors the method uses by default (7x7 ROIAlign averaged over the grid, METHOD.md "
             "section 1), and of the same grids flattened (`DISTILL.INSTANCE_POOLING flatten`; measured from "
             "2026-12-01 on).", "",
             "| detector | attempt | teacher iterations | AP | AP50 | NCM clear | NCM ambiguous | NCM, flattened grid: "
             "clear / ambiguous | own class. clear / ambiguous | clear / ambiguous instances | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r.get('attempt', '')} | {r.get('teacher_iters', '')} | {r['AP']:.2f} | {r['AP50']:.2f} | "
            f"{r['ncm_clear']:.3f} | {r['ncm_ambiguous']:.3f} | "
            + (f"{r['ncm_grid_clear']:.3f} / {r['ncm_grid_ambiguous']:.3f}" if "ncm_grid_clear" in r else "")
            + " | "
            + (f"{r['own_clear']:.3f} / {r['own_ambiguous']:.3f}" if "own_clear" in r else "")
            + f" | {r.get('n_clear', '')} / {r.get('n_ambiguous', '')} | "
            f"{r.get('date', '')} |"
        )
    ap_met = [r for r in rows if r["AP"] >= 35]
    ncm_met = [r for r in rows if r["ncm_clear"] >= 0.8]
    grid_met = [r for r in rows if r.get("ncm_grid_clear", 0) >= 0.8]
    verdict = (f"AP target met by {len(ap_met)} of these teachers, NCM target by {len(ncm_met)} with the mean-pooled "
               f"vectors and by {len(grid_met)} with the flattened grids; "
               "see 'The shapes data' above (from benchmarks/NOTES.md).")
    return lines + ["", verdict, ""]


def robust_probe_section():
    """benchmarks/probe_robust.py: do the robust weights (Eq. 8) single out the noisy instances?"""
    lines = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "probe_robust_*.json"))):
        d = json.load(open(path))
        det = os.path.basename(path)[len("probe_robust_"):-len(".json")]
        lines += [
            f"### {det}: teacher `{d['teacher']}`",
            "",
            f"{d['instances']} validation GT instances ({d['ambiguous']} ambiguous); the teacher classifies "
            f"{d['teacher_right_clear']:.2f} of the clear and {d['teacher_right_ambiguous']:.2f} of the ambiguous "
            f"ones right; {d['machine']['hardware']}, {d['machine']['date']}. AUC: probability that a random "
            "ambiguous (teacher-wrong) instance weighs less than a random clear (teacher-right) one; 0.5 = no "
            "separation.",
            "",
            "| student of the pair | mean w | clear | ambiguous | small / blurred / occluded / truncated | "
            "teacher right / wrong | AUC ambiguous | AUC teacher wrong | w < 0.8 (of which ambiguous) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in d["rows"]:
            reasons = " / ".join(f"{r['w_by_reason'][k]:.3f}" for k in ("small", "blurred", "occluded", "truncated"))
            lines.append(
                f"| {r['run']} | {r['w_mean']:.3f} | {r['w_clear']:.3f} | {r['w_ambiguous']:.3f} | {reasons} | "
                f"{r['w_teacher_right']:.3f} / {r['w_teacher_wrong']:.3f} | {r['auc_ambiguous']:.2f} | "
                f"{r['auc_teacher_wrong']:.2f} | {r['low_share']:.1%} ({r['low_ambiguous_share']:.0%}) |"
            )
        lines.append("")
    title = "## Robust weights: do they single out the noisy instances? (`probe_robust.py`)"
    return ([title, ""] + lines) if lines else []


def probe_sections():
    """Tables of ``probe_global_<detector>.json`` and ``probe_feature_<detector>.json``."""
    lines = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "probe_global_*.json"))):
        d = json.load(open(path))
        det = os.path.basename(path)[len("probe_global_"):-len(".json")]
        cols = [(k, h) for k, h in PROBE_GLOBAL_COLUMNS if any(k in r for r in d["rows"])]
        lines += [
            f"### What the global term sees, {det} (`benchmarks/probe_global.py`)",
            "",
            f"{d['instances']} validation GT instances; {d['machine']['hardware']}, {d['machine']['date']}. "
            "NCM = nearest-class-mean accuracy of the pooled instance features (chance 0.20).",
            "",
            *table_head(["run", *(h for _, h in cols)]),
        ]
        for r in d["rows"]:
            lines.append(f"| {r['run']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "" for k, _ in cols) + " |")
        lines.append("")
    for path in sorted(glob.glob(os.path.join(RESULTS, "probe_feature_*.json"))):
        d = json.load(open(path))
        det = os.path.basename(path)[len("probe_feature_"):-len(".json")]
        levels = [k for k in d["rows"][0] if k != "run"]
        if any("r2_linear" in r[lv] for r in d["rows"] for lv in levels):  # the replica's runs (adapters without ReLU)
            lines += [
                f"### Feature term: how much of the teacher's maps the student holds, {det} (`benchmarks/probe_feature.py`)",
                "",
                f"{d['images']} validation images; {d['machine']['hardware']}, {d['machine']['date']}. Per level: "
                "mean squared error between the teacher's map and the run's adapted student map / its R^2 (1 - that "
                "error over the teacher's variance around its channel means) / R^2 of the best 1x1 linear map from the "
                "student's map, fitted on half the images and measured on the other half (`-`: the run has no adapters).",
                "",
                *table_head(["run", *levels]),
            ]
            for r in d["rows"]:
                cells = [(f"{r[lv]['mse']:.2f} / {r[lv]['r2']:.2f}" if "r2" in r[lv] else "- / -")
                         + f" / {r[lv]['r2_linear']:.2f}" for lv in levels]
                lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
            lines.append("")
            continue
        lines += [
            f"### Feature term: error a ReLU adapter cannot remove, {det} (`benchmarks/probe_feature.py`)",
            "",
            f"{d['images']} validation images; {d['machine']['hardware']}, {d['machine']['date']}. Per level: "
            "mean squared error after training / share of it that is min(F_T, 0)^2 (teacher elements < 0: "
            f"{statistics.fmean(d['rows'][0][lv]['teacher_negative'] for lv in levels):.0%}).",
            "",
            *table_head(["run", *levels]),
        ]
        for r in d["rows"]:
            lines.append(
                f"| {r['run']} | " + " | ".join(f"{r[lv]['mse']:.2f} / {r[lv]['floor_share']:.0%}" for lv in levels) + " |"
            )
        lines.append("")
    return (["## Probes: why the global and feature terms do not transfer here", ""] + lines) if lines else []


def gradient_probe_section():
    """benchmarks/probe_gradients.py: which way does each term pull the student at the start of fine-tuning?"""
    lines = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "probe_gradients_*.json"))):
        d = json.load(open(path))
        det = os.path.basename(path)[len("probe_gradients_"):-len(".json")]
        groups = list(d["params"])
        lines += [
            f"### {det}: teacher `{d['teacher']}`, student `{d['student']}`",
            "",
            f"Knowledge {', '.join(d['knowledge'])}; {d['batches']} training batches of 4; {d['machine']['hardware']}, "
            f"{d['machine']['date']}. Per parameter group ({', '.join(f'{g} {n / 1e6:.2f} M' for g, n in d['params'].items())}): "
            "||g_term|| / ||g_det|| / cosine with g_det on the same batch / cosine of the term's gradient over the "
            "first half of the batches with the detection gradient over the second half (the detection row: its own "
            "two halves, the ceiling). `-`: the term does not reach the group.",
            "",
            *table_head(["term", "loss", *groups]),
        ]
        for term, r in d["terms"].items():
            cells = ["-" if r[g]["norm_ratio"] == 0 else
                     f"{r[g]['norm_ratio']:.2f} / {r[g]['cos_same']:+.2f} / {r[g]['cos_heldout']:+.2f}" for g in groups]
            lines.append(f"| {term} | {r['loss']:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    title = "## Gradients at the start of fine-tuning: which way each term pulls (`probe_gradients.py`)"
    return ([title, ""] + lines) if lines else []


def plot_quality(by_table):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(6 * len(by_table), 4))
    FigureCanvasAgg(fig)
    for i, ((det, dev), rows) in enumerate(sorted(by_table.items())):
        ax = fig.add_subplot(1, len(by_table), i + 1)
        rows = sorted(rows, key=lambda x: statistics.fmean(r["AP"] for r in x[1]))
        names = [m for m, _ in rows]
        means = [statistics.fmean(r["AP"] for r in rs) for _, rs in rows]
        errs = [statistics.pstdev([r["AP"] for r in rs]) if len(rs) > 1 else 0 for _, rs in rows]
        colors = ["tab:green" if n == "gkd" else "tab:gray" if n in ("teacher", "student") else "tab:blue" for n in names]
        ax.barh(names, means, xerr=errs, color=colors)
        ax.set_xlabel("COCO box AP")
        ax.set_title(f"{det} ({dev})")
    fig.tight_layout()
    path = os.path.join(RESULTS, "quality_ap.png")
    fig.savefig(path, dpi=100)
    return path


def speed_section(speed):
    lines = ["## Cost of distilling (`benchmarks/bench_cost.py`)", ""]
    if not speed:
        return lines + ["No `speed.json` yet.", ""]
    for kind, s in sorted(speed.items(), key=lambda kv: ("coco" in kv[0], kv[0])):
        lines += [
            f"### {kind}: {s['hardware']}, {s['cpu_threads']} threads, torch {s['torch']}, {s['date']}",
            "",
            f"{s.get('models', 'Demo configurations (teacher ResNet-34 FPN-128, student ResNet-18 FPN-64)')}, "
            f"batch of {s['batch']}, median of {s['iters']} interleaved steps. Overhead = (wrapper step - "
            "student step - teacher forward) / student step, with the teacher's backbone forward "
            "(the teacher's heads run on the student's RoIs / anchors count as overhead) and with "
            "a whole teacher forward (the issue's definition, target at most 10%).",
            "",
        ]
        for det in ("faster_rcnn", "retinanet"):
            if det not in s:
                continue
            d = s[det]
            lines += [
                f"**{det}**: student step {d['student_step_s'] * 1e3:.0f} ms, teacher forward "
                f"{d['teacher_fwd_s'] * 1e3:.0f} ms (backbone)"
                + (f", {d['teacher_full_fwd_s'] * 1e3:.0f} ms (whole)." if "teacher_full_fwd_s" in d else "."),
                "",
                "| knowledge terms | wrapper step (ms) | overhead, beyond teacher backbone | overhead, beyond whole teacher forward |",
                "|---|---|---|---|",
            ]
            full = d.get("kd_overhead_vs_full_teacher", {})  # not measured by older runs
            for name, t in d["wrapper_step_s"].items():
                lines.append(
                    f"| {name} | {t * 1e3:.0f} | {d['kd_overhead_vs_student_step'][name] * 100:+.0f}% "
                    f"| {f'{full[name] * 100:+.0f}%' if name in full else 'n/a'} |"
                )
            mem = d["peak_memory_MiB"]
            fmt = lambda v: "n/a" if v is None else f"{v:.0f} MiB"  # noqa: E731
            inf, par = d["inference_s_per_image"], d["params_M"]
            lines += [
                "",
                f"Peak memory of a step above what is resident: student {fmt(mem['student_step'])}, "
                f"distillation {fmt(mem['distillation_step'])}. Inference per image: teacher "
                f"{inf['teacher'] * 1e3:.0f} ms, student {inf['student'] * 1e3:.0f} ms. Parameters: "
                f"teacher {par['teacher']:.1f} M, student {par['student']:.1f} M.",
                "",
            ]
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
    """``cost_coco.json`` of ``bench_cost.py --scale coco``: one row per record; then the records
    of code since changed (``cost_coco_superseded.json``)."""
    records = load("cost_coco.json") or []
    lines = ["## Cost of distilling at COCO scale (`bench_cost.py --scale coco`, `results/cost_coco.json`)", ""]
    if not records:
        return lines + ["No results yet.", ""]
    lines += cost_table(records)
    superseded = load("cost_coco_superseded.json") or []
    if superseded:
        lines += ["Records of code changed since (`results/cost_coco_superseded.json`):", ""] + cost_table(superseded)
    return lines + ["The paper's configurations (ResNet-101 FPN teacher, ResNet-50 FPN student, 80 classes, two "
                    "800 px images per step), random weights; medians of interleaved steps. The overhead is "
                    "(distillation step - student step - whole teacher forward) / student step; target <= +10%. "
                    "`code`: the commit measured (runs before 76ab551 computed the RetinaNet teacher's whole "
                    "head, box branch included, for its response).", ""]


def cost_table(records):
    lines = []
    header = ["detector", "method", "device", "student step (s)", "teacher forward (s)", "distillation step (s)",
              "beyond student + teacher forward", "peak MiB (student / distillation)", "steps", "code", "date"]
    lines += table_head(header)
    for r in sorted(records, key=lambda r: (r["detector"], r["device"], r["method"], r["date"])):
        peak = r.get("peak_memory_MiB")
        mem = f"{r.get('student_peak_memory_MiB') or 0:.0f} / {peak:.0f}" if peak else ""
        lines.append("| " + " | ".join(map(str, [
            r["detector"], r["method"], f"{r['hardware']} ({r['device']})", f"{r['student_step_s']:.2f}",
            f"{r['teacher_forward_s']:.2f}", f"{r['wrapper_step_s']:.2f}",
            f"{100 * r['overhead_beyond_teacher_forward']:+.1f}%", mem, r.get("iters", ""), r.get("code", ""),
            r["date"],
        ])) + " |")
    return lines + [""]


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


def anchor_kl_section():
    """``anchor_kl.json`` of :mod:`bench_anchor_kl`: one row per device kind."""
    data = load("anchor_kl.json") or {}
    lines = ["## RetinaNet response term: fused vs composite binary KL (`bench_anchor_kl.py`)", ""]
    if not data:
        return lines + ["No results yet.", ""]
    header = ["device", "logits", "fused (s)", "composite (s)", "speed-up", "loss rel. diff", "grad max diff", "date"]
    lines += table_head(header)
    for r in data.values():
        t = r["fwd_bwd_s"]
        lines.append("| " + " | ".join(map(str, [
            f"{r['hardware']} ({r['device']})", " x ".join(map(str, r["shape"])), f"{t['fused']:.3f}",
            f"{t['composite']:.3f}", f"{r['speedup']:.1f}x", f"{r['max_rel_loss_diff']:.1e}",
            f"{r['max_abs_grad_diff']:.1e}", r["date"],
        ])) + " |")
    return lines + ["", "Forward + backward of `sum(w * KL)`, median of interleaved runs.", ""]


COMMANDS = """## Reproducing

```bash
make bootstrap
bash benchmarks/quality_cpu.sh faster_rcnn          # one command per quality table:
bash benchmarks/quality_cpu.sh faster_rcnn-tests    #   the list is at the head of quality_cpu.sh
.venv/bin/python benchmarks/probe_global.py --detector faster_rcnn --runs student_s0 global_s0 ...
.venv/bin/python benchmarks/probe_feature.py --detector faster_rcnn --runs feature_s0 gkd_s0 ...
.venv/bin/python benchmarks/probe_feature.py --detector faster_rcnn --output output/replica/shapes \\
    --dataset shapes --runs 'feature~ft1200_s0' 'gkd~ft1200_s0'   # the replica's runs
.venv/bin/python benchmarks/probe_gradients.py --detector faster_rcnn --batches 32
.venv/bin/python benchmarks/probe_robust.py --detector faster_rcnn --runs student-pretrained
.venv/bin/python benchmarks/bench_cost.py            # --device cuda on a GPU; --scale coco
.venv/bin/python benchmarks/bench_anchor_kl.py       # --device cuda on a GPU
.venv/bin/python benchmarks/bench_pgm.py             # --device cuda on a GPU
.venv/bin/python benchmarks/bench_refresh.py --detector faster_rcnn
.venv/bin/python benchmarks/bench_cost.py --scale coco --full-only   # cost_coco.json
.venv/bin/python benchmarks/bench_refresh_coco.py    # the refresh at COCO scale
.venv/bin/python benchmarks/replica.py --detector faster_rcnn --dataset synth --seeds 0 1 2 \\
    --rows student-finetune gkd response response+global   # the paper's regime (replica v2)
.venv/bin/python benchmarks/loss_scales.py --scale coco # loss scales with the defaults
.venv/bin/python benchmarks/report.py                # this file
```
"""


def main():
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/report.py` from the raw figures in `benchmarks/results/`.",
        "",
    ]
    notes = os.path.join(ROOT, "benchmarks", "NOTES.md")
    if os.path.isfile(notes):
        lines += open(notes).read().splitlines() + [""]
    lines += quality_section(load("quality.json"))
    longer = load("quality_teacher3600.json")
    if longer:
        lines += quality_section(
            longer, "## Quality with a teacher trained 3x longer (3600 iterations; students as above)", plot=False
        )
    lines += side_by_side_section(load("quality_finetune.json"))
    lines += finetune_section(load("quality_finetune.json"))
    lines += loss_scales_section(load("loss_scales.json"))
    lines += data_probe_section()
    lines += robust_probe_section()
    lines += probe_sections()
    lines += gradient_probe_section()
    lines += speed_section(load("speed.json"))
    lines += cost_coco_section()
    lines += refresh_coco_section()
    lines += anchor_kl_section()
    lines += pgm_section()
    lines += refresh_section()
    lines += COMMANDS.splitlines()
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
