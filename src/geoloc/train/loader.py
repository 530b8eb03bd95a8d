"""The training DataLoader: decoding in worker processes, pinned memory, prefetching.

A worker's error (an image that cannot be decoded) travels back as a value and is raised by
the main process with its one-line message: raised in the worker, it would reach the user
wrapped in the worker's traceback.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from geoloc.device import init_loader_worker
from geoloc.errors import GeolocError

_PREFETCH_BATCHES = 4  # per worker: rides out a slow image or a file-system hiccup


class _SamplesOrErrors(Dataset):
    """(image, class, "") or, when the image cannot be read, (blank image, class, the error)."""

    def __init__(self, dataset: Dataset, image_size: int) -> None:
        self.dataset, self.image_size = dataset, image_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            image, label = self.dataset[index]
            return image, label, ""
        except GeolocError as exc:
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), index[0], str(exc)


def training_loader(
    dataset: Dataset, batch_sampler, image_size: int, num_workers: int, device: torch.device
) -> DataLoader:
    return DataLoader(
        _SamplesOrErrors(dataset, image_size),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=init_loader_worker,
        prefetch_factor=_PREFETCH_BATCHES if num_workers else None,
        # Its own generator: creating a loader must not advance the global RNG.
        generator=torch.Generator(),
    )


def batches(loader: DataLoader):
    """(images, labels) of each batch; the first error a batch carries is raised here."""
    for images, labels, errors in loader:
        if failed := next((error for error in errors if error), None):
            raise GeolocError(failed)
        yield images, labels
