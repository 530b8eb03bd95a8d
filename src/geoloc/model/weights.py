"""Pretrained weights: the registry, the checked download (`geoloc fetch-weights`), safe loading.

The registry (`resources/weights.yaml`) maps backbone -> pretraining -> {url, sha256, size,
format}. `sha256` is the full digest, or a hex prefix of at least 8 characters where only
that is published (torchvision's file names embed one), or null where nothing is known: the
download is then accepted and its digest printed so the user can pin it. `size` is the
number of bytes, or null.

A download goes to a temporary file next to its destination and is moved into place only
after its size and hash check out; a file already in place with the right hash is kept, so
a file put there by hand (the fallback when a host refuses scripted downloads, Google Drive
in particular) is accepted.

Weights files are read with `torch.load(weights_only=True)` (or as safetensors): they hold
tensors only, and a file that would run code when unpickled is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import http.client
import http.cookiejar
import logging
import pickle
import re
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from tqdm import tqdm

from geoloc import __version__
from geoloc.arguments import integer

if TYPE_CHECKING:
    import torch
from geoloc.atomic import atomic_path
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)

FORMATS = ("torchvision", "places365", "gldv2", "timm")
# Containers a format's checkpoints may wrap their state dict in: CSAIL's Places365 ResNets
# are training checkpoints, the benchmark's Places365/GLDv2 copies plain state dicts; both
# load. timm checkpoints may be training checkpoints too.
_CONTAINERS = {"torchvision": (), "places365": ("state_dict",), "gldv2": ("state_dict",),
               "timm": ("state_dict", "model")}
_DATA_PARALLEL_PREFIX = "module."
_MIN_HASH_PREFIX = 8
_SHA256_OR_PREFIX = re.compile(rf"[0-9a-f]{{{_MIN_HASH_PREFIX},64}}")
_CHUNK = 1 << 20
_TIMEOUT_SECONDS = 60
_MAX_PAGE_BYTES = 2 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- registry

def lookup(registry_path: Path, backbone: str, pretraining: str) -> dict[str, Any]:
    """The checked registry entry {url, sha256, size, format} of `backbone` / `pretraining`."""
    registry_path = Path(registry_path)
    try:
        registry = yaml.safe_load(registry_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GeolocError(f"cannot read weights registry {registry_path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise GeolocError(f"weights registry {registry_path} is not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(registry, dict):
        raise GeolocError(f"weights registry {registry_path} must map backbone names to pretrainings")
    if pretraining == "none":
        raise GeolocError("pretraining 'none' means random initialisation: there are no weights to fetch")
    if backbone not in registry:
        raise GeolocError(f"weights registry {registry_path} has no backbone {backbone!r}; "
                          f"it has: {', '.join(map(str, registry)) or 'nothing'}")
    pretrainings = registry[backbone] or {}
    if not isinstance(pretrainings, dict) or pretraining not in pretrainings:
        known = ", ".join(map(str, pretrainings)) if isinstance(pretrainings, dict) else "nothing"
        raise GeolocError(f"weights registry {registry_path} has no pretraining {pretraining!r} for "
                          f"{backbone}; known pretrainings for {backbone}: {known or 'none'}")
    return _checked_entry(pretrainings[pretraining], f"{registry_path}: {backbone}.{pretraining}")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what and where (its own message adds the line and a caret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return problem if mark is None else f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _checked_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise GeolocError(f"{where} must be a mapping with url, sha256, size and format")
    missing = [key for key in ("url", "sha256", "size", "format") if key not in entry]
    if missing:
        raise GeolocError(f"{where} lacks {', '.join(missing)} (write null for an unknown sha256 or size)")
    url, digest, size, fmt = entry["url"], entry["sha256"], entry["size"], entry["format"]
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise GeolocError(f"{where}.url must be an http(s):// or file:// URL, got {url!r}")
    if isinstance(digest, (int, float)) and not isinstance(digest, bool):
        # An all-digit digest written without quotes is a number to YAML (leading zeros lost).
        raise GeolocError(f"{where}.sha256 was read as a number: write the digest in quotes "
                          "(sha256: \"0123...\"), as YAML reads unquoted digits as a number")
    if digest is not None and not (isinstance(digest, str) and _SHA256_OR_PREFIX.fullmatch(digest)):
        raise GeolocError(f"{where}.sha256 must be null or {_MIN_HASH_PREFIX} to 64 lowercase hex digits, "
                          f"got {digest!r}")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        raise GeolocError(f"{where}.size must be null or a positive number of bytes, got {size!r}")
    if fmt not in FORMATS:
        raise GeolocError(f"{where}.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"url": url, "sha256": digest, "size": size, "format": fmt}


# ---------------------------------------------------------------- download

class _TransientError(Exception):
    """A download failure that another attempt may not repeat."""


def fetch(entry: Mapping[str, Any], out: Path, retries: int = 3, *, backoff_seconds: float = 2.0) -> str:
    """Make `out` hold the file of registry `entry`, checked; return its sha256.

    A file already at `out` that passes the checks is kept; one that does not is deleted at
    once, so that no later step can use it, even when the download below fails. The file is
    then downloaded (tried `retries` more times after a network failure or a short read) and
    moved into place only when its size and sha256 match the entry.
    """
    out = Path(out)
    entry = _checked_entry(dict(entry), f"weights entry for {out}")
    if out.is_file():
        digest = sha256_file(out)
        problem = _mismatch(entry, digest, out.stat().st_size)
        if problem is None:
            log.info("%s is already in place (sha256 %s)", out, digest)
            return digest
        out.unlink()
        log.warning("deleted %s: %s; downloading it again", out, problem)
    with atomic_path(out) as tmp:
        for attempt in range(retries + 1):
            try:
                digest, size = _download(entry["url"], tmp, entry["size"], out)
                break
            except _TransientError as exc:
                if attempt == retries:
                    raise GeolocError(f"downloading {entry['url']} failed after {attempt + 1} attempts: {exc}") from exc
                log.warning("downloading %s failed (%s); retrying", entry["url"], exc)
                time.sleep(backoff_seconds * (attempt + 1))
        problem = _mismatch(entry, digest, size)
        if problem is not None:
            raise GeolocError(f"download of {entry['url']} rejected and deleted: {problem}")
    if entry["sha256"] is None:
        log.warning("the registry pins no sha256 for %s; the downloaded file has sha256 %s "
                    "(write it into the registry to pin it)", entry["url"], digest)
    return digest


def _mismatch(entry: Mapping[str, Any], digest: str, size: int) -> str | None:
    """Why a file with this digest and size is not the entry's file, or None."""
    if entry["size"] is not None and size != entry["size"]:
        return f"it has {size} bytes, expected {entry['size']}"
    expected = entry["sha256"]
    if expected is not None and not digest.startswith(expected):
        return f"sha256 mismatch: expected {expected}, got {digest}"
    return None


