"""Helpers shared by the benches: starting servers, probing them, driving them, reporting.

Standard library only, so a bench runs under any Python 3.11+; the servers it starts run
under the project's virtualenv (see ``project_python``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from daemon_proc import descendants  # the one walk of /proc for a process tree

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SMTP_SOURCE = "/usr/sbin/smtp-source"
HOST = "127.0.0.1"


class BenchError(Exception):
    """The bench itself could not measure (a tool missing, a server that did not start...)."""


class VerificationError(BenchError):
    """The server answered, but what it did is wrong (lost or unprocessed messages)."""


def project_python() -> Path:
    """The interpreter both servers run under: the repo's venv, else the one running us.

    Baseline and tldops must run on the same interpreter, or the ratio measures Pythons.
    """
    venv = REPO / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def code_under_test() -> str:
    """Which tldops_mta the daemon will import, and its git commit when it is this repo's."""
    res = subprocess.run([str(project_python()), "-P", "-c",  # -P: not the cwd first, as tldops
                          "import tldops_mta, os; print(os.path.dirname(tldops_mta.__file__))"],
                         capture_output=True, text=True, check=False, cwd=REPO)
    where = res.stdout.strip() or "(tldops_mta not importable)"
    if Path(where).resolve().parent != REPO:
        return where
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return f"{where} (git {git or 'unknown'})"


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the kernel's pick), for a server to take next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    """CPU seconds (user + system) used by a server: all its processes and threads
    (``total``), its main thread (``main``: the one running the event loop), and its child
    processes (``children``: tldops runs its worker as one), from /proc/PID/stat and
    /proc/PID/task/PID/stat."""

    total: float
    main: float
    children: float = 0.0

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.total - other.total, self.main - other.main,
                   self.children - other.children)


def stat_cpu(path: Path) -> float:
    """CPU seconds (user + system) from a /proc/PID/stat or /proc/PID/task/TID/stat file."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14, 15


def _try(fn: Callable[[], float]) -> float:
    try:
        return fn()
    except (OSError, BenchError):  # a child that exited between listing and reading
        return 0.0


def cpu(pid: int) -> Cpu:
    """CPU used so far by ``pid`` and its descendants. A child that exits during a
    measurement takes its CPU time with it: the figure is then a little low."""
    main_total = stat_cpu(Path(f"/proc/{pid}/stat"))
    kids = sum(_try(lambda k=k: stat_cpu(Path(f"/proc/{k}/stat"))) for k in descendants(pid))
    return Cpu(main_total + kids, stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat")), kids)


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS of ``pid`` and all its descendants summed, VmRSS of ``pid`` alone), in MiB.
    The sum counts pages shared between the processes once per process: an upper bound."""
    own = rss_mb(pid)
    return own + sum(_try(lambda k=k: rss_mb(k)) for k in descendants(pid)), own


class RssSampler:
    """Samples the resident memory of a process tree (``tree_rss_mb``) every ``every``
    seconds in a thread, so that a peak between two readings is seen: a buffer that grows
    and is freed within one abuse leaves no trace in a reading taken afterwards.

    ``peak`` is over the whole run; ``window()`` starts a new window and ``window_peak``
    is the peak since (both as (tree, main process) in MiB). A process that has exited is
    read as nothing (the thread keeps going; the caller notices the death itself).
    """

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.samples = 0
        self.peak = (0.0, 0.0)
        self.window_peak = (0.0, 0.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> tuple[float, float]:
        """Read the tree now (also counted in the peaks); (0, 0) if the process is gone."""
        try:
            now = tree_rss_mb(self.pid)
        except (OSError, BenchError):
            return (0.0, 0.0)
        with self._lock:
            self.samples += 1
            self.peak = (max(self.peak[0], now[0]), max(self.peak[1], now[1]))
            self.window_peak = (max(self.window_peak[0], now[0]), max(self.window_peak[1], now[1]))
        return now

    def window(self) -> tuple[float, float]:
        """Start a new window at the current reading, which it returns."""
        with self._lock:
            self.window_peak = (0.0, 0.0)
        return self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat): the difference over a
    run, less what the server and smtp-source used, is what other processes took."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def wait_quiet(max_wait: float = 60.0, busy_cores: float = 0.1) -> float:
    """Wait (at most ``max_wait`` s) until the machine has been nearly idle for a second:
    on 2 cores, a test suite running beside the bench would halve either side's rate.
    Returns the CPU cores busy in the last second looked at."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy()
        time.sleep(1.0)
        busy = machine_busy() - before
        if busy < busy_cores or time.monotonic() > deadline:
            return busy


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


# -- SMTP over plain sockets -------------------------------------------------------------


def read_reply(sock: socket.socket, buf: bytes = b"") -> tuple[int, bytes, bytes]:
    """One complete (possibly multi-line) reply: (code, text, what was read past it)."""
    while True:
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            line = buf[start:end]
            if len(line) >= 4 and line[3:4] == b" ":
                return int(line[:3]), buf[:end], buf[end + 2:]
            if len(line) < 3 or line[3:4] not in (b"-", b""):
                raise BenchError(f"not an SMTP reply line: {line!r}")
            start = end + 2
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"server closed the connection; unread: {buf!r}")
        buf += chunk


