"""Postfix's queue as ``postqueue -j`` prints it: one JSON object per message."""

from __future__ import annotations

import json


def parse_postqueue_json(text: str) -> tuple[list[dict], list[str]]:
    """``postqueue -j``: one JSON object per line; (messages, unreadable lines)."""
    messages, bad = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            messages.append(json.loads(line))
        except ValueError:
            bad.append(line)
    return messages, bad
