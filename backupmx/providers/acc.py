"""The ``api`` backend: Roller Network's account API (ACC), ``api.php`` with ``u k m a d``.

Roller Network publishes the endpoint and the parameters but not the mail
module's action names nor the response format. Both are therefore *data*: the
provider profile (``provider.api`` in the inventory, defaults in
``backupmx.core.profile.DEFAULT_ACC_API`` = docs/provider-api.md) names the module, the
actions, where each fact sits in an answer and how the envelope says ok or error.
A wrong guess is corrected in the inventory, without a release.

Rules of this client:

* every request is a POST with a form body: the key is never in a URL, so no
  proxy or access log keeps it; the key is held masked and scrubbed from any text
  the API answers before that text reaches a message;
* every request has a timeout; reads (``domain_get`` …) are retried with backoff
  (urllib3 ``Retry``, honouring ``Retry-After``) on 429, 5xx and lost answers.
  Writes are retried only when the connection was never made: a write whose answer
  was lost may have been applied, so the state is re-read instead;
* an application error arrives in an HTTP 200 envelope: ``status`` is checked,
  not only the HTTP code;
* a failure is one ``AccError`` line naming the endpoint (URL without the key,
  module and action) and the next step.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import requests
from pyinfra.api import HiddenValue
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.retry import Retry

from backupmx.core.api import ApiAuthError, ApiError, ApiNotFound, ApiRefused, ApiUnavailable, CountingRetry, RetryCounter
from backupmx.core.profile import ProviderProfile
from backupmx.providers.base import (
    ProviderError,
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30  # seconds; a longer Retry-After is cut to this


class AccError(ProviderError, ApiError):
    """A failed account API call: names the endpoint, never the key."""

    service = "Roller Network ACC"


class AccNotFound(AccError, ApiNotFound):
    """The domain is not in the account."""


class AccAuthError(AccError, ApiAuthError):
    """Wrong user or key, or a key without the permission (403)."""


class AccUnavailable(AccError, ApiUnavailable):
    """No usable answer (connection, timeout, 5xx, 429, not JSON) after the retries allowed."""


class AccRefused(AccError, ApiRefused):
    """Any other application error (unknown action, bad request, invalid value)."""


def dig(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` (dict keys, list indexes); ``KeyError`` if absent."""
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise KeyError(path)
    return data


