"""`make demo` from an empty results/demo/, timed, and what its report must show.

Runs `make demo` (its set-up too when .venv/ is missing: the promised 10 minutes include it) and
records its wall time, the CPU time of everything it ran, the machine and its load before and
after. Then checks the demo's promises (README.md) on the report's own statistics
(geoloc.report: the bootstrap over seeds and queries, the "did not learn" rule):
- every fp32 run beats its untrained baseline on synthetic SF-XS R@1 by at least 10 points, and
  each fp32 configuration's gain (its seeds together) has a 95% interval above zero;
- every amp configuration learnt, or the report says why it did not (amp on a CPU without native
  bf16 trains several times slower than fp32, so the demo's amp run is short);
- the grid sweeps a training setting over two or more values, and repeats a configuration with
  two or more seeds (the report's sweep plot and seed spread).
Exits 1 when a promise does not hold or the demo took more than --limit-minutes.

    python benchmarks/demo.py            # refuses to run over an existing results/demo/
    python benchmarks/demo.py --clean    # deletes results/demo/ first
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import BENCHMARKS, OUT, write_json

from geoloc.report.bootstrap import interval
from geoloc.report.config_check import read_config
from geoloc.report.study import load_study

ROOT = BENCHMARKS.parent
RESULTS = ROOT / "results" / "demo"
MIN_GAIN = 10.0  # points of SF-XS R@1 over the untrained baseline, for each fp32 run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", action="store_true", help="delete results/demo/ before the run")
    parser.add_argument("--limit-minutes", type=float, default=10.0, help="the README's promise")
    parser.add_argument("--out", type=Path, default=OUT / "demo.json")
    return parser.parse_args()


def run_demo() -> dict:
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(["make", "-C", str(ROOT), "demo"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"make demo failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(children.ru_utime + children.ru_stime, 1),
        "host_cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "last_lines": done.stdout.strip().splitlines()[-2:],
    }


def promises() -> dict:
    """The demo report's figures behind each promise."""
    _, plan = read_config(RESULTS / "config.yaml")
    study = load_study(
        RESULTS / "recalls.csv",
        RESULTS / "runs",
        RESULTS / "baselines",
        plan.config.get("reference"),
        list(plan.runs) + list(plan.baselines),
    )
    variants = {}
    for variant in study.variants:
        baseline = study.baseline_of(variant)
        trained, untrained = study.cell(variant, "sf_xs"), study.cell(baseline, "sf_xs")
        low, high = interval(study.recall_samples(variant, "sf_xs") - study.recall_samples(baseline, "sf_xs"))
        per_run = {run: round(r1 - untrained.recalls[1], 1) for run, r1 in zip(trained.runs, trained.run_recalls[1])}
        learning = study.learning(variant)
        holds = (
            min(per_run.values()) >= MIN_GAIN and low > 0
            if variant.precision == "fp32"
            else learning.learnt or bool(learning.reasons)
        )
        variants[variant.name] = {
            "precision": variant.precision,
            "sf_xs_gain": round(trained.recalls[1] - untrained.recalls[1], 1),
            "sf_xs_ci": [round(low, 1), round(high, 1)],
            "sf_xs_gain_per_run": per_run,
            "learnt": learning.learnt,
            "reasons": learning.reasons,
            "holds": holds,
        }
    swept: dict[str, set] = {}
    for run in plan.runs.values():
        for key in run.swept:
            swept.setdefault(key, set()).add(run.training[key])
    return {
        "variants": variants,
        "swept": {key: sorted(values) for key, values in swept.items() if len(values) > 1},
        "seeds": {v.name: len(study.runs[v]) for v in study.variants},
    }


def main() -> None:
    args = parse_args()
    if RESULTS.exists():
        if not args.clean:
            sys.exit(f"{RESULTS} exists: the demo is timed from an empty folder (pass --clean to delete it)")
        shutil.rmtree(RESULTS)
    timing = run_demo()
    found = promises()
    failed = [
        f"{name}: {v['sf_xs_gain_per_run']} points over its baseline, CI {v['sf_xs_ci']}"
        + ("" if v["precision"] == "fp32" else ", not labelled 'did not learn' with a reason")
        for name, v in found["variants"].items()
        if not v["holds"]
    ]
    if not found["swept"]:
        failed.append("no training setting swept over two or more values")
    if max(found["seeds"].values(), default=0) < 2:
        failed.append(f"no configuration with two or more seeds: {found['seeds']}")
    if timing["wall_seconds"] > 60 * args.limit_minutes:
        failed.append(f"took {timing['wall_seconds'] / 60:.1f} min, over {args.limit_minutes} min")
    write_json(args.out, {"benchmark": "demo", **timing, **found, "failed": failed})
    minutes, seconds = divmod(round(timing["wall_seconds"]), 60)
    print(
        f"make demo: {minutes} min {seconds} s wall, {timing['cpu_seconds'] / 60:.1f} min CPU, "
        f"{timing['host_cpus']} CPUs, load before {timing['load_average_before']}"
    )
    for name, v in found["variants"].items():
        print(
            f"  {name}, {found['seeds'][name]} seed(s): {v['sf_xs_gain']:+} points of SF-XS R@1 over its "
            f"baseline, 95% CI {v['sf_xs_ci']}, per run {v['sf_xs_gain_per_run']}"
            + ("" if v["learnt"] else f"; did not learn: {'; '.join(v['reasons']) or 'no reason given'}")
        )
    print(f"  swept: {found['swept']}")
    if failed:
        sys.exit("demo promises broken:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
