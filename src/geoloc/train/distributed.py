"""One training run on several processes: DistributedDataParallel, one process (rank) per GPU.

A rank learns its place from its launcher: torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID; the
rendezvous is the step's first node, on a port derived from the job id), or `geoloc train
--nproc N`, which starts N local ranks itself (`launch_local`). NCCL on CUDA, gloo on CPU.

The science does not change with the number of ranks: every rank draws the same global batch
and takes its slice (`Ranks.part`), the loss is weighted so that DDP's gradient average is the
gradient of the global batch's mean loss, BatchNorm uses global-batch statistics
(geoloc.train.batchnorm), and model and classifier are both DDP modules, so their optimizers
see the same gradients on every rank. Rank 0 alone validates and writes.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from geoloc.errors import GeolocError

log = logging.getLogger(__name__)

# A rank waits this long for the others (rank 0 validating, writing a checkpoint) before
# the run fails; a dead rank is found sooner by its launcher, which stops the others.
_TIMEOUT = datetime.timedelta(minutes=30)
# After one rank has failed, how long the others get to finish (a stop: their checkpoint).
_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run; the default is the single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, batch_size: int) -> tuple[int, int]:
        """This rank's slice (start, stop) of a global batch of `batch_size`."""
        return self.rank * batch_size // self.world, (self.rank + 1) * batch_size // self.world

    def device(self, device: torch.device) -> torch.device:
        """The GPU of this rank: its local index, or the only one SLURM left it (--gpus-per-task)."""
        if device.type != "cuda":
            return device
        index = self.local_rank if torch.cuda.device_count() > 1 else 0
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` as DistributedDataParallel (gradients averaged over the ranks), or itself."""
        if self.world == 1:
            return module
        # BatchNorm buffers are equal on every rank already (global statistics): no broadcast
        # before each forward.
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` over the ranks, in place (nothing to do alone)."""
        if self.world > 1:
            dist.all_reduce(tensor)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def ranks_from_environment() -> tuple[Ranks, str, int] | None:
    """(ranks, rendezvous address, port) when a launcher started this process as one rank."""
    env = os.environ
    if env.get("WORLD_SIZE") and env.get("RANK"):  # torchrun, or launch_local
        ranks = Ranks(_number("RANK"), _number("WORLD_SIZE"), _number("LOCAL_RANK", "0"))
        address, port = env.get("MASTER_ADDR", "127.0.0.1"), _number("MASTER_PORT", "29500")
    elif env.get("SLURM_STEP_NUM_TASKS", "1") != "1" and env.get("SLURM_PROCID"):  # srun's tasks
        ranks = Ranks(_number("SLURM_PROCID"), _number("SLURM_STEP_NUM_TASKS"), _number("SLURM_LOCALID", "0"))
        address = env.get("MASTER_ADDR") or _first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_NODELIST"])
        # One port per job, so that two jobs sharing a node do not meet.
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else 20000 + _number("SLURM_JOB_ID") % 20000
    else:
        return None
    if ranks.world < 1 or not 0 <= ranks.rank < ranks.world:
        raise GeolocError(
            f"rank {ranks.rank} of world size {ranks.world} from the launcher's environment is not a valid rank"
        )
    return ranks, address, port


def start(ranks: Ranks, address: str, port: int, device: torch.device) -> Ranks:
    """Join the run's process group (NCCL on CUDA, gloo on CPU)."""
    if ranks.world == 1:
        return ranks
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        ranks.device(device)  # NCCL binds to the current device
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world, timeout=_TIMEOUT)
    log.info("rank %d of %d (%s, rendezvous %s:%d)", ranks.rank, ranks.world, backend, address, port)
    return ranks


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch_local(nproc: int, argv: list[str], threads: int) -> int:
    """Run `geoloc <argv>` as `nproc` ranks on this machine; returns the run's exit code.

    Each rank gets `threads` CPU threads. Stop signals are passed on to every rank (they
    checkpoint together). When one rank fails, the others get _GRACE_SECONDS to finish and
    are then killed: the first failure's exit code and last line are the run's.
    """
    port = _free_port()
    ranks = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        ranks.append(subprocess.Popen([sys.executable, "-m", "geoloc.cli", *argv, "--threads", str(threads)], env=env))

    def forward(signum, _frame) -> None:
        for process in ranks:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        first_failure, deadline = None, None
        while any(process.poll() is None for process in ranks):
            if first_failure is None:
                first_failure = next((p for p in ranks if p.poll() not in (None, 0)), None)
                if first_failure is not None:
                    deadline = time.monotonic() + _GRACE_SECONDS
            elif time.monotonic() > deadline:
                for process in ranks:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            time.sleep(0.05)
        first_failure = first_failure or next((p for p in ranks if p.returncode != 0), None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if first_failure is None else first_failure.returncode


def strip_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE` (the launcher's own options)."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            kept.append(word)
    return kept


def _number(name: str, default: str | None = None) -> int:
    value = os.environ.get(name, default)
    if value is None or not value.isdigit():
        raise GeolocError(f"environment variable {name}={value!r} is not a number (set by the launcher)")
    return int(value)


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-04,07]" -> "gpu03"), as scontrol expands it."""
    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise GeolocError(
            f"cannot find the first node of SLURM_NODELIST={nodelist!r} for the rendezvous "
            f"(scontrol show hostnames: {exc}); set MASTER_ADDR"
        ) from exc
    return hosts[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
