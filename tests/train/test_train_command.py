"""`geoloc train` as the workflow runs it: what train.json records, the pinned weights digest,
the image cache that `geoloc cache-images` built (and its node-local copy), and every option
the workflow's train rule passes."""

import hashlib
import json
import shutil

import pytest
import torch
import torchvision
from test_trainer import RUN, SETTINGS, _cli_args

from geoloc.cli import build_parser, main
from geoloc.data.groups import build_groups
from geoloc.errors import GeolocError
from geoloc.model.weights import sha256_file
from geoloc.train.settings import TrainSettings
from geoloc.train.trainer import Trainer

SHORT = ("--epochs", "1", "--iterations-per-epoch", "2", "--checkpoint-every", "100")


def train(city, work, *extra) -> dict:
    assert main(["train", *_cli_args(city, work, *SHORT, *extra)]) == 0
    return json.loads((work / "run" / "train.json").read_text())


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_train_json_records_the_fingerprint_the_model_digest_and_no_cache_time(tiny_city, tmp_path):
    summary = train(tiny_city, tmp_path / "a")

    settings = summary["fingerprint"]["settings"]
    assert set(settings) == {f for f in TrainSettings.__dataclass_fields__} | {"weights_sha256", "train_images"}
    assert (settings["lr"], settings["image_size"], settings["weights_sha256"]) == (1e-3, 32, None)
    assert summary["fingerprint"]["sha256"] == hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    assert summary["model_sha256"] == sha256_file(tmp_path / "a" / "run" / "model.pt")
    assert summary["image_cache_build_seconds"] is None
    assert summary["run"]["kind"] == "trained"
    # A runtime knob: recorded with the others, never part of what made the model.
    assert summary["hyperparameters"]["max_bad_steps"] == 20 and "max_bad_steps" not in settings


def test_the_same_images_elsewhere_give_the_same_fingerprint_and_the_same_model_file(tiny_city, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_city / "sf_xs", moved / "sf_xs")
    first, second = train(tiny_city, tmp_path / "a"), train(moved, tmp_path / "b")
    assert second["fingerprint"] == first["fingerprint"]
    assert second["model_sha256"] == first["model_sha256"]  # a deterministic training, byte for byte


def test_one_trained_image_renamed_changes_the_fingerprint(tiny_city, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_city / "sf_xs", copy / "sf_xs")
    groups = build_groups(copy / "sf_xs" / "train", M=10, alpha=45, N=2, L=1, min_images_per_class=3)
    trained = groups[0][0][0]
    trained.rename(trained.with_name(trained.name.replace("@.jpg", "renamed@.jpg")))
    assert (
        train(copy, tmp_path / "b")["fingerprint"]["settings"]["train_images"]
        != train(tiny_city, tmp_path / "a")["fingerprint"]["settings"]["train_images"]
    )


def write_weights(path):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return sha256_file(path)


def test_weights_other_than_the_pinned_ones_are_refused_before_anything_is_read(tiny_city, tmp_path, capsys):
    weights = tmp_path / "w.pth"
    digest = write_weights(weights)
    pinned = "0" * 64
    args = _cli_args(
        tiny_city,
        tmp_path,
        *SHORT,
        "--cache-dir",
        str(tmp_path / "groups"),
        "--weights-format",
        "torchvision",
        "--weights-sha256",
        pinned,
    )
    args[args.index("--weights") + 1] = str(weights)

    assert main(["train", *args]) == 2
    assert last_error(capsys) == (
        f"geoloc train: error: weights file {weights} has sha256 {digest}, but the "
        f"registry pins {pinned}: it is another file (delete it and run fetch-weights again)"
    )
    assert not (tmp_path / "groups").exists()  # not even the training images were listed
    assert not (tmp_path / "ckpt").exists()

    args[args.index("--weights-sha256") + 1] = digest[:8]  # the registry may pin a prefix
    assert main(["train", *args]) == 0
    assert json.loads((tmp_path / "run" / "train.json").read_text())["weights"]["sha256"] == digest


def test_a_pinned_digest_without_weights_is_refused(tiny_city, tmp_path, capsys):
    assert main(["train", *_cli_args(tiny_city, tmp_path, *SHORT, "--weights-sha256", "ab" * 32)]) == 2
    assert last_error(capsys) == f"geoloc train: error: --weights-sha256 {'ab' * 32} is given but no --weights file"


def test_max_bad_images_without_the_image_cache_is_refused_not_ignored(tiny_city, tmp_path, capsys):
    assert main(["train", *_cli_args(tiny_city, tmp_path, *SHORT, "--max-bad-images", "3")]) == 2
    assert last_error(capsys) == (
        "geoloc train: error: max_bad_images=3 needs the image cache (training.image_cache, --image-cache): "
        "undecodable images are found while it is filled; without it the first one stops the training"
    )
    assert not (tmp_path / "ckpt").exists()


def test_an_empty_copy_folder_is_refused(tiny_city, tmp_path, capsys):
    # What "$TMPDIR" becomes on a node that does not set it.
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "train",
                *_cli_args(tiny_city, tmp_path, "--image-cache", str(tmp_path / "c"), "--image-cache-copy-to", ""),
            ]
        )
    assert exit_.value.code == 2
    assert last_error(capsys) == (
        "geoloc train: error: argument --image-cache-copy-to: is empty (an unset "
        "variable such as $TMPDIR on this node?)"
    )


def cache_files(folder):
    return sorted(path.name for path in folder.iterdir() if not path.name.endswith(".lock"))


