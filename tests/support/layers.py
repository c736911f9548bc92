"""The realistic relayed envelope, sent to the sandbox primary one layer at a time.

A store-and-forward backup delivers from its own address, says its own HELO name,
and keeps the original sender's envelope: here a ``sender.test`` address (SPF
``-all`` that does not list any relay) to a local recipient. ``rcpt_reply`` sends
that through the primary's PROXY-v2 listener, claiming the relay's address in the
PROXY-v2 header, and stops at RCPT (RSET, QUIT: nothing is ever delivered); it
returns the reply that ended the session (RCPT's, or an earlier refusal).

Which relay address shows which layer before a deploy (``backupmx_sandbox.seed``):
``192.0.2.25`` (mail.rollernet.us: forward-confirmed PTR, DNSBL-listed, so the base
stack's postscreen DNSBL refuses it first), ``198.51.100.25`` (mail2: a PTR that does
not point back, not listed: it reaches smtpd), ``127.0.0.66`` (the self-hosted relay:
no PTR, not listed, inside rspamd's local_networks).

``no_deploy(world)`` puts the primary back as the sandbox made it for a block (no
relay whitelist); ``relays_past_postscreen(world)`` writes only postscreen's half of
stage 3, so a DNSBL-listed relay reaches smtpd's layers.

``layer_probe(world, layer, envelope)`` is the probe per layer (``tight_anvil`` sends a
burst and returns the first refusal, or the last reply); the tests before a deploy
assert a refusal by that layer (``LAYER_REFUSAL``), tests after a deploy can assert a
250 with the same call.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from backupmx_sandbox import relayhost, seed
from backupmx_sandbox.smtp_client import Reply, SMTPConnection, SMTPError
from support import mailhost
from support.postfix_reload import postconf_value
from support.mailpath import endpoint

from backupmx.mailhost.model import ACCESS_LIST
from backupmx.postfix.mastercf import set_service_options

STRICT_SENDER = f"someone@{seed.SENDER_DOMAIN}"
LOCAL_RECIPIENT = f"postmaster@{seed.DOMAIN}"
# The HELO name each relay address says (the fake Roller Network relays say their
# host name, the self-hosted relay its myhostname).
RELAY_HELO = {
    **{address: host for host, address in seed.RELAY_SOURCE.items()},
    relayhost.RELAY_ADDRESS: relayhost.HOSTNAME,
}
# An outside client's name: an FQDN as any real MTA says.
OUTSIDE_HELO = "mta.outside.example"

# What each layer's refusal says (a regular expression over "CODE TEXT").
LAYER_REFUSAL = {
    "postscreen_dnsbl": rf"^550 5\.7\.1 Service unavailable; client \[[0-9a-f.:]+\] blocked using {re.escape(seed.DNSBL_ZONE)}",
    "policyd_spf": r"^550 5\.7\.23 .*Recipient address rejected: Message rejected due to: SPF fail",
    "unknown_client_hostname": r"^450 4\.7\.25 Client host rejected: cannot find your hostname",
    "rbl_client": rf"^554 5\.7\.1 Service unavailable; Client host \[[0-9a-f.:]+\] blocked using {re.escape(seed.DNSBL_ZONE)}; Listed by",
    "tight_anvil": r"^(421 4\.7\.0 .*Error: too many connections from|450 4\.7\.1 Error: too much mail from)",
    "unknown_policy": r"^550 5\.7\.1 .*refused by the sandbox's unknown policy service",
}


@dataclass(frozen=True)
class Envelope:
    source: str
    helo: str
    mail_from: str = STRICT_SENDER
    rcpt_to: str = LOCAL_RECIPIENT


def relayed(source: str) -> Envelope:
    """The envelope a relay at ``source`` delivers: its HELO name, the strict sender, a local recipient."""
    return Envelope(source, RELAY_HELO.get(source, OUTSIDE_HELO))


def outside(source: str, mail_from: str = STRICT_SENDER) -> Envelope:
    """An outside client at ``source`` (by default spoofing the strict sender)."""
    return Envelope(source, OUTSIDE_HELO, mail_from)


def _complete(smtp: SMTPConnection) -> Reply:
    # postscreen's "220-" greeting dangles when it hands over to smtpd (or refuses):
    # the reply that counts is the first complete one.
    reply = smtp.read_reply()
    while not reply.complete:
        reply = smtp.read_reply()
    return reply


def rcpt_reply(world, envelope: Envelope, listener: str = "proxy_listener", timeout: float = 20.0) -> Reply:
    """Send ``envelope`` up to RCPT through ``world[listener]`` (PROXY v2 from ``envelope.source``);
    the reply that ended the session: RCPT's, or the greeting/EHLO/MAIL refusal before it."""
    host, port = endpoint(world[listener])
    with SMTPConnection.connect(host, port, timeout) as smtp:
        smtp.send_proxy_header(envelope.source)
        try:
            reply = _complete(smtp)
        except TimeoutError:
            # What the mail host was doing instead of greeting: the evidence a red run keeps.
            log = postfix_log_path(world).read_text(errors="replace").splitlines()
            raise AssertionError(f"{envelope.source}: no greeting from {host}:{port} within {timeout:.0f} s; "
                                 "the mail host's log ends:\n" + "\n".join(log[-20:])) from None
        if reply.code == 220:
            reply = smtp.command(f"EHLO {envelope.helo}")
            if reply.code == 250:
                reply = smtp.command(f"MAIL FROM:<{envelope.mail_from}>")
                if reply.code == 250:
                    reply = smtp.command(f"RCPT TO:<{envelope.rcpt_to}>")
                    with contextlib.suppress(OSError, SMTPError):
                        smtp.command("RSET")
        with contextlib.suppress(OSError, SMTPError):
            smtp.command("QUIT")
    return reply


