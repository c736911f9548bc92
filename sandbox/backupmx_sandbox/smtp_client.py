"""A small SMTP client for tests and the failover drill.

What ``smtplib`` cannot do, and postscreen needs:

- send a PROXY protocol v2 header first, claiming any source address (IPv4/IPv6);
- talk before the greeting (pregreet), as a spambot or an impatient relay does;
- read replies that do not follow the rules: after a pregreet postscreen leaves
  its ``220-`` banner line dangling and answers the next command, so a reply
  "ends" when the code changes, not only at a ``NNN `` line.

Usage::

    result = send_mail("127.0.0.1", 2525, "a@sender.test", ["x@viktorbarzin.me"],
                       build_message(...), proxy_source="192.0.2.25", pregreet=True)
    result.code("RCPT")      # 250, 550, ...
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_PROXY_V2_PROXY_COMMAND = 0x21  # version 2, command PROXY
_PROXY_V2_TCP4 = 0x11
_PROXY_V2_TCP6 = 0x21


def proxy_v2_header(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    """A PROXY protocol v2 header announcing a TCP connection from ``source``.

    16 bytes (signature, version/command, family, address length) followed by
    source and destination address and port, all in network byte order.
    """
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    if src.version != dst.version:
        # The header carries one family: an IPv6 source with an IPv4 destination
        # shows the destination IPv4-mapped; the reverse shows loopback.
        dst = ipaddress.IPv6Address(f"::ffff:{dst}") if src.version == 6 else ipaddress.IPv4Address("127.0.0.1")
    family = _PROXY_V2_TCP4 if src.version == 4 else _PROXY_V2_TCP6
    addresses = src.packed + dst.packed + struct.pack("!HH", source_port, destination_port)
    return PROXY_V2_SIGNATURE + struct.pack("!BBH", _PROXY_V2_PROXY_COMMAND, family, len(addresses)) + addresses


@dataclass
class Reply:
    code: int
    lines: list[str]
    # False for a multi-line reply cut short (postscreen's dangling "220-" after a pregreet).
    complete: bool = True

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass
class Transcript:
    """Each step of a session (greeting, EHLO, MAIL, RCPT, DATA, MESSAGE, QUIT) and its reply."""

    steps: list[tuple[str, Reply]] = field(default_factory=list)

    def add(self, step: str, reply: Reply) -> Reply:
        self.steps.append((step, reply))
        return reply

    def reply(self, step: str) -> Reply | None:
        """The first reply to ``step`` (or None if the session never got there)."""
        return next((reply for name, reply in self.steps if name == step), None)

    def code(self, step: str) -> int | None:
        reply = self.reply(step)
        return reply.code if reply else None

    def codes(self) -> dict[str, int]:
        return {name: reply.code for name, reply in self.steps}

    @property
    def accepted(self) -> bool:
        """Whether the server took responsibility for the message (250 after the data)."""
        return self.code("MESSAGE") == 250

    def __str__(self) -> str:
        return "\n".join(f"{name}: {reply}" for name, reply in self.steps)


class SMTPError(Exception):
    pass


class SMTPConnection:
    """One SMTP session on a socket, with a reply reader that tolerates dangling lines."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = b""
        self._pending: str | None = None

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 30.0, source: str | None = None) -> "SMTPConnection":
        """``source``: connect from this local address (a fresh 127/8 one dodges postscreen's PASS cache)."""
        return cls(socket.create_connection((host, port), timeout=timeout,
                                            source_address=(source, 0) if source else None))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SMTPConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def proxy_header(self, source: str, source_port: int = 40000) -> bytes:
        """The PROXY v2 header announcing ``source`` as the client of this connection."""
        dest_host, dest_port = self.sock.getpeername()[:2]
        if ipaddress.ip_address(source).version != ipaddress.ip_address(dest_host).version:
            # The claimed destination only has to share the source's family.
            dest_host = "::1" if ipaddress.ip_address(source).version == 6 else "127.0.0.1"
        return proxy_v2_header(source, source_port, dest_host, dest_port)

    def send_proxy_header(self, source: str, source_port: int = 40000) -> None:
        """Announce ``source`` as the client, the way HAProxy in front of postscreen does."""
        self.sock.sendall(self.proxy_header(source, source_port))

    def send_line(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def command(self, line: str) -> Reply:
        self.send_line(line)
        return self.read_reply()

    def read_reply(self) -> Reply:
        """Read one reply: lines of one code until a ``NNN `` line, or until the code changes."""
        lines: list[str] = []
        code: str | None = None
        while True:
            line = self._peek_line()
            line_code = line[:3]
            if not line_code.isdigit():
                raise SMTPError(f"not an SMTP reply line: {line!r}")
            if code is not None and line_code != code:
                return Reply(int(code), lines, complete=False)
            self._pending = None
            code = line_code
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(code), lines)

    def _peek_line(self) -> str:
        if self._pending is None:
            self._pending = self._read_line()
        return self._pending

    def _read_line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SMTPError("connection closed by the server")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def send_data(self, message: bytes) -> Reply:
        """The message body, dot-stuffed and terminated; returns the final reply."""
        lines = message.replace(b"\r\n", b"\n").split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
        self.sock.sendall(stuffed + b".\r\n")
        return self.read_reply()


