"""Test helper: configure (or un-configure) the sandbox relay host, then prove it.

Data: ``relayhost`` (the world's), ``relay_domains``, ``relay_present`` (default
true), ``relay_verify`` (default true). Used by tests/test_relayhost.py.
"""

from pyinfra import host

from operations.relayhost import is_relay, relay_config, relay_settings, verify_relay

if is_relay(host):
    relay = relay_settings(host)
    domains = host.data.get("relay_domains")
    present = host.data.get("relay_present", True)
    relay_config(name="test: relay config", relay=relay, domains=domains, present=present)
    if present and host.data.get("relay_verify", True):
        verify_relay(name="test: verify relay", relay=relay, domains=domains)
