"""A network namespace of its own for a container, joined to the host's loopback by forwards.

Run as ``python -m backupmx_sandbox.netfwd SPEC_FILE``. The process makes a new
network namespace (only its own ``lo``), which it holds for as long as it runs: a
container started with ``--network ns:/proc/<pid>/ns/net`` lives in it. Two kinds of
forward join it to the host, all on loopback addresses:

* ``outward``: a TCP port on the host's 127.0.0.1 that reaches a port inside (the
  published ports of a container: its SMTP listeners);
* ``inward``: an address and port inside that reaches one on the host (UDP and/or
  TCP: the sandbox resolver, a policy service).

Why not ``--network host``: docker-mailserver binds fixed ports (25, 143, 465, 587,
11334, ...) on every address, so two sandbox worlds, or a world and the machine's
own services, would clash, and the mail server would listen beyond loopback. Why not
podman's own port forwarding: it needs a bridge or slirp4netns, with traffic over
non-loopback addresses. A socket keeps the namespace it was made in, so one process
can listen on the host and connect inside (or the reverse) with ``setns`` around the
``socket()`` call only.

The spec (JSON): ``{"outward": [[host_port, inner_port], ...], "inward": [[inner_address,
inner_port, host_address, host_port, "tcp" | "udp"], ...]}``. Everything is set up
before the first line of output, ``ready``, so a supervisor can wait for it.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
LOOPBACK = "127.0.0.1"
UDP_REPLY_SECONDS = 5.0
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


@contextmanager
def host_namespace(host_ns: int, own_ns: int):
    """This thread in the host's network namespace for the block (the sockets made there stay there)."""
    _check(_libc.setns(host_ns, CLONE_NEWNET), "setns (host)")
    try:
        yield
    finally:
        _check(_libc.setns(own_ns, CLONE_NEWNET), "setns (own)")


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until it ends, then end that direction on the other side too."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for action in (lambda: sink.shutdown(socket.SHUT_WR), source.close):
            try:
                action()
            except OSError:
                pass


def splice(client: socket.socket, upstream: socket.socket) -> None:
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
    pump(client, upstream)


def serve_tcp(listener: socket.socket, connect) -> None:
    """Accept forever; each connection is spliced to ``connect()``'s socket (closed if that fails)."""
    while True:
        client, _ = listener.accept()

        def handle(client=client):
            try:
                upstream = connect()
            except OSError:
                client.close()
                return
            splice(client, upstream)

        threading.Thread(target=handle, daemon=True).start()


def serve_udp(listener: socket.socket, make_socket, target: tuple[str, int]) -> None:
    """Each datagram goes to ``target`` from a socket of its own; the reply comes back to its sender."""
    while True:
        query, sender = listener.recvfrom(65536)

        def answer(query=query, sender=sender):
            with make_socket() as upstream:
                upstream.settimeout(UDP_REPLY_SECONDS)
                try:
                    upstream.sendto(query, target)
                    reply, _ = upstream.recvfrom(65536)
                except OSError:
                    return
            listener.sendto(reply, sender)

        threading.Thread(target=answer, daemon=True).start()


def listen(kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    return sock


def run(spec: dict) -> None:
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    # The host side's listeners first, while this (still single-threaded) process is there.
    outward = [(listen(socket.SOCK_STREAM, LOOPBACK, host_port), inner_port) for host_port, inner_port in spec["outward"]]
    _check(_libc.unshare(CLONE_NEWNET), "unshare")
    own_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    workers = []
    for listener, inner_port in outward:
        workers.append((serve_tcp, (listener, lambda port=inner_port: socket.create_connection((LOOPBACK, port), 10))))
    for inner_address, inner_port, host_address, host_port, protocol in spec["inward"]:
        if protocol == "udp":
            def make_udp():
                with host_namespace(host_ns, own_ns):
                    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

            workers.append((serve_udp, (listen(socket.SOCK_DGRAM, inner_address, inner_port), make_udp,
                                        (host_address, host_port))))
        else:
            def connect_host(target=(host_address, host_port)):
                with host_namespace(host_ns, own_ns):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(10)
                sock.connect(target)
                sock.settimeout(None)
                return sock

            workers.append((serve_tcp, (listen(socket.SOCK_STREAM, inner_address, inner_port), connect_host)))
    for target, args in workers:
        threading.Thread(target=target, args=args, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m backupmx_sandbox.netfwd SPEC_FILE", file=sys.stderr)
        return 2
    run(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
