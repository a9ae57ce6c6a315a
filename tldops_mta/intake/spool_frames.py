"""The wire between the SMTP process and the spool appender: frames over a Unix socket pair.

An arrival goes one way as ``!QII`` (sequence number, header length, raw length), a JSON
header with the envelope and session facts, and the raw octets; a reply comes back as
``!QBH`` (sequence number, code, text length) and the text. Pure functions over bytes: both
ends are our own processes, but a frame that does not parse still ends the link rather than
being guessed at.
"""

from __future__ import annotations

import json
import struct

from tldops_mta.store.spool import Arrival

REQUEST = struct.Struct("!QII")
REPLY = struct.Struct("!QBH")

OK, FAILED, FULL = 0, 1, 2
"""Reply codes: committed; not committed (try again later); not committed, storage full."""

MAX_HEADER = 1 << 20
MAX_RAW = 1 << 30


class FrameError(Exception):
    """The stream is not what the other end writes: the link must be closed."""


def encode_arrival(seq: int, a: Arrival) -> bytes:
    header = json.dumps([a.queue_id, a.received_at, a.session_id, a.client_addr, a.client_port,
                         a.helo, a.mail_from, list(a.rcpt_to), a.smtputf8, a.relay_addr]).encode()
    return b"".join((REQUEST.pack(seq, len(header), len(a.raw)), header, a.raw))


def decode_arrivals(buf: bytes | bytearray) -> tuple[list[tuple[int, Arrival]], int]:
    """The whole frames at the start of ``buf``, and how many octets they took."""
    out: list[tuple[int, Arrival]] = []
    pos, size = 0, len(buf)
    view = memoryview(buf)
    try:
        while size - pos >= REQUEST.size:
            seq, hlen, rlen = REQUEST.unpack_from(buf, pos)
            if hlen > MAX_HEADER or rlen > MAX_RAW:
                raise FrameError(f"frame too large: header {hlen}, raw {rlen}")
            end = pos + REQUEST.size + hlen + rlen
            if end > size:
                break
            start = pos + REQUEST.size
            try:
                f = json.loads(bytes(view[start:start + hlen]))
                arrival = Arrival(
                    queue_id=str(f[0]), received_at=float(f[1]), session_id=str(f[2]),
                    client_addr=str(f[3]), client_port=None if f[4] is None else int(f[4]),
                    helo=None if f[5] is None else str(f[5]), mail_from=str(f[6]),
                    rcpt_to=tuple(str(r) for r in f[7]), smtputf8=bool(f[8]),
                    raw=bytes(view[start + hlen:end]), relay_addr=None if f[9] is None else str(f[9]))
            except (ValueError, TypeError, IndexError, KeyError) as e:
                raise FrameError(f"bad arrival header: {e}") from e
            out.append((seq, arrival))
            pos = end
    finally:
        view.release()
    return out, pos


def encode_reply(seq: int, code: int, text: str = "") -> bytes:
    t = text.encode("utf-8", "replace")[:2000]
    return REPLY.pack(seq, code, len(t)) + t


def decode_replies(buf: bytes | bytearray) -> tuple[list[tuple[int, int, str]], int]:
    """The whole replies at the start of ``buf``, and how many octets they took."""
    out: list[tuple[int, int, str]] = []
    pos, size = 0, len(buf)
    while size - pos >= REPLY.size:
        seq, code, tlen = REPLY.unpack_from(buf, pos)
        end = pos + REPLY.size + tlen
        if end > size:
            break
        if code not in (OK, FAILED, FULL):
            raise FrameError(f"unknown reply code {code}")
        out.append((seq, code, bytes(buf[pos + REPLY.size:end]).decode("utf-8", "replace")))
        pos = end
    return out, pos
