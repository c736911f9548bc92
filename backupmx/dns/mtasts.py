"""MTA-STS (RFC 8461): read what a domain publishes and decide if backup MX hosts may go live.

In enforce mode, MTA-STS senders deliver only to MX hosts the policy lists, so
adding a backup MX the policy does not name would silently cut the backup path.
The seed's zone shows the other common state: the ``_mta-sts`` TXT is published
but nothing serves the policy, which senders treat as no policy at all ("inert").

Pure parts (``parse_txt``, ``parse_policy``, ``mx_matches``, ``guard``,
``generate_policy``, ``policy_id``; for the whole MX set ``mx_hosts``,
``policy_for``, ``rotate`` and ``check_coverage``) take plain data; ``observe``
does the I/O: TXT from the authoritative servers, the policy over HTTPS.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from backupmx.core.errors import BackupMXError
from backupmx.core.report import FAIL, PASS, WARN
from backupmx.dns import check as dnscheck

VERSION = "STSv1"
MODES = ("enforce", "testing", "none")
MAX_AGE_LIMIT = 31557600  # RFC 8461 §3.2: about a year
DEFAULT_MAX_AGE = 604800  # one week, the RFC's example
POLICY_PATH = "/.well-known/mta-sts.txt"
POLICY_SIZE_LIMIT = 64 * 1024  # RFC 8461 §3.3: senders may refuse larger policies
FETCH_TIMEOUT = 10.0

_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class PolicyError(BackupMXError):
    """An MTA-STS TXT record or policy that does not follow RFC 8461."""


class PolicyFetchError(BackupMXError):
    """The policy could not be fetched the way a sender fetches it."""


@dataclass(frozen=True)
class Policy:
    mode: str
    mx: tuple[str, ...]
    max_age: int
    version: str = VERSION

    def unmatched(self, hosts: Iterable[str]) -> list[str]:
        """The hosts no ``mx:`` pattern of this policy covers."""
        return [host for host in hosts if not any(mx_matches(pattern, host) for pattern in self.mx)]


# ----------------------------------------------------------------------- parsing


def parse_txt(records: Sequence[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records, or None when none is published.

    RFC 8461 §3.1: records not starting with ``v=STSv1`` are ignored; more than one
    left, or one that is malformed, means senders assume no policy (PolicyError).
    """
    sts = [record for record in records if re.match(r"^v=STSv1\s*(;|$)", record)]
    if not sts:
        return None
    if len(sts) > 1:
        raise PolicyError(f"{len(sts)} v=STSv1 TXT records are published; senders need exactly one")
    fields = [field.strip() for field in sts[0].split(";")]
    if fields[-1] == "":
        fields.pop()  # a trailing ";" is allowed
    found_id = None
    for field in fields[1:]:
        name, sep, value = field.partition("=")
        if not sep or not _EXT_NAME.match(name) or not value:
            raise PolicyError(f"TXT field {field!r} is not name=value")
        if name == "id":
            if found_id is not None or not _ID.match(value):
                raise PolicyError(f"TXT id {value!r} must appear once and be 1-32 letters or digits")
            found_id = value
    if found_id is None:
        raise PolicyError("TXT record has no id=")
    return found_id


def parse_policy(text: str) -> Policy:
    """A policy body (RFC 8461 §3.2): ``key: value`` lines ended by CRLF or LF."""
    single: dict[str, str] = {}
    patterns: list[str] = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not _KEY.match(key):
            raise PolicyError(f"policy line {number} {line!r} is not 'key: value'")
        value = value.strip(" \t")
        if key == "mx":
            patterns.append(_mx_pattern(value, number))
        elif key in ("version", "mode", "max_age"):
            if key in single:
                raise PolicyError(f"policy line {number}: {key} appears twice")
            single[key] = value
        # Other keys are extensions, which senders ignore (§3.2).
    return _policy(single, patterns)


