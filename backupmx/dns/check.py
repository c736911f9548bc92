"""The MX set as the zone's authoritative servers publish it, asked directly.

Recursive resolvers cache (and the sandbox has none), so every question goes to the
authoritative servers themselves: the ``ip:port`` list from the inventory, or when
that is empty the zone's own NS. UDP first, TCP when the answer is truncated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from backupmx.core.errors import BackupMXError

QUERY_TIMEOUT = 3.0
ATTEMPTS = 2  # per server and question: one lost UDP packet must not fail a check

MX = tuple[int, str]  # (preference, host without the final dot)


class DNSCheckError(BackupMXError):
    """A DNS question could not be answered, or the wait for an MX set ran out."""


def split_server(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def query(name: str, rdtype: str, server: str, timeout: float = QUERY_TIMEOUT) -> dns.message.Message:
    """One question to one authoritative server; TCP when UDP comes back truncated."""
    host, port = split_server(server)
    request = dns.message.make_query(name, rdtype)
    request.flags &= ~dns.flags.RD  # an authoritative server has no reason to recurse
    last_error: Exception | None = None
    for _attempt in range(ATTEMPTS):
        try:
            answer = dns.query.udp(request, host, port=port, timeout=timeout)
            if answer.flags & dns.flags.TC:
                answer = dns.query.tcp(request, host, port=port, timeout=timeout)
            break
        except (dns.exception.DNSException, OSError) as error:
            last_error = error
    else:
        raise DNSCheckError(f"DNS {server}: no answer for {name} {rdtype} "
                            f"({type(last_error).__name__}); check the server address and run again")
    _check_answer(answer, name, rdtype, server)
    return answer


def _check_answer(answer: dns.message.Message, name: str, rdtype: str, server: str) -> None:
    rcode = answer.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise DNSCheckError(f"DNS {server}: {dns.rcode.to_text(rcode)} for {name} {rdtype}; is it authoritative "
                            f"for this zone? (check dns_servers in the inventory)")
    if not answer.flags & dns.flags.AA:
        raise DNSCheckError(f"DNS {server}: the answer for {name} {rdtype} is not authoritative; list the zone's "
                            f"own name servers in dns_servers")


def records(answer: dns.message.Message, name: str, rdtype: str) -> list:
    """The rdata of type ``rdtype`` in the answer for ``name`` (following an in-zone CNAME chain)."""
    wanted = dns.rdatatype.from_text(rdtype)
    owner = dns.name.from_text(name)
    for _hop in range(8):
        rrset = answer.get_rrset(answer.answer, owner, dns.rdataclass.IN, wanted)
        if rrset is not None:
            return list(rrset)
        cname = answer.get_rrset(answer.answer, owner, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is None:
            return []
        owner = cname[0].target
    return []


def exists(name: str, servers: Sequence[str], timeout: float = QUERY_TIMEOUT) -> bool:
    """Does ``name`` have an address (A, AAAA, or a CNAME to somewhere) on the first server that answers?"""
    for rdtype in ("A", "AAAA"):
        answer = query(name, rdtype, servers[0], timeout)
        if answer.rcode() == dns.rcode.NXDOMAIN:
            return False
        if records(answer, name, rdtype) or _has_cname(answer, name):
            return True
    return False


def _has_cname(answer: dns.message.Message, name: str) -> bool:
    return any(rrset.rdtype == dns.rdatatype.CNAME and rrset.name == dns.name.from_text(name)
               for rrset in answer.answer)


def txt(name: str, servers: Sequence[str], timeout: float = QUERY_TIMEOUT) -> list[str]:
    """The TXT records of ``name`` (each one's strings joined), from the first server."""
    answer = query(name, "TXT", servers[0], timeout)
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in records(answer, name, "TXT")]


def mx_from(answer: dns.message.Message, domain: str) -> frozenset[MX]:
    return frozenset((rdata.preference, _host(rdata.exchange)) for rdata in records(answer, domain, "MX"))


