"""One run on two processes (gloo, CPU) trains as one process does, and resumes exactly.

The tolerance. The first loss is that of one process to float rounding (1e-5 relative): the
two ranks draw the same batch and augmentation, each takes its half, and BatchNorm uses the
global batch's statistics; per-rank statistics alone would be off by 0.1 and more
(`test_per_rank_batchnorm_statistics_would_not_agree`). After that, the two runs compute the
same sums in another order (DDP adds two half-batch gradients; GlobalBatchNorm2d takes mean
and variance from per-rank sums), which changes results in their last bits, and Adam turns
that into more: it moves every weight by about lr a step whatever its gradient's size, so a
weight whose gradient is at float-noise level (sums that cancel, as in BatchNorm over the
1x1 maps of layer4 at 32 px) may move one way in one run and the other way in the other. The
runs then drift apart by at most about lr per weight and step: at the study's lr 1e-5 over 40
iterations we allow lr x 40 = 4e-4 on every trained weight (measured: 1.2e-4), 2 % of each
BatchNorm running statistic's largest value (measured 0.5 %) and 1 % on each loss (measured
0.2 %). A
resumed run replays the same sums in the same order: it must equal the uninterrupted one bit
for bit.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from geoloc.cli import main
from geoloc.train.distributed import Ranks, strip_option

ITERATIONS = 40


def train_args(city, out, checkpoints, *extra):
    return [
        "train",
        "--train-dir",
        str(city / "sf_xs" / "train"),
        "--val-dir",
        str(city / "sf_xs" / "val"),
        "--out-dir",
        str(out),
        "--checkpoint-dir",
        str(checkpoints),
        "--run-name",
        "r",
        "--backbone",
        "resnet18",
        "--weights",
        "none",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--epochs",
        "1",
        "--iterations-per-epoch",
        str(ITERATIONS),
        "--batch-size",
        "6",
        "--image-size",
        "32",
        "--alpha",
        "45",
        "--N",
        "2",
        "--L",
        "1",
        "--min-images-per-class",
        "3",
        "--fc-output-dim",
        "16",
        "--lr",
        "1e-5",
        "--checkpoint-every",
        "8",
        "--threads",
        "1",
        *extra,
    ]


def two_ranks(args, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "geoloc.cli", *args, "--nproc", "2"], stderr=subprocess.PIPE, text=True, **popen
    )


def weights(out):
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def losses(out):
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("train/loss")]


@pytest.fixture(scope="module")
def runs(tiny_city, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    assert main(train_args(tiny_city, root / "one", root / "ckpt-one")) == 0
    process = two_ranks(train_args(tiny_city, root / "two", root / "ckpt-two"))
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return root


def test_two_ranks_give_the_losses_and_weights_of_one_process(runs):
    one, two = losses(runs / "one"), losses(runs / "two")
    assert [step for step, _ in one] == [step for step, _ in two] == list(range(1, ITERATIONS + 1))
    assert two[0][1] == pytest.approx(one[0][1], rel=1e-5)
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-2), step
    one_weights, two_weights = weights(runs / "one"), weights(runs / "two")
    assert one_weights.keys() == two_weights.keys()
    for key, value in one_weights.items():
        atol = 0.02 * float(value.abs().max()) if "running" in key else 1e-5 * ITERATIONS
        torch.testing.assert_close(two_weights[key], value, rtol=0, atol=atol, msg=key)
    summary = json.loads((runs / "two" / "train.json").read_text())
    assert (summary["world_size"], summary["gpus"], summary["device_type"]) == (2, 0, "cpu")
    assert json.loads((runs / "one" / "train.json").read_text())["world_size"] == 1


def test_a_stopped_two_rank_run_resumes_to_the_uninterrupted_result(runs, tiny_city, tmp_path):
    args = train_args(tiny_city, tmp_path / "out", tmp_path / "ckpt")
    process = two_ranks(args)
    while not (tmp_path / "ckpt" / "ckpt-000000008.pt").exists():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # the launcher passes it to both ranks
    _, err = process.communicate(timeout=300)
    assert process.returncode == 3, err
    assert err.strip().splitlines()[-1].startswith("geoloc train: error: stopped by signal 15 (SIGTERM) at epoch 0")
    assert not (tmp_path / "out" / "model.pt").exists()

    process = two_ranks(args)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    summary = json.loads((tmp_path / "out" / "train.json").read_text())
    assert summary["resumed_from_iteration"] in (16, 24, 32)
    for key, value in weights(runs / "two").items():
        assert torch.equal(weights(tmp_path / "out")[key], value), key
    # TensorBoard: the curve goes on where the checkpoint was, no step twice.
    assert losses(tmp_path / "out") == losses(runs / "two")


def test_the_time_limit_one_rank_reads_stops_both_ranks_at_one_checkpoint(tiny_city, tmp_path):
    # Rank 1 alone finds its SLURM job 1 s from the margin (a fake squeue): both ranks stop at
    # the next step they agree on, the checkpoint due at iteration 8, which rank 0 writes.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text('#!/bin/sh\nif [ "$RANK" = 1 ]; then echo 1:01; else echo 1-00:00:00; fi\n')
    (bin_dir / "squeue").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    process = two_ranks(
        train_args(tiny_city, tmp_path / "out", tmp_path / "ckpt", "--stop-margin-seconds", "60"), env=env
    )
    _, err = process.communicate(timeout=600)
    assert process.returncode == 3, err
    assert "error: stopped at epoch 0 iteration 8, 60 s before the SLURM job's time limit" in err  # rank 1
    assert "error: stopped at epoch 0 iteration 8 because another training process was asked to stop" in err
    assert [path.name for path in (tmp_path / "ckpt").iterdir()] == ["ckpt-000000008.pt"]
    assert not (tmp_path / "out" / "model.pt").exists()


def test_per_rank_batchnorm_statistics_would_not_agree():
    # What the tolerance above is measured against: the same batch normalised per half.
    torch.manual_seed(0)
    batch = torch.randn(8, 4, 3, 3) * torch.tensor([1.0, 5.0, 0.2, 2.0]).view(1, 4, 1, 1)
    bn = torch.nn.BatchNorm2d(4).train()
    whole = bn(batch)
    halves = torch.cat([bn(batch[:4]), bn(batch[4:])])
    assert (whole - halves).abs().max() > 0.1


def test_each_rank_takes_its_slice_of_the_global_batch():
    assert [Ranks(rank, 2).part(8) for rank in range(2)] == [(0, 4), (4, 8)]
    assert [Ranks(rank, 3).part(8) for rank in range(3)] == [(0, 2), (2, 5), (5, 8)]


def test_the_launcher_drops_its_own_options_from_the_ranks_command():
    argv = ["train", "--nproc", "2", "--threads=4", "--seed", "1"]
    assert strip_option(strip_option(argv, "--nproc"), "--threads") == ["train", "--seed", "1"]
