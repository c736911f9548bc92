"""The SMTP proof a store-and-forward relay runs against its own listener (python3 on the
relay host, no dependency): a random recipient of each protected domain is taken (catch-all),
an outside domain is refused with 5xx (not an open relay), a client that talks first is
deferred with 4xx (postscreen's pregreet test); and the verdict on its lines.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# An outside domain for the open-relay proof (RFC 2606: never a real destination).
OUTSIDE_DOMAIN = "example.com"

# argv: host port domain... ; prints one JSON line per case:
# {"case": "catchall"|"open_relay"|"pregreet", "rcpt": ..., "code": int|None, "text": ..., "source": ...}
# A fresh 127/8 source address per session when the listener is on loopback: the
# postscreen PASS cache would otherwise let a client that passed once skip the
# pregreet test for a day.
SMTP_PROOF = r"""
import json, random, socket, sys, uuid
host, port, outside, domains = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def source():
    if host.startswith("127."):
        return ("127.%d.%d.%d" % (random.randrange(100, 250), random.randrange(0, 255), random.randrange(1, 254)), 0)
    return None
class Session:
    def __init__(self):
        self.src = source()
        self.sock = socket.create_connection((host, port), 30, source_address=self.src)
        self.buf = b""
    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace").rstrip("\r")
    def reply(self):
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line[3:4] != "-":
                return int(line[:3]), " | ".join(lines)
    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
def case(name, rcpt, early):
    result = {"case": name, "rcpt": rcpt, "code": None, "text": ""}
    try:
        s = Session()
        result["source"] = s.src[0] if s.src else ""
        if early:
            # postscreen leaves its "220-" line dangling and answers EHLO after it:
            # one reply() reads both and returns the EHLO code.
            s.send("EHLO pregreet.backupmx-probe.invalid")
            code, text = s.reply()
            if code == 220:
                code, text = s.reply()
        else:
            s.reply()
            s.send("EHLO backupmx-probe.invalid")
            code, text = s.reply()
        s.send("MAIL FROM:<>")
        s.reply()
        s.send("RCPT TO:<%s>" % rcpt)
        result["code"], result["text"] = s.reply()
        s.send("QUIT")
        s.sock.close()
    except (OSError, EOFError, ValueError) as error:
        result["text"] = "%s: %s" % (type(error).__name__, error)
    print(json.dumps(result), flush=True)
for domain in domains:
    case("catchall", "backupmx-probe-%s@%s" % (uuid.uuid4().hex[:12], domain), False)
case("open_relay", "backupmx-probe@%s" % outside, False)
case("pregreet", "backupmx-probe-%s@%s" % (uuid.uuid4().hex[:12], domains[0]), True)
""".strip()


def judge_smtp(results: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> list[tuple[str, bool, str]]:
    """(check, ok, detail) for catch-all, open relay and pregreet from the proof's lines."""
    by_case: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_case.setdefault(str(result.get("case")), []).append(result)
    checks = []
    catchall = by_case.get("catchall", [])
    bad = [f"{r.get('rcpt')}: {r.get('text') or r.get('code')}" for r in catchall if r.get("code") != 250]
    ok = len(catchall) == len(domains) and not bad
    checks.append(("catch-all", ok, f"a random recipient of {', '.join(domains)}: RCPT 250" if ok
                   else "; ".join(bad) or "no answer"))
    relay = (by_case.get("open_relay") or [{}])[0]
    code = relay.get("code")
    ok = isinstance(code, int) and 500 <= code < 600
    checks.append(("not an open relay", ok, f"{relay.get('rcpt')}: {relay.get('text') or code}"))
    early = (by_case.get("pregreet") or [{}])[0]
    code = early.get("code")
    ok = isinstance(code, int) and 400 <= code < 500
    checks.append(("pregreet defers", ok, f"client talking first ({early.get('source') or 'probe'}): "
                   f"{early.get('text') or code}"))
    return checks
