"""`dpmsfs-server verify`: scrub blobs, maps and refs; move corrupt files aside.

- every pool blob is decoded and re-hashed (SHA-256 against its name, xxh3-128 against its
  header); a corrupt one is quarantined, so `objects:missing` reports every id mapped to it
  and the next sync of any tool holding that content re-sends it (which heals the pool);
- every mapping must point at a blob that exists and whose recorded xxh3 is the mapped id
  (a *dangling* mapping is reported; it is left in place because a re-upload heals it);
- every ref record must match its own header hash (else quarantined).

Safe to run while the server is serving the same directory, an online prune included: it
only moves corrupt files, and a mapping found dangling is looked up again before it is
reported (prune deletes a mapping, then its blob, between verify's two reads).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from remote import names, objfile
from remote.nsindex import NamespaceIndex
from remote.pool import BlobPool, CorruptBlob
from remote.store import DiskStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    kind: str  # "blob", "mapping" or "ref"
    where: str  # digest, "<ns>/<id>" or "<ns>/<ref name>"
    reason: str
    moved_to: Path | None


@dataclass
class Summary:
    blobs: int = 0
    mappings: int = 0
    refs: int = 0
    corrupt: int = 0

    @property
    def checked(self) -> int:
        return self.blobs + self.mappings + self.refs


def scrub(
    store: DiskStore, summary: Summary, namespace: str | None = None, quarantine: bool = True
) -> Iterator[Finding]:
    """Yield one Finding per problem, updating `summary` as it goes.

    With `namespace`, only the blobs that namespace maps are checked (plus its maps and refs).
    """
    pool = store.pool
    if namespace is None:
        digests: Iterator[str] = pool.iter_digests()
    else:
        digests = iter(sorted({d for _, d in _rows(store, namespace)}))
    for digest in digests:
        try:
            pool.check(digest)
        except FileNotFoundError:
            continue
        except CorruptBlob as exc:
            summary.blobs += 1
            summary.corrupt += 1
            moved = pool.quarantine(digest, str(exc)) if quarantine else None
            yield Finding("blob", digest, str(exc), moved)
            continue
        summary.blobs += 1
    spaces = store.namespaces()
    if namespace is not None:
        spaces = [n for n in spaces if n == names.namespace_dir(namespace)]
    for ns in spaces:
        path = store.ns_root / ns / "index.sqlite"
        if not path.exists():
            continue
        index = NamespaceIndex(path)
        try:
            for id, digest in index.iter_rows():
                summary.mappings += 1
                reason = _mapping_problem(pool, id, digest)
                if reason is not None:
                    # an online prune deletes the mapping before its blob, and a claim or
                    # upload may map it again: only what is still wrong now is damage
                    now = index.get(id)
                    reason = None if now is None else _mapping_problem(pool, id, now)
                if reason is None:
                    continue
                summary.corrupt += 1
                yield Finding("mapping", f"{ns}/{id}", reason, None)
        finally:
            index.close()
    for ref in store.iter_refs(namespace):
        try:
            problem = objfile.verify_file(ref.path)
        except FileNotFoundError:
            continue
        summary.refs += 1
        if problem is None:
            continue
        summary.corrupt += 1
        moved = store.quarantine_ref(ref, problem) if quarantine else None
        yield Finding("ref", f"{ref.namespace_dir}/{ref.name}", problem, moved)


def _mapping_problem(pool: BlobPool, id: str, digest: str) -> str | None:
    try:
        info, _ = pool.read(digest)
    except FileNotFoundError:
        return f"maps to blob {digest}, which is absent"
    except CorruptBlob as exc:
        return f"maps to blob {digest}, which is damaged: {exc}"
    if info.xxh3 == id:
        return None
    return f"maps to blob {digest} of xxh3 {info.xxh3}"


def _rows(store: DiskStore, namespace: str) -> Iterator[tuple[str, str]]:
    path = store.ns_root / names.namespace_dir(namespace) / "index.sqlite"
    if not path.exists():
        return
    index = NamespaceIndex(path)
    try:
        yield from index.iter_rows()
    finally:
        index.close()