def test_training_opens_the_cache_that_cache_images_built_and_reads_it_from_its_copy(tiny_city, tmp_path):
    cache = tmp_path / "cache"
    train_dir = tiny_city / "sf_xs" / "train"
    assert main(["cache-images", "--train-dir", str(train_dir), "--image-size", "32", "--cache-dir", str(cache)]) == 0
    built = cache_files(cache)
    [index] = [name for name in built if name.endswith(".json")]
    build_seconds = json.loads((cache / index).read_text())["build_seconds"]

    summary = train(tiny_city, tmp_path, "--image-cache", str(cache), "--image-cache-copy-to", str(tmp_path / "node"))
    assert cache_files(cache) == built  # opened, not built again: the whole folder's listing is its key
    assert cache_files(tmp_path / "node") == built
    assert (tmp_path / "node" / index).read_bytes() == (cache / index).read_bytes()
    assert summary["image_cache_build_seconds"] == build_seconds

    trainer = Trainer(
        SETTINGS,
        RUN,
        train_dir=train_dir,
        val_dir=tiny_city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=tmp_path / "ckpt2",
        cache_dir=None,
        device="cpu",
        num_workers=0,
        checkpoint_every=100,
        image_cache_dir=cache,
        image_cache_copy_to=tmp_path / "node",
    )
    assert {dataset.cache.data_file.parent for dataset in trainer.datasets} == {tmp_path / "node"}


def test_a_missing_cache_is_built_by_the_training_and_its_build_time_recorded(tiny_city, tmp_path):
    summary = train(tiny_city, tmp_path, "--image-cache", str(tmp_path / "cache"))
    [index] = [name for name in cache_files(tmp_path / "cache") if name.endswith(".json")]
    assert (
        summary["image_cache_build_seconds"]
        == json.loads((tmp_path / "cache" / index).read_text())["build_seconds"]
        > 0
    )


def test_undecodable_images_beyond_max_bad_images_stop_the_training_and_within_it_are_skipped(
    tiny_city, tmp_path, capsys
):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_city / "sf_xs", copy / "sf_xs")
    groups = build_groups(copy / "sf_xs" / "train", M=10, alpha=45, N=2, L=1, min_images_per_class=3)
    bad = groups[0][0][0]
    bad.write_bytes(b"<html>403 Forbidden</html>")
    args = _cli_args(copy, tmp_path, *SHORT, "--image-cache", str(tmp_path / "cache"))

    assert main(["train", *args]) == 2
    message = last_error(capsys)
    assert message.startswith(
        f"geoloc train: error: 1 images of {copy / 'sf_xs' / 'train'} cannot be decoded "
        "(more than max_bad_images=0); first: "
    )
    assert str(bad) in message

    assert main(["train", *args, "--max-bad-images", "1"]) == 0
    skipped = json.loads((tmp_path / "run" / "train.json").read_text())["fingerprint"]["settings"]["train_images"]
    assert skipped != train(tiny_city, tmp_path / "clean")["fingerprint"]["settings"]["train_images"]


def test_every_option_the_workflows_train_rule_passes_is_accepted(tmp_path, tiny_city):
    from support.workflow import BLOCK, calls_of, fake_geoloc_env, small_config, snakemake, write_yaml

    weights = tmp_path / "weights" / "resnet18-imagenet.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")  # in place: not downloaded
    write_yaml(
        tmp_path / "weights.yaml",
        {
            "resnet18": {
                "imagenet": {
                    "url": "file:///nowhere",
                    "sha256": sha256_file(weights),
                    "size": None,
                    "format": "torchvision",
                }
            }
        },
    )
    env, calls = fake_geoloc_env(tmp_path, FAKE_SCRATCH=str(tmp_path / "scratch"))
    config = small_config(
        tiny_city,
        tmp_path / "results",
        reference="resnet18-imagenet-fp32-s0",
        grid=[{**BLOCK, "pretrainings": ["imagenet"]}],
        weights={"registry": str(tmp_path / "weights.yaml"), "dir": str(weights.parent)},
        training={"compile": True, "max_bad_images": 2, "trainable_blocks": 1},
        image_cache={"copy_to": "$FAKE_SCRATCH/geoloc"},
    )
    done = snakemake(
        tmp_path,
        str(tmp_path / "results" / "runs" / "resnet18-imagenet-fp32-s0" / "model.pt"),
        "--cores",
        "2",
        "--configfile",
        str(write_yaml(tmp_path / "c.yaml", config)),
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [args] = calls_of(calls, "train")

    parsed = build_parser("train").parse_args(["train", *args])
    assert parsed.weights_sha256 == sha256_file(weights)
    assert parsed.image_cache_copy_to == tmp_path / "scratch" / "geoloc"
    assert (parsed.compile, parsed.max_bad_images, parsed.max_bad_steps, parsed.stop_margin_seconds) == (
        True,
        2,
        20,
        600,
    )
    assert (parsed.trainable_blocks, parsed.weights_format) == (1, "torchvision")


def test_a_trainer_given_a_copy_folder_without_a_cache_is_refused(tiny_city, tmp_path):
    with pytest.raises(GeolocError, match="--image-cache-copy-to .* needs --image-cache"):
        Trainer(
            SETTINGS,
            RUN,
            train_dir=tiny_city / "sf_xs" / "train",
            val_dir=tiny_city / "sf_xs" / "val",
            weights=None,
            checkpoint_dir=tmp_path / "ckpt",
            cache_dir=None,
            device="cpu",
            num_workers=0,
            checkpoint_every=100,
            image_cache_copy_to=tmp_path / "node",
        )
