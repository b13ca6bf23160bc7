"""The framing of engine <-> runner messages (tenantflow.wire) on a real socket pair."""

from __future__ import annotations

import socket
import threading

import pytest

from tenantflow.wire import Channel, ChannelClosed


def test_messages_of_any_size_arrive_whole_and_in_order() -> None:
    ours, theirs = Channel.pair()
    other = Channel(theirs)
    big = bytes(range(256)) * (80 * 1024)  # 20 MiB: the size of a component's bytes
    sent = [("a", 1), big, {"nested": [None, 2.5, "x" * 70_000]}, ("b", 2)]
    sender = threading.Thread(target=lambda: [ours.send(m) for m in sent])  # larger than the socket buffers
    sender.start()
    assert [other.recv() for _ in sent] == sent
    sender.join()


def test_recv_ready_returns_what_has_arrived_and_never_a_part() -> None:
    ours, theirs = Channel.pair()
    other = Channel(theirs)
    assert other.recv_ready() == []
    ours.send(("one",))
    ours.send(("two",))
    frame = bytearray()
    probe_a, probe_b = socket.socketpair()  # the exact bytes of a third message, sent in two halves
    Channel(probe_a).send(("three", "x" * 1000))
    while len(frame) < 1000:
        frame += probe_b.recv(65536)
    ours.sock.sendall(frame[:10])
    assert other.recv_ready() == [("one",), ("two",)]
    ours.sock.sendall(frame[10:])
    assert other.recv_ready() == [("three", "x" * 1000)]


def test_a_closed_channel_is_reported_after_the_messages_before_it() -> None:
    ours, theirs = Channel.pair()
    other = Channel(theirs)
    ours.send("last words")
    ours.close()
    assert other.recv() == "last words"
    with pytest.raises(ChannelClosed):
        other.recv()
    with pytest.raises(ChannelClosed):
        other.recv_ready()


def test_a_corrupt_length_is_refused_not_allocated() -> None:
    ours, theirs = Channel.pair()
    other = Channel(theirs)
    ours.sock.sendall((2**31).to_bytes(4, "little") + b"junk")
    with pytest.raises(ValueError, match="corrupt"):
        other.recv()