def verify_weights(path: Path, expected_sha256: str | None) -> str:
    """The sha256 of weights file `path`, checked against `expected_sha256` (the registry's
    pinned digest or hex prefix of at least 8 digits; None checks nothing)."""
    path = Path(path)
    if expected_sha256 is not None and not (isinstance(expected_sha256, str)
                                            and _SHA256_OR_PREFIX.fullmatch(expected_sha256)):
        raise GeolocError(f"the pinned sha256 of {path} must be {_MIN_HASH_PREFIX} to 64 lowercase hex digits, "
                          f"got {expected_sha256!r}")
    if not path.is_file():
        raise GeolocError(f"weights file {path} does not exist")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise GeolocError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    if expected_sha256 is not None and not digest.startswith(expected_sha256):
        raise GeolocError(f"weights file {path} has sha256 {digest}, but the registry pins {expected_sha256}: "
                          "it is another file (delete it and run fetch-weights again)")
    return digest


def _download(url: str, dest: Path, expected_size: int | None, final: Path) -> tuple[str, int]:
    """Stream `url` into `dest` (on its way to `final`); return (sha256, bytes).

    Raises _TransientError for failures that another attempt may not repeat.
    """
    try:
        with _open_file_response(url, final) as response:
            announced = response.headers.get("Content-Length", "")
            length = int(announced) if announced.isdigit() else None
            digest, received = _stream(response, dest, length or expected_size, final.name)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from exc
        raise GeolocError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except http.client.IncompleteRead as exc:
        raise _TransientError(f"truncated: the connection closed {exc.expected} bytes early") from exc
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise _TransientError(str(getattr(exc, "reason", exc)) or type(exc).__name__) from exc
    for promised in (length, expected_size):
        if promised is not None and received < promised:
            raise _TransientError(f"truncated: received {received} of {promised} bytes")
    return digest, received


def _open_file_response(url: str, final: Path):
    """The response that carries the file itself, past Google Drive's confirmation page."""
    # Cookies matter for Google Drive: its confirmation step may set one.
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    response = _open(opener, url)
    if not _is_web_page(response):
        return response
    with response:
        page = response.read(_MAX_PAGE_BYTES).decode("utf-8", errors="replace")
    confirmed = _drive_confirmation_url(page, response.geturl(), cookies)
    if confirmed is not None:
        response = _open(opener, confirmed)
        if not _is_web_page(response):
            return response
        response.close()
    raise GeolocError(f"{url} answered with a web page instead of the file (Google Drive does so when its "
                      f"download quota is exceeded or the file is not shared). Download the file with a browser "
                      f"and put it at {final}: geoloc fetch-weights accepts a file in place when its sha256 "
                      f"matches the registry")


