"""What `amp` costs on this CPU: training images/s in fp32 and under bf16 autocast, with
contiguous (NCHW) and channels-last tensors, side by side in one process.

On a CPU, `amp` is bf16 autocast. Without native bf16 (no AVX-512 BF16 or AMX), a contiguous
bf16 convolution runs a slow reference kernel; channels-last takes oneDNN's path. The trainer
therefore uses channels-last on a CPU under amp only (geoloc.device.channels_last). The
compute-only step (benchmarks/common.py) is the trainer's own: forward, CosFace, backward,
guarded fused Adam, on a batch already in memory. Each cell is the best of --rounds rounds
of --seconds, the four cells of a backbone measured round-robin, so load shifts hit them alike.

    python benchmarks/cpu_amp.py --backbones resnet18,mobilenet_v3_small
"""

from __future__ import annotations

import argparse
import time

import torch
from common import ComputeOnlyStep, add_common_arguments, machine, print_table, settings_of, setup, write_json

from geoloc.model.network import build_model

CELLS = [(precision, layout) for precision in ("fp32", "amp") for layout in (False, True)]
COLUMNS = ["backbone", "fp32_nchw", "fp32_cl", "amp_nchw", "amp_cl", "amp_cl_vs_nchw", "amp_cl_vs_fp32_nchw"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(
        parser, image_size=64, batch_size=32, backbones=("resnet18", "mobilenet_v3_small"), out_name="cpu_amp.json"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="length of one round of one cell")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.device = "cpu"
    return args


def images_per_second(step: ComputeOnlyStep, seconds: float, batch_size: int) -> float:
    step.step()  # warm-up: oneDNN builds its kernels for the shapes on the first call
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step.step()
        steps += 1
    return steps * batch_size / (time.perf_counter() - start)


def measure(backbone: str, args: argparse.Namespace, device: torch.device) -> dict:
    steps = {}
    for precision, layout in CELLS:
        torch.manual_seed(0)
        model = build_model(backbone).to(device)
        if layout:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        steps[precision, layout] = ComputeOnlyStep(
            model,
            optimizer,
            100,
            batch_size=args.batch_size,
            image_size=args.image_size,
            precision=precision,
            device=device,
            layout_channels_last=layout,
        )
    best = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for cell, step in steps.items():
            best[cell] = max(best[cell], images_per_second(step, args.seconds, args.batch_size))
    row = {"backbone": backbone}
    for (precision, layout), value in best.items():
        row[f"{precision}_{'cl' if layout else 'nchw'}"] = value
    row["amp_cl_vs_nchw"] = row["amp_cl"] / row["amp_nchw"]
    row["amp_cl_vs_fp32_nchw"] = row["amp_cl"] / row["fp32_nchw"]
    return row


def main() -> None:
    args = parse_args()
    device = setup(args)
    rows = [measure(backbone, args, device) for backbone in args.backbones]
    print_table(rows, COLUMNS)
    write_json(
        args.out, {"benchmark": "cpu_amp", "machine": machine(device), "settings": settings_of(args), "results": rows}
    )


if __name__ == "__main__":
    main()
