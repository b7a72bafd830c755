#!/usr/bin/env python
"""The demo's gain on several seeds: ``tools/demo.py --seed S`` from nothing (a fresh working
folder: data generation included), timed from the start of the process to its exit.

    OMP_NUM_THREADS=1 python benchmarks/demo_gain.py --seeds 0 1 2     # about 15 min a seed on 2 cores

Each seed's run is one record of ``benchmarks/results/demo.json`` (a list; a seed run again replaces
its record): ``seed``, ``gain_ap`` (AP of the student fine-tuned with global knowledge minus AP of
the same student fine-tuned alone), ``seconds`` (wall clock of the whole demo process),
``teacher_ap``, every stage's AP, ``detector``, ``args`` (extra arguments of tools/demo.py),
``date`` and ``machine``. Run it on an idle machine: the demo uses every core.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, ROOT, machine, save  # noqa: E402

DEMO = os.path.join(ROOT, "tools", "demo.py")
ALONE, DISTILLED = "student fine-tuned alone", "student + global knowledge"
#: a record replaces the one of the same seed, detector and extra arguments
RECORD_KEY = ("seed", "detector", "args")


def run_seed(seed, detector, extra, keep=None):
    """``tools/demo.py --seed seed`` in a fresh folder; returns the record of :data:`OUTPUT`.
    ``keep``: copy the demo's results.json and stage logs there."""
    work = tempfile.mkdtemp(prefix=f"demo_s{seed}_")
    try:
        began = time.perf_counter()
        r = subprocess.run([sys.executable, DEMO, "--seed", str(seed), "--detector", detector, *extra], cwd=work)
        seconds = time.perf_counter() - began
        if r.returncode != 0:
            sys.exit(f"tools/demo.py --seed {seed} failed (exit {r.returncode}); its stages' logs are under {work}/output")
        out = os.path.join(work, "output", "demo", detector)
        table = json.load(open(os.path.join(out, "results.json")))
        if keep:
            dest = os.path.join(keep, f"seed{seed}")
            shutil.copytree(out, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pth", "*.pkl"))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "seed": seed, "detector": detector, "args": list(extra),
        "gain_ap": round(table[DISTILLED]["AP"] - table[ALONE]["AP"], 2),
        "seconds": round(seconds, 1),
        "teacher_ap": round(table["teacher"]["AP"], 2),
        "stages_ap": {name: round(row["AP"], 2) for name, row in table.items()},
        "stages_seconds": {name: round(row["seconds"], 1) for name, row in table.items()},
        "machine": {**machine("cpu"), "cpu_count": os.cpu_count()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--detector", default="faster_rcnn")
    p.add_argument("--results", default=os.path.join(RESULTS, "demo.json"))
    p.add_argument("--keep", help="a folder to keep each seed's results.json and stage logs in")
    p.add_argument("demo_args", nargs=argparse.REMAINDER, help="after --: more arguments of tools/demo.py")
    args = p.parse_args(argv)
    extra = args.demo_args[1:] if args.demo_args[:1] == ["--"] else args.demo_args
    for seed in args.seeds:
        record = run_seed(seed, args.detector, extra, args.keep)
        save(record, args.results, key_fields=RECORD_KEY)
        print(f"[demo_gain] seed {seed}: gain {record['gain_ap']:+.2f} AP, teacher {record['teacher_ap']:.1f} AP, "
              f"{record['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
