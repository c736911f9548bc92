"""A small Cloudflare v4 DNS client: the calls the MX stage needs, and no more.

Built on ``requests`` with urllib3's ``Retry`` mounted on the session, and written
against the known failures of other clients (PROVIDER-NOTES.md):

* every list is read to the end (an empty page or ``page >= total_pages`` stops it);
* a 200 with ``success: false`` is an error;
* a rate-limited request (429) is retried for any method after ``Retry-After``: it
  was refused, not applied; a 5xx or a lost answer is retried only for GET, PUT and
  DELETE. A create (POST) that may have been applied is never sent again blindly:
  the zone is re-read and only what is still missing is created;
* the token is unmasked only to build the header; it never reaches a message,
  a repr or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from pyinfra import logger
from pyinfra.api import HiddenValue
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError

from backupmx.core.api import ApiAuthError, ApiError, ApiNotFound, ApiRefused, ApiUnavailable, CountingRetry, RetryCounter
from backupmx.core.progress import QUIET_SECONDS
from backupmx.dns.plan import MXRecord

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
SERVER_ERRORS = frozenset({500, 502, 503, 504, 520, 521, 522, 523, 524})
RECORDS_PER_PAGE = 100  # the API's default page size
ZONES_PER_PAGE = 50  # the API's largest zone page
MAX_PAGES = 10_000  # a server that ignores `page` must not loop us forever
AUTO_TTL = 1
TOKEN_HELP = "https://dash.cloudflare.com/profile/api-tokens"


# ------------------------------------------------------------------------- errors


class CloudflareError(ApiError):
    """A failed Cloudflare call: names the endpoint (method + path), never the token."""

    service = "Cloudflare"


class CloudflareAuthError(CloudflareError, ApiAuthError):
    """The token is invalid, malformed, or lacks the zone (9109, 10000, 6003, 9106)."""


class CloudflareNotFoundError(CloudflareError, ApiNotFound):
    """The zone or record does not exist, or is not visible to the token (81044, 7003)."""


class CloudflareQuotaError(CloudflareError):
    """The zone's record quota is reached (81045)."""


class CloudflareDuplicateError(CloudflareError):
    """An identical record already exists (81058, older 81057)."""


class CloudflareRateLimitError(CloudflareError):
    """Still rate limited (429) after the retries allowed; ``retry_after`` in seconds."""

    def __init__(self, *args, retry_after: float | None = None, **kwargs):
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


class CloudflareUnavailableError(CloudflareError, ApiUnavailable):
    """5xx, timeout or dropped connection after the retries allowed."""


class CloudflareRequestError(CloudflareError, ApiRefused):
    """Any other refusal (validation errors and the like)."""


AUTH_CODES = {9109, 10000, 6003, 6111, 6103, 9106, 10001}
NOT_FOUND_CODES = {81044, 7003, 7000}
DUPLICATE_CODES = {81057, 81058}
QUOTA_CODES = {81045}


# ------------------------------------------------------------------------ retries


