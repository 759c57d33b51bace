"""The server's content-addressed store on disk (no HTTP here).

Layout under the data directory DIR (documented as a contract in docs/remote-api.md):

    DIR/tmp/<random>.tmp                       in-flight uploads; emptied at start-up
    DIR/ns/<namespace>/objects/<k[:2]>/<key>   one record per object (see objfile)
    DIR/ns/<namespace>/refs/<hex(name)>        one record per ref
    DIR/quarantine/<namespace>/<kind>-<name>.<ns-time>   records found corrupt

Check-then-write sequences on one name run under one of a fixed set of striped locks, so
two uploads of the same key cannot interleave. This assumes one server process per DIR;
the `verify` scrubber may run beside it because it only moves corrupt records aside.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from remote import names, objfile

log = logging.getLogger(__name__)

_LOCK_STRIPES = 64


@dataclass(frozen=True)
class Stats:
    objects: int
    bytes: int
    refs: int


@dataclass(frozen=True)
class StoredRecord:
    namespace_dir: str
    kind: Literal["object", "ref"]
    name: str
    path: Path


class DiskStore:
    """Objects and refs of every namespace under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.ns_root = root / "ns"
        self.quarantine_dir = root / "quarantine"
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def prepare(self) -> None:
        """Create the directories and drop temp files left by a crash (never visible)."""
        for d in (self.tmp_dir, self.ns_root, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            log.info("removing temp file left by an interrupted upload: %s", leftover.name)
            try:
                leftover.unlink()
            except OSError as exc:
                log.warning("could not remove %s: %s", leftover, exc)

    # -- paths ---------------------------------------------------------------------------

    def _ns(self, namespace: str) -> Path:
        return self.ns_root / names.namespace_dir(namespace)

    def object_path(self, namespace: str, key: str) -> Path:
        return self._ns(namespace) / "objects" / key[:2] / key

    def ref_path(self, namespace: str, name: str) -> Path:
        return self._ns(namespace) / "refs" / names.ref_filename(name)

    def _lock(self, path: Path) -> threading.Lock:
        return self._locks[zlib.crc32(str(path).encode()) % _LOCK_STRIPES]

    # -- objects -------------------------------------------------------------------------

    def commit_object(self, namespace: str, key: str, tmp: Path) -> bool:
        """Publish a received temp record as `key`. Returns True if it was created.

        A sound existing object is never replaced (objects are immutable, and a tool must not
        be able to overwrite history); a corrupt one is quarantined and replaced, which is how
        a re-sent object heals the store.
        """
        final = self.object_path(namespace, key)
        with self._lock(final):
            if final.exists():
                problem = objfile.verify_file(final)
                if problem is None:
                    _discard(tmp)
                    return False
                self._quarantine(final, names.namespace_dir(namespace), "object", key, problem)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._publish(tmp, final)
        return True

    def read_object(self, namespace: str, key: str) -> tuple[bytes, str] | None:
        """Body and hash of a sound object; None if absent or found corrupt (then moved aside)."""
        return self._read(self.object_path(namespace, key), namespace, "object", key)

    def object_info(self, namespace: str, key: str) -> tuple[str, int] | None:
        """(hash, length) by the cheap header check; None if absent or visibly damaged."""
        path = self.object_path(namespace, key)
        try:
            return objfile.read_header(path)
        except FileNotFoundError:
            return None
        except objfile.CorruptRecord as exc:
            self._quarantine_locked(path, namespace, "object", key, str(exc))
            return None

    def has_object(self, namespace: str, key: str, verify: bool) -> bool:
        """Whether `key` is present and sound: header check, or a full re-hash if `verify`."""
        if not verify:
            return self.object_info(namespace, key) is not None
        path = self.object_path(namespace, key)
        try:
            problem = objfile.verify_file(path)
        except FileNotFoundError:
            return False
        if problem is not None:
            self._quarantine_locked(path, namespace, "object", key, problem)
            return False
        return True

    def delete_object(self, namespace: str, key: str) -> bool:
        return self._delete(self.object_path(namespace, key))

    def list_objects(self, namespace: str, after: str, limit: int) -> tuple[list[str], bool]:
        """Keys greater than `after` in order, at most `limit`; and whether more follow."""
        base = self._ns(namespace) / "objects"
        keys: list[str] = []
        try:
            fanouts = sorted(e.name for e in os.scandir(base) if e.is_dir())
        except FileNotFoundError:
            return [], False
        for fanout in fanouts:
            if fanout < after[:2]:
                continue
            entries = sorted(
                e.name for e in os.scandir(base / fanout) if names.is_key(e.name) and e.name > after
            )
            for key in entries:
                if len(keys) == limit:
                    return keys, True
                keys.append(key)
        return keys, False

    # -- refs ----------------------------------------------------------------------------

    def create_ref(
        self, namespace: str, name: str, tmp: Path, new_hash: str
    ) -> Literal["created", "same", "conflict"]:
        """Append-only create: same content is a no-op, different content is a conflict."""
        final = self.ref_path(namespace, name)
        with self._lock(final):
            if final.exists():
                try:
                    old_hash = objfile.read_verified(final)[1]
                except objfile.CorruptRecord as exc:
                    self._quarantine(final, names.namespace_dir(namespace), "ref", name, str(exc))
                else:
                    _discard(tmp)
                    return "same" if old_hash == new_hash else "conflict"
            final.parent.mkdir(parents=True, exist_ok=True)
            self._publish(tmp, final)
        return "created"

    def replace_ref(self, namespace: str, name: str, tmp: Path) -> None:
        """Overwrite a ref unconditionally (admin only)."""
        final = self.ref_path(namespace, name)
        with self._lock(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            self._publish(tmp, final)

    def read_ref(self, namespace: str, name: str) -> tuple[bytes, str] | None:
        return self._read(self.ref_path(namespace, name), namespace, "ref", name)

    def list_refs(self, namespace: str) -> list[str]:
        try:
            files = os.listdir(self._ns(namespace) / "refs")
        except FileNotFoundError:
            return []
        return sorted(n for n in map(names.ref_name_from_filename, files) if n is not None)

    def delete_ref(self, namespace: str, name: str) -> bool:
        return self._delete(self.ref_path(namespace, name))

    # -- whole store ---------------------------------------------------------------------

    def stats(self, namespace: str) -> Stats:
        """Counts by walking the namespace: O(objects), meant for monitoring, not hot paths."""
        count = total = 0
        base = self._ns(namespace) / "objects"
        if base.is_dir():
            for fanout in os.scandir(base):
                if not fanout.is_dir():
                    continue
                for entry in os.scandir(fanout.path):
                    if names.is_key(entry.name):
                        count += 1
                        total += max(0, entry.stat().st_size - objfile.HEADER_SIZE)
        return Stats(objects=count, bytes=total, refs=len(self.list_refs(namespace)))

    def iter_records(self, namespace: str | None = None) -> Iterator[StoredRecord]:
        """Every object and ref record, for the scrubber."""
        if not self.ns_root.is_dir():
            return
        ns_dirs = sorted(os.listdir(self.ns_root))
        if namespace is not None:
            ns_dirs = [d for d in ns_dirs if d == names.namespace_dir(namespace)]
        for ns_dir in ns_dirs:
            objects = self.ns_root / ns_dir / "objects"
            if objects.is_dir():
                for fanout in sorted(os.listdir(objects)):
                    if (objects / fanout).is_dir():
                        for key in sorted(os.listdir(objects / fanout)):
                            if names.is_key(key):
                                yield StoredRecord(ns_dir, "object", key, objects / fanout / key)
            refs = self.ns_root / ns_dir / "refs"
            if refs.is_dir():
                for filename in sorted(os.listdir(refs)):
                    name = names.ref_name_from_filename(filename)
                    if name is not None:
                        yield StoredRecord(ns_dir, "ref", name, refs / filename)

    def quarantine(self, record: StoredRecord, reason: str) -> Path | None:
        """Move a corrupt record aside so `missing` reports it and tools re-send it."""
        with self._lock(record.path):
            return self._quarantine(
                record.path, record.namespace_dir, record.kind, record.name, reason
            )

    # -- helpers -------------------------------------------------------------------------

    def _read(
        self, path: Path, namespace: str, kind: Literal["object", "ref"], name: str
    ) -> tuple[bytes, str] | None:
        try:
            return objfile.read_verified(path)
        except FileNotFoundError:
            return None
        except objfile.CorruptRecord as exc:
            self._quarantine_locked(path, namespace, kind, name, str(exc))
            return None

    def _publish(self, tmp: Path, final: Path) -> None:
        try:
            os.replace(tmp, final)
        except BaseException:
            _discard(tmp)
            raise
        objfile.fsync_dir(final.parent)

    def _delete(self, path: Path) -> bool:
        with self._lock(path):
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        return True

    def _quarantine_locked(
        self, path: Path, namespace: str, kind: Literal["object", "ref"], name: str, why: str
    ) -> None:
        with self._lock(path):
            self._quarantine(path, names.namespace_dir(namespace), kind, name, why)

    def _quarantine(self, path: Path, ns_dir: str, kind: str, name: str, why: str) -> Path | None:
        target_dir = self.quarantine_dir / ns_dir
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{kind}-{name}.{time.time_ns()}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None  # someone else moved it first
        log.warning("quarantined corrupt %s %s/%s (%s) to %s", kind, ns_dir, name, why, target)
        return target


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