def send_mail(
    host: str,
    port: int,
    mail_from: str,
    rcpt_to: list[str] | str,
    message: bytes,
    *,
    proxy_source: str | None = None,
    pregreet: bool = False,
    helo: str = "client.sender.test",
    timeout: float = 30.0,
    source: str | None = None,
) -> Transcript:
    """Run one SMTP transaction and return every step's reply.

    ``proxy_source``: send a PROXY v2 header claiming this client address first.
    ``pregreet``: send EHLO at once, without waiting for the 220 greeting.
    ``source``: the local address to connect from (no PROXY header: a direct client).
    The transaction stops early (then QUIT) where a real client would: a
    greeting or EHLO that is not 2xx, no recipient accepted, DATA not 354.
    """
    recipients = [rcpt_to] if isinstance(rcpt_to, str) else list(rcpt_to)
    transcript = Transcript()
    with SMTPConnection.connect(host, port, timeout, source) as smtp:
        header = smtp.proxy_header(proxy_source) if proxy_source else b""
        if pregreet:
            # The header and the early EHLO in one write, as stage 4's probe sends them: two writes
            # let a stalled client (a loaded machine) send EHLO after postscreen's greet wait.
            smtp.sock.sendall(header + f"EHLO {helo}\r\n".encode())
            greeting = transcript.add("greeting", smtp.read_reply())
            ehlo = transcript.add("EHLO", smtp.read_reply())
        else:
            if header:
                smtp.sock.sendall(header)
            greeting = transcript.add("greeting", smtp.read_reply())
            if greeting.code != 220:
                return transcript
            ehlo = transcript.add("EHLO", smtp.command(f"EHLO {helo}"))
        if ehlo.code != 250:
            _quit(smtp, transcript)
            return transcript
        if transcript.add("MAIL", smtp.command(f"MAIL FROM:<{mail_from}>")).code != 250:
            _quit(smtp, transcript)
            return transcript
        for rcpt in recipients:
            transcript.add("RCPT", smtp.command(f"RCPT TO:<{rcpt}>"))
        # DATA even when every RCPT failed: the server's answer (554 no valid
        # recipients) is part of what tests document.
        if transcript.add("DATA", smtp.command("DATA")).code == 354:
            transcript.add("MESSAGE", smtp.send_data(message))
        _quit(smtp, transcript)
    return transcript


def _quit(smtp: SMTPConnection, transcript: Transcript) -> None:
    try:
        transcript.add("QUIT", smtp.command("QUIT"))
    except (OSError, SMTPError):
        pass  # the server may already have hung up; the transaction's result stands


def build_message(
    mail_from: str, rcpt_to: str, subject: str = "sandbox test", body: str = "Hello.\n", message_id: str | None = None
) -> tuple[bytes, str]:
    """A minimal RFC 5322 message and its (unique unless given) Message-ID."""
    message_id = message_id or f"<{uuid.uuid4().hex}@{mail_from.rsplit('@', 1)[-1]}>"
    headers = [
        f"From: <{mail_from}>",
        f"To: <{rcpt_to}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode(), message_id
