"""Where a bad inventory key is written, and the one line a run stops with.

pyinfra's CLI prints a ``DeployError`` as "pyinfra error in <file> line <n>", the
file being the innermost code it was raised from: for bad inventory data that was
``backupmx/core/context.py``, never the inventory. Stage 0's stops name instead the
inventory file and the line the key is written on (found in the file's syntax
tree), or ``--data KEY`` when the value came from the command line, and are
printed by the CLI as they are (``pyinfra_glue.one_line_error``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterable

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
