"""The code stays typed (mypy --strict) and lint-clean (ruff): part of the test suite, so CI holds it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_mypy_strict_is_clean() -> None:
    r = run(str(BIN / "mypy"), "--strict", "tldops_mta")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_is_clean() -> None:
    r = run(str(BIN / "ruff"), "check", "tldops_mta", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_runtime_state_is_tracked() -> None:
    r = run("git", "ls-files", "state")
    if r.returncode != 0:  # not a git checkout (an unpacked release): nothing to check
        return
    assert r.stdout.split() in ([], ["state/.gitkeep"]), r.stdout
