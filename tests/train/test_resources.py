"""The CPUs and the device a command takes: thread budget, loader workers, SLURM GPU jobs."""

import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from geoloc import device
from geoloc.cli import COMMANDS, main
from geoloc.device import apply_thread_budget, cpu_budget, init_loader_worker, resolve_device
from geoloc.errors import GeolocError

AFFINITY = len(os.sched_getaffinity(0))


@pytest.fixture
def clean_environment(monkeypatch):
    for name in (
        "SLURM_JOB_ID",
        "SLURM_CPUS_PER_TASK",
        "LOCAL_WORLD_SIZE",
        "SLURM_JOB_GPUS",
        "SLURM_STEP_GPUS",
        "SLURM_GPUS_ON_NODE",
        "CUDA_VISIBLE_DEVICES",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_budget_is_the_flag_else_slurms_cpus_else_the_affinity(clean_environment):
    env = clean_environment
    assert cpu_budget() == AFFINITY
    assert cpu_budget(3) == 3
    env.setenv("SLURM_CPUS_PER_TASK", "6")
    assert cpu_budget() == AFFINITY  # a leftover variable outside a job counts for nothing
    env.setenv("SLURM_JOB_ID", "42")
    assert cpu_budget() == 6
    assert cpu_budget(2) == 2
    env.setenv("SLURM_CPUS_PER_TASK", "six")
    with pytest.raises(GeolocError, match="SLURM_CPUS_PER_TASK='six'"):
        cpu_budget()


def test_ranks_started_by_torchrun_share_the_cpus_of_their_node(clean_environment):
    clean_environment.setenv("LOCAL_WORLD_SIZE", str(AFFINITY + 1))
    assert cpu_budget() == 1  # never zero


def test_torch_gets_what_the_loader_workers_leave():
    before = torch.get_num_threads()
    try:
        assert apply_thread_budget(8, 3) == 5 and torch.get_num_threads() == 5
        assert apply_thread_budget(2, 4) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_threads_and_refuses_what_the_schema_would(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--threads", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"geoloc {command}: error: argument --threads: 0 is less than the minimum of 1"
    )


class _WorkerFacts(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        return (
            os.environ.get("OMP_NUM_THREADS"),
            torch.get_num_threads(),
            signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
            signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
        )


def test_a_loader_worker_runs_one_thread_and_leaves_stop_signals_to_the_main_process():
    loader = DataLoader(_WorkerFacts(), num_workers=1, worker_init_fn=init_loader_worker, batch_size=None)
    assert list(next(iter(loader))) == ["1", 1, True, True]


def test_auto_in_a_slurm_gpu_job_without_usable_cuda_says_why(clean_environment):
    clean_environment.setenv("SLURM_JOB_ID", "42")
    clean_environment.setenv("SLURM_JOB_GPUS", "0")
    clean_environment.setattr(torch.cuda, "is_available", lambda: False)
    clean_environment.setattr(torch.version, "cuda", None)
    with pytest.raises(GeolocError) as error:
        resolve_device("auto")
    message = str(error.value)
    assert "this SLURM job was given GPUs (SLURM_JOB_GPUS=0)" in message
    assert f"torch {torch.__version__} is a CPU-only build" in message and "device: cpu" in message


def test_auto_in_a_slurm_gpu_job_reports_the_driver_problem(clean_environment):
    clean_environment.setenv("SLURM_JOB_ID", "42")
    clean_environment.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    clean_environment.setattr(torch.cuda, "is_available", lambda: False)
    clean_environment.setattr(torch.version, "cuda", "12.8")

    def old_driver():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).\nPlease update")

    clean_environment.setattr(torch.cuda, "init", old_driver)
    with pytest.raises(
        GeolocError,
        match=r"CUDA_VISIBLE_DEVICES=0,1\) but torch cannot use them: torch .* "
        r"\(built for CUDA 12.8\): The NVIDIA driver on your system is too old",
    ):
        resolve_device("auto")


@pytest.mark.parametrize(
    "variables",
    [
        {"SLURM_JOB_ID": "42", "SLURM_GPUS_ON_NODE": "0", "CUDA_VISIBLE_DEVICES": ""},  # a CPU job
        {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "NoDevFiles"},
        {"CUDA_VISIBLE_DEVICES": "0"},  # not a SLURM job: a workstation without a driver
    ],
)
def test_auto_falls_back_to_the_cpu_where_no_gpu_was_given(clean_environment, variables):
    for name, value in variables.items():
        clean_environment.setenv(name, value)
    clean_environment.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert device.slurm_gpus_unusable() is None
