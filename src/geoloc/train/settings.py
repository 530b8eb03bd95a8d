"""What a training run is: the result-affecting settings (the checkpoint fingerprint) and its name.

`TrainSettings` is the one table of these settings: each field's metadata (`setting(...)`) gives
its bounds and choices and where the workflow takes its value from. `geoloc train`'s parser
(`add_arguments`), the workflow's command lines (geoloc.jobs) and the test against the config
schema (tests/test_jobs.py) all read it; a new setting is one field here and its schema entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from geoloc.arguments import integer, number
from geoloc.device import PRECISIONS
from geoloc.errors import GeolocError
from geoloc.model.aggregators import AGGREGATORS
from geoloc.model.losses import LOSSES

# Where the workflow takes a setting from: the config's `training` section (a grid block may
# override it), `evaluation` (the in-loop validation's threshold), or the run itself (its grid axes).
TRAINING, EVALUATION, RUN = "training", "evaluation", "run"


def setting(
    default: Any,
    *,
    source: str = TRAINING,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    choices: tuple[str, ...] | None = None,
    help: str = "",
) -> Any:
    """A field of the table; bounds as the schema's minimum, maximum, exclusiveMinimum and enum."""
    bounds = {"minimum": minimum, "maximum": maximum, "exclusive_minimum": exclusive_minimum}
    metadata = {
        "source": source,
        "bounds": {k: v for k, v in bounds.items() if v is not None},
        "choices": choices,
        "help": help,
    }
    return dataclasses.field(default=default, metadata=metadata)


def option_of(name: str) -> str:
    """The command-line flag of a setting: `image_size` -> `--image-size`."""
    return f"--{name.replace('_', '-')}"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run's result (the checkpoint fingerprint)."""

    backbone: str = setting("resnet18", source=RUN)
    weights_format: str | None = setting(None, source=RUN)
    precision: str = setting("fp32", source=RUN, choices=PRECISIONS)
    seed: int = setting(0, source=RUN, minimum=0, maximum=2**64 - 1)  # torch.manual_seed takes no more
    dataset: str = setting("sf_xs", help="catalog name of the training and validation set (a label here)")
    epochs: int = setting(3, minimum=1)
    iterations_per_epoch: int = setting(10_000, minimum=1)
    batch_size: int = setting(32, minimum=1)
    image_size: int = setting(512, minimum=32)
    lr: float = setting(1e-5, exclusive_minimum=0, help="backbone + head")
    classifier_lr: float = setting(0.01, exclusive_minimum=0)
    loss: str = setting("cosface", choices=LOSSES)
    M: int = setting(10, minimum=1, help="metres per class cell, east and north")
    alpha: int = setting(30, minimum=1, maximum=360, help="degrees per heading bin")
    N: int = setting(5, minimum=1, help="cells between two classes of the same group, east and north")
    L: int = setting(2, minimum=1, help="heading bins between two classes of the same group")
    min_images_per_class: int = setting(10, minimum=1)
    groups_num: int = setting(1, minimum=1)
    fc_output_dim: int = setting(512, minimum=1, help="descriptor size of the aggregators that end in a linear layer")
    aggregator: str = setting("gem", source=RUN, choices=tuple(AGGREGATORS))
    trainable_blocks: int | None = setting(None, minimum=0, help="None: the study's default for the backbone")
    positive_dist_threshold: float = setting(25.0, source=EVALUATION, exclusive_minimum=0)

    def check(self) -> None:
        for field in dataclasses.fields(self):
            value, bounds = getattr(self, field.name), field.metadata["bounds"]
            if value is None or not bounds:
                continue
            if "minimum" in bounds and value < bounds["minimum"]:
                raise GeolocError(f"{field.name} must be at least {bounds['minimum']}, got {value}")
            if "maximum" in bounds and value > bounds["maximum"]:
                raise GeolocError(f"{field.name} must be at most {bounds['maximum']}, got {value}")
            if "exclusive_minimum" in bounds and not value > bounds["exclusive_minimum"]:
                raise GeolocError(f"{field.name} must be above {bounds['exclusive_minimum']}, got {value}")
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            if choices and getattr(self, field.name) not in choices:
                raise GeolocError(f"{field.name} must be one of {choices}, got {getattr(self, field.name)!r}")
        if self.groups_num > self.N * self.N * self.L:
            raise GeolocError(f"groups_num={self.groups_num} exceeds N*N*L={self.N * self.N * self.L}")


def fields_from(source: str) -> list[dataclasses.Field]:
    """The settings the workflow takes from one place (TRAINING, EVALUATION or RUN), in table order."""
    return [field for field in dataclasses.fields(TrainSettings) if field.metadata["source"] == source]


def parser_options(field: dataclasses.Field) -> dict[str, Any]:
    """`add_argument` keywords of a setting: its type with the table's bounds, choices, default."""
    kind, bounds = field.type.split(" ")[0], field.metadata["bounds"]
    value_type = {"int": integer, "float": number}.get(kind)
    options = {"dest": field.name, "default": field.default, "type": value_type(**bounds) if value_type else str}
    if field.metadata["choices"]:
        options["choices"] = field.metadata["choices"]
    if field.metadata["help"]:
        options["help"] = field.metadata["help"]
    return options


@dataclass(frozen=True)
class RunInfo:
    name: str
    backbone: str
    pretraining: str
    precision: str
    seed: int
    tag: str | None
    kind: str = "trained"
