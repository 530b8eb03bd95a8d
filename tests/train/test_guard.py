"""The non-finite guard: skipped steps on the device, and in fp32 the very weights of plain Adam."""

import copy
import math

import pytest
import torch
from torch import nn

from geoloc.train.guard import GuardedStep, StepWindow, adam

CPU = torch.device("cpu")


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator)


@pytest.mark.parametrize("precision", ["fp32", "amp"])
def test_guarded_steps_give_plain_fused_adam_weights_bit_for_bit(precision):
    # amp on a CPU is bf16 autocast: no loss scaling either, the scale stays 1.
    guarded, plain = tiny_model(), tiny_model()
    guarded_opt, plain_opt = adam(guarded.parameters(), 1e-2, CPU), adam(plain.parameters(), 1e-2, CPU)
    step = GuardedStep(CPU, precision)
    x, y = batch()
    for _ in range(5):
        guarded_opt.zero_grad()
        step(nn.functional.cross_entropy(guarded(x), y), [guarded_opt])
        plain_opt.zero_grad()
        nn.functional.cross_entropy(plain(x), y).backward()
        plain_opt.step()
    assert step.scaler.get_scale() == 1.0
    for (name, a), b in zip(guarded.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_changes_no_weight_and_no_adam_state(bad):
    model = tiny_model()
    optimizer = adam(model.parameters(), 1e-2, CPU)
    step = GuardedStep(CPU, "fp32")
    x, y = batch()
    for _ in range(2):
        optimizer.zero_grad()
        step(nn.functional.cross_entropy(model(x), y), [optimizer])
    weights = {k: v.clone() for k, v in model.named_parameters()}
    state = copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad()
    step(nn.functional.cross_entropy(model(x), y) * bad, [optimizer])
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())
    after = optimizer.state_dict()["state"]
    for index, saved in state["state"].items():
        assert all(torch.equal(saved[key], after[index][key]) for key in saved), index  # step count too
    # and the next finite step trains again
    optimizer.zero_grad()
    step(nn.functional.cross_entropy(model(x), y), [optimizer])
    assert not all(torch.equal(weights[k], v) for k, v in model.named_parameters())


def test_the_window_gives_every_loss_in_order_and_the_summed_stop_flag():
    window = StepWindow(CPU, size=4)
    for value in (1.0, float("nan"), 3.0):
        window.add(torch.tensor(value))
    reduced = []
    losses, stopping, seconds = window.read(True, reduced.append)
    assert losses[0] == 1.0 and math.isnan(losses[1]) and losses[2] == 3.0
    assert stopping and seconds >= 0 and len(reduced) == 1  # one all-reduce for the whole window
    window.add(torch.tensor(5.0))
    assert window.read(False, lambda tensor: None)[:2] == ([5.0], False)
