"""The sandbox's own parts that run without a world: the mail host's config install
(never reverting a later edit), the test SMTP client's PROXY-v2 header and reply reader.
The world itself: tests/integration/sandbox/."""

from __future__ import annotations

import socket

import pytest

from backupmx_sandbox import dms_podman, hostfiles
from backupmx_sandbox.smtp_client import SMTPConnection, proxy_v2_header


def test_up_never_reverts_an_edit_made_after_it(tmp_path):
    """master.cf edited by a deploy (e.g. the relay whitelist) survives the next `up`."""
    config = tmp_path / "master.cf"
    hostfiles.install_file(config, "sandbox v1\n")
    hostfiles.install_file(config, "sandbox v1\n")
    assert config.read_text() == "sandbox v1\n"
    hostfiles.install_file(config, "sandbox v2\n")  # our own file: follows the template
    assert config.read_text() == "sandbox v2\n"

    config.write_text("edited by the product\n")
    hostfiles.install_file(config, "sandbox v2\n")
    assert config.read_text() == "edited by the product\n"

    config.unlink()
    hostfiles.install_file(config, "sandbox v2\n")
    assert config.read_text() == "sandbox v2\n"


def test_proxy_v2_header_layout():
    v4 = proxy_v2_header("192.0.2.25", 40000, "127.0.0.1", 2525)
    assert v4 == (
        b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 25, 127, 0, 0, 1]) + b"\x9c\x40\x09\xdd"
    )
    v6 = proxy_v2_header("2001:db8:2::25", 40000, "::1", 2525)
    assert v6[12:16] == b"\x21\x21\x00\x24" and len(v6) == 16 + 36
    # One family per header, the source's: an IPv4 source towards an IPv6 listener shows
    # IPv4 loopback; an IPv6 source towards an IPv4 listener stays IPv6.
    mixed = proxy_v2_header("192.0.2.25", 1, "::1", 2)
    assert mixed[13] == 0x11 and mixed[20:24] == bytes([127, 0, 0, 1])
    assert proxy_v2_header("2001:db8:2::25", 40000, "127.0.0.1", 2525)[12:16] == b"\x21\x21\x00\x24"


def test_reply_reader_splits_a_dangling_line_from_the_next_reply():
    server, client_sock = socket.socketpair()
    with server:
        server.sendall(b"220-mail.example ESMTP\r\n250-mail.example\r\n250 SIZE 1000\r\n220 ok\r\n")
        with SMTPConnection(client_sock) as client:
            greeting, ehlo, last = client.read_reply(), client.read_reply(), client.read_reply()
    assert (greeting.code, greeting.complete, greeting.lines) == (220, False, ["mail.example ESMTP"])
    assert (ehlo.code, ehlo.complete, ehlo.lines) == (250, True, ["mail.example", "SIZE 1000"])
    assert (last.code, last.text) == (220, "ok")


def test_no_podman_is_one_line_naming_make_dms_image(monkeypatch):
    """`make demo` installs no podman: the docker-mailserver primary then says how to get it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match=r"podman is not installed .*`make dms-image` installs it"):
        dms_podman.image_exists("localhost/backupmx-sandbox/docker-mailserver:x")