def _never_sent(error: requests.RequestException) -> bool:
    """True when the request never left: no connection was made (so a write was not applied)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _reveal(key: Any) -> str:
    return key.unmask() if hasattr(key, "unmask") else str(key)


class AccClient:
    """HTTP calls to the ACC API, named by logical action; one instance per run."""

    def __init__(self, profile: ProviderProfile, key: Any, *, backoff_factor: float = 0.5,
                 fail_fast: bool = False):
        self.profile = profile
        self.shape = profile.api
        self._key = key if hasattr(key, "unmask") else HiddenValue(key)
        self.calls = 0
        # With fail_fast, an API that was unreachable once in this run is not tried
        # again (each try costs the retries): for a rollback in an outage.
        self.fail_fast = fail_fast
        self.outage: AccUnavailable | None = None
        self._counter = RetryCounter()
        common = {"backoff_factor": backoff_factor, "backoff_max": 10, "respect_retry_after_header": True,
                  "retry_after_max": MAX_RETRY_AFTER, "raise_on_status": False, "redirect": 0,
                  "counter": self._counter}
        n = profile.retries
        # Reads are idempotent although sent as POST (to keep the key out of URLs).
        self._reads = self._session(CountingRetry(total=n, connect=n, read=n, status=n, other=0,
                                                   allowed_methods=frozenset({"POST"}),
                                                   status_forcelist=RETRY_STATUSES, **common))
        # Writes: only a connection that was never made is tried again. (An empty
        # allowed_methods would mean "every method" to urllib3; GET is never sent.)
        self._writes = self._session(CountingRetry(total=n, connect=n, read=0, status=0, other=0,
                                                    allowed_methods=frozenset({"GET"}), **common))

    def __repr__(self) -> str:
        return f"AccClient({self.profile.api_base!r}, user={self.profile.user!r}, key=*MASKED*)"

    @staticmethod
    def _session(retry: Retry) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    @property
    def request_count(self) -> int:
        return self.calls + self._counter.retries

    def close(self) -> None:
        self._reads.close()
        self._writes.close()

    def endpoint(self, logical: str) -> str:
        action = self.shape.action(logical) or f"<{logical}: none>"
        return f"POST {self.profile.api_base} (m={self.shape.module} a={action})"

    def call(self, logical: str, data: dict | None = None, write: bool = False) -> Any:
        """Run the action the profile names for ``logical``; the answer's data, or an ``AccError``."""
        action = self.shape.action(logical)
        endpoint = self.endpoint(logical)
        if action is None:
            raise AccRefused(endpoint, f"the provider profile has no action for {logical}",
                             f"set provider.api.actions.{logical} in the inventory, or do it by hand")
        if self.fail_fast and self.outage is not None:
            raise AccUnavailable(endpoint, f"not tried again: unreachable earlier in this run "
                                 f"({self.outage.problem})", self._unavailable_step(write))
        form = {"u": self.profile.user or "", "k": _reveal(self._key), "m": self.shape.module, "a": action}
        if data:
            request = self.shape.request
            form["d"] = json.dumps({request.get(name, name): value for name, value in data.items()})
        session = self._writes if write else self._reads
        self.calls += 1
        before = self._counter.retries
        try:
            response = session.post(self.profile.api_base, data=form, allow_redirects=False,
                                    timeout=(self.profile.connect_timeout, self.profile.read_timeout),
                                    verify=self.profile.ca_bundle or True)
        except requests.RequestException as error:
            # Raised from None: the chained exception holds the request and its body (the key).
            tried = self._counter.retries - before
            never_sent = _never_sent(error)
            lost = AccUnavailable(endpoint, f"{'no connection' if never_sent else 'no answer'} "
                                  f"({type(error).__name__}{f' after {tried} retries' if tried else ''})",
                                  self._unavailable_step(write and not never_sent))
            if not write:  # a read had all its retries: the API is down
                self.outage = lost
            raise lost from None
        try:
            return self._parse(endpoint, logical, write, response, self._counter.retries - before)
        except AccUnavailable as error:
            if not write:
                self.outage = error
            raise

    def _parse(self, endpoint: str, logical: str, write: bool, response: requests.Response, tried: int) -> Any:
        envelope = self.shape.envelope
        status = response.status_code
        retried = f" after {tried} retries" if tried else ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            if status >= 500 or status == 429:
                raise AccUnavailable(endpoint, f"HTTP {status}{retried}", self._unavailable_step(write),
                                     status=status)
            raise AccUnavailable(endpoint, f"HTTP {status} without a JSON answer{retried}",
                                 "if this persists the response format differs from the provider profile: "
                                 "check provider.api.envelope (docs/provider-api.md); "
                                 + self._unavailable_step(write), status=status)
        try:
            ok = dig(body, envelope["status"]) == envelope["ok"]
        except KeyError:
            ok = False
        if ok and status < 300:
            try:
                return dig(body, envelope["data"])
            except KeyError:
                raise AccRefused(endpoint, f"the answer has no {envelope['data']!r}",
                                 "correct provider.api.envelope.data in the inventory") from None
        code = self._text(body, envelope["error_code"])
        message = self._text(body, envelope["error_message"])
        said = f"HTTP {status} {code or 'error'}" + (f" ({message})" if message else "")
        if status in (401, 403) or code in ("auth_failed", "permission_denied"):
            raise AccAuthError(endpoint, said, self._auth_step(code), code=code, status=status)
        if code in self.shape.errors.get("domain_not_found", ()):
            raise AccNotFound(endpoint, said, "add the domain in the ACC (Secondary MX) and run again",
                              code=code, status=status)
        if status >= 500 or status == 429:
            raise AccUnavailable(endpoint, f"{said}{retried}", self._unavailable_step(write), code=code, status=status)
        if code in ("unknown_action", "unknown_module"):
            step = (f"the ACC does not know this name: correct provider.api.actions.{logical} (or "
                    f"provider.api.module) in the inventory, or set it to null to use the gate ledger "
                    f"(docs/provider-api.md)")
        else:
            step = "check provider.api in the inventory against the ACC's API (docs/provider-api.md)"
        raise AccRefused(endpoint, said, step, code=code, status=status)

    def _text(self, body: dict, path: str) -> str | None:
        try:
            value = dig(body, path)
        except KeyError:
            return None
        text = " ".join(str(value).split())[:200]
        key = _reveal(self._key)
        return text.replace(key, "*MASKED*") if key else text

    def _auth_step(self, code: str | None) -> str:
        secret = f"Vault key {self.profile.key_secret}"
        if code == "permission_denied":
            return (f"grant the API key in {secret} the mail permissions in the ACC (a new key is denied "
                    f"everything)")
        return (f"check provider.user ({self.profile.user!r}) and the API key in {secret} (keys cannot be "
                f"edited: mint a new one in the ACC and store it there)")

    def _unavailable_step(self, write: bool) -> str:
        host = urlsplit(self.profile.api_base).netloc
        if write:
            return (f"it may or may not have been applied: run again later (it re-reads first), or do it by "
                    f"hand at {self.profile.manual_url}")
        return f"check that {host} is reachable and run again later"
