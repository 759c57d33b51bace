"""Bearer tokens: who may reach which namespaces, and whether they may delete.

The tokens file is JSON, `{"tokens": {<token>: {"role": "tool"|"admin"|"replicate",
"namespaces": [..] | "*"}}}`. A `replicate` token is what an HA server uses to push to its
peer: it reads and writes (append-only, like a tool) every namespace it names and may list
namespaces, but may not delete or replace. A key may also be written `sha256:<hex>` (the
SHA-256 of the token) so the file need not hold the secret itself. Tokens are looked up by
their SHA-256, which keeps the comparison independent of how much of a guess matches.

The file is re-read when its modification time changes, so an admin can add a tool without
restarting the server; a broken edit is logged and the previous table stays in force.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote import names

log = logging.getLogger(__name__)


ROLES = ("tool", "admin", "replicate")


class TokenFileError(Exception):
    """The tokens file cannot be read or does not have the documented shape."""


@dataclass(frozen=True)
class Grant:
    role: str  # "tool", "admin" or "replicate"
    namespaces: frozenset[str] | None  # lower-cased; None means every namespace

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_replicate(self) -> bool:
        return self.role == "replicate"

    def reaches(self, namespace: str) -> bool:
        return self.namespaces is None or names.namespace_dir(namespace) in self.namespaces


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_tokens(doc: Any) -> dict[str, Grant]:
    """Validate a decoded tokens document; return grants keyed by SHA-256 of the token."""
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), dict):
        raise TokenFileError('expected an object with a "tokens" object')
    table: dict[str, Grant] = {}
    for token, spec in doc["tokens"].items():
        where = f"token {token[:6]}…"
        if not isinstance(spec, dict):
            raise TokenFileError(f"{where}: expected an object")
        role = spec.get("role")
        if role not in ROLES:
            raise TokenFileError(f'{where}: role must be "tool", "admin" or "replicate"')
        spaces = spec.get("namespaces")
        grant_ns: frozenset[str] | None
        if spaces == "*":
            grant_ns = None
        elif isinstance(spaces, list) and all(
            isinstance(s, str) and names.is_namespace(s) for s in spaces
        ):
            grant_ns = frozenset(names.namespace_dir(s) for s in spaces)
        else:
            raise TokenFileError(f'{where}: namespaces must be "*" or a list of valid names')
        if len(token) < 16 and not token.startswith("sha256:"):
            raise TokenFileError(f"{where}: tokens must be at least 16 characters")
        key = token[len("sha256:") :].lower() if token.startswith("sha256:") else _digest(token)
        table[key] = Grant(role=role, namespaces=grant_ns)
    return table


def load_tokens(path: Path) -> dict[str, Grant]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenFileError(f"cannot read tokens file {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenFileError(f"tokens file {path} is not valid JSON: {exc}") from exc
    return parse_tokens(doc)


def create_default(path: Path) -> str:
    """Write a tokens file with one fresh admin token (for a loopback demo). Returns it."""
    token = secrets.token_urlsafe(32)
    _write_atomically(path, {"tokens": {token: {"role": "admin", "namespaces": "*"}}})
    return token


def add_token(path: Path, role: str, namespaces: list[str] | str) -> str:
    """Create a fresh token with `role` over `namespaces`; store only its SHA-256. Returns it.

    The file is rewritten atomically (temp file, fsync, rename), so a running server that
    re-reads it on change never sees half a file; an absent file is created.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    doc: Any = {"tokens": {}}
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenFileError(f"cannot read tokens file {path}: {exc}") from exc
        parse_tokens(doc)  # refuse to extend a file that is already broken
    token = secrets.token_urlsafe(32)
    doc["tokens"]["sha256:" + _digest(token)] = {"role": role, "namespaces": namespaces}
    parse_tokens(doc)
    _write_atomically(path, doc)
    return token


def _write_atomically(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TokenTable:
    """The grants in force, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self._table = load_tokens(path)

    def _stat(self) -> int | None:
        try:
            return os.stat(self._path).st_mtime_ns
        except OSError:
            return None

    def lookup(self, token: str) -> Grant | None:
        self._maybe_reload()
        return self._table.get(_digest(token))

    def _maybe_reload(self) -> None:
        mtime = self._stat()
        if mtime == self._mtime:
            return
        with self._lock:
            if mtime == self._mtime:
                return
            self._mtime = mtime
            try:
                self._table = load_tokens(self._path)
            except TokenFileError as exc:
                log.error("keeping previous tokens: %s", exc)
            else:
                log.info("reloaded tokens from %s", self._path)
