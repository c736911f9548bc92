"""The live MX check's verdicts that need no sandbox DNS: a server that never answers,
servers that disagree. Against the sandbox's authoritative DNS: tests/integration/test_dnscheck.py."""

from __future__ import annotations

import socket

import pytest
from support.seed import BACKUPS, PRIMARY

from backupmx.dns import check as dnscheck
from backupmx.dns.check import DNSCheckError, live_mx
from backupmx_sandbox import seed


def test_a_silent_server_is_an_error_naming_it():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(DNSCheckError) as failed:
            live_mx(seed.DOMAIN, [server], timeout=0.3)
    assert str(failed.value).startswith(f"DNS {server}: no answer for {seed.DOMAIN} MX (Timeout)")


def test_servers_that_disagree_are_reported(monkeypatch):
    answers = {"a:53": frozenset({PRIMARY}), "b:53": frozenset({PRIMARY} | BACKUPS)}
    monkeypatch.setattr(dnscheck, "mx_per_server", lambda *args, **kwargs: answers)
    with pytest.raises(DNSCheckError, match="disagree .*a:53: 1 mail.viktorbarzin.me; b:53: 1 mail"):
        live_mx(seed.DOMAIN, ["a:53", "b:53"])
