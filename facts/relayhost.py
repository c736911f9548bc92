"""Facts of the self-hosted relay: what its Postfix has in force, its files, its queue.

Each fact runs one read-only script (``backupmx.postfix.shell.capture_script``) that
always exits 0 and reports every command's exit code, output and errors, so
"Postfix is not installed" never reads as "not configured yet". Arguments are
plain values (a config dir, setting names) so ``pyinfra -v`` prints them readably.
"""

from __future__ import annotations

import json

from pyinfra.api import FactBase

from backupmx.postfix.maincf import parse_postconf_main
from backupmx.postfix.mastercf import parse_postconf_services
from backupmx.postfix.postqueue import parse_postqueue_json
from backupmx.postfix.relay_proof import OUTSIDE_DOMAIN, SMTP_PROOF
from backupmx.postfix.shell import one_line, parse_captures
from facts.mailhost import MailhostFiles, capture_command, postconf_failure


class RelayFiles(MailhostFiles):
    """
    The relay's managed files, byte for byte: ``{path: {"content": text or None if
    absent, "error": None or why it could not be read}}``.

    .. code:: python

        host.get_fact(RelayFiles, paths=("/etc/postfix/main.cf",))
    """


class RelayPostconf(FactBase):
    """
    The relay's Postfix as it reports itself: ``{"postconf": bool, "error",
    "settings": {name: effective value} for ``names``, "services": {"name/type":
    Listener} with their ``postconf -P`` overrides}``.

    .. code:: python

        host.get_fact(RelayPostconf, config_dir="/etc/postfix", names=("relay_domains",))
    """

    def command(self, config_dir, names=()):
        postconf = ["postconf", "-c", config_dir]
        return capture_command([
            ("has", ["sh", "-c", "command -v postconf"]),
            ("main", postconf + list(names)),
            ("master", postconf + ["-M"]),
            ("overrides", postconf + ["-P"]),
        ])

    @staticmethod
    def default():
        return {"postconf": False, "error": "no output", "settings": {}, "services": {}}

    def process(self, output):
        captured = parse_captures(output)
        failure = postconf_failure(captured, ("main", "master", "overrides"),
                                   "postconf not found (is Postfix installed?)")
        if failure:
            return {"postconf": False, "error": failure, "settings": {}, "services": {}}
        return {
            "postconf": True,
            "error": None,
            "warnings": one_line(captured["main"].err),
            "settings": parse_postconf_main(captured["main"].out.splitlines()),
            "services": parse_postconf_services(captured["master"].out.splitlines(),
                                                   captured["overrides"].out.splitlines()),
        }


class RelayQueue(FactBase):
    """
    The relay's queue (``postqueue -j``): ``{"ok": bool, "error", "messages": [one
    dict per message, as Postfix prints it]}``.

    .. code:: python

        host.get_fact(RelayQueue, config_dir="/etc/postfix")
    """

    def command(self, config_dir):
        return capture_command([("queue", ["postqueue", "-c", config_dir, "-j"])])

    @staticmethod
    def default():
        return {"ok": False, "error": "no output", "messages": []}

    def process(self, output):
        captured = parse_captures(output).get("queue")
        if captured is None or captured.rc != 0:
            return {"ok": False, "error": captured.problem() if captured else "no output", "messages": []}
        messages, bad = parse_postqueue_json(captured.out)
        return {"ok": not bad, "error": f"unreadable postqueue lines: {bad[0]}" if bad else None,
                "messages": messages}


class RelaySmtpProof(FactBase):
    """
    SMTP sessions the relay host runs against its own listener (python3): a random
    recipient of each domain, one of an outside domain, and a client talking before
    the greeting. ``{"python": bool, "error", "results": [{"case", "rcpt", "code",
    "text", "source"}]}``. Read-only: no message is ever sent (QUIT after RCPT).

    .. code:: python

        host.get_fact(RelaySmtpProof, listener="127.0.0.1:25", domains=("example.org",))
    """

    def command(self, listener, domains):
        host, _, port = listener.rpartition(":")
        return capture_command([
            ("has", ["sh", "-c", "command -v python3"]),
            ("smtp", ["python3", "-c", SMTP_PROOF, host.strip("[]"), port, OUTSIDE_DOMAIN, *domains]),
        ])

    @staticmethod
    def default():
        return {"python": False, "error": "no output", "results": []}

    def process(self, output):
        captured = parse_captures(output)
        has = captured.get("has")
        if has is None or has.rc != 0:
            return {"python": False, "error": "python3 not found on the relay host", "results": []}
        smtp = captured.get("smtp")
        results = []
        for line in (smtp.out if smtp else "").splitlines():
            try:
                results.append(json.loads(line))
            except ValueError:
                continue
        error = None if smtp and smtp.rc == 0 else (smtp.problem() if smtp else "no output")
        return {"python": True, "error": error, "results": results}
