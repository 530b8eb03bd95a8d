"""The digest of the trained images: their relative names class by class, nothing else."""

from pathlib import Path

import numpy as np

from geoloc.data.groups import ClassGroup
from geoloc.data.listing import Listing
from geoloc.data.packed import PackedNames
from geoloc.train import fingerprint
from geoloc.train.fingerprint import trained_images_sha256


def group(names: list[str], classes: list[list[str]], root: str = "/data/train") -> ClassGroup:
    """The classes (lists of names) as a ClassGroup over a listing of `names`."""
    listing = Listing(Path(root), PackedNames.from_strings(names))
    images = np.array([names.index(name) for members in classes for name in members], dtype=np.int32)
    starts = np.cumsum([0, *map(len, classes)]).astype(np.int64)
    return ClassGroup(listing, images, starts)


NAMES = ["a/1.jpg", "a/2.jpg", "b/3.jpg", "b/4.jpg", "c/5.jpg", "é/6.jpg"]
CLASSES = [["a/1.jpg", "b/3.jpg"], ["a/2.jpg", "é/6.jpg", "c/5.jpg"]]


def test_images_outside_the_trained_classes_and_the_folder_do_not_count():
    reference = trained_images_sha256([group(NAMES, CLASSES)])
    more = sorted([*NAMES, "a/0-dropped.jpg", "z/9-other-group.jpg"])
    assert trained_images_sha256([group(more, CLASSES)]) == reference
    assert trained_images_sha256([group(NAMES, CLASSES, root="/elsewhere/train")]) == reference


def test_a_renamed_image_other_classes_or_another_order_change_the_digest():
    reference = trained_images_sha256([group(NAMES, CLASSES)])
    renamed = [name.replace("3", "33") for name in NAMES]
    assert trained_images_sha256([group(renamed, [[n.replace("3", "33") for n in c] for c in CLASSES])]) != reference
    # the same images, split into classes at another place
    assert trained_images_sha256([group(NAMES, [CLASSES[0][:1], CLASSES[0][1:] + CLASSES[1]])]) != reference
    # one name's end moved onto the next: the lengths keep names apart
    assert trained_images_sha256([group(["ab", "c"], [["ab", "c"]])]) != trained_images_sha256(
        [group(["a", "bc"], [["a", "bc"]])]
    )
    assert trained_images_sha256([group(NAMES, CLASSES[::-1])]) != reference
    # one group of two classes is not two groups of one
    assert trained_images_sha256([group(NAMES, CLASSES[:1]), group(NAMES, CLASSES[1:])]) != reference


def test_the_digest_does_not_depend_on_how_many_names_one_gather_takes(monkeypatch):
    names = [f"{i % 7}/{'x' * (i % 13)}{i}.jpg" for i in range(1000)]
    names.sort()
    classes = [names[i : i + 9] for i in range(0, 990, 9)]
    reference = trained_images_sha256([group(names, classes)])
    monkeypatch.setattr(fingerprint, "_CHUNK", 7)
    assert trained_images_sha256([group(names, classes)]) == reference