def burst(world, envelope: Envelope, sessions: int) -> list[Reply]:
    """``sessions`` back-to-back sessions of ``envelope`` (what a queue drain does), each stopped at RCPT."""
    return [rcpt_reply(world, envelope) for _ in range(sessions)]


def layer_probe(world, layer: str, envelope: Envelope) -> Reply:
    """The reply ``layer`` is about, for ``envelope``: one session, or for ``tight_anvil`` a burst
    (the first refusal in it, else its last reply)."""
    if layer != "tight_anvil":
        return rcpt_reply(world, envelope)
    replies = burst(world, envelope, 12)
    return next((reply for reply in replies if reply.code != 250), replies[-1])


def refused_by(layer: str, reply: Reply) -> bool:
    return re.search(LAYER_REFUSAL[layer], f"{reply.code} {reply.text}", re.S) is not None


def postfix_log_path(world) -> Path:
    """Where the sandbox primary's Postfix logs (maillog_file)."""
    return Path(postconf_value(world["postfix_config_dir"], "maillog_file"))


def postfix_log(world) -> str:
    """The sandbox primary's Postfix log."""
    return postfix_log_path(world).read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def no_deploy(world) -> Iterator[None]:
    """The primary as the sandbox made it (no relay whitelist, no rspamd rule) for the block;
    what the deploy had written is put back after it."""
    with mailhost.put_back_after(world):
        mailhost.restore(world, mailhost.pristine_state(world))
        yield


@contextlib.contextmanager
def relays_past_postscreen(world) -> Iterator[None]:
    """Only postscreen's half of stage 3: the relay networks permitted in the PROXY-v2
    listener's postscreen_access_list, as the deploy writes it, so a DNSBL-listed relay
    reaches smtpd's layers; the three stage-3 files are put back after the block."""
    paths = mailhost.managed_paths(world)
    networks = [*seed.RELAY_CIDRS, f"{relayhost.RELAY_ADDRESS}/32"]
    listener = world["mailhost"]["proxy_service"].split("/")[0]
    with mailhost.put_back_after(world):
        paths["cidr"].write_text("".join(f"{network} permit\n" for network in networks))
        master_cf = set_service_options(paths["master.cf"].read_text(), listener, "inet",
                                        {ACCESS_LIST: f"permit_mynetworks,cidr:{paths['cidr']}"})
        paths["master.cf"].write_text(master_cf)
        mailhost.reload_postfix(world)
        yield


# Postfix's default: postscreen waits this long for a client to talk early, and for its
# DNSBL answers (the sandbox's mail host waits 1 s, so that each new client's session stays quick).
DNSBL_GREET_WAIT = "6s"


@contextlib.contextmanager
def dnsbl_in_time(world) -> Iterator[None]:
    """postscreen takes the DNSBL answers that come within its greet wait; on a loaded machine the
    sandbox resolver's answer can take longer than the mail host's 1 s, and postscreen then lets a
    listed client pass, and caches that PASS for the next sessions. For the block the PROXY-v2
    listener waits Postfix's default 6 s and its postscreen cache starts empty (no PASS of an
    earlier session counts); the three stage-3 files are put back after the block."""
    paths = mailhost.managed_paths(world)
    listener = world["mailhost"]["proxy_service"].split("/")[0]
    data_directory = postconf_value(world["postfix_config_dir"], "data_directory")
    with mailhost.put_back_after(world):
        paths["master.cf"].write_text(set_service_options(paths["master.cf"].read_text(), listener, "inet",
                                                          {"postscreen_greet_wait": DNSBL_GREET_WAIT}))
        Path(data_directory, "postscreen_proxy_cache.db").unlink(missing_ok=True)
        mailhost.reload_postfix(world)
        yield