class CloudflareRetry(CountingRetry):
    """urllib3 Retry with Cloudflare's rules.

    429 is retried for every method (Cloudflare refused it before doing anything)
    after ``Retry-After``, unless the wait is longer than ``max_wait``: then the 429
    comes back to the caller, who says how long to wait instead of hanging a deploy
    for minutes. 5xx and lost answers are retried only for idempotent methods.
    """

    def __init__(self, *args, max_wait: float = 60.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_wait = max_wait

    def new(self, **kw: Any) -> CloudflareRetry:
        retry = super().new(**kw)
        retry.max_wait = self.max_wait
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 429:
            return True
        return status_code in SERVER_ERRORS and method.upper() in IDEMPOTENT

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if response is not None and response.status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and wait > self.max_wait:
                # Raising here makes urllib3 hand the 429 back (raise_on_status is off).
                raise MaxRetryError(_pool, url, ResponseError(f"Retry-After {wait:.0f}s is too long"))
            if wait is not None and wait >= QUIET_SECONDS:
                # urllib3 sleeps next, in one piece: say so rather than go silent.
                logger.info(f"Cloudflare: rate limited (429): waiting {wait:.0f} s as its Retry-After asks, "
                            f"then {method} again")
        return super().increment(method, url, response, error, _pool, _stacktrace)


def retry_after_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from Cloudflare; urllib3 still honours it when sleeping


# ------------------------------------------------------------------------- client


def _reveal(token: Any) -> str:
    return token.unmask() if hasattr(token, "unmask") else str(token)


@dataclass
class _Answer:
    status: int
    body: dict | None
    retry_after: float | None
    retries: int


class CloudflareClient:
    """The MX stage's Cloudflare calls. One instance per run: it caches zone ids and counts requests."""

    def __init__(self, api_base: str, token: Any, *, token_source: str = "Vault key cloudflare_api_token",
                 timeout: tuple[float, float] = (5.0, 30.0), retries: int = 3, backoff_factor: float = 0.5,
                 max_wait: float = 60.0, per_page: int = RECORDS_PER_PAGE):
        self.api_base = api_base.rstrip("/")
        # Kept masked: a repr of this client or of its attributes shows *MASKED*.
        self._token = token if hasattr(token, "unmask") else HiddenValue(token)
        self.token_source = token_source
        self.timeout = timeout
        self.per_page = per_page
        self.calls = 0  # API calls made by this client (each may be several HTTP requests)
        self._counter = RetryCounter()
        self._zone_ids: dict[str, str] = {}
        self.session = requests.Session()
        retry = CloudflareRetry(total=retries, connect=retries, read=retries, status=retries, other=0,
                                redirect=0, allowed_methods=IDEMPOTENT, backoff_factor=backoff_factor,
                                backoff_max=30, backoff_jitter=0.1 * backoff_factor,
                                respect_retry_after_header=True, retry_after_max=max_wait,
                                raise_on_status=False, counter=self._counter, max_wait=max_wait)
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"CloudflareClient({self.api_base!r}, token from {self.token_source})"

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far, retries included (what the API's rate limit counts)."""
        return self.calls + self._counter.retries

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ the calls

    def zone_id(self, name: str) -> str:
        """The id of zone ``name``, looked up once per client."""
        if name not in self._zone_ids:
            zones = self._list("/zones", {"name": name}, ZONES_PER_PAGE)
            found = [zone["id"] for zone in zones if zone.get("name") == name]
            if not found:
                raise CloudflareNotFoundError(
                    f"GET /zones?name={name}", f"zone {name} not found",
                    f"check the zone name, and that the token from {self.token_source} may read it "
                    f"(Zone:Read and DNS:Edit on {name})")
            self._zone_ids[name] = found[0]
        return self._zone_ids[name]

    def mx_records(self, zone_id: str, name: str) -> list[MXRecord]:
        """Every MX record named ``name`` (all pages)."""
        records = self._list(f"/zones/{zone_id}/dns_records", {"type": "MX", "name": name}, self.per_page)
        # Filtered again here: a server that ignored a filter must not feed the planner other records.
        return [_mx(r) for r in records if r.get("type") == "MX" and r.get("name", "").lower() == name.lower()]

    def record_count(self, zone_id: str) -> int:
        """How many records the zone holds, in one request (``result_info.total_count``)."""
        path = f"/zones/{zone_id}/dns_records"
        body = self._call("GET", path, params={"per_page": 1, "page": 1})
        total = (body.get("result_info") or {}).get("total_count")
        if not isinstance(total, int):
            # No count given: fall back to counting every record.
            return len(self._list(path, {}, self.per_page))
        return total

    def create_mx(self, zone_id: str, name: str, host: str, priority: int, comment: str | None = None,
                  ttl: int = AUTO_TTL) -> MXRecord:
        """Create one MX record, or find it if it exists; never creates a duplicate.

        A POST that timed out, got a 5xx or lost its connection may have been applied.
        Then the zone is re-read and the create is sent again only if the record is
        still missing (at most one more time).
        """
        path = f"/zones/{zone_id}/dns_records"
        # priority is always sent, even 0 (terraform-provider-cloudflare#943 dropped it).
        body = {"type": "MX", "name": name, "content": host, "priority": int(priority), "ttl": ttl}
        if comment:
            body["comment"] = comment
        for _attempt in (1, 2):
            try:
                return _mx(self._call("POST", path, json=body)["result"])
            except CloudflareDuplicateError:
                found = self.find_mx(zone_id, name, host, priority)
                if found:
                    return found
                raise CloudflareRequestError(f"POST {path}", f"MX {priority} {host} is reported as existing but "
                                             "cannot be read back", "check the zone in the dashboard and run again")
            except CloudflareUnavailableError:
                found = self.find_mx(zone_id, name, host, priority)  # it may have been applied
                if found:
                    return found
        raise CloudflareUnavailableError(f"POST {path}", f"creating MX {priority} {host} failed twice and it is "
                                         "not in the zone", "run again later (only missing records are created)")

    def find_mx(self, zone_id: str, name: str, host: str, priority: int) -> MXRecord | None:
        """The MX record with exactly this name, host and priority, if any."""
        records = self._list(f"/zones/{zone_id}/dns_records",
                             {"type": "MX", "name": name, "content": host}, self.per_page)
        matches = [_mx(r) for r in records if r.get("type") == "MX" and r.get("content", "").lower() == host.lower()
                   and r.get("priority") == priority and r.get("name", "").lower() == name.lower()]
        return matches[0] if matches else None

    def delete_record(self, zone_id: str, record_id: str) -> None:
        """Delete one record. Already gone (81044) counts as done: a retried DELETE may find that."""
        try:
            self._call("DELETE", f"/zones/{zone_id}/dns_records/{record_id}")
        except CloudflareNotFoundError as error:
            if 81044 not in error.codes:
                raise

    # ------------------------------------------------------------------ plumbing

    def _list(self, path: str, params: dict, per_page: int) -> list[dict]:
        """Every item of a paginated list: stops on an empty page or when ``page >= total_pages``."""
        items: list[dict] = []
        for page in range(1, MAX_PAGES + 1):
            body = self._call("GET", path, params={**params, "page": page, "per_page": per_page})
            result = body.get("result") or []
            items.extend(result)
            total_pages = (body.get("result_info") or {}).get("total_pages")
            if not result or (isinstance(total_pages, int) and page >= total_pages):
                return items
        raise CloudflareRequestError(f"GET {path}", f"more than {MAX_PAGES} pages",
                                     "the API is not paginating; report it and run again later")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict:
        """One API call (retries inside); the envelope on success, a typed error otherwise."""
        endpoint = f"{method} {path}"
        answer = self._send(method, path, endpoint, **kwargs)
        body = answer.body
        if answer.status < 300 and body is not None and body.get("success") is True:
            return body
        raise self._error(endpoint, method, answer)

    def _send(self, method: str, path: str, endpoint: str, **kwargs: Any) -> _Answer:
        self.calls += 1
        before = self._counter.retries
        headers = {"Authorization": f"Bearer {_reveal(self._token)}"}
        try:
            response = self.session.request(method, self.api_base + path, headers=headers,
                                            timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as error:
            # Raised from None: the chained exception would carry the request and its header.
            raise self._lost(endpoint, method, type(error).__name__, self._counter.retries - before) from None
        try:
            body = response.json()
        except ValueError:
            body = None  # an edge error page (HTML), not an envelope
        if not isinstance(body, dict):
            body = None
        return _Answer(response.status_code, body, retry_after_seconds(response.headers.get("Retry-After")),
                       self._counter.retries - before)

    def _lost(self, endpoint: str, method: str, why: str, retries: int) -> CloudflareUnavailableError:
        tried = f" after {retries} retries" if retries else ""
        return CloudflareUnavailableError(endpoint, f"no answer ({why}){tried}", _unavailable_step(method))

    def _error(self, endpoint: str, method: str, answer: _Answer) -> CloudflareError:
        errors = (answer.body or {}).get("errors") or []
        codes = tuple(e.get("code") for e in errors if isinstance(e, dict) and isinstance(e.get("code"), int))
        detail = "; ".join(f"{e.get('message')} ({e.get('code')})" for e in errors if isinstance(e, dict))
        status, code_set = answer.status, set(codes)
        said = f"{status} {detail}" if detail else str(status)
        if status == 429:
            wait = f"{answer.retry_after:.0f} s" if answer.retry_after is not None else "5 minutes"
            return CloudflareRateLimitError(
                endpoint, f"rate limited ({said}) after {answer.retries} retries",
                f"wait {wait} and run again (Cloudflare allows 1200 requests per 5 minutes per token)",
                status=status, codes=codes, retry_after=answer.retry_after)
        if answer.body is None and status < 300:
            return CloudflareUnavailableError(endpoint, f"{status} without a JSON envelope",
                                              _unavailable_step(method), status=status, codes=codes)
        if status >= 500:
            tried = (f" after {answer.retries} retries" if method in IDEMPOTENT
                     else " (not retried: it may have been applied)")
            return CloudflareUnavailableError(endpoint, f"{status}{tried}", _unavailable_step(method), status=status, codes=codes)
        if code_set & AUTH_CODES or status in (401, 403):
            return CloudflareAuthError(endpoint, said, self._auth_step(code_set), status=status, codes=codes)
        if code_set & QUOTA_CODES:
            return CloudflareQuotaError(endpoint, f"the zone's record quota is reached ({said})",
                                        "delete unused records (or raise the plan's quota) and run again",
                                        status=status, codes=codes)
        if code_set & DUPLICATE_CODES:
            return CloudflareDuplicateError(endpoint, said, "nothing to create", status=status, codes=codes)
        if code_set & NOT_FOUND_CODES or status == 404:
            return CloudflareNotFoundError(endpoint, said, "check the zone name and the record; run again to "
                                           "re-read the zone", status=status, codes=codes)
        if status < 300:
            said = f"{status} with success: false ({detail or 'no errors given'})"
        return CloudflareRequestError(endpoint, said, "fix what the message names and run again", status=status, codes=codes)

    def _auth_step(self, codes: set[int]) -> str:
        if 10000 in codes:
            return (f"the token from {self.token_source} lacks this zone: give it Zone:Read and DNS:Edit on the "
                    f"zone ({TOKEN_HELP})")
        if codes & {6003, 6111, 6103, 9106}:
            return (f"the token from {self.token_source} is empty or malformed: store the token itself, "
                    "without 'Bearer '")
        return f"the token from {self.token_source} is invalid or expired: store a valid API token there ({TOKEN_HELP})"


def _unavailable_step(method: str) -> str:
    if method == "GET":
        return "run again later (nothing was changed)"
    if method == "POST":
        return "run again later (it re-reads the zone and creates only what is missing)"
    return "run again later (it re-reads the zone first)"


def _mx(record: dict) -> MXRecord:
    return MXRecord(name=record["name"].lower(), host=record["content"].lower().rstrip(".") or ".",
                    priority=int(record["priority"]), id=record.get("id"), comment=record.get("comment"))
