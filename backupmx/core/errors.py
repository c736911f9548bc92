"""Errors a user can act on: one line naming what failed and the next step.

Every expected failure in backupmx is a ``BackupMXError``; the deploys turn it into
pyinfra's ``DeployError`` so the CLI prints one line and exits non-zero, with no
traceback. Messages never carry secret values.
"""

from __future__ import annotations


class BackupMXError(Exception):
    """An expected failure with a one-line, actionable message."""


class ConfigError(BackupMXError):
    """Inventory data that does not describe a safe backup-MX setup."""

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"inventory data {field}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class SecretError(BackupMXError):
    """A secret could not be read; the message names the path, never the value."""