def _policy(single: dict[str, str], patterns: list[str]) -> Policy:
    if single.get("version") != VERSION:
        raise PolicyError(f"policy version is {single.get('version')!r}, not {VERSION!r}")
    mode = single.get("mode")
    if mode not in MODES:
        raise PolicyError(f"policy mode is {mode!r}, not one of {', '.join(MODES)}")
    max_age = single.get("max_age", "")
    if not max_age.isdigit() or int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {max_age!r} is not a whole number of seconds <= {MAX_AGE_LIMIT}")
    if mode != "none" and not patterns:
        raise PolicyError(f"policy in {mode} mode lists no mx")
    return Policy(mode, tuple(patterns), int(max_age))


def _mx_pattern(value: str, number: int) -> str:
    pattern = value.lower().rstrip(".")
    labels = pattern[2:].split(".") if pattern.startswith("*.") else pattern.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise PolicyError(f"policy line {number}: mx {value!r} is not a host name or *.domain pattern")
    return pattern


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: ``*.example.net`` stands for exactly one leftmost label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == host
    suffix = pattern[1:]  # ".example.net"
    label = host[: -len(suffix)] if host.endswith(suffix) else ""
    return bool(label) and "." not in label


# -------------------------------------------------------------------- generating


def generate_policy(mode: str, mx_hosts: Iterable[str], max_age: int = DEFAULT_MAX_AGE) -> str:
    """A policy body (CRLF lines, hosts sorted so the same input gives the same id)."""
    hosts = sorted({_mx_pattern(host, index) for index, host in enumerate(mx_hosts, 1)})
    text = "".join(f"{line}\r\n" for line in [f"version: {VERSION}", f"mode: {mode}"]
                   + [f"mx: {host}" for host in hosts] + [f"max_age: {max_age}"])
    parse_policy(text)  # refuse to emit what a sender would reject
    return text


