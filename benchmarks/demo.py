"""`make demo` from an empty results/demo/, timed, and what its report must show.

Runs `make demo` (the venv already installed) and records its wall time, the CPU time of
everything it ran, the machine and its load before and after. Then checks the demo's promises
(README.md) on the report's own statistics (geoloc.report: the same paired bootstrap and Holm
correction as the report's conclusions):
- every trained run beats its untrained baseline on synthetic SF-XS R@1 by at least 10 points,
  significantly;
- at least one difference between two trained configurations is significant;
- the grid has more than one backbone and both precisions.
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

from geoloc.report.conclusions import paired_tests
from geoloc.report.config_check import read_config
from geoloc.report.study import load_study

ROOT = BENCHMARKS.parent
RESULTS = ROOT / "results" / "demo"
MIN_GAIN = 10.0  # points of SF-XS R@1 over the untrained baseline


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
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(children.ru_utime + children.ru_stime, 1),
            "host_cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "last_lines": done.stdout.strip().splitlines()[-2:]}


def promises() -> dict:
    """The demo report's figures behind each promise."""
    _, plan = read_config(RESULTS / "config.yaml")
    study = load_study(RESULTS / "recalls.csv", RESULTS / "runs", RESULTS / "baselines", plan.config["reference"],
                       list(plan.runs) + list(plan.baselines))
    tests = paired_tests(study)
    gains = {}
    for variant in study.variants:
        gain = tests.difference(variant, study.baseline_of(variant), ["sf_xs"])
        gains[variant.name] = {"points": round(gain.value, 1), "ci": [round(gain.low, 1), round(gain.high, 1)],
                               "adjusted_p": gain.adjusted_p, "holds": gain.value >= MIN_GAIN and gain.significant}
    between = [{"a": a.name, "b": b.name, "test_sets": list(test_sets), "points": round(d.value, 1),
                "adjusted_p": d.adjusted_p}
               for a, b, test_sets, d in tests.tested()
               if not a.is_baseline and not b.is_baseline and d.significant]
    return {"gains_over_baseline_sf_xs": gains, "significant_between_trained": between,
            "backbones": sorted({v.backbone for v in study.variants}),
            "precisions": sorted({v.precision for v in study.variants})}


def main() -> None:
    args = parse_args()
    if RESULTS.exists():
        if not args.clean:
            sys.exit(f"{RESULTS} exists: the demo is timed from an empty folder (pass --clean to delete it)")
        shutil.rmtree(RESULTS)
    timing = run_demo()
    found = promises()
    failed = [f"{run}: {gain['points']} points over its baseline, CI {gain['ci']}"
              for run, gain in found["gains_over_baseline_sf_xs"].items() if not gain["holds"]]
    if not found["significant_between_trained"]:
        failed.append("no significant difference between two trained configurations")
    if len(found["backbones"]) < 2 or found["precisions"] != ["amp", "fp32"]:
        failed.append(f"grid: backbones {found['backbones']}, precisions {found['precisions']}")
    if timing["wall_seconds"] > 60 * args.limit_minutes:
        failed.append(f"took {timing['wall_seconds'] / 60:.1f} min, over {args.limit_minutes} min")
    write_json(args.out, {"benchmark": "demo", **timing, **found, "failed": failed})
    minutes, seconds = divmod(round(timing["wall_seconds"]), 60)
    print(f"make demo: {minutes} min {seconds} s wall, {timing['cpu_seconds'] / 60:.1f} min CPU, "
          f"{timing['host_cpus']} CPUs, load before {timing['load_average_before']}")
    for run, gain in found["gains_over_baseline_sf_xs"].items():
        print(f"  {run}: {gain['points']:+} points of SF-XS R@1 over its baseline, 95% CI {gain['ci']}")
    print(f"  significant differences between trained configurations: {len(found['significant_between_trained'])}")
    if failed:
        sys.exit("demo promises broken:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
