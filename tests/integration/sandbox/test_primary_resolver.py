"""The sandbox primary's resolver (``world["resolver"]``, port 53 of this sandbox's
own 127.53.X.Y): what the primary's Postfix, dnsblog and policyd-spf ask.

Asked with dnspython as a stub resolver asks: recursion desired, and the answers
must carry RA (glibc and Postfix ignore a reply without it) and NXDOMAIN for any
name the world does not hold.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import dns.reversename
import pytest

from backupmx_sandbox import seed


@pytest.fixture(scope="module")
def resolver(world) -> dns.resolver.Resolver:
    stub = dns.resolver.Resolver(configure=False)
    stub.nameservers = [world["resolver"]]
    stub.lifetime = 3
    return stub


def answers(resolver, name: str, kind: str) -> list[str]:
    return sorted(rdata.to_text().strip('"').rstrip(".") for rdata in resolver.resolve(name, kind))


def test_the_resolver_is_a_loopback_address_of_its_own_on_port_53(world):
    first, second, *_ = world["resolver"].split(".")
    assert (first, second) == ("127", "53")
    query = dns.message.make_query(seed.DOMAIN, "MX")
    for send in (dns.query.udp, dns.query.tcp):
        reply = send(query, world["resolver"], port=53, timeout=2)
        assert reply.flags & dns.flags.RA
        assert seed.PRIMARY_MX + "." in reply.answer[0].to_text()


def test_unknown_names_are_nxdomain_with_recursion_available(world):
    reply = dns.query.udp(dns.message.make_query("nothing.example", "A"), world["resolver"], port=53, timeout=2)
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.flags & dns.flags.RA


def test_the_first_relay_has_forward_confirmed_reverse_dns(resolver):
    name = answers(resolver, dns.reversename.from_address("192.0.2.25"), "PTR")
    assert name == ["out1.rollernet.us"]
    assert answers(resolver, name[0], "A") == ["192.0.2.25"]


def test_the_second_relay_has_a_ptr_whose_name_does_not_point_back(resolver):
    name = answers(resolver, dns.reversename.from_address("198.51.100.25"), "PTR")
    assert name == ["out2.rollernet.us"]
    assert "198.51.100.25" not in answers(resolver, name[0], "A")


def test_the_names_the_product_connects_to_stay_on_loopback(resolver):
    for host in seed.BACKUP_MX:
        assert answers(resolver, host, "A") == ["127.0.0.1"]


@pytest.mark.parametrize("address", ["127.0.0.66", "192.0.2.1", "198.51.100.1", "2001:db8:2::1"])
def test_the_self_hosted_relay_and_the_probe_addresses_have_no_ptr(resolver, address):
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(dns.reversename.from_address(address), "PTR")


def test_the_strict_sender_publishes_a_mail_server_and_spf_that_omits_the_relays(resolver):
    assert answers(resolver, seed.SENDER_DOMAIN, "MX") == [f"10 {seed.SENDER_MX}"]
    assert answers(resolver, seed.SENDER_MX, "A") == [seed.SENDER_ALLOWED_IP]
    spf = answers(resolver, seed.SENDER_DOMAIN, "TXT")
    assert spf == [f"v=spf1 ip4:{seed.SENDER_ALLOWED_IP} -all"]
    assert answers(resolver, f"mx.{seed.NEUTRAL_SENDER_DOMAIN}", "A")


@pytest.mark.parametrize("address", seed.DNSBL_LISTED)
def test_the_dnsbl_lists_a_relay_a_probe_and_an_outside_address(world, resolver, address):
    name = ".".join(reversed(address.split("."))) + "." + world["dnsbl_zone"]
    assert answers(resolver, name, "A") == ["127.0.0.2"]
    assert address in answers(resolver, name, "TXT")[0]


@pytest.mark.parametrize("address", ["198.51.100.25", "127.0.0.66", "203.0.113.10"])
def test_the_dnsbl_does_not_list_the_others(world, resolver, address):
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(".".join(reversed(address.split("."))) + "." + world["dnsbl_zone"], "A")
