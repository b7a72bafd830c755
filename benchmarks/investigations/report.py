#!/usr/bin/env python
"""Write ``benchmarks/investigations/RESULTS.md`` (and ``results/quality_ap.png`` here): the tables
of the records in ``benchmarks/investigations/results``.

    python benchmarks/investigations/report.py

Reads ``quality.json`` and ``quality_teacher3600.json`` (records of :mod:`quality`, the from-scratch
replica), the ``probe_*.json`` of :mod:`probe_global`, :mod:`probe_feature`, :mod:`probe_data`,
:mod:`probe_robust` and :mod:`probe_gradients`, and ``anchor_kl.json`` (:mod:`bench_anchor_kl`).
"""
import collections
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import INVESTIGATION_RESULTS as RESULTS, METRICS, ROOT, load_results, mean_spread, table_head, write_report  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "investigations", "RESULTS.md")


def quality_section(records, title="## Quality (replica of Tables 1, 3, 4, 6)", plot=True):
    lines = [title, ""]
    if not records:
        return lines + ["No `quality.json` yet: run `benchmarks/investigations/quality.py` (see its docstring).", ""]
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


def data_probe_section():
    """probe_data.py: can the demo teacher learn the classes of the shapes data?"""
    rows = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "probe_data_*.json"))):
        r = json.load(open(path))
        rows += [dict(p, detector=r["detector"]) for p in r.get("previous", [])] + [r]
    if not rows:
        return []
    lines = ["## The shapes data: does the demo teacher learn its classes? (`probe_data.py`)", "",
             "Targets of the replica's data: teacher AP >= 35, nearest-class-mean (NCM) accuracy of its pooled "
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
               f"vectors and by {len(grid_met)} with the flattened grids (`benchmarks/NOTES.md`, 'The data').")
    return lines + ["", verdict, ""]


def robust_probe_section():
    """probe_robust.py: do the robust weights (Eq. 8) single out the noisy instances?"""
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
            f"### What the global term sees, {det} (`probe_global.py`)",
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
                f"### Feature term: how much of the teacher's maps the student holds, {det} (`probe_feature.py`)",
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
            f"### Feature term: error a ReLU adapter cannot remove, {det} (`probe_feature.py`)",
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
    """probe_gradients.py: which way does each term pull the student at the start of fine-tuning?"""
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


def anchor_kl_section():
    """``anchor_kl.json`` of :mod:`bench_anchor_kl`: one row per device kind."""
    data = load_results("anchor_kl.json", RESULTS) or {}
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
bash benchmarks/investigations/quality_cpu.sh faster_rcnn   # one command per quality table (list: head of the script)
.venv/bin/python benchmarks/investigations/probe_global.py --detector faster_rcnn --runs student_s0 global_s0
.venv/bin/python benchmarks/investigations/probe_feature.py --detector faster_rcnn --output output/replica/shapes \\
    --dataset shapes --runs 'feature~ft1200_s0' 'gkd~ft1200_s0'
.venv/bin/python benchmarks/investigations/probe_data.py --detector faster_rcnn
.venv/bin/python benchmarks/investigations/probe_gradients.py --detector faster_rcnn --batches 32
.venv/bin/python benchmarks/investigations/probe_robust.py --detector faster_rcnn --runs student-pretrained
.venv/bin/python benchmarks/investigations/bench_anchor_kl.py   # --device cuda on a GPU
.venv/bin/python benchmarks/investigations/report.py           # this file
```
"""


def main():
    lines = ["# Investigation tables", "",
             "Generated by `benchmarks/investigations/report.py` from the records in "
             "`benchmarks/investigations/results/`; what they show is in `benchmarks/NOTES.md`.", ""]
    lines += quality_section(load_results("quality.json", RESULTS))
    longer = load_results("quality_teacher3600.json", RESULTS)
    if longer:
        lines += quality_section(
            longer, "## Quality with a teacher trained 3x longer (3600 iterations; students as above)", plot=False)
    lines += data_probe_section()
    lines += robust_probe_section()
    lines += probe_sections()
    lines += gradient_probe_section()
    lines += anchor_kl_section()
    lines += COMMANDS.splitlines()
    write_report(OUT, lines)


if __name__ == "__main__":
    main()
