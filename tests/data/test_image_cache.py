"""geoloc.data.image_cache: decoded images cached once, keyed by the files; the dataset reading it."""

import multiprocessing
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.data import image_cache
from geoloc.data.datasets import TrainGroupDataset
from geoloc.data.image_cache import ImageCache
from geoloc.data.images import read_image
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


def test_concurrent_builders_both_get_a_whole_cache(tmp_path):
    paths = write_images(tmp_path / "imgs", 30)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    builders = [context.Process(target=_build_in_process, args=(paths, tmp_path / "cache", queue))
                for _ in range(2)]
    for process in builders:
        process.start()
    results = [queue.get(timeout=60) for _ in builders]
    for process in builders:
        process.join(timeout=60)
        assert process.exitcode == 0
    expected = [read_image(path, SIZE).numpy().tobytes() for path in paths]
    assert results == [expected, expected]
    assert len(cache_files(tmp_path / "cache")) == 2


def test_without_file_locks_the_build_still_completes(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(image_cache.fcntl, "flock", no_locks)
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert torch.equal(cache.get(1), read_image(paths[1], SIZE))


def test_pickled_cache_carries_no_pixels_and_reads_after_unpickling(tmp_path):
    paths = write_images(tmp_path / "imgs", 3)
    cache = ImageCache.build_or_open(paths, 64, tmp_path / "cache")
    cache.get(0)  # maps the file in this process
    payload = pickle.dumps(cache)
    assert len(payload) < 3 * 3 * 64 * 64  # less than the pixels: the map is not pickled
    assert torch.equal(pickle.loads(payload).get(2), cache.get(2))


def test_not_enough_disk_space_is_an_error_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda folder: SimpleNamespace(free=100))
    paths = write_images(tmp_path / "imgs", 2)
    with pytest.raises(GeolocError, match=r"need .* GiB in .*cache"):
        ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")


@pytest.mark.parametrize("paths, size, message", [
    ([], SIZE, "no images to cache"),
    ([Path("missing.jpg")], SIZE, "cannot read .*missing.jpg"),
    ([Path("any.jpg")], 0, "image size must be at least 1"),
])
def test_bad_requests_are_errors(tmp_path, paths, size, message):
    with pytest.raises(GeolocError, match=message):
        ImageCache.build_or_open(paths, size, tmp_path / "cache")


def test_asking_for_an_image_not_in_the_cache_is_an_error(tmp_path):
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths[:1], SIZE, tmp_path / "cache")
    with pytest.raises(GeolocError, match="does not hold .*img01.jpg"):
        cache.index_of(paths[1])


# --- the training dataset reading the cache ----------------------------------------------------


def test_dataset_with_cache_gives_the_decoded_images(tmp_path):
    paths = write_images(tmp_path / "imgs", 6)
    classes = [paths[:2], paths[2:6]]
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    cached = TrainGroupDataset(classes, SIZE, cache=cache)
    decoded = TrainGroupDataset(classes, SIZE)
    assert cached.images_per_class == decoded.images_per_class == [2, 4]
    for c, count in enumerate(decoded.images_per_class):
        for i in range(count):
            image, label = cached[(c, i)]
            assert label == c
            assert torch.equal(image, decoded[(c, i)][0])


def test_dataset_with_cache_works_in_loader_workers(tmp_path):
    paths = write_images(tmp_path / "imgs", 4)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    dataset = TrainGroupDataset([paths], SIZE, cache=cache)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[[(0, 3), (0, 1)]], num_workers=2)
    (images, labels), = list(loader)
    assert torch.equal(images[0], read_image(paths[3], SIZE)) and labels.tolist() == [0, 0]


def test_dataset_leaves_out_undecodable_images_and_emptied_classes(tmp_path):
    paths = write_images(tmp_path / "imgs", 5)
    for bad in (paths[1], paths[4]):
        bad.write_bytes(b"not an image")
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    dataset = TrainGroupDataset([paths[:3], [paths[4]], paths[3:4]], SIZE, cache=cache)
    assert dataset.classes == [[paths[0], paths[2]], [paths[3]]]
    assert dataset.images_per_class == [2, 1]
    assert torch.equal(dataset[(0, 1)][0], read_image(paths[2], SIZE))
    assert dataset[(1, 0)][1] == 1


def test_dataset_refuses_a_cache_of_another_size(tmp_path):
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    with pytest.raises(GeolocError, match="holds 8 px images, not 16 px"):
        TrainGroupDataset([paths], 16, cache=cache)


def test_a_killed_builds_temp_file_is_removed_by_the_next_build(tmp_path):
    paths = write_images(tmp_path / "imgs", 2)
    cache = ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    leftover = cache.data_file.with_name(f".{cache.data_file.name}.abc123.tmp")
    leftover.write_bytes(b"half a cache")
    cache.data_file.with_suffix(".json").unlink()  # as if killed before the index was written
    ImageCache.build_or_open(paths, SIZE, tmp_path / "cache")
    assert not leftover.exists()
    assert len(cache_files(tmp_path / "cache")) == 2
