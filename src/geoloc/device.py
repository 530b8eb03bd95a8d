"""The compute device, numeric precision and CPU threads every command runs with.

`auto` takes CUDA when torch sees a device, else the CPU, except inside a SLURM job that was
given GPUs: there a CPU fallback would silently run a GPU job for days, so it is an error
that says why torch cannot use them. `amp` is mixed precision: float16 autocast on CUDA (with
a GradScaler in training, as the study ran it) and bfloat16 on a CPU, where float16 autocast
is not offered.

The thread budget: a command uses the CPUs it was given (`--threads`, else SLURM's
`SLURM_CPUS_PER_TASK` inside a job, else the process's CPU affinity, shared by the ranks of a
distributed run on this node), torch's intra-op threads taking what the loader workers leave,
and each loader worker one thread. torch's default (one thread per visible core, on top of
the workers) oversubscribes a shared machine or a SLURM job, and OpenMP threads that wait for a
busy core make a step several times slower (benchmarks/threads.py).

This module imports torch only inside its functions: the command line sets OpenMP's
environment through it before torch is loaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING

from geoloc.errors import GeolocError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "amp")

# What SLURM sets in a job (or a step) that was given GPUs.
_SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")
# Values that mean "no GPU" (some sites set CUDA_VISIBLE_DEVICES=NoDevFiles in CPU jobs).
_NO_GPU_VALUES = ("", "NoDevFiles", "-1")
# Loader workers and anything they start: one thread each (the budget's main threads do the math).
_SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if problem := slurm_gpus_unusable():
            raise GeolocError(problem)
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise GeolocError(
                f"device cuda was asked for, but torch sees no CUDA device: {_cuda_problem() or 'none is visible'}"
            )
        return torch.device("cuda")
    raise GeolocError(f"unknown device {name!r}: expected auto, cpu or cuda")


def slurm_gpus_unusable() -> str | None:
    """Why this SLURM job's GPUs are unusable to torch, or None outside a job given GPUs."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    given = [
        f"{name}={os.environ[name]}"
        for name in _SLURM_GPU_VARIABLES
        if os.environ.get(name, "").strip() not in _NO_GPU_VALUES
        and not (name == "SLURM_GPUS_ON_NODE" and os.environ[name].strip() == "0")
    ]
    if not given:
        return None
    return (
        f"device auto: this SLURM job was given GPUs ({', '.join(given)}) but torch cannot use them: "
        f"{_cuda_problem() or 'it sees no CUDA device'}; set device: cpu to run on the CPU anyway"
    )


def _cuda_problem() -> str | None:
    """What torch says when it cannot use CUDA: a CPU-only build, or CUDA's own error."""
    import torch

    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build (install a CUDA build of PyTorch in the job's environment)"
        )
    try:
        torch.cuda.init()
    except Exception as exc:  # torch reports driver and device problems as several types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"torch {torch.__version__} (built for CUDA {torch.version.cuda}): {first_line}"
    if torch.cuda.device_count() == 0:
        return f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no visible device"
    return None


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise GeolocError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    import torch

    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision == "amp")


def channels_last(device: torch.device, precision: str) -> bool:
    """Whether convolutions run faster with channels-last tensors on `device` in `precision`.

    On CUDA always (the tensor cores' layout). On a CPU only under amp: a CPU without native
    bf16 computes a contiguous bf16 convolution with a slow reference kernel, and channels-last
    takes oneDNN's path instead (ResNet-18 training at 64 px 3.4x faster, MobileNetV3-Small 2.3x:
    benchmarks/cpu_amp.py), while fp32 convolutions gain nothing from it.
    """
    return device.type == "cuda" or precision == "amp"


# -- CPU threads ----------------------------------------------------------------------------
def prepare_openmp() -> None:
    """OpenMP's environment, set before torch is loaded (it is read once, at load).

    Waiting threads sleep instead of spinning: a thread that spins while its partner's core
    is taken by another process keeps the partner off its own core, and a training step beside
    one busy process gets 3-5 times slower (benchmarks/threads.py). A value the user set wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_budget(requested: int | None = None) -> int:
    """The CPUs this process may use: `requested`, SLURM's per-task CPUs, or its affinity."""
    if requested is not None:
        return requested
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and os.environ.get("SLURM_JOB_ID"):
        if not slurm.isdigit() or int(slurm) < 1:
            raise GeolocError(f"SLURM_CPUS_PER_TASK={slurm!r} is not a positive number of CPUs")
        return int(slurm)
    # torchrun starts LOCAL_WORLD_SIZE processes on this node, each seeing every CPU.
    ranks_here = os.environ.get("LOCAL_WORLD_SIZE", "1")
    ranks_here = int(ranks_here) if ranks_here.isdigit() and int(ranks_here) > 0 else 1
    return max(1, len(os.sched_getaffinity(0)) // ranks_here)


def apply_thread_budget(threads: int, loader_workers: int = 0) -> int:
    """Give torch the CPUs the loader workers leave (at least one); returns its intra-op threads."""
    import torch

    intra = max(1, threads - loader_workers)
    torch.set_num_threads(intra)
    # Inter-op threads only run torch.jit forks, which geoloc does not use. torch refuses a
    # second setting in one process (tests call the command line repeatedly): the first stays.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return intra


def init_loader_worker(_worker_id: int) -> None:
    """`worker_init_fn` of every DataLoader: one thread, and stop signals left to the main process.

    The main process decides how to stop (training checkpoints first) and shuts its workers
    down; a worker killed by the same Ctrl-C or SIGTERM would only turn that into a "worker
    exited unexpectedly" error.
    """
    import torch

    os.environ.update(_SINGLE_THREAD)
    torch.set_num_threads(1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