def _stream(response, dest: Path, expected_size: int | None, label: str) -> tuple[str, int]:
    digest, received = hashlib.sha256(), 0
    with open(dest, "wb") as handle, tqdm(total=expected_size, unit="B", unit_scale=True, unit_divisor=1024,
                                           desc=label, disable=None) as progress:
        while chunk := response.read(_CHUNK):
            handle.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            progress.update(len(chunk))
    return digest.hexdigest(), received


def _open(opener: urllib.request.OpenerDirector, url: str):
    request = urllib.request.Request(url, headers={"User-Agent": f"geoloc/{__version__}"})
    return opener.open(request, timeout=_TIMEOUT_SECONDS)


def _is_web_page(response) -> bool:
    return response.headers.get_content_type() == "text/html"


class _FormParser(html.parser.HTMLParser):
    """Collects the forms of a page: action and hidden/submitted inputs."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.forms.append((values.get("action", ""), {}))
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1][1][values["name"]] = values.get("value", "")
        elif tag == "a" and "href" in values:
            self.links.append(values["href"])


def _drive_confirmation_url(page: str, page_url: str, cookies: http.cookiejar.CookieJar) -> str | None:
    """The URL that confirms a Google Drive "can't scan this file for viruses" page, or None.

    Drive has used three forms of it: a form posting to drive.usercontent.google.com with
    hidden id/confirm/uuid inputs; a link carrying `confirm=<token>`; a `download_warning`
    cookie whose value is the token.
    """
    parser = _FormParser()
    parser.feed(page)
    for action, inputs in parser.forms:
        if "confirm" in inputs and "id" in inputs:
            return urllib.parse.urljoin(page_url, action) + "?" + urllib.parse.urlencode(inputs)
    for href in parser.links:
        if "confirm=" in href:
            return urllib.parse.urljoin(page_url, href)
    for cookie in cookies:
        if cookie.name.startswith("download_warning") and cookie.value:
            return _with_query(page_url, confirm=cookie.value)
    return None


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# ---------------------------------------------------------------- loading

def load_state_dict(path: Path, fmt: str, *, drop_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of weights file `path` in format `fmt`, named as the library's own network.

    Containers are unwrapped and DataParallel's `module.` prefix removed; keys starting with
    one of `drop_prefixes` (a classifier the caller cuts off) are left out.
    """
    import torch  # here, not at the top: the workflow imports this module for `lookup` alone

    if fmt not in FORMATS:
        raise GeolocError(f"unknown weights format {fmt!r}; known formats: {', '.join(FORMATS)}")
    path = Path(path)
    content = _read_tensors(path)
    for container in _CONTAINERS[fmt]:
        if isinstance(content, Mapping) and isinstance(content.get(container), Mapping):
            content = content[container]
            break
    if not isinstance(content, Mapping):
        raise GeolocError(f"weights file {path} holds a {type(content).__name__}, not a state dict ({fmt} format)")
    state = {}
    for key, value in content.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise GeolocError(f"weights file {path} is not a {fmt} state dict: entry {key!r} is not a tensor")
        name = key.removeprefix(_DATA_PARALLEL_PREFIX)
        if not name.startswith(drop_prefixes):
            state[name] = value
    return state


def _read_tensors(path: Path) -> Any:
    if not path.is_file():
        raise GeolocError(f"weights file {path} does not exist")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise GeolocError(f"weights file {path} is a damaged safetensors file: {exc}") from exc
    return read_torch_file(path, "weights file")


def read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)` with errors that say what is wrong with `what` `path`.

    A file whose pickle names Python code (anything but tensors and plain containers) is
    refused before any of it runs.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = _python_globals(path, str(exc))
        if code:
            raise GeolocError(f"{what} {path} was refused: loading it would run the Python code it "
                              f"names ({', '.join(code)}); geoloc loads tensors only") from exc
        raise GeolocError(f"{what} {path} is not a readable PyTorch file (its pickle holds more than "
                          "tensors and plain containers)") from exc
    except EOFError as exc:
        raise GeolocError(f"{what} {path} is not a readable PyTorch file: it is empty or cut short") from exc
    except (RuntimeError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise GeolocError(f"{what} {path} is not a readable PyTorch file: {exc}") from exc


def _python_globals(path: Path, message: str) -> list[str]:
    """The Python globals (module.name) a checkpoint's pickle names beyond tensors and containers.

    Asked of torch for zip checkpoints; for the legacy format, read from its error message
    (its other advice, to load with weights_only=False, is exactly what must not happen).
    """
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError):
        return re.findall(r"GLOBAL ([\w.]+)", message)


def _is_safetensors(path: Path) -> bool:
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_length = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and header_length < path.stat().st_size


# ---------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, required=True, help="weights registry YAML")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--pretraining", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the weights file goes")
    parser.add_argument("--retries", type=integer(minimum=0), default=3,
                        help="further attempts after a failed download")


def run(args: argparse.Namespace) -> int:
    entry = lookup(args.registry, args.backbone, args.pretraining)
    digest = fetch(entry, args.out, retries=args.retries)
    print(f"{args.out} sha256 {digest}")
    return 0
