"""Errors raised by the local store.

They derive from the CLI's `DpmsError` family so that a command can print the one-line
message and exit with the documented code without knowing store internals.
"""

from __future__ import annotations

from dpmsfs.errors import BusyError, DpmsError, UnavailableError


class StoreError(DpmsError):
    """The store cannot do what was asked (not a store, wrong version, wrong chunker...)."""


class StoreFullError(StoreError, UnavailableError):
    """The store's disk (or its LMDB map, when it cannot grow further) is full.

    Raised before anything is half-written: the store stays consistent, and the same call
    succeeds once space has been freed.
    """


class StoreLockedError(StoreError, BusyError):
    """Another process (or another `Store` in this process) has the store open for writing."""


class CorruptObjectError(StoreError):
    """An object's stored bytes do not decode, or do not hash to its id."""

    def __init__(self, message: str, object_id: bytes, pack_id: bytes | None) -> None:
        super().__init__(message)
        self.object_id = object_id
        self.pack_id = pack_id


class ObjectNotFoundError(StoreError, KeyError):
    """No object with this id is in the store (neither indexed nor in an open pack)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TreeFormatError(StoreError, ValueError):
    """Bytes that claim to be an encoded tree are malformed."""
