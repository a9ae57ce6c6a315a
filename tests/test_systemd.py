"""systemd: the shipped units pass systemd-analyze (verify, and security at exposure <= 2.0),
and the real daemon, started by systemd-socket-activate (which passes sockets exactly as
systemd does: LISTEN_FDS, LISTEN_PID, fds from 3), serves the inherited socket and speaks
sd_notify on a real notify socket: READY=1 after the worker runs, watchdog pings from the
event loop with a STATUS= line, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from daemon_proc import DaemonProc
from notify_socket import NotifySocket
from smtp_checks import deliver, spool_count

from tldops_mta.daemon.systemd_notify import Notifier

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")
ACTIVATE = shutil.which("systemd-socket-activate")


def installed_units(where: Path) -> tuple[Path, Path]:
    """The units as an operator installs them, ExecStart pointing at this checkout's venv
    (systemd-analyze verify checks that the command exists)."""
    service = where / "tldops-mta.service"
    socket_unit = where / "tldops-mta.socket"
    tldops = Path(sys.executable).parent / "tldops"
    assert tldops.exists(), "the tldops console script is not installed in this venv"
    text = (UNITS / "tldops-mta.service").read_text()
    assert "/opt/tldops-mta/.venv/bin/tldops serve" in text
    service.write_text(text.replace("/opt/tldops-mta/.venv/bin/tldops", str(tldops)))
    shutil.copy(UNITS / "tldops-mta.socket", socket_unit)
    return service, socket_unit


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE, "systemd-analyze is needed (Debian package systemd)"
    service, socket_unit = installed_units(tmp_path)
    r = subprocess.run([ANALYZE, "verify", "--man=no", str(socket_unit), str(service)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tldops-mta" not in r.stderr, r.stderr  # no warning about our units


def test_service_exposure_is_two_or_lower(tmp_path: Path) -> None:
    assert ANALYZE
    service, _ = installed_units(tmp_path)
    r = subprocess.run([ANALYZE, "security", "--offline=true", str(service)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for tldops-mta\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_service_is_notify_with_watchdog_user_and_state_directory() -> None:
    s = unit_settings(UNITS / "tldops-mta.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["User"] == ["tldops-mta"] and s["StateDirectory"] == ["tldops-mta"]
    assert s["Requires"] == ["tldops-mta.socket"]
    sock = unit_settings(UNITS / "tldops-mta.socket")
    assert sock["ListenStream"] == ["127.0.0.1:2525", "[::1]:2525"]  # loopback only


def _log_time(rec: dict[str, object]) -> float:
    return dt.datetime.fromisoformat(str(rec["timestamp"])).timestamp()


def test_socket_activation_ready_watchdog_status_reload_stop(tmp_path: Path) -> None:
    assert ACTIVATE, "systemd-socket-activate is needed (Debian package systemd)"
    with socket.socket() as probe:  # a free port for the socket systemd would hold
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notify = NotifySocket(tmp_path / "notify")
    workdir = tmp_path / "d"
    workdir.mkdir()
    # server.listen says port 0: serving `port` proves the inherited socket is the one used.
    d = DaemonProc(workdir, {"worker.max_idle": 0.5}, wrapper=[
        ACTIVATE, "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={notify.path}",
        "-E", "WATCHDOG_USEC=400000"])
    try:
        d.start(wait_ready=False)
        d.wait_for("<non-json>", lambda r: f"Listening on 127.0.0.1:{port}" in str(r["text"]))
        # Socket activation: the first connection starts the daemon; it waits in the
        # kernel's queue meanwhile and is then served.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            c.settimeout(20)
            assert c.recv(512).startswith(b"220 ")
        d.wait_ready()
        ready_log = d.wait_for("ready")
        assert ready_log["systemd_sockets"] is True
        assert ready_log["listening"] == [f"127.0.0.1:{port}"]

        [ready] = notify.wait_for("READY", "1")
        assert ready.pid == d.proc.pid if d.proc else False
        assert ready.fields["STATUS"] == "spool 0 waiting, queue 0 open, outbox 0 queued"
        # READY=1 only once the worker of slot 0 runs: it said so before systemd was told.
        assert _log_time(d.worker_ready(slot=0)) <= ready.at

        pings = notify.wait_for("WATCHDOG", "1", count=4)
        assert all(p.at >= ready.at for p in pings)
        assert all("STATUS" in p.fields for p in pings)

        deliver(d, "through the inherited socket")
        assert spool_count(d) == 1

        d.signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1", count=2)
        assert d.stop() == 0
        notify.wait_for("STOPPING", "1")
        # Only the main process spoke (NotifyAccess=main): the worker and the appender were
        # started without NOTIFY_SOCKET and the listening fds' variables.
        assert {n.pid for n in notify.received} == {d.proc.pid if d.proc else -1}
    finally:
        if d.alive:
            d.kill()
        notify.close()


def test_watchdog_pings_stop_while_the_event_loop_is_stuck(tmp_path: Path) -> None:
    """Pinged from the loop, not a thread: a loop blocked for 0.6 s sends no ping meanwhile
    (systemd would kill it after WatchdogSec), and pings resume after."""
    notify = NotifySocket(tmp_path / "notify")
    n = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "100000"})

    async def status() -> str:
        return "fine"

    async def main() -> None:
        task = asyncio.create_task(n.watchdog(status))
        await asyncio.to_thread(notify.wait_for, "WATCHDOG", "1", 2)
        before = len(notify.received)
        time.sleep(0.6)  # noqa: ASYNC251 (the stuck loop itself, not a synchronisation)
        stuck_until = time.time()
        after = await asyncio.to_thread(notify.wait_for, "WATCHDOG", "1", before + 1)
        task.cancel()
        gap = after[-1].at - after[-2].at
        assert gap >= 0.55, f"a ping came while the loop was stuck (gap {gap:.2f} s)"
        assert after[-1].at >= stuck_until - 0.01
        assert after[-1].fields["STATUS"] == "fine"

    try:
        asyncio.run(main())
    finally:
        n.close()
        notify.close()


def test_without_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.send("READY=1") is False

    async def status() -> str:
        raise AssertionError("not asked without a watchdog")

    asyncio.run(asyncio.wait_for(n.watchdog(status), 1))  # returns at once


def test_watchdog_for_another_pid_is_not_ours(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": "@tldops-test", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.enabled and n.watchdog_interval is None
    mine = Notifier({"NOTIFY_SOCKET": "@tldops-test", "WATCHDOG_USEC": "1000000"})
    assert mine.watchdog_interval == 1.0
