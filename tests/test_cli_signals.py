"""A failing or stopped command ends with its one error line, from its first second on (geoloc.cli)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from geoloc import cli
from geoloc.data import images
from geoloc.errors import GeolocError


def test_a_stop_signal_while_torch_imports_ends_with_the_error_line_and_exit_3(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geoloc.cli",
            "train",
            "--train-dir",
            str(tmp_path),
            "--val-dir",
            str(tmp_path),
            "--out-dir",
            str(tmp_path / "out"),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--run-name",
            "r",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.4)  # torch takes seconds to import, and train's module imports it
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == cli.EXIT_STOPPED, err
    assert err.strip().splitlines()[-1] == (
        "geoloc train: error: stopped by signal 15 (SIGTERM) before it finished; rerun it"
    )
    assert not (tmp_path / "out").exists()


LATE_LOGGER = (
    "import atexit, logging, sys\n"
    "from geoloc import cli\n"
    "atexit.register(lambda: logging.getLogger('a.library').info('logged from an exit handler'))\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


def test_nothing_is_logged_after_the_error_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LATE_LOGGER,
            "report",
            "--recalls",
            str(tmp_path / "none.csv"),
            "--runs-dir",
            str(tmp_path),
            "--config",
            str(tmp_path / "none.yaml"),
            "--out",
            str(tmp_path / "report.html"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == cli.EXIT_BAD_INPUT
    assert result.stderr.strip().splitlines()[-1].startswith("geoloc report: error: ")


def test_the_pixel_cap_flag_reaches_every_image_decoder(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("RGB", (3000, 2000)).save(path)
    monkeypatch.delenv(images.MAX_PIXELS_VARIABLE, raising=False)
    assert images.read_image(path, 64).shape == (3, 64, 64)  # 6 megapixels: under the default 50
    monkeypatch.setenv(images.MAX_PIXELS_VARIABLE, "")  # restored after the test, whatever main sets there
    cli.main(
        [
            "report",
            "--max-image-megapixels",
            "5",
            "--recalls",
            str(tmp_path / "none.csv"),
            "--runs-dir",
            str(tmp_path),
            "--config",
            str(tmp_path / "none.yaml"),
            "--out",
            str(tmp_path / "r.html"),
        ]
    )
    logging.disable(logging.NOTSET)
    assert cli.MAX_PIXELS_VARIABLE == images.MAX_PIXELS_VARIABLE
    with pytest.raises(GeolocError) as refused:
        images.read_image(path, 64)
    assert str(refused.value) == (
        f"image {path} is 3000 x 2000 = 6.0 megapixels, more than the 5 allowed: shrink "
        "it, or raise --max-image-megapixels ($GEOLOC_MAX_IMAGE_PIXELS)"
    )
