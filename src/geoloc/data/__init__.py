"""Stage 1, data: the images and where they were taken, before any network.

- `names`: the `@`-separated image names of every dataset (UTM coordinates, heading);
- `listing`, `packed`: a folder's images in CosPlace's order, their names packed in one buffer;
- `images`: decoding into RGB tensors;
- `groups`: CosPlace's classes and groups of the training images, with their cache;
- `datasets`: the training set of one group, the test and validation sets;
- `catalog`: the named datasets (resources/datasets.yaml and the config's `datasets:`), their folders and protocol;
- `image_cache`, `cache_images`: the decoded-image cache and `geoloc cache-images`, which fills it;
- `synthetic`: the synthetic cities (`geoloc synth`).

It imports nothing from the later stages (`model`, `train`, `evaluate`, `report`); of the top of
the package, only its plumbing (`atomic`, `errors`, `arguments`, ...: tests/test_layout.py).
"""
