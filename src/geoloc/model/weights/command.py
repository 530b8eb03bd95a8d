"""`geoloc fetch-weights`: look an entry up in the registries and download its file, checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from geoloc.arguments import integer
from geoloc.model.weights.download import fetch
from geoloc.model.weights.registry import lookup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, required=True, action="append",
                        help="weights registry YAML; repeat it to add a user's registry to the shipped one "
                             "(later files add entries and replace those of the same backbone and pretraining)")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--pretraining", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the weights file goes")
    parser.add_argument("--retries", type=integer(minimum=0), default=3,
                        help="further attempts after a failed download")


def run(args: argparse.Namespace) -> int:
    entry = lookup(args.registry, args.backbone, args.pretraining)
    digest = fetch(entry, args.out, retries=args.retries)
    print(f"{args.out} sha256 {digest}")
    return 0
