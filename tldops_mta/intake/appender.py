"""The spool appender: the process that commits accepted mail to the spool for the SMTP process.

A process of its own, so that the commits do not contend with the SMTP event loop for the
interpreter lock (docs/architecture.md says why that matters); the SMTP loop only writes a
frame and reads a reply (spool_frames).

The loop: block until a frame arrives, take every frame already waiting (group commit),
commit them all in one transaction (``storage.commit``: one fsync), reply to each, repeat.
A reply is sent only after the commit, so the 250 the SMTP process gives on it means "on
disk". End of file on the socket (the SMTP process closed it, or died) ends this process
once what was received is committed; SIGTERM and SIGHUP are left to the SMTP process, which
closes the socket when its sessions are done.

Started by ``tldops serve`` as ``python -m tldops_mta.intake.appender``; it imports neither asyncio
nor structlog (half of an interpreter's memory), so its log lines are written here, in the
same JSON shape as ``logs``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tldops_mta.child_setup import die_with_parent
from tldops_mta.intake import spool_frames
from tldops_mta.store import lanes, private_state, spool, storage

RECV = 1 << 20
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    """JSON lines on stdout, shaped as structlog writes them in the other processes."""

    def __init__(self, level: str) -> None:
        self.level = LEVELS[level]

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.level:
            return
        line = {"event": event, "process": "appender", **fields, "level": level,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def reply_for(seq: int, error: BaseException | None) -> bytes:
    if error is None:
        return spool_frames.encode_reply(seq, spool_frames.OK)
    code = spool_frames.FULL if isinstance(error, storage.StorageFull) else spool_frames.FAILED
    return spool_frames.encode_reply(seq, code, f"{type(error).__name__}: {error}")


class Appender:
    def __init__(self, sock: socket.socket, conn: sqlite3.Connection, max_batch: int,
                 log: Log, lock_wait: float = 5.0, budget: lanes.Budget | None = None) -> None:
        self.sock = sock
        self.insert = spool.inserter(budget or lanes.DEFAULT_BUDGET)
        """The insert job, each arrival in its priority lane (store/lanes.py)."""
        self.lock_wait = lock_wait
        self.conn = conn
        self.max_batch = max_batch
        self.log = log
        self.commits = 0
        self.writes = 0

    def serve(self) -> None:
        buf = bytearray()
        while True:
            self.sock.setblocking(True)
            data = self.sock.recv(RECV)
            eof = not data
            buf += data
            self.sock.setblocking(False)
            while not eof:  # group commit: everything that is already waiting
                try:
                    more = self.sock.recv(RECV)
                except BlockingIOError:
                    break
                eof = not more
                buf += more
            frames, used = spool_frames.decode_arrivals(buf)
            del buf[:used]
            for start in range(0, len(frames), self.max_batch):
                self.commit(frames[start:start + self.max_batch])
            if eof:
                if buf:
                    self.log("warning", "spool link closed mid-frame", octets=len(buf))
                return

    def commit(self, frames: Sequence[tuple[int, spool.Arrival]]) -> None:
        results = storage.commit(self.conn, [self.insert(a) for _, a in frames], lock_wait=self.lock_wait)
        self.commits += 1
        self.writes += len(frames)
        replies = []
        for (seq, a), (_, error) in zip(frames, results, strict=True):
            if error is not None:
                self.log("error", "spool commit failed", queue_id=a.queue_id, error=str(error))
            replies.append(reply_for(seq, error))
        self.sock.setblocking(True)
        self.sock.sendall(b"".join(replies))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tldops_mta.intake.appender", description=__doc__)
    p.add_argument("--fd", type=int, required=True, help="our end of the socket pair")
    p.add_argument("--database", type=Path, required=True)
    p.add_argument("--busy-timeout-ms", type=int, default=5000)
    p.add_argument("--max-size-mb", type=int, default=0)
    p.add_argument("--group-commit-max", type=int, default=512)
    p.add_argument("--log-level", choices=sorted(LEVELS), default="info")
    p.add_argument("--fast-lane-budget", type=int, default=lanes.Budget.messages,
                   help="worker.fast_lane_budget")
    p.add_argument("--fast-lane-window", type=float, default=lanes.Budget.window,
                   help="worker.fast_lane_window")
    args = p.parse_args(argv)
    private_state.restrict_umask()
    die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    log = Log(args.log_level)
    sock = socket.socket(fileno=args.fd)
    # SQLite does not wait for the write lock here: Appender.commit waits in short steps
    # (storage.begin), up to the configured busy timeout.
    conn = storage.connect(args.database, busy_timeout_ms=0, max_size_mb=args.max_size_mb)
    storage.check_schema(conn)
    appender = Appender(sock, conn, args.group_commit_max, log, lock_wait=args.busy_timeout_ms / 1000,
                        budget=lanes.Budget(args.fast_lane_budget, args.fast_lane_window))
    log("info", "appender ready", pid=os.getpid())
    try:
        appender.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the SMTP process is gone; whatever it was not told was not acknowledged
    except spool_frames.FrameError as e:
        log("error", "spool link broken", error=str(e))
        return 1
    finally:
        conn.close()
    log("info", "appender stopped", commits=appender.commits, writes=appender.writes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
