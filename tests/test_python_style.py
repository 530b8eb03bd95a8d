"""The Python sources are as ruff formats them and free of its lints (settings in pyproject.toml),
as `make lint` checks. After `ruff format .` and `ruff check --fix .` both tests pass."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"


@pytest.mark.parametrize("command", [["format", "--check"], ["check", "--output-format", "concise"]])
def test_ruff_finds_nothing_to_change(command):
    result = subprocess.run([str(RUFF), *command, "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
