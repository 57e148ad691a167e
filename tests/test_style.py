"""Code style: black, isort and flake8 (settings in pyproject.toml and .flake8, line length 120) pass on the repo."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "tool, args",
    [("black", ["--check", "--quiet", "."]), ("isort", ["--check-only", "--quiet", "."]), ("flake8", ["."])],
)
def test_style(tool, args):
    result = subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{tool} {' '.join(args)}:\n{result.stdout}{result.stderr}"
