"""Marked blocks: the part of a file this tool manages, between BEGIN and END lines, so
that the rest of the file is the user's and a removal gives it back unchanged.
"""

from __future__ import annotations

from backupmx.core.errors import BackupMXError

# --- marked blocks ------------------------------------------------------------


def block_begin(name: str, comment: str = "#") -> str:
    return f"{comment} BEGIN backupmx {name} (managed by backupmx; edit the inventory, not this block)"


def block_end(name: str, comment: str = "#") -> str:
    return f"{comment} END backupmx {name}"


def _block_span(lines: list[str], name: str, comment: str = "#") -> tuple[int, int] | None:
    begin_prefix, end_line = f"{comment} BEGIN backupmx {name}", block_end(name, comment)
    begins = [i for i, line in enumerate(lines) if line.rstrip("\r\n").startswith(begin_prefix)]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == end_line]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise BackupMXError(f"the backupmx {name} block markers are damaged (found {len(begins)} BEGIN and "
                            f"{len(ends)} END lines); remove the block by hand and re-run")
    return begins[0], ends[0]


def find_block(text: str | None, name: str, comment: str = "#") -> str | None:
    if not text:
        return None
    lines = text.splitlines(keepends=True)
    span = _block_span(lines, name, comment)
    return None if span is None else "".join(lines[span[0]:span[1] + 1])


def with_block(text: str | None, name: str, block: str | None, header: str = "", comment: str = "#") -> str | None:
    """``text`` with the marked block ``name`` replaced by ``block`` (appended if absent; removed if None).

    Everything outside the markers is kept byte for byte. A file that held only
    our block (and ``header``) is removed (None) when the block is removed.
    ``comment`` is the file's comment marker (``--`` for Lua).
    """
    if block is not None and not block.endswith("\n"):
        block += "\n"
    lines = (text or "").splitlines(keepends=True)
    span = _block_span(lines, name, comment)
    if span is not None:
        before, after = lines[:span[0]], lines[span[1] + 1:]
        if block is None:
            if before and not before[-1].strip() and (not after or not after[0].strip()):
                before = before[:-1]  # the blank separator we added
            remaining = "".join(before + after)
            return None if remaining.strip() in ("", header.strip()) else remaining
        return "".join(before) + block + "".join(after)
    if block is None:
        return text
    if not lines:
        return header + block
    current = "".join(lines)
    if not current.endswith("\n"):
        current += "\n"
    if current.strip() and not current.endswith("\n\n"):
        current += "\n"
    return current + block


