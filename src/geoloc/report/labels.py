"""How the report names backbones, pretrainings, precisions, aggregators and test sets (the field's terms).

A name not listed here is shown as it is written in the config.
"""

from __future__ import annotations

from geoloc.model.backbones import STUDY_BACKBONES

PRETRAININGS = {
    "imagenet": "ImageNet",
    "places365": "Places365",
    "gldv2": "Google Landmarks v2",
    "none": "random init",
}
PRECISIONS = {"fp32": "FP32", "amp": "AMP"}
AGGREGATORS = {
    "gem": "GeM",
    "netvlad": "NetVLAD",
    "convap": "ConvAP",
    "mixvpr": "MixVPR",
    "salad": "SALAD",
    "boq": "BoQ",
}
TEST_SETS = {"sf_xs": "SF-XS", "tokyo_xs": "Tokyo-XS", "tokyo_night": "Tokyo-Night"}
# test set -> the test set whose queries include all of its own (same database): Tokyo-Night's
# queries are the night third of Tokyo-XS's, in the real datasets and in the synthetic city.
SUBSET_OF = {"tokyo_night": "tokyo_xs"}


def backbone_label(name: str) -> str:
    entry = STUDY_BACKBONES.get(name)
    return entry.label if entry else name


def pretraining_label(name: str) -> str:
    return PRETRAININGS.get(name, name)


def precision_label(name: str) -> str:
    return PRECISIONS.get(name, name)


def aggregator_label(name: str) -> str:
    return AGGREGATORS.get(name, name)


def test_set_label(name: str) -> str:
    return TEST_SETS.get(name, name)
