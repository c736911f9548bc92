"""The --dry plan documents in tests: docs/plan.schema.json and a small checker of the JSON Schema
keywords it uses (type, const, enum, required, properties, additionalProperties, items, pattern,
minimum): the jsonschema package is not in the locks."""

from __future__ import annotations

import json
import re
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "plan.schema.json"
KNOWN = {"$schema", "$id", "title", "description", "type", "const", "enum", "required", "properties",
         "additionalProperties", "items", "pattern", "minimum"}
TYPES = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool, "null": type(None)}


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _is(value, name: str) -> bool:
    if name in ("integer",) and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[name])


def problems(instance, node: dict | None = None, where: str = "$") -> list[str]:
    """Every place ``instance`` breaks the schema (``[]``: it conforms)."""
    node = schema() if node is None else node
    unknown = set(node) - KNOWN
    assert not unknown, f"the test's checker does not know {sorted(unknown)} at {where}"
    found = []
    if "type" in node:
        names = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_is(instance, name) for name in names):
            return [f"{where}: {instance!r} is not {'/'.join(names)}"]
    if "const" in node and instance != node["const"]:
        found.append(f"{where}: {instance!r} is not {node['const']!r}")
    if "enum" in node and instance not in node["enum"]:
        found.append(f"{where}: {instance!r} not in {node['enum']}")
    if "pattern" in node and isinstance(instance, str) and not re.search(node["pattern"], instance):
        found.append(f"{where}: {instance!r} does not match {node['pattern']}")
    if "minimum" in node and isinstance(instance, (int, float)) and instance < node["minimum"]:
        found.append(f"{where}: {instance} < {node['minimum']}")
    if isinstance(instance, dict):
        found += [f"{where}: missing {key}" for key in node.get("required", []) if key not in instance]
        properties = node.get("properties", {})
        if node.get("additionalProperties") is False:
            found += [f"{where}: unexpected {key}" for key in instance if key not in properties]
        for key, sub in properties.items():
            if key in instance:
                found += problems(instance[key], sub, f"{where}.{key}")
    if isinstance(instance, list) and "items" in node:
        for index, item in enumerate(instance):
            found += problems(item, node["items"], f"{where}[{index}]")
    return found


def details_blocks(markdown: str) -> list[tuple[str, str]]:
    """The Markdown's ``<details>`` blocks as (summary, body)."""
    return re.findall(r"<details>\n<summary>(.*?)</summary>\n(.*?)\n</details>", markdown, re.S)


def gate_table(markdown: str) -> list[list[str]]:
    """The rows of the Markdown's gate table, as cells."""
    section = markdown.split("### Gates", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
