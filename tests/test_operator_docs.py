"""README.md and docs/ tell a new operator what really happens: commands that touch only
this daemon, what the walkthrough's stand-in prints, a clean-up that keeps tracked files."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_command_in_the_docs_hits_every_instance_on_a_host() -> None:
    # pkill -f / pgrep -f match any process whose command line says so: every daemon, test
    # and editor on the host. The pid file names this daemon.
    for doc in DOCS:
        found = re.findall(r"\bp(?:kill|grep)\b[^\n`]*", doc.read_text())
        assert not found, f"{doc.name}: {found}"
    readme = (ROOT / "README.md").read_text()
    assert "kill -HUP $(cat state/tldops.pid)" in readme


def test_the_readme_shows_person_erase_with_its_reason_and_what_the_suite_needs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "tldops person erase ADDR --reason R" in readme
    needs = readme.split("Run the whole test suite:", 1)[1].split("## Using it", 1)[0]
    for what in ("root", "postfix", "systemd", "python3-venv"):
        assert what in needs.lower(), what


def test_the_walkthrough_quotes_the_stand_in_and_cleans_up_without_deleting_tracked_files() -> None:
    walkthrough = (ROOT / "docs" / "walkthrough.md").read_text()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo_iana.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        printed = proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
    # The walkthrough runs it on its default port, 8043 (examples/demo.toml's rdap_url).
    assert f"# prints: {printed.replace(f':{port}/', ':8043/')}" in walkthrough, printed
    # Stops the README's daemon first (same port, same state/), and only by its pid file.
    step1 = walkthrough.split("## 1.", 1)[1].split("## 2.", 1)[0]
    assert step1.index("kill $(cat state/tldops.pid)") < step1.index("tldops serve")
    cleanup = walkthrough.split("## Clean up", 1)[1]
    assert "kill $(cat state/tldops.pid)" in cleanup
    assert "rm -r state" not in cleanup and "git clean -fdX state/" in cleanup  # keeps state/.gitkeep
