"""The Cloudflare client's error paths that need no fake API: an endpoint nothing listens
on, and answers the fake never gives (an envelope with success false on HTTP 200, a
page that is not JSON) from a one-answer server on loopback (support.http_servers.AnswerServer).
Everything else about the client: tests/integration/test_cloudflare_client.py."""

from __future__ import annotations

import pytest
from support.http_servers import AnswerServer

from backupmx.core.errors import BackupMXError
from backupmx.dns.cloudflare import (
    CloudflareClient,
    CloudflareDuplicateError,
    CloudflareRequestError,
    CloudflareUnavailableError,
)
from support.providers import dead_port


def test_unreachable_api_is_a_clear_error():
    client = CloudflareClient(f"http://127.0.0.1:{dead_port()}/client/v4", "t" * 40, backoff_factor=0.01,
                              timeout=(0.5, 0.5))
    with pytest.raises(CloudflareUnavailableError) as failed:
        client.record_count("z" * 32)
    assert "GET /zones/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz/dns_records: no answer (ConnectionError)" in str(failed.value)
    assert "run again later (nothing was changed)" in str(failed.value)


def test_success_false_on_http_200_is_an_error():
    body = {"success": False, "errors": [{"code": 1234, "message": "Something odd"}], "messages": [], "result": None}
    with AnswerServer(200, body) as address:
        client = CloudflareClient(f"http://{address}/client/v4", "t" * 40)
        with pytest.raises(CloudflareRequestError) as failed:
            client.record_count("a" * 32)
    assert "200 with success: false (Something odd (1234))" in str(failed.value)


def test_non_json_200_is_an_error():
    with AnswerServer(200, None) as address:
        client = CloudflareClient(f"http://{address}/client/v4", "t" * 40)
        with pytest.raises(CloudflareUnavailableError, match="200 without a JSON envelope"):
            client.record_count("a" * 32)


def test_duplicate_error_type_is_exported():
    assert issubclass(CloudflareDuplicateError, BackupMXError)
