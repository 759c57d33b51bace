"""Exceptions shared by every remote backend.

The split that matters to callers is *temporary* versus *permanent*: the retry wrapper
(`remote.retry`) retries only `TemporaryRemoteError`, and the sync layer keeps work queued on
a temporary error but surfaces a permanent one to the operator. Each HTTP status maps to
exactly one class in `error_for_status`, so that decision is made in one place.
"""

from __future__ import annotations


class RemoteError(Exception):
    """Base class of every error raised by `remote/`."""


class TemporaryRemoteError(RemoteError):
    """May succeed if tried again later: connection failure, timeout, 5xx, 429, 507."""


class PermanentRemoteError(RemoteError):
    """Will fail the same way if repeated: bad request, auth, not found, conflict."""


class NotFoundError(PermanentRemoteError):
    """The object or ref does not exist (on the server that answered)."""


class ConflictError(PermanentRemoteError):
    """A ref already exists with different content; refs are append-only for tools."""


class ForgottenError(PermanentRemoteError):
    """410: the server pruned that ref and will not take it back from its HA peer."""


class AuthError(PermanentRemoteError):
    """Missing or wrong token (401) or the token may not do this (403)."""


class IntegrityError(TemporaryRemoteError):
    """Downloaded bytes do not match the hash the server announced.

    The server re-hashes every object before sending it and quarantines a corrupt one, so a
    mismatch seen by the client means the bytes were damaged on the way: worth retrying.
    """


class DeadlineExceeded(TemporaryRemoteError):
    """The retry wrapper gave up: its total deadline passed while errors stayed temporary."""

    def __init__(self, message: str, attempts: int, last_error: BaseException | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


# Statuses after which the same request may succeed later (or on the HA peer).
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507})


def is_temporary_status(status: int) -> bool:
    """True for statuses worth retrying or failing over on: 408, 429 and every 5xx."""
    return status in TEMPORARY_STATUSES or status >= 500


def error_for_status(status: int, message: str) -> RemoteError:
    """Map an HTTP error status to the one exception class callers handle."""
    if is_temporary_status(status):
        return TemporaryRemoteError(f"HTTP {status}: {message}")
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status == 410:
        return ForgottenError(f"HTTP {status}: {message}")
    if status in (401, 403):
        return AuthError(f"HTTP {status}: {message}")
    return PermanentRemoteError(f"HTTP {status}: {message}")
