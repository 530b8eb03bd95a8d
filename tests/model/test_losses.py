"""Margin classifiers: exact logits on hand-made 2-D geometry; the margin touches only the target."""

import math

import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.model.losses import LOSSES, ArcFace, CosFace, SphereFace, build_classifier

S = 30.0  # the scale of every loss


def _two_class(loss: str) -> torch.nn.Module:
    """A classifier whose class 0 points along x and class 1 along y."""
    classifier = build_classifier(loss, in_features=2, out_features=2)
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(2))
    return classifier


def _at_angle(degrees: float) -> torch.Tensor:
    """A unit descriptor `degrees` away from class 0 (and 90 - degrees from class 1)."""
    theta = math.radians(degrees)
    return torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64).float()


def _logits(loss: str, degrees: float, label: int) -> list[float]:
    return _two_class(loss)(_at_angle(degrees), torch.tensor([label]))[0].tolist()


def test_losses_are_the_three_of_the_study():
    assert LOSSES == ("cosface", "arcface", "sphereface")
    assert isinstance(build_classifier("cosface", 4, 3), CosFace)
    assert isinstance(build_classifier("arcface", 4, 3), ArcFace)
    assert isinstance(build_classifier("sphereface", 4, 3), SphereFace)


def test_each_loss_has_the_scale_and_margin_of_the_study():
    built = {loss: build_classifier(loss, 4, 3) for loss in LOSSES}
    assert {loss: (c.scale, c.margin) for loss, c in built.items()} == {
        "cosface": (S, 0.4),
        "arcface": (S, 0.5),
        "sphereface": (S, 1.5),
    }
    assert "scale=30.0, margin=0.4" in repr(built["cosface"])


def test_unknown_loss_is_refused_naming_the_known_ones():
    with pytest.raises(GeolocError, match="unknown loss 'triplet'.*cosface, arcface, sphereface"):
        build_classifier("triplet", 4, 3)


def test_cosface_subtracts_the_margin_from_the_target_cosine_only():
    # 60 deg from class 0: cos 0.5 to class 0, cos(30 deg) to class 1.
    target, other = _logits("cosface", 60.0, label=0)
    assert target == pytest.approx(S * (0.5 - 0.4), abs=1e-4)
    assert other == pytest.approx(S * math.cos(math.radians(30)), abs=1e-4)


def test_cosface_margin_follows_each_rows_label():
    classifier = _two_class("cosface")
    descriptors = torch.cat([_at_angle(60.0), _at_angle(60.0)])
    logits = classifier(descriptors, torch.tensor([0, 1]))
    cos0, cos1 = 0.5, math.cos(math.radians(30))
    expected = torch.tensor([[S * (cos0 - 0.4), S * cos1], [S * cos0, S * (cos1 - 0.4)]])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_cosface_matches_cosplace_margin_cosine_product_on_random_data():
    torch.manual_seed(0)
    classifier = build_classifier("cosface", 8, 5)
    descriptors, labels = torch.randn(6, 8), torch.tensor([0, 4, 2, 2, 1, 3])
    weight = classifier.weight.detach()
    cosine = (descriptors @ weight.T) / torch.outer(descriptors.norm(dim=1), weight.norm(dim=1))
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    torch.testing.assert_close(classifier(descriptors, labels), S * (cosine - 0.4 * one_hot), atol=1e-4, rtol=0)


def test_arcface_adds_the_margin_to_the_target_angle():
    target, other = _logits("arcface", 60.0, label=0)
    assert target == pytest.approx(S * math.cos(math.radians(60) + 0.5), abs=1e-4)
    assert other == pytest.approx(S * math.cos(math.radians(30)), abs=1e-4)


def test_arcface_target_angle_is_capped_at_pi():
    # 170 deg + 0.5 rad is past pi: the target logit stays at s * cos(pi) = -s.
    target, _ = _logits("arcface", 170.0, label=0)
    assert target == pytest.approx(-S, abs=1e-3)


def test_sphereface_multiplies_the_target_angle():
    # m = 1.5: 60 deg -> 90 deg, cos 0.
    target, other = _logits("sphereface", 60.0, label=0)
    assert target == pytest.approx(0.0, abs=1e-4)
    assert other == pytest.approx(S * math.cos(math.radians(30)), abs=1e-4)


def test_sphereface_extends_cos_m_theta_monotonically_past_pi_over_m():
    # 150 deg -> m theta = 225 deg, k = 1: psi = -cos(225 deg) - 2.
    target, _ = _logits("sphereface", 150.0, label=0)
    assert target == pytest.approx(S * (-math.cos(math.radians(225)) - 2.0), abs=1e-3)
    targets = [_logits("sphereface", degrees, label=0)[0] for degrees in range(0, 181, 5)]
    assert all(a > b for a, b in zip(targets, targets[1:]))


@pytest.mark.parametrize("loss", LOSSES)
def test_logits_ignore_descriptor_and_weight_lengths(loss):
    classifier = _two_class(loss)
    label = torch.tensor([1])
    unit = classifier(_at_angle(40.0), label)
    with torch.no_grad():
        classifier.weight.mul_(3.0)
    torch.testing.assert_close(classifier(5.0 * _at_angle(40.0), label), unit, atol=1e-4, rtol=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_gradients_stay_finite_when_a_descriptor_sits_on_its_class(loss):
    # acos has an infinite slope at cos = 1; the margin must not route gradients through it.
    classifier = _two_class(loss)
    descriptors = torch.tensor([[1.0, 0.0]], requires_grad=True)
    logits = classifier(descriptors, torch.tensor([0]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0])).backward()
    assert torch.isfinite(descriptors.grad).all()
    assert torch.isfinite(classifier.weight.grad).all()
    assert classifier.weight.grad.abs().sum() > 0
