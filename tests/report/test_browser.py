"""The rendered report in headless Chromium: loads clean, fetches nothing, shows tables and plots.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on
fd 3, replies on fd 4, NUL-separated JSON), so no port and no websocket library are needed.
Install on Debian: apt-get install -y --no-install-recommends chromium
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_render import REFERENCE, render, write_results_tree

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
]
TIMEOUT_S = 60.0
LOCAL_SCHEMES = ("file:", "data:", "about:")


class Browser:
    """One headless Chromium; `send` returns a command's result, events are kept in `events`."""

    def __init__(self, profile: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipes() -> None:  # in the child: the protocol's fds 3 and 4
            high_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self._process = subprocess.Popen(
            [CHROMIUM, *flags],
            preexec_fn=wire_pipes,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str) -> dict[str, Any]:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._receive())
        return next(e for e in self.events if e.get("method") == event)

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._from_browser, 1 << 20) if ready else b""
            if not chunk:
                raise RuntimeError("chromium closed the pipe or did not answer in time")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def open_page(html: Path, screenshot: Path, profile: Path) -> dict[str, Any]:
    """Load `html`, return {"problems", "requests", "dom"} and write a full-page screenshot."""
    browser = Browser(profile)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session)
        browser.send(
            "Emulation.setDeviceMetricsOverride", session, width=1280, height=900, deviceScaleFactor=1, mobile=False
        )
        browser.events.clear()  # only what the page itself does counts, e.g. its load event
        browser.send("Page.navigate", session, url=html.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        dom = browser.send("Runtime.evaluate", session, expression=DOM_PROBE, returnByValue=True)["result"]["value"]
        height = min(dom["height"], 16000)
        browser.send(
            "Emulation.setDeviceMetricsOverride", session, width=1280, height=height, deviceScaleFactor=1, mobile=False
        )
        shot = browser.send("Page.captureScreenshot", session, format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = list(browser.events)
    finally:
        browser.close()
    return {"problems": problems(events), "requests": requests(events), "dom": dom}


# What the page shows, read in the page itself.
DOM_PROBE = """(() => ({
  sections: [...document.querySelectorAll("main > section")].map(s => s.id),
  tables: document.querySelectorAll("table").length,
  tableRows: document.querySelectorAll("#recalls tbody tr").length,
  svgs: [...document.querySelectorAll("figure.plot svg")].map(s => s.getBoundingClientRect().width),
  images: document.images.length,
  brokenImages: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,
  scripts: document.querySelectorAll("script").length,
  configText: document.querySelector("pre.config")?.textContent ?? "",
  height: document.documentElement.scrollHeight,
}))()"""


def problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors and warnings, uncaught exceptions and browser log errors (e.g. CSP)."""
    found = []
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif event.get("method") == "Runtime.exceptionThrown":
            found.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            found.append("log: " + params["entry"]["text"])
    return found


def requests(events: list[dict[str, Any]]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]


def external(urls: list[str]) -> list[str]:
    return [url for url in urls if not url.startswith(LOCAL_SCHEMES)]


def test_harness_sees_console_errors_and_external_requests(tmp_path):
    # Guards the checks below: a page that misbehaves must be caught.
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><title>bad</title><script>console.error("boom")</script>'
        '<img src="http://127.0.0.1:9/pixel.png">',
        encoding="utf-8",
    )
    seen = open_page(page, tmp_path / "bad.png", tmp_path / "profile")
    assert any("boom" in problem for problem in seen["problems"])
    assert external(seen["requests"]) == ["http://127.0.0.1:9/pixel.png"]


def test_report_loads_clean_and_shows_tables_plots_and_thumbnails(tmp_path):
    tree = write_results_tree(tmp_path, missing=("convnext_tiny-imagenet-amp-s0",))
    report = tmp_path / "report.html"
    render(tree, report)
    screenshot = Path(os.environ.get("GEOLOC_REPORT_SCREENSHOT", tmp_path / "report.png"))
    seen = open_page(report, screenshot, tmp_path / "profile")
    dom = seen["dom"]

    assert seen["problems"] == []
    assert external(seen["requests"]) == []
    assert dom["sections"] == [
        "conclusions",
        "recalls",
        "cost",
        "plots",
        "retrievals",
        "uncertainty",
        "published",
        "provenance",
    ]
    assert dom["tableRows"] == 14  # (4 configurations + 3 untrained baselines) x 2 test sets
    # recall vs time, recall vs memory, recall@k, validation curves
    assert len(dom["svgs"]) == 4 and all(width > 600 for width in dom["svgs"])
    assert dom["images"] > 40 and dom["brokenImages"] == 0
    assert dom["scripts"] == 0
    assert "note: '<script>alert(1)</script>'" in dom["configText"]  # shown as text, never run
    assert REFERENCE in dom["configText"]
    assert screenshot.stat().st_size > 50_000
