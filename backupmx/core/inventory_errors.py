"""Where a bad inventory key is written, and the one line a run stops with.

pyinfra's CLI prints a ``DeployError`` as "pyinfra error in <file> line <n>", the
file being the innermost code it was raised from: for bad inventory data that was
``backupmx/core/context.py``, never the inventory. Stage 0's stops name instead the
inventory file and the line the key is written on (found in the file's syntax
tree), or ``--data KEY`` when the value came from the command line, and are
printed by the CLI as they are (``StopError``).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Iterable

from pyinfra.api import DeployError

from backupmx.core.errors import BackupMXError, ConfigError

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]|\[['\"]([^'\"]*)['\"]\]")


def field_keys(field: str) -> list[str | int]:
    """``domains[0].primary_mx[1].host`` as ``["domains", 0, "primary_mx", 1, "host"]``."""
    keys: list[str | int] = []
    for name, index, quoted in _PART.findall(field):
        keys.append(int(index) if index else (quoted if quoted or not name else name))
    return keys


def key_line(source: str, field: str, host_name: str | None = None) -> int | None:
    """The line ``field`` is written on in the Python inventory ``source``, or None.

    The key path is followed through dict and list literals (``"backup_mx": {"provider": …}``),
    from wherever its first key is written; the deepest key found wins (a value built by
    code is named by the key it is assigned to). ``host_name``: a host's own data
    (``("mail.example.org", {...})``) is searched first.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    keys = field_keys(field)
    if not keys:
        return None
    scopes: list[ast.AST] = [tree]
    if host_name is not None:
        scopes = [node.elts[1] for node in ast.walk(tree) if isinstance(node, ast.Tuple) and len(node.elts) == 2
                  and isinstance(node.elts[0], ast.Constant) and node.elts[0].value == host_name] + scopes
    for scope in scopes:
        best: tuple[int, int] | None = None  # (depth, line)
        for start in range(len(keys)):
            for node in ast.walk(scope):
                found = _follow(node, keys[start:])
                if found and (best is None or found[0] > best[0]):
                    best = found
            if best is not None:
                return best[1]
    return None


def _follow(node: ast.AST, keys: list[str | int]) -> tuple[int, int] | None:
    """(keys matched, line of the last) following ``keys`` down from the literal ``node``."""
    depth, line = 0, None
    for key in keys:
        if isinstance(key, str) and isinstance(node, ast.Dict):
            match = next((value for k, value in zip(node.keys, node.values)
                          if isinstance(k, ast.Constant) and k.value == key), None)
            if match is None:
                break
            line = next(k.lineno for k in node.keys if isinstance(k, ast.Constant) and k.value == key)
            node = match
        elif isinstance(key, int) and isinstance(node, (ast.List, ast.Tuple)) and key < len(node.elts) and depth:
            node = node.elts[key]
            line = node.lineno
        else:
            break
        depth += 1
    return (depth, line) if depth and line is not None else None


def inventory_file(inventory) -> str | None:
    """The inventory file of this pyinfra run, as given on its command line; None if none (API, a host list).

    pyinfra keeps no path, but names a group after the file (``inventory/production.py``: ``production``).
    """
    groups = set(getattr(inventory, "groups", None) or ())
    for arg in sys.argv[1:]:
        if arg.endswith(".py") and Path(arg).stem in groups and Path(arg).is_file():
            return arg
    return None


def locate(field: str, inventory_file: str | None, override_keys: Iterable[str],
           host_name: str | None = None) -> str | None:
    """Where ``field``'s value was given: ``--data KEY``, ``<inventory file> line N``, the file alone, or None."""
    keys = field_keys(field)
    top = keys[0] if keys else None
    if isinstance(top, str) and top in set(override_keys):
        return f"--data {top}"
    if not inventory_file:
        return None
    try:
        source = Path(inventory_file).read_text(encoding="utf-8")
    except OSError:
        return inventory_file
    line = key_line(source, field, host_name)
    return f"{inventory_file} line {line}" if line else inventory_file


def stop_message(error: BackupMXError, inventory_file: str | None = None, override_keys: Iterable[str] = (),
                 host_name: str | None = None) -> str:
    """The one line for ``error``: for inventory data, where its key is written first; the host it is of."""
    message = f"{host_name}: {error}" if host_name else str(error)
    where = locate(error.field, inventory_file, override_keys, host_name) if isinstance(error, ConfigError) else None
    return f"{where}: {message}" if where else message


def stop_error(message: str) -> DeployError:
    """A ``DeployError`` that pyinfra's CLI prints as one line, "pyinfra error: <message>".

    Under the CLI it is also pyinfra_cli's ``CliError``, which the CLI shows as it is
    instead of naming the code it came from. pyinfra_cli is only asked for when the
    CLI has loaded it (importing it patches the standard library for gevent).
    """
    cli = sys.modules.get("pyinfra_cli.exceptions")
    if cli is None:
        return DeployError(message)
    error = _stop_class(cli.CliError)(message)
    return error


_classes: dict[type, type] = {}


def _stop_class(cli_error: type) -> type:
    if cli_error not in _classes:
        def __init__(self, message: str) -> None:
            cli_error.__init__(self, message)

        _classes[cli_error] = type("StopError", (DeployError, cli_error), {
            "__init__": __init__, "__str__": lambda self: self.message, "__module__": __name__})
    return _classes[cli_error]
