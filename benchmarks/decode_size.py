"""Training below the stored resolution: decoding at image_size (before) vs at `decode_size` (after).

512 px JPEGs (smooth noise with light sensor noise, quality 90: about what SF-XS's cost to
decode) are decoded as a training loader worker does (`data.read_image`, JPEG draft mode),
then one batch goes through `train.augment.augment_batch` on the training device (--device). For each
image_size: the side decoded at, decoded images/s in this process, and the augmentation's
milliseconds per batch; the speed a loader worker gives is the decoding's.

    python benchmarks/decode_size.py                     # image sizes 64, 128, 224
    python benchmarks/decode_size.py --image-sizes 64 --images 100
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
import torch
from common import OUT, machine, print_table, synchronize, write_json
from PIL import Image

from geoloc.data.images import decode_size, read_image
from geoloc.train.augment import augment_batch

STORED = 512
COLUMNS = ["image_size", "variant", "decoded_px", "decode_img_s", "augment_ms_per_batch"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--images", type=int, default=200, help="JPEGs decoded per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the augmentation runs (default: cuda when there is one)",
    )
    return parser.parse_args()


def write_jpegs(folder, count: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index:04d}.jpg"
        if not path.is_file():
            smooth = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            pixels = np.asarray(smooth.resize((STORED, STORED), Image.Resampling.BICUBIC), dtype=np.int16)
            noisy = pixels + rng.normal(0, 4, pixels.shape).astype(np.int16)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def best_seconds(function, repeats: int) -> float:
    return min(timeit.repeat(function, number=1, repeat=repeats))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # decoding as one loader worker does
    device = torch.device(args.device)
    paths = write_jpegs(OUT / "decode_size_jpegs", args.images)
    rows = []
    for image_size in args.image_sizes:
        for variant, side in (("before", image_size), ("after", decode_size(image_size, STORED))):
            seconds = best_seconds(lambda side=side: [read_image(path, side) for path in paths], args.repeats)
            batch = torch.stack([read_image(path, side) for path in paths[: args.batch_size]]).to(device)

            def augment(batch=batch, image_size=image_size):
                augment_batch(batch, image_size, torch.Generator(device).manual_seed(0))
                synchronize(device)

            augment()  # warm-up: kernels, allocator
            augment_seconds = best_seconds(augment, args.repeats)
            rows.append(
                {
                    "image_size": image_size,
                    "variant": variant,
                    "decoded_px": side,
                    "decode_img_s": len(paths) / seconds,
                    "augment_ms_per_batch": 1000 * augment_seconds,
                }
            )
    print_table(rows, COLUMNS)
    write_json(OUT / "decode_size.json", {"machine": machine(device), "settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
