"""Facts of the mail host stage: what Postfix and rspamd on the mail host have now.

Every fact runs one read-only shell script (``backupmx.postfix.shell.capture_script``)
that always exits 0 and prints each command's exit code, output and errors, so a
missing program or an unreadable file is reported as such and never mistaken for
"not configured yet". For docker-mailserver the commands run through
``docker exec <container>``; files of its mounted config directory are read on
the docker host.

The arguments are plain values (paths, a container name) rather than a
``MailHost``, so ``pyinfra -v`` prints them readably; ``facts_args(mailhost)``
builds them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pyinfra.api import FactBase, QuoteString, StringCommand

from backupmx.core import errors
from backupmx.mailhost.layers import MAIN_PARAMETERS, SERVICE_NAME_OPTION
from backupmx.mailhost.model import ACCESS_LIST, CACHE_MAP, DMS_POLICIES, RSPAMD_BLOCK, MailHost
from backupmx.mailhost.render import parse_postscreen_access
from backupmx.postfix.blocks import find_block
from backupmx.postfix.maincf import parse_postconf_main
from backupmx.postfix.mastercf import parse_postconf_services
from backupmx.postfix.shell import capture_script, file_content, in_target, one_line, parse_captures, read_file_argv


def capture_command(commands, stdin=None, labels=None) -> StringCommand:
    return StringCommand("sh", "-c", QuoteString(capture_script(commands, stdin=stdin, labels=labels)))


def has_program(container: str | None, docker: str, program: str) -> list[str]:
    return in_target(container, docker, ["sh", "-c", 'command -v "$1"', "sh", program])


def facts_args(mailhost: MailHost) -> dict[str, Any]:
    """The ``container``/``docker`` arguments every fact here takes."""
    return {"container": mailhost.container, "docker": mailhost.docker}


class MailhostFiles(FactBase):
    """
    The contents of files on the host: ``{path: {"content": text or None if absent,
    "error": None or why it could not be read}}``. Read byte for byte (base64 on
    the wire), so a diff or a restore check sees exactly what is there.

    .. code:: python

        host.get_fact(MailhostFiles, paths=("/etc/postfix/master.cf",))
    """

    def command(self, paths, container=None, docker="docker"):
        return capture_command(*self.captures(paths, container, docker))

    @staticmethod
    def captures(paths, container=None, docker="docker"):
        commands = [(f"f{index}", in_target(container, docker, read_file_argv(path)))
                    for index, path in enumerate(paths)]
        return commands, None, {f"f{index}": path for index, path in enumerate(paths)}

    @staticmethod
    def default():
        return {}

    def process(self, output):
        files = {}
        for captured in parse_captures(output).values():
            readable, content, error = file_content(captured)
            files[captured.label] = {"content": content, "error": None if readable else error}
        return files


class InterruptedTransactions(FactBase):
    """
    The paths a transaction left a staged or set-aside copy of
    (``<path>.backupmx-new``/``.backupmx-old``, or the same names in ``stage_dir``
    for a file of a watched tree): one that ended always removes them, so one was
    cut off (its SSH session lost), maybe after swapping the files in and before
    the reload. ``[path, ...]``, paths on the host.

    .. code:: python

        host.get_fact(InterruptedTransactions, paths=("/etc/postfix/master.cf",))
    """

    def command(self, paths, stage_dir=None):
        return capture_command(*self.captures(paths, stage_dir))

    @staticmethod
    def captures(paths, stage_dir=None):
        test = ('for c in "$1" "$2/${1##*/}"; do test -e "$c.backupmx-old" || test -e "$c.backupmx-new" '
                '&& exit 0; done; exit 1')
        commands = [(f"i{index}", ["sh", "-c", test, "sh", path, stage_dir or "/nonexistent"])
                    for index, path in enumerate(paths)]
        return commands, None, {f"i{index}": path for index, path in enumerate(paths)}

    @staticmethod
    def default():
        return []

    def process(self, output):
        return [captured.label for captured in parse_captures(output).values() if captured.rc == 0]


class PostscreenAccessFile(FactBase):
    """
    The postscreen CIDR table: ``None`` when absent, else ``{"path", "content",
    "networks" (the ones it permits), "invalid" (lines Postfix would skip),
    "error"}``.

    .. code:: python

        host.get_fact(PostscreenAccessFile, path="/etc/postfix/postscreen_access.cidr")
    """

    def command(self, path, container=None, docker="docker"):
        return capture_command(*self.captures(path, container, docker))

    @staticmethod
    def captures(path, container=None, docker="docker"):
        return [("cidr", in_target(container, docker, read_file_argv(path)))], None, {"cidr": path}

    def process(self, output):
        captured = parse_captures(output).get("cidr")
        readable, content, error = file_content(captured)
        path = captured.label if captured else ""
        if not readable:
            return {"path": path, "content": None, "networks": [], "invalid": [], "error": error}
        if content is None:
            return None
        networks, invalid = parse_postscreen_access(content)
        return {"path": path, "content": content, "networks": networks, "invalid": invalid, "error": None}


def postconf_failure(captured, parts, missing: str) -> str | None:
    """Why the ``postconf`` captures ``parts`` cannot be trusted (``missing``: postconf is not there, or
    one part failed); None when every part answered. "Postfix is not there" never reads as "nothing set"."""
    has = captured.get("has")
    if has is None or has.rc != 0:
        return has.problem() if has and (has.err or has.rc not in (1, 127)) else missing
    for name in parts:
        part = captured.get(name)
        if part is None or part.rc != 0:
            return f"postconf ({name}): {part.problem() if part else 'no output'}"
    return None


class PostscreenListeners(FactBase):
    """
    Postfix's services as it reports them: ``{"postconf": bool, "error", "services":
    {"name/type": Listener(command, params)}, "main": {postscreen_* of main.cf}}``.
    ``params`` are the service's own ``-o`` overrides (``postconf -P``). With
    ``postconf`` missing or failing, ``postconf`` is False and ``error`` says why:
    "Postfix is not there" never reads as "no whitelist yet".

    .. code:: python

        host.get_fact(PostscreenListeners, config_dir="/etc/postfix")
    """

    def command(self, config_dir, container=None, docker="docker"):
        return capture_command(*self.captures(config_dir, container, docker))

    @staticmethod
    def captures(config_dir, container=None, docker="docker"):
        postconf = in_target(container, docker, ["postconf", "-c", config_dir])
        return [
            ("has", has_program(container, docker, "postconf")),
            ("master", postconf + ["-M"]),
            ("overrides", postconf + ["-P"]),
            ("main", postconf + [ACCESS_LIST, CACHE_MAP, "message_size_limit", SERVICE_NAME_OPTION,
                                 *MAIN_PARAMETERS]),
            # main.cf's own parameters: a list may be written as another one ($name).
            ("explicit", postconf + ["-n"]),
        ], None, None

    @staticmethod
    def default():
        return {"postconf": False, "error": "no output", "services": {}, "main": {}}

    def process(self, output):
        captured = parse_captures(output)
        failure = postconf_failure(captured, ("master", "overrides", "main"), "postconf not found")
        if failure:
            return {"postconf": False, "error": failure, "services": {}, "main": {}}
        services = parse_postconf_services(captured["master"].out.splitlines(), captured["overrides"].out.splitlines())
        return {
            "postconf": True,
            "error": None,
            "warnings": one_line(captured["master"].err + captured["overrides"].err),
            "services": services,
            "main": {**parse_postconf_main(captured["explicit"].out.splitlines() if "explicit" in captured else []),
                     **parse_postconf_main(captured["main"].out.splitlines())},
        }


class RspamdExemption(FactBase):
    """
    The rspamd side: our settings file (and the marked block in it), and what
    ``rspamadm configdump settings`` says is configured. ``{"file": text or None,
    "file_error", "block": our block or None, "live_file" (docker-mailserver: the
    container's copy), "rspamadm": bool, "rules": {name: rule}, "error",
    "local_networks": rspamd's local networks, or None when not dumped}``.
    ``dump=False`` skips configdump (about a second).

    .. code:: python

        host.get_fact(RspamdExemption, settings_path="/etc/rspamd/local.d/settings.conf",
                      rspamadm_args=(), dump=True)
    """

    def command(self, settings_path, rspamadm_args=(), live_path=None, dump=True, container=None, docker="docker"):
        return capture_command(*self.captures(settings_path, rspamadm_args, live_path, dump, container, docker))

    @staticmethod
    def captures(settings_path, rspamadm_args=(), live_path=None, dump=True, container=None, docker="docker"):
        commands = [("file", read_file_argv(settings_path))]
        if live_path:
            commands.append(("live", in_target(container, docker, read_file_argv(live_path))))
        commands.append(("has", has_program(container, docker, "rspamadm")))
        if dump:
            # One rspamadm for both sections (it loads the whole configuration each time: ~0.6 s).
            commands.append(("dump", in_target(container, docker, ["rspamadm", *rspamadm_args, "configdump", "-j",
                                                                   *DUMPED_SECTIONS])))
        return commands, None, None

    def process(self, output):
        captured = parse_captures(output)
        readable, content, error = file_content(captured.get("file"))
        result: dict[str, Any] = {"file": content, "file_error": None if readable else error, "block": None,
                                  "live_file": None, "live_error": None, "rspamadm": False, "rules": {}, "error": None,
                                  "local_networks": None}
        if readable:
            try:
                result["block"] = find_block(content, RSPAMD_BLOCK)
            except errors.BackupMXError as damaged:
                result["file_error"] = str(damaged)
        if "live" in captured:
            live_ok, live, live_error = file_content(captured["live"])
            result["live_file"], result["live_error"] = live, None if live_ok else live_error
        has = captured.get("has")
        result["rspamadm"] = bool(has and has.rc == 0)
        if not result["rspamadm"]:
            result["error"] = has.problem() if has and has.err else "rspamadm not found"
            return result
        dump = captured.get("dump")
        if dump is None:
            return result
        if dump.rc != 0:
            result["error"] = f"rspamadm configdump: {dump.problem()}"
            return result
        sections = parse_configdump(dump.out, DUMPED_SECTIONS)
        if sections is None:
            result["error"] = f"rspamadm configdump printed no JSON: {one_line(dump.out)}"
            return result
        rules = sections["settings"] or {}
        result["rules"] = rules if isinstance(rules, dict) else {}
        result["local_networks"] = _local_networks(sections["options"])
        return result


# What RspamdExemption dumps, in this order: the settings rules, and the options (local networks).
DUMPED_SECTIONS = ("settings", "options")


def parse_configdump(text: str, sections) -> dict[str, Any] | None:
    """``rspamadm configdump -j S1 S2 ...``: one JSON object per section, in order, or the line
    ``Section S NOT FOUND``; None when the output is neither."""
    decoder, found, at = json.JSONDecoder(), {}, 0
    for section in sections:
        rest = text[at:].lstrip()
        at = len(text) - len(rest)
        missing = f"Section {section} NOT FOUND"
        if rest.startswith(missing):
            found[section], at = None, at + len(missing)
            continue
        try:
            found[section], end = decoder.raw_decode(rest)
        except ValueError:
            return None
        at += end
    return found


def _local_networks(dumped) -> list[str] | None:
    """rspamd's ``local_addrs`` and ``local_networks`` (one option, two names) from the options dumped."""
    if not isinstance(dumped, dict):
        return None
    networks = []
    for key in ("local_addrs", "local_networks"):
        value = dumped.get(key) if isinstance(dumped, dict) else None
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        networks += [entry for item in items if isinstance(item, str) for entry in re.split(r"[\s,]+", item) if entry]
    return networks


class DockerMailserverPolicies(FactBase):
    """
    docker-mailserver's SMTP-time SPF and DMARC policies: the container's
    ``ENABLE_POLICYD_SPF``/``ENABLE_OPENDMARC`` (unset means the default, 1) and
    the live ``smtpd_recipient_restrictions``/``smtpd_milters``; and whether its
    config dir can be written (a Kubernetes ConfigMap is mounted read-only).
    ``{"ok": bool, "error", "env": {...}, "restrictions", "milters", "writable"}``.

    .. code:: python

        host.get_fact(DockerMailserverPolicies, container="mailserver")
    """

    def command(self, container, docker="docker", config_dir="/tmp/docker-mailserver"):
        return capture_command(*self.captures(container, docker, config_dir))

    @staticmethod
    def captures(container, docker="docker", config_dir="/tmp/docker-mailserver"):
        printenv = 'for v in "$@"; do eval "x=\\${$v-__unset__}"; printf "%s=%s\\n" "$v" "$x"; done'
        return [
            ("env", [docker, "exec", container, "sh", "-c", printenv, "sh", *DMS_POLICIES]),
            ("postconf", [docker, "exec", container, "postconf", "-h", "smtpd_recipient_restrictions", "smtpd_milters"]),
            ("writable", [docker, "exec", container, "sh", "-c", 'test -w "$1"', "sh", config_dir]),
        ], None, None

    @staticmethod
    def default():
        return {"ok": False, "error": "no output", "env": {}, "restrictions": "", "milters": "", "writable": None}

    def process(self, output):
        captured = parse_captures(output)
        env_part, postconf = captured.get("env"), captured.get("postconf")
        if env_part is None or env_part.rc != 0:
            return {"ok": False, "error": f"docker exec: {env_part.problem() if env_part else 'no output'}",
                    "env": {}, "restrictions": "", "milters": "", "writable": None}
        env = {}
        for line in env_part.out.splitlines():
            key, _, value = line.partition("=")
            env[key] = None if value == "__unset__" else value
        lines = postconf.out.splitlines() if postconf and postconf.rc == 0 else []
        writable = captured.get("writable")
        return {"ok": True, "error": None, "env": env,
                "restrictions": lines[0] if lines else "", "milters": lines[1] if len(lines) > 1 else "",
                "writable": None if writable is None else writable.rc == 0}


def merged_captures(parts: dict[str, tuple]) -> tuple[list, dict, dict]:
    """Several facts' captures as one (commands, stdin, labels), each name prefixed ``<part>__``."""
    commands, stdin, labels = [], {}, {}
    for part, (part_commands, part_stdin, part_labels) in parts.items():
        commands += [(f"{part}__{name}", argv) for name, argv in part_commands]
        stdin.update({f"{part}__{name}": text for name, text in (part_stdin or {}).items()})
        labels.update({f"{part}__{name}": text for name, text in (part_labels or {}).items()})
    return commands, stdin, labels


def combined_script(parts: dict[str, tuple]) -> StringCommand:
    """One concurrent capture script of several facts' captures (``merged_captures``).

    Each part first prints a line of its own (``<part>__``): a part with nothing to
    read (no paths, say) still answers, so the answer is known to be complete.
    """
    commands, stdin, labels = merged_captures(parts)
    announced = "".join(f"printf '%s\\n' {part}__\n" for part in parts)
    return StringCommand("sh", "-c", QuoteString(announced + capture_script(commands, stdin=stdin, labels=labels,
                                                                                parallel=True)))


def split_parts(output, parts: dict[str, type]) -> dict[str, Any]:
    """Each part's lines handed to its own fact's ``process`` (``default`` without output)."""
    lines: dict[str, list[str]] = {part: [] for part in parts}
    for line in output:
        part, separator, rest = line.strip().partition("__")
        if separator and part in lines:
            lines[part].append(rest)
    found = {}
    for part, fact in parts.items():
        if lines[part]:
            found[part] = fact().process(lines[part])
        elif fact.default is not FactBase.default:
            found[part] = fact.default()  # as pyinfra does for a fact without output
        else:
            found[part] = fact().process([])  # "not read", never "absent"
    return found
