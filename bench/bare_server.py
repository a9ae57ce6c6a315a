"""The baseline for bench/intake: bare aiosmtpd, no policy, no storage, no logging.

aiosmtpd's ``SMTP`` protocol on its own event loop (``loop.create_server``, no ``Controller``
thread), with a handler whose ``handle_DATA`` only answers ``250 OK``. Everything tldops-mta
does on top of this (limits, enhanced codes, the durable spool, the worker, JSON logs) is
what bench/intake measures against it.

Run: ``python bench/bare_server.py --listen 127.0.0.1:PORT``. Prints one JSON line,
``{"event": "ready", "listening": [...], "pid": N}``, once listening; exits 0 on SIGTERM or
SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Handler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


async def serve(host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    handler = Handler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench.localhost", enable_SMTPUTF8=True), host, port,
        reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listening = [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets]
    print(json.dumps({"event": "ready", "listening": listening, "pid": os.getpid()}), flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--listen", default="127.0.0.1:2526", metavar="HOST:PORT")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    result: Any = asyncio.run(serve(host.strip("[]"), int(port)))
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
