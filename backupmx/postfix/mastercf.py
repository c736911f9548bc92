"""master.cf: per-service ``-o`` overrides (set and removed without touching anything
else) and the services as ``postconf -M``/``-P`` print them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from backupmx.core.errors import BackupMXError
from backupmx.postfix.syntax import logical_lines


class MasterCfError(BackupMXError):
    """master.cf cannot be edited safely (service missing, option set inline)."""


# --- master.cf ----------------------------------------------------------------


def _entry_span(lines: list[str], service: str, service_type: str) -> tuple[int, int] | None:
    for start, end in logical_lines(lines):
        fields = lines[start].split()
        if len(fields) >= 2 and fields[0] == service and fields[1] == service_type:
            return start, end
    return None


def _option_line(name: str) -> re.Pattern:
    return re.compile(r"^(?P<indent>[ \t]+)-o[ \t]+" + re.escape(name) + r"[ \t]*=(?P<value>[^\r\n]*?)[ \t]*(?P<eol>\r?\n?)$")


def set_service_options(master_cf: str, service: str, service_type: str, options: Mapping[str, str]) -> str:
    """master.cf with ``-o name=value`` set on one service; every other byte kept.

    An option already on its own continuation line is replaced in place; a new
    one goes after the service's last line, indented like it.
    """
    lines = master_cf.splitlines(keepends=True)
    span = _entry_span(lines, service, service_type)
    if span is None:
        raise MasterCfError(f"master.cf has no service {service}/{service_type}")
    start, end = span
    for name, value in options.items():
        if re.search(r"\s", value):
            raise MasterCfError(f"master.cf option {name}: value {value!r} contains whitespace")
        pattern = _option_line(name)
        own_lines = [i for i in range(start + 1, end) if pattern.match(lines[i])]
        inline = [i for i in range(start, end) if i not in own_lines
                  and re.search(r"(^|\s)-o\s*\{?\s*" + re.escape(name) + r"\s*=", lines[i])]
        if inline or len(own_lines) > 1:
            raise MasterCfError(f"master.cf service {service}/{service_type} sets {name} "
                                f"{'inline' if inline else 'more than once'}; give it one `-o {name}=...` line "
                                "of its own and re-run")
        if own_lines:
            match = pattern.match(lines[own_lines[0]])
            lines[own_lines[0]] = f"{match['indent']}-o {name}={value}{match['eol'] or chr(10)}"
            continue
        last = end - 1
        indent = re.match(r"^[ \t]+", lines[last]).group(0) if last > start else "  "
        if not lines[last].endswith("\n"):
            lines[last] += "\n"
        lines.insert(end, f"{indent}-o {name}={value}\n")
        end += 1
    return "".join(lines)


def remove_service_options(master_cf: str, service: str, service_type: str, options: Mapping[str, str]) -> str:
    """master.cf without the ``-o name=value`` lines that hold exactly these values (ours)."""
    lines = master_cf.splitlines(keepends=True)
    span = _entry_span(lines, service, service_type)
    if span is None:
        return master_cf
    start, end = span
    drop = set()
    for name, value in options.items():
        pattern = _option_line(name)
        for i in range(start + 1, end):
            match = pattern.match(lines[i])
            if match and match["value"].strip() == value:
                drop.add(i)
    return "".join(line for i, line in enumerate(lines) if i not in drop)


# --- postconf output ----------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    name: str
    type: str
    command: str
    params: Mapping[str, str]  # the -o overrides, as `postconf -P` prints them
    columns: tuple[str, ...] = ("-", "-", "-", "-", "-")  # private, unpriv, chroot, wakeup, maxproc
    args: tuple[str, ...] = ()  # the command's arguments other than -o overrides

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"

    def entry(self) -> str:
        """The service's first master.cf line (``postconf -M name/type=...`` takes it as is)."""
        return " ".join((self.name, self.type, *self.columns, self.command, *self.args))

    def master_cf_lines(self) -> str:
        """The whole entry as master.cf text: the first line, then one ``-o`` line per override."""
        lines = [self.entry()]
        for name, value in self.params.items():
            lines.append(f"  -o {{ {name} = {value} }}" if re.search(r"\s", value) else f"  -o {name}={value}")
        return "\n".join(lines) + "\n"


def parse_postconf_services(master_lines: Iterable[str], override_lines: Iterable[str]) -> dict[str, Listener]:
    """Every master.cf service from ``postconf -M`` with its ``postconf -P`` overrides."""
    overrides: dict[str, dict[str, str]] = {}
    for line in override_lines:
        key, sep, value = line.partition(" = ")
        parts = key.strip().split("/")
        if not sep or len(parts) != 3:
            continue
        overrides.setdefault(f"{parts[0]}/{parts[1]}", {})[parts[2]] = value.strip()
    services = {}
    for line in master_lines:
        fields = line.split()
        if len(fields) < 8 or line.startswith("#"):
            continue
        key = f"{fields[0]}/{fields[1]}"
        services[key] = Listener(fields[0], fields[1], fields[7], dict(overrides.get(key, {})),
                                 tuple(fields[2:7]), _plain_args(fields[8:]))
    return services


def _plain_args(args: list[str]) -> tuple[str, ...]:
    """The arguments without ``-o name=value`` pairs (``postconf -P`` gives those)."""
    plain, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-o":
            skip = True
        elif not arg.startswith("-o"):
            plain.append(arg)
    return tuple(plain)


