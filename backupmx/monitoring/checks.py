"""Shape checks of the rendered monitoring files, before the real tools (blackbox_exporter\n--config.check, promtool check rules) see them: what a wrong edit of a template would break.\n"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from backupmx.monitoring.settings import DURATION

# What blackbox_exporter 0.23 can probe with, and the section each needs. Its
# --config.check accepts any prober name (the name is looked up only when a
# probe runs), so the shape check below refuses unknown ones itself.
PROBERS = {"http": "http", "tcp": "tcp", "dns": "dns", "icmp": "icmp", "grpc": "grpc"}
# libyaml's safe loader where PyYAML was built with it (Debian's and the wheels are): the same
# data as the pure-Python one, parsed several times faster on every run.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compiles(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return f"{pattern!r} is not a string"
    try:
        re.compile(pattern)
    except re.error as error:
        return f"{pattern!r} does not compile ({error})"
    if "(?=" in pattern or "(?!" in pattern or "(?<" in pattern or re.search(r"\\[1-9]", pattern):
        return f"{pattern!r} uses look-around or a back-reference, which RE2 (blackbox) lacks"
    return None


def check_blackbox_shape(text: str, expected_modules: Iterable[str] = ()) -> list[str]:
    """What is wrong with a blackbox configuration that ``--config.check`` would let by.

    ``--config.check`` refuses unknown keys, but accepts any prober name and any
    module without the section its prober reads. This refuses those, a DNS module
    that does not ask for MX by name, regexps that do not compile or need
    features RE2 lacks, and modules missing from ``expected_modules``.
    """
    try:
        data = loads(text)
    except yaml.YAMLError as error:
        return [f"not YAML: {error}"]
    if not isinstance(data, dict) or not isinstance(data.get("modules"), dict) or not data["modules"]:
        return ["no `modules:` mapping"]
    problems = []
    modules = data["modules"]
    for name in expected_modules:
        if name not in modules:
            problems.append(f"module {name} is missing")
    for name, module in modules.items():
        where = f"module {name}"
        if not isinstance(module, dict):
            problems.append(f"{where} is not a mapping")
            continue
        prober = module.get("prober")
        if prober not in PROBERS:
            problems.append(f"{where}: prober {prober!r} is not one of {', '.join(PROBERS)} "
                            "(blackbox_exporter --config.check does not catch this)")
            continue
        timeout = module.get("timeout")
        if timeout is not None and not DURATION.match(str(timeout)):
            problems.append(f"{where}: timeout {timeout!r} is not a duration")
        for other in set(PROBERS.values()) - {PROBERS[prober]}:
            if other in module:
                problems.append(f"{where}: has a `{other}` section but its prober is {prober}")
        if prober == "dns":
            dns = module.get("dns")
            if not isinstance(dns, dict):
                problems.append(f"{where}: dns prober without a `dns:` section")
                continue
            if not dns.get("query_name"):
                problems.append(f"{where}: no query_name")
            if dns.get("query_type") != "MX":
                problems.append(f"{where}: query_type {dns.get('query_type')!r}, the drift guard asks for MX")
            for section in ("validate_answer_rrs", "validate_authority_rrs", "validate_additional_rrs"):
                for key, patterns in (dns.get(section) or {}).items():
                    for pattern in patterns or []:
                        problem = _compiles(pattern)
                        if problem:
                            problems.append(f"{where}: {section}.{key}: {problem}")
            answer = dns.get("validate_answer_rrs") or {}
            if not answer.get("fail_if_none_matches_regexp") or len(answer["fail_if_none_matches_regexp"]) != 1:
                # With more than one, any single match passes: a missing host goes unseen.
                problems.append(f"{where}: needs exactly one fail_if_none_matches_regexp (its own record); "
                                "several would pass while a host is missing")
        if prober == "tcp":
            tcp = module.get("tcp")
            if not isinstance(tcp, dict):
                problems.append(f"{where}: tcp prober without a `tcp:` section")
                continue
            for index, step in enumerate(tcp.get("query_response") or []):
                if "expect" in step:
                    problem = _compiles(step["expect"])
                    if problem:
                        problems.append(f"{where}: query_response[{index}].expect: {problem}")
    return problems


def check_rules_shape(text: str) -> list[str]:
    """A light structural check of a rule file (``promtool check rules`` is the real one)."""
    try:
        data = loads(text)
    except yaml.YAMLError as error:
        return [f"not YAML: {error}"]
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        return ["no `groups:` list"]
    problems = []
    for group in data["groups"]:
        for rule in group.get("rules", []):
            if "alert" in rule:
                if not rule.get("expr"):
                    problems.append(f"alert {rule['alert']} has no expr")
                if "runbook_url" not in (rule.get("annotations") or {}):
                    problems.append(f"alert {rule['alert']} names no runbook_url")
            elif "record" not in rule:
                problems.append(f"rule {rule!r} is neither alert nor record")
    return problems


def loads(text: str) -> Any:
    """YAML text as data (the shape checks, and callers that compare rendered files)."""
    return yaml.load(text, Loader=SAFE_LOADER)
