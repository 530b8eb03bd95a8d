"""Aggregator cost beside GeM: parameters, GFLOPs at 320 and 512 px, images/s (ratios to GeM, same run).

Each aggregator runs on the last feature map of a ResNet-18 (512 channels) and of a ResNet-50
(2048 channels) for square images of 320 and 512 px (stride 32: 10x10 and 16x16 maps), with
its reference defaults (geoloc.model.aggregators; gem and netvlad end in a linear layer to
--fc-output-dim). GFLOPs are the head's alone, by torch's FLOP counter (2 per multiply-add);
images/s is the head's forward (eval mode) on a batch of feature maps already computed, so the
ratio to GeM is the head's own cost, not diluted by the backbone's.

    python benchmarks/aggregators.py                        # CPU, 1 thread
    python benchmarks/aggregators.py --network              # GeM's whole network (ResNet-18, 320 px) images/s

`--network` times today's whole GeM network; run it with PYTHONPATH pointing at another
checkout to compare GeM's speed before and after a change on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

FEATURES = {"resnet18": 512, "resnet50": 2048}
SIZES = (320, 512)
STRIDE = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes (the median counts)")
    parser.add_argument("--fc-output-dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--network", action="store_true", help="time GeM's whole network instead")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    return parser.parse_args()


def median_seconds(function, repeats: int, device: torch.device) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def head_row(name: str, backbone: str, size: int, args: argparse.Namespace, device: torch.device) -> dict:
    from geoloc.model.aggregators.layers import build_aggregator, resolve_hyperparameters

    side = size // STRIDE
    params = resolve_hyperparameters(
        name, FEATURES[backbone], fc_output_dim=args.fc_output_dim, feature_hw=(side, side), vit=False
    )
    head = build_aggregator(name, params).to(device).eval()
    maps = torch.rand(args.batch_size, FEATURES[backbone], side, side, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(maps[:1])
    with torch.no_grad():
        seconds = median_seconds(lambda: head(maps), args.repeats, device)
    return {
        "aggregator": name,
        "backbone": backbone,
        "image_size": size,
        "descriptor_dim": head.out_dim,
        "params_m": sum(p.numel() for p in head.parameters()) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
        "images_per_second": args.batch_size / seconds,
    }


def network_row(args: argparse.Namespace, device: torch.device) -> dict:
    from geoloc.model.network import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", args.fc_output_dim).to(device).eval()
    images = torch.rand(args.batch_size, 3, 320, 320, device=device)
    with torch.no_grad():
        seconds = median_seconds(lambda: model(images), args.repeats, device)
    return {"network": "resnet18 + gem", "image_size": 320, "images_per_second": args.batch_size / seconds}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.network:
        rows = [network_row(args, device)]
    else:
        from geoloc.model.aggregators import AGGREGATORS  # here: --network also runs on checkouts without it

        rows = [
            head_row(name, backbone, size, args, device)
            for backbone in FEATURES
            for size in SIZES
            for name in AGGREGATORS
        ]
        gem = {(r["backbone"], r["image_size"]): r for r in rows if r["aggregator"] == "gem"}
        for row in rows:
            base = gem[(row["backbone"], row["image_size"])]
            row["gflops_vs_gem"] = row["gflops"] / base["gflops"]
            row["speed_vs_gem"] = row["images_per_second"] / base["images_per_second"]
    for row in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.out is not None:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
