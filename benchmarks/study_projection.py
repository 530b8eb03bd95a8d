"""Projected GPU-hours of the study (config/config.yaml's grid) from measured rates.

Per run: training = epochs x iterations_per_epoch x batch_size / the training pipeline's
images/s for its backbone and precision (train_pipeline.py's JSON; the image-cache rows where
measured, as the workflow trains with the cache); validation = one pass over SF-XS val
(8,015 + 7,993 images) per epoch; its evaluation = SF-XS test (27,191 + 1,000) and Tokyo-XS
with Tokyo-Night (one 12,771-image database, 315 + 105 queries), at the descriptor rate of
eval_pipeline.py's JSON. Start-up, checkpoints and queue waits are not counted.

    python benchmarks/study_projection.py --train OUT/train_pipeline_cuda.json \\
        --train OUT/train_pipeline_fp32_cuda.json --eval OUT/eval_pipeline_cuda.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from common import BENCHMARKS, OUT, write_json

from geoloc.grid import expand_grid
from geoloc.train.settings import TrainSettings

VALIDATION_IMAGES = 8_015 + 7_993
TEST_IMAGES = 27_191 + 1_000 + 12_771 + 315 + 105


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=BENCHMARKS.parent / "config" / "config.yaml")
    parser.add_argument("--train", type=Path, action="append", required=True, help="train_pipeline JSON (repeatable)")
    parser.add_argument("--eval", type=Path, required=True, help="eval_pipeline JSON")
    parser.add_argument("--out", type=Path, default=OUT / "study_projection.json")
    return parser.parse_args()


def training_rates(paths: list[Path]) -> dict[tuple[str, str], float]:
    """(backbone, precision) -> pipeline images/s, the image-cache figure where there is one."""
    rates: dict[tuple[str, str], float] = {}
    for path in paths:
        content = json.loads(path.read_text())
        precision = content["settings"]["precision"]
        for row in sorted(content["results"], key=lambda r: r["loader"] == "cache"):
            rates[(row["backbone"], precision)] = row["pipeline_img_s"]
    return rates


def main() -> None:
    args = parse_args()
    config = yaml.safe_load(args.config.read_text())
    runs = expand_grid(config["grid"], config.get("training") or {})
    train_rate = training_rates(args.train)
    eval_rate = {row["backbone"]: row["pipeline_img_s"] for row in json.loads(args.eval.read_text())["results"]}
    defaults = TrainSettings()
    rows, total = [], 0.0
    for run in runs.values():
        settings = {
            key: run.training.get(key, getattr(defaults, key))
            for key in ("epochs", "iterations_per_epoch", "batch_size")
        }
        rate = train_rate.get((run.backbone, run.precision))
        if rate is None or run.backbone not in eval_rate:
            rows.append({"run": run.name, "hours": None, "missing": "no measured rate"})
            continue
        train_s = settings["epochs"] * settings["iterations_per_epoch"] * settings["batch_size"] / rate
        val_s = settings["epochs"] * VALIDATION_IMAGES / eval_rate[run.backbone]
        test_s = TEST_IMAGES / eval_rate[run.backbone]
        hours = (train_s + val_s + test_s) / 3600
        total += hours
        rows.append(
            {
                "run": run.name,
                "train_hours": train_s / 3600,
                "validation_hours": val_s / 3600,
                "evaluation_hours": test_s / 3600,
                "hours": hours,
            }
        )
    for row in rows:
        print(f"{row['run']:45} " + (f"{row['hours']:6.2f} h" if row["hours"] is not None else row["missing"]))
    measured = sum(row["hours"] is not None for row in rows)
    label = f"study ({len(rows)} runs)" if measured == len(rows) else f"the {measured} of {len(rows)} runs measured"
    print(f"{label:45} {total:6.2f} GPU-hours")
    write_json(
        args.out, {"benchmark": "study_projection", "runs": rows, "total_gpu_hours": total, "runs_measured": measured}
    )


if __name__ == "__main__":
    main()
