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


def test_the_smtp_process_does_not_load_what_only_the_worker_needs() -> None:
    # bench/intake's idle memory figure (< 60 MB) rests on this: the SMTP process imports
    # work_due to ask when work is due, and must not pull in the worker's libraries.
    # What `tldops serve` imports: the command line, its process group, the SMTP process.
    code = ("import sys, tldops_mta.cli.main, tldops_mta.cli.processes, tldops_mta.daemon.serve; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    # ctypes (libffi): only the children use it, to take their CPU class (child_setup).
    assert loaded.isdisjoint({"vobject", "cryptography", "dkim", "nacl", "dns", "httpx", "aiosmtplib",
                              "ctypes"})


def test_the_spool_appender_loads_neither_asyncio_nor_structlog() -> None:
    # The appender commits what the SMTP loop waits for; it runs no event loop and logs
    # nothing itself (docs/architecture.md, the three processes). Nor OpenSSL's libcrypto
    # (hashlib) before a reply to a one-time address asks for a token's hash (store/lanes).
    code = ("import sys, tldops_mta.intake.appender; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    assert loaded.isdisjoint({"asyncio", "structlog", "_hashlib", "hashlib"})
