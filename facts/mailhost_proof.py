"""Facts of stage 4's proof on a mail host: postmap probes of the CIDR table, rspamd scans, the pregreet\nprobe through the PROXY-v2 listener, and all of them in one concurrent SSH round trip (MailhostProof).\n"""

from __future__ import annotations

from pyinfra.api import FactBase

from backupmx.mailhost.probes import PREGREET_PROBE, parse_rspamc_action, parse_rspamc_symbols
from backupmx.postfix.shell import in_target, one_line, parse_captures
from facts.mailhost import (
    PostscreenAccessFile,
    PostscreenListeners,
    RspamdExemption,
    capture_command,
    combined_script,
    has_program,
    merged_captures,
    split_parts,
)


class RelayWhitelistProbes(FactBase):
    """
    The liveness of the CIDR table as Postfix reads it: ``postmap -q <address>
    cidr:<file>`` per address. ``{"postmap": bool, "error", "answers": {address:
    {"answer": "permit" or None, "error": stderr or None}}}``. An address in a
    relay network must answer ``permit``; one outside every relay network must get
    no answer and no error (postmap exits 1 both for "no match" and for a missing
    file, so its stderr decides).

    .. code:: python

        host.get_fact(RelayWhitelistProbes, config_dir="/etc/postfix",
                      cidr_path="/etc/postfix/postscreen_access.cidr",
                      addresses=("192.0.2.1", "203.0.113.1"))
    """

    def command(self, config_dir, cidr_path, addresses, container=None, docker="docker"):
        return capture_command(*self.captures(config_dir, cidr_path, addresses, container, docker))

    @staticmethod
    def captures(config_dir, cidr_path, addresses, container=None, docker="docker"):
        commands = [("has", has_program(container, docker, "postmap"))]
        labels = {}
        for index, address in enumerate(addresses):
            commands.append((f"q{index}", in_target(container, docker, ["postmap", "-c", config_dir, "-q", address,
                                                                      f"cidr:{cidr_path}"])))
            labels[f"q{index}"] = address
        return commands, None, labels

    @staticmethod
    def default():
        return {"postmap": False, "error": "no output", "answers": {}}

    def process(self, output):
        captured = parse_captures(output)
        has = captured.get("has")
        if has is None or has.rc != 0:
            return {"postmap": False, "error": "postmap not found", "answers": {}}
        answers = {}
        for name, item in captured.items():
            if not name.startswith("q"):
                continue
            answers[item.label] = {"answer": item.out.strip() or None,
                                   "error": one_line(item.err) or (None if item.rc in (0, 1) else f"exit {item.rc}")}
        return {"postmap": True, "error": None, "answers": answers}


class RspamdSymbols(FactBase):
    """
    What the running rspamd concludes about a probe message claimed to come from
    each of ``ips`` (``rspamc -i IP -F FROM symbols`` through the controller): a
    scan, not a config read, so it shows the rules rspamd has loaded now.
    ``{"rspamc": bool, "results": {ip: {"symbols": [...] or None, "action", "error"}}}``.

    .. code:: python

        host.get_fact(RspamdSymbols, controller="127.0.0.1:11334", ips=("192.0.2.1",),
                      mail_from="postmaster@example.org", message="From: ...")
    """

    def command(self, controller, ips, mail_from, message, container=None, docker="docker"):
        return capture_command(*self.captures(controller, ips, mail_from, message, container, docker))

    @staticmethod
    def captures(controller, ips, mail_from, message, container=None, docker="docker"):
        commands = [("has", has_program(container, docker, "rspamc"))]
        stdin, labels = {}, {}
        for index, ip in enumerate(ips):
            name = f"s{index}"
            commands.append((name, in_target(container, docker, ["rspamc", "-h", controller, "-t", "20", "-j", "-i", ip,
                                                               "-F", mail_from, "--helo", "backupmx-probe.invalid",
                                                               "symbols"], stdin=True)))
            stdin[name], labels[name] = message, ip
        return commands, stdin, labels

    @staticmethod
    def default():
        return {"rspamc": False, "results": {}}

    def process(self, output):
        captured = parse_captures(output)
        has = captured.get("has")
        if has is None or has.rc != 0:
            return {"rspamc": False, "results": {}}
        results = {}
        for name, item in captured.items():
            if not name.startswith("s"):
                continue
            symbols = parse_rspamc_symbols(item.out) if item.rc == 0 else None
            results[item.label] = {"symbols": symbols,
                                   "action": parse_rspamc_action(item.out) if symbols is not None else None,
                                   "error": None if symbols is not None else item.problem()}
        return {"rspamc": True, "results": results}


