"""Validation of the names that become paths on the server's disk.

Everything a client names (namespace, object key, ref name) ends up in a file path, so each
is checked against a strict whitelist before it gets near `os.path`. Percent-escapes are never
decoded: a valid name never needs one, so `%2e%2e` simply fails the pattern. The patterns
also keep clear of what Windows treats specially (trailing dots, device names such as `CON`),
because the server runs on Windows too.
"""

from __future__ import annotations

import re

KEY_RE = re.compile(r"^[0-9a-f]{32}$")
# A subset of [A-Za-z0-9._-]{1,64}: first and last characters alphanumeric, so `.`, `..`,
# `.hidden` and Windows-stripped trailing dots are impossible.
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
REF_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)


def is_key(key: str) -> bool:
    """A key is exactly 32 lower-case hex digits (an xxh3-128 content id)."""
    return bool(KEY_RE.match(key))


def is_namespace(name: str) -> bool:
    """Namespaces are case-insensitive (stored lower-case) and never a Windows device name."""
    if not NAMESPACE_RE.match(name):
        return False
    return name.split(".", 1)[0].lower() not in _WINDOWS_DEVICES


def namespace_dir(name: str) -> str:
    """The directory name of a namespace: lower-case, so Linux and NTFS agree."""
    return name.lower()


def is_ref_name(name: str) -> bool:
    """Ref names are case-sensitive; stored hex-encoded, so no device-name concern."""
    return bool(REF_RE.match(name))


def ref_filename(name: str) -> str:
    """Hex-encode a ref name: keeps case on case-insensitive disks, avoids reserved names."""
    return name.encode("ascii").hex()


def ref_name_from_filename(filename: str) -> str | None:
    """Inverse of `ref_filename`; None for files that are not refs (e.g. temp leftovers)."""
    try:
        name = bytes.fromhex(filename).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    return name if is_ref_name(name) else None