def _host(name: dns.name.Name) -> str:
    # A null MX (RFC 7505) is the root name: shown as ".", as Cloudflare stores it.
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def authoritative_servers(domain: str, resolver: dns.resolver.Resolver | None = None,
                          timeout: float = QUERY_TIMEOUT) -> list[str]:
    """The zone's NS as ``ip:53``, found through ``resolver`` (the system's by default)."""
    resolver = resolver or dns.resolver.Resolver()
    resolver.lifetime = timeout
    try:
        zone = dns.resolver.zone_for_name(domain, resolver=resolver, lifetime=timeout)
        names = [rdata.target.to_text(omit_final_dot=True) for rdata in resolver.resolve(zone, "NS")]
    except dns.exception.DNSException as error:
        raise DNSCheckError(f"DNS: cannot find the name servers of {domain} ({type(error).__name__}); "
                            f"set dns_servers in the inventory to the zone's servers as ip:port") from None
    servers = []
    for ns in names:
        for rdtype in ("A", "AAAA"):
            try:
                servers += [f"[{r.address}]:53" if ":" in r.address else f"{r.address}:53"
                            for r in resolver.resolve(ns, rdtype)]
            except dns.exception.DNSException:
                continue  # one name server without an address of this family is normal
    if not servers:
        raise DNSCheckError(f"DNS: the name servers of {domain} ({', '.join(names)}) have no address; "
                            f"set dns_servers in the inventory to the zone's servers as ip:port")
    return servers


def mx_per_server(domain: str, servers: Sequence[str] = (), timeout: float = QUERY_TIMEOUT) -> dict[str, frozenset[MX]]:
    """The apex MX set each authoritative server answers."""
    servers = list(servers) or authoritative_servers(domain, timeout=timeout)
    return {server: mx_from(query(domain, "MX", server, timeout), domain) for server in servers}


def live_mx(domain: str, servers: Sequence[str] = (), timeout: float = QUERY_TIMEOUT) -> frozenset[MX]:
    """The apex MX set the authoritative servers publish; they must agree."""
    answers = mx_per_server(domain, servers, timeout)
    distinct = set(answers.values())
    if len(distinct) > 1:
        said = "; ".join(f"{server}: {render(mx)}" for server, mx in answers.items())
        raise DNSCheckError(f"DNS: the servers of {domain} disagree ({said}); a change is still spreading, "
                            f"run again in a minute")
    return distinct.pop()


def render(mx_set: Iterable[MX]) -> str:
    return ", ".join(f"{priority} {host}" for priority, host in sorted(mx_set)) or "no MX"


def wait_for_mx(domain: str, servers: Sequence[str], want_present: Iterable[MX] = (),
                want_absent: Iterable[MX] = (), timeout: float = 120.0, interval: float = 2.0,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep,
                on_wait: Callable[[str], None] | None = None) -> frozenset[MX]:
    """Wait until every server shows all of ``want_present`` and none of ``want_absent``.

    ``on_wait`` is told, each time the answer is not yet as wanted, what is still missing
    (``backupmx.core.progress.Progress.update``).
    """
    present, absent = frozenset(want_present), frozenset(want_absent)
    servers = list(servers) or authoritative_servers(domain)
    deadline = clock() + timeout
    while True:
        try:
            answers = mx_per_server(domain, servers)
            problem = _unmet(answers, present, absent)
        except DNSCheckError as error:
            answers, problem = {}, str(error)
        if problem is None:
            return next(iter(answers.values()))
        if clock() >= deadline:
            raise DNSCheckError(f"DNS: MX of {domain} not as wanted after {timeout:.0f} s: {problem}; check the "
                                f"records in Cloudflare and run again")
        if on_wait is not None:
            on_wait(problem)
        sleep(min(interval, max(0.0, deadline - clock())))


def _unmet(answers: dict[str, frozenset[MX]], present: frozenset[MX], absent: frozenset[MX]) -> str | None:
    problems = []
    for server, mx in answers.items():
        missing, still = present - mx, absent & mx
        if missing:
            problems.append(f"{server} lacks {render(missing)}")
        if still:
            problems.append(f"{server} still has {render(still)}")
    return "; ".join(problems) or None
