"""Secret hygiene: no seeded secret value in any output, exception message or URL.

The suite-wide half lives in ``conftest.py`` (``pytest_runtest_makereport``): every
test's captured output and failure report is scanned for the values in
``<sandbox root>/secrets.json``. This module runs the main deploys at ``-vvv``,
where pyinfra prints the most (fact arguments, ``_env``, command lines), and
drives the API clients into their error paths.
"""

from __future__ import annotations

import traceback

import pytest

from backupmx.core.errors import BackupMXError
from backupmx.core.secrets import SecretStore
from backupmx.dns.cloudflare import CloudflareClient
from backupmx.providers.acc import AccClient
from support.providers import (
    admin,
    cloudflare_faults,
    dead_port,
    output,
    pyinfra,
    sandbox_settings,
    secret_values,
)

RUNS = [
    ("deploys/backupmx.py", ("--dry", "-vvv"), False),
    ("deploys/backupmx.py", ("-vvv",), True),
    ("deploys/rollback.py", ("--dry", "-vvv"), False),
    ("deploys/maintenance.py", ("--data", "hold=status", "-vvv"), True),
    ("deploys/rollback.py", ("-vvv", "--limit", "controller"), True),
]


def test_the_deploys_at_vvv_print_no_secret(fresh):
    values = secret_values(fresh)
    assert len(values) >= 3  # the Cloudflare token, the ACC key, the Vault token at least
    leaks = []
    for deploy, args, yes in RUNS:
        result = pyinfra(deploy, *args, yes=yes)
        assert result.returncode == 0, output(result)
        leaks += [f"{deploy} {' '.join(args)}" for value in values if value in output(result)]
    assert leaks == []


def _chain_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _urls(session) -> list[str]:
    seen: list[str] = []
    session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response.request.url))
    return seen


def test_tokens_are_never_in_urls_or_exception_messages(fresh):
    values = secret_values(fresh)
    settings = sandbox_settings()
    secrets = SecretStore(settings.vault)
    token = secrets.get("cloudflare_api_token")
    key = secrets.get(settings.provider.key_secret)
    texts: list[str] = []

    cloudflare = CloudflareClient(fresh["cloudflare_api_base"], token, retries=0)
    urls = _urls(cloudflare.session)
    zone_id = cloudflare.zone_id(fresh["zone"])
    cloudflare.mx_records(zone_id, fresh["zone"])
    texts.append(repr(cloudflare))
    # 5xx, 429 and a dead endpoint: every error message and its whole traceback.
    for fault in ({"server_error": {"count": 1, "status": 502}}, {"rate_limit": {"count": 1, "retry_after": 0}}):
        cloudflare_faults(fresh, **fault)
        with pytest.raises(BackupMXError) as caught:
            cloudflare.record_count(zone_id)
        texts.append(_chain_text(caught.value))
    dead = CloudflareClient(f"http://127.0.0.1:{dead_port()}/client/v4", token, retries=0)
    with pytest.raises(BackupMXError) as caught:
        dead.zone_id(fresh["zone"])
    texts.append(_chain_text(caught.value))
    wrong = CloudflareClient(fresh["cloudflare_api_base"], "x" * 40, retries=0)
    with pytest.raises(BackupMXError) as caught:
        wrong.zone_id(fresh["zone"])
    texts.append(_chain_text(caught.value))

    acc = AccClient(settings.provider, key)
    acc_urls = _urls(acc._reads)
    acc.call("domain_get", {"domain": fresh["zone"]})
    texts.append(repr(acc))
    admin(fresh, "faults", {"server_error": {"count": 10, "status": 503}})
    with pytest.raises(BackupMXError) as caught:
        acc.call("domain_get", {"domain": fresh["zone"]})
    admin(fresh, "faults", {"server_error": None})
    texts.append(_chain_text(caught.value))
    dead_acc = AccClient(settings.provider.__class__(**{**settings.provider.__dict__,
                                                        "api_base": f"http://127.0.0.1:{dead_port()}/api.php",
                                                        "retries": 0}), key)
    with pytest.raises(BackupMXError) as caught:
        dead_acc.call("domain_get", {"domain": fresh["zone"]})
    texts.append(_chain_text(caught.value))

    assert urls and acc_urls
    assert [url for url in urls + acc_urls if any(value in url for value in values)] == []
    assert [text for text in texts if any(value in text for value in values)] == []
