"""Model cost table: every registered study backbone's parameters, GFLOPs, latency, training speed, memory.

Per backbone (random initialisation, fc_output_dim 512, the study's trainable blocks):
  - params / trainable params,
  - GFLOPs per image at 512 px (the study's size) and at --image-size, by torch's FLOP counter
    (2 FLOPs per multiply-add; geoloc.model.cost),
  - inference latency of one image (median; eval mode, the run's precision),
  - training images/s: the compute-only step (forward + CosFace loss over --classes classes +
    backward + Adam steps on a batch already on the device, as geoloc.train.trainer does them),
  - peak memory of that training: on CUDA the peak allocated by torch (what train.json's
    peak_memory_mb reports); on CPU the peak resident size of a process that measured this
    backbone alone (it includes Python, torch and geoloc: `process_baseline_mb`).

512 px on 2 CPU cores takes tens of minutes, so on CPU the default size is 128 px (batch 8);
on CUDA it is 512 px (batch 32), the study's setting. GFLOPs scale with the pixel count.

    python benchmarks/model_cost.py                                   # CPU: 128 px
    python benchmarks/model_cost.py --device cuda --precision amp     # 512 px
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor

import torch
from common import (
    ComputeOnlyStep,
    add_common_arguments,
    machine,
    print_table,
    settings_of,
    setup,
    synchronize,
    write_json,
)

from geoloc.device import channels_last
from geoloc.model.cost import gflops_per_image, inference_latency_ms
from geoloc.model.network import BACKBONES, build_model, count_parameters

STUDY_SIZE = 512
COLUMNS = ["backbone", "params_m", "trainable_m", "gflops_512", "gflops", "latency_ms", "train_img_s", "peak_memory_mb"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, image_size=0, batch_size=0, backbones=tuple(BACKBONES), out_name="model_cost.json")
    parser.set_defaults(image_size=None, batch_size=None)
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (CPU 3, CUDA 20)")
    parser.add_argument("--classes", type=int, default=5965, help="CosFace classes (SF-XS group 0: about 5,965)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = setup(args)
    cuda = device.type == "cuda"
    args.image_size = args.image_size or (STUDY_SIZE if cuda else 128)
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.steps = args.steps or (20 if cuda else 3)
    rows = []
    for backbone in args.backbones:
        if cuda:
            rows.append(measure(backbone, args, device))
        else:
            # One process per backbone: a process's peak resident size never goes down.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows.append(pool.submit(measure, backbone, args, device).result())
        print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_json(
        args.out,
        {"benchmark": "model_cost", "machine": machine(device), "settings": settings_of(args), "results": rows},
    )


def measure(backbone: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.set_num_threads(args.threads)  # a spawned process starts with torch's default
    baseline_mb = _peak_rss_mb()
    model = build_model(backbone).to(device)
    if channels_last(device, args.precision):  # as geoloc.train.trainer does
        model = model.to(memory_format=torch.channels_last)
    total, trainable = count_parameters(model)
    row = {
        "backbone": backbone,
        "params_m": total / 1e6,
        "trainable_m": trainable / 1e6,
        "gflops_512": gflops_per_image(model, STUDY_SIZE),
        "gflops": gflops_per_image(model, args.image_size),
        "image_size": args.image_size,
        "latency_ms": inference_latency_ms(
            model, args.image_size, device, args.precision, batch_size=1, repeats=20 if device.type == "cuda" else 5
        ),
    }
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step = ComputeOnlyStep(
        model,
        optimizer,
        args.classes,
        batch_size=args.batch_size,
        image_size=args.image_size,
        precision=args.precision,
        device=device,
    )
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step.seconds(2)  # warm-up: allocator, cuDNN's algorithm search
    row["train_img_s"] = args.steps * args.batch_size / step.seconds(args.steps)
    if device.type == "cuda":
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        del model, optimizer, step
        torch.cuda.empty_cache()
    else:
        row["peak_memory_mb"] = _peak_rss_mb()
        row["process_baseline_mb"] = baseline_mb  # Python, torch and geoloc imported, no model yet
    return row


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


if __name__ == "__main__":
    main()