class PostscreenPregreet(FactBase):
    """
    An SMTP session through the PROXY-v2 listener claiming each of ``sources`` with a
    relayed envelope (``helo``, MAIL FROM ``sender``), talking before the greeting, up
    to RCPT (no mail is sent): a whitelisted source that every smtpd restriction lets
    through gets RCPT 250 at once; any other fails postscreen's pregreet test.
    Runs ``python3`` on the mail host, once for all sources. ``{"python": bool, "results":
    {source: {"code", "text", "error"}}, "failure": why the probe itself failed, or None}``.

    .. code:: python

        host.get_fact(PostscreenPregreet, listener="127.0.0.1:2525", sources=("192.0.2.1",),
                      rcpt="postmaster@example.org", helo="mail.rollernet.us", sender="postmaster@microsoft.com")
    """

    def command(self, listener, sources, rcpt, helo, sender, container=None, docker="docker"):
        return capture_command(*self.captures(listener, sources, rcpt, helo, sender, container, docker))

    @staticmethod
    def captures(listener, sources, rcpt, helo, sender, container=None, docker="docker"):
        address, _, port = listener.rpartition(":")
        # One python3 for every source (their sessions run side by side): a start each would
        # cost more than the sessions.
        return [("has", has_program(container, docker, "python3")),
                ("p", in_target(container, docker, ["python3", "-c", PREGREET_PROBE, address, port, rcpt, helo,
                                                   sender, *sources]))], None, None

    @staticmethod
    def default():
        return {"python": False, "results": {}}

    def process(self, output):
        captured = parse_captures(output)
        has = captured.get("has")
        if has is None or has.rc != 0:
            return {"python": False, "results": {}}
        sessions = captured.get("p")
        if sessions is None:
            return {"python": True, "results": {}, "failure": "the probe printed nothing"}
        results = {}
        for line in sessions.out.splitlines():
            source, _, answer = line.strip().partition(" ")
            code, _, text = answer.partition(" ")
            if code.isdigit():
                results[source] = {"code": int(code), "text": text, "error": None}
            elif source:
                results[source] = {"code": None, "text": "", "error": text or "no answer"}
        # The probe itself failed (python3 refused the program, say): why, for the sources without an answer.
        failure = sessions.problem() if sessions.rc != 0 else None
        return {"python": True, "results": results, "failure": failure}


class MailhostProof(FactBase):
    """
    Everything stage 4's proof reads, in one SSH round trip instead of six: the
    reads of ``PostscreenAccessFile``, ``RelayWhitelistProbes``,
    ``PostscreenListeners``, ``RspamdExemption``, ``RspamdSymbols`` and (with
    ``listener``) ``PostscreenPregreet``, run concurrently on the host (they are
    independent, and most of the time is spent waiting on rspamd and postscreen).
    Returns ``{"table", "probes", "listeners", "exemption", "scan", "pregreet"}``,
    each what that fact returns (``pregreet`` is not read without ``listener``).

    .. code:: python

        host.get_fact(MailhostProof, cidr_host_path=..., config_dir="/etc/postfix", cidr_path=...,
                      addresses=(...), settings_path=..., rspamadm_args=(), live_path=None, dump=True,
                      controller="127.0.0.1:11334", ips=(...), mail_from="postmaster@example.org",
                      message="From: ...", listener="127.0.0.1:2525", sources=(...), rcpt="postmaster@example.org",
                      helo="mail.rollernet.us", sender="postmaster@microsoft.com")
    """

    PARTS = {
        "table": PostscreenAccessFile,
        "probes": RelayWhitelistProbes,
        "listeners": PostscreenListeners,
        "exemption": RspamdExemption,
        "scan": RspamdSymbols,
        "pregreet": PostscreenPregreet,
    }

    def command(self, cidr_host_path, config_dir, cidr_path, addresses, settings_path, rspamadm_args, live_path,
                dump, controller, ips, mail_from, message, listener=None, sources=(), rcpt="", helo="", sender="",
                container=None, docker="docker"):
        # pyinfra reads a fact's arguments off this signature: each is named here.
        return combined_script({"proof": self.captures(
            cidr_host_path, config_dir, cidr_path, addresses, settings_path, rspamadm_args, live_path, dump, controller,
            ips, mail_from, message, listener, sources, rcpt, helo, sender, container, docker)})

    @staticmethod
    def captures(cidr_host_path, config_dir, cidr_path, addresses, settings_path, rspamadm_args, live_path, dump,
                 controller, ips, mail_from, message, listener=None, sources=(), rcpt="", helo="", sender="",
                 container=None, docker="docker"):
        target = {"container": container, "docker": docker}
        parts = {
            # A path on the host (docker-mailserver: its mounted config directory), not in the container.
            "table": PostscreenAccessFile.captures(cidr_host_path),
            "probes": RelayWhitelistProbes.captures(config_dir, cidr_path, addresses, **target),
            "listeners": PostscreenListeners.captures(config_dir, **target),
            "exemption": RspamdExemption.captures(settings_path, rspamadm_args, live_path, dump, **target),
            "scan": RspamdSymbols.captures(controller, ips, mail_from, message, **target),
        }
        if listener:
            parts["pregreet"] = PostscreenPregreet.captures(listener, sources, rcpt, helo, sender, **target)
        return merged_captures(parts)

    @staticmethod
    def default():
        return MailhostProof().process([])

    def process(self, output):
        lines = [line.strip().removeprefix("proof__") for line in output]
        return split_parts(lines, self.PARTS)
