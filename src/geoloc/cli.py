"""`geoloc <command>`: one entry point per workflow step, so any rule can be run by hand.

Each command lives in its own module, which provides `add_arguments(parser)` and
`run(args) -> int | None`; this file dispatches, gives the command its thread budget, and
ends every failure with one line `geoloc <command>: error: ...` as the last line of stderr
and a documented exit code:

    2    bad input, configuration or data (GeolocError): a retry cannot fix it
    3    stopped by SIGTERM or SIGUSR1, or by training before its SLURM job's time limit
         (training: after writing a checkpoint): a retry resumes
    130  stopped by Ctrl-C (SIGINT; training: after writing a checkpoint)
    1    an unexpected error, a bug: its traceback is printed above the line
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator

from geoloc import __version__
from geoloc.arguments import integer, number
from geoloc.device import apply_thread_budget, cpu_budget, prepare_openmp
from geoloc.errors import GeolocError, StopRequested

# command name -> (module, one-line help)
COMMANDS = {
    "synth": ("geoloc.data.synthetic.write", "generate the synthetic city dataset"),
    "cache-images": ("geoloc.data.cache_images", "decode the training images once into the image cache"),
    "train": ("geoloc.train.command", "train one CosPlace model"),
    "evaluate": ("geoloc.evaluate.command", "compute recalls of a model (or its untrained baseline) on test sets"),
    "fetch-weights": ("geoloc.model.weights.command", "download pretrained weights and check their sha256"),
    "aggregate": ("geoloc.report.aggregate", "collect per-run results into one recalls table"),
    "report": ("geoloc.report.render", "render the HTML study report"),
}
EXIT_BUG, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_CTRL_C = 1, 2, 3, 130
# The pixel cap of geoloc.data.images (named here too: that module imports torch, which a
# command that decodes no image never pays for).
MAX_PIXELS_VARIABLE = "GEOLOC_MAX_IMAGE_PIXELS"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (torch takes seconds to import)."""
    parser = argparse.ArgumentParser(prog="geoloc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"geoloc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.add_argument(
            "--threads",
            type=integer(minimum=1),
            default=None,
            help="CPUs this command may use (torch's threads plus loader workers); default: "
            "SLURM_CPUS_PER_TASK inside a SLURM job, else the CPUs this process may run on",
        )
        sub_parser.add_argument(
            "--max-image-megapixels",
            type=number(exclusive_minimum=0),
            default=None,
            help="an image larger than this (width x height, read from its header before decoding) is refused; "
            f"default: ${MAX_PIXELS_VARIABLE} (in pixels), else 50",
        )
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    # From the first line on: a signal while the command's module imports torch (seconds) ends
    # with the error line and exit code of any other stop.
    with _stop_signals_raise():
        try:
            prepare_openmp()  # before the command's module loads torch
            args = build_parser(command).parse_args(argv)
            args.argv = argv  # what the command was given: train's --nproc launcher reruns it per rank
            logging.basicConfig(
                level=logging.DEBUG if args.verbose else logging.INFO,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                stream=sys.stderr,
            )
            if args.max_image_megapixels is not None:  # read by every image decoder, loader workers included
                os.environ[MAX_PIXELS_VARIABLE] = str(int(args.max_image_megapixels * 1_000_000))
            apply_thread_budget(cpu_budget(args.threads), getattr(args, "num_workers", 0) or 0)
            return int(args._module.run(args) or 0)
        except GeolocError as exc:
            return _fail(command, str(exc), EXIT_BAD_INPUT)
        except StopRequested as exc:
            return _fail(command, str(exc), EXIT_CTRL_C if exc.signum == signal.SIGINT else EXIT_STOPPED)
        except KeyboardInterrupt:
            return _fail(command, "interrupted by Ctrl-C (SIGINT); nothing was finished, rerun it", EXIT_CTRL_C)
        except Exception as exc:
            traceback.print_exc()
            return _fail(
                command, f"unexpected {type(exc).__name__}: {exc} (a bug: the traceback above says where)", EXIT_BUG
            )


def _fail(command: str, message: str, code: int) -> int:
    # One line, whatever the message holds: the workflow's logs and users read the last one.
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    sys.stderr.flush()
    print(f"geoloc {command}: error: {one_line}", file=sys.stderr, flush=True)
    # Nothing logs after it: libraries (torch) that log from exit handlers would bury the line.
    logging.disable(logging.CRITICAL)
    return code


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGTERM/SIGUSR1 raise StopRequested and Ctrl-C KeyboardInterrupt, in this process only.

    Forked children (loader workers) inherit the handlers and do nothing: the main process
    stops them. Training replaces these handlers with a flag while its loop runs, so that it
    can write a checkpoint first.
    """
    main_pid = os.getpid()

    def handle(signum, _frame) -> None:
        if os.getpid() != main_pid:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        raise StopRequested(f"stopped by signal {signum} ({name}) before it finished; rerun it", signum)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
