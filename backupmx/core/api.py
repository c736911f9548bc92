"""What every HTTP API client of the project shares (Cloudflare's, Roller Network's account API):
the error that names the service and the endpoint (never a secret) with the next step, and a
urllib3 ``Retry`` that counts the retries one client made.
"""

from __future__ import annotations

from typing import Any

from urllib3.util.retry import Retry

from backupmx.core.errors import BackupMXError


class ApiError(BackupMXError):
    """A failed call: ``<service> <endpoint>: <problem>; <next step>``."""

    service = "the API"

    def __init__(self, endpoint: str, problem: str, next_step: str, *, status: int | None = None,
                 code: str | None = None, codes: tuple[int, ...] = ()):
        self.endpoint, self.problem, self.status, self.code, self.codes = endpoint, problem, status, code, codes
        super().__init__(f"{self.service} {endpoint}: {problem}; {next_step}")


class ApiAuthError(ApiError):
    """The credentials are refused, or lack the permission."""


class ApiNotFound(ApiError):
    """What was asked for does not exist (or the credentials cannot see it)."""


class ApiUnavailable(ApiError):
    """No usable answer (connection, timeout, 5xx, 429) after the retries allowed."""


class ApiRefused(ApiError):
    """Any other refusal (validation errors and the like)."""


class RetryCounter:
    """The retries of one client, across every copy urllib3 makes of its ``Retry``."""

    def __init__(self):
        self.retries = 0


class CountingRetry(Retry):
    """urllib3's Retry that counts into a ``RetryCounter`` (Retry objects are copied on every step)."""

    def __init__(self, *args, counter: RetryCounter | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter or RetryCounter()

    def new(self, **kw: Any) -> CountingRetry:
        retry = super().new(**kw)
        retry.counter = self.counter
        return retry

    def increment(self, *args, **kwargs):
        retry = super().increment(*args, **kwargs)
        self.counter.retries += 1
        return retry