def policy_id(text: str) -> str:
    """A policy id for the TXT record: changes exactly when the policy text does."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def txt_record(text: str) -> str:
    """The ``_mta-sts`` TXT content announcing policy ``text``."""
    return f"v={VERSION}; id={policy_id(text)}"


# ----------------------------------------------------------------------- fetching


class _PinnedAdapter(HTTPAdapter):
    """Connects to a given address while TLS names and verifies ``hostname`` (sandbox use)."""

    def __init__(self, hostname: str):
        self.hostname = hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(server_hostname=self.hostname, assert_hostname=self.hostname)
        super().init_poolmanager(*args, **kwargs)


def fetch_policy(domain: str, *, connect_to: str | None = None, ca_bundle: str | None = None,
                 timeout: float = FETCH_TIMEOUT) -> str:
    """The policy text as a sender fetches it (RFC 8461 §3.3): HTTPS, valid certificate, 200, no redirects.

    ``connect_to`` ("host:port") replaces the DNS lookup of ``mta-sts.<domain>`` (the
    sandbox); ``ca_bundle`` replaces the system trust store (the sandbox CA).
    """
    hostname = f"mta-sts.{domain}"
    session = requests.Session()
    url = f"https://{hostname}{POLICY_PATH}"
    if connect_to:
        url = f"https://{connect_to}{POLICY_PATH}"
        session.mount("https://", _PinnedAdapter(hostname))
    try:
        with session.get(url, headers={"Host": hostname}, timeout=timeout, allow_redirects=False,
                         verify=ca_bundle or True, stream=True) as response:
            if response.status_code != 200:
                raise PolicyFetchError(f"{url} answered HTTP {response.status_code}")
            body = response.raw.read(POLICY_SIZE_LIMIT + 1, decode_content=True)
    except requests.exceptions.SSLError:
        raise PolicyFetchError(f"{url}: TLS failed (no valid certificate for {hostname})") from None
    except requests.RequestException as error:
        raise PolicyFetchError(f"{url}: cannot connect ({type(error).__name__})") from None
    finally:
        session.close()
    if len(body) > POLICY_SIZE_LIMIT:
        raise PolicyFetchError(f"{url}: policy is larger than {POLICY_SIZE_LIMIT} bytes")
    return body.decode("utf-8", "replace")


# --------------------------------------------------------------------- observing


@dataclass(frozen=True)
class Observation:
    """What a sender would find for ``domain``."""

    domain: str
    txt_id: str | None = None  # the published policy id; None: no valid TXT
    txt_problem: str | None = None  # the TXT is there but invalid
    policy: Policy | None = None
    policy_problem: str | None = None  # TXT published, but no valid policy was served


def observe(domain: str, servers: Sequence[str] = (), *, connect_to: str | None = None,
            ca_bundle: str | None = None, timeout: float = FETCH_TIMEOUT) -> Observation:
    """Read the ``_mta-sts`` TXT from the authoritative servers and, if published, fetch the policy."""
    asked = list(servers) or dnscheck.authoritative_servers(domain)
    try:
        txt_id = parse_txt(dnscheck.txt(f"_mta-sts.{domain}", asked))
    except PolicyError as error:
        return Observation(domain, txt_problem=str(error))
    if txt_id is None:
        return Observation(domain)
    if servers and not _has_address(f"mta-sts.{domain}", servers):
        return Observation(domain, txt_id, policy_problem=f"mta-sts.{domain} has no address in DNS")
    try:
        policy = parse_policy(fetch_policy(domain, connect_to=connect_to, ca_bundle=ca_bundle, timeout=timeout))
    except (PolicyFetchError, PolicyError) as error:
        return Observation(domain, txt_id, policy_problem=str(error))
    return Observation(domain, txt_id, policy=policy)


def _has_address(name: str, servers: Sequence[str]) -> bool:
    try:
        return dnscheck.exists(name, servers)
    except dnscheck.DNSCheckError:
        return True  # e.g. delegated elsewhere: let the fetch decide, as it does for senders


# ----------------------------------------------------------------------- deciding


@dataclass(frozen=True)
class Decision:
    status: str  # report.PASS, report.WARN or report.FAIL (refuse)
    reason: str

    @property
    def refused(self) -> bool:
        return self.status == FAIL


INERT = "MTA-STS is inert: TXT published but no policy is served (senders ignore it)"


def guard(observation: Observation, backup_hosts: Sequence[str]) -> Decision:
    """May backup MX hosts be published, given the domain's MTA-STS state?

    ``check_coverage`` judges it for the backups; only a backup left out of a
    testing or enforce policy is worded here, with what to do before stage 5.
    """
    coverage = check_coverage(observation, backup_hosts)
    if not coverage.uncovered or coverage.status == PASS:
        return Decision(coverage.status, coverage.reason)
    absent = ", ".join(coverage.uncovered)
    if coverage.status == WARN:
        return Decision(WARN, f"MTA-STS policy is in testing mode and does not list {absent}: senders still "
                              f"deliver but report failures; add mx: {absent} before switching to enforce")
    return Decision(FAIL, f"MTA-STS policy is in enforce mode and does not list {absent}: enforcing senders "
                          f"would never use the backup; add mx: {absent} to the policy and publish it with a "
                          f"new id in _mta-sts.{observation.domain} first, then run again")


# ------------------------------------------------------- policy for the MX set


def mx_hosts(domain, backup) -> list[str]:
    """Every MX host a policy for ``domain`` must list: the primaries (by preference), then the backups.

    ``domain`` is a ``backupmx.core.settings.Domain``, ``backup`` its ``BackupMX``.
    """
    primaries = [mx.host for mx in sorted(domain.primary_mx, key=lambda mx: (mx.priority, mx.host))]
    return primaries + [host for host in backup.hosts if host not in primaries]


def policy_for(domain, backup, mode: str = "enforce", max_age: int = DEFAULT_MAX_AGE) -> str:
    """The policy body for ``domain``: ``version: STSv1``, ``mode``, one ``mx:`` per primary and
    backup host, ``max_age``. Refuses a mode or max_age RFC 8461 does not allow."""
    if mode not in MODES:
        raise PolicyError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {max_age!r} is not a whole number of seconds 0-{MAX_AGE_LIMIT}")
    return generate_policy(mode, mx_hosts(domain, backup), max_age)


def same_policy(a: Policy, b: Policy) -> bool:
    """Do two policies tell senders the same (the order of ``mx:`` lines does not matter)?"""
    return (a.version, a.mode, a.max_age, frozenset(a.mx)) == (b.version, b.mode, b.max_age, frozenset(b.mx))


@dataclass(frozen=True)
class Rotation:
    """What to publish for a wanted policy: the body, the id, the TXT, and whether anything changes."""

    policy: str
    id: str
    txt: str
    changed: bool  # the policy file and/or the TXT must be (re)published
    reason: str


def rotate(observation: Observation | None, text: str) -> Rotation:
    """The id for policy ``text``, given what is published now (RFC 8461 §3.1: a new id whenever the policy changes).

    The id is derived from the text (``policy_id``), so the same policy keeps its id
    and a changed one gets a new one. When the served policy already says the same,
    the published id is kept (nothing to do). When the published id equals the one
    derived from ``text`` but a different policy is served under it, senders may
    have cached that other policy under this id: a different id is derived so they
    fetch again.
    """
    wanted = parse_policy(text)
    current_id = observation.txt_id if observation else None
    served = observation.policy if observation else None
    if current_id and served is not None and same_policy(served, wanted):
        return Rotation(text, current_id, f"v={VERSION}; id={current_id}", False,
                        f"the served policy already says this (id {current_id}); nothing to publish")
    new_id = policy_id(text)
    if current_id == new_id and served is not None:
        new_id = hashlib.sha256(f"{text}\n{current_id}".encode()).hexdigest()[:20]
    if current_id is None:
        reason = "no policy id is published: publish the policy, then the TXT"
    elif served is None:
        reason = f"id {current_id} is published but no policy is served: publish the policy, then the TXT"
    else:
        reason = f"the served policy (id {current_id}) differs: publish the new policy, then the TXT with the new id"
    return Rotation(text, new_id, f"v={VERSION}; id={new_id}", True, reason)


@dataclass(frozen=True)
class Coverage:
    """Does what senders find for a domain let them deliver to every MX host?"""

    status: str  # report.PASS, WARN or FAIL
    reason: str
    inert: bool = False  # the seed's finding: TXT published, no policy served
    uncovered: tuple[str, ...] = ()


def check_coverage(observation: Observation, hosts: Sequence[str]) -> Coverage:
    """Report the domain's MTA-STS state against every MX host (primaries and backups).

    FAIL only when an enforce-mode policy leaves an MX host out: enforcing senders
    would refuse to deliver to it. The seed's finding (TXT published, nothing served)
    is a WARN: inert, so harmless now, but the fix must list every host.
    """
    listed = ", ".join(hosts)
    if observation.txt_problem:
        return Coverage(WARN, f"_mta-sts.{observation.domain} TXT is invalid ({observation.txt_problem}): senders "
                              f"assume no policy; a fixed policy must list {listed}")
    if observation.txt_id is None:
        return Coverage(PASS, f"no MTA-STS policy published for {observation.domain}")
    policy = observation.policy
    if policy is None:
        return Coverage(WARN, f"{INERT} for {observation.domain} (TXT id {observation.txt_id}; "
                              f"{observation.policy_problem}); when it is fixed, its mx: lines must cover {listed}",
                        inert=True)
    missing = tuple(policy.unmatched(hosts))
    where = f"MTA-STS policy of {observation.domain} (mode {policy.mode}, id {observation.txt_id})"
    if not missing:
        return Coverage(PASS, f"{where} covers every MX host: {listed}")
    absent = ", ".join(missing)
    if policy.mode == "enforce":
        return Coverage(FAIL, f"{where} does not cover {absent}: enforcing senders will not deliver there; "
                              f"publish a policy listing {listed} with a new id", uncovered=missing)
    if policy.mode == "testing":
        return Coverage(WARN, f"{where} does not cover {absent}: senders deliver but report failures; add it "
                              "before switching to enforce", uncovered=missing)
    return Coverage(PASS, f"{where} applies no checks (it would not cover {absent})", uncovered=missing)
