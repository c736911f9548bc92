"""DNS answers for the sandbox's zones: the Cloudflare zones (live) and the static world zones.

Two servers share one ``ZoneResolver`` in the fake Cloudflare process:

* the authoritative server (``world["dns"]``, ``127.0.0.1:PORT``): what the product
  and rspamd ask; names outside every zone are REFUSED, as an authoritative server
  answers a question it has no zone for;
* the primary's resolver (``world["resolver"]``, port 53 on a loopback address of
  this sandbox's own, see ``dnsapi.resolver_address``): what the sandbox Postfix,
  its dnsblog and policyd-spf ask through their own ``/etc/resolv.conf`` (which has
  no port). It answers like a recursive resolver (RA set, NXDOMAIN for any name
  outside the zones) so glibc, Postfix and dnspython accept its answers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from dnslib import AAAA, CNAME, EDNS0, MX, NS, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

AUTO_TTL = 1
AUTO_TTL_SECONDS = 300  # what Cloudflare serves for ttl 1 ("automatic")
RESOLVER_PORT = 53

@dataclass
class Answer:
    name: str
    type: str
    ttl: int
    rdata: object


def txt_strings(content: str) -> list[bytes]:
    """TXT content as character-strings of at most 255 bytes (RFC 1035 §3.3.14)."""
    if len(content) >= 2 and content.startswith('"') and content.endswith('"'):
        # Already in presentation form: "part one" "part two".
        parts = [re.sub(r"\\(.)", r"\1", p) for p in re.findall(r'"((?:[^"\\]|\\.)*)"', content)]
        raw_parts = [p.encode() for p in parts]
    else:
        raw_parts = [content.encode()]
    chunks = [part[i:i + 255] for part in raw_parts for i in range(0, max(len(part), 1), 255)]
    return chunks or [b""]


def rdata_for(kind: str, content: str, priority: int | None):
    if kind == "A":
        return A(content)
    if kind == "AAAA":
        return AAAA(content)
    if kind == "CNAME":
        return CNAME(content + ".")
    if kind == "NS":
        return NS(content + ".")
    if kind == "MX":
        return MX("." if content == "." else content + ".", priority or 0)
    if kind == "TXT":
        return TXT(txt_strings(content))
    if kind == "PTR":
        return PTR(content + ".")
    return None  # stored but not served (CAA, SRV, …)


def answers_from_records(records: list[dict]) -> list[Answer]:
    answers = []
    for record in records:
        try:
            rdata = rdata_for(record["type"], record["content"], record.get("priority"))
        except Exception:  # a record planted through /_sandbox/records that DNS cannot carry
            continue
        if rdata is not None:
            ttl = AUTO_TTL_SECONDS if record.get("ttl", AUTO_TTL) == AUTO_TTL else int(record["ttl"])
            answers.append(Answer(record["name"].lower(), record["type"], ttl, rdata))
    return answers


def zone_apex(zone: str, name_servers: list[str], serial: int, rname: str) -> list[Answer]:
    # SOA and NS are the zone's own, not records in the API (as on Cloudflare). The
    # negative-caching TTL is kept short so the sandbox never serves stale NXDOMAINs.
    soa = SOA(name_servers[0] + ".", rname + ".", (serial, 10000, 2400, 604800, AUTO_TTL_SECONDS))
    return [Answer(zone, "SOA", AUTO_TTL_SECONDS, soa)] + [
        Answer(zone, "NS", 86400, NS(server + ".")) for server in name_servers
    ]


class ZoneResolver(BaseResolver):
    """Answers for the Cloudflare zones (live) and the static world zones.

    ``world`` is the fake's shared state (its ``store`` and ``static_zones``).
    ``recursive`` makes it the primary's resolver: the same data, answered as a
    recursive resolver does (RA set, not authoritative, NXDOMAIN outside the zones).
    """

    def __init__(self, world, recursive: bool = False):
        self.world = world
        self.recursive = recursive

    def zone_data(self, qname: str) -> tuple[str, list[Answer]] | None:
        store = self.world.store
        candidates = [(z.name, z) for z in store.zones.values()] + [(n, None) for n in self.world.static_zones]
        matches = [(name, zone) for name, zone in candidates if qname == name or qname.endswith("." + name)]
        if not matches:
            return None
        name, zone = max(matches, key=lambda item: len(item[0]))
        if zone is not None:
            with store.lock:
                records, serial = store.snapshot(zone.id), store.serial
            return name, zone_apex(name, zone.name_servers, serial, "dns.cloudflare.com") + \
                answers_from_records(records)
        static = self.world.static_zones[name]
        apex = zone_apex(name, [f"ns1.{name}", f"ns2.{name}"], 1, f"hostmaster.{name}")
        return name, apex + answers_from_records(static)

    def resolve(self, request, handler):
        reply = request.reply(ra=int(self.recursive), aa=int(not self.recursive))
        question = request.q
        qname = str(question.qname).rstrip(".").lower()
        qtype = QTYPE[question.qtype]
        slow = None if self.recursive else self.world.faults.take("slow", "DNS", qname)
        if slow:  # the fake's ``slow`` fault with methods ["DNS"] (cf_faults.Faults)
            time.sleep(float(slow.get("seconds", 1)))
        found = self.zone_data(qname)
        if found is None:
            reply.header.aa = 0
            # A resolver has the whole name space: what no zone holds does not exist.
            reply.header.rcode = RCODE.NXDOMAIN if self.recursive else RCODE.REFUSED
            return reply
        zone, data = found
        self.answer(reply, qname, qtype, zone, data, depth=0)
        return reply

    def answer(self, reply, qname: str, qtype: str, zone: str, data: list[Answer], depth: int) -> None:
        at_name = [a for a in data if a.name == qname]
        cname = [a for a in at_name if a.type == "CNAME"]
        if cname and qtype not in ("CNAME", "ANY"):
            self.add(reply, cname)
            target = str(cname[0].rdata.label).rstrip(".").lower()
            if depth < 8 and (target == zone or target.endswith("." + zone)):
                self.answer(reply, target, qtype, zone, data, depth + 1)
            return
        matches = at_name if qtype == "ANY" else [a for a in at_name if a.type == qtype]
        if matches:
            self.add(reply, matches)
            return
        # Negative answer: NODATA if the name exists (or has names below it), else NXDOMAIN.
        exists = bool(at_name) or any(a.name.endswith("." + qname) for a in data)
        if not exists and depth == 0:
            reply.header.rcode = RCODE.NXDOMAIN
        soa = next(a for a in data if a.type == "SOA")
        reply.add_auth(RR(zone, QTYPE.SOA, ttl=soa.ttl, rdata=soa.rdata))

    @staticmethod
    def add(reply, answers: list[Answer]) -> None:
        for a in answers:
            reply.add_answer(RR(a.name, getattr(QTYPE, a.type), ttl=a.ttl, rdata=a.rdata))


class SizedHandler(DNSHandler):
    """Truncates UDP answers to the client's size (512 bytes, or what EDNS0 offers)."""

    def get_reply(self, data):
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        offered = [rr.rclass for rr in request.ar if rr.rtype == QTYPE.OPT]
        if offered:
            reply.add_ar(EDNS0(udp_len=1232))
        packed = reply.pack()
        if self.protocol == "udp" and len(packed) > max([512] + offered):
            # TC set, question kept (dnslib's truncate() drops it, which resolvers
            # reject as an answer to another question); the client retries over TCP.
            truncated = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, q=1), q=request.q)
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed


def start_servers(resolver: ZoneResolver, host: str, port: int) -> list[DNSServer]:
    """UDP and TCP servers for ``resolver`` on host:port, each in a daemon thread."""
    logger = DNSLogger("-request,-reply,-truncated", prefix=False)
    servers = [DNSServer(resolver, address=host, port=port, tcp=tcp, logger=logger, handler=SizedHandler)
               for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    return servers
