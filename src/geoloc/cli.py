"""`geoloc <command>`: one entry point per workflow step, so any rule can be run by hand.

Each command lives in its own module, which provides `add_arguments(parser)` and
`run(args) -> int | None`; this file only dispatches and turns `GeolocError` into a
one-line message and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from geoloc import __version__
from geoloc.errors import GeolocError

# command name -> (module, one-line help)
COMMANDS = {
    "synth": ("geoloc.data.synthetic.write", "generate the synthetic city dataset"),
    "cache-images": ("geoloc.data.cache_images", "decode the training images once into the image cache"),
    "train": ("geoloc.train.trainer", "train one CosPlace model"),
    "evaluate": ("geoloc.evaluate.command", "compute recalls of a model (or its untrained baseline) on test sets"),
    "fetch-weights": ("geoloc.model.weights", "download pretrained weights and check their sha256"),
    "aggregate": ("geoloc.report.aggregate", "collect per-run results into one recalls table"),
    "report": ("geoloc.report.render", "render the HTML study report"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (torch takes seconds to import)."""
    parser = argparse.ArgumentParser(prog="geoloc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"geoloc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._module.run(args) or 0)
    except GeolocError as exc:
        print(f"geoloc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
