"""The frames between the SMTP process and the spool appender: what goes in comes out, a
stream cut anywhere yields only whole frames, and a stream that is not ours is refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldops_mta.intake import spool_frames
from tldops_mta.store.spool import Arrival

text = st.text(max_size=40)
arrivals = st.builds(
    Arrival, queue_id=text, received_at=st.floats(allow_nan=False, allow_infinity=False),
    session_id=text, client_addr=text, client_port=st.none() | st.integers(0, 65535),
    helo=st.none() | text, mail_from=text, rcpt_to=st.lists(text, max_size=5).map(tuple),
    smtputf8=st.booleans(), raw=st.binary(max_size=300))


@given(st.lists(arrivals, max_size=5), st.data())
def test_arrivals_come_out_as_they_went_in_however_the_stream_is_cut(
        items: list[Arrival], data: st.DataObject) -> None:
    stream = b"".join(spool_frames.encode_arrival(i + 1, a) for i, a in enumerate(items))
    cut = data.draw(st.integers(0, len(stream)))
    got, used = spool_frames.decode_arrivals(stream[:cut])
    rest, used2 = spool_frames.decode_arrivals(stream[used:])
    assert used + used2 == len(stream)
    assert [a for _, a in got + rest] == items
    assert [s for s, _ in got + rest] == list(range(1, len(items) + 1))


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2]), text)), st.data())
def test_replies_come_out_as_they_went_in(items: list[tuple[int, int, str]], data: st.DataObject) -> None:
    stream = b"".join(spool_frames.encode_reply(*r) for r in items)
    cut = data.draw(st.integers(0, len(stream)))
    got, used = spool_frames.decode_replies(stream[:cut])
    rest, _ = spool_frames.decode_replies(stream[used:])
    assert got + rest == [(s, c, t.encode("utf-8", "replace").decode()) for s, c, t in items]


@pytest.mark.parametrize("stream", [
    spool_frames.REQUEST.pack(1, spool_frames.MAX_HEADER + 1, 0),  # absurd header length
    spool_frames.REQUEST.pack(1, 2, 0) + b"{}",  # header is not the list we write
    spool_frames.REQUEST.pack(1, 3, 0) + b"[1]",  # too few fields
    spool_frames.REQUEST.pack(1, 4, 0) + b"\xff\xfe[]",  # not JSON
])
def test_a_stream_that_is_not_ours_is_refused(stream: bytes) -> None:
    with pytest.raises(spool_frames.FrameError):
        spool_frames.decode_arrivals(stream)


def test_an_unknown_reply_code_is_refused() -> None:
    with pytest.raises(spool_frames.FrameError):
        spool_frames.decode_replies(struct.pack("!QBH", 1, 9, 0))
