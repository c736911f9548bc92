"""A policy server the product knows nothing about: the "layer the tool does not handle".

Run as ``python -m backupmx_sandbox.unknown_policy --port PORT`` (a supervised sandbox
service). It speaks Postfix's policy delegation protocol (SMTPD_POLICY_README: one
request is ``name=value`` lines ending in an empty line, one answer is
``action=...`` and an empty line, many requests per connection) on loopback, and
refuses every client in the relay networks (``seed.RELAY_CIDRS`` and the self-hosted
relay's address) with a 550; anything else gets DUNNO. The ``unknown_policy``
layer (``backupmx_sandbox.layers``) puts it into the primary's recipient restrictions.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socketserver
import sys

from backupmx_sandbox import relayhost, seed
from backupmx_sandbox.hostfiles import listening
from backupmx_sandbox.world import LOOPBACK, Sandbox, Service

SERVICE_NAMES = ["unknown-policy"]
PORT_NAME = "unknown_policy"
REFUSED = [ipaddress.ip_network(cidr) for cidr in seed.RELAY_CIDRS] + [
    ipaddress.ip_network(f"{relayhost.RELAY_ADDRESS}/32")
]
REFUSAL = "550 5.7.1 refused by the sandbox's unknown policy service: no mail from relay networks"


def decide(request: dict[str, str]) -> str:
    """The action for one policy request."""
    try:
        client = ipaddress.ip_address(request.get("client_address", ""))
    except ValueError:
        return "DUNNO"
    return REFUSAL if any(client in network for network in REFUSED) else "DUNNO"


class PolicyHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        request: dict[str, str] = {}
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:
                name, _, value = line.partition("=")
                request[name] = value
                continue
            self.wfile.write(f"action={decide(request)}\n\n".encode())
            self.wfile.flush()
            request = {}


class PolicyServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def services(sandbox: Sandbox) -> list[Service]:
    port = sandbox.port(PORT_NAME)
    return [Service(
        name="unknown-policy",
        argv=[sys.executable, "-m", __name__, "--port", str(port)],
        ready=lambda: listening(port),
        ready_timeout=20,
    )]


def world(sandbox: Sandbox) -> dict:
    return {"unknown_policy": f"{LOOPBACK}:{sandbox.port(PORT_NAME)}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unknown_policy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with PolicyServer((LOOPBACK, args.port), PolicyHandler) as server:
        print(f"unknown policy service on {LOOPBACK}:{args.port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
