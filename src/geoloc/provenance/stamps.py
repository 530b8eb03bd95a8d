"""Stamps: what each job of the workflow is expected to be made from, as a small file it reads.

Snakemake reruns a job whose settings changed only by comparing them with its own records in
`.snakemake/metadata` of the working directory; a fresh clone, another `--directory`,
`--cleanup-metadata`, `--rerun-triggers mtime` or a moved results folder lose those records, and
a dataset changed in place is no input of any job. So the workflow writes, when it parses the
config, one stamp per job (`<results>/stamps/<rule>/<job>.json`): the job's settings (what its
rule's `settings` params hold) and a fingerprint of each image folder and file it reads
(`geoloc.data.listing.listing_fingerprint`: names, sizes and modification times). Each job
takes its stamp as an input. A stamp is rewritten only when its content changes, so its time
is when what the job depends on last changed, and a stamp newer than the job's outputs reruns
the job under every `--rerun-triggers`, with or without metadata.

A stamp written for the first time (a new job, or the first run of a study made before stamps)
gets an old time (the epoch): a stamp records what a job was made from; only a change of it
reruns the job.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geoloc.atomic import atomic_write_text
from geoloc.data.listing import listing_fingerprint
from geoloc.provenance import sha256_of_file

FIRST_TIME = 0  # seconds since the epoch: the time of a stamp that did not exist before


def expected(
    settings: str | Mapping[str, Any],
    folders: Mapping[str, str | os.PathLike] | None = None,
    files: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """A job's stamp content: its settings, the fingerprint of each image folder it reads (by a
    name of the caller's choice, e.g. "train") and the sha256 of each other file it reads.

    Only the names given and the contents count, never where the folders lie: a datasets folder
    moved elsewhere (times kept) leaves every stamp as it was.
    """
    return {
        "settings": settings,
        "folders": {name: folder_fingerprint(Path(folder)) for name, folder in sorted((folders or {}).items())},
        "files": {name: file_fingerprint(Path(path)) for name, path in sorted((files or {}).items())},
    }


@functools.cache
def folder_fingerprint(folder: Path) -> dict[str, int | str]:
    """`listing_fingerprint`, once per folder and process (many jobs read one test set)."""
    return listing_fingerprint(folder)


@functools.cache
def file_fingerprint(path: Path) -> dict[str, int | str]:
    return {"bytes": path.stat().st_size, "sha256": sha256_of_file(path)}


def write_stamp(path: str | os.PathLike, content: Mapping[str, Any]) -> bool:
    """Write `content` to the stamp `path` unless it holds it already; True when it was written.

    Written atomically, as sorted JSON: equal content is equal text. A stamp that did not exist
    gets the time FIRST_TIME (see the module docstring).
    """
    path = Path(path)
    text = json.dumps(content, sort_keys=True, indent=1) + "\n"
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
        existed = True
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        existed = path.exists()
    atomic_write_text(path, text)
    if not existed:
        os.utime(path, (FIRST_TIME, FIRST_TIME))
    return True


def write_stamps(folder: str | os.PathLike, stamps: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Write each stamp `folder/<name>.json` whose content changed; the names of those written."""
    return [name for name, content in stamps.items() if write_stamp(Path(folder) / f"{name}.json", content)]
