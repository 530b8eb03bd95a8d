"""`geoloc fetch-weights`: look an entry up in the registries and download its file, checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from geoloc.arguments import integer
from geoloc.errors import GeolocError
from geoloc.model.weights.download import fetch
from geoloc.model.weights.registry import lookup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        action="append",
        help="weights registry YAML; repeat it to add a user's registry to the shipped one "
        "(later files add entries and replace those of the same backbone and pretraining)",
    )
    parser.add_argument("--backbone")
    parser.add_argument("--pretraining")
    parser.add_argument(
        "--published",
        metavar="NAME",
        help="a released model's file (geoloc.model.published), instead of --registry, --backbone and --pretraining",
    )
    parser.add_argument("--out", type=Path, required=True, help="where the weights file goes")
    parser.add_argument(
        "--retries", type=integer(minimum=0), default=3, help="further attempts after a failed download"
    )


def run(args: argparse.Namespace) -> int:
    if args.published:
        from geoloc.model.published import PUBLISHED  # it imports this package's loaders

        if args.published not in PUBLISHED:
            raise GeolocError(f"--published {args.published}: not a released model ({', '.join(PUBLISHED)})")
        model = PUBLISHED[args.published]
        entry = {"url": model.url, "sha256": model.sha256, "size": model.size, "format": "torchvision"}
    elif args.registry and args.backbone and args.pretraining:
        entry = lookup(args.registry, args.backbone, args.pretraining)
    else:
        raise GeolocError("give --registry, --backbone and --pretraining, or --published")
    digest = fetch(entry, args.out, retries=args.retries)
    print(f"{args.out} sha256 {digest}")
    return 0
