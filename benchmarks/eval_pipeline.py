"""Descriptor extraction efficiency: `compute_descriptors` against its compute bound, side by side.

For each backbone, a randomly initialised model as `geoloc evaluate` loads it, and the
database + query images of a synthetic test set. Rounds alternate: the compute-only forward
passes (batches already on the device, eval mode, inference mode, the run's autocast;
geoloc.cost.inference_latency_ms, whose median per batch gives the rate), then
`geoloc.evaluate.compute_descriptors` over the images (real DataLoader, decoding, transfer,
forward, normalisation, copy back). efficiency = pipeline images/s / compute-only images/s;
`cpu_efficiency` is the same ratio in this process's CPU time, robust to a shared machine's
load, where this process does all the work (--num-workers 0, CPU). Medians over the rounds
after the first (it starts the loader and warms caches), with the wall ratio's range.

    python benchmarks/eval_pipeline.py                         # CPU, demo settings (64 px)
    python benchmarks/eval_pipeline.py --device cuda --precision amp --image-size 512 \\
        --source-pixels 512 --num-workers 8
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import (DEMO_BACKBONES, add_common_arguments, machine, print_table, settings_of, setup,
                    synthetic_city, write_json)

from geoloc.data.datasets import TestSet
from geoloc.evaluate.descriptors import compute_descriptors
from geoloc.model.cost import inference_latency_ms
from geoloc.model.network import build_model

COLUMNS = ["backbone", "images", "compute_img_s", "pipeline_img_s", "efficiency", "efficiency_range",
           "cpu_efficiency", "first_round_efficiency"]
WARMUP = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, image_size=64, batch_size=64, backbones=DEMO_BACKBONES,
                         out_name="eval_pipeline.json")
    parser.add_argument("--city", choices=("tiny", "demo"), default="demo")
    parser.add_argument("--test-set", default="sf_xs/test", help="folder under the city")
    parser.add_argument("--source-pixels", type=int, default=None,
                        help="read copies of the city's images at this size (512: SF-XS-like JPEGs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0, help="loader processes (config/demo.yaml: 0)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = setup(args)
    test_set = TestSet(synthetic_city(args.data_root, args.city, pixels=args.source_pixels) / args.test_set)
    paths = test_set.database_paths + test_set.queries_paths
    batches = -(-len(paths) // args.batch_size)
    rows = []
    for backbone in args.backbones:
        model = build_model(backbone).to(device)
        rounds = []
        for _ in range(args.rounds):
            cpu_start = time.process_time()
            latency_ms = inference_latency_ms(model, args.image_size, device, args.precision,
                                              batch_size=args.batch_size, repeats=batches, warmup=WARMUP)
            compute_cpu = (time.process_time() - cpu_start) / (batches + WARMUP) / args.batch_size
            cpu_start, start = time.process_time(), time.perf_counter()
            compute_descriptors(model, paths, image_size=args.image_size, batch_size=args.batch_size,
                                device=device, precision=args.precision, num_workers=args.num_workers)
            seconds, pipeline_cpu = time.perf_counter() - start, (time.process_time() - cpu_start) / len(paths)
            compute, pipeline = 1000.0 * args.batch_size / latency_ms, len(paths) / seconds
            rounds.append({"compute_img_s": compute, "pipeline_img_s": pipeline, "efficiency": pipeline / compute})
            if args.num_workers == 0 and device.type == "cpu":  # this process does all the work
                rounds[-1]["cpu_efficiency"] = compute_cpu / pipeline_cpu
        counted = rounds[1:] or rounds
        rows.append({"backbone": backbone, "images": len(paths), "cpu_efficiency": None,
                     **{key: statistics.median(r[key] for r in counted) for key in rounds[0]},
                     "efficiency_range": [min(r["efficiency"] for r in counted),
                                          max(r["efficiency"] for r in counted)],
                     "first_round_efficiency": rounds[0]["efficiency"], "rounds": rounds})
        print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_json(args.out, {"benchmark": "eval_pipeline", "machine": machine(device),
                          "settings": settings_of(args), "results": rows})


if __name__ == "__main__":
    main()
