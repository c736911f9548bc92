"""Stage 4's relayed-envelope probe, the program and the fact that reads it, against a
loopback SMTP listener that speaks PROXY v2: one python3 for every source, each source's
own answer (or what went wrong), in the order given."""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
import threading

import pytest

from facts.mailhost_proof import PostscreenPregreet

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
RELAY, REFUSED, CLOSED = "192.0.2.1", "198.51.100.7", "2001:db8::5"


def serve_one(connection: socket.socket) -> None:
    """Read the PROXY v2 header, then answer as postscreen + smtpd would for the claimed source."""
    with connection, connection.makefile("rb") as stream:
        assert stream.read(12) == SIGNATURE
        _command, family, length = struct.unpack("!BBH", stream.read(4))
        body = stream.read(length)
        source = str(ipaddress.ip_address(body[:4] if family == 0x11 else body[:16]))
        if source == CLOSED:
            return  # a listener that hangs up: no greeting at all
        assert stream.readline().startswith(b"EHLO mail.rollernet.us")
        connection.sendall(b"220 mx.test ESMTP\r\n250-mx.test\r\n250 PIPELINING\r\n")
        assert stream.readline().startswith(b"MAIL FROM:<postmaster@microsoft.com>")
        connection.sendall(b"250 2.1.0 Ok\r\n")
        stream.readline()
        connection.sendall(b"250 2.1.5 Ok\r\n" if source == RELAY else
                           b"550-5.7.1 refused\r\n550 5.7.1 by the unknown policy service\r\n")
        stream.readline()  # QUIT


@pytest.fixture
def listener():
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()


def read_fact(listener: str, sources: tuple[str, ...]) -> dict:
    fact = PostscreenPregreet()
    command = fact.command(listener, sources, "postmaster@example.org", "mail.rollernet.us",
                           "postmaster@microsoft.com")
    done = subprocess.run(["sh", "-c", str(command)], capture_output=True, text=True, timeout=60, check=True)
    return fact.process(done.stdout.splitlines())


def test_each_source_gets_its_own_answer_from_one_probe(listener):
    read = read_fact(listener, (RELAY, REFUSED, CLOSED))
    assert read["python"] and read["failure"] is None
    assert read["results"] == {
        RELAY: {"code": 250, "text": "250 2.1.5 Ok", "error": None},
        REFUSED: {"code": 550, "text": "550-5.7.1 refused | 550 5.7.1 by the unknown policy service", "error": None},
        CLOSED: {"code": None, "text": "", "error": "connection closed after:"},
    }


def test_a_listener_nobody_answers_on_is_an_error_per_source():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    read = read_fact(f"127.0.0.1:{port}", (RELAY,))
    assert read["results"][RELAY]["code"] is None and "refused" in read["results"][RELAY]["error"].lower()
