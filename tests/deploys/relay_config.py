"""Test helper: configure (or un-configure) the sandbox relay host, then prove it.

Data: ``relayhost`` (the world's), ``relay_domains``, ``relay_present`` (default
true), ``relay_verify`` (default true), ``relay_assess`` (log the read-only
assessment's gate rows first; ``relay_cidrs`` is the run's list for G4).
Used by tests/cli/test_relayhost.py.
"""

from pyinfra import host, logger

from operations.relayhost import assess_relayhost, is_relay, relay_config, relay_settings, verify_relay

if is_relay(host):
    relay = relay_settings(host)
    domains = host.data.get("relay_domains")
    present = host.data.get("relay_present", True)
    if host.data.get("relay_assess"):
        assessment = assess_relayhost(relay, domains, relay_cidrs=host.data.get("relay_cidrs"))
        for row in assessment.rows:
            host.log(f"gate row {row.key} {row.status}: {row.evidence}", logger.info)
    relay_config(name="test: relay config", relay=relay, domains=domains, present=present)
    if present and host.data.get("relay_verify", True):
        verify_relay(name="test: verify relay", relay=relay, domains=domains)