def expect(sock: socket.socket, code: int, what: str) -> None:
    got, text, _ = read_reply(sock)
    if got != code:
        raise BenchError(f"{what}: expected {code}, got {text!r}")


def hold_sessions(port: int, count: int, host: str = HOST,
                  timeout: float = 10.0) -> list[socket.socket]:
    """Open ``count`` SMTP sessions, each greeted and past EHLO, and keep them open."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, port), timeout=timeout)
            socks.append(s)
            expect(s, 220, f"greeting on session {len(socks)}")
            s.sendall(b"EHLO bench-client.test\r\n")
            expect(s, 250, f"EHLO on session {len(socks)}")
    except BaseException:
        release_sessions(socks)
        raise
    return socks


def release_sessions(socks: Sequence[socket.socket]) -> None:
    """QUIT and close every held session (the server sees orderly ends, not resets)."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.sendall(b"QUIT\r\n")
    for s in socks:
        try:
            s.settimeout(5.0)
            read_reply(s)
        except (OSError, BenchError):
            pass
        s.close()


# -- servers under test ------------------------------------------------------------------


@dataclass
class Server:
    """A server process started by the bench, its stdout going to ``log_path``."""

    name: str
    cmd: list[str]
    port: int
    log_path: Path
    cwd: Path = REPO
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} is not started")
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; log:\n"
                             + self.log_tail())

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def first_connection(self, timeout: float = 15.0) -> tuple[float, float]:
        """Seconds from process start to the first accepted TCP connection, and to its
        220 greeting. Connects in a tight loop (1 ms between refused attempts, so the
        probe does not eat a core the starting server needs on a 2-core machine)."""
        deadline = self.started_at + timeout
        while True:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.connect((HOST, self.port))
            except ConnectionRefusedError:
                s.close()
                self._check_alive()
                if time.perf_counter() > deadline:
                    raise BenchError(f"{self.name}: no connection within {timeout}s") from None
                time.sleep(0.001)
                continue
            except BaseException:
                s.close()
                raise
            connected = time.perf_counter() - self.started_at
            try:
                s.settimeout(timeout)
                expect(s, 220, f"{self.name} greeting")
                greeted = time.perf_counter() - self.started_at
                s.sendall(b"QUIT\r\n")
                read_reply(s)
            finally:
                s.close()
            return connected, greeted

    def count_events(self, event: str) -> int:
        """How many JSON log lines name this ``event``."""
        n = 0
        needle = json.dumps(event)
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if needle in line and json.loads(line).get("event") == event:
                    n += 1
        return n

    def rss_mb(self) -> tuple[float, float]:
        """(all its processes, the main process alone), in MiB."""
        self._check_alive()
        return tree_rss_mb(self.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if never started)."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            return self.proc.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


# -- load --------------------------------------------------------------------------------


def smtp_source(port: int, *, sessions: int, messages: int, size: int, sender: str,
                rcpt: str, timeout: float = 600.0) -> tuple[float, float]:
    """Run Postfix's smtp-source against ``port``; its wall time and its own CPU time (to
    see how much of the machine the load generator takes), in seconds.

    Without -d every message has its own connection (connect, greeting, HELO, MAIL, RCPT,
    DATA, QUIT). smtp-source aborts with a non-zero exit on any reply it did not expect,
    so a zero exit means every message got its 250.
    """
    if not os.access(SMTP_SOURCE, os.X_OK):
        raise BenchError(f"{SMTP_SOURCE} not found: apt-get install postfix")
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-f", sender, "-t", rcpt, f"{HOST}:{port}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"smtp-source did not finish within {timeout}s") from e
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if res.returncode != 0:
        raise BenchError(f"smtp-source exited {res.returncode}: "
                         + res.stderr.decode("utf-8", "replace")[-2000:])
    return wall, own_cpu


class Profiler:
    """py-spy attached to a running server (``--profile``); stopped with SIGINT so that it
    writes its file. Sampling costs CPU on a 2-core machine: profiled runs are slower."""

    def __init__(self, pid: int, out: Path, fmt: str, rate: int = 200,
                 extra: Sequence[str] = ()) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        if not exe.exists():
            exe = project_python().parent / "py-spy"
        if not exe.exists():
            raise BenchError("py-spy not found: .venv/bin/pip install py-spy")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.proc = subprocess.Popen(
            [str(exe), "record", "--pid", str(pid), "--rate", str(rate), "--threads",
             "--nonblocking", "--format", fmt, "--output", str(out), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach before the load starts
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise BenchError(f"py-spy failed: {err}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# -- report ------------------------------------------------------------------------------


ROWS_FILE = "TLDOPS_BENCH_ROWS"
"""Set by bench/run: every table a benchmark renders is also appended there as one JSON line,
so that bench/run can print them all as one table."""


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The figures as a plain-text table (and, under bench/run, recorded for its table)."""
    if os.environ.get(ROWS_FILE):
        with open(os.environ[ROWS_FILE], "a", encoding="utf-8") as f:
            f.write(json.dumps({"bench": Path(sys.argv[0]).name, "header": list(header),
                                "rows": [[str(c) for c in r] for r in rows]}) + "\n")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])
