"""A stand-in `geoloc` for workflow tests: records each call and writes what the command would.

The tests put it first on PATH (tests/support/workflow.py: fake_geoloc_env) so that a workflow
runs in seconds and shows exactly what reached each command. Each call appends one JSON line,
{"args": [...], "env": {the SLURM_* variables and PYTHONPATH}}, to $FAKE_GEOLOC_CALLS. It writes the outputs
the rules expect: train (model.pt, train.json; rank 0 only), evaluate (a recall CSV and a
queries CSV per --test-set, and --summary-out for a baseline), fetch-weights, synth, aggregate
and report (with --conclusions-out); cache-images writes nothing (the rule writes its marker).

$FAKE_GEOLOC_CITY: a dataset folder `synth` copies to its output.
$FAKE_GEOLOC_TRAIN_EXIT: JSON {run name: exit code}; that run's training exits with it when it
finds no checkpoint, leaving one, as a training stopped at its time limit (3) or given bad input
(2) would; run again, it resumes and finishes.
$FAKE_GEOLOC_SIGNALS: a folder; `train` writes `ready` there, waits up to 60 s for SIGUSR1 as the
real trainer handles it, writes `checkpointed` and exits 3.
"""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

args = sys.argv[1:]
command = args[0]
slurm = {name: value for name, value in os.environ.items() if name.startswith("SLURM_") or name == "PYTHONPATH"}
with open(os.environ["FAKE_GEOLOC_CALLS"], "a", encoding="utf-8") as calls:
    calls.write(json.dumps({"args": args, "env": slurm}) + "\n")


def value(flag: str) -> str:
    return args[args.index(flag) + 1]


def values(flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def wait_for_usr1(folder: Path) -> None:
    received = []
    signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
    (folder / "ready").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / "checkpointed").write_text("yes" if received else "no signal")
    sys.exit(3)


if command == "train":
    if os.environ.get("FAKE_GEOLOC_SIGNALS"):
        wait_for_usr1(Path(os.environ["FAKE_GEOLOC_SIGNALS"]))
    checkpoint = Path(value("--checkpoint-dir"), "fake-checkpoint")
    exit_code = json.loads(os.environ.get("FAKE_GEOLOC_TRAIN_EXIT", "{}")).get(value("--run-name"))
    if exit_code is not None and not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(json.dumps(slurm))
        print(f"geoloc train: error: exit {exit_code} as asked", file=sys.stderr)
        sys.exit(exit_code)
    if os.environ.get("SLURM_PROCID", "0") == "0":  # rank 0 alone writes the outputs, as the trainer does
        out = Path(value("--out-dir"))
        (out / "model.pt").write_text("model")
        (out / "train.json").write_text("{}")
elif command == "evaluate":
    out = Path(value("--out-dir"))
    out.mkdir(parents=True, exist_ok=True)
    for pair in values("--test-set"):
        name = pair.split("=", 1)[0]
        (out / f"{name}.csv").write_text("recalls")
        (out / f"{name}.queries.csv").write_text("queries")
    if "--summary-out" in args:
        Path(value("--summary-out")).write_text("{}")
elif command == "fetch-weights":
    Path(value("--out")).write_bytes(b"weights")
elif command == "synth":
    shutil.copytree(os.environ["FAKE_GEOLOC_CITY"], args[1])
elif command == "report":
    Path(value("--out")).write_text("report")
    Path(value("--conclusions-out")).write_text("The first conclusion.\nThe second.\n")
elif command == "aggregate":
    Path(value("--out")).write_text("aggregate")
# cache-images: nothing to write (the workflow writes the marker)
