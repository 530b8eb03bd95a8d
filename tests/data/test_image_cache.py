"""geoloc.data.image_cache: decoded images cached once, keyed by the files; the dataset reading it."""

import faulthandler
import fcntl
import json
import logging
import multiprocessing
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.cli import main
from geoloc.data import image_cache
from geoloc.data.datasets import TrainGroupDataset
from geoloc.data.image_cache import ImageCache
from geoloc.data.images import read_image
from geoloc.data.listing import list_images
from geoloc.errors import GeolocError

SIZE = 8


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` small noisy JPEGs of differing shapes and modes, named so that they sort by number."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(10 + i, 14, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i % 3 == 1:
            image = image.convert("L")  # grayscale becomes RGB, as read_image does
        path = folder / f"img{i:02d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def cache_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.endswith(".lock"))


def test_cached_images_equal_decoded_images(tmp_path):
    paths = write_images(tmp_path / "imgs", 5)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert len(cache) == 5 and cache.bad_paths == []
    for path in paths:
        image = cache.get(cache.index_of(path))
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        assert torch.equal(image, read_image(path, SIZE))


def test_rows_follow_sorted_paths_so_any_order_shares_one_cache(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "imgs", 4)
    first = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert [first.index_of(p) for p in paths] == [0, 1, 2, 3]
    monkeypatch.setattr(image_cache, "_build", lambda *a: pytest.fail("rebuilt an existing cache"))
    again = ImageCache.build_or_open(list(reversed(paths)), SIZE, tmp_path / "cache")
    assert again.data_file == first.data_file
    assert torch.equal(again.get(again.index_of(paths[2])), read_image(paths[2], SIZE))


def test_a_path_through_a_symlinked_folder_finds_the_same_row(tmp_path):
    paths = write_images(tmp_path / "imgs", 3)
    (tmp_path / "link").symlink_to(tmp_path / "imgs")
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert cache.index_of(tmp_path / "link" / paths[1].name) == 1


def test_a_changed_image_gives_a_new_cache_with_its_new_pixels(tmp_path):
    paths = write_images(tmp_path / "imgs", 3)
    old = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    Image.new("RGB", (12, 12), (0, 200, 0)).save(paths[1])
    os.utime(paths[1], ns=(0, 1_000_000_000))  # a different mtime even on coarse clocks
    new = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert new.data_file != old.data_file
    assert torch.equal(new.get(1), read_image(paths[1], SIZE))
    assert not torch.equal(old.get(1), new.get(1))


def test_each_size_has_its_own_cache(tmp_path):
    paths = write_images(tmp_path / "imgs", 2)
    small = ImageCache.build_or_open(paths, 4, tmp_path / "cache")
    large = ImageCache.build_or_open(paths, 6, tmp_path / "cache")
    assert small.get(0).shape == (3, 4, 4) and large.get(0).shape == (3, 6, 6)
    assert len(cache_files(tmp_path / "cache")) == 4  # a data file and an index each


def test_undecodable_images_are_recorded_not_fatal(tmp_path, caplog):
    paths = write_images(tmp_path / "imgs", 4)
    paths[1].write_bytes(b"")  # zero bytes
    paths[2].write_bytes(paths[2].read_bytes()[:40])  # truncated
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert cache.bad_paths == [paths[1], paths[2]]
    assert sorted(cache.errors) == [1, 2] and str(paths[1]) in cache.errors[1]
    assert str(paths[2]) in caplog.text
    assert torch.equal(cache.get(3), read_image(paths[3], SIZE))
    with pytest.raises(GeolocError, match="could not be decoded"):
        cache.get(1)
    # Reopened from disk, the bad images are still known.
    reopened = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert reopened.bad_paths == [paths[1], paths[2]]


def test_build_with_workers_writes_the_same_bytes(tmp_path):
    paths = write_images(tmp_path / "imgs", 9)
    serial = ImageCache.build_or_open(paths, SIZE, tmp_path / "serial", num_workers=0)
    parallel = ImageCache.build_or_open(paths, SIZE, tmp_path / "parallel", num_workers=2)
    assert serial.data_file.read_bytes() == parallel.data_file.read_bytes()


def test_interrupted_build_leaves_no_cache_and_the_next_one_completes(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "imgs", 4)
    real_read = image_cache.ImageListDataset.__getitem__

    def dies_on_third(self, index):
        if index == 2:
            raise KeyboardInterrupt
        return real_read(self, index)

    monkeypatch.setattr(image_cache.ImageListDataset, "__getitem__", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []
    monkeypatch.undo()
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert torch.equal(cache.get(2), read_image(paths[2], SIZE))


@pytest.mark.parametrize("damage", ["truncate data", "garble index"])
def test_a_damaged_cache_is_rebuilt(tmp_path, damage):
    paths = write_images(tmp_path / "imgs", 3)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    if damage == "truncate data":
        os.truncate(cache.data_file, 10)
    else:
        cache.data_file.with_suffix(".json").write_text("{not json")
    rebuilt = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert rebuilt.data_file.stat().st_size == 3 * 3 * SIZE * SIZE
    assert torch.equal(rebuilt.get(0), read_image(paths[0], SIZE))


def _build_in_process(paths, folder, queue):
    cache = ImageCache.build_or_open(paths, SIZE, folder)
    queue.put([cache.get(row).numpy().tobytes() for row in range(len(cache))])


def _build_without_locks(paths, folder, queue):
    def no_locks(*args):
        raise OSError(37, "No locks available")

    image_cache.fcntl.flock = no_locks  # as on NFS without a lock daemon
    _build_in_process(paths, folder, queue)


@pytest.mark.parametrize("builder", [_build_in_process, _build_without_locks], ids=["locks", "no-locks"])
def test_concurrent_builders_both_get_a_whole_cache(tmp_path, builder):
    paths = write_images(tmp_path / "imgs", 30)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    builders = [context.Process(target=builder, args=(paths, tmp_path / "cache", queue)) for _ in range(2)]
    for process in builders:
        process.start()
    results = [queue.get(timeout=60) for _ in builders]
    for process in builders:
        process.join(timeout=60)
        assert process.exitcode == 0
    expected = [read_image(path, SIZE).numpy().tobytes() for path in paths]
    assert results == [expected, expected]
    assert len(cache_files(tmp_path / "cache")) == 2  # one data file and one index: each rename was whole


def test_without_file_locks_the_build_still_completes(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(image_cache.fcntl, "flock", no_locks)
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert torch.equal(cache.get(1), read_image(paths[1], SIZE))


def test_pickled_cache_carries_no_pixels_nor_paths_and_reads_after_unpickling(tmp_path):
    paths = write_images(tmp_path / "imgs", 3)
    cache = ImageCache.build_or_open(paths, 64, tmp_path / "cache")
    cache.get(0)  # maps the file in this process
    payload = pickle.dumps(cache)
    assert len(payload) < 3 * 3 * 64 * 64  # less than the pixels: the map is not pickled
    assert paths[1].name.encode() not in payload  # nor a path per image
    copy = pickle.loads(payload)
    assert len(copy) == 3 and torch.equal(copy.get(2), cache.get(2))


@pytest.mark.parametrize(
    "paths, size, message",
    [
        ([], SIZE, "no images to cache"),
        ([Path("missing.jpg")], SIZE, "cannot read .*missing.jpg"),
        ([Path("any.jpg")], 0, "image size must be at least 1"),
    ],
)
def test_bad_requests_are_errors(tmp_path, paths, size, message):
    with pytest.raises(GeolocError, match=message):
        ImageCache.build_or_open(paths, size, tmp_path / "cache")


def test_asking_for_an_image_not_in_the_cache_is_an_error(tmp_path):
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths[:1], SIZE, tmp_path / "cache")
    with pytest.raises(GeolocError, match="does not hold .*img01.jpg"):
        cache.index_of(paths[1])


# --- the training dataset reading the cache ----------------------------------------------------


def test_dataset_with_cache_gives_the_decoded_images(tmp_path, class_group):
    paths = write_images(tmp_path / "imgs", 6)
    classes = class_group(tmp_path / "imgs", [paths[:2], paths[2:6]])
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    cached = TrainGroupDataset(classes, SIZE, cache=cache)
    decoded = TrainGroupDataset(classes, SIZE)
    assert cached.images_per_class.tolist() == decoded.images_per_class.tolist() == [2, 4]
    for c, count in enumerate(decoded.images_per_class):
        for i in range(count):
            image, label = cached[(c, i)]
            assert label == c
            assert torch.equal(image, decoded[(c, i)][0])


def test_dataset_with_cache_works_in_loader_workers(tmp_path, class_group):
    paths = write_images(tmp_path / "imgs", 4)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    dataset = TrainGroupDataset(class_group(tmp_path / "imgs", [paths]), SIZE, cache=cache)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[[(0, 3), (0, 1)]], num_workers=2)
    ((images, labels),) = list(loader)
    assert torch.equal(images[0], read_image(paths[3], SIZE)) and labels.tolist() == [0, 0]


def test_dataset_leaves_out_undecodable_images_and_emptied_classes(tmp_path, class_group):
    paths = write_images(tmp_path / "imgs", 5)
    for bad in (paths[1], paths[4]):
        bad.write_bytes(b"not an image")
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    dataset = TrainGroupDataset(class_group(tmp_path / "imgs", [paths[:3], [paths[4]], paths[3:4]]), SIZE, cache=cache)
    assert list(dataset.classes) == [[paths[0], paths[2]], [paths[3]]]
    assert dataset.images_per_class.tolist() == [2, 1]
    assert torch.equal(dataset[(0, 1)][0], read_image(paths[2], SIZE))
    assert torch.equal(dataset[(1, 0)][0], read_image(paths[3], SIZE)) and dataset[(1, 0)][1] == 1


def test_dataset_refuses_a_cache_of_another_size(tmp_path, class_group):
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    with pytest.raises(GeolocError, match="holds 8 px images, not 16 px"):
        TrainGroupDataset(class_group(tmp_path / "imgs", [paths]), 16, cache=cache)


def test_a_killed_builds_temp_file_is_removed_by_the_next_build(tmp_path):
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    leftover = cache.data_file.with_name(f".{cache.data_file.name}.abc123.tmp")
    leftover.write_bytes(b"half a cache")
    cache.data_file.with_suffix(".json").unlink()  # as if killed before the index was written
    ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert not leftover.exists()
    assert len(cache_files(tmp_path / "cache")) == 2


# --- a full disk, killed builds, the build time, copies ---------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (tmpfs), mounted for the test: a disk that fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def cache_images(*args: str, **run_args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geoloc.cli", "cache-images", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **run_args,
    )


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_a_full_disk_is_one_clear_error_before_decoding_and_leaves_no_file(tmp_path, small_disk):
    write_images(tmp_path / "imgs", 40)  # 40 x 3 x 64 x 64 bytes = 480 KiB > 256 KiB
    result = cache_images("--train-dir", str(tmp_path / "imgs"), "--image-size", "64", "--cache-dir", str(small_disk))
    assert result.returncode == 2, result.stderr  # not killed by SIGBUS (-7)
    assert re.fullmatch(
        rf"geoloc cache-images: error: image cache: cannot reserve 480\.0 KiB for 40 images at 64 px "
        rf"in {re.escape(str(small_disk))} \(2\d\d\.\d KiB free\): not enough space",
        last_line(result.stderr),
    ), last_line(result.stderr)
    assert "decoding" not in result.stderr and cache_files(small_disk) == []


def _write_through_a_sparse_map(path: str, size: int) -> None:
    faulthandler.disable()  # the crash is expected: no traceback dump in the test output
    pixels = np.memmap(path, dtype=np.uint8, mode="w+", shape=(size,))
    pixels[:] = 1


def test_a_sparse_memory_map_on_that_disk_dies_with_sigbus(small_disk):
    # Keeps the full-disk test honest: the way the cache used to write is killed on that disk.
    child = multiprocessing.get_context("fork").Process(
        target=_write_through_a_sparse_map, args=(str(small_disk / "sparse.u8"), 480 * 1024)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGBUS


def test_a_file_size_limit_is_one_clear_error_and_leaves_no_file(tmp_path):
    write_images(tmp_path / "imgs", 12)  # 12 x 3 x 64 x 64 bytes = 144 KiB > the 100 kB limit

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = cache_images(
        "--train-dir",
        str(tmp_path / "imgs"),
        "--image-size",
        "64",
        "--cache-dir",
        str(tmp_path / "cache"),
        preexec_fn=limit_file_size,
    )
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(
        r"geoloc cache-images: error: image cache: cannot reserve 144\.0 KiB for 12 images at 64 px "
        r"in .*cache \(\d+\.\d [KMGT]iB free\): File too large",
        last_line(result.stderr),
    )
    assert cache_files(tmp_path / "cache") == []


def test_sizes_are_shown_in_human_units():
    assert [image_cache._human_bytes(n) for n in (100, 3 * 1024, 480 * 1024, 45 * 2**30, 5 * 2**40)] == [
        "100 B",
        "3.0 KiB",
        "480.0 KiB",
        "45.0 GiB",
        "5.0 TiB",
    ]


def _build_that_hangs_on_row_2(paths, folder):
    real_read = image_cache.ImageListDataset.__getitem__

    def hang(self, index):
        if index == 2:
            time.sleep(600)
        return real_read(self, index)

    image_cache.ImageListDataset.__getitem__ = hang
    ImageCache.build_or_open(paths, SIZE, folder)


def test_the_temp_file_of_a_killed_build_is_removed_by_the_next_build_of_any_cache(tmp_path):
    paths = write_images(tmp_path / "imgs", 4)
    folder = tmp_path / "cache"
    builder = multiprocessing.get_context("fork").Process(target=_build_that_hangs_on_row_2, args=(paths, folder))
    builder.start()
    deadline = time.monotonic() + 60
    while not list(folder.glob(".images-*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (leftover,) = folder.glob(".images-*.tmp")
    os.kill(builder.pid, signal.SIGKILL)
    builder.join()
    assert leftover.exists()
    # The next build is of another cache (other images): it removes the dead build's file too.
    ImageCache.build_or_open(paths[:3], SIZE, folder)
    assert not leftover.exists()
    assert len(cache_files(folder)) == 2


def test_the_temp_file_of_a_running_build_is_left_alone(tmp_path):
    paths = write_images(tmp_path / "imgs", 3)
    folder = tmp_path / "cache"
    running = ImageCache.build_or_open(paths, SIZE, folder)
    running.index_file.unlink()
    in_progress = running.data_file.with_name(f".{running.data_file.name}.inprogress.tmp")
    in_progress.write_bytes(b"being written")
    with open(running.data_file.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as its builder holds it
        ImageCache.build_or_open(paths[:2], SIZE, folder)
    assert in_progress.exists()


def test_the_index_records_the_build_time_and_a_reopened_cache_reports_it(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "imgs", 3)
    clock = iter([100.0, 102.5])
    monkeypatch.setattr(image_cache.time, "perf_counter", lambda: next(clock))
    built = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert built.build_seconds == 2.5
    assert json.loads(built.index_file.read_text())["build_seconds"] == 2.5
    assert ImageCache.build_or_open(paths, SIZE, tmp_path / "cache").build_seconds == 2.5


def test_a_copy_is_complete_reads_the_same_images_and_is_made_once(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "imgs", 5)
    paths[3].write_bytes(b"broken")
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "shared")
    copy = cache.copy_to(tmp_path / "scratch")
    assert copy.data_file == tmp_path / "scratch" / cache.data_file.name
    assert copy.data_file.read_bytes() == cache.data_file.read_bytes()
    assert copy.index_file.read_text() == cache.index_file.read_text()
    assert cache_files(tmp_path / "scratch") == cache_files(tmp_path / "shared")
    assert copy.bad_paths == [paths[3]] and copy.build_seconds == cache.build_seconds
    assert torch.equal(copy.get(copy.index_of(paths[4])), read_image(paths[4], SIZE))
    monkeypatch.setattr(image_cache, "_copy_file", lambda *a: pytest.fail("copied an identical complete copy"))
    again = cache.copy_to(tmp_path / "scratch")
    assert torch.equal(again.get(0), cache.get(0))


def test_an_incomplete_copy_is_copied_again(tmp_path):
    paths = write_images(tmp_path / "imgs", 3)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "shared")
    first = cache.copy_to(tmp_path / "scratch")
    os.truncate(first.data_file, 5)  # e.g. a scratch disk cleaned up while in use
    copy = cache.copy_to(tmp_path / "scratch")
    assert copy.data_file.read_bytes() == cache.data_file.read_bytes()


def test_a_copy_without_file_locks_still_completes(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "shared")
    monkeypatch.setattr(image_cache.fcntl, "flock", lambda *args: (_ for _ in ()).throw(OSError(37, "No locks")))
    copy = cache.copy_to(tmp_path / "scratch")
    assert torch.equal(copy.get(1), cache.get(1))


def test_a_copy_to_a_full_disk_is_one_clear_error_and_leaves_no_file(tmp_path, small_disk):
    paths = write_images(tmp_path / "imgs", 40)
    cache = ImageCache.build_or_open(paths, 64, tmp_path / "shared")
    with pytest.raises(
        GeolocError,
        match=rf"cannot reserve 480\.0 KiB for the copy of {cache.data_file.name} in "
        rf"{re.escape(str(small_disk))} .*not enough space",
    ):
        cache.copy_to(small_disk)
    assert cache_files(small_disk) == []


# --- geoloc cache-images ------------------------------------------------------------------------


def test_cache_images_caches_the_whole_folder_for_training_to_open(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    paths = write_images(tmp_path / "train" / "sub", 4)
    assert (
        main(
            [
                "cache-images",
                "--train-dir",
                str(tmp_path / "train"),
                "--image-size",
                "32",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--num-workers",
                "1",
            ]
        )
        == 0
    )
    assert re.search(r"images-32px-\w+\.u8: 4 images at 32 px, 0 undecodable, built in \d+\.\d s", caplog.text)
    monkeypatch.setattr(image_cache, "_build", lambda *a: pytest.fail("the command's cache was not found"))
    cache = ImageCache.build_or_open(list_images(tmp_path / "train"), 32, tmp_path / "cache")
    assert torch.equal(cache.get(cache.index_of(paths[2])), read_image(paths[2], 32))


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--image-size", "31", "31 is less than the minimum of 32"),
        ("--image-size", "64.0", "'64.0' is not of type 'integer'"),
        ("--num-workers", "-1", "-1 is less than the minimum of 0"),
    ],
)
def test_cache_images_refuses_bad_values_in_the_schemas_words(tmp_path, capsys, flag, value, message):
    args = {"--train-dir": str(tmp_path), "--image-size": "64", "--cache-dir": str(tmp_path / "c"), flag: value}
    with pytest.raises(SystemExit) as exit_:
        main(["cache-images", *[item for pair in args.items() for item in pair]])
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err) == f"geoloc cache-images: error: argument {flag}: {message}"


def test_cache_images_of_a_missing_folder_is_one_error_line(tmp_path, capsys):
    assert (
        main(
            ["cache-images", "--train-dir", str(tmp_path / "nope"), "--image-size", "64", "--cache-dir", str(tmp_path)]
        )
        == 2
    )
    assert last_line(capsys.readouterr().err) == (
        f"geoloc cache-images: error: image folder {tmp_path / 'nope'} does not exist or is not a folder"
    )
