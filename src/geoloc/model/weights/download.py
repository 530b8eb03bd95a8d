"""The checked download of a registry entry's file (`geoloc fetch-weights`), and hash checks.

A download goes to a temporary file next to its destination and is moved into place only
after its size and hash check out; a file already in place with the right hash is kept, so
a file put there by hand (the fallback when a host refuses scripted downloads, Google Drive
in particular) is accepted.
"""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import http.cookiejar
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from geoloc import __version__
from geoloc.atomic import atomic_path
from geoloc.errors import GeolocError
from geoloc.model.weights.registry import (
    MIN_HASH_PREFIX,
    SHA256_OR_PREFIX,
    checked_entry,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_SECONDS = 60
_MAX_PAGE_BYTES = 2 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
    entry = checked_entry(dict(entry), f"weights entry for {out}")
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
        log.warning(
            "the registry pins no sha256 for %s; the downloaded file has sha256 %s "
            "(write it into the registry to pin it)",
            entry["url"],
            digest,
        )
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
    if expected_sha256 is not None and not (
        isinstance(expected_sha256, str) and SHA256_OR_PREFIX.fullmatch(expected_sha256)
    ):
        raise GeolocError(
            f"the pinned sha256 of {path} must be {MIN_HASH_PREFIX} to 64 lowercase hex digits, got {expected_sha256!r}"
        )
    if not path.is_file():
        raise GeolocError(f"weights file {path} does not exist")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise GeolocError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    if expected_sha256 is not None and not digest.startswith(expected_sha256):
        raise GeolocError(
            f"weights file {path} has sha256 {digest}, but the registry pins {expected_sha256}: "
            "it is another file (delete it and run fetch-weights again)"
        )
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
    raise GeolocError(
        f"{url} answered with a web page instead of the file (Google Drive does so when its "
        f"download quota is exceeded or the file is not shared). Download the file with a browser "
        f"and put it at {final}: geoloc fetch-weights accepts a file in place when its sha256 "
        f"matches the registry"
    )


def _stream(response, dest: Path, expected_size: int | None, label: str) -> tuple[str, int]:
    digest, received = hashlib.sha256(), 0
    with (
        open(dest, "wb") as handle,
        tqdm(total=expected_size, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=None) as progress,
    ):
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
